"""Text → ConntrackTable: `conntrack -L` (plain, `-o extended`, …) and /proc/net/nf_conntrack.

A node's table can hold 100,000 flows (16 MB), so lines are read faster than a tokenizer would split them.
Every line is keyed by its *shape*: the line with every character a value is made of (digits, hex digits, `.`
and `:`) deleted. The grammar reads one line of each new key (grammar.fast_tokens, as lark would; lark itself for
anything unusual, which validates its structure and gives exact error columns) and `read_layout` says what each
word is.

When the caller says which flows it will ask about (`load(focus=…)`, as explain does), the key's other lines are
checked in C: its first line becomes a regular expression with each value replaced by what the vocabulary allows
for its kind (pattern.py), the keys' expressions are joined once the first (small) block is read, and each later
block (~1 MB) is matched by them a run of lines at a time (`_Reader.fast_block`): a line they take makes no Python
object; only the lines of the asked flows are taken one at a time, with the words the table groups them by.

Everything else is read by shapes (`_Reader.block`): the lines the expressions leave (a new key, an IPv6 address,
a damaged line), the first block, and the whole table when no flow is named (audit asks about every destination,
so its lines are indexed while read). Lines of one key are checked together, a chunk at a time, a column at a
time (`bulk`: one split of the whole chunk, then the same word of every line as one list): constant words by
counting, value words by set membership (a new word is checked once, then remembered), numbers nearly unique per
flow by a few byte operations over the whole column (columns.py). The few lines a chunk refuses go one by one
(`line`); a line that fails goes through lark and the vocabulary again, which name the column and what was
expected. The whole file is checked; nothing is sampled: every line is taken by its key's expression or read by
the shapes.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from operator import and_, itemgetter, not_
from pathlib import Path
from typing import Any

from iptrace.conntrack import grammar
from iptrace.conntrack import vocabulary as v
from iptrace.conntrack.columns import _LIMITS, _many_numbers, _number_column, _port
from iptrace.conntrack.layout import CONSTANT_ROLES, Layout, read_layout
from iptrace.conntrack.pattern import Fast, LinePattern, line_pattern
from iptrace.conntrack.shape import VALUE_CHARS, Shape, split_words
from iptrace.conntrack.table import ConntrackTable, DstIndex, Lines, Skipped
from iptrace.dumpfile import read_bytes
from iptrace.errors import ParseError
from iptrace.text import utf8_input

_TRAILER_COUNT = re.compile(r"\): (\d+) flow entries have been shown\.\s*$")
# Lines of one key checked at once first, then twice as many each time up to the last size (see _Reader.read):
# the words of a chunk are freed before the next one's are made, so that memory is reused, not taken anew. A
# chunk's ~9,000 words (~0.5 MB) stay in the processor's cache while every column of them is checked: chunks of
# 4,096 lines were ~10% slower.
_FIRST_CHUNK, _LAST_CHUNK = 64, 512
# The file is read a block of about this many bytes (~6,500 lines) at a time (see _Reader.read).
_BLOCK_BYTES = 1 << 20
# At most this many keys get an expression of their lines (pattern.Fast); the lines of others are read by shapes.
_PATTERN_KEYS = 64
# Keys found after the expression was made join it once a block leaves more than this many lines to the shapes.
_LEFT_FOR_NEW_KEYS = 256
# The first block, read before there is any expression, is this small (~400 lines).
_FIRST_BLOCK = 1 << 16

# Keys whose value is of different kinds in different places (icmp's id= is 16 bits, the entry's id= 32): their
# words are proven per kind.
_KINDS_OF_KEY: dict[str, set[str]] = {}
for _key, _kind in [*v.ADDRESS_FIELDS, *(f for fields in v.TUPLE_FIELDS.values() for f in fields),
                    *(f for fields in v.PROTO_INFO_FIELDS.values() for f in fields),
                    *(f for fields in v.DIRECTION_FIELDS.values() for f in fields.items()), *v.ENTRY_FIELDS.items()]:
    _KINDS_OF_KEY.setdefault(_key, set()).add(_kind)
AMBIGUOUS_KEYS = frozenset(k for k, kinds in _KINDS_OF_KEY.items() if len(kinds) > 1)
_AMBIGUOUS = frozenset(kind for k in AMBIGUOUS_KEYS for kind in _KINDS_OF_KEY[k])


def read_file(path: str | Path) -> tuple[bytes, str]:
    """A conntrack file's bytes (`-` = stdin, `.gz` decompressed) and its display name."""
    data, name = read_bytes(path, "the output of `conntrack -L`",
                            "the output of `conntrack -L` (or /proc/net/nf_conntrack)")
    return utf8_input(data), name


def _value(word: bytes, prefix: bytes, kind: str) -> int:
    """What a value word (`key=value`, or a bare timeout) is: 4 or 6 for an address of that version, 1 for
    another value of its kind, 0 for no valid value."""
    if not word.startswith(prefix):
        return 0
    try:
        value = word[len(prefix):].decode("ascii")
    except UnicodeDecodeError:
        return 0
    if kind == v.ADDRESS:
        if _IPV4.fullmatch(value):
            return 4
        try:
            return ipaddress.ip_address(value).version
        except ValueError:
            return 0
    return 1 if v.check_value(kind, value) else 0


# An IPv4 address as ipaddress reads one (four decimal octets up to 255, no leading zeros), ~5x faster: a node's
# table has thousands of addresses to prove. What it refuses, ipaddress judges.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


class _Checker:
    """Checks the main value words of a line that its proven set did not hold, and remembers the good ones.
    Proven words live in one set per family ("ipv4", "ipv6": its addresses, and the other values, which are
    proven for both), so that one lookup per line also proves that a line's addresses are of one family."""

    def __init__(self, valid: dict[str, set[bytes]], kinds: Sequence[tuple[bytes, str]], family: str | None,
                 own: str | None = None) -> None:
        self.valid = valid
        self.kinds = tuple(kinds)  # (b"key=", kind) per word, in getter order
        self.family = family
        self.own = own  # a key of several kinds: its own set, per kind

    def __call__(self, words: Sequence[bytes]) -> bool:
        valid = self.valid
        v4, v6 = valid["ipv4"], valid["ipv6"]
        own = valid[self.own] if self.own else None
        versions = set()
        new: list[bytes] = []
        for word, (prefix, kind) in zip(words, self.kinds, strict=True):
            if kind == v.ADDRESS:
                # A line's addresses must all be of one family, so proven ones count too.
                if word in v4:
                    versions.add(4)
                    continue
                if word in v6:
                    versions.add(6)
                    continue
            elif word in (own if own is not None else v4):
                continue
            found = _value(word, prefix, kind)
            if not found:
                return False
            if kind == v.ADDRESS:
                versions.add(found)
                valid[f"ipv{found}"].add(word)
            else:
                new.append(word)
        for word in new:
            if own is not None:
                own.add(word)
            else:
                v4.add(word)
                v6.add(word)
        if len(versions) > 1:
            return False
        return not (self.family and versions and versions != {4 if self.family == "ipv4" else 6})


class _Reader:
    def __init__(self, source: str, lenient: bool, focus: frozenset[tuple[bytes, bytes, str]]) -> None:
        self.source = source
        self.lenient = lenient
        self.focus = focus
        self.shapes: dict[bytes, list[Shape]] = {}
        self.compiled: dict[tuple[Any, ...], Shape] = {}
        # Words proven valid (see _Checker): per family, and per kind for keys of several kinds.
        self.valid: dict[str, set[bytes]] = {k: set() for k in ("ipv4", "ipv6", *_AMBIGUOUS)}
        self.ports: set[bytes] = set()  # port words of columns with few values (a source port's are not kept)
        self.skipped: list[Skipped] = []
        self.trailers: list[tuple[int, int]] = []  # (line, count)
        self.entries = sys.maxsize  # the first line read as an entry
        # Errors, with whether they may come from a file that is not conntrack's at all (see finish).
        self.failures: list[tuple[ParseError, bool]] = []
        self.limit = sys.maxsize  # strict mode: the first failed line so far (nothing after it is read)
        self.nul_free = False  # no NUL byte in the file (see split_words)
        # A key's first line as an expression (see pattern.py), when the caller asks about a few flows (`focus`):
        # the lines the expressions take are not indexed by destination while they are read, so a question about
        # every destination (audit) finds their words then, at more cost than the shapes' columns would have.
        self.expressions = bool(focus) and _PATTERN_KEYS > 0
        self.patterns: dict[bytes, LinePattern] = {}
        self.fast: Fast | None = None  # their expressions joined, from the end of the block that found the last
        self.stale = False  # a key got an expression since `fast` was made

    def fail(self, exc: ParseError, *, maybe_other_file: bool = False) -> None:
        self.failures.append((exc, maybe_other_file))
        if not self.lenient:
            self.limit = min(self.limit, exc.line)

    def compile(self, layout: Layout, words: Sequence[bytes]) -> Shape:
        """The fast-path form of a layout with these constant words (one per layout and constants)."""
        shape = Shape(layout, words)
        known = self.compiled.get((layout, shape.consts))
        if known is not None:
            return known
        main: list[int] = []
        ports: list[int] = []
        others: dict[str, list[int]] = {}
        for i, r in enumerate(layout.roles):
            if r.role in CONSTANT_ROLES:
                continue
            if r.kind == v.PORT:
                ports.append(i)
            elif r.key in AMBIGUOUS_KEYS:
                others.setdefault(r.kind, []).append(i)
            else:
                main.append(i)

        def kinds(positions: list[int]) -> list[tuple[bytes, str]]:
            return [(layout.roles[i].prefix.encode(), layout.roles[i].kind) for i in positions]

        # Every line has four addresses: the main group always has two positions or more, as itemgetter needs
        # to return a tuple; a group of one position is given twice.
        shape.main = itemgetter(*main)
        shape.main_at = tuple(main)
        shape.main_kinds = tuple(kinds(main))
        shape.ports_at = tuple((i, layout.roles[i].prefix.encode()) for i in ports)
        shape.others_at = tuple((tuple(zip(pos, kinds(pos), strict=True)), self.valid[kind])
                                for kind, pos in others.items())
        if layout.family is not None:
            shape.proven = self.valid[layout.family]
            shape.check = _Checker(self.valid, kinds(main), layout.family)
        else:
            # Plain `conntrack -L` prints no family: an IPv6 line is proven by the IPv6 set.
            shape.proven = self.valid["ipv4"]
            shape.check = _either(self.valid["ipv6"], _Checker(self.valid, kinds(main), None))
        shape.others = tuple((itemgetter(*(pos * 2 if len(pos) == 1 else pos)), self.valid[kind],
                              _Checker(self.valid, kinds(pos * 2 if len(pos) == 1 else pos), layout.family, kind))
                             for kind, pos in others.items())
        self.compiled[(layout, shape.consts)] = shape
        return shape

    def read(self, data: bytes) -> ConntrackTable:
        # (one look at the whole file costs less than counting NULs in every chunk the shapes read; with the
        # expressions they read a few chunks, each counting its own)
        self.nul_free = not self.expressions and b"\x00" not in data
        index = DstIndex(self.focus)  # the original destination's dst= word -> its lines
        irregular: dict[int, Any] = {}
        starts: list[int] = []  # where each block begins: its first byte, its first line's number
        firsts: list[int] = []
        seen: set[bytes] = set()  # keys whose lines an earlier block checked already
        pos, first, size = 0, 1, len(data)
        while first < self.limit:
            # A block of whole lines (the last one ends the file); the first is small, as the expressions are made
            # after it. Read by shapes, its lines and keys live while it is read only, so the next block's reuse
            # their memory (a table's worth of them held at once cost ~10% more).
            step = min(_BLOCK_BYTES, _FIRST_BLOCK) if pos == 0 and self.expressions else _BLOCK_BYTES
            end = data.find(b"\n", pos + step) if pos + step < size else -1
            stop = size if end < 0 else end
            starts.append(pos)
            firsts.append(first)
            if self.fast is None:
                lines = data[pos:stop].split(b"\n")
                count = left = len(lines)
                self.block(range(first, first + count), lines,
                           data[pos:stop].translate(None, VALUE_CHARS).split(b"\n"), first,
                           first + count - 1 if end < 0 else 0, seen, index, irregular)
            else:
                count, left = self.fast_block(data, pos, stop, first, end < 0, seen, index, irregular)
            if end < 0:
                break
            # The keys' expressions are joined once the first block is read (when another follows), and again
            # (~10 ms) when a block leaves many lines of new keys to the shapes (a few are read by them).
            if self.stale and (self.fast is None or left > _LEFT_FOR_NEW_KEYS):
                self.fast = Fast(list(self.patterns.values()), index.focus_words)
                self.stale = False
            pos, first = end + 1, first + count
        starts.append(size + 1)
        return self.finish(Lines(data, starts, firsts), index, irregular)

    def fast_block(self, data: bytes, pos: int, stop: int, first: int, final: bool, seen: set[bytes],
                   index: DstIndex, irregular: dict[int, Any]) -> tuple[int, int]:
        """The block data[pos:stop] through the keys' joined expression (line `first` is its first; `final`: it
        ends the file): the runs of lines it takes are indexed as runs (no word of theirs is split), the asked
        flows' lines with their words; the lines it leaves (and the rest of the block, when it leaves too many)
        are read by `block`. Returns how many lines the block has, and how many it left."""
        assert self.fast is not None
        found = self.fast.scan(data, pos, stop, first)
        for start, end in found.runs:
            index.add_run(start, end)
        for shape, groups in found.kept.items():
            index.add_groups(shape, groups)
        numbers, texts = found.numbers, found.texts
        count = found.rest_line - first
        if found.rest < stop or (found.rest == stop and (stop == pos or data[stop - 1] == 10)):
            more = data[found.rest:stop].split(b"\n")  # (or the block's last line, empty)
            numbers += range(found.rest_line, found.rest_line + len(more))
            texts += more
            count += len(more)
        if numbers:
            last = first + data.count(b"\n", pos, stop) if final else 0
            self.block(numbers, dict(zip(numbers, texts, strict=True)),
                       [t.translate(None, VALUE_CHARS) for t in texts], 0, last, seen, index, irregular)
        return count, len(numbers)

    def block(self, numbers: Sequence[int], lines: Sequence[bytes] | dict[int, bytes], keys: list[bytes],
              first: int, last: int, seen: set[bytes], index: DstIndex, irregular: dict[int, Any]) -> None:
        """Lines of one block (line `numbers[i]` is lines[numbers[i] - first], its key keys[i]; `last`: the
        file's last line, if this block holds it), in file order."""
        # Lines by key, each list in file order, the keys in the order they first appear: the lines of a key are
        # then checked together against its shape (`bulk`), by C-level maps instead of a loop body per line.
        groups: dict[bytes, list[int]] = {}
        for n, key in zip(numbers, keys, strict=True):
            found = groups.get(key)
            if found is None:
                groups[key] = [n]
            else:
                found.append(n)
        for key, numbers in groups.items():
            if numbers[0] >= self.limit:
                break  # (an earlier line failed: strict mode stops at it, see fail)
            rest = numbers
            if key not in self.shapes:
                # Line by line until one of them gives the key its first shape (lark reads that one).
                for k, n in enumerate(numbers):
                    if n >= self.limit:
                        break
                    self.line(n, lines[n - first], key, index, irregular, last=n == last)
                    if key in self.shapes:
                        rest = numbers[k + 1:]
                        break
                else:
                    continue
                if key not in self.shapes:
                    continue
            # In growing chunks: the lines `bulk` refuses for values not proven yet prove them (one at a time, in
            # `line`), so that the next chunk finds them proven; a table repeats its addresses and timeouts.
            shape, start = self.shapes[key][0], 0
            size = _LAST_CHUNK if key in seen else _FIRST_CHUNK
            seen.add(key)
            while start < len(rest) and rest[start] < self.limit:
                for n in self.bulk(key, shape, rest[start:start + size], lines, first, index):
                    if n >= self.limit:
                        break
                    self.line(n, lines[n - first], key, index, irregular, last=n == last)
                start += size
                size = min(size * 2, _LAST_CHUNK)

    def bulk(self, key: bytes, shape: Shape, numbers: list[int], lines: Sequence[bytes] | dict[int, bytes], base: int,
             index: DstIndex) -> list[int]:
        """Checks lines of one key against the key's first shape all at once (what `line` does for one), a column
        at a time (split_words: the same word of every line), and indexes those that pass (line n is
        lines[n - base]). Returns the others, in file order: another shape of the key, values not proven yet, or
        errors, for `line` to tell apart."""
        count = len(numbers)
        words = split_words(list(map(lines.__getitem__, map(base.__rsub__, numbers))), shape.words,
                            nul_free=self.nul_free)
        if words is None:
            return numbers  # (a line with another number of words: each is read alone)
        stride = shape.words + 1
        bad: set[int] = set()
        for at, const in zip(shape.constant_at, shape.consts, strict=True):
            column = words[at::stride]
            if column.count(const) != count:
                bad.update(compress(range(count), map(const.__ne__, column)))
        proven = shape.proven
        for at, (prefix, kind) in zip(shape.main_at, shape.main_kinds, strict=True):
            column = words[at::stride]
            first = column[0]
            if first == column[-1] and first in proven and column.count(first) == count:
                continue  # (mark=0, use=1, zone=…: one value, compared without hashing every word)
            if not proven.issuperset(column):
                # New values (addresses, timeouts) are checked once each, not once per line that holds them.
                new = set(column).difference(proven)
                if not _many_numbers(column, new, prefix, kind) and not self.prove(new, prefix, kind, proven):
                    bad.update(compress(range(count), map(not_, map(proven.__contains__, column))))
        ports = self.ports
        for at, prefix in shape.ports_at:
            column = words[at::stride]
            if ports.issuperset(column):
                continue  # (a Service's port: a few values; a client's source port fails at once, then below)
            if _number_column(column, prefix, _LIMITS[v.PORT]):
                if len(set(column[:64])) <= 16:
                    ports.update(column)
                continue
            bad.update(i for i, word in enumerate(column) if not _port(word, prefix))
        for positions, own in shape.others_at:
            # (icmp's id=: its own set of proven words, per kind)
            for at, (prefix, kind) in positions:
                column = words[at::stride]
                if not own.issuperset(column):
                    new = set(column).difference(own)
                    if _many_numbers(column, new, prefix, kind):
                        continue
                    own.update(w for w in new if _value(w, prefix, kind))
                    if not own.issuperset(column):
                        bad.update(compress(range(count), map(not_, map(own.__contains__, column))))
        destinations = words[shape.dst::stride]
        good = [i not in bad for i in range(count)] if bad else None
        focus = index.focus_words.get(shape.proto) if shape.dport >= 0 else None
        if focus is not None:
            # (the lines of the flows asked about: what flows_to will group, from words split already)
            wanted = list(map(focus[0].__contains__, destinations))
            if True in wanted:
                wanted = list(map(and_, wanted, map(focus[1].__contains__, words[shape.dport::stride])))
                if good is not None:
                    wanted = list(map(and_, wanted, good))
                if True in wanted:
                    index.add_focused(shape, list(compress(numbers, wanted)),
                                      zip(*[compress(words[at::stride], wanted) for at in shape.key_at], strict=True))
        if good is None:
            index.add(key, destinations, numbers)
            return []
        index.add(key, list(compress(destinations, good)), list(compress(numbers, good)))
        return [numbers[i] for i in sorted(bad)]

    def prove(self, words: set[bytes], prefix: bytes, kind: str, proven: set[bytes]) -> bool:
        """Remembers which of these words of one position are valid (what _Checker does a line at a time; an
        IPv6 address is proven for IPv6 lines only, so that one lookup still proves a line's family). Whether
        all of them are now in `proven` (the set the column is checked against)."""
        valid = self.valid
        for word in words:
            found = _value(word, prefix, kind)
            if kind == v.ADDRESS and found:
                valid[f"ipv{found}"].add(word)
            elif found:
                valid["ipv4"].add(word)
                valid["ipv6"].add(word)
        return proven.issuperset(words)

    def line(self, n: int, line: bytes, key: bytes, index: DstIndex, irregular: dict[int, Any], *,
             last: bool) -> None:
        """One line, against each shape of its key, else through lark (`slow`)."""
        candidates = self.shapes.get(key)
        if candidates is not None:
            words = line.split()
            for shape in candidates:
                if len(words) != shape.words or shape.constants(words) != shape.consts:
                    continue
                values = shape.main(words)
                if not shape.proven.issuperset(values) and not shape.check(values):
                    continue
                if not all(_port(words[at], prefix) for at, prefix in shape.ports_at):
                    continue
                if shape.others and not _others(shape, words):
                    continue
                _add_one(index, key, shape, words, n)
                return
            self.slow(n, line, key, index, irregular, last=last)
        elif line.strip():
            self.slow(n, line, key, index, irregular, last=last)

    def finish(self, lines: Lines, index: DstIndex, irregular: dict[int, Any]) -> ConntrackTable:
        """The table, once every line is read. Lines were read a key at a time: what is kept per line is put back
        in file order, and strict mode raises the first error in the file."""
        failures = sorted(self.failures, key=lambda f: f[0].line)
        for exc, maybe_other_file in failures:
            # (no entry nor conntrack's closing line before it: say what the file should be)
            if maybe_other_file and exc.line < min(self.entries, *(n for n, _ in self.trailers), exc.line + 1):
                exc = _amend(exc, grammar.other_output_hint(exc.text))
            if not self.lenient:
                raise exc
            self.skipped.append(Skipped(exc.line, exc.reason))
        self.trailers.sort()
        table = ConntrackTable(self.source, lines, self.shapes, index, dict(sorted(irregular.items())),
                               nul_free=self.nul_free,
                               skipped=tuple(self.skipped),
                               trailer_count=sum(c for _, c in self.trailers) if self.trailers else None)
        return self.check_count(table)

    def slow(self, n: int, raw: bytes, key: bytes, index: DstIndex, irregular: dict[int, Any], *,
             last: bool) -> None:
        """A line of a new shape, or one the fast path refused: lark and the layout say what it is (or what is
        wrong with it, where)."""
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        syntax = True
        try:
            found = grammar.fast_tokens(text)
            kind, toks = found or grammar.tokens(grammar.parse_line(text, source=self.source, line_no=n))
            if kind == "trailer":
                self.trailer(n, text)
                return
            if kind == "comment":
                return
            syntax = False
            layout = read_layout(toks, source=self.source, line_no=n, text=text)
        except ParseError as exc:
            if last:
                exc = _amend(exc, " (the file ends in the middle of this line: it looks truncated)")
            self.fail(exc, maybe_other_file=syntax and not last)
            return
        self.entries = min(self.entries, n)
        words = raw.split()
        if len(words) != len(toks):
            # A flag with spaces inside ([start=Mon Dec  2 …] from -o ktimestamp): this line is built from its
            # tokens, not from a shape.
            irregular[n] = layout.builder()([str(t) for t in toks], n, text, _normalise)
            return
        shape = self.compile(layout, words)
        # read_layout has proven this line's values: the checkers remember them.
        shape.check(shape.main(words))
        _others(shape, words)
        bucket = self.shapes.setdefault(key, [])
        if shape not in bucket:
            bucket.append(shape)
            if len(bucket) == 1 and self.expressions and len(self.patterns) < _PATTERN_KEYS:
                found = line_pattern(raw, layout, shape)
                if found is not None:
                    self.patterns[key] = found
                    self.stale = True
        _add_one(index, key, shape, words, n)

    def trailer(self, n: int, text: str) -> None:
        m = _TRAILER_COUNT.search(text)
        if m is None:
            message = text.split("):", 1)[-1].strip()
            self.fail(ParseError(f"conntrack failed when this file was written ({message!r}); list the table "
                                 "again as root (conntrack -L)", source=self.source, line=n, column=1, text=text))
            return
        self.trailers.append((n, int(m.group(1))))

    def check_count(self, table: ConntrackTable) -> ConntrackTable:
        """conntrack's closing line counts the entries it printed: fewer in the file means it was cut."""
        if table.trailer_count is None:
            return table
        held = table.entry_count + sum(1 for s in self.skipped if not s.reason.startswith("conntrack failed"))
        if held == table.trailer_count:
            return table
        line = self.trailers[-1][0]
        why = (f"conntrack's closing line says {table.trailer_count} flow entries were shown but the file holds "
               f"{held}; the file looks truncated or edited")
        if not self.lenient:
            raise ParseError(why + "; list the table again (conntrack -L)", source=self.source, line=line,
                             column=1, text=table.line_text(line))
        table.warnings = (*table.warnings, Skipped(line, why))
        return table


def _add_one(index: DstIndex, key: bytes, shape: Shape, words: Sequence[bytes], n: int) -> None:
    """Indexes one entry line read alone (what `bulk` does for a chunk)."""
    index.add_one(key, words[shape.dst], n)
    focus = index.focus_words.get(shape.proto) if shape.dport >= 0 else None
    if focus is not None and words[shape.dst] in focus[0] and words[shape.dport] in focus[1]:
        index.add_focused(shape, [n], [shape.key(words)])


def _others(shape: Shape, words: Sequence[bytes]) -> bool:
    """The value groups of keys of several kinds (icmp's id=): rare, so checked outside the hot loop."""
    for get, proven, check in shape.others:
        values = get(words)
        if not proven.issuperset(values) and not check(values):
            return False
    return True


def _either(other: set[bytes], checker: _Checker) -> Callable[[tuple[bytes, ...]], bool]:
    return lambda words: other.issuperset(words) or checker(words)


def _amend(exc: ParseError, more: str) -> ParseError:
    return ParseError(exc.reason + more, source=exc.source, line=exc.line, column=exc.column, text=exc.text)


def _normalise(text: str) -> str:
    return str(ipaddress.ip_address(text))


def load(text: str | bytes, *, source: str = "<conntrack>", lenient: bool = False,
         focus: Iterable[tuple[str, int, str]] = ()) -> ConntrackTable:
    """Read a conntrack table. Raises ParseError naming file:line:column and what was expected, unless
    `lenient`, in which case unreadable lines are skipped and listed in `ConntrackTable.skipped`. `focus`: the
    flows that will be asked about (`flows_to(address, port, protocol)`), whose lines are then found without a
    second look at the table, and the other lines are checked by the keys' expressions without being indexed
    (any other question is still answered, the slower way: a caller that asks about every destination, as
    audit does, reads faster without a focus)."""
    data = text.encode("utf-8", errors="surrogateescape") if isinstance(text, str) else text
    return _Reader(source, lenient, _focus_words(focus)).read(data)


def _focus_words(flows: Iterable[tuple[str, int, str]]) -> frozenset[tuple[bytes, bytes, str]]:
    """(`dst=` word, `dport=` word, protocol) of these flows: IPv4 only, whose one spelling is the word (an IPv6
    address has several, /proc writes them in full: their lines are found by the table's address index)."""
    out = set()
    for text, port, proto in flows:
        try:
            address = ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            continue
        if address.version == 4:
            out.add((f"dst={address}".encode(), f"dport={port}".encode(), proto))
    return frozenset(out)


def load_path(path: str | Path, *, lenient: bool = False) -> ConntrackTable:
    data, name = read_file(path)
    return load(data, source=name, lenient=lenient)
