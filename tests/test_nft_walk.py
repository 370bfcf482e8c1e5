"""The nftables walk's kernel semantics, one behaviour per test, on small rulesets written for it: hook and
priority order (NAT chains at the NAT hook), verdicts and policies, sets, maps and concatenations, numgen shares,
fib, marks, conntrack, what is assumed, the node's own packets, and the evidence a path carries."""

from __future__ import annotations

from fractions import Fraction

import pytest

from iptrace.dataplane import Packet, Trace, trace_to_json
from iptrace.errors import TraceError
from iptrace.nftables import load
from iptrace.nftables.walk import Tracer

NODE = "192.168.0.10"


def trace(text: str, src: str, dst: str, dport: int = 80, proto: str = "tcp", **kw: object) -> Trace:
    return Tracer(load(text), node_ips=[NODE, "2001:db8::10"]).trace(Packet(src, dst, dport, proto), **kw)  # type: ignore[arg-type]


def summary(t: Trace) -> list[tuple[str, str | None, Fraction, bool]]:
    return [(o.verdict, o.destination, o.exact_probability, o.masquerade) for o in t.outcomes]


def chains(t: Trace, i: int = 0) -> list[str]:
    return [c for _, c in t.outcomes[i].chains]


ORDER = """
table ip a {
    chain nat-pre { type nat hook prerouting priority -200; policy accept; ip daddr 10.96.0.1 dnat to 10.244.0.9:8080 }
    chain early { type filter hook prerouting priority -150; policy accept; counter }
    chain late { type filter hook prerouting priority -90; policy accept; ip daddr 10.244.0.9 drop }
}
table ip b {
    chain nat-pre-2 { type nat hook prerouting priority -100; policy accept; ip daddr 10.96.0.1 dnat to 10.244.0.7:80 }
}
"""


def test_chains_run_by_priority_and_nat_chains_at_the_nat_hook() -> None:
    """A NAT chain is called from the NAT hook (-100) whatever its own priority, NAT chains in their priority
    order until one made the mapping: `nat-pre` (-200) maps, `nat-pre-2` is not called, and `late` (-90) sees
    the new destination; `early` (-150) ran first."""
    t = trace(ORDER, "203.0.113.1", "10.96.0.1")
    assert summary(t) == [("DROP", None, 1, False)]
    assert chains(t) == ["early", "nat-pre", "late"]


def test_policy_drop_and_accept_that_lets_the_next_base_chain_run() -> None:
    text = """
    table inet f {
        chain fwd { type filter hook forward priority 0; policy drop; ip daddr 10.0.0.5 accept }
        chain fwd2 { type filter hook forward priority 10; policy accept; tcp dport 22 reject }
    }"""
    assert summary(trace(text, "203.0.113.1", "10.0.0.5", 80)) == [("ACCEPT", None, 1, False)]
    t = trace(text, "203.0.113.1", "10.0.0.5", 22)
    assert summary(t) == [("REJECT", None, 1, False)]  # accept ends `fwd` only: `fwd2` still runs
    t = trace(text, "203.0.113.1", "10.0.0.6", 80)
    assert summary(t) == [("DROP", None, 1, False)]
    assert t.outcomes[0].decided_by.policy == "drop"  # type: ignore[union-attr]
    assert t.outcomes[0].decided_by.to_json() == {"policy": "drop", "table": "inet f", "chain": "fwd"}  # type: ignore[union-attr]


def test_jump_goto_return_and_continue() -> None:
    text = """
    table ip t {
        chain base { type filter hook forward priority 0; policy accept; jump a; ip daddr 10.0.0.1 drop }
        chain a { goto b; ip daddr 10.0.0.1 reject }
        chain b { ip saddr 10.244.0.0/16 return; continue; ip daddr 10.0.0.1 accept }
    }"""
    # b returns to base (goto skipped a's rest), base's next rule drops.
    assert summary(trace(text, "10.244.0.5", "10.0.0.1")) == [("DROP", None, 1, False)]
    assert summary(trace(text, "203.0.113.1", "10.0.0.1")) == [("ACCEPT", None, 1, False)]


def test_a_jump_loop_is_an_error() -> None:
    text = """
    table ip t {
        chain base { type filter hook forward priority 0; policy accept; jump a }
        chain a { jump b }
        chain b { jump a }
    }"""
    with pytest.raises(TraceError, match="jump loop"):
        trace(text, "203.0.113.1", "10.0.0.1")


def test_values_prefixes_ranges_sets_and_negation() -> None:
    text = """
    table ip t {
        set ok { type ipv4_addr; flags interval; elements = { 10.1.0.0/16, 10.2.0.1-10.2.0.9 } }
        chain base { type filter hook forward priority 0; policy accept;
            ip saddr @ok tcp dport { 80, 443 } accept
            ip saddr != { 10.3.0.0/16, 10.4.0.1 } tcp dport 1000-2000 drop
            tcp dport != 5 reject
        }
    }"""
    assert summary(trace(text, "10.2.0.5", "10.9.0.1", 443))[0][0] == "ACCEPT"
    assert summary(trace(text, "10.1.9.9", "10.9.0.1", 80))[0][0] == "ACCEPT"
    assert summary(trace(text, "10.5.0.1", "10.9.0.1", 1500))[0][0] == "DROP"
    assert summary(trace(text, "10.4.0.1", "10.9.0.1", 1500))[0][0] == "REJECT"
    # `tcp dport != 5` needs a TCP packet: nft's implicit `meta l4proto tcp` fails for UDP, negation or not.
    assert summary(trace(text, "10.4.0.1", "10.9.0.1", 1500, "udp"))[0][0] == "ACCEPT"


@pytest.mark.parametrize("first, second", [
    ("ip saddr != 10.0.0.0/8 counter", "counter ip saddr != 10.0.0.0/8 drop"),
    ("counter ip saddr != 10.0.0.0/8", "ip saddr != 10.0.0.0/8 drop"),
])
def test_a_match_read_before_and_after_a_statement_in_two_rules(first: str, second: str) -> None:
    # The table's rules share what an item compiled to: a match leading one rule and the same match after a
    # statement in another (`counter ip saddr …`) must each be read as a test of the packet.
    text = f"""
    table ip t {{
        chain base {{ type filter hook forward priority 0; policy accept;
            {first}
            {second}
        }}
    }}"""
    assert summary(trace(text, "203.0.113.1", "10.9.0.1"))[0][0] == "DROP"
    assert summary(trace(text, "10.1.0.1", "10.9.0.1"))[0][0] == "ACCEPT"


def test_verdict_maps_keyed_by_concatenations_and_their_element_steps() -> None:
    text = """table ip t {
\tmap m {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.1 . tcp . 80 : goto c,
\t\t\t     10.96.0.2 . udp . 53 : drop }
\t}
\tchain base {
\t\ttype filter hook forward priority 0; policy accept;
\t\tip daddr . meta l4proto . th dport vmap @m
\t}
\tchain c {
\t\treject
\t}
}
"""
    t = trace(text, "203.0.113.1", "10.96.0.1", 80)
    assert summary(t) == [("REJECT", None, 1, False)]
    element = t.outcomes[0].path[1]
    assert (element.chain, element.line, element.rule) == (
        "base", 4, "element ip t m { 10.96.0.1 . tcp . 80 : goto c }")
    t = trace(text, "203.0.113.1", "10.96.0.2", 53, "udp")
    assert t.outcomes[0].decided_by.line == 5  # type: ignore[union-attr]  # the element decided
    assert summary(trace(text, "203.0.113.1", "10.96.0.2", 53, "tcp"))[0][0] == "ACCEPT"  # no element: no match


def test_transaction_elements_are_evidence_with_their_own_line() -> None:
    text = "\n".join([
        "add table ip t",
        "add chain ip t base { type filter hook forward priority 0 ; }",
        "add map ip t m { type ipv4_addr . inet_proto . inet_service : verdict ; }",
        "add rule ip t base ip daddr . meta l4proto . th dport vmap @m",
        "add element ip t m { 10.96.0.1 . tcp . 80 : drop }",
        "add element ip t m { 10.96.0.2 . tcp . 80 : accept }"])
    t = trace(text, "203.0.113.1", "10.96.0.2")
    assert [(s.line, s.rule) for s in t.outcomes[0].path] == [
        (4, "ip daddr . meta l4proto . th dport vmap @m"), (6, "element ip t m { 10.96.0.2 . tcp . 80 : accept }")]


@pytest.mark.parametrize("blanks", [" ", "\t", "  "])
def test_elements_written_with_other_blanks_are_evidence_with_their_own_line(blanks: str) -> None:
    # nft reads any run of blanks alike; the element's line is found in the text as kube-proxy's writing's is.
    listing = "\n".join([
        "table ip t {",
        "\tmap m {",
        "\t\ttype ipv4_addr . inet_proto . inet_service : verdict",
        f"\t\telements{blanks}={blanks}{{ 10.96.0.1{blanks}.{blanks}tcp . 80{blanks}:{blanks}drop,",
        f"\t\t\t     10.96.0.2 .{blanks}tcp . 80 :{blanks}accept }}",
        "\t}",
        "\tchain base {",
        "\t\ttype filter hook forward priority 0; policy accept;",
        "\t\tip daddr . meta l4proto . th dport vmap @m",
        "\t}",
        "}", ""])
    transaction = "\n".join([
        "add table ip t",
        "add chain ip t base { type filter hook forward priority 0 ; }",
        "add map ip t m { type ipv4_addr . inet_proto . inet_service : verdict ; }",
        "add rule ip t base ip daddr . meta l4proto . th dport vmap @m",
        f"add element ip t m {{ 10.96.0.1{blanks}.{blanks}tcp . 80 : drop }}",
        f"add element ip t m {{ 10.96.0.2 . tcp{blanks}.{blanks}80{blanks}:{blanks}accept }}"])
    for text, lines in ((listing, (4, 5)), (transaction, (5, 6))):
        for dst, line in zip(("10.96.0.1", "10.96.0.2"), lines, strict=True):
            assert trace(text, "203.0.113.1", dst).outcomes[0].path[-1].line == line


def test_numgen_splits_into_exact_shares() -> None:
    text = """
    table ip t {
        chain nat { type nat hook prerouting priority dstnat; policy accept;
            ip daddr 10.96.0.1 meta l4proto tcp dnat ip to numgen random mod 3 map {
                0 : 10.244.0.1 . 8080, 1 : 10.244.0.2 . 8080, 2 : 10.244.0.3 . 8080 }
            ip daddr 10.96.0.2 numgen random mod 4 vmap { 0 : goto a, 1 : goto a, 2 : drop }
        }
        chain a { dnat to 10.244.0.9 }
    }"""
    assert summary(trace(text, "203.0.113.1", "10.96.0.1")) == [
        ("DNAT", f"10.244.0.{i}:8080", Fraction(1, 3), False) for i in (1, 2, 3)]
    # Values the map lacks (3) do not match: that branch goes on with the next rule.
    assert summary(trace(text, "203.0.113.1", "10.96.0.2")) == [
        ("DNAT", "10.244.0.9:80", Fraction(1, 4), False), ("DNAT", "10.244.0.9:80", Fraction(1, 4), False),
        ("DROP", None, Fraction(1, 4), False), ("CONTINUE", None, Fraction(1, 4), False)]


def test_a_hash_of_the_packet_is_a_split_with_an_assumption() -> None:
    text = """table ip t { chain nat { type nat hook prerouting priority dstnat; policy accept;
        jhash ip saddr mod 2 vmap { 0 : drop, 1 : accept } } }"""
    t = trace(text, "203.0.113.1", "10.96.0.2")
    assert [o.exact_probability for o in t.outcomes] == [Fraction(1, 2), Fraction(1, 2)]
    assert any("jhash of the packet's fields mod 2" in a for a in t.assumptions)


def test_fib_local_is_the_node_and_loopback_and_marks_drive_masquerading() -> None:
    text = """
    table ip t {
        chain out { type nat hook output priority -100; policy accept;
            fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 30080 jump mark
            fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 30080 dnat to 10.244.0.9:8080
        }
        chain pre { type nat hook prerouting priority dstnat; policy accept;
            fib saddr type local drop
            fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 30080 jump mark
            fib daddr type local tcp dport 30080 dnat to 10.244.0.9:8080
        }
        chain mark { meta mark set meta mark | 0x00004000 }
        chain post { type nat hook postrouting priority srcnat; policy accept;
            meta mark & 0x00004000 == 0x00000000 return
            meta mark set meta mark ^ 0x00004000
            masquerade fully-random
        }
    }"""
    # From outside to the node's address: prerouting DNATs, the mark asks postrouting to masquerade.
    assert summary(trace(text, "203.0.113.1", NODE, 30080)) == [("DNAT", "10.244.0.9:8080", 1, True)]
    # From the node itself (its address or loopback): output is walked, not prerouting.
    assert summary(trace(text, NODE, NODE, 30080)) == [("DNAT", "10.244.0.9:8080", 1, True)]
    t = trace(text, "127.0.0.1", "127.0.0.1", 30080)
    assert summary(t) == [("CONTINUE", None, 1, False)] and chains(t) == ["out", "post"]
    # Not a local address: no NodePort.
    assert summary(trace(text, "203.0.113.1", "192.168.0.99", 30080)) == [("CONTINUE", None, 1, False)]


def test_the_nodes_own_packet_for_itself_comes_back_through_lo_without_nat() -> None:
    text = """
    table inet t {
        chain in { type filter hook input priority 0; policy accept; iifname "lo" tcp dport 22 reject }
        chain pre { type nat hook prerouting priority dstnat; policy accept; tcp dport 22 dnat ip to 10.0.0.1 }
    }"""
    t = trace(text, NODE, NODE, 22)
    assert summary(t) == [("REJECT", None, 1, False)]
    assert chains(t) == ["in"]  # prerouting's NAT chain is not called again
    t = trace(text, "203.0.113.1", NODE, 22)  # from outside: DNATed away, input never reached
    assert summary(t) == [("DNAT", "10.0.0.1:22", 1, False)]


def test_output_dnat_is_routed_again() -> None:
    text = """
    table ip t {
        chain out { type nat hook output priority -100; policy accept; ip daddr 10.96.0.1 dnat to 192.168.0.10:8080 }
        chain in { type filter hook input priority 0; policy accept; tcp dport 8080 drop }
    }"""
    assert summary(trace(text, NODE, "10.96.0.1")) == [("DROP", None, 1, False)]


def test_conntrack_of_a_first_packet() -> None:
    text = """
    table inet t {
        chain fwd { type filter hook forward priority 0; policy accept;
            ct state established,related accept
            ct state invalid drop
            ct state new ct status dnat reject
            ct state { new } ct direction original tcp flags & (fin|syn|rst|ack) == syn counter
        }
        chain pre { type nat hook prerouting priority dstnat; policy accept; ip daddr 10.96.0.1 dnat to 10.0.0.2 }
    }"""
    assert summary(trace(text, "203.0.113.1", "10.96.0.1")) == [("REJECT", None, 1, False)]
    assert summary(trace(text, "203.0.113.1", "10.96.0.2")) == [("ACCEPT", None, 1, False)]
    assert any("ct state new" in a for a in trace(text, "203.0.113.1", "10.96.0.2").assumptions)


def test_what_cannot_be_known_is_assumed_and_said() -> None:
    text = """
    table ip filter {
        chain FORWARD { type filter hook forward priority filter; policy accept;
            iifname "eth0" drop
            meta skuid 0 reject
            xt match "conntrack" counter drop
            ip daddr 10.0.0.1 limit rate over 10/second drop
        }
    }"""
    t = trace(text, "203.0.113.1", "10.0.0.1")
    assert summary(t) == [("ACCEPT", None, 1, False)]
    notes = " | ".join(t.assumptions)
    for word in ("input interface is not known", "meta skuid", 'xt match "conntrack"', "limit rate over"):
        assert word in notes, (word, notes)
    # Given the interface, nothing is assumed about it.
    t = trace(text, "203.0.113.1", "10.0.0.1", in_interface="eth0")
    assert summary(t) == [("DROP", None, 1, False)]


def test_session_affinity_starts_empty_for_a_first_packet() -> None:
    text = """
    table ip kube-proxy {
        set affinity-X { type ipv4_addr; flags dynamic,timeout; timeout 3h; elements = { 10.0.0.2 expires 2h } }
        chain nat { type nat hook prerouting priority dstnat; policy accept; ip daddr 10.96.0.1 jump svc }
        chain svc { ip saddr @affinity-X goto ep2; goto ep1 }
        chain ep1 { update @affinity-X { ip saddr } meta l4proto tcp dnat to 10.244.0.1:80 }
        chain ep2 { meta l4proto tcp dnat to 10.244.0.2:80 }
    }"""
    t = trace(text, "10.0.0.2", "10.96.0.1")
    assert summary(t) == [("DNAT", "10.244.0.1:80", 1, False)]
    assert any("a first connection from 10.0.0.2 has no entry" in a and "earlier connection" in a
               for a in t.assumptions)


def test_ipv6_destinations_are_bracketed_and_inet_tables_answer_for_both_families() -> None:
    text = """
    table inet t {
        chain pre { type nat hook prerouting priority dstnat; policy accept;
            ip6 daddr fd00:96::1 tcp dport 80 dnat ip6 to [fd00:244::5]:8080
            ip daddr 10.96.0.1 tcp dport 80 dnat ip to 10.244.0.5:8080
        }
    }"""
    assert summary(trace(text, "2001:db8:ff::1", "fd00:96::1")) == [("DNAT", "[fd00:244::5]:8080", 1, False)]
    assert summary(trace(text, "203.0.113.1", "10.96.0.1")) == [("DNAT", "10.244.0.5:8080", 1, False)]


def test_tables_of_the_other_family_and_other_hooks_are_not_walked() -> None:
    text = """
    table ip6 six { chain f { type filter hook forward priority 0; policy drop; } }
    table bridge br { chain f { type filter hook forward priority 0; policy accept; counter drop } }
    """
    t = trace(text, "203.0.113.1", "10.0.0.1")
    assert summary(t) == [("CONTINUE", None, 1, False)]
    assert any("bridge br" in a for a in t.assumptions)
    assert any("no table for IPv4" in a for a in t.assumptions)


def test_redirect_goes_to_the_node() -> None:
    text = """table ip t {
        chain pre { type nat hook prerouting priority dstnat; policy accept; tcp dport 80 redirect to :8080 }
        chain out { type nat hook output priority -100; policy accept; tcp dport 80 redirect to :8080 }
    }"""
    assert summary(trace(text, "203.0.113.1", "10.0.0.1")) == [("DNAT", f"{NODE}:8080", 1, False)]
    assert summary(trace(text, NODE, "10.0.0.1")) == [("DNAT", "127.0.0.1:8080", 1, False)]


def test_trace_chain_enters_one_chain() -> None:
    text = """table ip kube-proxy { chain svc { numgen random mod 2 vmap { 0 : goto a, 1 : goto b } }
        chain a { dnat to 10.244.0.1:80 } chain b { dnat to 10.244.0.2:80 } }"""
    t = Tracer(load(text)).trace_chain("svc", Packet("203.0.113.1", "10.96.0.1", 80))
    assert t.entry == "kube-proxy"
    assert summary(t) == [("DNAT", "10.244.0.1:80", Fraction(1, 2), False),
                          ("DNAT", "10.244.0.2:80", Fraction(1, 2), False)]
    with pytest.raises(TraceError):
        Tracer(load(text)).trace_chain("nope", Packet("203.0.113.1", "10.96.0.1", 80))


def test_rules_are_shown_as_nft_lists_them() -> None:
    tx = "\n".join(["add table ip t", "add chain ip t c { type filter hook forward priority 0 ; }",
                    "add rule ip t c ip daddr { 10.96.0.0/12 } mark and 0x4000 == 0 drop"])
    t = trace(tx, "203.0.113.1", "10.96.0.1")
    assert trace_to_json(t)["outcomes"][0]["path"][0]["rule"] == \
        "ip daddr 10.96.0.0/12 meta mark & 0x00004000 == 0x00000000 drop"


def test_a_host_firewalls_inet_table_is_walked_for_both_families() -> None:
    """firewalld's inet table (rules of its shape): `meta nfproto` tells the families apart, reverse-path
    filtering is a route look-up the rules cannot decide (assumed to find a route)."""
    text = """table inet firewalld {
\tchain filter_PREROUTING {
\t\ttype filter hook prerouting priority filter + 10; policy accept;
\t\tmeta nfproto ipv6 fib saddr . mark . iif oif missing drop
\t}
\tchain filter_INPUT {
\t\ttype filter hook input priority filter + 10; policy accept;
\t\tct state { established, related } accept
\t\tiifname "lo" accept
\t\tmeta nfproto ipv4 tcp dport 22 accept
\t\treject with icmpx admin-prohibited
\t}
}
"""
    t = trace(text, "203.0.113.1", NODE, 22)
    assert summary(t) == [("ACCEPT", None, 1, False)] and t.outcomes[0].decided_by.line == 10  # type: ignore[union-attr]
    assert summary(trace(text, "203.0.113.1", NODE, 80)) == [("REJECT", None, 1, False)]
    t = trace(text, "2001:db8:ff::1", "2001:db8::10", 22)
    assert summary(t) == [("REJECT", None, 1, False)]
    assert any("route lookup (fib saddr . mark . iif oif)" in a for a in t.assumptions)
