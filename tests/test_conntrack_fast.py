"""The reader's expressions of a key's lines (iptrace.conntrack.pattern) decide exactly as the shapes and lark do:
a table read with them is the table read without them (errors, skipped lines, entries, flows, destinations), and
each value expression accepts exactly the values the vocabulary accepts (less leading zeros, which conntrack never
prints and the shapes still read)."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iptrace.conntrack import load, reader, vocabulary
from iptrace.conntrack.pattern import IPV4, VALUES, _factor, at_most
from iptrace.errors import ParseError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
ASKED = [("10.96.0.10", 53, "udp"), ("192.168.49.2", 30904, "tcp"), ("10.96.0.1", 443, "tcp"),
         ("10.101.234.168", 5001, "tcp")]


def _outcome(text: str, *, fast: bool, block: int, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as m:
        m.setattr(reader, "_BLOCK_BYTES", block)
        if not fast:
            m.setattr(reader, "_PATTERN_KEYS", 0)
        try:
            load(text, source="ct.txt", focus=ASKED)
        except ParseError as exc:
            strict = str(exc)
        else:
            strict = ""
        # (the expressions are used when the caller says which flows it will ask about; every other question is
        # answered too)
        table = load(text, source="ct.txt", lenient=True, focus=ASKED)
        return (strict, table.skipped, table.warnings, len(table), table.destinations(),
                [table.flows_to(ip, port, proto) for ip, port, proto in ASKED],
                [table.flows_to(ip, port, proto) for ip in ("10.96.0.10", "192.168.49.2") for port, proto in
                 [(None, None), (53, None), (None, "tcp"), (8080, "udp")]],
                [table.to_address(ip) for ip, _, _ in ASKED],
                [table.flows_to(ip) for ip in table.destinations()], list(table.entries()),
                [table.line_text(n) for n in range(1, text.count("\n") + 2)])


def _lines(count: int, seed: int) -> list[str]:
    from bench.bench_conntrack import synthesize

    return synthesize(count, seed=seed).splitlines()


def _indented(s: str) -> str:
    return "   " + s


# Edits of one line: what a damaged, unusual or hand-edited table holds (each keeps or breaks the line; the
# reader must decide as the shapes and lark do).
_EDITS = [
    lambda s: s.replace("dst=", "dst=0", 1),  # (a leading zero in an address)
    lambda s: s.replace(".", ".0", 1),
    lambda s: re.sub(r"\.(\d+) ", r".256 ", s, count=1),  # (an octet over 255)
    lambda s: re.sub(r"\.(\d+) ", r".255 ", s, count=1),
    lambda s: re.sub(r"sport=\d+", "sport=65536", s, count=1),
    lambda s: re.sub(r"sport=\d+", "sport=65535", s, count=1),
    lambda s: re.sub(r"sport=\d+", "sport=060000", s, count=1),  # (leading zeros: valid, read by the shapes)
    lambda s: s.replace("mark=0", "mark=4294967295"),
    lambda s: s.replace("mark=0", "mark=4294967296"),
    lambda s: s.replace("mark=0", "mark=1000000000"),
    lambda s: s.replace(" src=", "  src=", 1),  # (another key, the same shape)
    lambda s: s.replace(" use=1", ""),
    lambda s: s.replace("[ASSURED] ", ""),
    lambda s: s + " zone=3",
    lambda s: s.replace("mark=0", "mark=0 secmark=0"),
    lambda s: s.replace("ESTABLISHED", "ESTABLISHE"),
    lambda s: s.replace("tcp      6", "tcp      7"),
    lambda s: s.replace("udp      17", "udp      6"),
    lambda s: "ipv4     2 " + s,
    lambda s: "ipv6     10 " + s,
    lambda s: s.replace("src=10.244.1.", "src=fd00::", 1),
    lambda s: re.sub(r"src=(\d+)\.(\d+)\.(\d+)\.(\d+) dst=(\d+)\.(\d+)\.(\d+)\.(\d+)",
                     r"src=fd00::\4 dst=fd00::\8", s),
    lambda s: s[: len(s) // 2],  # (cut short)
    lambda s: s + "\r",
    lambda s: s.replace(" ", "\t", 1),
    lambda s: s.replace("=", "\x00", 1),
    lambda s: s.replace("1", "\u00b9", 1),
    lambda s: "",
    lambda s: "# " + s,
    _indented,
    lambda s: s + " ",
    lambda s: s.replace("dport=53 ", "dport=53  ", 1),
    lambda s: s.replace("dst=10.96.0.10 ", "dst=10.96.0.1 ", 1),
    lambda s: s.replace("type=8", "type=256"),
    lambda s: s.replace("id=", "id=99999", 1),
    lambda s: s.replace("use=1", "use=1 [OFFLOAD]"),
    lambda s: "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.",
]


@SETTINGS
@given(seed=st.integers(0, 10**6), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, len(_EDITS) - 1)),
                                                  max_size=6),
       block=st.sampled_from([200, 2000, 30_000]), end=st.sampled_from(["\n", "", "\n\n"]))
# (found by hypothesis: two lines of the asked flow indented, a key of the same shape as their flow's other lines,
# in a block the expressions read: the flow is one group, its lines in file order)
@example(seed=11, edits=[(103, _EDITS.index(_indented)), (31514, _EDITS.index(_indented))], block=30_000, end="\n")
def test_a_table_read_with_the_expressions_is_the_table_read_by_shapes(
        seed: int, edits: list[tuple[int, int]], block: int, end: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _lines(400, seed)
    for where, edit in edits:
        at = where % len(lines)
        lines[at] = _EDITS[edit](lines[at])
    text = "\n".join(lines) + end
    assert _outcome(text, fast=True, block=block, monkeypatch=monkeypatch) == \
        _outcome(text, fast=False, block=block, monkeypatch=monkeypatch)


@pytest.mark.parametrize("edit", range(len(_EDITS)))
def test_each_edit_anywhere_in_a_table_is_read_as_the_shapes_read_it(edit: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Every line of a table edited alike, and one line edited in the middle of a table read by the expressions.
    lines = _lines(600, 7)
    every = "\n".join(_EDITS[edit](line) for line in lines) + "\n"
    one = "\n".join([*lines[:450], _EDITS[edit](lines[450]), *lines[451:]]) + "\n"
    # (blocks of ~25 lines, and of ~400: when most of a block's lines are left, the shapes read the rest at once)
    for text, block in ((every, 4000), (every, 60_000), (one, 4000)):
        fast = _outcome(text, fast=True, block=block, monkeypatch=monkeypatch)
        assert fast == _outcome(text, fast=False, block=block, monkeypatch=monkeypatch)


def test_the_expressions_read_the_lines_of_the_bench_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # A table of a few blocks: the expressions are made after the first one and take nearly every line after it.
    from iptrace.conntrack.pattern import Fast

    scanned: list[int] = []
    scan = Fast.scan

    def counting(self: Fast, data: bytes, pos: int, stop: int, first: int) -> object:
        found = scan(self, data, pos, stop, first)
        scanned.append(sum(stop - start for start, stop in found.runs))
        return found

    monkeypatch.setattr(Fast, "scan", counting)
    text = "\n".join(_lines(3000, 3)) + "\n"
    fast = _outcome(text, fast=True, block=40_000, monkeypatch=monkeypatch)
    assert sum(scanned) > 0.95 * (3000 - 400)  # (the first block, ~400 lines, is read by shapes)
    assert fast == _outcome(text, fast=False, block=40_000, monkeypatch=monkeypatch)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(vocabulary.NUMBER_LIMITS)), st.integers(0, 2**65), st.integers(0, 3))
def test_a_number_expression_accepts_what_the_vocabulary_accepts(kind: str, value: int, zeros: int) -> None:
    limit = vocabulary.NUMBER_LIMITS[kind]
    if value > limit * 4:
        value %= limit * 2 + 2
    text = "0" * zeros + str(value)
    taken = re.fullmatch(VALUES[kind] + b" ", (text + " ").encode()) is not None
    # What the vocabulary takes, the expression takes, less leading zeros and 32/64-bit values of full width
    # (the shapes read those); and nothing else.
    full_width = len(str(limit)) >= 10 and len(str(value)) == len(str(limit))
    assert taken == (vocabulary.check_value(kind, text) and zeros == 0 and not full_width)
    assert at_most(limit) == VALUES[kind]


@pytest.mark.parametrize("limit", [0, 1, 9, 10, 99, 100, 109, 200, 255, 256, 1000, 12345, 65535])
def test_a_number_expression_takes_every_number_up_to_its_limit_and_nothing_else(limit: int) -> None:
    # Every string of digits up to the limit's width (leading zeros included), and one wider in ten (and those
    # the limit begins): the tree of digits at_most writes takes those without a leading zero up to the
    # limit, followed by a non-digit.
    taken = re.compile(at_most(limit) + b" ")
    digits = len(str(limit))
    wider = [n for n in range(10 ** (digits + 1)) if n % 10 == 3 or n // 10 == limit]
    for width, numbers in [*((w, range(10 ** w)) for w in range(1, digits + 1)), (digits + 1, wider)]:
        for number in numbers:
            text = str(number).zfill(width)
            want = (text == "0" or text[0] != "0") and number <= limit
            assert (taken.fullmatch((text + " ").encode()) is not None) == want, text


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=4, max_size=4), st.lists(st.integers(0, 2), min_size=4, max_size=4))
def test_the_address_expression_accepts_what_ipaddress_accepts(octets: list[int], zeros: list[int]) -> None:
    text = ".".join("0" * z + str(o) for o, z in zip(octets, zeros, strict=True))
    try:
        valid = ipaddress.ip_address(text).version == 4
    except ValueError:
        valid = False
    assert (re.fullmatch(IPV4 + b" ", (text + " ").encode()) is not None) == valid


# (an expression's piece, whether it is a group, a text it matches)
_SAMPLES = {b"a": "a", b"b": "b", b"\\ ": " ", b"(c)": "c", b"(d+)": "dd"}
_PIECE = st.sampled_from([(b"a", False), (b"b", False), (b"\\ ", False), (b"(c)", True), (b"(d+)", True)])


@SETTINGS
@given(st.lists(st.lists(_PIECE, min_size=1, max_size=6), min_size=1, max_size=6, unique_by=tuple),
       st.lists(st.text("abcd ", max_size=8), max_size=20))
def test_alternatives_joined_with_their_beginnings_shared_match_as_the_plain_alternation(
        alternatives: list[list[tuple[bytes, bool]]], texts: list[str]) -> None:
    # Each alternative ends in its own marker group, as the kept lines' expressions do: which one matched, and what
    # each of its groups captured, are those of the plain alternation (when one alternative alone matches).
    marked = [(*a, (b"()", True)) for a in alternatives]
    numbers: list[list[int]] = [[] for _ in marked]
    factored = re.compile(_factor(list(zip(marked, numbers, strict=True)), 0, [0]))
    plain = re.compile(b"|".join(b"".join(t for t, _ in a) for a in marked))
    where, n = [], 0  # (each alternative's groups in the plain alternation)
    for a in marked:
        where.append([n + 1 + i for i in range(sum(g for _, g in a))])
        n += len(where[-1])
    for text in [*texts, *("".join(_SAMPLES[t] for t, _ in a) for a in alternatives)]:
        want, got = plain.fullmatch(text.encode()), factored.fullmatch(text.encode())
        assert (want is None) == (got is None), text
        # (the kept lines' alternatives are of different keys or values: a line matches one at most)
        alone = [i for i, a in enumerate(marked) if re.fullmatch(b"".join(t for t, _ in a), text.encode())]
        if len(alone) == 1 and want is not None and got is not None:
            chosen = alone[0]
            assert numbers[chosen][-1] == got.lastindex
            assert got.group(*numbers[chosen]) == want.group(*where[chosen])


@pytest.mark.parametrize("after", [[""], ["", ""], ["   "], ["# a note"], ["udp      17 garbled"],
                                   ["udp      17 garbled", ""], ["udp      17 garbled", "", "tcp"]])
def test_lines_right_after_an_asked_flows_line_are_read_as_the_shapes_read_them(
        after: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A match ends with an asked flow's line: blank, unusual or damaged lines right after one (where the next
    # match begins), and such lines ending a block, are still left to the shapes.
    lines = _lines(600, 7)
    asked = [i for i, line in enumerate(lines) if " dst=10.96.0.10 " in line and " dport=53 " in line]
    for at in (asked[3], asked[-1]):
        edited = [*lines[:at + 1], *after, *lines[at + 1:]]
        for end in ("\n", ""):
            text = "\n".join(edited) + end
            for block in (4000, len("\n".join(edited[:at + 2])) + 1, 60_000):
                fast = _outcome(text, fast=True, block=block, monkeypatch=monkeypatch)
                assert fast == _outcome(text, fast=False, block=block, monkeypatch=monkeypatch)


def test_an_asked_flows_lines_of_two_keys_of_one_shape_are_one_group_in_file_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every other line of the asked flow indented (another key, its own expression, the same shape): a block's
    # lines of both keys are one group per flow, its lines in file order, as the shapes read them.
    lines = _lines(3000, 5)
    asked = [i for i, line in enumerate(lines) if " dst=10.96.0.10 " in line and " dport=53 " in line
             and line.startswith("udp")]
    for i in asked[1::2]:
        lines[i] = _indented(lines[i])
    assert asked[1] < 300  # (an indented line in the first block: the key has an expression after it)
    text = "\n".join(lines) + "\n"
    fast = _outcome(text, fast=True, block=40_000, monkeypatch=monkeypatch)
    assert fast == _outcome(text, fast=False, block=40_000, monkeypatch=monkeypatch)
    groups = load(text, source="ct.txt", focus=ASKED).flows_to("10.96.0.10", 53, "udp")
    assert any(len(g.lines) > 2 for g in groups)
