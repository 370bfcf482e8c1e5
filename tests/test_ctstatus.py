"""iptables `-m conntrack --ctstatus` (found by kernfuzz2, judged by the kernel, both backends): the match holds
when the connection has one of the listed status bits; NONE names none, so `--ctstatus NONE` never holds and
`! --ctstatus NONE` always does. A first packet has none of EXPECTED, SEEN_REPLY, ASSURED, CONFIRMED (it is
confirmed after the last hook). iptrace took NONE for the first packet's status: `--ctstatus NONE -j DROP` was
predicted to drop what the kernel let through, and `! --ctstatus NONE -j DROP` to pass what it dropped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.dataplane import Packet, Trace
from iptrace.iptables import load
from iptrace.iptables.walk import Tracer
from tests.oracle import NODE_IP, Topology, oracle_unavailable

POD = "198.18.128.10"
NONE, NOT_NONE, NOT_CONFIRMED, NOT_SEEN = "198.18.64.6", "198.18.64.7", "198.18.64.8", "198.18.64.9"
SERVICE, PORT = "198.19.0.10", 8080
STATUS = f"""*filter
:STATUS - [0:0]
-A STATUS -s {NONE}/32 -m conntrack --ctstatus NONE -j DROP
-A STATUS -s {NOT_NONE}/32 -m conntrack ! --ctstatus NONE -j DROP
-A STATUS -s {NOT_CONFIRMED}/32 -m conntrack ! --ctstatus CONFIRMED -j DROP
-A STATUS -s {NOT_SEEN}/32 -m conntrack --ctstatus NONE,EXPECTED -j DROP
COMMIT
"""
DUMP = render([ServiceSpec("shop", "web", SERVICE, [PortSpec("http", 80, target_port=PORT)],
                           endpoints=[EndpointSpec(POD, PORT)])],
              node_ips=[NODE_IP], pod_cidr="198.18.128.0/17", extra=STATUS)
# The status chain first in FORWARD (before kube-proxy's ACCEPT of masqueraded traffic)
FIRST = DUMP.replace("-A FORWARD ", "-A FORWARD -j STATUS\n-A FORWARD ", 1)
CASES = [(NONE, True), (NOT_NONE, False), (NOT_CONFIRMED, False), (NOT_SEEN, True)]


def verdicts(t: Trace) -> set[str]:
    return {o.verdict for o in t.outcomes}


@pytest.mark.parametrize(("src", "passes"), CASES)
def test_a_first_packet_has_no_status_bit(src: str, passes: bool) -> None:
    tracer = Tracer(load(FIRST), node_ips=[NODE_IP])
    for dst, port, through in ((POD, PORT, "ACCEPT"), (SERVICE, 80, "DNAT")):
        assert verdicts(tracer.trace(Packet(src, dst, port))) == ({through} if passes else {"DROP"})


@pytest.fixture(scope="module", params=["nft", "legacy"])
def node(request: pytest.FixtureRequest) -> Iterator[tuple[Topology, Tracer]]:
    reason = oracle_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    with Topology(request.param) as topo:
        topo.add_pod_ip(POD)
        for src, _ in CASES:
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        topo.load(FIRST)
        yield topo, Tracer(load(topo.save()), node_ips=topo.node_ips)


@pytest.mark.root
@pytest.mark.parametrize(("src", "passes"), CASES)
def test_the_kernel_agrees(node: tuple[Topology, Tracer], src: str, passes: bool) -> None:
    topo, tracer = node
    targets = ((POD, PORT, "ACCEPT"), (SERVICE, 80, "DNAT"))
    kernel = topo.probe_each((("client", dst, port) for dst, port, _ in targets), src_ip=src, timeout=0.5)
    for (dst, port, through), result in zip(targets, kernel, strict=True):
        assert result.outcome == ("connected" if passes else "timeout"), (src, dst, result)
        assert verdicts(tracer.trace(Packet(src, dst, port))) == ({through} if passes else {"DROP"})
