"""iptables-nft's REJECT in an nft JSON listing (found by kernfuzz4, judged by the kernel): `nft -j list ruleset`
shows an iptables-nft rule's `-j REJECT` as `{"xt": {"type": "target", "name": "REJECT"}}` (the text listing
translates it to `reject`). iptrace took every xt target for one that neither changes nor decides, so a firewall's
REJECT (fail2ban's f2b-* chains, ufw, kube-router's network policies, firewalld's iptables backend) let the
connection through where the kernel refused it. Its ICMP type is not shown; that it ends the path is its name's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet
from iptrace.nftables import load
from iptrace.nftables.model import Xt
from iptrace.nftables.walk import Tracer
from tests.oracle import NODE_IP, Topology
from tests.oracle.nft import json_listing, list_ruleset, load_nft, requires_nft, restore_iptables_nft

POD, SERVICE, PORT = "198.18.128.10", "198.19.0.10", 8080
BANNED, RESET, ALLOWED = "198.18.64.9", "198.18.64.8", "198.18.64.7"
KUBE_PROXY = render_nft([ServiceSpec("shop", "web", SERVICE, [PortSpec("http", 80, target_port=PORT)],
                                     endpoints=[EndpointSpec(POD, PORT)])],
                        node_ips=[NODE_IP], pod_cidr="198.18.128.0/17", service_cidrs=["198.19.0.0/17"],
                        form="transaction")
# fail2ban's chain as its iptables-allports action writes it (its multiport one: an `xt match "multiport"`, which the
# JSON listing cannot show)
FAIL2BAN = f"""*filter
:FORWARD ACCEPT [0:0]
:f2b-web - [0:0]
-A FORWARD -p tcp -j f2b-web
-A f2b-web -s {BANNED}/32 -j REJECT --reject-with icmp-port-unreachable
-A f2b-web -s {RESET}/32 -p tcp -j REJECT --reject-with tcp-reset
-A f2b-web -j RETURN
COMMIT
"""


def test_an_xt_reject_rejects() -> None:
    rules = """table ip filter {
	chain FORWARD {
		type filter hook forward priority filter; policy accept;
		ip saddr 198.18.64.9 xt target "REJECT"
		ip saddr 198.18.64.8 xt target "LOG"
	}
}
"""
    tracer = Tracer(load(rules), node_ips=[NODE_IP])
    assert [o.verdict for o in tracer.trace(Packet(BANNED, POD, PORT)).outcomes] == ["REJECT"]
    logged = tracer.trace(Packet(RESET, POD, PORT))
    assert [o.verdict for o in logged.outcomes] == ["ACCEPT"]  # (another target: noted, the path goes on)
    assert any('xt target "LOG"' in a for a in logged.assumptions)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, list[Tracer]]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD)
        for src in (BANNED, RESET, ALLOWED):
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        restore_iptables_nft(topo, FAIL2BAN)
        load_nft(topo, KUBE_PROXY)
        from_json = json_listing(topo)
        # (the form this test is about: the JSON listing keeps the target as an xt statement)
        assert any(isinstance(i, Xt) and i.name == "REJECT" for t in from_json.tables for c in t.chains
                   for r in c.rules for i in r.items)
        yield topo, [Tracer(from_json, node_ips=topo.node_ips), Tracer(load(list_ruleset(topo)),
                                                                        node_ips=topo.node_ips)]


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize("src", [BANNED, RESET, ALLOWED])
def test_the_kernel_agrees(node: tuple[Topology, list[Tracer]], src: str) -> None:
    topo, tracers = node
    result = topo.probe("client", SERVICE, 80, src_ip=src, timeout=0.5)
    assert result.outcome == ("connected" if src == ALLOWED else "refused"), result
    for tracer in tracers:
        outcomes = tracer.trace(Packet(src, SERVICE, 80), in_interface="eth0").outcomes
        assert [o.verdict for o in outcomes] == (["DNAT"] if src == ALLOWED else ["REJECT"])
