"""A node directory whose kernel holds kube-proxy's rules in both modes: iptables-save.txt with KUBE-SERVICES
and nft-ruleset.txt with the `ip kube-proxy` table (a node switched modes with a kube-proxy that left the old
rules behind, or two kube-proxies). Both are live: every packet passes both, the first to DNAT it decides. The
analysis says so, names both files and which one it read and why; meta.json's `proxy_mode` picks the other."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench.synth import render
from bench.synth_nft import render_nft
from iptrace.cli import main
from iptrace.collect import store
from iptrace.collect.inputs import inputs_from_directory
from iptrace.kube.audit import audit
from iptrace.kube.compare import MODE_SPLIT
from tests.test_compare import NODES, POD_CIDR, base_services, with_local

NODE = "node-a"


def both_modes(snap: Path, node: str = NODE, meta: dict[str, object] | None = None) -> Path:
    specs = with_local(base_services(), node)  # type: ignore[arg-type]
    files = {store.DUMP_FILE: render(specs, node_ips=[NODES[node]], pod_cidr=POD_CIDR).encode(),
             store.NFT_FILE: render_nft(specs, node_ips=[NODES[node]], pod_cidr=POD_CIDR).encode()}
    store.write_node_dir(snap / node, files, {"node": node, "host": node, "addresses": [NODES[node]], **(meta or {})})
    return snap / node


def test_services_of_the_node_says_both_modes_are_programmed(tmp_path: Path) -> None:
    node = both_modes(tmp_path)
    result = CliRunner().invoke(main, ["services", str(node), "-o", "json"])
    assert result.exit_code == 0, result.output
    note = result.stderr
    assert "iptables-save.txt" in note and "nft-ruleset.txt" in note, note
    assert "Analyzing iptables-save.txt" in note and "proxy_mode" in note, note
    alone = CliRunner().invoke(main, ["services", str(node / store.DUMP_FILE), "-o", "json", "--node-ip",
                                      NODES[NODE]])
    assert alone.stdout == result.stdout  # (the iptables dump answers, as it did)


def test_meta_proxy_mode_picks_the_nft_ruleset(tmp_path: Path) -> None:
    node = both_modes(tmp_path, meta={"proxy_mode": "nftables"})
    result = CliRunner().invoke(main, ["trace", str(node), "--dst", "10.96.0.10:53", "--proto", "udp", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert "Analyzing nft-ruleset.txt" in result.stderr and "meta.json" in result.stderr, result.stderr
    assert json.loads(result.stdout)["outcomes"][0]["path"][0]["table"].startswith("ip ")


def test_meta_proxy_mode_of_no_known_mode_is_an_error(tmp_path: Path) -> None:
    node = both_modes(tmp_path, meta={"proxy_mode": "ipvs-ish"})
    result = CliRunner().invoke(main, ["services", str(node)])
    assert result.exit_code == 1
    assert "meta.json" in result.stderr and "proxy_mode" in result.stderr and "'ipvs-ish'" in result.stderr


def test_audit_names_the_node_with_both_modes(tmp_path: Path) -> None:
    both_modes(tmp_path / "snap")
    report = audit(inputs_from_directory(tmp_path / "snap"))
    (finding,) = [f for f in report.findings if f.id == MODE_SPLIT]
    assert finding.node == NODE and finding.severity == "warning"
    assert "iptables-save.txt" in finding.detail and "nft-ruleset.txt" in finding.detail
    assert report.nodes[0].dataplane == "iptables"
    result = CliRunner().invoke(main, ["audit", str(tmp_path / "snap"), "-o", "json"])
    assert MODE_SPLIT in [f["id"] for f in json.loads(result.stdout)["findings"]], result.output


def test_an_iptables_nft_ruleset_without_kube_proxys_table_is_no_split(tmp_path: Path) -> None:
    node = both_modes(tmp_path)
    (node / store.NFT_FILE).write_text("table ip nat {\n\tchain PREROUTING {\n\t\ttype nat hook prerouting "
                                       "priority dstnat; policy accept;\n\t}\n}\n")
    result = CliRunner().invoke(main, ["services", str(node), "-o", "json"])
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_meta_proxy_mode_nftables_without_kube_proxys_table_is_said(tmp_path: Path) -> None:
    """meta.json says nftables mode but only the iptables dump holds kube-proxy's rules: the iptables dump answers,
    and a note says so (it was silent, as if nothing had been asked)."""
    node = both_modes(tmp_path, meta={"proxy_mode": "nftables"})
    (node / store.NFT_FILE).write_text("table ip nat {\n\tchain PREROUTING {\n\t\ttype nat hook prerouting "
                                       "priority dstnat; policy accept;\n\t}\n}\n")
    result = CliRunner().invoke(main, ["services", str(node), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"note: {NODE}: meta.json's proxy_mode says nftables, but nft-ruleset.txt holds no "
                             "kube-proxy table for ipv4; analyzing iptables-save.txt, where kube-proxy's rules are\n")


def test_a_node_saved_with_its_nft_ruleset_alone_is_no_split(tmp_path: Path) -> None:
    """A node in nftables mode saved by hand as DIR/NODE/nft-ruleset.txt alone (no iptables-save.txt): that ruleset
    is the node's dump, not a second mode beside it (it was called 'both proxy modes', its file 'in iptables mode',
    and the suggested diff compared the file with itself)."""
    node = both_modes(tmp_path / "snap")
    (node / store.DUMP_FILE).unlink()
    result = CliRunner().invoke(main, ["services", str(node), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert "both proxy modes" not in result.stderr, result.stderr
    assert json.loads(result.stdout)[0]["chains"][0].startswith(("service-", "external-")), result.stdout[:300]
    report = audit(inputs_from_directory(tmp_path / "snap"))
    assert [f.id for f in report.findings if f.id == MODE_SPLIT] == []
    assert report.nodes[0].dataplane == "nftables"
