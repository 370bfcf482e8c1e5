"""Properties of every trace (hypothesis): probabilities sum to 1, every path step is a rule of the dump,
traces are deterministic, and the chain index never changes a result.

Dumps come from bench/synth.py (kube-proxy's own layouts, all eras, full dumps and restore fragments) and
from a generator of arbitrary long chains (CIDRs, negations, ports, jumps, RETURN) for the index.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench import synth
from iptrace.model.rules import Ruleset
from iptrace.parse import load
from iptrace.trace import Packet, Trace, Tracer, trace_to_json

NODE_IP = "192.168.0.10"
POD_CIDR = "10.244.0.0/16"


@lru_cache(maxsize=64)
def kube_dump(seed: int, n: int, endpoints: int, era: str, full: bool) -> tuple[Ruleset, tuple[str, ...], tuple]:
    """A synthesized kube-proxy dump, its text lines and every (address, port, protocol) it serves."""
    specs = synth.scale(n, endpoints, seed=seed)
    text = synth.render(specs, node_ips=[NODE_IP], pod_cidr=POD_CIDR, era=era, full_dump=full)
    targets = []
    for s in specs:
        for p in s.ports:
            proto = p.protocol.lower()
            for ip in (s.cluster_ip, *s.external_ips, *s.lb_ips):
                targets.append((ip, p.port, proto))
            if p.node_port:
                targets.append((NODE_IP, p.node_port, proto))
                targets.append(("127.0.0.1", p.node_port, proto))
        for e in s.endpoints[:1]:
            targets.append((e.ip, 8080, "tcp"))  # a pod address directly: no rule for it
    return load(text), tuple(text.splitlines()), tuple(targets)


def sources(seed: int) -> list[str]:
    return ["10.244.3.3", NODE_IP, "127.0.0.1", "203.0.113.1", "198.51.100.7", f"10.244.{seed % 200}.{seed % 250}"]


def check_trace(trace: Trace, ruleset: Ruleset, lines: tuple[str, ...]) -> None:
    total = sum(o.exact_probability for o in trace.outcomes)
    assert total == 1, trace
    assert abs(sum(o.probability for o in trace.outcomes) - 1) < 1e-9
    for o in trace.outcomes:
        assert o.verdict in ("DNAT", "ACCEPT", "DROP", "REJECT", "CONTINUE")
        assert (o.destination is not None) == (o.verdict == "DNAT")
        for step in o.path:
            chain = ruleset.chain(step.table, step.chain)
            assert chain is not None, step
            rule = next((r for r in chain.rules if r.line == step.line), None)
            assert rule is not None, step
            assert step.rule == f"-A {rule.chain} {rule.text}"
            # (iptables-nft-save writes `--nfacct-name  NAME` with two spaces; the model keeps tokens.)
            assert lines[step.line - 1].split() == step.rule.split()


kube_cases = st.tuples(
    st.integers(0, 10_000),                       # seed
    st.integers(20, 60),                          # services (KUBE-SERVICES long enough to be indexed)
    st.integers(0, 4),                            # endpoints per service
    st.sampled_from(synth.ERAS),
    st.booleans(),                                # full dump (hooks) or restore fragment
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=kube_cases, pick=st.integers(0, 10**6), src_pick=st.integers(0, 5))
def test_kube_proxy_dumps(case: tuple, pick: int, src_pick: int) -> None:
    seed, n, endpoints, era, full = case
    # kube-proxy's xlb-era restore text jumps to kubelet's KUBE-MARK-DROP, which only a full dump declares.
    assume(full or era != "xlb")
    ruleset, lines, targets = kube_dump(seed, n, endpoints, era, full)
    indexed = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR])
    plain = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR], use_index=False)
    for k in range(8):
        dst, port, proto = targets[(pick + k * 7919) % len(targets)]
        packet = Packet(sources(seed)[(src_pick + k) % 6], dst, port, proto)
        first = indexed.trace(packet)
        check_trace(first, ruleset, lines)
        assert trace_to_json(indexed.trace(packet)) == trace_to_json(first)  # deterministic
        again = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR]).trace(packet)
        assert again == first
        assert plain.trace(packet) == first, f"index changed the result for {packet}"


# ------------------------------------------------------------------------------ arbitrary long chains

ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.1.0.1", "192.168.0.10", "203.0.113.9"]
address = st.sampled_from(ADDRESSES)
cidr = st.sampled_from(["10.0.0.0/24", "10.0.0.0/8", "10.0.0.1/32", "10.0.0.0/255.255.0.255", "0.0.0.0/0"])
port = st.sampled_from([53, 80, 443, 8080])


@st.composite
def rule_text(draw: st.DrawFn, chain: str, subchains: list[str]) -> str:
    parts: list[str] = []
    if draw(st.booleans()):
        parts += [*(["!"] if draw(st.integers(0, 4)) == 0 else []), "-s", draw(st.one_of(address, cidr))]
    if draw(st.integers(0, 3)):
        neg = draw(st.integers(0, 5)) == 0
        parts += [*(["!"] if neg else []), "-d", draw(st.one_of(address, cidr))]
    proto = draw(st.sampled_from(["tcp", "udp", None]))
    if proto:
        parts += ["-p", proto]
        if draw(st.integers(0, 3)):
            value = draw(st.one_of(port.map(str), st.just("1000:9000")))
            parts += ["-m", proto, *(["!"] if draw(st.integers(0, 6)) == 0 else []), "--dport", value]
    if draw(st.integers(0, 6)) == 0:
        parts += ["-m", "addrtype", "--dst-type", "LOCAL"]
    if draw(st.integers(0, 5)) == 0:
        parts += ["-m", "statistic", "--mode", "random", "--probability", draw(st.sampled_from(["0.25", "0.5"]))]
    if draw(st.integers(0, 8)) == 0:
        parts += ["-m", "mark", "--mark", "0x1/0x1"]
    targets = ["ACCEPT", "DROP", "REJECT", "RETURN", "MARK --set-xmark 0x1/0x1", "LOG", *subchains]
    target = draw(st.sampled_from(targets))
    return f"-A {chain} {' '.join(parts)} -j {target}".replace("  ", " ")


@st.composite
def indexable_rule(draw: st.DrawFn, chain: str) -> str:
    """kube-proxy's KUBE-SERVICES shape: exact protocol and port, often an exact destination."""
    proto = draw(st.sampled_from(["tcp", "udp"]))
    dst = f"-d {draw(address)} " if draw(st.integers(0, 3)) else ""
    target = draw(st.sampled_from(["ACCEPT", "DROP", "REJECT", "RETURN", "SUB"]))
    return f"-A {chain} {dst}-p {proto} -m {proto} --dport {draw(port)} -j {target}"


@st.composite
def long_chain_dump(draw: st.DrawFn) -> str:
    general = draw(st.lists(rule_text("BIG", ["SUB"]), min_size=0, max_size=30))
    exact = draw(st.lists(indexable_rule("BIG"), min_size=len(general) + 16, max_size=len(general) + 60))
    main = draw(st.permutations(general + exact))
    sub = draw(st.lists(rule_text("SUB", []), min_size=0, max_size=5))
    dnat = "-A PREROUTING -p tcp -m tcp --dport 80 -m statistic --mode random --probability 0.5 " \
           "-j DNAT --to-destination 10.0.0.2:8080\n"
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" + dnat + "COMMIT\n"
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:BIG - [0:0]\n:SUB - [0:0]\n"
            "-A INPUT -j BIG\n-A FORWARD -j BIG\n-A OUTPUT -j BIG\n"
            + "\n".join(main + sub) + "\nCOMMIT\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=long_chain_dump(), packets=st.lists(
    st.tuples(address, st.one_of(address, st.sampled_from(["10.0.0.77", "127.0.0.1"])), port,
              st.sampled_from(["tcp", "udp"])), min_size=1, max_size=6))
def test_index_never_changes_a_result(text: str, packets: list) -> None:
    ruleset = load(text)
    lines = tuple(text.splitlines())
    indexed = Tracer(ruleset, node_ips=["192.168.0.10"])
    plain = Tracer(ruleset, node_ips=["192.168.0.10"], use_index=False)
    code = indexed._code("filter", "BIG")
    assert code is not None and code.index is not None
    for src, dst, dport, proto in packets:
        assume(ipaddress.ip_address(src) != ipaddress.ip_address(dst) or src != "127.0.0.1")
        packet = Packet(src, dst, dport, proto)
        a, b = indexed.trace(packet), plain.trace(packet)
        check_trace(a, ruleset, lines)
        assert a == b
        assert a.assumptions == b.assumptions
