"""The port of a `dnat to` whose address a map chooses (found by kernfuzz2, judged by the kernel): the kernel
lists it glued to the map, `dnat to numgen inc mod 2 map { 0 : A, 1 : B }:8080`, or as a map of its own,
`…map { … }:tcp dport map { 9001 : 8080 }`. iptrace read the `:8080` as a statement it did not understand, after
the terminal dnat, so the connection was predicted to keep its own port (9001) where the kernel sent it to 8080;
the JSON listing's port map crashed the trace (a TypeError)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load, render, save
from iptrace.nftables.walk import Tracer
from tests.oracle import NODE_IP, Topology
from tests.oracle.nft import listing_tracers, load_nft, requires_nft

POD, POD_B = "198.18.128.10", "198.18.128.11"
BY_DRAW, BY_SOURCE, BY_PORT_MAP = "198.18.64.6", "198.18.64.7", "198.18.64.8"
PORT, ASKED = 8080, 9001
NAT = f"""table ip hostports {{
	chain prerouting {{
		type nat hook prerouting priority dstnat - 10; policy accept;
		ip saddr {BY_DRAW} tcp dport {ASKED} dnat to numgen inc mod 2 map {{ 0 : {POD}, 1 : {POD_B} }}:{PORT}
		ip saddr {BY_SOURCE} meta l4proto tcp dnat to ip saddr map {{ {BY_SOURCE} : {POD} }}:{PORT}
		ip saddr {BY_PORT_MAP} meta l4proto tcp dnat to ip saddr map {{ {BY_PORT_MAP} : {POD_B} }}:tcp dport map {{ {ASKED} : {PORT} }}
	}}
}}
"""
EXPECTED = {BY_DRAW: {f"{POD}:{PORT}", f"{POD_B}:{PORT}"}, BY_SOURCE: {f"{POD}:{PORT}"},
            BY_PORT_MAP: {f"{POD_B}:{PORT}"}}


def destinations(t: Trace) -> set[str | None]:
    return {o.destination for o in t.outcomes if o.verdict == "DNAT"}


@pytest.mark.parametrize("src", list(EXPECTED))
def test_the_port_after_a_map_is_the_dnat_port(src: str) -> None:
    assert destinations(Tracer(load(NAT), node_ips=[NODE_IP]).trace(Packet(src, NODE_IP, ASKED))) == EXPECTED[src]


def test_the_port_is_written_back_as_the_kernel_lists_it() -> None:
    nats = [r.items[-1] for r in load(NAT).tables[0].chains[0].rules]
    assert [render.item(n) for n in nats] == [
        f"dnat to numgen inc mod 2 map {{ 0 : {POD}, 1 : {POD_B} }}:{PORT}",
        f"dnat to ip saddr map {{ {BY_SOURCE} : {POD} }}:{PORT}",
        f"dnat to ip saddr map {{ {BY_PORT_MAP} : {POD_B} }}:tcp dport map {{ {ASKED} : {PORT} }}"]
    assert [r.items[-1] for r in load(save(load(NAT))).tables[0].chains[0].rules] == nats


def test_a_port_map_without_the_packets_port_does_not_match() -> None:
    t = Tracer(load(NAT), node_ips=[NODE_IP]).trace(Packet(BY_PORT_MAP, NODE_IP, ASKED + 1))
    assert destinations(t) == set()  # the lookup found nothing: the rule broke, nothing rewrote the packet


def test_a_port_the_packet_chooses_is_never_shared_between_walks() -> None:
    """A port map keyed by the packet's port makes the walk depend on it: shared walks answer as plain ones, for
    every port, again and again (past the point where a chain's walks are planned)."""
    rules = f"""table ip t {{
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		meta l4proto tcp dnat to numgen random mod 2 map {{ 0 : {POD}, 1 : {POD_B} }}:tcp dport map {{ 9001 : 8080, 9002 : 8081, 9003 : 8082 }}
	}}
}}
"""
    ruleset = load(rules)
    shared, plain = Tracer(ruleset, node_ips=[NODE_IP]), Tracer(ruleset, node_ips=[NODE_IP], share=False)
    for _ in range(12):
        for dport in (9001, 9002, 9003, 9004):
            a, b = (t.trace(Packet(BY_DRAW, "198.19.0.10", dport)) for t in (shared, plain))
            assert [(o.verdict, o.destination) for o in a.outcomes] == [(o.verdict, o.destination) for o in b.outcomes]
            assert destinations(a) == ({f"{POD}:{dport - 921}", f"{POD_B}:{dport - 921}"} if dport < 9004 else set())


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, Tracer, Tracer]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD, POD_B)
        for src in EXPECTED:
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, NAT)
        yield topo, *listing_tracers(topo)


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize("src", list(EXPECTED))
def test_the_kernel_agrees(node: tuple[Topology, Tracer, Tracer], src: str) -> None:
    topo, text, json = node
    landed = set()
    for _ in range(4):
        result = topo.probe("client", NODE_IP, ASKED, src_ip=src, timeout=0.5)
        assert result.outcome == "connected" and result.endpoint is not None, result
        landed.add(f"{result.endpoint[0]}:{result.endpoint[1]}")
    for tracer in (text, json):
        predicted = destinations(tracer.trace(Packet(src, NODE_IP, ASKED), in_interface="eth0"))
        assert landed <= predicted == EXPECTED[src], (landed, predicted)
