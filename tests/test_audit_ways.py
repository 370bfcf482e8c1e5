"""audit compares how each kind of client fares through each way in, node against node, with or without cluster
data: a rule of one node's own (a host firewall, a CNI's rule) that drops a NodePort there is found, which the
Service's own rules and the API cannot show; Local policies (which answer outside clients differently on nodes
without a local endpoint, by design) are not."""

from __future__ import annotations

import pytest

from tests.dumps import audit
from tests.test_audit import by_node, node
from tests.test_compare import base_services, cluster_of

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
    assert "host firewall" in f.detail and "iptrace explain NODE --dst NODE-IP:30080" in f.fix


def test_two_nodes_that_disagree_are_both_told() -> None:
    services = base_services()
    report = audit([node("node-a", services), node("node-b", services, extra=FIREWALL)], None)
    ways = {(f.node, f.summary.split(": ", 2)[2]) for f in report.findings if f.id == "forwarding-differs"}
    assert {n for n, _ in ways} == {"node-a", "node-b"}
    assert any(text.startswith("DROP here, otherwise elsewhere") for n, text in ways if n == "node-b")
