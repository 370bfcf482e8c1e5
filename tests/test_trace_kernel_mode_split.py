"""The kernel agrees with traces through kube-proxy's iptables-mode rules as an nft listing shows them, beside its
nftables-mode table: a node moved from iptables to nftables mode whose old rules were left behind.

iptables-nft writes iptables' `-m statistic --mode random --probability P` (the endpoint split) as
`meta random & 2147483647 < P·2^31`; the trace splits there with that exact share. In the oracle's `node`
namespace kube-proxy's iptables-mode rules for the Services as they were (bench.synth) are loaded with
iptables-nft-restore first, then its nftables-mode transaction for the Services as they are now (bench.synth_nft):
- shop/web is in both, with other endpoints: at dstnat both nat chains are equal in priority, the one created later
  (kube-proxy's table) runs first and its DNAT decides;
- shop/gone (three endpoints) was deleted after the move: only the old rules have it, and they still send its
  ClusterIP to its old endpoints, in thirds (chi-square over 200 connections);
- explain says `kube-proxy-mode-split`.
Node 198.18.0.1, pods 198.18.128.0/17, ClusterIPs in 198.19.0.0/17 (TESTING.md's addresses).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from bench.synth_nft import render_nft
from iptrace import dataplanes
from iptrace.dataplane import Packet, Trace
from iptrace.explain import Explainer
from iptrace.kube.analysis import analyse
from tests.oracle import CLIENT_IP, NODE_IP, Topology
from tests.oracle.nft import NftTracer, list_ruleset, load_nft, requires_nft, restore_iptables_nft
from tests.test_trace_kernel_nft import rule_path

pytestmark = [pytest.mark.root, requires_nft()]

POD_CIDR = "198.18.128.0/17"
CLIENT_POD = "198.18.128.4"
NOW_A, NOW_B = "198.18.128.10", "198.18.128.11"
THEN_A, THEN_B, THEN_C = "198.18.128.20", "198.18.128.21", "198.18.128.22"
PORT = 8080
WEB, GONE = "198.19.0.10", "198.19.0.20"


def _web(*endpoints: str) -> ServiceSpec:
    return ServiceSpec("shop", "web", WEB, [PortSpec("http", 80, target_port=PORT)],
                       endpoints=[EndpointSpec(ip, PORT) for ip in endpoints])


THEN = [_web(THEN_A), ServiceSpec("shop", "gone", GONE, [PortSpec("http", 80, target_port=PORT)],
                                  endpoints=[EndpointSpec(ip, PORT) for ip in (THEN_A, THEN_B, THEN_C)])]
NOW = [_web(NOW_A, NOW_B)]


@dataclass
class Node:
    topo: Topology
    tracer: NftTracer
    analysis: Any
    listing: str


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with Topology("nft") as topo:
        topo.add_pod_ip(CLIENT_POD, NOW_A, NOW_B, THEN_A, THEN_B, THEN_C)
        topo.start_server(tcp_ports=[PORT])
        restore_iptables_nft(topo, render(THEN, node_ips=[NODE_IP], pod_cidr=POD_CIDR, nfacct=False))
        load_nft(topo, render_nft(NOW, node_ips=[NODE_IP], pod_cidr=POD_CIDR, service_cidrs=["198.19.0.0/17"],
                                  form="transaction"))
        listing = list_ruleset(topo)
        dataplane, ruleset = dataplanes.load(listing, source="nft list ruleset")
        with NftTracer(topo) as tracer:
            yield Node(topo, tracer, analyse(dataplane, ruleset, "ipv4", node_ips=[NODE_IP]), listing)


def _landed(node: Node, dst: str, src: str = "client") -> tuple[str, Trace]:
    """One connection: where it landed, and the trace that must have predicted it (the same rules, too)."""
    result, kernel = node.tracer.path_of(lambda sport: node.topo.probe(src, dst, 80, sport=sport))  # type: ignore[arg-type]
    assert result.outcome == "connected" and result.endpoint is not None, result
    trace = node.analysis.tracer.trace(Packet(CLIENT_IP if src == "client" else CLIENT_POD, dst, 80))
    landed = f"{result.endpoint[0]}:{result.endpoint[1]}"
    outcome = next((o for o in trace.outcomes if o.verdict == "DNAT" and o.destination == landed), None)
    assert outcome is not None, (landed, trace.outcomes)
    assert rule_path(kernel) == rule_path(list(outcome.path)), (kernel, outcome.path)
    return landed, trace


def test_a_service_both_modes_have_goes_where_the_later_table_sends_it(node: Node) -> None:
    for src in ("client", "pod", "client", "pod"):
        landed, trace = _landed(node, WEB, src)
        assert landed in (f"{NOW_A}:{PORT}", f"{NOW_B}:{PORT}")
        assert {o.destination for o in trace.outcomes} == {f"{NOW_A}:{PORT}", f"{NOW_B}:{PORT}"}
        assert all(o.decided_by is not None and o.decided_by.table == "ip kube-proxy" for o in trace.outcomes)


def test_the_old_rules_still_split_a_deleted_services_connections(node: Node) -> None:
    _, trace = _landed(node, GONE)
    predicted = {o.destination: o.exact_probability for o in trace.outcomes if o.verdict == "DNAT"}
    assert set(predicted) == {f"{ip}:{PORT}" for ip in (THEN_A, THEN_B, THEN_C)}
    assert sum(predicted.values()) == 1 and all(p == pytest.approx(1 / 3) for p in predicted.values())
    assert all(o.decided_by is not None and o.decided_by.table == "ip nat" for o in trace.outcomes)
    seen: Counter[str] = Counter()
    for result in node.topo.probe_many(200, "client", GONE, 80):
        assert result.outcome == "connected" and result.endpoint is not None, result
        seen[f"{result.endpoint[0]}:{result.endpoint[1]}"] += 1
    assert set(seen) <= set(predicted), (seen, predicted)
    n = sum(seen.values())
    chi2 = sum((seen[d] - n * float(p)) ** 2 / (n * float(p)) for d, p in predicted.items())
    # 2 degrees of freedom: 18.4 is p = 0.0001; a split the rules do not make (all to the last endpoint, when
    # `meta random` is not modeled) gives ~400.
    assert chi2 < 18.4, (seen, predicted, chi2)


def test_explain_names_both_modes(node: Node) -> None:
    report = Explainer(node.analysis).explain(GONE, 80)
    ids = {d.id for e in report.explanations for d in e.diagnoses}
    assert "kube-proxy-mode-split" in ids and "no-kube-proxy-rules" not in ids
    assert node.analysis.layout.proxy.other_mode.startswith("table ip nat holds kube-proxy's iptables-mode rules")
