"""Where a packet meets conntrack, and what that changes (found by the kernfuzz sweep, judged by the kernel).

The kernel attaches a connection to a packet at the conntrack hook (priority -200, prerouting and output). A
chain hooked before it (`priority raw`, -300) sees a packet with no connection yet: `ct state` reads `invalid`
and every other `ct` key fails whatever its operator (nft_ct_get_eval), and only there does `notrack` take effect
(nft_notrack_eval ignores a packet that has its connection). An untracked packet is never NATed: the NAT hook
passes a packet without a connection (nf_nat_inet_fn), so no NAT chain runs for it. iptrace used to read `ct
state new` everywhere, let a late `notrack` untrack, and NAT untracked packets.

The unit tests run everywhere; the kernel tests (root) load the same rules into a namespace and probe them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load
from iptrace.nftables.walk import Tracer
from tests.oracle import CLIENT_IP, NODE_IP, Topology
from tests.oracle.nft import NftTracer, list_ruleset, load_nft, nft, requires_nft

POD = "198.18.128.10"
SERVICE = "198.19.0.20"
UNTRACKED_CLIENT = "198.18.64.5"  # untracked by the raw chain
PORT = 8080

# A service DNAT and a masquerade (the NAT an untracked packet must miss), a raw chain before conntrack that
# untracks one client and drops another's "invalid" packets to port 81, and a chain after conntrack whose
# `notrack` (port 82) comes too late to matter, and whose `ct state invalid` (port 83) never holds.
RULES = f"""table ip svc {{
	chain nat-pre {{
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {SERVICE} meta l4proto tcp dnat to {POD}:{PORT}
	}}
	chain nat-post {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr != 198.18.128.0/17 masquerade
	}}
}}
table ip early {{
	chain raw {{
		type filter hook prerouting priority raw; policy accept;
		ip saddr {UNTRACKED_CLIENT} notrack
		ct state invalid ip saddr {CLIENT_IP} tcp dport 81 drop
		ct state new ip saddr {CLIENT_IP} tcp dport 84 drop
		ct mark != 0x5 ip saddr {CLIENT_IP} tcp dport 85 drop
	}}
	chain late {{
		type filter hook prerouting priority mangle; policy accept;
		ip saddr {CLIENT_IP} tcp dport 82 notrack
		ct state invalid ip saddr {CLIENT_IP} tcp dport 83 drop
	}}
}}
"""


def trace(src: str, dport: int) -> Trace:
    return Tracer(load(RULES), node_ips=[NODE_IP]).trace(Packet(src, SERVICE, dport))


def only(t: Trace) -> tuple[str, str | None, bool]:
    assert len(t.outcomes) == 1, t.outcomes
    o = t.outcomes[0]
    return o.verdict, o.destination, o.masquerade


def test_a_chain_before_conntrack_reads_ct_state_invalid() -> None:
    assert only(trace(CLIENT_IP, 81))[0] == "DROP"
    assert only(trace(CLIENT_IP, 84)) == ("DNAT", f"{POD}:{PORT}", True)


def test_other_ct_keys_before_conntrack_match_nothing() -> None:
    assert only(trace(CLIENT_IP, 85)) == ("DNAT", f"{POD}:{PORT}", True)


def test_an_untracked_packet_is_not_natted() -> None:
    verdict, destination, masquerade = only(trace(UNTRACKED_CLIENT, 80))
    assert verdict != "DNAT" and destination is None and not masquerade
    chains = [c for _, c in trace(UNTRACKED_CLIENT, 80).outcomes[0].chains]
    assert "nat-pre" not in chains and "nat-post" not in chains


def test_notrack_after_conntrack_does_nothing() -> None:
    assert only(trace(CLIENT_IP, 82)) == ("DNAT", f"{POD}:{PORT}", True)
    assert only(trace(CLIENT_IP, 83)) == ("DNAT", f"{POD}:{PORT}", True)


def test_the_nodes_own_packet_untracked_in_output_is_not_natted() -> None:
    text = RULES + """table ip out {
	chain raw-out { type filter hook output priority raw; policy accept; notrack; }
}
"""
    t = Tracer(load(text), node_ips=[NODE_IP]).trace(Packet(NODE_IP, SERVICE, 80))
    assert [(o.verdict, o.destination, o.masquerade) for o in t.outcomes] == [("ACCEPT", None, False)]


# --------------------------------------------------------------------------------------------- the kernel


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, Tracer, NftTracer, Tracer]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD)
        topo.add_client_ip(UNTRACKED_CLIENT)
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, RULES + f"""table ip out {{
	chain raw-out {{ type filter hook output priority raw; policy accept; ip daddr {SERVICE} notrack; }}
}}
""")
        tracer = Tracer(load(list_ruleset(topo)), node_ips=topo.node_ips)
        from_json = Tracer(load(nft(topo, "-j", "list", "ruleset")), node_ips=topo.node_ips)
        with NftTracer(topo) as kernel:
            yield topo, tracer, kernel, from_json


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize(("kind", "src", "dport"), [
    ("client", CLIENT_IP, 80), ("client", UNTRACKED_CLIENT, 80), ("client", CLIENT_IP, 81),
    ("client", CLIENT_IP, 82), ("client", CLIENT_IP, 83), ("client", CLIENT_IP, 84), ("client", CLIENT_IP, 85),
    ("node", NODE_IP, 80)])
def test_the_kernel_agrees(node: tuple[Topology, Tracer, NftTracer, Tracer], kind: str, src: str, dport: int) -> None:
    topo, tracer, kernel, from_json = node
    result, steps = kernel.path_of(lambda sport: topo.probe(kind, SERVICE, dport, src_ip=None if kind == "node"  # type: ignore[arg-type]
                                                            else src, sport=sport, timeout=0.5))
    t = tracer.trace(Packet(src, SERVICE, dport))
    twin = from_json.trace(Packet(src, SERVICE, dport))
    where = f"{src} → {SERVICE}:{dport}: kernel {result}, {steps}; predicted {t.outcomes}"
    if result.outcome == "connected":
        assert only(t) == ("DNAT", f"{POD}:{PORT}", result.seen_source != src), where
    else:
        assert result.outcome == "timeout", where
        verdict = only(t)[0]
        assert verdict != "DNAT", where
        assert (verdict == "DROP") == bool(steps and steps[-1].verdict == "drop"), where
    assert only(twin) == only(t), where  # the kernel's JSON listing predicts the same
    # The rules the SYN matched, table by table, are the predicted path.
    assert [(s.chain, " ".join(s.rule.split())) for s in steps] == [
        (s.chain, " ".join(s.rule.split())) for s in t.outcomes[0].path], where


def test_ct_mark_set_before_conntrack_does_nothing() -> None:
    text = """table ip t {
	chain raw { type filter hook prerouting priority raw; policy accept; ct mark set 0x7; }
	chain pre { type filter hook prerouting priority mangle; policy accept; tcp dport 81 ct mark set 0x9; }
	chain fwd { type filter hook forward priority filter; policy accept; ct mark 0x7 drop; ct mark 0x9 reject; }
}
"""
    tracer = Tracer(load(text), node_ips=[NODE_IP])
    assert [o.verdict for o in tracer.trace(Packet(CLIENT_IP, SERVICE, 80)).outcomes] == ["ACCEPT"]
    assert [o.verdict for o in tracer.trace(Packet(CLIENT_IP, SERVICE, 81)).outcomes] == ["REJECT"]


def test_a_chain_at_conntracks_own_priority_is_an_assumption() -> None:
    """The kernel runs such a chain before conntrack when it was created after conntrack's hooks (kernfuzz saw
    a table at -200 loaded after kube-proxy's drop on `ct state invalid`), after it otherwise."""
    text = RULES + f"""table ip at200 {{
	chain pre {{ type filter hook prerouting priority -200; policy accept; ip saddr {CLIENT_IP} tcp dport 86 ct state invalid drop; }}
}}
"""
    t = Tracer(load(text), node_ips=[NODE_IP]).trace(Packet(CLIENT_IP, SERVICE, 86))
    assert only(t) == ("DNAT", f"{POD}:{PORT}", True)
    assert any("priority -200" in a and "ip at200 pre" in a for a in t.assumptions), t.assumptions
    assert not any("priority -200" in a for a in trace(CLIENT_IP, 80).assumptions)
