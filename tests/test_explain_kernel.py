"""The kernel confirms both halves of what `explain` says for the seed-like mistakes: the address the user tried
is really not DNATed (the probe times out or is refused, and conntrack shows no translation), and every address
the `fix` names really reaches one of the endpoints explain predicts (a real connection lands there).

The dump is kube-proxy's own layout (bench.synth) for a node at 198.18.0.1 with pods in 198.18.128.0/17 and
Services in 198.19.0.0/16, loaded with iptables-nft-restore into the oracle's `node` namespace (tests/oracle)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.explain import Explainer, Explanation
from iptrace.explain.diagnosis import Diagnosis, Suggestion
from iptrace.iptables import load
from tests.dumps import explainer as make_explainer
from tests.oracle import CLIENT_IP, NODE_IP, Topology, requires_root_netns

pytestmark = [pytest.mark.root, requires_root_netns("nft")]

POD_CIDR = "198.18.128.0/17"
CLIENT_POD = "198.18.128.4"  # a pod on this node that is no endpoint: "from inside the cluster"
ALLOWED_CLIENT = "198.18.64.5"  # inside the LoadBalancer's source range
WEB = [EndpointSpec("198.18.128.10", 8001), EndpointSpec("198.18.128.11", 8001)]
QUICK = 0.5  # probes expected to time out


def services(*, orders_endpoints: bool = False, etp: str = "Local") -> list[ServiceSpec]:
    return [
        ServiceSpec("default", "fb-backends", "198.19.0.10",
                    [PortSpec("ka-port", 5001, node_port=30904, target_port=8001)], type="NodePort",
                    endpoints=list(WEB)),
        ServiceSpec("default", "orders", "198.19.0.20", [PortSpec("http", 8080, node_port=30080, target_port=8080)],
                    type="NodePort",
                    endpoints=[EndpointSpec("198.18.128.14", 8080)] if orders_endpoints else []),
        ServiceSpec("ingress", "controller", "198.19.0.30",
                    [PortSpec("http", 80, node_port=31080, target_port=8080)], type="LoadBalancer",
                    lb_ips=["198.19.1.30"], external_traffic_policy=etp, health_check_node_port=32101,
                    endpoints=[EndpointSpec("198.18.128.12", 8080, local=False)]),
        ServiceSpec("default", "admin-api", "198.19.0.40",
                    [PortSpec("https", 443, node_port=30443, target_port=8443)], type="LoadBalancer",
                    lb_ips=["198.19.1.40"], lb_source_ranges=["198.18.64.0/24"],
                    endpoints=[EndpointSpec("198.18.128.13", 8443)]),
    ]


def dump_text(**kwargs: Any) -> str:
    return render(services(**kwargs), node_ips=[NODE_IP], pod_cidr=POD_CIDR)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology("nft") as topology:
        topology.add_pod_ip(CLIENT_POD, "198.18.128.10", "198.18.128.11", "198.18.128.12", "198.18.128.13",
                            "198.18.128.14")
        topology.add_client_ip(ALLOWED_CLIENT)
        topology.start_server(tcp_ports=[8001, 8080, 8443])
        yield topology


def explainer(text: str) -> Explainer:
    return make_explainer(load(text), node_ips=[NODE_IP])


def explain(ex: Explainer, dst: str, port: int, src: str) -> Explanation:
    return ex.explain(dst, port, src=src).explanations[0]


def probe(topo: Topology, src: str, dst: str, port: int, timeout: float = 1.0) -> Any:
    """A connection from `src` — a pod IP, the client's address (or another of its addresses), or "node"."""
    topo.flush_conntrack()
    if src == "node":
        return topo.probe("node", dst, port, timeout=timeout)
    if src.startswith("198.18.128."):
        return topo.probe("pod", dst, port, src_ip=src, timeout=timeout)
    return topo.probe("client", dst, port, src_ip=src, timeout=timeout)


def source_for(s: Suggestion) -> str:
    """Where a suggestion says to connect from, as a probe source."""
    if s.source == "pod":
        return CLIENT_POD
    if s.source == "external":
        return CLIENT_IP
    if s.source == "node":
        return "node"
    assert s.source == "198.18.64.0/24", s
    return ALLOWED_CLIENT


def assert_not_dnated(topo: Topology, src: str, dst: str, port: int, outcomes: set[str]) -> None:
    result = probe(topo, src, dst, port, timeout=QUICK)
    assert result.outcome in outcomes, (dst, port, result)
    translated = [ep for ep in topo.conntrack_dnat(dst, port) if ep != (dst, port)]
    assert translated == [], f"the kernel DNATed {dst}:{port} to {translated}"


def assert_reaches_predicted_endpoint(topo: Topology, ex: Explainer, src: str, dst: str, port: int) -> None:
    e = explain(ex, dst, port, src)
    predicted = {o.destination for o in e.trace.outcomes if o.verdict == "DNAT"}
    assert [d.id for d in e.diagnoses] == ["healthy"], (dst, port, [d.summary for d in e.diagnoses])
    result = probe(topo, src, dst, port)
    assert result.outcome == "connected", (dst, port, result)
    assert f"{result.endpoint[0]}:{result.endpoint[1]}" in predicted, (result, predicted)


def assert_fix_works(topo: Topology, ex: Explainer, d: Diagnosis) -> None:
    assert d.instead, f"{d.id} names no address to use instead: {d.fix}"
    for s in d.instead:
        if s.source in ("pod", "external", "node"):
            assert f"{s.address}:{s.port}" in d.fix, (s, d.fix)
        assert_reaches_predicted_endpoint(topo, ex, source_for(s), s.address, s.port)


def the(e: Explanation, diagnosis_id: str) -> Diagnosis:
    found = [d for d in e.diagnoses if d.id == diagnosis_id]
    assert len(found) == 1, (diagnosis_id, [(d.id, d.summary) for d in e.diagnoses])
    return found[0]


# ------------------------------------------------------------------------------------------------ the mistakes


@pytest.mark.parametrize(("src", "dst", "port", "diagnosis_id"), [
    (CLIENT_POD, "198.19.0.10", 8001, "target-port-on-service-ip"),
    (CLIENT_IP, "198.19.0.10", 8001, "target-port-on-service-ip"),
    (CLIENT_POD, "198.19.0.10", 30904, "node-port-on-service-ip"),
    ("node", "198.19.0.10", 30904, "node-port-on-service-ip"),
])
def test_wrong_port_on_the_cluster_ip_hangs_and_the_fix_connects(topo: Topology, src: str, dst: str, port: int,
                                                                 diagnosis_id: str) -> None:
    text = dump_text()
    topo.load(text)
    ex = explainer(text)
    d = the(explain(ex, dst, port, "node" if src == "node" else src), diagnosis_id)
    assert d.severity == "error" and "hangs" in d.detail
    assert_not_dnated(topo, src, dst, port, {"timeout"})
    assert_fix_works(topo, ex, d)
    assert {f"{s.address}:{s.port}" for s in d.instead} == {"198.19.0.10:5001", f"{NODE_IP}:30904"}


def test_service_port_on_the_node_address_is_refused_and_the_fix_connects(topo: Topology) -> None:
    text = dump_text()
    topo.load(text)
    ex = explainer(text)
    d = the(explain(ex, NODE_IP, 5001, CLIENT_IP), "service-port-on-node-ip")
    assert "refused" in d.detail
    assert_not_dnated(topo, CLIENT_IP, NODE_IP, 5001, {"refused"})
    assert_fix_works(topo, ex, d)


def test_no_endpoints_is_refused_and_ready_endpoints_fix_it(topo: Topology) -> None:
    text = dump_text()
    topo.load(text)
    ex = explainer(text)
    for src, dst, port in ((CLIENT_POD, "198.19.0.20", 8080), (CLIENT_IP, "198.19.0.20", 8080),
                           (CLIENT_IP, NODE_IP, 30080), ("node", "198.19.0.20", 8080)):
        e = explain(ex, dst, port, src)
        d = the(e, "no-endpoints")
        assert e.verdict == "REJECT" and "connection refused" in d.detail
        assert "kubernetes.io/service-name=orders" in d.fix
        assert_not_dnated(topo, src, dst, port, {"refused"})
    # The fix (a ready endpoint behind the selector), applied the way kube-proxy would: the same addresses work.
    fixed = dump_text(orders_endpoints=True)
    topo.load(fixed)
    for src, dst, port in ((CLIENT_POD, "198.19.0.20", 8080), (CLIENT_IP, NODE_IP, 30080)):
        assert_reaches_predicted_endpoint(topo, explainer(fixed), src, dst, port)


def test_no_local_endpoints_drops_outside_traffic_and_the_fixes_connect(topo: Topology) -> None:
    text = dump_text()
    topo.load(text)
    ex = explainer(text)
    for dst, port in (("198.19.1.30", 80), (NODE_IP, 31080)):
        e = explain(ex, dst, port, CLIENT_IP)
        d = the(e, "no-local-endpoints")
        assert e.verdict == "DROP" and "times out" in d.detail
        assert_not_dnated(topo, CLIENT_IP, dst, port, {"timeout"})
        assert_fix_works(topo, ex, d)  # the ClusterIP from inside the cluster
        # "Only this node fails" for outside clients: a pod and the node itself still get through.
        assert_reaches_predicted_endpoint(topo, ex, CLIENT_POD, dst, port)
    assert_reaches_predicted_endpoint(topo, ex, "node", "198.19.1.30", 80)
    # The other fix: externalTrafficPolicy Cluster.
    cluster_policy = dump_text(etp="Cluster")
    topo.load(cluster_policy)
    assert_reaches_predicted_endpoint(topo, explainer(cluster_policy), CLIENT_IP, "198.19.1.30", 80)


def test_source_range_blocked_drops_and_an_allowed_source_connects(topo: Topology) -> None:
    text = dump_text()
    topo.load(text)
    ex = explainer(text)
    e = explain(ex, "198.19.1.40", 443, CLIENT_IP)
    d = the(e, "source-range-blocked")
    assert e.verdict == "DROP" and "198.18.64.0/24" in d.detail
    assert_not_dnated(topo, CLIENT_IP, "198.19.1.40", 443, {"timeout"})
    assert_fix_works(topo, ex, d)
    assert re.search(r"allowed range", d.fix)


def _sharing(first: str, second: str) -> str:
    """Two Services listing the same externalIP and port (kubernetes#69599); the synthesizer writes Services in
    name order, so `first` gets the first rule in KUBE-SERVICES."""
    return render([
        ServiceSpec(first, "web", "198.19.0.50", [PortSpec("http", 80, target_port=8001)],
                    external_ips=["198.19.2.50"], endpoints=[EndpointSpec("198.18.128.10", 8001)]),
        ServiceSpec(second, "web", "198.19.0.51", [PortSpec("http", 80, target_port=8080)],
                    external_ips=["198.19.2.50"], endpoints=[EndpointSpec("198.18.128.14", 8080)]),
    ], node_ips=[NODE_IP], pod_cidr=POD_CIDR)


@pytest.mark.parametrize(("first", "second", "endpoint"), [("alpha", "zulu", ("198.18.128.10", 8001)),
                                                           ("zulu", "yankee", ("198.18.128.14", 8080))])
def test_an_external_ip_two_services_claim_goes_where_the_first_rule_says(
        topo: Topology, first: str, second: str, endpoint: tuple[str, int]) -> None:
    text = _sharing(first, second)
    topo.load(text)
    e = explain(explainer(text), "198.19.2.50", 80, CLIENT_POD)
    d = the(e, "address-conflict")
    winner = "alpha/web:http" if first == "alpha" else "yankee/web:http"
    assert f"here {winner} takes the packet" in d.detail
    predicted = {o.destination for o in e.trace.outcomes if o.verdict == "DNAT"}
    assert predicted == {f"{endpoint[0]}:{endpoint[1]}"}
    result = probe(topo, CLIENT_POD, "198.19.2.50", 80)
    assert result.outcome == "connected" and result.endpoint == endpoint, result
