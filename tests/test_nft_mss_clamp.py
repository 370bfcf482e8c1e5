"""MSS clamping, `tcp option maxseg size set rt mtu` / `… set 1400` (found by kernfuzz2, judged by the kernel):
a statement that rewrites the SYN's MSS option and lets the rule go on to its verdict, as routers and CNIs write
it in their forward chains. iptrace read it as an expression it did not understand and assumed the rule does not
match (a forward chain with policy drop was predicted to drop what its clamping rule accepts), and refused the
whole ruleset when a verdict followed `set rt mtu` ("'accept' is not a number"). The test `tcp option maxseg
size 1000-1460` still reads a value the sender chose: assumed, and said."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load, save
from iptrace.nftables.walk import Tracer
from tests.oracle import CLIENT_IP, NODE_IP, Topology
from tests.oracle.nft import listing_tracers, load_nft, requires_nft

POD, CLAMPED, SET_TO = "198.18.128.10", "198.18.64.6", "198.18.64.7"
SERVICE, PORT = "198.19.0.10", 8080
KUBE_PROXY = render_nft(
    [ServiceSpec("shop", "web", SERVICE, [PortSpec("http", 80, target_port=PORT)], endpoints=[EndpointSpec(POD, PORT)])],
    node_ips=[NODE_IP], pod_cidr="198.18.128.0/17", service_cidrs=["198.19.0.0/17"], form="transaction")
ROUTER = f"""table inet router {{
	chain forward {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		tcp flags syn tcp option maxseg size set rt mtu
		ip saddr {CLAMPED} tcp flags syn tcp option maxseg size set rt mtu accept
		ip saddr {SET_TO} tcp flags syn / syn,rst tcp option maxseg size set 1400 accept
	}}
}}
"""
CASES = [(CLAMPED, True), (SET_TO, True), (CLIENT_IP, False)]


def verdicts(t: Trace) -> set[str]:
    return {o.verdict for o in t.outcomes}


@pytest.mark.parametrize(("src", "passes"), CASES)
def test_a_clamping_rule_goes_on_to_its_verdict(src: str, passes: bool) -> None:
    tracer = Tracer(load(KUBE_PROXY + ROUTER), node_ips=[NODE_IP])
    for dst, port, through in ((POD, PORT, "ACCEPT"), (SERVICE, 80, "DNAT")):
        t = tracer.trace(Packet(src, dst, port), in_interface="eth0")
        assert verdicts(t) == ({through} if passes else {"DROP"}), t.assumptions
        assert not any("not understood" in a for a in t.assumptions), t.assumptions


def test_the_statement_is_written_back_and_an_option_test_is_assumed() -> None:
    saved = load(save(load(ROUTER))).tables[0].chains[0].rules
    assert [r.items for r in saved] == [r.items for r in load(ROUTER).tables[0].chains[0].rules]
    assert saved[1].text == "tcp flags syn tcp option maxseg size set rt mtu"
    tested = ROUTER.replace("tcp flags syn tcp option maxseg size set rt mtu accept",
                            "tcp option maxseg size 1000-1460 accept")
    t = Tracer(load(tested), node_ips=[NODE_IP]).trace(Packet(CLAMPED, POD, PORT))
    assert verdicts(t) == {"DROP"}
    assert any("tcp option maxseg size 1000-1460" in a for a in t.assumptions)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, list[Tracer]]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD)
        for src in (CLAMPED, SET_TO):
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, KUBE_PROXY + ROUTER)
        yield topo, listing_tracers(topo)


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize(("src", "passes"), CASES)
def test_the_kernel_agrees(node: tuple[Topology, list[Tracer]], src: str, passes: bool) -> None:
    topo, tracers = node
    targets = ((POD, PORT, "ACCEPT"), (SERVICE, 80, "DNAT"))
    kernel = topo.probe_each((("client", dst, port) for dst, port, _ in targets), src_ip=src, timeout=0.5)
    for (dst, port, through), result in zip(targets, kernel, strict=True):
        assert result.outcome == ("connected" if passes else "timeout"), (src, dst, result)
        for tracer in tracers:
            assert verdicts(tracer.trace(Packet(src, dst, port), in_interface="eth0")) == (
                {through} if passes else {"DROP"})
