"""The source the chains after SNAT see (found by the kernfuzz sweep, judged by the kernel).

NAT rewrites the packet in the NAT hook itself (nf_nat_packet, right after the NAT chains), so a chain hooked after
it — postrouting above priority srcnat, input above 100, and the node's own packet coming back in through lo —
sees the new source: the address `snat to` names, or for masquerade the outgoing interface's (which the rules do
not say: the node address closest to the destination stands for it, and the trace says so). iptrace kept the
original source, so a postrouting filter at priority 200 testing `ip saddr` was predicted to drop what the kernel
let through, and to let through what it dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load
from iptrace.nftables.walk import Tracer
from tests.oracle import CLIENT_IP, NODE_IP, NODE_POD_SIDE_IP, Topology
from tests.oracle.nft import list_ruleset, load_nft, requires_nft

POD, POD_B, CLIENT_POD = "198.18.128.10", "198.18.128.11", "198.18.128.4"
SNAT_CLIENT, SNAT_TO = "198.18.64.5", "198.18.128.3"
SERVICE, BALANCED = "198.19.0.20", "198.19.0.21"
PORT = 8080
RULES = f"""table ip svc {{
	chain nat-pre {{
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {SERVICE} meta l4proto tcp dnat to {POD}:{PORT}
		ip daddr {BALANCED} meta l4proto tcp dnat ip to numgen random mod 2 map {{ 0 : {POD} . {PORT}, 1 : {POD_B} . {PORT} }}
	}}
	chain nat-out {{
		type nat hook output priority -100; policy accept;
		ip daddr {SERVICE} meta l4proto tcp dnat to {POD}:{PORT}
		ip daddr {BALANCED} meta l4proto tcp dnat ip to numgen random mod 2 map {{ 0 : {POD} . {PORT}, 1 : {POD_B} . {PORT} }}
	}}
	chain nat-snat {{
		type nat hook postrouting priority srcnat - 10; policy accept;
		ip saddr {SNAT_CLIENT} snat to {SNAT_TO}
	}}
	chain nat-post {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr != 198.18.128.0/17 masquerade
	}}
}}
table ip late {{
	chain post {{
		type filter hook postrouting priority 200; policy accept;
		ip saddr {CLIENT_IP} drop
		ip saddr {SNAT_TO} drop
		ip saddr {NODE_POD_SIDE_IP} ip daddr {POD_B} drop
	}}
}}
"""


def tracer(text: str = RULES, share: bool = True) -> Tracer:
    return Tracer(load(text), node_ips=[NODE_IP, NODE_POD_SIDE_IP, SNAT_TO], share=share)


def summary(t: Trace) -> list[tuple[str, str | None, bool]]:
    return [(o.verdict, o.destination, o.masquerade) for o in t.outcomes]


def test_after_masquerade_the_source_is_the_outgoing_interfaces() -> None:
    t = tracer().trace(Packet(CLIENT_IP, SERVICE, 80))
    assert summary(t) == [("DNAT", f"{POD}:{PORT}", True)]
    assert any(f"closest to the destination, {NODE_POD_SIDE_IP}" in a for a in t.assumptions), t.assumptions


def test_after_snat_to_the_source_is_its_address() -> None:
    t = tracer().trace(Packet(SNAT_CLIENT, SERVICE, 80))
    assert [o.verdict for o in t.outcomes] == ["DROP"]
    assert t.outcomes[0].decided_by is not None and t.outcomes[0].decided_by.chain == "post"


def test_without_snat_the_source_is_kept() -> None:
    assert summary(tracer().trace(Packet(CLIENT_POD, SERVICE, 80))) == [("DNAT", f"{POD}:{PORT}", False)]


def test_branches_after_snat_are_walked_alike_shared_or_not() -> None:
    """Each branch of a split meets the chain after SNAT with its own translated source: what a shared walk
    answers is what walking every branch answers."""
    for src in (CLIENT_IP, CLIENT_POD, SNAT_CLIENT, NODE_IP):
        shared = tracer().trace(Packet(src, BALANCED, 80))
        walked = tracer(share=False).trace(Packet(src, BALANCED, 80))
        assert summary(shared) == summary(walked)
        assert [o.path for o in shared.outcomes] == [o.path for o in walked.outcomes]
    assert sorted(summary(tracer().trace(Packet(CLIENT_IP, BALANCED, 80)))) == [
        ("DNAT", f"{POD}:{PORT}", True), ("DROP", None, True)]
    # Two branches no rule tells apart before SNAT, whose translated sources differ (their endpoints are closest
    # to different node addresses): a walk shared after NAT would give the second the first's answer.
    split = f"""table ip svc {{
	chain nat-pre {{
		type nat hook prerouting priority dstnat; policy accept;
		meta l4proto tcp dnat ip to numgen random mod 2 map {{ 0 : {POD} . {PORT}, 1 : 198.18.0.50 . {PORT} }}
	}}
	chain nat-post {{ type nat hook postrouting priority srcnat; policy accept; masquerade; }}
	chain post {{ type filter hook postrouting priority 200; policy accept; ip saddr {NODE_POD_SIDE_IP} drop; }}
}}
"""
    for share in (True, False):
        assert sorted(summary(tracer(split, share).trace(Packet(CLIENT_IP, BALANCED, 80)))) == [
            ("DNAT", f"198.18.0.50:{PORT}", True), ("DROP", None, True)]
    # The same after a split inside the NAT stage itself, for two packets whose endpoints are in different subnets.
    in_nat = f"""table ip svc {{
	chain nat-pre {{
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 80 dnat to {POD}:{PORT}
		tcp dport 81 dnat to 198.18.0.50:{PORT}
	}}
	chain m1 {{ masquerade; }}
	chain m2 {{ masquerade random; }}
	chain nat-post {{ type nat hook postrouting priority srcnat; policy accept; numgen random mod 2 vmap {{ 0 : jump m1, 1 : jump m2 }}; }}
	chain post {{ type filter hook postrouting priority 200; policy accept; ip saddr {NODE_POD_SIDE_IP} drop; }}
}}
"""
    for share in (True, False):
        walker = tracer(in_nat, share)
        assert [o.verdict for o in walker.trace(Packet(CLIENT_IP, SERVICE, 80)).outcomes] == ["DROP", "DROP"]
        assert [o.verdict for o in walker.trace(Packet(CLIENT_IP, SERVICE, 81)).outcomes] == ["DNAT", "DNAT"]


# --------------------------------------------------------------------------------------------- the kernel


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, Tracer]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD, POD_B, CLIENT_POD)
        topo.add_client_ip(SNAT_CLIENT)
        topo.add_node_ip(SNAT_TO, dev="cni0")
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, RULES)
        yield topo, Tracer(load(list_ruleset(topo)), node_ips=topo.node_ips)


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize(("kind", "src"), [("client", CLIENT_IP), ("client", SNAT_CLIENT), ("pod", CLIENT_POD),
                                           ("node", NODE_IP)])
def test_the_kernel_agrees(node: tuple[Topology, Tracer], kind: str, src: str) -> None:
    topo, trace = node
    destinations = (SERVICE, BALANCED, BALANCED, BALANCED)
    kernel = topo.probe_each(((kind, dst, 80) for dst in destinations),  # type: ignore[arg-type]
                             src_ip=None if kind == "node" else src, timeout=0.5)
    for dst, result in zip(destinations, kernel, strict=True):
        t = trace.trace(Packet(result.source[0] if result.source else src, dst, 80))
        where = f"{src} → {dst}: kernel {result}; predicted {summary(t)}"
        if result.outcome == "connected":
            landed = [o for o in t.outcomes if o.destination == f"{result.endpoint[0]}:{result.endpoint[1]}"]  # type: ignore[index]
            assert landed and landed[0].verdict == "DNAT", where
            assert landed[0].masquerade == (result.seen_source != (result.source or (src,))[0]), where
        else:
            assert result.outcome == "timeout" and "DROP" in {o.verdict for o in t.outcomes}, where
