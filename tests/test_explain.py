"""`iptrace explain` on the realistic sample dumps: one test per diagnosis id of SPEC.md's catalogue, each with
the near-misses that must not fire it; the JSON shape; evidence that is really in the dump; exit statuses."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.explain import Explainer, Explanation
from iptrace.explain.catalogue import CATALOGUE
from iptrace.explain.diagnosis import Diagnosis
from iptrace.iptables import load, load_path
from iptrace.render.explain import explain_to_json, render_explain_text
from tests.dumps import explainer as make_explainer

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
GOLDEN = Path(__file__).resolve().parent / "golden" / "explain"
SCENARIOS = json.loads((SAMPLES / "scenarios.json").read_text())


def node_ips(name: str) -> tuple[str, ...]:
    return tuple(SCENARIOS[name]["node_ips"])


@cache
def explainer(name: str, with_node_ips: bool = True) -> Explainer:
    return make_explainer(load_path(SAMPLES / name), node_ips=node_ips(name) if with_node_ips else ())


def explain(name: str, dst: str, dport: int, src: str, *, proto: str = "tcp",
            with_node_ips: bool = True) -> Explanation:
    report = explainer(name, with_node_ips).explain(dst, dport, proto=proto, src=src)
    assert len(report.explanations) == 1
    return report.explanations[0]


def ids(e: Explanation) -> list[str]:
    return [d.id for d in e.diagnoses]


def the(e: Explanation, diagnosis_id: str) -> Diagnosis:
    found = [d for d in e.diagnoses if d.id == diagnosis_id]
    assert len(found) == 1, f"expected one {diagnosis_id}, got {ids(e)}:\n{describe(e)}"
    return found[0]


def describe(e: Explanation) -> str:
    lines = [e.headline]
    for o in e.trace.outcomes:
        lines.append(f"  {o.verdict} {o.destination} p={o.probability}")
        lines += [f"    {s.table} {s.chain} line {s.line}: {s.rule}" for s in o.path]
    lines += [f"  [{d.id}/{d.severity}] {d.summary}" for d in e.diagnoses]
    return "\n".join(lines)


def assert_healthy(e: Explanation, *endpoints: str) -> None:
    assert ids(e) == ["healthy"], describe(e)
    assert not e.has_error
    if endpoints:
        assert sorted(o.destination for o in e.trace.outcomes) == sorted(endpoints), describe(e)


def assert_evidence_is_in_the_dump(name: str, d: Diagnosis) -> None:
    lines = (SAMPLES / name).read_text().splitlines()
    for ev in d.evidence:
        assert 0 < ev.line <= len(lines), (d.id, ev)
        # Evidence is the rule as iptables-save prints it; the kernel's listing may space some options twice.
        assert lines[ev.line - 1].split() == ev.rule.split(), \
            f"{d.id}: line {ev.line} is {lines[ev.line - 1]!r}, not {ev.rule!r}"


FB = "nodeport-fb-backends.txt"
FB_NODE = "192.168.49.2"
FB_IP = "10.101.234.168"


# ------------------------------------------------------------------------------------------------ catalogue


def test_every_spec_id_is_in_the_catalogue() -> None:
    spec_ids = {"target-port-on-service-ip", "node-port-on-service-ip", "service-port-on-node-ip", "unknown-port",
                "not-a-service-address", "wrong-protocol", "no-endpoints", "no-local-endpoints",
                "source-range-blocked", "hairpin", "no-kube-proxy-rules", "iptables-backend-split",
                "stale-endpoints", "missing-service"}
    assert spec_ids <= set(CATALOGUE)


# ------------------------------------------------------------------------------------------------ per id


@pytest.mark.parametrize("src", ["pod", "node", "external"])
def test_target_port_on_service_ip(src: str) -> None:
    e = explain(FB, FB_IP, 8001, src)
    d = the(e, "target-port-on-service-ip")
    assert d.severity == "error" and e.has_error
    assert d.summary == "8001 is the targetPort of default/fb-backends:ka-port; the Service listens on 5001"
    assert "10.101.234.168:5001 from inside the cluster" in d.fix
    assert "192.168.49.2:30904" in d.fix
    assert "10.244.1.7:8001" in d.fix and "10.244.2.3:8001" in d.fix
    assert {(s.address, s.port, s.source) for s in d.instead} == {
        (FB_IP, 5001, "pod"), (FB_NODE, 30904, "external")}
    assert e.verdict in ("ACCEPT", "CONTINUE") and not any(o.verdict == "DNAT" for o in e.trace.outcomes)
    assert_evidence_is_in_the_dump(FB, d)
    assert "--dport 5001" in d.evidence[0].rule
    # Near-miss: the service port on the same ClusterIP is healthy.
    assert_healthy(explain(FB, FB_IP, 5001, src), "10.244.1.7:8001", "10.244.2.3:8001")


def test_target_port_on_a_loadbalancer_ip_and_ipv6() -> None:
    name = "loadbalancer-source-ranges.txt"
    d = the(explain(name, "203.0.113.50", 8443, "198.51.100.7"), "target-port-on-service-ip")
    assert "203.0.113.50:443 from 198.51.100.0/24, 192.168.49.0/24 (its loadBalancerSourceRanges)" in d.fix
    assert_evidence_is_in_the_dump(name, d)
    v6 = the(explain("ipv6.txt", "fd00:10:96::5e1", 8080, "pod"), "target-port-on-service-ip")
    assert "[fd00:10:96::5e1]:80 from inside the cluster" in v6.fix
    assert "[fd00:10:244:1::7]:8080" in v6.fix
    assert_evidence_is_in_the_dump("ipv6.txt", v6)


def test_node_port_on_service_ip() -> None:
    e = explain(FB, FB_IP, 30904, "pod")
    d = the(e, "node-port-on-service-ip")
    assert d.severity == "error"
    assert d.summary == "30904 is the nodePort of default/fb-backends:ka-port, used on its ClusterIP 10.101.234.168"
    assert "10.101.234.168:5001" in d.fix and "192.168.49.2:30904" in d.fix
    assert_evidence_is_in_the_dump(FB, d)
    # Another Service's nodePort on this ClusterIP is the same mistake.
    other = the(explain(FB, FB_IP, 32488, "pod"), "node-port-on-service-ip")
    assert "default/karma-daemon:http" in other.summary and "10.106.199.236:80" in other.fix
    # Near-miss: the nodePort on the node's address is healthy.
    assert_healthy(explain(FB, FB_NODE, 30904, "external"), "10.244.1.7:8001", "10.244.2.3:8001")


def test_service_port_on_node_ip() -> None:
    e = explain(FB, FB_NODE, 5001, "external")
    d = the(e, "service-port-on-node-ip")
    assert d.severity == "error"
    assert "192.168.49.2:30904" in d.fix and "10.101.234.168:5001 from inside the cluster" in d.fix
    assert_evidence_is_in_the_dump(FB, d)
    # A service port whose Service has no nodePort: say that it needs one to be reached from outside.
    https = the(explain(FB, FB_NODE, 443, "external"), "service-port-on-node-ip")
    assert "10.96.0.1:443 from inside the cluster" in https.fix and "has no nodePort" in https.fix
    # Near-misses: a nodePort on the node address, and the service port on the ClusterIP.
    assert_healthy(explain(FB, FB_NODE, 32461, "external"))
    assert_healthy(explain(FB, "10.106.199.236", 2121, "external"))


def test_unknown_port() -> None:
    d = the(explain(FB, "10.106.199.236", 8081, "pod"), "unknown-port")
    assert d.severity == "error"
    assert d.summary == "10.106.199.236 is the ClusterIP of default/karma-daemon, which has no port 8081/tcp"
    assert d.fix == "use one of the ports it has: 80/tcp (http), 2121/tcp (ftp)"
    assert len(d.evidence) == 2
    assert_evidence_is_in_the_dump(FB, d)
    assert ids(explain(FB, "10.106.199.236", 80, "pod")) == ["healthy"]


def test_not_a_service_address() -> None:
    # An address in the Service range that no rule names: deleted, unsynced or mistyped (an error).
    e = explain(FB, "10.101.234.169", 5001, "pod")
    d = the(e, "not-a-service-address")
    assert d.severity == "error" and "looks like a ClusterIP" in d.detail and "10.101.0.0/16" in d.detail
    # A pod IP on its own port works without kube-proxy: only a note.
    pod = the(explain(FB, "10.244.1.7", 8001, "pod"), "not-a-service-address")
    assert pod.severity == "info" and "a pod IP, an endpoint of default/fb-backends:ka-port" in pod.summary
    wrong_pod_port = the(explain(FB, "10.244.1.7", 5001, "pod"), "not-a-service-address")
    assert wrong_pod_port.severity == "warning" and "10.244.1.7:8001" in wrong_pod_port.fix
    # Far from every Service address: a warning.
    far = the(explain(FB, "172.20.5.5", 80, "pod"), "not-a-service-address")
    assert far.severity == "warning"
    # A node address with no nodePort on that port.
    ssh = the(explain(FB, FB_NODE, 2222, "external"), "not-a-service-address")
    assert ssh.severity == "warning" and "30904/tcp (default/fb-backends:ka-port)" in ssh.fix
    # Without --node-ip, a nodePort on the node address is named, with the way to say it is a node address.
    guess = the(explain(FB, FB_NODE, 30904, "external", with_node_ips=False), "not-a-service-address")
    assert "30904 is the nodePort of default/fb-backends:ka-port" in guess.detail and "--node-ip" in guess.detail
    # Near-miss: every Service address of the dump is one.
    for svc in explainer(FB).view.services:
        e = explain(FB, svc.cluster_ip, svc.port, "pod", proto=svc.protocol.lower())
        assert "not-a-service-address" not in ids(e), describe(e)


def test_wrong_protocol() -> None:
    e = explain(FB, "10.96.0.10", 9153, "pod", proto="udp")
    d = the(e, "wrong-protocol")
    assert d.severity == "error"
    assert d.summary == "10.96.0.10:9153 is kube-system/kube-dns:metrics over TCP, not UDP"
    assert "no answer ever comes back" in d.detail
    assert_evidence_is_in_the_dump(FB, d)
    node = the(explain(FB, FB_NODE, 30904, "external", proto="udp"), "wrong-protocol")
    assert node.summary == "nodePort 30904 of default/fb-backends:ka-port is TCP, not UDP"
    assert_evidence_is_in_the_dump(FB, node)
    # Port 53 is kube-dns's over UDP and over TCP: an SCTP question names both, and both ways to use it.
    both = the(explain(FB, "10.96.0.10", 53, "pod", proto="sctp"), "wrong-protocol")
    assert both.summary == ("10.96.0.10:53 is kube-system/kube-dns:dns-tcp over TCP and kube-system/kube-dns:dns "
                            "over UDP, not SCTP")
    assert both.fix.startswith("use TCP (10.96.0.10:53/tcp) or UDP (10.96.0.10:53/udp)")
    assert sorted(s.proto for s in both.instead) == ["tcp", "udp"]
    assert len(both.evidence) == 2
    assert_evidence_is_in_the_dump(FB, both)
    # Near-misses: port 53 exists for both protocols.
    assert_healthy(explain(FB, "10.96.0.10", 53, "pod", proto="udp"), "10.244.0.2:53", "10.244.0.3:53")
    assert_healthy(explain(FB, "10.96.0.10", 53, "pod", proto="tcp"))


@pytest.mark.parametrize(("name", "dst", "port", "service"), [
    ("no-endpoints.txt", "10.98.7.10", 8080, "default/orders:http"),
    ("no-endpoints.txt", "192.168.49.2", 30080, "default/legacy-web:http"),
    ("no-endpoints.txt", "192.168.49.50", 80, "default/legacy-web:http"),
    ("xlb-era.txt", "10.98.7.10", 8080, "default/orders:http"),
    ("ipv6.txt", "fd00:10:96::7d", 8080, "default/orders:http"),
])
def test_no_endpoints(name: str, dst: str, port: int, service: str) -> None:
    for src in ("pod", "node", "external"):
        e = explain(name, dst, port, src)
        d = the(e, "no-endpoints")
        assert d.severity == "error"
        if src != "node":  # the node's own packets skip KUBE-EXTERNAL-SERVICES (INPUT/FORWARD only)
            assert e.verdict == "REJECT" and "connection refused" in d.detail, describe(e)
        assert d.summary == f"{service} has no ready endpoints, so the connection fails"
        assert "kubernetes.io/service-name=" + service.split("/")[1].split(":")[0] in d.fix
        assert_evidence_is_in_the_dump(name, d)
        assert "has no endpoints" in d.evidence[0].rule and "-j REJECT" in d.evidence[0].rule


def test_no_endpoints_near_miss() -> None:
    e = explain("no-endpoints.txt", "10.96.0.10", 53, "pod", proto="udp")
    assert_healthy(e)


def test_no_local_endpoints() -> None:
    name = "etp-local-no-local-endpoints.txt"
    for dst, port in (("192.168.49.240", 80), ("192.168.49.2", 31080)):
        e = explain(name, dst, port, "external")
        d = the(e, "no-local-endpoints")
        assert d.severity == "error" and e.verdict == "DROP"
        assert "externalTrafficPolicy Local" in d.summary
        assert "10.103.45.67:80" in d.fix and "32101" in d.fix
        assert_evidence_is_in_the_dump(name, d)
        assert "has no local endpoints" in d.evidence[0].rule
        # Pods and the node itself are short-circuited to all endpoints: it works for them.
        assert_healthy(explain(name, dst, port, "pod"), "10.244.1.14:80", "10.244.2.9:80")
        assert_healthy(explain(name, dst, port, "node"), "10.244.1.14:80", "10.244.2.9:80")
    # The KUBE-XLB era marks the packet for kubelet's KUBE-FIREWALL instead.
    xlb = the(explain("xlb-era.txt", "172.31.10.20", 30300, "external"), "no-local-endpoints")
    assert xlb.summary.startswith("monitoring/grafana:service has externalTrafficPolicy Local")
    assert_evidence_is_in_the_dump("xlb-era.txt", xlb)
    lb = the(explain("xlb-era.txt", "52.14.88.202", 3000, "external"), "no-local-endpoints")
    assert "KUBE-MARK-DROP" in lb.detail
    assert "target-port-on-service-ip" not in ids(explain("xlb-era.txt", "52.14.88.202", 3000, "external"))


def test_no_local_endpoints_near_miss_with_a_local_endpoint() -> None:
    e = explain("etp-local-with-endpoints.txt", "192.168.49.240", 80, "external")
    assert_healthy(e, "10.244.0.12:80")
    assert not any(o.masquerade for o in e.trace.outcomes)
    assert "For a client outside the cluster (203.0.113.1) it is not masqueraded: the endpoint sees the client's own " \
           "address" in e.diagnoses[0].detail


def test_source_range_blocked() -> None:
    name = "loadbalancer-source-ranges.txt"
    e = explain(name, "203.0.113.50", 443, "203.0.113.9")
    d = the(e, "source-range-blocked")
    assert d.severity == "error" and e.verdict == "DROP"
    assert "198.51.100.0/24, 192.168.49.0/24" in d.detail
    assert "spec.loadBalancerSourceRanges of default/admin-api" in d.fix
    assert {s.source for s in d.instead} == {"198.51.100.0/24", "192.168.49.0/24"}
    assert_evidence_is_in_the_dump(name, d)
    # Near-misses: an allowed client, and the node itself (a range covers the node's address).
    assert_healthy(explain(name, "203.0.113.50", 443, "198.51.100.7"), "10.244.1.20:8443", "10.244.2.21:8443")
    assert_healthy(explain(name, "203.0.113.50", 443, "node"))
    xlb = the(explain("xlb-era.txt", "52.14.88.203", 443, "203.0.113.5"), "source-range-blocked")
    assert_evidence_is_in_the_dump("xlb-era.txt", xlb)
    # KUBE-MARK-DROP only marks it: kubelet drops it only when the LB IP is the node's own, so it goes on unchanged.
    assert "is dropped" not in xlb.summary and "never reaches a pod" in xlb.summary
    assert "KUBE-MARK-DROP" in xlb.detail and "52.14.88.203 unchanged" in xlb.detail
    assert "and is dropped" not in xlb.detail
    assert_healthy(explain("xlb-era.txt", "52.14.88.203", 443, "198.51.100.9"))
    v6 = the(explain("ipv6.txt", "2001:db8:49::240", 80, "2001:db8:ffff::1"), "source-range-blocked")
    assert_evidence_is_in_the_dump("ipv6.txt", v6)
    assert_healthy(explain("ipv6.txt", "2001:db8:49::240", 80, "2001:db8:100::5"))


def test_hairpin() -> None:
    name = "session-affinity.txt"
    e = explain(name, "10.97.3.3", 80, "10.244.0.50")
    d = the(e, "hairpin")
    assert d.severity == "info" and not e.has_error
    assert "33.3%" in d.detail and "hairpin" in d.fix
    assert_evidence_is_in_the_dump(name, d)
    assert "healthy" in ids(e)
    hairpin_branch = next(o for o in e.trace.outcomes if o.destination == "10.244.0.50:8080")
    assert hairpin_branch.masquerade
    # Near-miss: a pod that is not an endpoint of the Service.
    assert "hairpin" not in ids(explain(name, "10.97.3.3", 80, "pod"))


def test_no_kube_proxy_rules() -> None:
    for src in ("pod", "node", "external"):
        e = explain("no-kube-proxy.txt", "10.96.0.1", 443, src)
        d = the(e, "no-kube-proxy-rules")
        assert d.severity == "error" and e.has_error
        assert "KUBE-SERVICES" in d.detail
    assert "no-kube-proxy-rules" not in ids(explain(FB, FB_IP, 5001, "pod"))


def test_blocked_by_rule_on_a_host_firewall() -> None:
    e = explain("no-kube-proxy.txt", "10.96.0.1", 443, "external")
    d = the(e, "blocked-by-rule")
    assert d.summary == "the filter FORWARD chain's policy DROP stops the packet"
    assert "blocked-by-rule" not in ids(explain("no-kube-proxy.txt", "10.96.0.1", 443, "node"))


def test_iptables_backend_split() -> None:
    name = "legacy-split-nft.txt"
    e = explain(name, FB_IP, 5001, "pod")
    split = the(e, "iptables-backend-split")
    assert split.severity == "warning"
    assert_evidence_is_in_the_dump(name, split)
    assert split.evidence[0].rule.startswith("# Warning: iptables-legacy tables present")
    missing = the(e, "no-kube-proxy-rules")
    assert "iptables-legacy" in missing.detail and "iptables-legacy-save" in missing.fix
    assert_evidence_is_in_the_dump(name, missing)
    assert "iptables-backend-split" not in ids(explain(FB, FB_IP, 5001, "pod"))
    assert "iptables-backend-split" not in ids(explain("no-kube-proxy.txt", "10.96.0.1", 443, "pod"))


def test_diagnoses_on_the_comment_less_large_cluster_dump() -> None:
    name = "large-cluster-no-comments.txt"
    ex = explainer(name)
    svc = next(s for s in ex.view.services if s.cluster_ip and s.endpoints and s.port != s.endpoints[0].port)
    target = svc.endpoints[0].port
    e = explain(name, svc.cluster_ip, target, "pod")
    assert the(e, "target-port-on-service-ip").summary.startswith(f"{target} is the targetPort of {svc.label}")
    assert_healthy(explain(name, svc.cluster_ip, svc.port, "pod"))


def test_cni_rules_in_front_of_kube_proxy_do_not_hide_the_answer() -> None:
    assert "target-port-on-service-ip" in ids(explain("calico-and-kube-proxy.txt", "10.99.41.8", 8080, "pod"))
    assert_healthy(explain("calico-and-kube-proxy.txt", "10.99.41.8", 80, "pod"))
    assert "node-port-on-service-ip" in ids(explain("flannel-and-kube-proxy.txt", "10.110.15.42", 31880, "pod"))
    assert_healthy(explain("flannel-and-kube-proxy.txt", "10.110.15.42", 80, "pod"))


# ------------------------------------------------------------------------------------------------ with cluster data


def _cluster_case() -> tuple[Any, Any, Any]:
    from tests.test_compare import base_services, cluster_of, dump, svc

    old = base_services()
    new = copy.deepcopy(old)
    svc(new, "web").endpoints = [svc(new, "web").endpoints[0]]  # 10.244.2.5's pod is gone
    from bench.synth import EndpointSpec, PortSpec, ServiceSpec

    new.append(ServiceSpec("default", "fresh", "10.96.10.20", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.2.40", 8080)]))
    return dump(old, "node-a"), cluster_of(new), old


def test_stale_endpoints_and_missing_service_with_cluster_data() -> None:
    ruleset, cluster, _ = _cluster_case()
    ex = make_explainer(ruleset, node_ips=["192.168.49.2"], cluster=cluster)
    stale = ex.explain("10.96.10.1", 80, src="pod").explanations[0]
    d = the(stale, "stale-endpoints")
    assert d.severity == "error" and "10.244.2.5:8080" in d.summary
    assert "healthy" not in ids(stale)
    assert any(ev.line > 0 and "--to-destination 10.244.2.5:8080" in ev.rule for ev in d.evidence)
    missing = ex.explain("10.96.10.20", 80, src="pod").explanations[0]
    assert "missing-service" in ids(missing) and missing.has_error
    # Near-misses: a Service the node agrees with; and without cluster data nothing is said about the API.
    assert ids(ex.explain("10.96.0.10", 53, proto="udp", src="pod").explanations[0]) == ["healthy"]
    plain = make_explainer(ruleset, node_ips=["192.168.49.2"]).explain("10.96.10.1", 80, src="pod").explanations[0]
    assert "stale-endpoints" not in ids(plain)


# ------------------------------------------------------------------------------------------------ JSON and CLI


DIAGNOSIS_KEYS = {"id", "severity", "summary", "detail", "fix", "evidence"}
TRACE_KEYS = {"packet", "entry", "outcomes", "assumptions"}


def check_explanation_json(doc: dict[str, Any], dump: Path) -> None:
    lines = dump.read_text().splitlines()
    assert set(doc) == {"verdict", "headline", "diagnoses", "trace"}
    assert doc["verdict"] in ("DNAT", "ACCEPT", "DROP", "REJECT", "CONTINUE")
    assert isinstance(doc["headline"], str)
    for d in doc["diagnoses"]:
        assert set(d) == DIAGNOSIS_KEYS
        assert d["severity"] in ("error", "warning", "info") and d["id"] in CATALOGUE
        assert all(isinstance(d[k], str) and d[k] for k in ("summary", "detail", "fix"))
        for ev in d["evidence"]:
            assert set(ev) == {"line", "rule"}
            assert lines[ev["line"] - 1] == ev["rule"]
    assert set(doc["trace"]) == TRACE_KEYS
    assert abs(sum(o["probability"] for o in doc["trace"]["outcomes"]) - 1) < 1e-9


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["explain", *args], catch_exceptions=False)


def test_json_for_one_source_and_exit_status_3() -> None:
    dump = SAMPLES / FB
    result = run(str(dump), "--dst", f"{FB_IP}:8001", "--src", "pod", "--node-ip", FB_NODE, "-o", "json")
    assert result.exit_code == 3
    doc = json.loads(result.output)
    check_explanation_json(doc, dump)
    assert [d["id"] for d in doc["diagnoses"]] == ["target-port-on-service-ip"]
    assert doc["trace"]["packet"] == {"src": "10.244.0.4", "dst": FB_IP, "dport": 8001, "proto": "tcp"}
    assert doc["diagnoses"][0]["evidence"] == [{
        "line": 129, "rule": '-A KUBE-SERVICES -d 10.101.234.168/32 -p tcp -m comment --comment '
                             '"default/fb-backends:ka-port cluster IP" -m tcp --dport 5001 -j KUBE-SVC-ZULR7LI7OW7TVCC4'}]


def test_json_per_source_without_src_and_exit_status_0() -> None:
    dump = SAMPLES / "etp-local-with-endpoints.txt"
    ok = run(str(dump), "--dst", "192.168.49.240:80", "--node-ip", "192.168.49.2", "-o", "json")
    assert ok.exit_code == 0
    doc = json.loads(ok.output)
    assert set(doc) == {"destination", "proto", "verdict", "diagnoses", "sources", "differences"}
    assert doc["verdict"] == "DNAT" and doc["destination"] == "192.168.49.240:80"
    assert set(doc["sources"]) == {"pod", "node", "external"}
    for per in doc["sources"].values():
        src = per.pop("src")
        assert per["trace"]["packet"]["src"] == src
        check_explanation_json(per, dump)
    assert {d["id"] for d in doc["diagnoses"]} == {"healthy"}
    bad = run(str(SAMPLES / "etp-local-no-local-endpoints.txt"), "--dst", "192.168.49.240:80",
              "--node-ip", "192.168.49.2", "-o", "json")
    assert bad.exit_code == 3
    doc = json.loads(bad.output)
    assert doc["verdict"] is None
    assert doc["sources"]["external"]["verdict"] == "DROP" and doc["sources"]["pod"]["verdict"] == "DNAT"
    assert "no-local-endpoints" in {d["id"] for d in doc["diagnoses"]}
    assert any("from outside the cluster" in line for line in doc["differences"])


@pytest.mark.parametrize(("args", "status"), [
    ((FB, "--dst", f"{FB_IP}:5001"), 0),
    ((FB, "--dst", "10.244.1.7:8001", "--src", "pod"), 0),  # info only
    ((FB, "--dst", f"{FB_NODE}:2222", "--node-ip", FB_NODE, "--src", "external"), 0),  # a warning only
    ((FB, "--dst", f"{FB_IP}:30904"), 3),
    (("no-endpoints.txt", "--dst", "10.98.7.10:8080", "--src", "node"), 3),
    (("legacy-split-nft.txt", "--dst", f"{FB_IP}:5001"), 3),
    (("session-affinity.txt", "--dst", "10.97.3.3:80", "--src", "10.244.0.50"), 0),
])
def test_exit_status(args: tuple[str, ...], status: int) -> None:
    result = run(str(SAMPLES / args[0]), *args[1:])
    assert result.exit_code == status, result.output
    assert result.output.strip()


def test_text_and_json_agree() -> None:
    report = explainer(FB).explain(FB_IP, 8001, src="pod")
    text = render_explain_text(report)
    doc = explain_to_json(report)
    for d in doc["diagnoses"]:
        assert d["summary"] in text and f"[{d['id']}, {d['severity']}]" in text
        for ev in d["evidence"]:
            assert f"line {ev['line']}: {ev['rule']}" in text


def test_a_dump_from_stdin_has_no_file_but_the_same_answer() -> None:
    text = (SAMPLES / FB).read_text()
    result = CliRunner().invoke(main, ["explain", "-", "--dst", f"{FB_IP}:8001", "--src", "pod"], input=text)
    assert result.exit_code == 3 and "target-port-on-service-ip" in result.output
    assert load(text).rule_count == load_path(SAMPLES / FB).rule_count


# ------------------------------------------------------------------------------------------------ golden prose


GOLDEN_CASES = {
    "target-port-on-service-ip": (FB, f"{FB_IP}:8001", None, "tcp"),
    "node-port-on-service-ip": (FB, f"{FB_IP}:30904", "pod", "tcp"),
    "service-port-on-node-ip": (FB, f"{FB_NODE}:5001", "external", "tcp"),
    "unknown-port": (FB, "10.106.199.236:8081", "pod", "tcp"),
    "not-a-service-address": (FB, "10.101.234.169:5001", "pod", "tcp"),
    "pod-ip": (FB, "10.244.1.7:8001", "pod", "tcp"),
    "wrong-protocol": (FB, "10.96.0.10:9153", "pod", "udp"),
    "no-endpoints": ("no-endpoints.txt", "10.98.7.10:8080", None, "tcp"),
    "no-local-endpoints": ("etp-local-no-local-endpoints.txt", "192.168.49.240:80", None, "tcp"),
    "no-local-endpoints-xlb": ("xlb-era.txt", "52.14.88.202:3000", "external", "tcp"),
    "source-range-blocked": ("loadbalancer-source-ranges.txt", "203.0.113.50:443", "203.0.113.9", "tcp"),
    "hairpin": ("session-affinity.txt", "10.97.3.3:80", "10.244.0.50", "tcp"),
    "no-kube-proxy-rules": ("no-kube-proxy.txt", "10.96.0.1:443", None, "tcp"),
    "iptables-backend-split": ("legacy-split-nft.txt", f"{FB_IP}:5001", "pod", "tcp"),
    "healthy-nodeport": (FB, f"{FB_NODE}:30904", "external", "tcp"),
    "healthy-etp-local": ("etp-local-with-endpoints.txt", "192.168.49.240:80", None, "tcp"),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_prose(case: str, golden: Any) -> None:
    name, dst, src, proto = GOLDEN_CASES[case]
    host, _, port = dst.rpartition(":")
    report = explainer(name).explain(host.strip("[]"), int(port), proto=proto, src=src)
    golden(GOLDEN / f"{case}.txt", render_explain_text(report))


# ------------------------------------------------------------------------------------------------ other rules


def _with_rule_before(anchor: str, rule: str) -> tuple[Explainer, list[str]]:
    lines = (SAMPLES / FB).read_text().splitlines()
    at = lines.index(anchor)
    lines.insert(at, rule)
    return make_explainer(load("\n".join(lines) + "\n"), node_ips=[FB_NODE]), lines


def test_not_forwarded_when_a_rule_before_kube_proxy_diverts_the_packet() -> None:
    ex, lines = _with_rule_before('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                                  "-A PREROUTING -s 203.0.113.0/24 -j RETURN")
    e = ex.explain(FB_IP, 5001, src="203.0.113.1").explanations[0]
    d = the(e, "not-forwarded")
    assert d.severity == "error" and "default/fb-backends:ka-port" in d.summary
    assert all(lines[ev.line - 1] == ev.rule for ev in d.evidence) and d.evidence
    # Near-miss: a source the diverting rule does not match.
    assert_healthy(ex.explain(FB_IP, 5001, src="198.51.100.1").explanations[0])


def test_blocked_by_rule_after_dnat_names_the_rule_and_the_endpoint() -> None:
    ex, lines = _with_rule_before(
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        '-j KUBE-PROXY-FIREWALL', "-A FORWARD -d 10.244.1.7/32 -j DROP")
    e = ex.explain(FB_IP, 5001, src="pod").explanations[0]
    d = the(e, "blocked-by-rule")
    assert d.summary == "a DROP rule in filter FORWARD (line 36) stops the packet after it was sent to 10.244.1.7:8001"
    assert [(ev.line, ev.rule) for ev in d.evidence] == [(36, lines[35])]
    assert "healthy" not in ids(e) and e.has_error


def test_a_packet_dropped_after_dnat_to_every_endpoint_was_forwarded() -> None:
    # A host firewall dropping every endpoint's traffic in FORWARD: kube-proxy did DNAT the packet, so the answer
    # is the rule that stops it, never "not-forwarded" (which said the packet left kube-proxy's chains
    # unrewritten), and it names each endpoint the rule stops it after.
    ex, _ = _with_rule_before(
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        '-j KUBE-PROXY-FIREWALL', "-A FORWARD -d 10.244.0.0/16 -j DROP")
    e = ex.explain(FB_IP, 5001, src="pod").explanations[0]
    assert ids(e) == ["blocked-by-rule"]
    assert the(e, "blocked-by-rule").summary == (
        "a DROP rule in filter FORWARD (line 36) stops the packet after it was sent to 10.244.1.7:8001 or "
        "10.244.2.3:8001")
    # The same with filter FORWARD's policy DROP deciding (a pod's packet is not marked for KUBE-FORWARD's accept).
    text = (SAMPLES / FB).read_text()
    filter_at = text.index("*filter")
    dropping = text[:filter_at] + text[filter_at:].replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]", 1)
    e = make_explainer(load(dropping), node_ips=[FB_NODE]).explain(FB_IP, 5001, src="pod").explanations[0]
    assert ids(e) == ["blocked-by-rule"]
    assert the(e, "blocked-by-rule").summary == (
        "the filter FORWARD chain's policy DROP stops the packet after it was sent to 10.244.1.7:8001 or "
        "10.244.2.3:8001")
    # Near-miss: a rule before kube-proxy's that diverts the packet unrewritten is still not-forwarded.
    ex, _ = _with_rule_before('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                              "-A PREROUTING -s 10.244.0.0/16 -j RETURN")
    assert "not-forwarded" in ids(ex.explain(FB_IP, 5001, src="pod").explanations[0])


@pytest.mark.parametrize(("dst", "port", "src"), [(FB_IP, 8001, "pod"), (FB_IP, 5001, "pod"), ("10.96.0.10", 53, "node"),
                                                 (FB_NODE, 5001, "external"), (FB_IP, 30904, "pod")])
def test_packet_counters_do_not_change_an_answers_evidence(dst: str, port: int, src: str) -> None:
    # `iptables-save -c` writes [packets:bytes] before each rule: the evidence of every diagnosis shows each rule as
    # the trace's path does, without them (address diagnoses quoted them, path-based ones did not: two forms of one
    # line in one answer).
    text = (SAMPLES / FB).read_text()
    counted = "".join(f"[3:180] {line}" if line.startswith("-A ") else line for line in text.splitlines(True))
    plain = make_explainer(load(text), node_ips=[FB_NODE]).explain(dst, port, src=src)
    with_counters = make_explainer(load(counted), node_ips=[FB_NODE]).explain(dst, port, src=src)
    evidence = [[(ev.line, ev.rule) for d in e.diagnoses for ev in d.evidence] for e in plain.explanations]
    assert any(evidence)
    assert [[(ev.line, ev.rule) for d in e.diagnoses for ev in d.evidence]
            for e in with_counters.explanations] == evidence


def test_cli_with_cluster_data_reports_stale_endpoints_for_the_port_asked() -> None:
    cluster = Path(__file__).resolve().parent / "data" / "cluster" / "kubectl-get-all.json"
    result = run(str(SAMPLES / FB), "--dst", "10.106.199.236:80", "--src", "pod", "--node-ip", FB_NODE,
                 "--cluster", str(cluster), "-o", "json")
    assert result.exit_code == 3
    doc = json.loads(result.output)
    assert [(d["id"], d["severity"]) for d in doc["diagnoses"]] == [("stale-endpoints", "error")]
    assert "default/karma-daemon:http" in doc["diagnoses"][0]["summary"]
    lines = (SAMPLES / FB).read_text().splitlines()
    assert all(lines[ev["line"] - 1] == ev["rule"] for ev in doc["diagnoses"][0]["evidence"])
    # Near-miss: a Service the API and the rules agree on.
    ok = run(str(SAMPLES / FB), "--dst", f"{FB_IP}:5001", "--src", "pod", "--node-ip", FB_NODE,
             "--cluster", str(cluster))
    assert ok.exit_code == 0, ok.output


def test_a_node_port_on_a_loopback_address_the_rules_exclude_is_no_node_port() -> None:
    # ipv6.txt jumps to KUBE-NODEPORTS `! -d ::1/128`: [::1]:30080 is not a NodePort (kube-proxy never serves
    # IPv6 NodePorts on localhost), which is no rule "placed before kube-proxy's" diverting the packet.
    e = explain("ipv6.txt", "::1", 30080, "node")
    d = the(e, "node-port-not-on-address")
    assert d.severity == "error" and "not-forwarded" not in ids(e)
    assert "except ::1;" in d.detail and "default/web:http" in d.summary
    assert f"[{node_ips('ipv6.txt')[0]}]:30080" in d.fix
    # Near-miss: the node's own address forwards the same nodePort.
    assert "node-port-not-on-address" not in ids(explain("ipv6.txt", node_ips("ipv6.txt")[0], 30080, "node"))


def test_the_node_reaching_an_endpoint_on_itself_is_no_hairpin() -> None:
    # kubernetes:https's endpoint is the node's own 192.168.49.2:6443: from the node itself the DNATed packet is
    # delivered locally (no pod, no bridge port, no hairpin mode involved), so there is nothing to warn about.
    e = explain(FB, "10.96.0.1", 443, "node")
    assert "hairpin" not in ids(e) and ids(e) == ["healthy"]
    assert [o.destination for o in e.trace.outcomes] == ["192.168.49.2:6443"]
    # Near-miss: a pod that is an endpoint of its own Service does hairpin.
    assert "hairpin" in ids(explain(FB, "10.101.234.168", 5001, "10.244.1.7"))


def test_a_fix_does_not_send_outside_clients_to_a_node_port_this_node_drops() -> None:
    # externalTrafficPolicy Local and no endpoint on this node: its nodePort drops outside clients, so "use
    # <node-ip>:31080 (or any other node's address) from outside" would not work here; only nodes that run one
    # of the Service's endpoints answer.
    e = explain("etp-local-no-local-endpoints.txt", "10.103.45.67", 31080, "pod")
    d = the(e, "node-port-on-service-ip")
    assert "any other node's address" not in d.fix and "a node that runs one of its endpoints" in d.fix, d.fix
    assert all(s.port != 31080 for s in d.instead), d.instead
    # With an endpoint here, this node's address works, but not any other node's (those without one drop it).
    e = explain("etp-local-with-endpoints.txt", "10.103.45.67", 31080, "pod")
    d = the(e, "node-port-on-service-ip")
    assert "any other node's address" not in d.fix and "192.168.49.2:31080 from outside" in d.fix, d.fix
    assert any(s.port == 31080 for s in d.instead), d.instead


def test_a_fix_names_a_load_balancer_ip_only_for_its_source_ranges() -> None:
    # loadBalancerSourceRanges: "203.0.113.50:443 from outside" would not work from any other client.
    e = explain("loadbalancer-source-ranges.txt", "10.100.12.34", 30443, "pod")
    d = the(e, "node-port-on-service-ip")
    assert "203.0.113.50:443 from 198.51.100.0/24, 192.168.49.0/24 (its loadBalancerSourceRanges)" in d.fix, d.fix
    assert {s.source for s in d.instead if s.address == "203.0.113.50"} == {"198.51.100.0/24", "192.168.49.0/24"}


def _nat_listing(name: str) -> str:
    """`iptables -S -t nat` of a sample dump: kubelet's KUBE-FIREWALL (filter) is not in it."""
    out, table = [], None
    for line in (SAMPLES / name).read_text().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif table == "nat" and line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            out.append(f"-P {chain} {policy}" if policy != "-" else f"-N {chain}")
        elif table == "nat" and line.startswith("-A "):
            out.append(line)
    return "\n".join(out) + "\n"


def test_a_mark_drop_to_the_node_itself_is_not_said_to_go_on_unchanged() -> None:
    """The KUBE-XLB era's KUBE-MARK-DROP on a packet addressed to the node (a nodePort) is dropped by kubelet's
    KUBE-FIREWALL, which a nat-only listing does not hold: it must not be said to go on to the node unchanged."""
    node = "172.31.10.20"
    e = make_explainer(load(_nat_listing("xlb-era.txt"), table="nat"), node_ips=(node,)).explain(
        node, 30300, proto="tcp", src="external").explanations[0]
    d = the(e, "no-local-endpoints")
    assert f"goes on to {node} unchanged" not in d.detail
    assert "KUBE-MARK-DROP" in d.detail and "addressed to the node itself, as this one is" in d.detail
    # An LB IP the node does not hold still goes on unchanged.
    lb = make_explainer(load(_nat_listing("xlb-era.txt"), table="nat"), node_ips=(node,)).explain(
        "52.14.88.202", 3000, proto="tcp", src="external").explanations[0]
    assert "goes on to 52.14.88.202 unchanged" in the(lb, "no-local-endpoints").detail


def test_healthy_says_session_affinity() -> None:
    """A Service with sessionAffinity ClientIP: the shares are a first connection's; later ones stick to its
    endpoint. explain said only the shares, so 'why does my client always reach one pod' had no answer."""
    for name in ("session-affinity.txt", "xlb-era.txt"):
        d = the(explain(name, "10.97.3.3", 80, "pod"), "healthy")
        assert "sessionAffinity ClientIP" in d.detail and "10800s" in d.detail, d.detail
    plain = the(explain("session-affinity.txt", "10.96.0.10", 53, "pod", proto="udp"), "healthy")
    assert "affinity" not in plain.detail


IPVS_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
"""


def test_ipvs_mode_is_not_said_to_have_no_kube_proxy_iptables_rules() -> None:
    """An IPVS-mode node's KUBE-SERVICES holds kube-proxy's iptables rules (ipset matches), not its Services."""
    e = make_explainer(load(IPVS_NAT), node_ips=("192.168.49.2",)).explain(
        "10.96.0.10", 53, proto="udp", src="pod").explanations[0]
    d = the(e, "no-kube-proxy-rules")
    assert "no kube-proxy iptables rules" not in d.summary and "IPVS" in d.summary, d.summary
    assert "ipvsadm -Ln" in d.fix


@pytest.mark.parametrize(("name", "node", "port", "service", "local"), [
    ("xlb-era.txt", "172.31.10.20", 32102, "monitoring/grafana", False),
    ("etp-local-with-endpoints.txt", "192.168.49.2", 32101, "ingress-nginx/ingress-nginx-controller", True),
])
def test_a_health_check_node_port_is_named(name: str, node: str, port: int, service: str, local: bool) -> None:
    """A load balancer's health check (node:healthCheckNodePort) is answered by kube-proxy's health server; it was
    'no Service has nodePort 32102/tcp' with a list of other nodePorts to use instead."""
    e = make_explainer(load_path(SAMPLES / name), node_ips=(node,)).explain(
        node, port, proto="tcp", src="external").explanations[0]
    d = e.diagnoses[0]
    assert "no Service has nodePort" not in d.summary
    assert "health-check nodePort" in d.summary and service in d.summary, d.summary
    assert d.severity == "info"
    assert ("200" if local else "503") in d.detail, d.detail
    assert_evidence_is_in_the_dump(name, d)
    assert any("health check node port" in ev.rule for ev in d.evidence)
