"""iptables `-m ttl` / `-m hl`: a forwarded packet has one less TTL in FORWARD and POSTROUTING (found by the
kernfuzz sweep, judged by the kernel: ip_forward decrements it before the FORWARD hook). iptrace assumed the
packet's TTL 64 everywhere, so `--ttl-eq 63` in FORWARD was predicted never to match what the kernel drops."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.iptables import load
from iptrace.iptables.walk import Tracer
from tests.oracle import CLIENT_IP, NODE_IP, Topology, oracle_unavailable

POD = "198.18.128.10"
OTHER_CLIENT = "198.18.64.5"
PORT = 8080
DUMP = f"""*mangle
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -s {OTHER_CLIENT}/32 -m ttl --ttl-eq 63 -j DROP
-A POSTROUTING -s {NODE_IP}/32 -m ttl ! --ttl-eq 64 -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s {CLIENT_IP}/32 -p tcp -m tcp --dport {PORT} -m ttl --ttl-eq 63 -j DROP
COMMIT
"""


def trace(tracer: Tracer, src: str) -> Trace:
    return tracer.trace(Packet(src, POD, PORT))


def verdicts(t: Trace) -> list[str]:
    return [o.verdict for o in t.outcomes]


def test_a_forwarded_packet_has_one_less_ttl() -> None:
    tracer = Tracer(load(DUMP), node_ips=[NODE_IP])
    dropped = trace(tracer, CLIENT_IP)
    assert verdicts(dropped) == ["DROP"]
    assert any("one less once forwarded" in a for a in dropped.assumptions)
    assert verdicts(trace(tracer, OTHER_CLIENT)) == ["ACCEPT"]  # 64 in PREROUTING
    assert verdicts(trace(tracer, NODE_IP)) == ["ACCEPT"]  # the node's own packet is not forwarded


@pytest.fixture(scope="module", params=["nft", "legacy"])
def node(request: pytest.FixtureRequest) -> Iterator[tuple[Topology, Tracer]]:
    reason = oracle_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    with Topology(request.param) as topo:
        topo.add_pod_ip(POD)
        topo.add_client_ip(OTHER_CLIENT)
        topo.start_server(tcp_ports=[PORT])
        topo.load(DUMP)
        yield topo, Tracer(load(topo.save()), node_ips=topo.node_ips)


@pytest.mark.root
@pytest.mark.parametrize(("kind", "src"), [("client", CLIENT_IP), ("client", OTHER_CLIENT), ("node", NODE_IP)])
def test_the_kernel_agrees(node: tuple[Topology, Tracer], kind: str, src: str) -> None:
    topo, tracer = node
    result = topo.probe(kind, POD, PORT, src_ip=src if kind == "client" else None, timeout=0.5)  # type: ignore[arg-type]
    predicted = verdicts(trace(tracer, src))
    assert (result.outcome, predicted) in (("connected", ["ACCEPT"]), ("timeout", ["DROP"])), (result, predicted)
