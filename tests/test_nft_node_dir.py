"""A node in nftables mode collected as `collect` saves it: iptables-save.txt (and ip6tables-save.txt) empty when
the node has no iptables tables at all (kubelet writing none), nft-ruleset.txt with kube-proxy's table. Every
command reads the ruleset; `audit` said `load-error` ("iptables-save.txt:1:1: no rules found") and `services`,
`trace`, `explain` and `diff` of the node failed with that error."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
NFT = SAMPLES / "nodeport-fb-backends-nft.nft"


def collection(tmp_path: Path) -> Path:
    for node in ("node-1", "node-2"):  # (the same ruleset, so the same node address: its nodeport-ips)
        store.write_node_dir(tmp_path / "snap" / node, {store.DUMP_FILE: b"", store.IP6_DUMP_FILE: b"",
                                                        store.NFT_FILE: NFT.read_bytes()},
                             {"node": node, "addresses": ["127.0.0.1", "192.168.49.2"], "nft": {"status": "ok"}})
    return tmp_path / "snap"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_audit_reads_the_ruleset_of_a_node_without_iptables_tables(tmp_path: Path) -> None:
    snap = collection(tmp_path)
    result = run("audit", str(snap), "-o", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(n["name"], n["status"], n["mode"], n["services"]) for n in report["nodes"]] == [
        ("node-1", "ok", "nftables", 7), ("node-2", "ok", "nftables", 7)]
    assert report["findings"] == []


def test_services_trace_explain_and_diff_of_the_node(tmp_path: Path) -> None:
    snap = collection(tmp_path)
    node = str(snap / "node-1")
    services = run("services", node, "--service", "default/fb-backends")
    assert services.exit_code == 0, services.output
    assert services.stdout.startswith(f"{snap / 'node-1' / store.NFT_FILE}: kube-proxy nftables mode")
    assert "note: node-1: kube-proxy runs in nftables mode here; analyzing nft-ruleset.txt" in services.stderr
    trace = run("trace", node, "--dst", "192.168.49.2:30904")
    assert trace.exit_code == 0 and "DNAT → 10.244.1.7:8001" in trace.stdout, trace.output
    explain = run("explain", node, "--dst", "10.101.234.168:8001", "--src", "pod")
    assert explain.exit_code == 3 and "[target-port-on-service-ip, error]" in explain.stdout, explain.output
    diff = run("diff", node, str(snap / "node-2"))
    assert diff.exit_code == 0, diff.output
    assert "no differences in Services, endpoints" in diff.stdout and "no rules found" not in diff.output
