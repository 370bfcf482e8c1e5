"""`limit name "x"` / `quota name "x"` (found by kernfuzz2, judged by the kernel): a named limit's rate, and
whether it is `over`, is in the object's declaration (`limit x { rate over 10/second }`), not in the rule. iptrace
read the rule alone and took every named limit for one that matches under its rate, so `limit name "over-rate"
drop` was predicted to drop the first packet the kernel let through; the JSON listing's named limit statement was
not understood at all, and its limit objects had no declaration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load
from iptrace.nftables.walk import Tracer
from tests.oracle import NODE_IP, Topology
from tests.oracle.nft import listing_tracers, load_nft, requires_nft

POD, PORT = "198.18.128.10", 8080
OVER, UNDER, QUOTA, UNDECLARED = "198.18.64.6", "198.18.64.7", "198.18.64.8", "198.18.64.9"
RULES = f"""table inet t {{
	limit over-rate {{ rate over 10/second }}
	limit under-rate {{ rate 10/second }}
	quota over-quota {{ over 100 mbytes }}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ip saddr {OVER} limit name "over-rate" drop
		ip saddr {UNDER} limit name "under-rate" drop
		ip saddr {QUOTA} quota name "over-quota" drop
	}}
}}
"""
CASES = [(OVER, True), (UNDER, False), (QUOTA, True)]


def trace(tracer: Tracer, src: str) -> Trace:
    return tracer.trace(Packet(src, POD, PORT), in_interface="eth0")


@pytest.mark.parametrize(("src", "passes"), CASES)
def test_a_named_limit_is_read_from_its_declaration(src: str, passes: bool) -> None:
    t = trace(Tracer(load(RULES), node_ips=[NODE_IP]), src)
    assert [o.verdict for o in t.outcomes] == (["ACCEPT"] if passes else ["DROP"])
    assert any("assumed under the limit" in a for a in t.assumptions), t.assumptions


def test_an_undeclared_object_is_assumed_not_to_match() -> None:
    text = RULES.replace(f'ip saddr {OVER} limit name "over-rate" drop', f'ip saddr {UNDECLARED} limit name "x" drop')
    t = trace(Tracer(load(text), node_ips=[NODE_IP]), UNDECLARED)
    assert [o.verdict for o in t.outcomes] == ["ACCEPT"]
    assert any('limit "x" is not declared' in a for a in t.assumptions), t.assumptions


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, list[Tracer]]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD)
        for src, _ in CASES:
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, RULES)
        yield topo, listing_tracers(topo)


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize(("src", "passes"), CASES)
def test_the_kernel_agrees(node: tuple[Topology, list[Tracer]], src: str, passes: bool) -> None:
    topo, tracers = node
    result = topo.probe("client", POD, PORT, src_ip=src, timeout=0.5)
    assert result.outcome == ("connected" if passes else "timeout"), result
    for tracer in tracers:  # the text listing and the JSON one
        assert [o.verdict for o in trace(tracer, src).outcomes] == (["ACCEPT"] if passes else ["DROP"])
