"""Properties of every trace (hypothesis): probabilities sum to 1, every path step is a rule of the dump,
traces are deterministic, and the chain index never changes a result.

Dumps come from bench/synth.py (kube-proxy's own layouts, all eras, full dumps and restore fragments) and
from a generator of arbitrary long chains (CIDRs, negations, ports, jumps, RETURN) for the index.

The caches that only accelerate are checked the same way: the walk shared between branches after NAT
(memo.py; `share=False` turns it off), matches compiled once per rule structure and option values
(`bind_matches` against `compile_matches`), and the tokenizer's fast path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench import synth
from iptrace.dataplane import Packet, Trace, trace_to_json
from iptrace.iptables import load, walk
from iptrace.iptables.chainwalk import EAGER_AFTER
from iptrace.iptables.matchers import bind_matches, binder_for, compile_matches, fast_tokens, rule_structure
from iptrace.iptables.model import TOKEN_RE, Ruleset
from iptrace.iptables.state import Context, State
from iptrace.iptables.walk import Tracer

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


def assert_same(got: Trace, expected: Trace, message: str) -> None:
    """Equal traces, down to what equality leaves out (exact probabilities, per-branch assumptions in order)."""
    assert got == expected, message
    assert got.assumptions == expected.assumptions, message
    for a, b in zip(got.outcomes, expected.outcomes, strict=True):
        assert (a.exact_probability, a.assumptions, a.chains) == (b.exact_probability, b.assumptions, b.chains), message


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
    indexed._plan_stages_after = 1  # the stage memo from the first walk (a view plans after walk.PLAN_STAGES_AFTER)
    plain = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR], use_index=False, share=False)
    for k in range(8):
        dst, port, proto = targets[(pick + k * 7919) % len(targets)]
        packet = Packet(sources(seed)[(src_pick + k) % 6], dst, port, proto)
        first = indexed.trace(packet)
        check_trace(first, ruleset, lines)
        assert trace_to_json(indexed.trace(packet)) == trace_to_json(first)  # deterministic
        again = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR]).trace(packet)
        assert again == first
        assert_same(plain.trace(packet), first, f"index or shared walk changed the result for {packet}")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=kube_cases)
def test_every_service_swept_like_the_view(case: tuple) -> None:
    """The Service view's pattern: every way in of every Service, for several kinds of client, through one
    tracer — chains planned on their first entry (chainwalk.EAGER_AFTER) and closures of one shape replaying
    each other's recorded walks (chainmemo.py) — gives what a walk without any sharing gives."""
    seed, n, endpoints, era, full = case
    assume(full or era != "xlb")
    ruleset, _lines, targets = kube_dump(seed, n, endpoints, era, full)
    shared = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR])
    shared._reentries = EAGER_AFTER  # as after the first few dozen Services of a view
    shared._plan_stages_after = 1
    plain = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR], use_index=False, share=False)
    for dst, port, proto in targets[:60]:
        for src in ("203.0.113.1", "10.244.3.3", NODE_IP):
            packet = Packet(src, dst, port, proto)
            assert_same(shared.trace(packet), plain.trace(packet), f"shared walk changed the result for {packet}")
    assert any(shared._shape_memos.values()) or endpoints < 2  # (the sweep shared recorded walks)



@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(20, 40), endpoints=st.integers(1, 4),
       era=st.sampled_from(synth.ERAS), every=st.integers(1, 3))
def test_affinity_chains_walked_not_planned(seed: int, n: int, endpoints: int, era: str, every: int) -> None:
    """A closure with `-m recent` rules (ClientIP session affinity) is walked on every entry, not planned
    (chainwalk._chain_plan: its key would hold the addresses themselves); a view's sweep over Services with and
    without affinity gives what a walk without any sharing gives, and the others' closures are still shared."""
    specs = synth.scale(n, endpoints, seed=seed)
    for k, spec in enumerate(specs):
        spec.session_affinity_timeout = 10800 if k % every == 0 else None
    text = synth.render(specs, node_ips=[NODE_IP], pod_cidr=POD_CIDR, era=era, full_dump=True)
    ruleset = load(text)
    shared = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR])
    shared._reentries = EAGER_AFTER
    shared._plan_stages_after = 1
    plain = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR], use_index=False, share=False)
    for spec in specs:
        for p in spec.ports:
            ways = [(ip, p.port) for ip in (spec.cluster_ip, *spec.lb_ips)]
            if p.node_port:
                ways.append((NODE_IP, p.node_port))
            for dst, port in ways:
                for src in ("203.0.113.1", "10.244.3.3", NODE_IP):
                    packet = Packet(src, dst, port, p.protocol.lower())
                    assert_same(shared.trace(packet), plain.trace(packet), f"changed the result for {packet}")
    planned = {key: plan for key, plan in shared._chain_plans.items() if key[1].startswith("KUBE-SVC-")}
    assert planned
    for (table, name), plan in planned.items():
        chain = ruleset.chain(table, name)
        assert chain is not None
        if any("-m recent" in rule.text for rule in chain.rules):
            assert plan is None, name  # (walked on every entry)
        elif any("-m statistic" in rule.text for rule in chain.rules):
            assert plan is not None and plan is not True, name  # (a load-balancing closure: planned)
    if every > 1 and endpoints > 1:
        assert any(shared._shape_memos.values())  # (the Services without affinity shared recorded walks)

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=kube_cases, memo_size=st.integers(1, 3))
def test_stage_memo_kept_key_outlives_a_clearing(case: tuple, memo_size: int) -> None:
    """A stage sequence's walk found for one key is replayed for the next branch with an equal key without a look-up
    (walk.py `_stages`), even once the memo it came from was cleared: a recorded walk is exact for its key. A
    memo cleared every few keys (memo_size) changes nothing a walk without sharing gives."""
    seed, n, endpoints, era, full = case
    assume(full or era != "xlb")
    ruleset, _lines, targets = kube_dump(seed, n, endpoints, era, full)
    shared = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR])
    shared._reentries = EAGER_AFTER
    shared._plan_stages_after = 1
    plain = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR], use_index=False, share=False)
    old = walk.MEMO_SIZE
    walk.MEMO_SIZE = memo_size
    try:
        for dst, port, proto in targets[:30]:
            for src in ("203.0.113.1", "10.244.3.3", NODE_IP):
                packet = Packet(src, dst, port, proto)
                assert_same(shared.trace(packet), plain.trace(packet), f"kept stage walk changed {packet}")
    finally:
        walk.MEMO_SIZE = old
    assert not full or any(info[3] is not None for info in shared._stage_info.values())  # (a key was kept)


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
    # Options that read more of the branch (interfaces, recent lists, conntrack's original destination) or
    # record assumptions: what the walk shared after NAT (memo.py) has to key or replay.
    parts += draw(st.sampled_from([
        [], [], [], [], [], ["-i", "eth0"], ["!", "-o", "eth1"], ["-m", "recent", "--name", "R", "--set"],
        ["-m", "recent", "--name", "R", "--rcheck"], ["-m", "conntrack", "--ctstate", "DNAT"],
        ["-m", "conntrack", "--ctorigdst", "10.0.0.1"], ["-m", "comment", "--comment", '"a b"'],
        ["-m", "multiport", "--dports", "80,443"]]))
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
    snat = "".join(f"-A POSTROUTING {rule}\n" for rule in draw(st.lists(st.sampled_from([
        "-m mark --mark 0x1/0x1 -j MASQUERADE", "-o eth0 -j MASQUERADE", "-s 10.0.0.0/8 -d 10.0.0.2 -j SNAT "
        "--to-source 10.9.9.9", "-d 10.0.1.0/24 -j NETMAP --to 10.9.0.0/24", "-m recent --name R --rcheck -j ACCEPT",
        "-p tcp -m tcp --dport 8080 -j MASQUERADE"]), max_size=3)))
    # Before NAT, some packets get a recent entry, a mark or an assumption: branches that reach the walk
    # after NAT (shared between branches, memo.py) with different values of what it keys or replays.
    mangle = "".join(f"-A PREROUTING {rule}\n" for rule in draw(st.lists(st.sampled_from([
        "-s 10.0.0.1 -m recent --name R --set", "-s 10.0.1.1 -j MARK --set-xmark 0x1/0x1", "-s 10.0.0.2 -i eth0 -j LOG",
        "-d 10.0.0.1 -m recent --name R --rdest --set"]), max_size=3)))
    return ("*mangle\n:PREROUTING ACCEPT [0:0]\n" + mangle + "COMMIT\n"
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" + dnat + snat
            + "COMMIT\n"
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
    indexed._plan_stages_after = 1
    plain = Tracer(ruleset, node_ips=["192.168.0.10"], use_index=False, share=False)
    unshared = Tracer(ruleset, node_ips=["192.168.0.10"], share=False)
    code = indexed._code("filter", "BIG")
    assert code is not None and code.index is not None
    for src, dst, dport, proto in packets:
        assume(ipaddress.ip_address(src) != ipaddress.ip_address(dst) or src != "127.0.0.1")
        packet = Packet(src, dst, dport, proto)
        # `indexed` keeps its recorded walks from one packet to the next: later packets replay them.
        a, b = indexed.trace(packet), plain.trace(packet)
        check_trace(a, ruleset, lines)
        assert_same(a, b, f"index or shared walk changed the result for {packet}")
        assert_same(unshared.trace(packet), b, f"index changed the result for {packet}")


# ------------------------------------------------------------------------------ closures keyed by port

@st.composite
def port_closure_dump(draw: st.DrawFn) -> str:
    """Service-like closures (SVC → SEP chains) whose rules read the destination port: exact `--dport N` (keyed
    by which N the port equals), ranges and lists (keyed by the port itself), DNATs with and without a port."""
    def port_test() -> str:
        return draw(st.sampled_from(["--dport 80", "! --dport 80", "--dport 30000", "--dport 1000:40000",
                                     "-m multiport --dports 80,30001", ""]))

    chains, rules = [], []
    for n in range(2):
        svc = f"SVC{n}"
        chains.append(svc)
        rules.append(f"-A PREROUTING -d 10.96.0.{n + 1}/32 -j {svc}")
        rules.append(f"-A PREROUTING -d 192.168.0.10/32 -p tcp -m tcp --dport {30000 + n} -j {svc}")
        for k in range(draw(st.integers(2, 4))):
            sep = f"SEP{n}{k}"
            chains.append(sep)
            test = port_test()
            rules.append(f"-A {svc} -p tcp -m tcp {test} -j MARK --set-xmark 0x{k + 1}/0xff".replace("-m tcp -m",
                                                                                                  "-m"))
            rules.append(f"-A {svc} -m statistic --mode random --probability 0.5 -j {sep}")
            target = draw(st.sampled_from([f"10.244.{n}.{k + 1}:8080", f"10.244.{n}.{k + 1}"]))
            rules.append(f"-A {sep} -s 10.244.{n}.{k + 1}/32 -j MARK --set-xmark 0x4000/0x4000")
            rules.append(f"-A {sep} -p tcp -m tcp {port_test()} -j DNAT --to-destination {target}".replace(
                "-m tcp -m", "-m"))
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            + "".join(f":{c} - [0:0]\n" for c in chains) + "\n".join(rules) + "\nCOMMIT\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=port_closure_dump(), packets=st.lists(
    st.tuples(st.sampled_from(["203.0.113.9", "10.244.0.1", "10.244.1.2"]),
              st.sampled_from(["10.96.0.1", "10.96.0.2", "192.168.0.10"]), st.sampled_from([80, 81, 30000, 30001])),
    min_size=1, max_size=12))
def test_closures_keyed_by_the_ports_they_compare(text: str, packets: list) -> None:
    ruleset = load(text)
    shared = Tracer(ruleset, node_ips=["192.168.0.10"])
    shared._reentries = EAGER_AFTER  # every closure planned (and its walks recorded) on its first entry
    plain = Tracer(ruleset, node_ips=["192.168.0.10"], share=False)
    for src, dst, dport in packets:
        packet = Packet(src, dst, dport, "tcp")
        assert_same(shared.trace(packet), plain.trace(packet), f"the chain memo changed the result for {packet}")


# ------------------------------------------------------------------------------ compile caches

@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=' \t"\\ab-!/:\u00a0\u2003x', max_size=40))
def test_fast_tokens_split_like_the_model(text: str) -> None:
    assert fast_tokens(text) == TOKEN_RE.findall(text)


STATE_FIELDS = st.fixed_dictionaries({
    "src": address, "dst": st.one_of(address, st.just("10.0.0.77")), "dport": port, "proto": st.sampled_from([6, 17]),
    "in_iface": st.sampled_from([None, "eth0"]), "mark": st.sampled_from([0, 1]), "dnat": st.booleans(),
    "notrack": st.booleans(), "recent": st.booleans()})


def _evaluate(tests: tuple, assumed: tuple, effects: tuple, never: bool, s: State) -> tuple:
    """What the walk does with a rule's matches on branch `s` (walk.Tracer._run_chain)."""
    if never or not all(test(s) for test in tests):
        return (False,)
    answers = []
    for check in assumed:
        result, note = check(s)
        answers.append((result, note))
        if not result:
            return (False, answers)
    for effect in effects:
        effect(s)
    return (True, answers, s.recent)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=long_chain_dump(), states=st.lists(STATE_FIELDS, min_size=1, max_size=4))
def test_bound_matches_are_compiled_matches(text: str, states: list) -> None:
    """A rule compiled through the shared per-structure cache (bind_matches) answers like one compiled alone."""
    ruleset = load(text)
    ctx = Context.build(4, ["192.168.0.10"], None)
    structures: dict = {}
    binders: dict = {}
    bound: dict = {}
    groups: dict = {}
    for table in ruleset.tables:
        for chain in table.chains:
            for rule in chain.rules:
                tokens = fast_tokens(rule.text)
                structure = rule_structure(rule, tokens, structures)
                alone = compile_matches(rule, ctx, rule_structure(rule, tokens), tokens)
                shared, src, dst, addresses, never = bind_matches(rule, ctx, binder_for(structure, binders), tokens,
                                                                  bound, groups)
                assert shared.probability == alone.probability
                nets = tuple(_net_test(attr, net) for attr, net in (("src", src), ("dst", dst)) if net is not None)
                for fields in states:
                    s1, s2 = _state(fields), _state(fields)
                    got = _evaluate(nets + addresses + shared.tests, shared.assumed, shared.effects,
                                    never or shared.never, s1)
                    assert got == _evaluate(tuple(alone.tests), tuple(alone.assumed), tuple(alone.effects),
                                            alone.never, s2), rule


def _net_test(attr: str, net: tuple[int, int, bool]) -> Callable[[State], bool]:
    """A -s/-d kept as data (matchers.Net), as the walk tests it."""
    mask, network, negated = net
    return lambda s: ((s.src if attr == "src" else s.dst) & mask == network) != negated


def _state(fields: dict) -> State:
    s = State(int(ipaddress.ip_address(fields["src"])), int(ipaddress.ip_address(fields["dst"])), 40000,
              fields["dport"], fields["proto"], fields["in_iface"])
    s.mark = fields["mark"]
    s.dnat = fields["dnat"]
    s.notrack = fields["notrack"]
    if fields["recent"]:
        s.recent = frozenset({("R", s.src)})
    return s


# ------------------------------------------------------------------------------ the walk shared after NAT

SHARED_WALK_DUMP = """*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -d 10.0.0.1 -m recent --name R --rdest --set
-A PREROUTING -s 10.0.1.1 -m addrtype --dst-type LOCAL -j LOG
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.0.0.1 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80
-A PREROUTING -d 10.0.0.3 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80
-A PREROUTING -d 10.0.0.4 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80
-A POSTROUTING -m mark --mark 0x1/0x1 -j MASQUERADE
COMMIT
*filter
:FORWARD ACCEPT [0:0]
-A FORWARD -m recent --name R --rcheck -j DROP
-A FORWARD -m addrtype --dst-type LOCAL -j LOG
-A FORWARD -s 10.0.1.1 -j MARK --set-xmark 0x1/0x1
COMMIT
"""


def test_shared_walk_keys_recent_lists_and_replays_assumptions() -> None:
    """Branches that differ only in a recent list (set before NAT) or in assumptions made before NAT: each
    replayed walk gives what a walk of its own gives, whatever was recorded first."""
    ruleset = load(SHARED_WALK_DUMP)
    packets = [Packet(src, dst, 80) for src in ("10.0.0.1", "10.0.0.9", "10.0.1.1")
               for dst in ("10.0.0.3", "10.0.0.1", "10.0.0.4")]
    for order in (packets, packets[::-1]):
        shared = Tracer(ruleset)  # no node addresses: addrtype notes are assumptions
        shared._plan_stages_after = 1
        for packet in order:
            expected = Tracer(ruleset, share=False).trace(packet)
            assert_same(shared.trace(packet), expected, f"shared walk changed the result for {packet}")
        assert sum(len(plan.memo) for plan in shared._plans.values() if plan is not None) < len(packets)
    dropped = Tracer(ruleset).trace(Packet("10.0.0.1", "10.0.0.1", 80))
    assert [o.verdict for o in dropped.outcomes] == ["DROP"]


def test_kube_proxy_branches_share_the_walk_after_dnat() -> None:
    """Every endpoint of every ClusterIP crosses FORWARD and POSTROUTING the same way: a handful of recorded
    walks serve them all (a performance property the trace budget rests on, not a result)."""
    ruleset, _lines, targets = kube_dump(7, 40, 4, "current", True)
    tracer = Tracer(ruleset, node_ips=[NODE_IP], pod_cidrs=[POD_CIDR])
    branches = sum(len(tracer.trace(Packet("10.244.3.3", ip, port, proto)).outcomes)
                   for ip, port, proto in targets if ip.startswith("10.96."))
    recorded = sum(len(plan.memo) for plan in tracer._plans.values() if plan is not None)
    assert branches > 50 and recorded * 5 < branches


def test_replay_in_place_takes_every_keyed_field() -> None:
    """memo.replay gives its last branch the incoming state itself: `_set_keyed` must set every keyed field from
    the recorded values, and every other field of a State must be one the replay takes from the branch or sets
    itself."""
    from iptrace.iptables.memo import KEYED_FIELDS, _keyed_values, _set_keyed

    template, s = State(1, 2, 3, 4, 6, "eth0"), State(5, 6, 7, 8, 17, None)
    for k, name in enumerate(KEYED_FIELDS):
        setattr(template, name, ("value", k))
    _set_keyed(s, _keyed_values(template))
    assert all(getattr(s, name) == ("value", k) for k, name in enumerate(KEYED_FIELDS))
    own = {"src", "sport", "dst", "dport", "orig_dst", "orig_dport", "dnat_by", "recent"}
    assert set(State.__slots__) == set(KEYED_FIELDS) | own | {"assumptions", "path", "chains", "prob"}


def test_fast_outcome_constructor_sets_what_outcome_init_sets() -> None:
    """dataplane.new_outcome (both walks use it) stores through Outcome's slots: every slot ends up as Outcome(…)
    stores it."""
    from fractions import Fraction

    from iptrace.dataplane import OUTCOME_SLOTS, Decision, Outcome, new_outcome

    args = ("DNAT", "10.0.0.1:80", 0.25, True, lambda: "ns/svc:p", Decision("nat", "KUBE-SEP-X", 7), lambda: (),
            Fraction(1, 4), "10.96.0.1:80", "10.0.0.1:80", lambda: (("nat", "KUBE-SEP-X"),), ("a note",))
    fast, slow = new_outcome(*args), Outcome(*args)
    assert set(OUTCOME_SLOTS) == set(Outcome.__slots__)
    assert all(getattr(fast, name) is getattr(slow, name) for name in Outcome.__slots__)
    assert fast == slow and fast.service == "ns/svc:p" and fast.chains == (("nat", "KUBE-SEP-X"),)


OWN_WALK_DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
-A PREROUTING -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
-A PREROUTING -d 10.96.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A -i eth1 -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SVC-A -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-1
-A KUBE-SVC-A -j KUBE-SEP-2
-A KUBE-SEP-1 -s 10.0.0.1/32 -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-1 -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:8080
-A KUBE-SEP-2 -s 10.0.0.2/32 -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-2 -p tcp -m tcp -j DNAT --to-destination 10.0.0.2:8080
COMMIT
"""


def test_closure_walks_with_assumptions_replay_from_their_own_memo() -> None:
    """A load-balancing closure whose walk makes an assumption (an input interface the packet does not name) is
    recorded for itself (ChainPlan.own), not by position; chainwalk._enter reads `own` only when it holds
    anything (nearly every closure's is empty): entered again with each key, it replays what an unshared walk
    gives, assumptions included."""
    ruleset = load(OWN_WALK_DUMP)
    shared = Tracer(ruleset)
    shared._reentries = EAGER_AFTER  # (planned on its first entry, as in a view)
    packets = [Packet(src, dst, 80) for src in ("10.0.0.1", "10.0.0.9", "203.0.113.5")
               for dst in ("10.96.0.1", "10.96.0.2")]
    for packet in packets * 2:
        got = shared.trace(packet)
        assert any("eth1" in note for note in got.assumptions)
        assert_same(got, Tracer(ruleset, share=False).trace(packet), f"own walk changed the result for {packet}")
    plan = shared._chain_plans[("nat", "KUBE-SVC-A")]
    assert isinstance(plan, tuple) and len(plan[0].own) == 2  # (a key for the endpoint's own address, one for others)
    assert not plan[0].memo  # (nothing recorded by position)
