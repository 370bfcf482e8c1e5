"""A `dnat to` whose address is given and whose port an expression chooses (found by kernfuzz4, judged by the
kernel): the kernel lists it with the expression's first word glued to the address, `dnat to
198.18.128.10:numgen random mod 2 map { 0 : 8080, 1 : 8081 }` or `dnat to 198.18.128.10:tcp dport map { 9001 :
8081 }` (a hostport or port-forward rule written with a port map). iptrace refused the whole listing ("'numgen' is
not a port number; the rule cannot be read"). Rules of one shape share a parse (loader.py): the word glued to the
address is structure, so a rule that glues another word is read on its own. nft also reads the port written apart,
`dnat to 198.18.128.10 : numgen …`, `dnat to ip saddr map { … } : 8080` (a ruleset file, kube-proxy-like
transaction text): iptrace's grammar refused a lone ":" there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load, render, save
from iptrace.nftables.walk import Tracer
from tests.oracle import NODE_IP, Topology
from tests.oracle.nft import json_listing, list_ruleset, load_nft, requires_nft

POD, POD_B = "198.18.128.10", "198.18.128.11"
BY_DRAW, BY_PORT, BY_OTHER_WORD, BY_MAP = "198.18.64.6", "198.18.64.7", "198.18.64.8", "198.18.64.9"
ASKED = 9001
NAT = f"""table ip hostports {{
	chain prerouting {{
		type nat hook prerouting priority dstnat - 10; policy accept;
		ip saddr {BY_DRAW} tcp dport {ASKED} dnat to {POD}:numgen random mod 2 map {{ 0 : 8080, 1 : 8081 }}
		ip saddr {BY_PORT} tcp dport {ASKED} dnat to {POD_B}:tcp dport map {{ {ASKED} : 8081 }}
		ip saddr {BY_OTHER_WORD} tcp dport {ASKED} dnat to {POD}:th dport map {{ {ASKED} : 8080 }}
		ip saddr {BY_MAP} tcp dport {ASKED} dnat to ip saddr map {{ {BY_MAP} : {POD_B} }}:8080
	}}
}}
"""
# The same rules as a file may write them (nft reads both; it lists them as NAT)
SPACED = NAT.replace(":numgen", " : numgen").replace(":tcp", " :tcp").replace(":th", " : th").replace("}:", "} : ")
EXPECTED = {BY_DRAW: {f"{POD}:8080", f"{POD}:8081"}, BY_PORT: {f"{POD_B}:8081"}, BY_OTHER_WORD: {f"{POD}:8080"},
            BY_MAP: {f"{POD_B}:8080"}}


def destinations(t: Trace) -> set[str | None]:
    return {o.destination for o in t.outcomes if o.verdict == "DNAT"}


@pytest.mark.parametrize("text", [NAT, SPACED], ids=["listed", "spaced"])
@pytest.mark.parametrize("src", list(EXPECTED))
def test_the_port_is_the_expressions(src: str, text: str) -> None:
    t = Tracer(load(text), node_ips=[NODE_IP]).trace(Packet(src, NODE_IP, ASKED))
    assert destinations(t) == EXPECTED[src]
    assert {o.probability for o in t.outcomes} == ({0.5} if src == BY_DRAW else {1})
    assert [render.item(r.items[-1]) for r in load(text).tables[0].chains[0].rules] == [
        render.item(r.items[-1]) for r in load(NAT).tables[0].chains[0].rules]


def test_written_back_as_the_kernel_lists_it() -> None:
    nats = [r.items[-1] for r in load(NAT).tables[0].chains[0].rules]
    assert [render.item(n) for n in nats] == [
        f"dnat to {POD}:numgen random mod 2 map {{ 0 : 8080, 1 : 8081 }}",
        f"dnat to {POD_B}:tcp dport map {{ {ASKED} : 8081 }}",
        f"dnat to {POD}:th dport map {{ {ASKED} : 8080 }}",
        f"dnat to ip saddr map {{ {BY_MAP} : {POD_B} }}:8080"]
    assert [r.items[-1] for r in load(save(load(NAT))).tables[0].chains[0].rules] == nats


def test_rules_of_one_shape_keep_their_own_address_and_word() -> None:
    """Many rules of the same shape: each keeps its address, and one that glues another word (`udp`) to it is
    not read as the others' `tcp dport`."""
    rules = "\n".join(f"\t\tip saddr 198.18.64.{i} dnat to 198.18.128.{i}:{word} dport map {{ {ASKED} : 80{i:02} }}"
                      for i, word in ((10, "tcp"), (11, "tcp"), (12, "udp"), (13, "tcp")))
    ruleset = load(f"table ip t {{\n\tchain pre {{\n\t\ttype nat hook prerouting priority dstnat;\n{rules}\n\t}}\n}}\n")
    tracer = Tracer(ruleset, node_ips=[NODE_IP])
    for i in (10, 11, 13):
        assert destinations(tracer.trace(Packet(f"198.18.64.{i}", NODE_IP, ASKED))) == {f"198.18.128.{i}:80{i}"}
    # the udp port map holds no element for a tcp packet's port: nothing rewrites it
    assert destinations(tracer.trace(Packet("198.18.64.12", NODE_IP, ASKED))) == set()
    assert destinations(tracer.trace(Packet("198.18.64.12", NODE_IP, ASKED, proto="udp"))) == {"198.18.128.12:8012"}


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, list[Tracer]]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD, POD_B)
        for src in EXPECTED:
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[8080, 8081])
        load_nft(topo, SPACED)
        listed = list_ruleset(topo)
        # (the kernel lists the spaced rules in the form this test is about; `th` after `tcp dport` as `tcp`)
        assert NAT.replace(":th ", ":tcp ") in listed
        from_json = json_listing(topo)
        yield topo, [Tracer(load(text), node_ips=topo.node_ips) for text in (listed, SPACED)] + [
            Tracer(from_json, node_ips=topo.node_ips)]


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize("src", list(EXPECTED))
def test_the_kernel_agrees(node: tuple[Topology, list[Tracer]], src: str) -> None:
    topo, tracers = node
    landed = set()
    for _ in range(24 if src == BY_DRAW else 3):  # (a missed port of the draw: 2**-23)
        result = topo.probe("client", NODE_IP, ASKED, src_ip=src, timeout=0.5)
        assert result.outcome == "connected" and result.endpoint is not None, result
        landed.add(f"{result.endpoint[0]}:{result.endpoint[1]}")
    assert landed == EXPECTED[src]
    for tracer in tracers:
        assert destinations(tracer.trace(Packet(src, NODE_IP, ASKED), in_interface="eth0")) == EXPECTED[src]
