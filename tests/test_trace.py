"""The trace engine's semantics, one netfilter behaviour per test, on small hand-written dumps."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from iptrace.dataplane import Packet, trace_to_json
from iptrace.errors import InputError, TraceError
from iptrace.iptables import load
from iptrace.iptables.matchers import kernel_probability
from iptrace.iptables.model import Ruleset
from iptrace.iptables.sources import endpoint_ips, infer_node_ips, infer_pod_cidrs
from iptrace.iptables.walk import Tracer, trace
from iptrace.kube import sources

NODE = "192.168.0.2"
POD = "10.244.1.5"
EXTERNAL = "203.0.113.1"


def dump(nat: str = "", filter_: str = "", *, mangle: str = "", raw: str = "", forward_policy: str = "ACCEPT",
         chains: str = "") -> str:
    """A full dump with every built-in chain declared; `chains` declares extra user chains (nat+filter)."""
    declared = "".join(f":{c} - [0:0]\n" for c in chains.split())
    return (
        f"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{raw}COMMIT\n"
        f"*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        f":POSTROUTING ACCEPT [0:0]\n{mangle}COMMIT\n"
        f"*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        f"{declared}{nat}COMMIT\n"
        f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {forward_policy} [0:0]\n:OUTPUT ACCEPT [0:0]\n{declared}"
        f"{filter_}COMMIT\n"
    )


SERVICE = dump(
    nat=(
        "-A PREROUTING -j SVCS\n-A OUTPUT -j SVCS\n-A POSTROUTING -j POST\n"
        "-A SVCS -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SVC\n"
        "-A SVC -d 10.96.0.10/32 ! -s 10.244.0.0/16 -p tcp -m tcp --dport 80 -j MASQMARK\n"
        "-A SVC -m comment --comment \"ns1/web:http -> 10.244.1.7:8080\" -m statistic --mode random "
        "--probability 0.33333333349 -j SEP1\n"
        "-A SVC -m statistic --mode random --probability 0.50000000000 -j SEP2\n"
        "-A SVC -j SEP3\n"
        "-A SEP1 -s 10.244.1.7/32 -j MASQMARK\n"
        "-A SEP1 -p tcp -m comment --comment ns1/web:http -m tcp -j DNAT --to-destination 10.244.1.7:8080\n"
        "-A SEP2 -p tcp -m tcp -j DNAT --to-destination 10.244.2.7:8080\n"
        "-A SEP3 -p tcp -m tcp -j DNAT --to-destination 10.244.3.7:8080\n"
        "-A MASQMARK -j MARK --set-xmark 0x4000/0x4000\n"
        "-A POST -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
        "-A POST -j MARK --set-xmark 0x4000/0x0\n"
        "-A POST -j MASQUERADE\n"
    ),
    chains="SVCS SVC SEP1 SEP2 SEP3 MASQMARK POST",
)


def t(text: str, src: str, dst: str, dport: int, proto: str = "tcp", **kwargs: object):
    return trace(load(text), Packet(src, dst, dport, proto), node_ips=kwargs.pop("node_ips", [NODE]),
                 **kwargs)  # type: ignore[arg-type]


def show(tr) -> str:
    lines = []
    for o in tr.outcomes:
        lines.append(f"{o.verdict} {o.destination} p={o.probability} masq={o.masquerade} by={o.decided_by}")
        lines.extend(f"    {s.table} {s.line}: {s.rule}" for s in o.path)
    return "\n".join(lines)


def test_load_balancing_is_split_exactly_as_the_kernel_does() -> None:
    tr = t(SERVICE, POD, "10.96.0.10", 80)
    assert [o.destination for o in tr.outcomes] == ["10.244.1.7:8080", "10.244.2.7:8080", "10.244.3.7:8080"], show(tr)
    assert sum(o.exact_probability for o in tr.outcomes) == 1
    first = kernel_probability("0.33333333349")
    assert tr.outcomes[0].exact_probability == first
    assert tr.outcomes[1].exact_probability == (1 - first) / 2
    assert all(o.verdict == "DNAT" and not o.masquerade for o in tr.outcomes), show(tr)
    assert tr.outcomes[0].service == "ns1/web:http"
    assert tr.outcomes[0].decided_by is not None and tr.outcomes[0].decided_by.chain == "SEP1"


def test_kernel_probability_is_the_31_bit_threshold() -> None:
    assert kernel_probability("0.5") == Fraction(1, 2)
    assert kernel_probability("0.3333333333") == Fraction(round(0.3333333333 * 2**31), 2**31)
    assert kernel_probability("1.0") == 1


def test_masquerade_is_decided_by_the_mark_in_postrouting() -> None:
    tr = t(SERVICE, EXTERNAL, "10.96.0.10", 80)
    assert all(o.masquerade for o in tr.outcomes), show(tr)
    post = [s for s in tr.outcomes[0].path if s.chain == "POST"]
    assert [s.rule for s in post] == ["-A POST -j MARK --set-xmark 0x4000/0x0", "-A POST -j MASQUERADE"]


def test_hairpin_masquerades_only_the_branch_back_to_itself() -> None:
    tr = t(SERVICE, "10.244.1.7", "10.96.0.10", 80)
    assert [o.masquerade for o in tr.outcomes] == [True, False, False], show(tr)


def test_node_originated_packets_take_the_output_hook() -> None:
    tr = t(SERVICE, NODE, "10.96.0.10", 80)
    chains = {s.chain for s in tr.outcomes[0].path}
    assert "OUTPUT" in chains and "PREROUTING" not in chains, show(tr)
    assert all(o.masquerade for o in tr.outcomes)  # not from the pod CIDR


def test_json_shape_is_the_spec() -> None:
    tr = t(SERVICE, POD, "10.96.0.10", 80)
    doc = json.loads(json.dumps(trace_to_json(tr)))
    assert set(doc) == {"packet", "entry", "outcomes", "assumptions"}
    assert doc["packet"] == {"src": POD, "dst": "10.96.0.10", "dport": 80, "proto": "tcp"}
    assert doc["entry"] == "hooks"
    outcome = doc["outcomes"][0]
    assert set(outcome) == {"verdict", "destination", "probability", "masquerade", "service", "decided_by", "path"}
    assert set(outcome["decided_by"]) == {"table", "chain", "line"}
    assert set(outcome["path"][0]) == {"table", "chain", "line", "rule"}
    assert outcome["path"][0]["rule"] == "-A PREROUTING -j SVCS"
    assert doc["assumptions"][0].startswith("first packet of a new connection")


def test_lines_are_dump_lines() -> None:
    text = SERVICE
    lines = text.splitlines()
    for o in t(text, POD, "10.96.0.10", 80).outcomes:
        for step in o.path:
            assert lines[step.line - 1] == step.rule


def test_no_rule_matches_gives_the_filter_policy() -> None:
    tr = t(SERVICE, POD, "10.96.0.10", 8080)
    assert [(o.verdict, o.decided_by.to_json()) for o in tr.outcomes] == [  # type: ignore[union-attr]
        ("ACCEPT", {"policy": "ACCEPT", "table": "filter", "chain": "FORWARD"})]
    tr = t(dump(forward_policy="DROP"), POD, "10.96.0.10", 80)
    assert tr.outcomes[0].verdict == "DROP" and tr.outcomes[0].decided_by.policy == "DROP"  # type: ignore[union-attr]


def test_filter_drop_after_dnat_wins_and_reject_is_reported() -> None:
    text = dump(
        nat="-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.2.7:8080\n",
        filter_=("-A FORWARD -d 10.244.2.7/32 -p tcp -m tcp --dport 8080 -j REJECT --reject-with icmp-port-unreachable\n"))
    tr = t(text, EXTERNAL, "10.96.0.10", 80)
    assert [o.verdict for o in tr.outcomes] == ["REJECT"], show(tr)
    assert tr.outcomes[0].final_destination == "10.244.2.7:8080"


def test_routing_decision_uses_the_destination_after_dnat() -> None:
    text = dump(
        nat=f"-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination {NODE}:8080\n",
        filter_="-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n-A FORWARD -j DROP\n")
    tr = t(text, EXTERNAL, "10.96.0.10", 80)
    assert tr.outcomes[0].verdict == "DNAT" and ("filter", "INPUT") in tr.outcomes[0].chains, show(tr)
    assert ("filter", "FORWARD") not in tr.outcomes[0].chains


def test_node_to_itself_comes_back_through_input() -> None:
    text = dump(filter_="-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n-A INPUT -j DROP\n")
    tr = t(text, NODE, NODE, 22)
    assert [o.verdict for o in tr.outcomes] == ["ACCEPT"], show(tr)
    assert tr.outcomes[0].decided_by.chain == "INPUT"  # type: ignore[union-attr]
    assert [o.verdict for o in t(text, NODE, NODE, 23).outcomes] == ["DROP"]


def test_return_goto_and_loops() -> None:
    text = dump(
        nat=("-A PREROUTING -j A\n-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.9:1\n"
             "-A A -g B\n-A A -j DNAT --to-destination 10.0.0.1:1\n"
             "-A B -j RETURN\n"),
        chains="A B")
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    # -g B then RETURN in B returns to PREROUTING (A's caller), skipping A's DNAT.
    assert tr.outcomes[0].destination == "10.0.0.9:1", show(tr)
    loop = dump(nat="-A PREROUTING -j A\n-A A -j B\n-A B -p tcp -j A\n", chains="A B")
    with pytest.raises(TraceError, match="jump loop in table nat: A → B → A"):
        t(loop, EXTERNAL, "10.1.1.1", 80)


def test_unknown_targets_continue_with_an_assumption() -> None:
    text = dump(filter_="-A FORWARD -j LOG --log-prefix \"x \"\n-A FORWARD -j HMARK --hmark-tuple src\n"
                        "-A FORWARD -j DROP\n")
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    assert tr.outcomes[0].verdict == "DROP"
    assert any("HMARK is not modeled" in a for a in tr.assumptions)
    assert not any("LOG" in a for a in tr.assumptions)


def test_conntrack_state_of_a_first_packet() -> None:
    text = dump(
        nat="-A PREROUTING -p tcp -j DNAT --to-destination 10.244.2.7:8080\n",
        filter_=("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j DROP\n"
                 "-A FORWARD -m state --state INVALID -j DROP\n"
                 "-A FORWARD -m conntrack ! --ctstate DNAT -j DROP\n"
                 "-A FORWARD -m conntrack --ctstate NEW --ctorigdst 10.96.0.10 --ctreplsrc 10.244.2.7 "
                 "--ctorigdstport 80 -j ACCEPT\n"))
    tr = t(text, EXTERNAL, "10.96.0.10", 80)
    assert tr.outcomes[0].verdict == "DNAT", show(tr)
    assert tr.outcomes[0].path[-1].rule.endswith("--ctorigdstport 80 -j ACCEPT")


def test_recent_lists_start_empty_and_remember_within_the_trace() -> None:
    text = dump(
        nat=("-A PREROUTING -m recent --name AFF --rcheck --seconds 10800 --reap -j DNAT --to-destination 10.0.0.1:1\n"
             "-A PREROUTING -m recent --name AFF --set -j MARK --set-xmark 0x1/0x1\n"
             "-A PREROUTING -m recent --name AFF --rcheck -j DNAT --to-destination 10.0.0.2:2\n"))
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    assert tr.outcomes[0].destination == "10.0.0.2:2", show(tr)
    assert any("no entry in recent list 'AFF'" in a for a in tr.assumptions)


def test_ipset_membership_unknown_or_given() -> None:
    text = dump(filter_="-A FORWARD -m set --match-set blocked src -j DROP\n")
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    assert tr.outcomes[0].verdict == "ACCEPT"
    assert any("ipset 'blocked' membership unknown" in a and "`ipset list blocked`" in a for a in tr.assumptions)
    tracer = Tracer(load(text), node_ips=[NODE], ipsets={"blocked": ["203.0.113.0/24"]})
    assert tracer.trace(Packet(EXTERNAL, "10.1.1.1", 80)).outcomes[0].verdict == "DROP"


def test_interfaces_unknown_unless_given() -> None:
    text = dump(filter_="-A FORWARD -i eth+ -j DROP\n-A FORWARD ! -i cni0 -j REJECT\n")
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    assert tr.outcomes[0].verdict == "REJECT", show(tr)
    assert any("input interface unknown" in a for a in tr.assumptions)
    tr = t(text, EXTERNAL, "10.1.1.1", 80, in_interface="eth0")
    assert tr.outcomes[0].verdict == "DROP"
    assert not any("interface unknown" in a for a in tr.assumptions)


def test_addrtype_uses_node_addresses() -> None:
    text = dump(nat="-A PREROUTING -m addrtype --dst-type LOCAL -p tcp -j DNAT --to-destination 10.0.0.1:1\n")
    assert t(text, EXTERNAL, NODE, 80).outcomes[0].verdict == "DNAT"
    assert t(text, EXTERNAL, "10.9.9.9", 80).outcomes[0].verdict == "ACCEPT"
    tr = t(text, EXTERNAL, NODE, 80, node_ips=[])
    assert tr.outcomes[0].verdict == "ACCEPT"
    assert any("node addresses unknown" in a for a in tr.assumptions)


def test_addresses_ports_and_negation() -> None:
    text = dump(filter_=(
        "-A FORWARD -s 10.0.0.0/255.0.255.0 -j REJECT\n"
        "-A FORWARD -p udp -m multiport --dports 53,1000:2000 -j DROP\n"
        "-A FORWARD ! -d 10.1.0.0/16 -p tcp -m tcp --dport 8000:8100 -j DROP\n"))
    assert t(text, "10.7.0.3", "10.1.1.1", 80).outcomes[0].verdict == "REJECT"  # non-contiguous mask
    assert t(text, "10.7.1.3", "10.1.1.1", 1500, "udp").outcomes[0].verdict == "DROP"
    assert t(text, "10.7.1.3", "10.1.1.1", 2001, "udp").outcomes[0].verdict == "ACCEPT"
    assert t(text, EXTERNAL, "10.2.1.1", 8050).outcomes[0].verdict == "DROP"
    assert t(text, EXTERNAL, "10.1.1.1", 8050).outcomes[0].verdict == "ACCEPT"


def test_unmodeled_modules_do_not_match_and_say_so() -> None:
    text = dump(filter_="-A FORWARD -m physdev --physdev-is-bridged -j DROP\n"
                        "-A FORWARD -m owner ! --uid-owner 0 -j REJECT\n")
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    assert tr.outcomes[0].verdict == "REJECT", show(tr)
    assert sum("is not modeled" in a for a in tr.assumptions) == 2


def test_nth_is_a_branch_with_an_assumption() -> None:
    text = dump(nat="-A PREROUTING -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 10.0.0.1:1\n")
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    assert [o.exact_probability for o in tr.outcomes] == [Fraction(1, 3), Fraction(2, 3)]
    assert any("--mode nth" in a for a in tr.assumptions)


def test_marks_and_connmarks() -> None:
    text = dump(
        mangle=("-A PREROUTING -j MARK --set-xmark 0x10/0xff\n-A PREROUTING -j CONNMARK --save-mark "
                "--nfmask 0xffffffff --ctmask 0xffffffff\n-A PREROUTING -j MARK --and-mark 0x0\n"
                "-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xf0 --ctmask 0xf0\n"),
        filter_="-A FORWARD -m mark --mark 0x10/0xff -m connmark --mark 0x10 -j DROP\n")
    assert t(text, EXTERNAL, "10.1.1.1", 80).outcomes[0].verdict == "DROP"


def test_redirect_snat_and_notrack() -> None:
    text = dump(nat="-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128\n"
                    "-A POSTROUTING -s 10.244.0.0/16 -j SNAT --to-source 192.168.0.2\n")
    tr = t(text, EXTERNAL, "10.1.1.1", 80)
    assert tr.outcomes[0].destination == f"{NODE}:3128", show(tr)
    assert t(text, POD, "10.1.1.1", 81).outcomes[0].masquerade
    notrack = dump(raw="-A PREROUTING -j CT --notrack\n",
                   nat="-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:1\n",
                   filter_="-A FORWARD -m conntrack --ctstate UNTRACKED -j DROP\n")
    assert t(notrack, EXTERNAL, "10.1.1.1", 80).outcomes[0].verdict == "DROP"


def test_ipv6() -> None:
    text = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n"
        "-A PREROUTING -d fd00:96::10/128 -p tcp -m tcp --dport 80 -j SVC\n"
        "-A SVC -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination [fd00:244::7]:8080\n"
        "-A SVC -j DNAT --to-destination [fd00:244::8]:8080\n"
        "-A POSTROUTING ! -s fd00:244::/64 -j MASQUERADE\nCOMMIT\n")
    ruleset = load(text)
    assert ruleset.family == "ipv6"
    tr = trace(ruleset, Packet("2001:db8::1", "fd00:96::10", 80), node_ips=["fd00::2"])
    assert [(o.destination, o.probability, o.masquerade) for o in tr.outcomes] == [
        ("[fd00:244::7]:8080", 0.5, True), ("[fd00:244::8]:8080", 0.5, True)]
    with pytest.raises(InputError, match="IPv4 but the dump is IPv6"):
        trace(ruleset, Packet("10.0.0.1", "10.0.0.2", 80))


def test_fragment_entry_follows_the_spec() -> None:
    fragment = (
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"
        "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X\n"
        "-A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n"
        "-A KUBE-SVC-X -p tcp -j DNAT --to-destination 10.244.1.7:8080\n"
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\nCOMMIT\n"
        "*filter\n:KUBE-SERVICES - [0:0]\n"
        "-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REJECT\nCOMMIT\n")
    tr = t(fragment, EXTERNAL, "10.96.0.10", 80)
    assert tr.entry == "kube-proxy"
    assert (tr.outcomes[0].verdict, tr.outcomes[0].masquerade) == ("DNAT", True), show(tr)
    assert any("does not wire the built-in chains" in a for a in tr.assumptions)
    assert t(fragment, POD, "10.96.0.10", 80).outcomes[0].masquerade is False
    assert t(fragment, POD, "10.96.0.11", 80).outcomes[0].verdict == "REJECT"
    assert t(fragment, POD, "10.96.0.12", 80).outcomes[0].verdict == "CONTINUE"


def test_names_label_outcomes() -> None:
    tr = t(SERVICE, POD, "10.96.0.10", 80, names={"SVC": "ns1/web:http"})
    assert {o.service for o in tr.outcomes} == {"ns1/web:http"}


def test_packets_are_validated() -> None:
    with pytest.raises(InputError):
        Packet("10.0.0.1", "nonsense", 80)
    with pytest.raises(InputError):
        Packet("10.0.0.1", "10.0.0.2", 70000)
    with pytest.raises(InputError):
        Packet("10.0.0.1", "fd00::1", 80)
    assert Packet("[fd00::0001]", "fd00::2", 80, "UDP") == Packet("fd00::1", "fd00::2", 80, "udp")


def test_sources_from_a_kube_proxy_dump() -> None:
    text = (
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SVC-X - [0:0]\n:KUBE-EXT-X - [0:0]\n"
        ":KUBE-SEP-A - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"
        "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X\n"
        "-A KUBE-SERVICES -d 192.168.0.2/32 -j KUBE-NODEPORTS\n"
        "-A KUBE-SERVICES -d 127.0.0.1/32 -j KUBE-NODEPORTS\n"
        "-A KUBE-EXT-X -s 10.244.0.0/16 -j KUBE-SVC-X\n"
        "-A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n"
        "-A KUBE-SVC-X -j KUBE-SEP-A\n"
        "-A KUBE-SEP-A -s 10.244.0.2/32 -j KUBE-MARK-MASQ\n"
        "-A KUBE-SEP-A -p tcp -j DNAT --to-destination 10.244.0.2:80\n"
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\nCOMMIT\n")
    ruleset = load(text)

    def pick_source(kind: str, rs: Ruleset, pod_cidrs: list[str] | None = None) -> tuple[str, str]:
        return sources.pick_source(kind, rs.family, infer_node_ips(rs),
                                   infer_pod_cidrs(rs) if pod_cidrs is None else pod_cidrs, endpoint_ips(rs))

    assert infer_pod_cidrs(ruleset) == ["10.244.0.0/16"]
    assert infer_node_ips(ruleset) == ["192.168.0.2"]
    pod, note = pick_source("pod", ruleset)
    assert pod == "10.244.0.3" and "10.244.0.0/16" in note  # .2 is an endpoint
    assert pick_source("node", ruleset)[0] == "192.168.0.2"
    assert pick_source("external", ruleset)[0] == "203.0.113.1"
    assert pick_source("external", ruleset, pod_cidrs=["203.0.113.0/24"])[0] == "198.51.100.1"
    empty = load("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    assert pick_source("node", empty)[0] == "127.0.0.1"
    assert "no pod CIDR" in pick_source("pod", empty)[1]


def test_the_pod_client_is_in_the_nodes_own_pod_subnet() -> None:
    """flannel names this node's pod subnet in its nat rules (`-s 10.244.1.0/24 -d 10.244.0.0/16 -j RETURN`):
    the pod client is picked there, not in node 0's subnet of the cluster CIDR kube-proxy names, so a trace of a
    pod's packet sees flannel return it unmasqueraded as the kernel does for this node's pods. A dump that names
    no subnet, or several, keeps the cluster CIDR."""
    from pathlib import Path

    from iptrace.iptables.layout import read_layout

    flannel = load(Path("sample_dumps/flannel-and-kube-proxy.txt").read_text())
    layout = read_layout(flannel)
    assert layout.pod_cidrs == ("10.244.0.0/16",) and layout.node_pod_cidrs == ("10.244.1.0/24",)
    pod, note = sources.pick_source("pod", "ipv4", (), layout.pod_cidrs, layout.endpoint_ips, layout.node_pod_cidrs)
    assert pod == "10.244.1.2" and "this node's pod subnet 10.244.1.0/24" in note
    out = Tracer(flannel).trace(Packet(pod, "10.244.2.9", 80))  # to a pod on another node: not masqueraded
    assert [o.masquerade for o in out.outcomes] == [False]
    stranger = Tracer(flannel).trace(Packet("10.244.0.2", "10.244.2.9", 80))
    assert [o.masquerade for o in stranger.outcomes] == [True]
    two = load(Path("sample_dumps/flannel-and-kube-proxy.txt").read_text().replace(
        "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24", "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.7.0/24"))
    assert read_layout(two).node_pod_cidrs == ()
    assert read_layout(load(SERVICE)).node_pod_cidrs == ()


def test_tracer_is_reusable_and_deterministic() -> None:
    tracer = Tracer(load(SERVICE), node_ips=[NODE])
    a = tracer.trace(Packet(POD, "10.96.0.10", 80))
    b = tracer.trace(Packet(POD, "10.96.0.10", 80))
    assert trace_to_json(a) == trace_to_json(b)
    assert tracer.trace_many([Packet(POD, "10.96.0.10", 80)])[0] == a
