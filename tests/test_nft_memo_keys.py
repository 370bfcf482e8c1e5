"""The post-NAT memo's key (iptrace/nftables/memo.py): rules that read only fields the key holds (marks, conntrack
state, protocol, interfaces, and the IP version every ip/ip6 expression and `meta nfproto` read) are not asked,
and rules that read the destination are answered by its value, kept. Shared walks still equal the unshared walk
for both IP families of an inet table, whatever the destination, port, protocol and client — including rules
that read the version only implicitly (`ip protocol tcp th dport 81`, `meta nfproto ipv4 th dport 83`)."""

from __future__ import annotations

import json

import pytest

from iptrace.dataplane import Packet, trace_to_json
from iptrace.nftables import load
from iptrace.nftables.walk import Tracer

RULESET = """table inet f {
    chain fwd {
        type filter hook forward priority filter; policy accept;
        meta mark 0x00000001 drop
        ip protocol tcp th dport 81 drop
        ip6 nexthdr tcp th dport 82 drop
        meta nfproto ipv4 th dport 83 accept
        ct state new ip daddr 10.1.0.0/24 th dport 84 reject
        ct state new ip6 daddr fd00:1::/64 th dport 84 reject
        meta l4proto udp th dport 85 drop
        jump more
    }
    chain more {
        meta nfproto ipv6 th dport 86 drop
        ip daddr 10.1.0.2 drop
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        meta nfproto ipv6 th dport 87 masquerade
        ip daddr 10.1.0.3 masquerade
    }
}
table ip nat {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.1 th dport 80 dnat to numgen random mod 3 map { 0 : 10.1.0.1, 1 : 10.1.0.2, 2 : 10.1.0.3 }
        ip daddr 10.96.0.2 dnat to 10.1.0.1
    }
}
table ip6 nat {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip6 daddr fd00:96::1 th dport 80 dnat to numgen random mod 2 map { 0 : fd00:1::1, 1 : fd00:2::1 }
        ip6 daddr fd00:96::2 dnat to fd00:1::2
    }
}
"""


@pytest.mark.parametrize("share_first", [True, False])
def test_shared_tail_walks_equal_the_unshared_walk_for_both_families(share_first: bool) -> None:
    ruleset = load(RULESET)
    shared, plain = Tracer(ruleset, node_ips=["192.168.0.10"]), Tracer(ruleset, node_ips=["192.168.0.10"],
                                                                       share=False)
    packets = []
    for port in (80, 81, 82, 83, 84, 85, 86, 87, 88):
        for proto in ("tcp", "udp"):
            for dst in ("10.96.0.1", "10.96.0.2", "10.1.0.2", "10.1.0.9"):
                packets.extend(Packet(src, dst, port, proto) for src in ("203.0.113.1", "10.1.0.1"))
            for dst in ("fd00:96::1", "fd00:96::2", "fd00:1::9", "fd00:3::1"):
                packets.extend(Packet(src, dst, port, proto) for src in ("2001:db8::1", "fd00:1::1"))
    if not share_first:
        packets.reverse()
    for _ in range(2):
        for packet in packets:
            assert json.dumps(trace_to_json(shared.trace(packet))) == \
                json.dumps(trace_to_json(plain.trace(packet))), packet
    # the tails were shared: fewer walks recorded than branches met
    assert any(plan is not None and plan.memo for plan in shared._plans.values())


SPLIT = """table inet g {
    chain pre {
        type filter hook prerouting priority filter; policy accept;
        jump lb
    }
    chain lb {
        ip protocol tcp th dport 81 drop
        meta nfproto ipv4 th dport 83 accept
        meta mark 0x00000001 drop
        numgen random mod 2 vmap { 0 : goto a, 1 : goto b }
    }
    chain a {
        meta nfproto ipv6 drop
        meta l4proto udp reject
    }
    chain b {
        accept
    }
}
"""


def test_chain_plans_tell_the_ip_versions_apart() -> None:
    """A load-balancing chain of an inet table shared between branches (its plan made at once): v4 and v6
    branches with equal fields otherwise walk differently (`meta nfproto ipv6 drop` reads the version alone)."""
    ruleset = load(SPLIT)
    shared, plain = Tracer(ruleset, node_ips=["192.168.0.10"]), Tracer(ruleset, node_ips=["192.168.0.10"],
                                                                       share=False)
    shared.plan_after = 0
    for _ in range(2):
        for port in (80, 81, 83):
            for proto in ("tcp", "udp"):
                for src, dst in (("203.0.113.1", "10.1.0.1"), ("2001:db8::1", "fd00:1::1")):
                    packet = Packet(src, dst, port, proto)
                    assert json.dumps(trace_to_json(shared.trace(packet))) == \
                        json.dumps(trace_to_json(plain.trace(packet))), packet
    assert any(plan is not None and plan.memo for plan in shared._chain_plans.values())
