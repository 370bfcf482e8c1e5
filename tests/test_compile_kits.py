"""A rule of a shape compiled before takes compile.py's fast path (its shape's kit: structure, Binder, target and
DNAT positions, Access per target); it must compile to what the slow way gives, field by field, on every rule
of the sample dumps, the conformance corpus and synthesized kube-proxy dumps of every era."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from operator import attrgetter
from pathlib import Path
from types import FunctionType
from typing import Any

import pytest

from bench import synth
from iptrace.dataplane import Decision
from iptrace.errors import IptraceError, ParseError, TraceError
from iptrace.iptables import load
from iptrace.iptables.compile import SET_MARK, Compiled
from iptrace.iptables.matchers import Binder, bind_addresses
from iptrace.iptables.model import Ruleset
from iptrace.iptables.state import State, parse_net
from iptrace.iptables.walk import Tracer

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"


class _NoKits(dict):  # type: ignore[type-arg]
    """A kit table that keeps nothing: every rule compiles the slow way."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """The same function, or two closures of the same code over the same values (a rule's own address tests,
    mark effects and assumptions are made per rule)."""
    if a is b:
        return True
    if not isinstance(a, FunctionType) or not isinstance(b, FunctionType):
        return False
    cells_a = [c.cell_contents for c in a.__closure__ or ()]
    cells_b = [c.cell_contents for c in b.__closure__ or ()]
    return (a.__code__ is b.__code__ and _same_value(a.__defaults__, b.__defaults__)
            and _same_value(cells_a, cells_b))


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, FunctionType):
        return _same_function(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(
            _same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _assert_same(fast: Compiled, slow: Compiled, where: str) -> None:
    for name in ("table", "rule", "probability", "complement", "never", "src", "dst", "action", "target", "note",
                 "label", "names_label", "sub"):
        assert getattr(fast, name) == getattr(slow, name), f"{where}: {name}"
    # (Matches that make assumptions name the rule's line: they are compiled per rule, either way.)
    assert fast.bound is slow.bound or fast.assumed, where
    for name in ("tests", "assumed", "effects"):
        got, expected = getattr(fast, name), getattr(slow, name)
        assert len(got) == len(expected), f"{where}: {name}"
        assert all(_same_function(a, b) for a, b in zip(got, expected, strict=True)), f"{where}: {name}"
    if fast.action == SET_MARK:
        assert _same_function(fast.arg, slow.arg), where
    else:
        assert fast.arg == slow.arg, where
        assert type(fast.arg) is type(slow.arg), where
    a, b = fast.access, slow.access
    assert a is not None and b is not None, where
    assert (a.fields, a.raw, a.known, a.dport_tokens) == (b.fields, b.raw, b.known, b.dport_tokens), where
    decision = fast.decision
    assert type(decision) is Decision, where
    assert decision == Decision(slow.table, slow.rule.chain, slow.rule.line), where
    assert decision.to_json() == Decision(slow.table, slow.rule.chain, slow.rule.line).to_json(), where


def _compile_all(tracer: Tracer) -> dict[tuple[str, str, int], Compiled | str]:
    """Every rule of the tracer's dump compiled afresh (the chains' compiled rules dropped first), or the error
    compiling it raised."""
    out: dict[tuple[str, str, int], Compiled | str] = {}
    for table in tracer.ruleset.tables:
        for chain in table.chains:
            code = tracer._code(table.name, chain.name)
            assert code is not None
            code.compiled[:] = [None] * len(code.rules)
            for i in range(len(code.rules)):
                try:
                    out[(table.name, chain.name, i)] = tracer._compile(code, i)
                except (TraceError, ParseError) as exc:  # (an unreadable NAT target is a ParseError: where it is)
                    out[(table.name, chain.name, i)] = f"{type(exc).__name__}: {exc}"
    return out


def check_dump(ruleset: Ruleset, name: str) -> int:
    """Compile every rule the fast way and the slow way; returns how many rules had a kit."""
    tracer = Tracer(ruleset, node_ips=["192.168.0.10"])
    _compile_all(tracer)  # (the first rule of each shape makes its kit, the first of each value its Bound)
    kits = dict(tracer._kits)
    fast = _compile_all(tracer)
    tracer._kits = _NoKits()
    slow = _compile_all(tracer)
    assert fast.keys() == slow.keys()
    for key, got in fast.items():
        expected = slow[key]
        where = f"{name}: {key}"
        if isinstance(got, str) or isinstance(expected, str):
            assert got == expected, where
        else:
            _assert_same(got, expected, where)
    for key, got in fast.items():
        expected = slow[key]
        if not isinstance(got, str) and not isinstance(expected, str):
            for packet in _packets(got, expected):
                assert _behaviour(got, packet) == _behaviour(expected, packet), f"{name}: {key}: {packet}"
    return sum(1 for t in ruleset.tables for c in t.chains for r in c.rules if r.shape in kits)


_PACKET_FIELDS = tuple(f for f in State.__slots__ if f not in ("path", "chains"))
_packet_fields = attrgetter(*_PACKET_FIELDS)  # (a packet's fields as one tuple, in _PACKET_FIELDS' order)


def _packets(*rules: Compiled) -> list[State]:
    """Packets to try a rule on: to and from the networks its -s/-d name (and their neighbours), other
    addresses, each with a few ports and protocols."""
    addresses = {0x0A000001, 0xC0A8000A, 0x0AF40107}
    for c in rules:
        for net in (c.src, c.dst):
            if net is not None:
                addresses |= {net[1], net[1] ^ 1, (net[1] | ~net[0]) & 0xFFFFFFFF, net[1] ^ 0x80000000}
    ordered = sorted(addresses)
    out = []
    for k, src in enumerate(ordered):
        for dst in (ordered[(k + 1) % len(ordered)], ordered[(k + 3) % len(ordered)], src):
            for proto, dport in ((6, 80), (17, 53), (6, 8080), (1, 0)):
                out.append(State(src, dst, 40000 + k, dport, proto, None))
    return out


def _behaviour(c: Compiled, packet: State) -> tuple[Any, ...]:
    """What the walk (chainwalk.ChainWalker._walk_chain) makes of rule `c` on a copy of `packet`: whether it
    applies (its -s/-d, tests and assumptions, with the notes these record), the branch weights, the packet
    after its effects, and its target."""
    s = packet.copy()
    applies = not c.never
    for net, value in ((c.src, s.src), (c.dst, s.dst)):
        if applies and net is not None and (value & net[0] == net[1]) == net[2]:
            applies = False
    if applies:
        applies = all(test(s) for test in c.tests)
    if applies:
        for assumed in c.assumed:
            result, note = assumed(s)
            if note is not None:
                s.assume(note)
            if not result:
                applies = False
                break
    if applies:
        for effect in c.effects:
            effect(s)
    arg = c.arg
    if callable(arg):  # (a mark effect: what it does to the packet)
        marked = packet.copy()
        arg(marked)
        arg = (marked.mark, marked.ctmark)
    return (applies, c.probability, c.complement, _packet_fields(s), c.action,
            c.target, arg, c.note)


def _sample_dumps() -> Iterator[tuple[str, str]]:
    for path in sorted(SAMPLES.glob("*.txt")):
        yield path.name, path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [name for name, _text in _sample_dumps()])
def test_sample_dumps_compile_alike_through_kits(name: str) -> None:
    text = (SAMPLES / name).read_text(encoding="utf-8")
    try:
        ruleset = load(text, source=name)
    except IptraceError:
        pytest.skip(f"{name} is not an iptables-save dump")
    check_dump(ruleset, name)


def test_corpus_dumps_compile_alike_through_kits(corpus: Path) -> None:
    kept = 0
    for f in sorted((corpus / "kube-proxy").glob("*.json")):
        kept += check_dump(load(json.loads(f.read_text())["dump"], source=f.name), f.name)
    for entry in json.loads((corpus / "realworld" / "INDEX.json").read_text()):
        if entry["complete"]:
            text = (corpus / "realworld" / entry["file"]).read_text(encoding="utf-8", errors="replace")
            kept += check_dump(load(text, source=entry["file"]), entry["file"])
    assert kept > 0  # (the fast path ran)


@pytest.mark.parametrize("era", synth.ERAS)
def test_synthesized_dumps_compile_alike_through_kits(era: str) -> None:
    specs = synth.scale(60, 4, seed=7)
    text = synth.render(specs, node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16", era=era, full_dump=True)
    ruleset = load(text)
    kept = check_dump(ruleset, era)
    assert kept > ruleset.rule_count // 2  # (kube-proxy's rules come in a handful of shapes)


# Rules of one shape twice over, so that the second of each takes the kit: gotos, DNATs to ranges, to bare
# addresses and ports, marks, several -s, bad addresses (bind_addresses is checked alone below).
KIT_DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
-A PREROUTING -s 10.0.0.1/32 -g A
-A PREROUTING -s 10.0.0.2/32 -g B
-A PREROUTING -d 10.1.0.0/16 -j A
-A PREROUTING -d 10.2.0.0/255.255.0.0 -j B
-A PREROUTING -s 10.0.0.1/32,10.0.0.9/32 -j A
-A PREROUTING -s 10.0.0.2/32,10.0.0.3/32 -j B
-A PREROUTING -s 10.0.0.8 -j A
-A PREROUTING -s 01.2.3.4/32 -j B
-A PREROUTING ! -s 10.0.0.5/32 -d 10.9.9.9/32 -j A
-A PREROUTING ! -s 10.0.0.6/32 -d 10.9.9.8/32 -j B
-A A -p tcp -m comment --comment "a b" -m tcp -j DNAT --to-destination 10.0.0.1:80
-A A -p tcp -m comment --comment "c d" -m tcp -j DNAT --to-destination 10.0.0.2-10.0.0.4:80-90
-A A -p tcp -m comment --comment "e f" -m tcp -j DNAT --to-destination 10.0.0.3
-A A -p tcp -m comment --comment "g h" -m tcp -j DNAT --to-destination :8080
-A A -p udp -m comment --comment "i j" -m udp -j DNAT --to-destination "10.0.0.5:53"
-A B -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80
-A B -p tcp -m tcp --dport 81 -j MARK --set-xmark 0x4000/0x4000
-A B -p tcp -m tcp --dport 82 -j MARK --set-xmark 0x8000/0x8000
-A B -p tcp -m tcp --dport 83 -j RETURN
-A B -p tcp -m tcp --dport 84 -j CONNMARK --set-xmark 0x1/0x1
-A B -p tcp -m tcp --dport 85 -j LOG
-A B -s 10.0.0.1/32 -j DNAT
-A B -s 10.0.0.2/32 -j DNAT
COMMIT
"""


def test_handwritten_shapes_compile_alike_through_kits() -> None:
    assert check_dump(load(KIT_DUMP), "kit dump") >= 20


# Rules whose tokens compile.py may read with a plain split (_tokens) next to ones it may not: comments quoted
# without spaces, with spaces, with a backslash, unquoted; other values quoted; a quote inside a token; and the
# kube-proxy readings compile.py makes inline (a lone -s a.b.c.d/32, a DNAT to a.b.c.d:port) with their edges.
TOKENS_DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -s 10.244.1.7/32 -m comment --comment "ns/a:p" -j KUBE-MARK-MASQ
-A PREROUTING -s 10.244.1.8/32 -m comment --comment "ns/a:p" -j KUBE-MARK-MASQ
-A PREROUTING -s 10.244.1.9/32 -m comment --comment ns/a:p -j KUBE-MARK-MASQ
-A PREROUTING -s "10.244.1.10/32" -m comment --comment ns/a:p -j KUBE-MARK-MASQ
-A PREROUTING -s 10.244.1.11/32 -m comment --comment "ns/a:p with space" -j KUBE-SEP-A
-A PREROUTING -s 10.244.1.12/32 -m comment --comment "ns/\\a:p" -j KUBE-SEP-B
-A PREROUTING -s 10.244.1.13/32 -m comment --comment a"b -j KUBE-SEP-A
-A PREROUTING -s 10.244.1.14/32 -m comment --comment "ns/a:p" -j KUBE-SEP-A
-A PREROUTING -s 10.244.1.15 -m comment --comment "x" -j KUBE-SEP-B
-A PREROUTING -s 10.244.1.0/24 -m comment --comment "x" -j KUBE-SEP-B
-A PREROUTING -s 10.244.1.16/32,10.244.1.17/32 -m comment --comment "x" -j KUBE-SEP-B
-A PREROUTING -s 2001:db8::1/32 -m comment --comment "x" -j KUBE-SEP-B
-A PREROUTING -s 1.2.3.4.5/32 -m comment --comment "x" -j KUBE-SEP-B
-A PREROUTING ! -s 10.244.1.18/32 -m comment --comment "x" -j KUBE-SEP-B
-A PREROUTING -s 10.244.1.19/32 -m comment --comment "x" -j ACCEPT
-A PREROUTING -s 10.244.1.20/32 -m comment --comment "x" -j LOG
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 10.244.1.7:8001
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 10.244.1.8:08001
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 10.244.1.9:
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination [10.244.1.9]:80
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 10.244.1.9:80-90
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 10.244.1.9-10.244.1.10:80
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 10.244.1.9:٣
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 10.244.1.999:80
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 1.2.3.4.5:80
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination "10.244.1.9:80"
-A KUBE-SEP-A -p tcp -m comment --comment "ns/a b" -m tcp -j DNAT --to-destination 10.244.1.9:81
-A KUBE-SEP-B -p tcp -m comment --comment "ns/a:p" -m tcp -j DNAT --to-destination 2001:db8::1:80
-A KUBE-SEP-B -m comment --comment "ns/a:p" -m statistic --mode random --probability 0.5 -j KUBE-SEP-A
-A KUBE-SEP-B -m comment --comment "ns/a:p x" -m statistic --mode random --probability 0.5 -j KUBE-SEP-A
-A KUBE-SEP-B -m comment --comment "ns/a:p" -m statistic --mode random --probability 0.25 -j KUBE-MARK-MASQ
-A KUBE-SEP-B -m comment --comment "ns/a:p" -m statistic --mode random --probability 0.25 -g KUBE-SEP-A
COMMIT
"""


@pytest.mark.parametrize("lines", ["forwards", "backwards"])
def test_plain_split_and_inline_readings_compile_alike_through_kits(lines: str) -> None:
    """Each rule of TOKENS_DUMP alone after one of its shape (the kit's plain split still on), and all of them
    in order (and in reverse: the plain split turned off by a comment with spaces, or not yet)."""
    lines_of = TOKENS_DUMP.strip().split("\n")
    head = "\n".join(line for line in lines_of if line[0] in "*:")
    rules = [line for line in lines_of if line.startswith("-A ")]
    if lines == "backwards":
        rules.reverse()
    assert check_dump(load("\n".join([head, *rules, "COMMIT", ""])), "tokens dump") >= 20
    first: dict[str, str] = {}
    for rule in rules:
        first.setdefault(rule.split(" ")[1], rule)
    for rule in rules:
        check_dump(load("\n".join([head, first[rule.split(" ")[1]], rule, "COMMIT", ""])), rule)


def test_bad_addresses_fail_alike_through_kits() -> None:
    bad = KIT_DUMP.replace("-A PREROUTING -s 10.0.0.2/32 -g B", "-A PREROUTING -s 10.0.0.300/32 -g B")
    bad = bad.replace('--comment "e f" -m tcp -j DNAT --to-destination 10.0.0.3',
                      '--comment "e f" -m tcp -j DNAT --to-destination 10.0.0.999:80')
    check_dump(load(bad), "bad kit dump")


@pytest.mark.parametrize("value", ["10.0.0.1/32", "01.2.3.4/32", "10.0.0.300/32", "2001:db8::1/32", "::ffff:1.2.3.4/32",
                                   "10.0.0.0/8", "10.0.0.1", "x/32", "/32", "10.0.0.1/32,10.0.0.2/32"])
@pytest.mark.parametrize("negated", [False, True])
def test_host_addresses_bind_like_parse_net(value: str, negated: bool) -> None:
    """bind_addresses reads `a.b.c.d/32` without parse_net's cache: the same network, or the same error."""
    binder = Binder(((("", (("-s", negated, (0,)), ("-d", negated, (1,)))),), ()))
    for version in (4, 6):
        try:
            got: object = bind_addresses(binder.addresses, [value, value], version)
        except TraceError as exc:
            got = str(exc)
        try:
            net = parse_net.__wrapped__(value, version) if "," not in value else None
        except TraceError as exc:
            expected: object = str(exc)
        else:
            if "," in value:
                expected = got  # (lists are tested by address_test, the same either way)
            elif net is None:
                expected = (None, None, (), not negated)
            else:
                expected = ((net[1], net[0], negated), (net[1], net[0], negated), (), False)
        assert got == expected, (value, version)

