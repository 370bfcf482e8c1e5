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


CANARIES = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"  # kubelet's, each family


def test_an_ipv6_question_to_an_ipv4_only_nftables_node_is_answered_in_nftables_words(tmp_path: Path) -> None:
    """With kubelet's canaries in iptables-save.txt and ip6tables-save.txt the error named the iptables dump ("is
    an IPv4 dump; give the node's ip6tables-save output instead"); with both empty it was "no rules found"."""
    snap = collection(tmp_path)
    with_canaries = snap / "node-2"
    (with_canaries / store.DUMP_FILE).write_text(CANARIES)
    (with_canaries / store.IP6_DUMP_FILE).write_text(CANARIES)
    for node in ("node-1", "node-2"):
        result = run("explain", str(snap / node), "--dst", "[fd00:10:96::1]:443")
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines()[-1] == (
            f"Error: fd00:10:96::1 is an IPv6 address but {snap / node / store.NFT_FILE} has no `table ip6 "
            "kube-proxy`: kube-proxy (nftables mode) programs no IPv6 Services on this node")
    # An iptables-mode node still names the dump it lacks, and where it goes: beside the IPv4 one (it advised to
    # "give the node's ip6tables-save output instead" of the directory).
    iptables_node = snap / "node-3"
    store.write_node_dir(iptables_node, {store.DUMP_FILE: (SAMPLES / "nodeport-fb-backends.txt").read_bytes()},
                         {"node": "node-3", "addresses": ["192.168.49.2"]})
    result = run("explain", str(iptables_node), "--dst", "[fd00:10:96::1]:443")
    assert result.stderr.splitlines()[-1] == (
        f"Error: fd00:10:96::1 is an IPv6 address but {iptables_node} has no ip6tables-save.txt "
        f"({iptables_node / store.DUMP_FILE} is an IPv4 dump); save the node's `ip6tables-save` output there as "
        "ip6tables-save.txt (iptrace collect does)")
