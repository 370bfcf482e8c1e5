"""audit compares how each kind of client fares through each way in, node against node, with or without cluster
data: a rule of one node's own (a host firewall, a CNI's rule) that drops a NodePort there is found, which the
Service's own rules and the API cannot show; Local policies (which answer outside clients differently on nodes
without a local endpoint, by design) are not."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.dumps import audit
from tests.test_audit import by_node, node
from tests.test_compare import NODES, base_services, cluster_of, dump_text

# node-b's host firewall drops connections to the `web` Service's nodePort (30080), before kube-proxy's DNAT.
FIREWALL = "*raw\n-A PREROUTING -p tcp -m tcp --dport 30080 -j DROP\nCOMMIT\n"


@pytest.mark.parametrize("with_cluster", [False, True])
def test_a_node_whose_firewall_drops_a_nodeport_is_found(with_cluster: bool) -> None:
    services = base_services()
    nodes = [node("node-a", services), node("node-b", services, extra=FIREWALL), node("node-c", services)]
    report = audit(nodes, cluster_of(services) if with_cluster else None)
    ways = [f for f in report.findings if f.id == "forwarding-differs"]
    assert [(f.node, f.service) for f in ways] == [("node-b", "default/web:http")], by_node(report)
    (f,) = ways
    assert f.severity == "error"
    assert f.summary.startswith("default/web:http: <node>:30080 from outside the cluster: DROP here, DNAT to its "
                                "endpoints on 2 of 3 nodes")
    # (the node's address is known, its dump is not: a Dumped node is no file)
    assert "host firewall" in f.detail and "`iptrace explain NODE --dst 192.168.49.3:30080`" in f.fix


def _pasted(fix: str) -> list[str]:
    """The arguments of the `iptrace explain …` command a fix names."""
    command = fix.split("`")[1]
    assert command.startswith("iptrace explain "), fix
    return shlex.split(command)[1:]


def test_the_fix_of_a_way_that_differs_is_an_explain_command_that_shows_the_difference(tmp_path: Path) -> None:
    """The fix said `iptrace explain NODE --dst NODE-IP:30080`, placeholders for a person to fill in. Now it names
    the node's directory (or dump file) and the address its NodePort was traced to: pasted, it shows the rule
    that drops the NodePort there. A merge of the audit keeps it."""
    services = base_services()
    snap = tmp_path / "my snap"  # (a space: the path is quoted for the shell)
    for name, address in NODES.items():
        (snap / name).mkdir(parents=True)
        (snap / name / "iptables-save.txt").write_text(dump_text(services, name,
                                                                 extra=FIREWALL if name == "node-b" else ""))
        (snap / name / "meta.json").write_text(json.dumps({"node": name, "addresses": [address]}))
    audited = CliRunner().invoke(main, ["audit", str(snap), "-o", "json"])
    [fix] = [f["fix"] for f in json.loads(audited.stdout)["findings"] if f["id"] == "forwarding-differs"]
    assert _pasted(fix) == ["explain", str(snap / "node-b"), "--dst", "192.168.49.3:30080"], fix
    explained = CliRunner().invoke(main, _pasted(fix))
    assert "-A PREROUTING -p tcp -m tcp --dport 30080 -j DROP" in explained.stdout, explained.output
    (tmp_path / "audit.json").write_text(audited.stdout)
    merged = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "audit.json"), "-o", "json"])
    assert [f["fix"] for f in json.loads(merged.stdout)["findings"] if f["id"] == "forwarding-differs"] == [fix]
    # Plain dump files: the file, with the --node-ip the audit was given; without one, the placeholders.
    files = []
    for name in NODES:
        files.append(tmp_path / f"{name}.txt")
        files[-1].write_text((snap / name / "iptables-save.txt").read_text())
    for given, dst in ((["--node-ip", "192.168.49.3"], ["--node-ip", "192.168.49.3", "--dst", "192.168.49.3:30080"]),
                       ([], ["--node-ip", "NODE-IP", "--dst", "NODE-IP:30080"])):
        audited = CliRunner().invoke(main, ["audit", *map(str, files), *given, "-o", "json"])
        [fix] = [f["fix"] for f in json.loads(audited.stdout)["findings"] if f["id"] == "forwarding-differs"]
        assert _pasted(fix) == ["explain", str(tmp_path / "node-b.txt"), *dst], fix


def test_a_merged_shards_fix_names_its_node_where_the_merge_can_read_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard audited in its own working directory (a Job's, a CI runner's) with relative paths: its fix's
    `iptrace explain snap/node-b …` named a path relative to that directory, which the merge, run elsewhere,
    printed as it was (a path of nothing there). The shard's document says where it ran (`merge.directory`), and
    the merge names the node's directory from there; merged where the audit ran, the fix is the audit's own."""
    services = base_services()
    job = tmp_path / "job 1"  # (a space: the path stays quoted for the shell)
    for name, address in NODES.items():
        (job / "snap" / name).mkdir(parents=True)
        (job / "snap" / name / "iptables-save.txt").write_text(dump_text(services, name,
                                                                         extra=FIREWALL if name == "node-b" else ""))
        (job / "snap" / name / "meta.json").write_text(json.dumps({"node": name, "addresses": [address]}))
    monkeypatch.chdir(job)
    audited = CliRunner().invoke(main, ["audit", "snap", "-o", "json"])
    doc = json.loads(audited.stdout)
    assert doc["merge"]["directory"] == str(job)
    [fix] = [f["fix"] for f in doc["findings"] if f["id"] == "forwarding-differs"]
    assert _pasted(fix)[:2] == ["explain", "snap/node-b"], fix
    (tmp_path / "shard.json").write_text(audited.stdout)
    merged_here = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "shard.json"), "-o", "json"])
    assert [f["fix"] for f in json.loads(merged_here.stdout)["findings"] if f["id"] == "forwarding-differs"] == [fix]
    elsewhere = tmp_path / "merge"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    merged = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "shard.json"), "-o", "json"])
    [moved] = [f["fix"] for f in json.loads(merged.stdout)["findings"] if f["id"] == "forwarding-differs"]
    assert _pasted(moved) == ["explain", str(job / "snap" / "node-b"), "--dst", "192.168.49.3:30080"], moved
    explained = CliRunner().invoke(main, _pasted(moved))
    assert "-A PREROUTING -p tcp -m tcp --dport 30080 -j DROP" in explained.stdout, explained.output
    doc["merge"]["directory"] = "job 1"  # (hand-edited: relative to what?)
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    refused = CliRunner().invoke(main, ["audit", "--merge", str(tmp_path / "edited.json")])
    assert (refused.exit_code, refused.stderr) == (1, f"Error: {tmp_path / 'edited.json'}: merge.directory: found "
                                                      "'job 1'; expected an absolute path (the directory the audit "
                                                      "ran in)\n")


def test_two_nodes_that_disagree_are_both_told() -> None:
    services = base_services()
    report = audit([node("node-a", services), node("node-b", services, extra=FIREWALL)], None)
    ways = {(f.node, f.summary.split(": ", 2)[2]) for f in report.findings if f.id == "forwarding-differs"}
    assert {n for n, _ in ways} == {"node-a", "node-b"}
    assert any(text.startswith("DROP here, otherwise elsewhere") for n, text in ways if n == "node-b")
