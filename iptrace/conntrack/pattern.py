"""The regular expression of one shape's lines, so that the reader checks whole runs of lines in C.

A line's shape (shape.py) is known once lark and the vocabulary have read its first line. Every other line of its
key differs from that first line only in its values, so one regular expression says exactly which of them the
reader would accept with that shape: the first line's text with each value replaced by what the vocabulary allows
for its kind (`VALUES`: an IPv4 address as ipaddress reads one, a number of at most its kind's limit, …). The
reader joins the expressions of every key into one and matches it over a block of lines (`Fast`): a valid line
makes no Python object at all; a line it does not match (another shape, an IPv6 address, a damaged line, a
number conntrack never prints, such as one with leading zeros) is read as before, by the shapes and lark.

What each value may be comes from the vocabulary; the structure from the first line lark read: a key whose words
the expressions cannot say exactly (free text, IPv6) gets none, and its lines are read as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from iptrace.conntrack import vocabulary as v
from iptrace.conntrack.layout import CONSTANT_ROLES, STATE, Layout
from iptrace.conntrack.shape import Shape


def at_most(limit: int) -> bytes:
    """Decimal numbers from 0 to `limit` without leading zeros (what check_value accepts, less the zeros), to be
    followed by a non-digit: a tree of their digits (`_after`), each alternative begun by its own digits, so that
    the matcher enters one alternative at most per digit (an alternative entered and left costs as much as one
    taken: a port's value as a flat list of widths cost ~6% of a 100,000-line table's scan). For limits of ten
    digits or more (32- and 64-bit counters) only the shorter ones: a wider value (never seen in practice) is left
    to the shapes, and the expression stays short (one per value of every line). Digits are `[0-9]` (a range,
    which the matcher checks faster than the class `\\d`), every repetition possessive (a non-digit follows:
    giving a digit back never matches)."""
    digits = str(limit)
    width = len(digits)
    if width >= 10:
        return f"(?:[1-9][0-9]{{0,{width - 2}}}+|0)".encode()
    top = int(digits[0])
    alternatives = []
    if top > 1:
        alternatives.append(_digit(1, top - 1) + _more(width - 1))
    alternatives.append(digits[0] + _after(digits, 1))
    if top < 9 and width > 1:
        alternatives.append(_digit(top + 1, 9) + _more(width - 2))
    if top:
        alternatives.append("0")
    return ("(?:" + "|".join(alternatives) + ")").encode()


def _after(digits: str, i: int) -> str:
    """What may follow `digits[:i]` in a number at most `digits`: nothing, a lower digit and any digits up to
    the limit's width, its digit and what may follow that, or a higher digit and any digits short of its width."""
    rest = len(digits) - i
    if rest == 0:
        return ""
    d = int(digits[i])
    alternatives = []
    if rest == 1:
        alternatives.append(_digit(0, d))
    else:
        if d > 0:
            alternatives.append(_digit(0, d - 1) + _more(rest - 1))
        alternatives.append(digits[i] + _after(digits, i + 1))
        if d < 9:
            alternatives.append(_digit(d + 1, 9) + _more(rest - 2))
    if len(alternatives) == 1 and alternatives[0].endswith("]") and alternatives[0].count("[") == 1:
        return alternatives[0] + "?+"
    return "(?:" + "|".join(alternatives) + ")?+"


def _more(n: int) -> str:
    """Up to `n` more digits."""
    return "" if n <= 0 else "[0-9]?+" if n == 1 else f"[0-9]{{0,{n}}}+"


def _digit(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


# One octet of an IPv4 address as ipaddress reads it (0 to 255, no leading zeros), alternatives told apart by their
# first digit; every octet is followed by `.` or by what follows the address (never a digit). Digits as `[0-9]`
# (see at_most).
_OCTET = rb"(?:1[0-9]{0,2}+|2[0-4][0-9]|25[0-5]|[2-9][0-9]?+|0)"
IPV4 = rb"\.".join([_OCTET] * 4)

# What a value of each kind may be, as the reader checks it (vocabulary.check_value; addresses: IPv4 only).
VALUES: dict[str, bytes] = {kind: at_most(limit) for kind, limit in v.NUMBER_LIMITS.items()}
VALUES[v.ADDRESS] = IPV4
VALUES[v.HEX16] = rb"0x[0-9a-f]{1,4}"
VALUES[v.U32_COMMA] = VALUES[v.U32] + rb","

_PIECES = re.compile(rb" +|[^ ]+")
# A piece of an expression (a word, or the spaces between two) and whether it is a capturing group.
Part = tuple[bytes, bool]
_PRINTABLE = re.compile(rb"[ -~]*")


class LinePattern:
    """A key's first line as pieces: separators (runs of spaces) as they are, constant words as they are, and
    value words as their key's prefix and the value's kind. (A plain slots class: a frozen dataclass costs
    ~0.4 ms to create at import, and these are neither compared nor copied.)"""

    __slots__ = ("pieces", "shape", "state_at")

    def __init__(self, shape: Shape, pieces: tuple[tuple[int, bytes, str | None], ...], state_at: int) -> None:
        self.shape = shape
        self.pieces = pieces  # (word index or -1 for spaces, literal text, value kind)
        self.state_at = state_at  # the state word (ESTABLISHED, …), or -1

    def parts(self, values: dict[int, bytes] | None = None, before: dict[int, bytes] | None = None,
              groups: Sequence[int] = (), state: bytes | None = None) -> tuple[Part, ...]:
        """The line's expression a piece at a time, each with whether it is a capturing group. `values`: a word's
        value as this literal instead; `before`: an expression (a lookahead) put before a word's value; `groups`:
        words captured whole, in this order; `state`: the state word as this expression instead."""
        out = []
        for word, text, kind in self.pieces:
            piece = state if state is not None and word == self.state_at >= 0 else re.escape(text)
            if kind is not None:
                value = values.get(word) if values else None
                piece += (before or {}).get(word, b"") + (re.escape(value) if value is not None else VALUES[kind])
            captured = word in groups and word >= 0
            out.append((b"(" + piece + b")" if captured else piece, captured))
        return tuple(out)

    def between(self, first: int, last: int, values: dict[int, bytes]) -> bytes:
        """From word `first`'s value through word `last` and the separator after it, with these values as
        literals: what a lookahead put before `first`'s value looks for."""
        out: list[bytes] = []
        done = False
        for word, text, kind in self.pieces:
            if word == first:
                out.append(self._value(word, kind, values))
            elif out and word < 0:
                out.append(re.escape(text))
                if done:
                    return b"".join(out)
            elif out:
                out.append(re.escape(text) + (self._value(word, kind, values) if kind is not None else b""))
                done = word == last
        return b"".join(out) + rb"(?:\n|\Z)"

    @staticmethod
    def _value(word: int, kind: str | None, values: dict[int, bytes]) -> bytes:
        value = values.get(word)
        return re.escape(value) if value is not None else VALUES[kind or ""]


def line_pattern(raw: bytes, layout: Layout, shape: Shape) -> LinePattern | None:
    """The pieces of a key's first line (read as `layout`), or None when an expression could not say exactly which
    lines of the key the reader accepts: a character other than printable ASCII and spaces, a value of a kind
    without an expression (free text), an address that is not IPv4, or a family other than IPv4."""
    if layout.family not in (None, "ipv4") or _PRINTABLE.fullmatch(raw) is None:
        return None
    pieces: list[tuple[int, bytes, str | None]] = []
    word, state = 0, -1
    for found in _PIECES.findall(raw):
        if found[0] == 32:  # (b" ")
            pieces.append((-1, found, None))
            continue
        if word >= len(layout.roles):
            return None
        role = layout.roles[word]
        if role.role in CONSTANT_ROLES:
            pieces.append((word, found, None))
            if role.role == STATE:
                state = word
        else:
            prefix = role.prefix.encode()
            if role.kind not in VALUES or not found.startswith(prefix):
                return None
            if role.kind == v.ADDRESS and re.fullmatch(IPV4, found[len(prefix):]) is None:
                return None
            pieces.append((word, prefix, role.kind))
        word += 1
    if word != len(layout.roles) or word != shape.words:
        return None
    return LinePattern(shape, tuple(pieces), state)


# A block's lines the joined expression refuses are read as before, one at a time; once this many of them are more
# than the lines it took (an IPv6 table, a format of free text), the rest of the block goes to the shapes at once.
_REFUSED_ALONE = 64
# Where a state word goes in an expression before the state words of its keys are put in (lines are printable).
_STATE = b"\x00"


class Fast:
    """The keys' expressions joined (one alternative per key), matched over a block of lines: runs of lines it
    takes are entries as the key's first shape reads them; the lines of the flows asked about (`focus`: per
    protocol, the `dst=` and `dport=` words asked with it, as DstIndex.focus_words) are taken one at a time with
    the words Shape.key picks; the others are left to the reader."""

    def __init__(self, patterns: Sequence[LinePattern],
                 focus: dict[str, tuple[frozenset[bytes], frozenset[bytes]]]) -> None:
        # Keys whose lines differ only in their state word (a TCP flow's ESTABLISHED, TIME_WAIT, …) make one
        # alternative, the state words its own: shorter to compile, and a line's header is read once.
        plain: dict[tuple[Part, ...], list[bytes]] = {}  # the expression, a placeholder for the state -> states
        kept: list[tuple[tuple[Part, ...], list[int]]] = []  # (expression, its groups' numbers once joined)
        leaves: list[tuple[Shape, bytes, bytes, list[int], list[int]]] = []
        for p in patterns:
            shape = p.shape
            words = focus.get(shape.proto) if shape.dport >= 0 else None
            if words is not None and shape.dport < shape.dst:
                continue  # (no such layout: a lookahead from dst= through dport= could not be said; shapes read it)
            before = None
            if words is not None:
                pairs = [(d, q) for d in sorted(words[0]) for q in sorted(words[1])]
                values = [{shape.dst: d[len(b"dst="):], shape.dport: q[len(b"dport="):]} for d, q in pairs]
                ahead = b"|".join(p.between(shape.dst, shape.dport, vs) for vs in values)
                before = {shape.dst: b"(?!" + ahead + b")"}
            state = [text for word, text, _ in p.pieces if word == p.state_at] if p.state_at >= 0 else []
            plain.setdefault(p.parts(before=before, state=_STATE), []).extend(state)
            if words is None:
                continue
            others = sorted(set(shape.key_at[2:]))
            for (d, q), vs in zip(pairs, values, strict=True):
                numbers: list[int] = []
                kept.append(((*p.parts(values=vs, groups=others), (b"()", True)), numbers))
                leaves.append((shape, d, q, others, numbers))
        alternatives = [(tuple((text.replace(_STATE, b"(?:" + b"|".join(map(re.escape, states)) + b")"), group)
                               for text, group in e) if states else e, [])
                        for e, states in plain.items()]
        # Alternatives that begin alike share their beginning (a trie of pieces): a line is read once up to where
        # its key differs from the others' (a UDP line without [UNREPLIED], a line of an asked flow, which the
        # loop refuses, at its dport= word), and the expression is shorter to compile. The same lines match.
        counter = [0]
        expression = rb"(?:" + _factor(alternatives, 0, counter) + rb"(?:\n|\Z))*+"
        if kept:
            expression += rb"(?:" + _factor(kept, 0, counter) + rb"(?:\n|\Z))?"
        # The marker group closing each kept alternative -> (shape, dst word, dport word, the groups of the other
        # words Shape.key picks, in its order).
        self.kept: dict[int, tuple[Shape, bytes, bytes, tuple[int, ...]]] = {}
        for shape, d, q, others, numbers in leaves:
            number = dict(zip(others, numbers, strict=False))
            self.kept[numbers[-1]] = (shape, d, q, tuple(number[w] for w in shape.key_at[2:]))
        self.regex = re.compile(expression)

    def scan(self, data: bytes, pos: int, stop: int, first: int) -> Scan:
        """The lines of data[pos:stop] (line `first` is its first) as the expression takes them (see Scan)."""
        kept = self.kept
        count, find = data.count, data.find
        out = Scan()
        out.rest = stop
        # Per marker: the words after dst, dport -> their lines (the loop below runs once per kept line: it does
        # no more than it must, ~14,000 times in a 100,000-entry table asked about DNS).
        groups: dict[int, dict[tuple[bytes, ...], list[int]]] = {marker: {} for marker in kept}
        words_at = {marker: found[3] for marker, found in kept.items()}
        n = start = first  # (`start`: where the current run of lines taken began)
        while pos < stop:
            scanner = self.regex.scanner(data, pos, stop)
            # (one match per kept line, from where the last one ended: a run of other lines, then the kept one)
            for m in iter(scanner.match, None):
                end = m.end()
                if end == pos:
                    break
                n += count(b"\n", pos, end)
                if end == stop and data[end - 1] != 10:
                    n += 1  # (the block's last line, without its newline)
                pos = end
                marker = m.lastindex
                if marker is None:
                    break
                words = m.group(*words_at[marker])
                by_words = groups[marker]
                lines_of = by_words.get(words)
                if lines_of is None:
                    by_words[words] = [n - 1]
                else:
                    lines_of.append(n - 1)
            if pos >= stop:
                break
            if n > start:
                out.runs.append((start, n))
            start = n
            refused = len(out.numbers)
            if refused >= _REFUSED_ALONE and refused > n - first - refused:  # (more refused than taken)
                out.rest = pos  # (the shapes read the rest of the block)
                break
            end = find(b"\n", pos, stop)
            if end < 0:
                end = stop
            out.numbers.append(n)
            out.texts.append(data[pos:end])
            n += 1
            start = n
            pos = end + 1
        if n > start:
            out.runs.append((start, n))
        out.rest_line = n
        if pos > stop:
            out.rest = pos  # (past the block's last line, which the shapes read: nothing is left after it)
        for marker, by_words in groups.items():
            if not by_words:
                continue
            shape, dst, dport, _ = kept[marker]
            into = out.kept.setdefault(shape, {})
            for words, lines in by_words.items():
                # (keys of one shape, as a line indented or spaced otherwise than its flow's others, share a group:
                # its lines in file order)
                found = into.get((dst, dport, *words))
                if found is None:
                    into[(dst, dport, *words)] = lines
                else:
                    found += lines
                    found.sort()
        return out


def _factor(alternatives: Sequence[tuple[Sequence[Part], list[int]]], at: int, counter: list[int]) -> bytes:
    """Alternatives (pieces from `at` on, all alike before it) as one expression, their common beginnings
    written once, in the order they first appear; the number of each capturing group is appended to the list
    of every alternative it is part of (`counter`: the groups numbered before)."""
    out = []
    while True:
        heads: dict[Part, list[tuple[Sequence[Part], list[int]]]] = {}
        ended = False
        for a in alternatives:
            if len(a[0]) > at:
                heads.setdefault(a[0][at], []).append(a)
            else:
                ended = True
        if len(heads) != 1 or ended:
            break
        (piece, group), = heads
        if group:
            counter[0] += 1
            for _, numbers in alternatives:
                numbers.append(counter[0])
        out.append(piece)
        at += 1
    branches = []
    for (piece, group), some in heads.items():
        if group:
            counter[0] += 1
            for _, numbers in some:
                numbers.append(counter[0])
        branches.append(piece + _factor(some, at + 1, counter))
    if ended and branches:
        branches.append(b"")  # (an alternative that ends where others go on: tried last)
    out.append(b"(?:" + b"|".join(branches) + b")" if len(branches) > 1 else b"".join(branches))
    return b"".join(out)


class Scan:
    """What `Fast.scan` found in a block: `runs` of lines taken, as (first, stop) line numbers; the lines left to
    the shapes (`numbers`, `texts`); `rest`, where the shapes take over the rest of the block (a byte offset: the
    block's end if they need not, beyond it once its last line was left to them) and its line number
    `rest_line`; the kept lines by shape, grouped by the words Shape.key picks (each list in file order)."""

    __slots__ = ("kept", "numbers", "rest", "rest_line", "runs", "texts")

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []
        self.numbers: list[int] = []
        self.texts: list[bytes] = []
        self.rest = 0
        self.rest_line = 0
        self.kept: dict[Shape, dict[tuple[bytes, ...], list[int]]] = {}
