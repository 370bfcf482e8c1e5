"""Properties of the conntrack reader: any text raises only IptraceError; generated entries survive a round
trip through every format conntrack prints; and the fast path (shapes and proven words) decides every line
exactly as lark and the vocabulary do for that line alone, so a damaged line is never read past."""

from __future__ import annotations

import ipaddress
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Token, Tree

from iptrace.conntrack import ConntrackEntry, FlowTuple, grammar, load, table, vocabulary
from iptrace.conntrack.reader import _IPV4, _number_column, _port
from iptrace.conntrack.text import format_entry, format_table
from iptrace.errors import IptraceError, ParseError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Generated tables cost a lark parse per new shape: fewer, larger examples.
TABLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TEXT_VALUE = st.from_regex(r"[a-z_:0-9,]{1,12}", fullmatch=True)
_STATES = {"tcp": ["ESTABLISHED", "SYN_SENT", "TIME_WAIT", "CLOSE_WAIT"], "sctp": ["ESTABLISHED", "COOKIE_WAIT"]}


@st.composite
def entries(draw: st.DrawFn) -> ConntrackEntry:
    family = draw(st.sampled_from(["ipv4", "ipv6"]))
    v = 4 if family == "ipv4" else 6
    proto = draw(st.sampled_from(["tcp", "udp", "sctp", "gre", "unknown", "icmp" if v == 4 else "icmpv6"]))
    number = {"tcp": 6, "udp": 17, "sctp": 132, "gre": 47, "icmp": 1, "icmpv6": 58}.get(proto)
    if number is None:
        number = draw(st.integers(0, 255))
    address = st.ip_addresses(v=v).map(str)
    port = st.integers(0, 65535)

    def flow() -> FlowTuple:
        src, dst = draw(address), draw(address)
        counters: tuple[tuple[str, str], ...] = ()
        if draw(st.booleans()):
            counters = (("packets", str(draw(st.integers(0, 10**6)))), ("bytes", str(draw(st.integers(0, 10**9)))))
        if proto in ("tcp", "udp", "sctp"):
            return FlowTuple(src, dst, draw(port), draw(port), (), counters)
        if proto.startswith("icmp"):
            fields = (("type", str(draw(st.integers(0, 255)))), ("code", str(draw(st.integers(0, 255)))),
                      ("id", str(draw(port))))
            return FlowTuple(src, dst, None, None, fields, counters)
        if proto == "gre":
            return FlowTuple(src, dst, None, None, (("srckey", hex(draw(port))), ("dstkey", hex(draw(port)))), counters)
        return FlowTuple(src, dst, None, None, (), counters)

    original, reply = flow(), flow()
    flags: list[str] = []
    if draw(st.booleans()):
        flags.append("UNREPLIED")
    after = draw(st.sampled_from([None, "ASSURED", "OFFLOAD", "HW_OFFLOAD"]))
    if after:
        flags.append(after)
    timeout = None if after == "OFFLOAD" and draw(st.booleans()) else draw(st.integers(0, 432000))
    state = draw(st.sampled_from(_STATES[proto])) if proto in _STATES else None
    fields: list[tuple[str, str]] = []
    for key, values in (("secmark", st.integers(0, 2**32 - 1).map(str)), ("secctx", _TEXT_VALUE),
                        ("delta-time", st.integers(0, 10**6).map(str)), ("helper", _TEXT_VALUE),
                        ("use", st.integers(0, 9).map(str)), ("id", st.integers(0, 2**32 - 1).map(str)),
                        ("labels", _TEXT_VALUE)):
        if draw(st.booleans()):
            fields.append((key, draw(values)))
    mark = draw(st.none() | st.integers(0, 2**32 - 1))
    zone = draw(st.none() | st.integers(0, 65535))
    return ConntrackEntry(family, proto, number, state, timeout, original, reply, tuple(flags), mark, zone,
                          tuple(fields))


@SETTINGS
@given(st.text(max_size=400))
def test_any_text_raises_only_iptrace_errors(text: str) -> None:
    try:
        load(text)
        load(text, lenient=True)
    except IptraceError:
        pass


@SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_raise_only_iptrace_errors(data: bytes) -> None:
    try:
        load(data)
    except IptraceError:
        pass


@TABLES
@given(st.lists(entries(), min_size=1, max_size=8), st.sampled_from(["plain", "extended", "proc"]))
def test_generated_entries_survive_a_round_trip(generated: list[ConntrackEntry], form: str) -> None:
    if form == "plain":
        text = format_table(generated)
    else:
        text = "\n".join(format_entry(e, extended=True, proc=form == "proc") for e in generated) + "\n"
    assert list(load(text).entries()) == generated


_DAMAGE = string.digits + "abcdefx.:= [Z-"


@TABLES
@given(st.lists(entries(), min_size=2, max_size=6), st.data())
def test_a_damaged_line_is_read_exactly_as_lark_reads_it_alone(generated: list[ConntrackEntry],
                                                               data: st.DataObject) -> None:
    # Same-shaped neighbours first, so that the damaged line meets the fast path with its shape cached.
    lines = [format_entry(e) for e in generated]
    lines += lines
    i = data.draw(st.integers(len(generated), len(lines) - 1), label="line")
    line = lines[i]
    j = data.draw(st.integers(0, len(line) - 1), label="column")
    lines[i] = line[:j] + data.draw(st.sampled_from(_DAMAGE), label="char") + line[j + 1:]
    try:
        alone = list(load(lines[i] + "\n").entries())
    except ParseError as exc:
        try:
            load("\n".join(lines) + "\n")
        except ParseError as whole:
            assert whole.line == i + 1 and whole.column == exc.column
            # Alone, the line is the file's first (and last): the reader adds a hint about the whole file.
            assert exc.reason.startswith(whole.reason), (whole.reason, exc.reason)
        else:
            raise AssertionError(f"line {i + 1} was accepted in the table but refused alone: {exc}") from None
        return
    table = load("\n".join(lines) + "\n")
    assert [table.entry_at(i + 1)] == alone


def _lark_tokens(text: str) -> tuple[str, list[tuple[object, ...]]] | None:
    """The kind of line and lark's own tokens, as `_fields`; `grammar.tokens` gives the same as Words."""
    try:
        tree = grammar.parse_line(text, source="ct.txt", line_no=1)
    except ParseError:
        return None
    kind, words = grammar.tokens(tree)
    node = tree.children[0]
    assert isinstance(node, Tree)
    toks = [t if isinstance(t, Token) else t.children[0] for t in node.children]
    assert [_fields(w) for w in words] == [_fields(t) for t in toks]
    return kind, [_fields(t) for t in toks]


def _fields(t: Token | grammar.Word) -> tuple[object, ...]:
    # (repr too: an error message may show a token as lark's Token shows itself)
    return (t.type, str(t), repr(t), t.start_pos, t.line, t.column, t.end_line, t.end_column, t.end_pos)


# Lines of conntrack's words in the grammar's order (family, protocol, timeout, state, fields and flags), each
# slot sometimes left out or holding a piece that looks like a word but is not, mostly between single spaces.
_ODD = ["", "conntrack", "#x", "Tcp", "x-y", "a_b", "1a", "[", "]", "[]", "[a]b]", "=", "=1", "A=1", "v1.4.7",
        "(conntrack-tools):", "[start=Mon", "src", "x-y=", "a_b=1", "5", "TIME_WAIT"]
_SLOTS = [["ipv4", "ipv6", ""], ["2", "10", ""], ["tcp", "udp", "icmp"], ["6", "17", "1"], ["431999", "29", ""],
          ["ESTABLISHED", "SYN_SENT", ""], *[["src=10.0.0.1", "dport=53", "mark=0", "[ASSURED]", "[UNREPLIED]", ""]] * 4]
_SEPARATOR = st.sampled_from([" "] * 60 + ["  ", "\t", "\r", "\x0b", "\x1c", "\xa0", "é", ""])


@st.composite
def _lines(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(["", " "]))
    for slot in _SLOTS:
        odd = draw(st.sampled_from([False] * 9 + [True]))
        text += draw(st.sampled_from(_ODD if odd else slot)) + draw(_SEPARATOR)
    return text


@SETTINGS
@given(_lines())
def test_the_fast_tokenizer_reads_a_line_as_lark_does_or_leaves_it_to_lark(text: str) -> None:
    found = grammar.fast_tokens(text)
    if found is not None:
        assert _lark_tokens(text) == (found[0], [_fields(t) for t in found[1]])


@SETTINGS
@given(st.lists(entries(), min_size=1, max_size=3), st.sampled_from(["plain", "extended", "proc"]))
def test_the_fast_tokenizer_reads_every_printed_entry(generated: list[ConntrackEntry], form: str) -> None:
    for e in generated:
        text = format_entry(e, extended=form != "plain", proc=form == "proc")
        found = grammar.fast_tokens(text)
        assert found is not None and _lark_tokens(text) == (found[0], [_fields(t) for t in found[1]])
    for text in ("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.", "# conntrack -L -f ipv6",
                 "  conntrack v (conntrack-tools):", " #"):
        found = grammar.fast_tokens(text)
        assert found is not None and _lark_tokens(text) == (found[0], [_fields(t) for t in found[1]])
    for text in ("conntrack v1.4.7 (conntrack-tools):\tfailed", "conntrack 6 src=1", "conntrack v1.4.7 x"):
        assert grammar.fast_tokens(text) is None


def test_a_table_conntrack_prints_is_read_without_importing_lark(tmp_path: Path) -> None:
    # (lark and the grammar files' module cost ~28 ms to import: they are imported for a line lark's parser must
    # judge, which still names the column)
    table = tmp_path / "ct.txt"
    table.write_text("tcp      6 431999 ESTABLISHED src=10.244.1.10 dst=10.96.0.1 sport=40000 dport=443 "
                     "src=192.168.49.2 dst=10.244.1.10 sport=6443 dport=40000 [ASSURED] mark=0 use=1\n"
                     "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n")
    code = ("import sys; from iptrace.conntrack import load_path\n"
            "late = lambda: [m for m in ('lark', 'iptrace.grammars') if m in sys.modules]\n"
            "table = load_path(sys.argv[1]); print(len(table), late())\n"
            "try:\n    load_path(sys.argv[2])\nexcept Exception as exc:\n    print(exc, late())")
    damaged = tmp_path / "damaged.txt"
    damaged.write_text(table.read_text().replace("src=", "src-", 1))
    out = subprocess.run([sys.executable, "-c", code, str(table), str(damaged)], capture_output=True, text=True,
                         check=True)
    with pytest.raises(ParseError) as exc:
        load(damaged.read_text(), source=str(damaged))
    assert out.stdout.splitlines() == ["1 []", f"{exc.value} ['lark', 'iptrace.grammars']"]


_OCTETS = st.sampled_from(["0", "1", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "300", "999",
                           "00", "01", "010", "0255", "1000", "", "٣", "+1", " 1"])


@SETTINGS
@given(st.lists(_OCTETS, min_size=3, max_size=5), st.sampled_from(["", "/24", "%eth0", ".", ":"]))
def test_the_fast_ipv4_check_accepts_only_what_ipaddress_accepts(octets: list[str], tail: str) -> None:
    text = ".".join(octets) + tail
    if _IPV4.fullmatch(text):
        assert ipaddress.ip_address(text).version == 4
    elif len(octets) == 4 and not tail and all(o.isascii() and o.isdigit() and len(o) <= 3 for o in octets):
        # (four plain octets it refuses: a leading zero or one over 255, as ipaddress refuses them)
        with pytest.raises(ValueError):
            ipaddress.ip_address(text)


_PORT_WORDS = st.one_of(st.integers(0, 99999).map(lambda n: f"sport={n}".encode()),
                        st.sampled_from([b"sport=", b"sport=0080", b"sport=000080", b"sport=1a", b"sport==1",
                                         b"s1port=1", b"dport=1", b"sport=123456", b"sport=\x00"]))


@SETTINGS
@given(st.lists(_PORT_WORDS, min_size=1, max_size=6))
def test_a_port_column_is_accepted_only_when_every_word_is_a_port(column: list[bytes]) -> None:
    together = _number_column(column, b"sport=", b"65535")
    assert not together or all(_port(w, b"sport=") for w in column)
    # Plain numbers of at most five digits: exactly the ports.
    if all(w[6:].isdigit() and len(w) <= 11 and w[6:7] != b"0" for w in column if w.startswith(b"sport=")):
        assert together == all(w.startswith(b"sport=") and w[6:].isdigit() and int(w[6:]) <= 65535
                               for w in column)


@SETTINGS
@given(st.sampled_from([vocabulary.U8, vocabulary.U16, vocabulary.U32, vocabulary.U64]), st.data())
def test_a_number_column_is_accepted_only_when_every_word_is_a_number_of_its_kind(kind: str,
                                                                                  data: st.DataObject) -> None:
    limit = vocabulary.NUMBER_LIMITS[kind]
    near = st.integers(0, 10 * limit + 9) | st.integers(max(0, limit - 20), limit + 20) | st.integers(0, 999)
    words = near.map(lambda n: f"bytes={n}".encode()) | st.sampled_from([b"bytes=", b"bytes=007", b"bytes=1x"])
    column = data.draw(st.lists(words, min_size=1, max_size=6))
    together = _number_column(column, b"bytes=", str(limit).encode())
    valid = all(w.startswith(b"bytes=") and vocabulary.check_value(kind, w[6:].decode()) for w in column)
    assert not together or valid
    # Plain numbers (no leading zeros, which only a word alone may have): exactly the numbers of the kind.
    if all(w[6:].isdigit() and w[6:7] != b"0" for w in column):
        assert together == valid


@SETTINGS
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")), min_size=1, max_size=120),
       st.lists(st.integers(0, 119), max_size=6), st.integers(1, 200), st.randoms(use_true_random=False))
def test_a_line_asked_alone_is_the_line_whatever_its_block_and_window(
        lines: list[bytes], cuts: list[int], window: int, rng: random.Random) -> None:
    """Lines splits only the window (of whole lines) around a line asked for: asked in any order, at any window
    size, with blocks starting anywhere the reader may start them, every line is the file's line."""
    data = b"\n".join(lines)
    firsts = sorted({1, *(c + 1 for c in cuts if c < len(lines))})
    starts = [sum(len(line) + 1 for line in lines[:f - 1]) for f in firsts] + [len(data) + 1]
    numbers = list(range(1, len(lines) + 1))
    rng.shuffle(numbers)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(table, "_WINDOW", window)
        found = table.Lines(data, starts, firsts)
        assert [found[n] for n in numbers] == [lines[n - 1] for n in numbers]
        assert found[0] == b""
