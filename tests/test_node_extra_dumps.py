"""A node directory's other dumps that cannot be read are named, file:line:column and what was expected, without
losing what its main dump says: a truncated nft-ruleset.txt beside a kube-proxy iptables dump (which answers for
the node, so the ruleset is otherwise never read) is audit's load-error warning and a note of `services DIR/NODE`,
as a truncated ip6tables-save.txt is (which made `services DIR/NODE` fail as a whole)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from tests.conftest import SAMPLES

IPT = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()
NFT = (SAMPLES / "nodeport-fb-backends-nft.nft").read_bytes()
# (the same ruleset without kube-proxy's table, as on an iptables-mode node: no kube-proxy-mode-split)
NO_KUBE_TABLE = NFT.replace(b"table ip kube-proxy", b"table ip kube-proxy-gone")
CUT_AT = "nft-ruleset.txt:90:20: unexpected end of line; expected \"device\", \"devices\" or \"priority\""


def node(root: Path, name: str, files: dict[str, bytes]) -> Path:
    store.write_node_dir(root / name, {store.DUMP_FILE: IPT, **files}, {"node": name, "addresses": ["192.168.49.2"]})
    return root / name


def test_audit_names_a_truncated_nft_ruleset_and_still_analyses_the_iptables_dump(tmp_path: Path) -> None:
    cut = node(tmp_path / "snap", "node-a", {store.NFT_FILE: NFT[:3000]})
    whole = node(tmp_path / "snap", "node-b", {store.NFT_FILE: NFT})
    result = CliRunner().invoke(main, ["audit", str(tmp_path / "snap"), "-o", "json", "--jobs", "1"])
    assert result.exit_code == 0, result.output  # (a warning)
    doc = json.loads(result.stdout)
    assert [(n["name"], n["status"], n["dataplane"]) for n in doc["nodes"]] == [
        ("node-a", "ok", "iptables"), ("node-b", "ok", "iptables")]
    assert [(f["node"], f["id"], f["severity"], f["detail"].split(" (the file")[0]) for f in doc["findings"]
            if f["id"] == "load-error"] == [("node-a", "load-error", "warning", f"{cut}/{CUT_AT}")]
    # (node-b's whole ruleset holds kube-proxy's nft table beside its iptables rules: both modes are programmed)
    assert [(f["node"], f["id"]) for f in doc["findings"] if f["node"] == whole.name] == [
        ("node-b", "kube-proxy-mode-split")]


def test_services_of_the_node_directory_says_it_and_answers_from_the_iptables_dump(tmp_path: Path) -> None:
    cut = node(tmp_path, "node-a", {store.NFT_FILE: NFT[:3000]})
    plain = node(tmp_path, "node-p", {})
    result = CliRunner().invoke(main, ["services", str(cut), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == CliRunner().invoke(main, ["services", str(plain), "-o", "json"]).stdout
    assert result.stderr.startswith(f"note: node-a: {cut}/{CUT_AT}")
    assert result.stderr.endswith("; analyzing iptables-save.txt without it\n")
    explained = CliRunner().invoke(main, ["explain", str(cut), "--dst", "10.101.234.168:5001", "--src", "pod"])
    assert explained.exit_code == 0 and f"{cut}/{CUT_AT}" in explained.stderr


@pytest.mark.parametrize("ruleset", [NO_KUBE_TABLE, NO_KUBE_TABLE.replace(b"\n", b"\n\n"), b""])
def test_a_ruleset_that_reads_is_not_mentioned(tmp_path: Path, ruleset: bytes) -> None:
    whole = node(tmp_path, "node-a", {store.NFT_FILE: ruleset})
    result = CliRunner().invoke(main, ["services", str(whole), "-o", "json"])
    assert result.exit_code == 0 and result.stderr == ""


def test_a_truncated_ip6tables_dump_leaves_the_ipv4_services(tmp_path: Path) -> None:
    v6 = (SAMPLES / "ipv6.txt").read_bytes()
    cut = node(tmp_path, "node-a", {store.IP6_DUMP_FILE: v6[:2000]})
    result = CliRunner().invoke(main, ["services", str(cut), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert {s["cluster_ip"] for s in json.loads(result.stdout)} >= {"10.101.234.168"}
    assert result.stderr.startswith(f"note: {cut}/{store.IP6_DUMP_FILE}:44:1: ")


def test_a_truncated_legacy_dump_is_named_by_its_path(tmp_path: Path) -> None:
    node(tmp_path / "snap", "node-a", {store.LEGACY_DUMP_FILE: IPT[:2000]})
    doc = json.loads(CliRunner().invoke(main, ["audit", str(tmp_path / "snap"), "-o", "json"]).stdout)
    assert [f["detail"].split(":")[0] for f in doc["findings"] if f["id"] == "load-error"] == [
        str(tmp_path / "snap" / "node-a" / store.LEGACY_DUMP_FILE)]
