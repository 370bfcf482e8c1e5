"""audit: fleets of node dumps rendered by bench/synth.py (each node with its own local endpoints), with and
without cluster data; the JSON and text reports; and an audit of a snapshot written by the real `collect`
from real sshd processes (tests/sshd.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from iptrace.collect import store
from iptrace.collect.inputs import inputs_from_directory, node_input
from iptrace.collect.ssh import collect
from iptrace.iptables import load
from iptrace.kube.audit import AuditReport, kube_node_for
from iptrace.render.audit import audit_to_json, render_audit_text
from tests.dumps import Dumped, audit
from tests.sshd import SshdFarm, have_sshd, keygen
from tests.test_compare import NODES, base_services, cluster_of, dump, dump_text, svc

LEGACY_WARNING = "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n"


def node(name: str, services: list[ServiceSpec], **kwargs: Any) -> Dumped:
    return Dumped(name, dump(services, name, **kwargs), (NODES[name], "127.0.0.1"))


def fleet(services: list[ServiceSpec]) -> list[Dumped]:
    return [node(n, services) for n in sorted(NODES)]


def by_node(report: AuditReport) -> dict[str, list[tuple[str, str, str | None]]]:
    out: dict[str, list[tuple[str, str, str | None]]] = {}
    for f in report.findings:
        out.setdefault(f.node, []).append((f.id, f.severity, f.service))
    return out


def show(report: AuditReport) -> str:
    return render_audit_text(report, verbose=True)


def stale_services() -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    """(what a stale node still has, what the API and the other nodes have now)."""
    old = base_services()
    svc(old, "web").endpoints.append(EndpointSpec("10.244.2.99", 8080))
    old.append(ServiceSpec("default", "gone", "10.96.10.30", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.3.50", 8080)]))
    return old, base_services()


# ------------------------------------------------------------------------------------------------ fleets


@pytest.mark.parametrize("with_cluster", [False, True])
def test_healthy_fleet_has_no_findings_local_policies_included(with_cluster: bool) -> None:
    services = base_services()
    cluster = cluster_of(services) if with_cluster else None
    report = audit(fleet(services), cluster)
    assert report.findings == (), show(report)
    assert not report.has_error
    assert [(n.name, n.status, n.kube_node, n.era) for n in report.nodes] == [
        (n, "ok", n if with_cluster else None, "KUBE-EXT era") for n in sorted(NODES)]
    # The nodes do differ where Local policies make them: local-lb DROPs on node-c, DNATs on node-a.
    views = {n.name: n.ruleset for n in fleet(services)}
    assert "has no local endpoints" in dump_text(services, "node-c")
    assert views["node-a"] is not None


def test_one_stale_node_without_cluster_data() -> None:
    old, new = stale_services()
    nodes = [node("node-a", new), node("node-b", old), node("node-c", new)]
    report = audit(nodes, None)
    found = by_node(report)
    assert set(found) == {"node-b"}, show(report)
    assert ("endpoints-differ", "error", "default/web:http") in found["node-b"]
    assert ("service-only-on-node", "warning", "default/gone:http") in found["node-b"]
    assert ("kube-proxy-stale", "error", None) in found["node-b"]
    web = next(f for f in report.findings if f.id == "endpoints-differ")
    assert "10.244.2.99:8080" in web.summary and "the other nodes do not have" in web.summary
    assert any("10.244.2.99:8080" in rule for _, rule in web.evidence)
    assert report.has_error
    stale = next(f for f in report.findings if f.id == "kube-proxy-stale")
    assert "(kubectl -n kube-system delete pod <its kube-proxy pod>)" in stale.fix  # no Node object to name


def test_one_stale_node_against_the_api() -> None:
    old, new = stale_services()
    nodes = [node("node-a", new), node("node-b", old), node("node-c", new)]
    report = audit(nodes, cluster_of(new))
    found = by_node(report)
    assert set(found) == {"node-b"}, show(report)
    assert sorted(found["node-b"]) == [("kube-proxy-stale", "error", None),
                                       ("stale-endpoints", "error", "default/web:http"),
                                       ("unknown-service", "warning", "default/gone:http")], show(report)
    assert [f.severity for f in report.findings] == ["error", "error", "warning"]
    # The fix names the pod to delete by the Node the cluster data matched (it said "<its kube-proxy pod>").
    stale = next(f for f in report.findings if f.id == "kube-proxy-stale")
    assert stale.fix == ("restart kube-proxy on node-b (kubectl -n kube-system delete pod -l k8s-app=kube-proxy "
                         "--field-selector spec.nodeName=node-b) and check its logs")


DOWN = "kube-system/kube-proxy-x7k2p: CrashLoopBackOff, restarted 17 times, its last run exited 1 (Error)"


@pytest.mark.parametrize("with_cluster", [False, True])
def test_a_stale_node_whose_kube_proxy_crash_loops_is_told_to_read_its_logs(with_cluster: bool) -> None:
    """collect --via api read a crash loop off kube-proxy's pod (meta.json `kube_proxy_down`): audit said it only
    on stderr, and the node's kube-proxy-stale fix said to delete the pod, whose new container crashes alike.
    Now the node has a kube-proxy-not-running finding (text, JSON, HTML) and the stale fix reads the logs."""
    from iptrace.kube.audit import NodeInput
    from iptrace.render.html import render_audit_html
    from tests.dumps import analysis

    old, new = stale_services()
    cluster = cluster_of(new) if with_cluster else None
    stale = node("node-b", old)
    down = NodeInput("node-b", {"ipv4": analysis(stale.ruleset, cluster=cluster, node_ips=stale.addresses)}, None,
                     stale.addresses, {"kube_proxy_down": DOWN})
    report = audit([node("node-a", new), down, node("node-c", new)], cluster)
    found = by_node(report)
    assert set(found) == {"node-b"}, show(report)
    assert ("kube-proxy-not-running", "error", None) in found["node-b"]
    (crash,) = [f for f in report.findings if f.id == "kube-proxy-not-running"]
    logs = "`kubectl -n kube-system logs kube-proxy-x7k2p --previous`"
    assert crash.summary == ("node-b: kube-proxy is not running (CrashLoopBackOff, restarted 17 times, its last run "
                             "exited 1 (Error))")
    assert logs in crash.fix
    (summary,) = [f for f in report.findings if f.id == "kube-proxy-stale"]
    assert summary.fix == crash.fix and "delete pod" not in summary.fix
    assert "was not running when it was collected (kube-proxy-not-running)" in summary.detail
    assert "kube-proxy-not-running" in show(report) and logs in show(report)
    assert crash.summary in [f["summary"] for f in audit_to_json(report)["findings"]]
    html = render_audit_html(report, cluster)
    assert "kube-proxy-not-running" in html and "kubectl -n kube-system logs kube-proxy-x7k2p --previous" in html


def test_a_kube_proxy_that_never_started_is_told_to_read_its_pods_events() -> None:
    """An image that cannot be pulled leaves no previous log (`logs --previous` says none): the pod's events do."""
    from iptrace.kube.digest import not_running

    finding = not_running("node-b", "kube-system/kube-proxy-x7k2p: ImagePullBackOff")
    assert finding.fix.startswith("read why its container does not start: `kubectl -n kube-system describe pod "
                                  "kube-proxy-x7k2p` (its events)")


def test_a_service_missing_on_one_node() -> None:
    services = base_services()
    lagging = [s for s in services if s.name != "affine"]
    report = audit([node("node-a", services), node("node-b", services), node("node-c", lagging)], None)
    assert by_node(report) == {"node-c": [("kube-proxy-stale", "error", None),
                                          ("service-missing-on-node", "error", "default/affine")]}, show(report)


def test_two_nodes_that_disagree_are_both_told() -> None:
    old, new = stale_services()
    report = audit([node("node-a", new), node("node-b", old)], None)
    found = by_node(report)
    assert ("endpoints-differ", "warning", "default/web:http") in found["node-a"], show(report)
    assert ("endpoints-differ", "error", "default/web:http") in found["node-b"], show(report)


def test_addresses_that_differ_are_worded_as_addresses() -> None:
    """A LoadBalancer Service's IPs and source ranges differ on one node: the finding names the addresses as a
    person writes them (`none`, one address, `[a, b]`), never the tuple they are held in (`('203.0.113.10',)`)."""
    services = base_services()
    svc(services, "local-lb").lb_source_ranges = ["198.51.100.0/24"]
    odd = copy.deepcopy(services)
    svc(odd, "local-lb").lb_ips = ["203.0.113.10", "203.0.113.11"]
    svc(odd, "local-lb").lb_source_ranges = ["192.168.49.0/24", "198.51.100.0/24"]
    bare = copy.deepcopy(services)
    svc(bare, "local-lb").lb_ips = []
    svc(bare, "local-lb").external_ips = []
    report = audit([node("node-a", services), node("node-b", odd), node("node-c", services)], None)
    # (the odd LB IP, which the other nodes do not capture, also answers the node's own clients differently)
    said = {f.summary.split(": ", 1)[1]: f.detail.split(". ", 1)[0] for f in report.findings
            if f.id == "forwarding-differs" and " on this node, " in f.summary}
    assert said == {
        "external/LoadBalancer IPs is [203.0.113.10, 203.0.113.11] on this node, 203.0.113.10 on other nodes":
            "Other nodes: node-a=203.0.113.10, node-c=203.0.113.10",
        "loadBalancerSourceRanges is [192.168.49.0/24, 198.51.100.0/24] on this node, 198.51.100.0/24 on other "
        "nodes": "Other nodes: node-a=198.51.100.0/24, node-c=198.51.100.0/24"}, show(report)
    report = audit([node("node-a", services), node("node-b", bare), node("node-c", services)], None)
    said = {f.summary.split(": ", 1)[1] for f in report.findings if f.id == "forwarding-differs"}
    assert "external/LoadBalancer IPs is none on this node, 203.0.113.10 on other nodes" in said, show(report)


def test_node_without_kube_proxy() -> None:
    services = base_services()
    bare = Dumped("node-c", load("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"),
                  (NODES["node-c"],))
    for cluster in (None, cluster_of(services)):
        report = audit([node("node-a", services), node("node-b", services), bare], cluster)
        assert by_node(report) == {"node-c": [("no-kube-proxy-rules", "error", None)]}, show(report)
        assert [n.status for n in report.nodes] == ["ok", "ok", "no-kube-proxy"]


def test_a_node_file_cut_before_kube_proxys_service_rules_is_told_to_be_collected_again() -> None:
    # Its filter table only, with kube-proxy's KUBE-FORWARD: kube-proxy runs there, the file lacks its nat rules.
    cut = Dumped("node-c", load("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:KUBE-FORWARD - [0:0]\n"
                                "-A FORWARD -j KUBE-FORWARD\nCOMMIT\n"), (NODES["node-c"],))
    services = base_services()
    report = audit([node("node-a", services), node("node-b", services), cut], None)
    (finding,) = [f for f in report.findings if f.node == "node-c"]
    assert finding.summary == "node-c: no kube-proxy iptables rules (partial dump)", show(report)
    assert "collect this node's whole `iptables-save`" in finding.fix and "check that kube-proxy" not in finding.fix


def test_legacy_backend_split() -> None:
    services = base_services()
    split = Dumped("node-b", load(LEGACY_WARNING + dump_text(services, "node-b")), (NODES["node-b"],),
                   load(dump_text(services, "node-b")))
    report = audit([node("node-a", services), split, node("node-c", services)], cluster_of(services))
    assert by_node(report) == {"node-b": [("iptables-backend-split", "warning", None)]}, show(report)
    assert "kube-proxy Service port" in report.findings[0].detail


def test_another_era_is_a_warning() -> None:
    services = [s for s in base_services() if s.name != "itp"]
    report = audit([node("node-a", services), node("node-b", services), node("node-c", services, era="xlb")],
                   cluster_of(services))
    assert by_node(report) == {"node-c": [("era-mismatch", "warning", None)]}, show(report)
    assert "KUBE-XLB era" in report.findings[0].summary


def test_a_node_whose_dump_does_not_parse(tmp_path: Path) -> None:
    services = base_services()
    good = tmp_path / "snap" / "node-a"
    bad = tmp_path / "snap" / "node-b"
    store.write_node_dir(good, {store.DUMP_FILE: dump_text(services, "node-a").encode()},
                         {"node": "node-a", "addresses": [NODES["node-a"]]})
    store.write_node_dir(bad, {store.DUMP_FILE: b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j\nCOMMIT\n"},
                         {"node": "node-b", "addresses": [NODES["node-b"]]})
    broken_meta = tmp_path / "snap" / "node-c"
    store.write_node_dir(broken_meta, {store.DUMP_FILE: dump_text(services, "node-c").encode()}, {})
    (broken_meta / store.META_FILE).write_text("{not json")
    inputs = inputs_from_directory(tmp_path / "snap", cluster=cluster_of(services))
    assert [i.name for i in inputs] == ["node-a", "node-b", "node-c"]
    assert not inputs[2].analyses and "meta.json:1:2: unreadable metadata" in (inputs[2].error or "")
    inputs = inputs[:2]
    assert not inputs[1].analyses and inputs[1].error and "iptables-save.txt:3" in inputs[1].error
    assert inputs[1].error.endswith("(--lenient reads past it and analyses the rest)")  # (it would)
    report = audit(inputs, cluster_of(services))
    assert by_node(report) == {"node-b": [("load-error", "error", None)]}, show(report)
    assert report.findings[0].detail == inputs[1].error
    assert [n.status for n in report.nodes] == ["ok", "load-error"]
    text = render_audit_text(report)
    assert inputs[1].error in text


@pytest.mark.parametrize("damage", ["address", "meta-dir", "ip6-dir", "conntrack-dir"])
def test_a_damaged_node_directory_is_one_load_error(tmp_path: Path, damage: str) -> None:
    """A node whose meta.json names a non-address, or whose files are directories, is one load-error naming the
    file; the other nodes are audited (neither an internal error for the whole run, nor a silently lost file)."""
    services = base_services()
    for name in ("node-a", "node-b"):
        store.write_node_dir(tmp_path / name, {store.DUMP_FILE: dump_text(services, name).encode()},
                             {"node": name, "addresses": [NODES[name]]})
    bad = tmp_path / "node-b"
    wrong = {"address": store.META_FILE, "meta-dir": store.META_FILE, "ip6-dir": store.IP6_DUMP_FILE,
             "conntrack-dir": store.CONNTRACK_FILE}[damage]
    if damage == "address":
        (bad / wrong).write_text(json.dumps({"node": "node-b", "addresses": ["node-b.example"]}))
    else:
        (bad / wrong).unlink(missing_ok=True)
        (bad / wrong).mkdir()
    inputs = inputs_from_directory(tmp_path, cluster=cluster_of(services))
    assert [i.name for i in inputs] == ["node-a", "node-b"]
    assert inputs[0].analyses and not inputs[1].analyses
    assert wrong in (inputs[1].error or ""), inputs[1].error


def test_node_not_in_the_cluster_data_is_said() -> None:
    services = base_services()
    stranger = Dumped("10.9.9.9", dump(services, "node-a"), ("10.9.9.9",))
    assert kube_node_for("10.9.9.9", ("10.9.9.9",), cluster_of(services)) is None
    assert kube_node_for("x", ("127.0.0.1", NODES["node-b"]), cluster_of(services)) == "node-b"
    assert kube_node_for("node-c", (), cluster_of(services)) == "node-c"
    report = audit([stranger], cluster_of(services))
    assert by_node(report) == {"10.9.9.9": [("node-not-in-cluster", "warning", None)]}, show(report)


# ------------------------------------------------------------------------------------------------ renderers


def test_json_report_is_stable_and_serializable() -> None:
    old, new = stale_services()
    report = audit([node("node-a", new), node("node-b", old), node("node-c", new)], cluster_of(new))
    doc = audit_to_json(report)
    assert list(doc) == ["format", "cluster", "ok", "counts", "nodes", "findings"]
    assert doc["ok"] is False and doc["counts"] == {"error": 2, "warning": 1, "info": 0}
    assert doc["cluster"] == "test cluster"
    assert list(doc["nodes"][0]) == ["name", "status", "kube_node", "era", "version_hint", "mode", "dataplane", "services",
                                     "findings", "error"]
    assert doc["nodes"][1]["findings"] == {"error": 2, "warning": 1, "info": 0}
    assert list(doc["findings"][0]) == ["id", "severity", "node", "service", "summary", "detail", "fix", "evidence"]
    assert json.loads(json.dumps(doc)) == doc


def test_text_report_is_short_and_ordered() -> None:
    old, new = stale_services()
    report = audit([node("node-a", new), node("node-b", old), node("node-c", new)], cluster_of(new))
    text = render_audit_text(report)
    lines = text.splitlines()
    assert lines[0] == "Audit of 3 nodes against test cluster: 2 errors, 1 warning."
    marks = [line[0] for line in lines if line[:1] in ("✗", "!")]
    assert marks == ["✗", "✗", "!"]
    table = lines[lines.index(next(x for x in lines if x.startswith("NODE"))):]
    assert table[0].split() == ["NODE", "STATUS", "ERA", "SERVICES", "FINDINGS"]
    assert table[2].startswith("node-b") and "2 errors, 1 warning" in table[2]
    assert len(lines) < 20
    healthy = render_audit_text(audit(fleet(new), cluster_of(new)))
    assert healthy.startswith("Audit of 3 nodes against test cluster: no findings")


# ------------------------------------------------------------------------------------------------ real collect


@pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")
def test_audit_of_a_snapshot_collected_over_real_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old, new = stale_services()
    farm = SshdFarm(tmp_path, keygen(tmp_path / "client_key"))
    try:
        servers = []
        for name, services in (("node-a", new), ("node-b", old)):
            ip = NODES[name]
            scripts = {
                "iptables-save": "#!/bin/sh\ncat <<'EOF'\n" + dump_text(services, name) + "EOF\n",
                "iptables": '#!/bin/sh\n[ "$1" = --version ] && echo "iptables v1.8.9 (nf_tables)" && exit 0\n'
                            "exit 2\n",
                "ip": "#!/bin/sh\ncat <<'EOF'\n"
                      "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
                      f"2: eth0    inet {ip}/24 brd 192.168.49.255 scope global eth0\\       valid_lft forever "
                      "preferred_lft forever\nEOF\n",
            }
            servers.append(farm.start(name, ip=ip, scripts=scripts))
        (tmp_path / "ssh_config").write_text("")
        results = collect([f"127.0.0.1:{s.port}" for s in servers], out_dir=tmp_path / "snap",
                          identity_files=[farm.client_key], user="root",
                          known_hosts=farm.known_hosts(tmp_path / "known_hosts"),
                          ssh_config=tmp_path / "ssh_config", connect_timeout=5, command_timeout=10)
    finally:
        farm.stop_all()
    assert all(r.ok for r in results), [(r.node, r.error) for r in results]
    inputs = inputs_from_directory(tmp_path / "snap", cluster=cluster_of(new))
    again = [node_input(s, cluster=cluster_of(new)) for s in store.list_snapshot(tmp_path / "snap")]
    assert [(i.name, i.addresses, i.error, sorted(i.analyses)) for i in inputs] == [
        (i.name, i.addresses, i.error, sorted(i.analyses)) for i in again]
    report = audit(inputs, cluster_of(new))
    names = {s.port: f"127.0.0.1:{s.port}" for s in servers}
    stale_node = names[servers[1].port]
    assert [(n.name, n.kube_node, n.status) for n in report.nodes] == sorted(
        [(names[servers[0].port], "node-a", "ok"), (stale_node, "node-b", "ok")])
    found = by_node(report)
    assert set(found) == {stale_node}, show(report)
    assert ("stale-endpoints", "error", "default/web:http") in found[stale_node]
    assert ("kube-proxy-stale", "error", None) in found[stale_node]
    doc = audit_to_json(report)
    assert doc["ok"] is False
    # Local endpoints were judged with the Node names matched through the collected addresses.
    assert copy.deepcopy(doc) == json.loads(json.dumps(doc))


def test_an_ipv6_only_node_is_read_by_its_ipv6_rules(tmp_path: Path) -> None:
    """A single-stack IPv6 node in iptables mode: kube-proxy's rules are all in ip6tables-save.txt, the IPv4
    iptables-save.txt holds only kubelet's chains. Its mode, layout and cluster are its IPv6 rules' (not 'none'
    from the empty IPv4 table, nor a proxy-mode-mismatch with a node whose IPv4 rules are kube-proxy's)."""
    from click.testing import CliRunner

    from iptrace.cli import main
    from tests.conftest import SAMPLES

    kubelet_only = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n"
    for name in ("node-a", "node-b"):
        store.write_node_dir(tmp_path / name, {store.DUMP_FILE: kubelet_only.encode(),
                                               store.IP6_DUMP_FILE: (SAMPLES / "ipv6.txt").read_bytes()},
                             {"node": name, "addresses": []})
    store.write_node_dir(tmp_path / "node-c", {store.DUMP_FILE: (SAMPLES / "ipv6.txt").read_bytes()},
                         {"node": "node-c", "addresses": []})
    result = CliRunner().invoke(main, ["audit", str(tmp_path), "-o", "json"])
    doc = json.loads(result.stdout)
    assert [(n["name"], n["mode"], n["era"]) for n in doc["nodes"]] == [
        (name, "iptables", "KUBE-EXT era") for name in ("node-a", "node-b", "node-c")], doc["nodes"]
    assert doc["findings"] == [] and result.exit_code == 0, doc["findings"]


def test_services_and_diff_of_an_ipv6_only_node_directory(tmp_path: Path) -> None:
    """`services DIR/NODE` and `diff DIR/NODE1 DIR/NODE2` read an IPv6-only node's ip6tables-save.txt (its
    iptables-save.txt holds only kubelet's chains): an endpoint changed there is a difference, not 'no
    differences' from the two IPv4 tables."""
    from click.testing import CliRunner

    from iptrace.cli import main
    from tests.conftest import SAMPLES

    kubelet_only = b"*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n"
    v6 = (SAMPLES / "ipv6.txt").read_text()
    assert v6.count("fd00:10:244:1::7") > 1
    for name, text in (("node-a", v6), ("node-b", v6.replace("fd00:10:244:1::7", "fd00:10:244:1::8"))):
        store.write_node_dir(tmp_path / name, {store.DUMP_FILE: kubelet_only, store.IP6_DUMP_FILE: text.encode()},
                             {"node": name, "addresses": []})
    services = CliRunner().invoke(main, ["services", str(tmp_path / "node-a"), "-o", "json"])
    assert services.exit_code == 0, services.output
    assert any(s["cluster_ip"] == "fd00:10:96::c4f" for s in json.loads(services.stdout))
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "node-a"), str(tmp_path / "node-b"), "-o", "json"])
    doc = json.loads(result.stdout)
    assert not doc["equivalent"] and doc["services_changed"], doc
    assert {e["endpoint"] for c in doc["services_changed"] for e in c["endpoints"]} >= {
        "[fd00:10:244:1::7]:8080", "[fd00:10:244:1::8]:8080"}


def test_no_kube_proxy_rules_beside_legacy_tables_sends_to_the_legacy_backend() -> None:
    # iptables-nft-save with only kubelet's chains and the 'iptables-legacy tables are present' warning: restarting
    # or checking kube-proxy's mode is not the fix a reader needs first; its rules may be in the legacy backend,
    # not collected. And the summary does not end in the era's name "(none)", which says nothing.
    from click.testing import CliRunner

    from iptrace.cli import main

    sample = Path(__file__).resolve().parent.parent / "sample_dumps"
    for name, legacy in (("legacy-split-nft.txt", True), ("no-kube-proxy.txt", False)):
        result = CliRunner().invoke(main, ["audit", str(sample / name), "-o", "json"])
        found = [f for f in json.loads(result.stdout)["findings"] if f["id"] == "no-kube-proxy-rules"]
        assert len(found) == 1 and not found[0]["summary"].endswith("(none)"), found
        assert ("iptables-legacy-save" in found[0]["fix"]) is legacy, found[0]["fix"]


def test_a_node_the_cluster_data_does_not_name_is_told_how_to_give_its_address() -> None:
    # A plain dump file has no addresses: "collect the node's addresses" was no way to give them to audit.
    from click.testing import CliRunner

    from iptrace.cli import main

    sample = Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends.txt"
    cluster = Path(__file__).resolve().parent / "data" / "cluster" / "kubectl-get-all.json"
    result = CliRunner().invoke(main, ["audit", str(sample), "--cluster", str(cluster), "-o", "json"])
    found = [f for f in json.loads(result.stdout)["findings"] if f["id"] == "node-not-in-cluster"]
    assert len(found) == 1 and "--node-ip IP" in found[0]["fix"], found
