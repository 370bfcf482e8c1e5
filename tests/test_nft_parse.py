"""The nftables loader: the three input forms, every rule form kube-proxy and the kernel write, the kernel's
rewrites read as the same thing, transaction commands, exact errors, lenient loading, save round trips."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.errors import DumpSemanticError, IptraceError, ParseError
from iptrace.iptables import sniff as iptables_sniff
from iptrace.nftables import detect_format, load, save, sniff
from iptrace.nftables.model import (
    AnonSet,
    BaseChain,
    Binop,
    Concat,
    Counter,
    Ct,
    Element,
    Fib,
    Flags,
    Mangle,
    MapLookup,
    Match,
    Meta,
    Nat,
    Numgen,
    Payload,
    Prefix,
    Range,
    Reject,
    Rule,
    SetRef,
    SetUpdate,
    Statement,
    Unknown,
    Verdict,
    VerdictMap,
    Xt,
)
from iptrace.nftables.render import UnwritableError

LISTING = """\
table ip kube-proxy {
	comment "rules for kube-proxy"
	set cluster-ips {
		type ipv4_addr
		comment "Active ClusterIPs"
		elements = { 172.30.0.41, 172.30.0.43,
\t\t\t     172.30.0.44 }
	}

	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
		elements = { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80,
\t\t\t     172.30.0.44 . tcp . 80 comment "ns4/svc4:p80" : goto reject-chain }
	}

	set affinity-X {
		type ipv4_addr
		size 65535
		flags dynamic,timeout
		timeout 3h
	}

	chain filter-prerouting-pre-dnat {
		type filter hook prerouting priority dstnat - 10; policy accept;
		ct state new jump firewall-check
	}

	chain firewall-check {
	}

	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}

	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
	}

	chain reject-chain {
		comment "helper for @no-endpoint-services / @no-endpoint-nodeports"
		reject
	}

	chain mark-for-masquerade {
		meta mark set meta mark | 0x00004000
	}

	chain service-ULMVA6XW-ns1/svc1/tcp/p80 {
		ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
		ip saddr @affinity-X goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
		numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
	}

	chain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 {
		ip saddr 10.180.0.1 jump mark-for-masquerade
		update @affinity-X { ip saddr }
		meta l4proto tcp dnat to 10.180.0.1:80
	}
}
"""

TRANSACTION = """\
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add set ip kube-proxy affinity-X { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
# rules may come before the chains they are in (the transaction is order-insensitive)
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy services
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 comment "ns4/svc4:p80" : goto reject-chain }
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip saddr @affinity-X goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 update @affinity-X { ip saddr }
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
"""


def one_rule(body: str, family: str = "ip") -> Rule:
    """The rule `body` as the only rule of a listing's chain (with the chains and sets it names)."""
    text = (f"table {family} t {{\n\tset s {{\n\t\ttype ipv4_addr\n\t}}\n\tmap m {{\n\t\ttype ipv4_addr : verdict\n\t}}\n"
            f"\tchain x {{\n\t}}\n\tchain y {{\n\t}}\n\tchain c {{\n\t\t{body}\n\t}}\n}}\n")
    chain = load(text).tables[0].chain("c")
    assert chain is not None and len(chain.rules) == 1
    return chain.rules[0]


def items(body: str, family: str = "ip") -> tuple:
    return one_rule(body, family).items


def test_listing_and_transaction_give_the_same_model() -> None:
    listing, transaction = load(LISTING, source="l.nft"), load(TRANSACTION, source="t.nft")
    assert listing.format == "nft-list" and transaction.format == "nft-transaction"
    assert listing == transaction
    assert load(save(listing)) == listing == load(save(transaction))


def test_structure_lines_and_base_chains() -> None:
    r = load(LISTING, source="l.nft")
    t = r.table("ip", "kube-proxy")
    assert t is not None and t.comment == "rules for kube-proxy" and t.line == 1
    pre = t.chain("filter-prerouting-pre-dnat")
    assert pre.base == BaseChain("filter", "prerouting", -110, "accept")
    assert t.chain("nat-output").base.priority == -100
    assert t.chain("services").base is None and t.chain("services").rules[0].line == 38
    assert t.chain("reject-chain").comment.startswith("helper for")
    s = t.set("service-ips")
    assert s.is_vmap and s.key_type == ("ipv4_addr", "inet_proto", "inet_service")
    assert Element(("172.30.0.44", "tcp", 80), Verdict("goto", "reject-chain"), comment="ns4/svc4:p80") in s.elements
    affinity = t.set("affinity-X")
    assert affinity.flags == ("dynamic", "timeout") and affinity.timeout_ms == 3 * 3600 * 1000
    assert affinity.size == 65535
    assert r.families == ("ipv4",)
    assert r.line_text(38) == "ip daddr . meta l4proto . th dport vmap @service-ips"
    assert r.source == "l.nft" and r.rule_count == 11


def test_a_chain_option_word_followed_by_a_tab_is_still_the_option() -> None:
    # nft reads any blank after `type`/`policy`; a tab there once made the declaration a rule of its own (found by
    # tests/test_nft_properties.py's mutations).
    text = LISTING.replace("type nat hook output", "type\t nat hook output")
    assert text != LISTING
    t = load(text, source="l.nft").table("ip", "kube-proxy")
    assert t.chain("nat-output").base == load(LISTING).table("ip", "kube-proxy").chain("nat-output").base
    assert t.chain("nat-output").base is not None
    assert [r.text for r in t.chain("nat-output").rules] == ["jump services"]


def test_kube_proxy_rules_read_into_items() -> None:
    t = load(LISTING).table("ip", "kube-proxy")
    svc = t.chain("service-ULMVA6XW-ns1/svc1/tcp/p80").rules
    assert svc[0].items == (Match(Payload("ip", "daddr"), "==", "172.30.0.41"),
                            Match(Payload("ip", "saddr"), "!=", Prefix("10.0.0.0", 8)),
                            Verdict("jump", "mark-for-masquerade"))
    ep = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    assert svc[1].items == (Match(Payload("ip", "saddr"), "==", SetRef("affinity-X")), Verdict("goto", ep))
    assert svc[2].items == (VerdictMap(Numgen("random", 1), AnonSet((Element(0, Verdict("goto", ep)),))),)
    endpoint = t.chain(ep).rules
    assert endpoint[1].items == (SetUpdate("update", "affinity-X", Payload("ip", "saddr")),)
    assert endpoint[2].items == (Match(Meta("l4proto"), "==", "tcp"), Nat("dnat", addr="10.180.0.1", port=80))
    assert t.chain("services").rules[0].items == (VerdictMap(
        Concat((Payload("ip", "daddr"), Meta("l4proto"), Payload("th", "dport"))), SetRef("service-ips")),)
    assert t.chain("filter-prerouting-pre-dnat").rules[0].items == (Match(Ct("state"), "in", "new"),
                                                                   Verdict("jump", "firewall-check"))
    assert t.chain("mark-for-masquerade").rules[0].items == (Mangle(Meta("mark"), Binop("|", Meta("mark"), 0x4000)),)


@pytest.mark.parametrize(("body", "expected"), [
    ("ct state established,related accept", (Match(Ct("state"), "in", Flags(("established", "related"))),
                                             Verdict("accept"))),
    ("ct state { established, related } accept",
     (Match(Ct("state"), "==", AnonSet((Element("established"), Element("related")))), Verdict("accept"))),
    ("ct state == new accept", (Match(Ct("state"), "==", "new"), Verdict("accept"))),
    ("ip saddr . tcp dport { 1.2.3.4 . 22, 5.6.7.8 . 80 } accept",
     (Match(Concat((Payload("ip", "saddr"), Payload("tcp", "dport"))), "==",
            AnonSet((Element(("1.2.3.4", 22)), Element(("5.6.7.8", 80))))), Verdict("accept"))),
    ("tcp dport 1000-2000 drop", (Match(Payload("tcp", "dport"), "==", Range(1000, 2000)), Verdict("drop"))),
    ("iifname \"eth0\" oifname != \"lo*\" accept",
     (Match(Meta("iifname"), "==", "eth0"), Match(Meta("oifname"), "!=", "lo*"), Verdict("accept"))),
    ("fib saddr . iif oif missing drop", (Match(Fib(("saddr", "iif"), "oif"), "==", "missing"), Verdict("drop"))),
    ("meta random & 2147483647 < 1073741824 jump x",
     (Match(Binop("&", Meta("random"), 2147483647), "<", 1073741824), Verdict("jump", "x"))),
    ("ct original ip saddr 1.2.3.4 accept", (Match(Ct("saddr", "original", "ip"), "==", "1.2.3.4"),
                                             Verdict("accept"))),
    ("meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.2 . 8080 }",
     (Match(Meta("l4proto"), "==", "tcp"), Nat("dnat", "ip", addr=MapLookup(Numgen("random", 2), AnonSet((
         Element(0, ("10.0.0.1", 80)), Element(1, ("10.0.0.2", 8080)))))))),
    ("masquerade fully-random", (Nat("masquerade", flags=("fully-random",)),)),
    ("masquerade random,persistent", (Nat("masquerade", flags=("persistent", "random")),)),
    ("tcp dport 1 redirect to :8080", (Match(Payload("tcp", "dport"), "==", 1), Nat("redirect", port=8080))),
    ("snat to 1.2.3.4-1.2.3.10", (Nat("snat", addr=Range("1.2.3.4", "1.2.3.10")),)),
    ("reject with icmp type host-unreachable", (Reject("icmp", "host-unreachable"),)),
    ("ip daddr 10.0.0.1 counter packets 3 bytes 180 accept comment \"x\"",
     (Match(Payload("ip", "daddr"), "==", "10.0.0.1"), Counter(None, 3, 180), Verdict("accept"))),
    ("log prefix \"drop: \" level info", (Statement("log", ("prefix", '"drop: "', "level", "info")),)),
    ("ether saddr 00:11:22:33:44:55 drop", (Match(Payload("ether", "saddr"), "==", "00:11:22:33:44:55"),
                                            Verdict("drop"))),
    ("ip6 daddr fd00:0:0::1 drop", (Match(Payload("ip6", "daddr"), "==", "fd00::1"), Verdict("drop"))),
    ("xt match \"conntrack\" counter jump x", (Xt("match", "conntrack"), Counter(), Verdict("jump", "x"))),
])
def test_rule_forms(body: str, expected: tuple) -> None:
    assert items(body, "inet") == expected


@pytest.mark.parametrize(("written", "listed"), [
    # the corpus README's table: what kube-proxy writes and what the kernel lists back
    ("mark set mark or 0x4000", "meta mark set meta mark | 0x00004000"),
    ("mark and 0x4000 == 0 return", "meta mark & 0x00004000 == 0x00000000 return"),
    ("ip daddr { 172.30.0.0/16 } drop", "ip daddr 172.30.0.0/16 drop"),
    ("ip saddr != { 203.0.113.0/25 } drop", "ip saddr != 203.0.113.0/25 drop"),
    # and what this machine's nft 1.0.6 rewrote when it loaded them
    ("ip saddr 010.1.1.1 accept", "ip saddr 8.1.1.1 accept"),
    ("ip daddr 10.1.2.3/8 accept", "ip daddr 10.0.0.0/8 accept"),
    ("tcp dport ssh accept", "tcp dport 22 accept"),
    ("meta l4proto 6 drop", "meta l4proto tcp drop"),
    ("meta iifname \"eth1\" accept", "iifname \"eth1\" accept"),
    ("mark set 0x5", "meta mark set 0x00000005"),
    ("mark 0x10 accept", "meta mark 0x00000010 accept"),
    ("reject with icmp type host-unreachable", "reject with icmp host-unreachable"),
    ("reject with icmp type port-unreachable", "reject"),
    ("meta l4proto tcp reject with tcp reset", "reject with tcp reset"),
    ("ip protocol tcp reject with tcp reset", "reject with tcp reset"),
    ("meta l4proto tcp ip daddr 10.0.0.1 tcp dport 80 accept", "ip daddr 10.0.0.1 tcp dport 80 accept"),
    ("limit rate 10/second burst 5 packets accept", "limit rate 10/second accept"),
    ("log prefix \"x y\" level warn", "log prefix \"x y\""),
    ("tcp flags & (syn|ack) == syn drop", "tcp flags syn / syn,ack drop"),
    ("ct state new,invalid drop", "ct state invalid,new drop"),
    ("counter accept", "counter packets 10 bytes 100 accept"),
    ("dnat ip to 1.2.3.4", "dnat to 1.2.3.4"),
    ("meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.2 . 8080 }",
     "meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.2 . 8080 }"),
])
def test_the_kernels_rewrites_read_alike(written: str, listed: str) -> None:
    assert items(written) == items(listed)
    assert one_rule(written).text == written  # the text is kept as written (evidence)


def test_unknown_expressions_are_kept_not_dropped() -> None:
    got = items("sctp chunk data exists accept")
    assert got == (Unknown("sctp chunk data exists"), Verdict("accept"))
    assert items("ip foo 3 drop") == (Unknown("ip foo 3"), Verdict("drop"))
    assert items("# xt_conntrack counter packets 0 bytes 0 jump x") == (Xt("", "conntrack"), Counter(),
                                                                         Verdict("jump", "x"))


def test_digit_keywords_never_read_as_another_shape() -> None:
    # `ip6 saddr`, `l4proto` hold digits like values do; rules of one shape must not borrow them
    text = ("table inet t {\n\tchain c {\n\t\tip6 saddr ::1 accept\n\t\tip6 saddr ::2 accept\n"
            "\t\tmeta l4proto tcp accept\n\t\tct l3proto ipv4 accept\n\t}\n}\n")
    rules = load(text).tables[0].chain("c").rules
    assert [r.items[0].left for r in rules] == [Payload("ip6", "saddr")] * 2 + [Meta("l4proto"), Ct("l3proto")]


_SET_LISTING = "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1, 10.0.0.2 }\n\t}\n}\n"


@pytest.mark.parametrize("text", [
    _SET_LISTING.replace("elements = {", "elements\t=\t{"),
    "add table ip t\nadd set ip t s { type ipv4_addr ; elements = { 10.0.0.1, 10.0.0.2 } ; }\n",
    "add table ip t\nadd set ip t s { type ipv4_addr ; elements\t=\t{ 10.0.0.1,\t10.0.0.2 } ; }\n",
])
def test_elements_with_tabs_or_in_a_transactions_set_declaration_are_read(text: str) -> None:
    # nft loads all of these; their elements were once dropped without a word.
    elements = load(_SET_LISTING).table("ip", "t").set("s").elements
    assert len(elements) == 2
    assert load(text, source="s.nft").table("ip", "t").set("s").elements == elements


def test_hand_written_nft_file_with_several_statements_a_line() -> None:
    text = ('table inet filter { flags dormant; chain input { type filter hook input priority filter + 5; '
            'policy drop; ct state established,related accept; iifname "lo" accept; } }\n'
            "table bridge br {\n  chain pre { type filter hook prerouting priority filter + 5; }\n}\n"
            'table netdev nd {\n  chain ing {\n    type filter hook ingress device "lo" priority -500; policy accept;\n'
            "    ip saddr {\n      1.2.3.4,\n      5.6.7.8\n    } drop\n  }\n}\n")
    r = load(text)
    inet, bridge, netdev = r.tables
    assert inet.flags == ("dormant",) and inet.chain("input").base == BaseChain("filter", "input", 5, "drop")
    assert len(inet.chain("input").rules) == 2
    assert bridge.chain("pre").base.priority == -195  # bridge's filter priority is -200
    ing = netdev.chain("ing")
    assert ing.base == BaseChain("filter", "ingress", -500, "accept", ("lo",))
    assert ing.rules[0].items[0].right == AnonSet((Element("1.2.3.4"), Element("5.6.7.8")))
    assert ing.rules[0].line == 8
    assert r.families == ("ipv4", "ipv6")
    assert load(save(r)) == r


def test_transaction_commands_apply_in_order() -> None:
    text = """\
add table ip t
add chain ip t c
add set ip t s { type ipv4_addr ; flags interval ; }
add rule ip t c ip saddr 1.1.1.1 drop
add rule ip t c ip saddr 2.2.2.2 drop
flush chain ip t c
add rule ip t c ip saddr 3.3.3.3 drop
insert rule ip t c ip saddr 4.4.4.4 accept
add element ip t s { 10.0.0.0/8, 192.168.1.1-192.168.1.20, 1.2.3.4 }
delete element ip t s { 1.2.3.4 }
create chain ip t d
delete chain ip t d
add chain ip t e
flush set ip t s
add element ip t s { 172.16.0.0/12 }
"""
    t = load(text).table("ip", "t")
    assert [r.text for r in t.chain("c").rules] == ["ip saddr 4.4.4.4 accept", "ip saddr 3.3.3.3 drop"]
    assert t.chain("d") is None and t.chain("e") is not None
    assert t.set("s").elements == (Element(Prefix("172.16.0.0", 12)),)


def test_handles_from_nft_a_and_rule_commands_that_use_them() -> None:
    listing = ("table ip t { # handle 4\n\tchain c { # handle 1\n\t\tip saddr 1.1.1.1 drop # handle 2\n"
               "\t\tip saddr 2.2.2.2 drop # handle 3\n\t}\n}\n")
    r = load(listing)
    c = r.tables[0].chain("c")
    assert r.tables[0].handle == 4 and c.handle == 1 and [x.handle for x in c.rules] == [2, 3]
    more = listing + ("replace rule ip t c handle 3 ip saddr 3.3.3.3 drop\n"
                      "add rule ip t c position 2 ip saddr 9.9.9.9 accept\n"
                      "delete rule ip t c handle 2\n")
    assert [x.text for x in load(more).tables[0].chain("c").rules] == ["ip saddr 9.9.9.9 accept",
                                                                       "ip saddr 3.3.3.3 drop"]


def test_sets_rules_update_are_dynamic_as_nft_makes_them() -> None:
    text = ("add table ip t\nadd set ip t a { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }\n"
            "add set ip t b { type ipv4_addr ; timeout 60s ; }\nadd chain ip t c\n"
            "add rule ip t c update @a { ip saddr }\n")
    t = load(text).tables[0]
    assert (t.set("a").flags, t.set("a").size) == (("dynamic", "timeout"), 65535)
    assert (t.set("b").flags, t.set("b").size) == (("timeout",), None)


def test_json_reads_into_the_same_model_with_handles() -> None:
    doc = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "ip", "name": "t", "handle": 1}},
        {"map": {"family": "ip", "name": "m", "table": "t", "type": ["ipv4_addr", "inet_service"],
                 "map": "verdict", "handle": 2,
                 "elem": [[{"concat": ["10.0.0.1", 80]}, {"goto": {"target": "x"}}]]}},
        {"chain": {"family": "ip", "table": "t", "name": "x", "handle": 3}},
        {"chain": {"family": "ip", "table": "t", "name": "c", "handle": 4, "type": "nat", "hook": "prerouting",
                   "prio": -100, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 5, "comment": "hi", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
            {"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                                         {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@m"}},
        ]}},
        {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 6, "expr": [
            {"osf": {"key": "name"}}, {"mangle": {"key": {"meta": {"key": "mark"}},
                                                  "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}]}},
    ]}
    r = load(json.dumps(doc), source="r.json")
    assert r.format == "nft-json" and r.line_text(1) is None
    c = r.tables[0].chain("c")
    assert c.handle == 4 and c.line is None and c.base.priority == -100
    assert c.rules[0].handle == 5 and c.rules[0].comment == "hi"
    text = ("table ip t {\n\tmap m {\n\t\ttype ipv4_addr . inet_service : verdict\n\t\telements = { 10.0.0.1 . 80 : "
            "goto x }\n\t}\n\tchain x {\n\t}\n\tchain c {\n\t\ttype nat hook prerouting priority dstnat; policy accept;"
            "\n\t\tct state new ip daddr . th dport vmap @m comment \"hi\"\n\t}\n}\n")
    assert c.rules[0] == load(text).tables[0].chain("c").rules[0]
    second = c.rules[1]
    assert second.items[0] == Unknown('{"osf":{"key":"name"}}', "json")
    assert second.items[1] == Mangle(Meta("mark"), Binop("|", Meta("mark"), 16384))
    assert second.text == '{"osf":{"key":"name"}} meta mark set meta mark | 0x00004000'
    with pytest.raises(UnwritableError, match="cannot write this expression of nft's JSON output"):
        save(r)


@pytest.mark.parametrize(("text", "expected"), [
    ("table ip t {\n\tchain c {\n\t\tip saddr 1.2.3.4 comment \"abc\n\t}\n}\n",
     "x.nft:3:28: unterminated quoted string; expected a closing '\"' before the end of the line"),
    ("table ip t {\n\tchain c {\n\t\tip saddr 1.2.3.4 accept\n\t\tip saddr 1.2.3.400 accept\n\t}\n}\n",
     "x.nft:4:12: '1.2.3.400' is not an IPv4 address; the rule cannot be read"),
    ("table ip t {\n\tip saddr 1.2.3.4 accept\n}\n",
     'x.nft:2:2: unexpected \'ip\'; expected "chain", "counter", "ct", "flags", "flowtable", "limit", "map", '
     '"quota", "secmark", "set", "synproxy" or "comment"'),
    ("hello world\n",
     'x.nft:1:1: unexpected \'hello\'; expected "add", "create", "delete", "destroy", "flush", "insert", '
     '"replace" or "table"'),
    ("table ip t {\n\tchain c {\n\t\tip saddr 1.2.3.4 accept\n",
     "x.nft:4:1: chain c opened at line 2 is not closed (the listing looks truncated); expected '}'"),
    ("table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 1.2.3.4,\n\t\t\t     1.2.3.999 }\n\t}\n}\n",
     "x.nft:5:9: '1.2.3.999' is not an IPv4 address; expected an element of type ipv4_addr"),
    # (a rule written over several lines: the value's own line and column)
    ("table ip t {\n\tchain c {\n\t\tip saddr {\n\t\t\t1.2.3.4,\n\t\t\t5.6.7.x\n\t\t} drop\n\t}\n}\n",
     "x.nft:5:4: '5.6.7.x' is not an IPv4 address; the rule cannot be read"),
    ('{"nftables": [ {"table": }', "x.nft:1:26: not valid JSON: Expecting value; expected the output of "
                                   "`nft -j list ruleset`"),
    ('{"nftables": [ {"table": {"name": "kube-pro', "x.nft:1:35: not valid JSON: a string starts here and never "
     "ends; expected the output of `nft -j list ruleset` (the file ends in the middle of the document: it looks "
     "truncated)"),
    ('{"nftables": [ {"table": {"name": "kube-proxy"}},\n', "x.nft:2:1: not valid JSON: Expecting value; expected "
     "the output of `nft -j list ruleset` (the file ends in the middle of the document: it looks truncated)"),
    ("", "x.nft:1:1: no nftables table found; expected `nft list ruleset` output (table ip kube-proxy { … }) or "
         "kube-proxy's transaction text (add table ip kube-proxy …)"),
])
def test_syntax_errors_name_file_line_column_and_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(ParseError) as info:
        load(text, source="x.nft")
    assert str(info.value) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("table ip t {\n\tchain c {\n\t\tjump nowhere\n\t}\n}\n",
     "x.nft:3:8: rule jumps to chain 'nowhere', which table ip t does not declare; expected a chain of that name"),
    ("table ip t {\n\tchain c {\n\t\tip saddr @nope accept\n\t}\n}\n",
     "x.nft:3:13: rule refers to set 'nope', which table ip t does not declare; expected a set or map of that name"),
    ("table ip t {\n\tchain c {\n\t}\n\tchain c {\n\t}\n}\n",
     "x.nft:4:2: chain 'c' declared twice in table ip t (first at line 2)"),
    ("add table ip t\nadd rule ip t c accept\n",
     "x.nft:2:1: rule for chain 'c', which table ip t does not declare; expected an 'add chain ip t c' line"),
    ("add table ip t\nadd element ip t s { 1.2.3.4 }\n",
     "x.nft:2:1: element for set 's', which table ip t does not declare; expected an 'add set' or 'add map' "
     "line for it"),
    ("add table ip t\nadd map ip t m { type ipv4_addr : verdict ; }\nadd element ip t m { 1.2.3.4 : goto z }\n",
     "x.nft:3:37: element of map 'm' jumps to chain 'z', which table ip t does not declare; expected a chain of "
     "that name"),
    ("table ip t {\n\tchain c {\n\t\ttype nat hook output priority dstnat; policy accept;\n\t}\n}\n",
     "x.nft:3:33: priority 'dstnat' is not valid on hook output of family ip; expected a number or raw, "
     "mangle, filter, security"),
    ("}\n", "x.nft:1:1: '}' closes nothing; expected a table, chain, set or map block before it"),
])
def test_semantic_errors_name_their_line(text: str, expected: str) -> None:
    with pytest.raises(DumpSemanticError) as info:
        load(text, source="x.nft")
    assert str(info.value) == expected


def test_lenient_reads_what_it_can_and_lists_what_it_skipped() -> None:
    text = ("table ip t {\n\tchain c {\n\t\tip saddr 1.2.3.4 accept\n\t\tjump nowhere\n\t\tip saddr 1.2.3.999 drop\n"
            "\t\tip daddr 10.0.0.1 drop\n\t}\n}\n")
    r = load(text, source="x.nft", lenient=True)
    assert [x.text for x in r.tables[0].chain("c").rules] == ["ip saddr 1.2.3.4 accept", "ip daddr 10.0.0.1 drop"]
    assert [(w.line, w.message.split(";")[0]) for w in r.skipped] == [
        (5, "'1.2.3.999' is not an IPv4 address"),
        (4, "rule jumps to chain 'nowhere', which table ip t does not declare")]


def test_arbitrary_garbage_raises_only_iptrace_errors() -> None:
    for text in ("{", "[1, 2]", '{"nftables": 3}', "table", "table ip", "table ip t {", "add", "add rule",
                 "chain x {\n}", "\x00\x01", "table ip t {\n\tset s {\n\t\telements = { 1 }\n\t}\n}\n"):
        with pytest.raises(IptraceError):
            load(text)


_JSON_MAP = {"map": {"family": "ip", "name": "m", "table": "t", "type": ["ipv4_addr", "inet_service"],
                     "map": "verdict", "elem": [[{"concat": ["10.0.0.1", 80]}, {"goto": {"target": "x"}}]]}}
_JSON_DRAW = {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [{"vmap": {
    "key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
    "data": {"set": [[0, {"goto": {"target": "x"}}], [1, {"goto": {"target": "x"}}]]}}}]}}


@pytest.mark.parametrize(("where", "value"), [
    ((4, "rule", "expr", 0, "vmap", "key", "numgen", "offset"), None),
    ((4, "rule", "expr", 0, "vmap", "key", "numgen", "offset"), "1"),
    ((4, "rule", "expr", 0, "vmap", "data", "set", 0, 1, "goto", "target"), ""),
    ((4, "rule", "expr", 0, "vmap", "data", "set", 0, 1, "goto", "target"), 7),
    ((5, "map", "elem", 0, 1), None),
    ((5, "map", "elem", 0, 1, "goto", "target"), ""),
    ((5, "map", "name"), None),
    ((1, "chain", "name"), 3),
    ((0, "table", "name"), ""),
    ((3, "rule", "chain"), ["c"]),
    ((3, "rule", "expr", 0), {"dnat": {"addr": "10.0.0.9", "port": True}}),
    ((5, "map", "elem", 0, 0), {"elem": {"val": {"concat": ["10.0.0.1", 80]}, "comment": ["x"]}}),
    ((5, "map", "elem", 0, 0), {"elem": {"val": {"concat": ["10.0.0.1", 80]}, "timeout": "1s"}}),
])
def test_json_with_a_value_of_the_wrong_type_is_read_as_nft_json_never_crashes(where: tuple[Any, ...],
                                                                               value: Any) -> None:
    # (found by mutating the samples' JSON: each once reached the analysis and failed there)
    doc: dict[str, Any] = {"nftables": [
        {"table": {"family": "ip", "name": "t"}},
        {"chain": {"family": "ip", "table": "t", "name": "x"}},
        {"chain": {"family": "ip", "table": "t", "name": "c", "type": "nat", "hook": "prerouting", "prio": -100,
                   "policy": "accept"}},
        copy.deepcopy(_JSON_DRAW), copy.deepcopy(_JSON_MAP)]}
    doc["nftables"].insert(3, {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [{"vmap": {
        "key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                           {"payload": {"protocol": "tcp", "field": "dport"}}]}, "data": "@m"}}]}})
    parent: Any = doc["nftables"]
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    for args in (["services", "-"], ["trace", "-", "--dst", "10.0.0.1:80", "--dst", "10.0.0.2:80"]):
        result = CliRunner().invoke(main, args, input=json.dumps(doc))
        assert result.exit_code in (0, 1) and "internal error" not in result.output, result.output


def test_detect_format_tells_the_inputs_apart() -> None:
    assert detect_format(LISTING) == "nft-list"
    assert detect_format(TRANSACTION) == "nft-transaction"
    assert detect_format('{"nftables": []}') == "nft-json"
    assert detect_format("# Generated by iptables-save v1.8.9\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n") \
        == "iptables-save"
    assert detect_format("-P INPUT ACCEPT\n-A INPUT -j DROP\n") == "iptables -S"
    assert detect_format("# Warning: table ip filter is managed by iptables-nft, do not touch!\n" + LISTING) \
        == "nft-list"
    assert detect_format("hello\n") is None
    assert sniff(LISTING) and sniff(TRANSACTION) and not sniff("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
    assert iptables_sniff("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n") and not iptables_sniff(LISTING)


@pytest.mark.parametrize(("text", "said"), [("null\n", "null"), ("null", "null"), ("  true \n\n", "true"),
                                             ("42\n", "42"), ('"x"\n', '"x"')])
def test_a_json_value_that_is_no_document_is_said_so(tmp_path: pathlib.Path, text: str, said: str) -> None:
    """`null` (what `jq .x` prints of a document without `x`), saved as a dump, was read as iptables-save and
    refused as a bad rule (`unexpected 'null'; expected ":", a command …`): it is JSON, and the error says which
    value it is. A line `null` before iptables-save output is still prose before a paste."""
    dump = tmp_path / "x.json"
    dump.write_text(text)
    for command in (["parse"], ["services"], ["trace", "--dst", "10.96.0.1:443"]):
        result = CliRunner().invoke(main, [*command, str(dump)])
        assert result.exit_code == 1, result.output
        assert result.stderr == (f"Error: {dump}:1:1: the JSON value {said}, not a ruleset; expected the output "
                                 "of `nft -j list ruleset`\n"), result.stderr
    prose = tmp_path / "prose.txt"
    prose.write_text("null\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    assert "expected \":\", a command" in CliRunner().invoke(main, ["parse", str(prose)]).stderr


def test_rules_build_their_items_on_first_use_and_compare_by_meaning() -> None:
    a = load(LISTING).table("ip", "kube-proxy").chain("services").rules[0]
    b = load(TRANSACTION).table("ip", "kube-proxy").chain("services").rules[0]
    assert a.line != b.line and a == b and hash(a) == hash(b)
    assert "vmap" in repr(a) and a.handle is None


def test_rules_of_a_listing_read_their_text_from_its_lines() -> None:
    # The listing's rules keep no text of their own (source.SourceText): each reads its line, stripped, and a
    # CRLF listing reads alike.
    for text in (LISTING, LISTING.replace("\n", "\r\n")):
        r = load(text)
        lines = text.split("\n")
        for _table, _chain, rule in r.rules():
            assert rule.text == lines[rule.line - 1].strip()
        assert r.line_text(len(lines)) == lines[-1] and r.line_text(len(lines) + 1) is None
        assert r.line_text(0) is None


@pytest.mark.parametrize("text", ["[]", "[\n]\n", '{"nftables": []}', "[{}]"])
def test_json_with_no_nftables_objects_is_said_so(text: str) -> None:
    # (an empty list was read as iptables-save's counters and refused at '[]', or as an empty ruleset)
    assert detect_format(text) == "nft-json"
    with pytest.raises(ParseError, match=r'^x\.json:1:1: JSON with no nftables objects \(no "metainfo", no table\)'):
        load(text, source="x.json")
    # Near-miss: nft's own listing of an empty ruleset (its metainfo alone) is an empty ruleset.
    assert load('{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}').tables == ()
