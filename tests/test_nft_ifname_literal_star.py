"""An escaped star in an nft interface name is a literal star (found by kernfuzz4, judged by the kernel):
`iifname "eth\\*"` names an interface called `eth*`, where `iifname "eth*"` is a wildcard. nft lists iptables-nft's
`-i eth*` (iptables' wildcard is `+`, its `*` a plain character) so, and writes it so itself for a quoted `\\*`.
iptrace unescaped it into the wildcard: a node's `nft list ruleset` with such a rule was predicted to drop every
connection arriving on eth0 that the kernel let through. The JSON listing keeps the backslash."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet
from iptrace.nftables import load, render, save
from iptrace.nftables.walk import Tracer
from tests.oracle import NODE_IP, Topology
from tests.oracle.nft import json_listing, list_ruleset, load_nft, requires_nft, restore_iptables_nft

CLIENT = "198.18.64.9"
LITERAL, WILDCARD, IN_SET, BY_IPTABLES, IPTABLES_WILDCARD = 9002, 9003, 9004, 9005, 9006
FILTER = f"""table inet t {{
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname "eth\\*" tcp dport {LITERAL} drop
		iifname "et*" tcp dport {WILDCARD} drop
		iifname {{ "eth\\*", "cni0" }} tcp dport {IN_SET} drop
	}}
}}
"""
IPTABLES = f"""*filter
:INPUT ACCEPT [0:0]
-A INPUT -i eth* -p tcp -m tcp --dport {BY_IPTABLES} -j DROP
-A INPUT -i et+ -p tcp -m tcp --dport {IPTABLES_WILDCARD} -j DROP
COMMIT
"""
# (the kernel's verdicts; IN_SET is not asked of it: nft 1.0.6 lists the set's element as `"eth*"`, unescaped,
# though the kernel holds the literal name, so no listing can say which it is)
DROPPED = {LITERAL: False, WILDCARD: True, BY_IPTABLES: False, IPTABLES_WILDCARD: True}


def verdict(tracer: Tracer, port: int, iface: str = "eth0") -> str:
    (outcome,) = tracer.trace(Packet(CLIENT, NODE_IP, port), in_interface=iface).outcomes
    return outcome.verdict


def test_an_escaped_star_is_a_literal_star() -> None:
    tracer = Tracer(load(FILTER), node_ips=[NODE_IP])
    assert verdict(tracer, LITERAL) == "ACCEPT" and verdict(tracer, IN_SET) == "ACCEPT"
    assert verdict(tracer, WILDCARD) == "DROP"
    # an interface that is really called `eth*` (Linux allows it)
    assert verdict(tracer, LITERAL, "eth*") == "DROP" and verdict(tracer, IN_SET, "eth*") == "DROP"


def test_written_back_as_nft_lists_it() -> None:
    text = save(load(FILTER))
    assert 'iifname "eth\\*" tcp dport' in text and 'iifname "et*" tcp dport' in text
    assert '{ "eth\\*", "cni0" }' in text or '{ "cni0", "eth\\*" }' in text
    assert [render.item(i) for r in load(text).tables[0].chains[0].rules for i in r.items] == [
        render.item(i) for r in load(FILTER).tables[0].chains[0].rules for i in r.items]


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, list[Tracer]]]:
    with Topology("nft") as topo:
        topo.add_client_ip(CLIENT)
        topo.start_server(tcp_ports=[])
        load_nft(topo, FILTER)
        restore_iptables_nft(topo, IPTABLES)
        listed = list_ruleset(topo)
        assert 'iifname "eth\\*" tcp dport 9005' in listed  # (iptables-nft's literal `eth*`, as nft lists it)
        from_json = json_listing(topo)
        yield topo, [Tracer(load(listed), node_ips=topo.node_ips), Tracer(from_json, node_ips=topo.node_ips)]


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize("port", list(DROPPED))
def test_the_kernel_agrees(node: tuple[Topology, list[Tracer]], port: int) -> None:
    topo, tracers = node
    result = topo.probe("client", NODE_IP, port, src_ip=CLIENT, timeout=0.4)
    assert result.outcome == ("timeout" if DROPPED[port] else "refused"), result  # (nothing listens: refused)
    for tracer in tracers:
        assert verdict(tracer, port) == ("DROP" if DROPPED[port] else "ACCEPT")
