"""Text → ConntrackTable: `conntrack -L` (plain, `-o extended`, …) and /proc/net/nf_conntrack.

A node's table can hold 100,000 flows (16 MB), so lines are read at about the speed of splitting them into
words. Every line is keyed by its *shape*: the line with every character a value is made of (digits, hex
digits, `.` and `:`) deleted — one `bytes.translate` over the whole file. A node's table repeats a few dozen
shapes; lark parses one line of each new shape (which validates its structure and gives exact error columns)
and `read_layout` says what each word is. Every other line of that shape is split into words and checked
against it: its constant words (protocol, state, flags) by one tuple comparison, its value words by set
membership: addresses and other values among the words already proven valid (a new word is checked once,
then remembered), port words among all valid ones. The lines of one shape are checked together, a chunk at a
time, by C-level maps over them (`_Reader.bulk`); the few a chunk refuses go one by one. A line that fails goes
through lark and the vocabulary again, which name the column and what was expected. The whole file is checked;
nothing is sampled.
"""

from __future__ import annotations

import gzip
import ipaddress
import re
import sys
from collections.abc import Callable, Sequence
from functools import cache
from itertools import compress
from operator import itemgetter, not_
from pathlib import Path
from typing import Any

from iptrace.conntrack import grammar
from iptrace.conntrack import vocabulary as v
from iptrace.conntrack.layout import CONSTANT_ROLES, Layout, read_layout
from iptrace.conntrack.shape import VALUE_CHARS, Shape
from iptrace.conntrack.table import ConntrackTable, Skipped
from iptrace.errors import InputError, ParseError

_TRAILER_COUNT = re.compile(r"\): (\d+) flow entries have been shown\.\s*$")
# Lines of one key checked at once first, then twice as many each time up to the last size (see _Reader.read):
# the words of a chunk are freed before the next one's are made, so that memory is reused, not taken anew.
_FIRST_CHUNK, _LAST_CHUNK = 64, 4096
_HINT = "; is this `conntrack -L` output (or /proc/net/nf_conntrack)?"

# Keys whose value is of different kinds in different places (icmp's id= is 16 bits, the entry's id= 32): their
# words are proven per kind.
_KINDS_OF_KEY: dict[str, set[str]] = {}
for _key, _kind in [*v.ADDRESS_FIELDS, *(f for fields in v.TUPLE_FIELDS.values() for f in fields),
                    *(f for fields in v.DIRECTION_FIELDS.values() for f in fields.items()), *v.ENTRY_FIELDS.items()]:
    _KINDS_OF_KEY.setdefault(_key, set()).add(_kind)
AMBIGUOUS_KEYS = frozenset(k for k, kinds in _KINDS_OF_KEY.items() if len(kinds) > 1)
_AMBIGUOUS = frozenset(kind for k in AMBIGUOUS_KEYS for kind in _KINDS_OF_KEY[k])


def read_file(path: str | Path) -> tuple[bytes, str]:
    """A conntrack file's bytes (`-` = stdin, `.gz` decompressed) and its display name."""
    name = str(path)
    try:
        if name == "-":
            data = sys.stdin.buffer.read()
            name = "<stdin>"
        else:
            p = Path(path)
            if p.is_dir():
                raise InputError(f"{name}: is a directory; expected the output of `conntrack -L`")
            data = p.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{name}: not a readable gzip file ({exc})") from None
    return data, name


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
            if not word.startswith(prefix):
                return False
            try:
                value = word[len(prefix):].decode("ascii")
            except UnicodeDecodeError:
                return False
            if kind == v.ADDRESS:
                try:
                    version = ipaddress.ip_address(value).version
                except ValueError:
                    return False
                versions.add(version)
                valid[f"ipv{version}"].add(word)
            elif v.check_value(kind, value):
                new.append(word)
            else:
                return False
        for word in new:
            if own is not None:
                own.add(word)
            else:
                v4.add(word)
                v6.add(word)
        if len(versions) > 1:
            return False
        return not (self.family and versions and versions != {4 if self.family == "ipv4" else 6})


@cache
def port_words() -> frozenset[bytes]:
    """Every valid port word (sport=0 … dport=65535): source ports are nearly unique per flow, so proving them
    one at a time would cost a check per line. Built once per process."""
    return frozenset([b"sport=%d" % port for port in range(65536)] + [b"dport=%d" % port for port in range(65536)])


class _Reader:
    def __init__(self, source: str, lenient: bool) -> None:
        self.source = source
        self.lenient = lenient
        self.shapes: dict[bytes, list[Shape]] = {}
        self.compiled: dict[tuple[Any, ...], Shape] = {}
        # Words proven valid (see _Checker): per family, and per kind for keys of several kinds.
        self.valid: dict[str, set[bytes]] = {k: set() for k in ("ipv4", "ipv6", *_AMBIGUOUS)}
        self.skipped: list[Skipped] = []
        self.trailers: list[tuple[int, int]] = []  # (line, count)
        self.entries = sys.maxsize  # the first line read as an entry
        # Errors, with whether they may come from a file that is not conntrack's at all (see finish).
        self.failures: list[tuple[ParseError, bool]] = []
        self.limit = sys.maxsize  # strict mode: the first failed line so far (nothing after it is read)

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
        if layout.family is not None:
            shape.proven = self.valid[layout.family]
            shape.check = _Checker(self.valid, kinds(main), layout.family)
        else:
            # Plain `conntrack -L` prints no family: an IPv6 line is proven by the IPv6 set.
            shape.proven = self.valid["ipv4"]
            shape.check = _either(self.valid["ipv6"], _Checker(self.valid, kinds(main), None))
        if ports:
            shape.ports = itemgetter(*(ports * 2 if len(ports) == 1 else ports))
        shape.others = tuple((itemgetter(*(pos * 2 if len(pos) == 1 else pos)), self.valid[kind],
                              _Checker(self.valid, kinds(pos * 2 if len(pos) == 1 else pos), layout.family, kind))
                             for kind, pos in others.items())
        self.compiled[(layout, shape.consts)] = shape
        return shape

    def read(self, data: bytes) -> ConntrackTable:
        lines = data.split(b"\n")
        keys = data.translate(None, VALUE_CHARS).split(b"\n")
        # Lines by key, each list in file order, the keys in the order they first appear: the lines of a key are
        # then checked together against its shape (`bulk`), by C-level maps instead of a loop body per line.
        groups: dict[bytes, list[int]] = {}
        for n, key in enumerate(keys, 1):
            found = groups.get(key)
            if found is None:
                groups[key] = [n]
            else:
                found.append(n)
        index: dict[bytes, list[int]] = {}  # the original destination's dst= word -> its lines
        irregular: dict[int, Any] = {}
        last = len(lines)
        for key, numbers in groups.items():
            if numbers[0] >= self.limit:
                break  # (an earlier line failed: strict mode stops at it, see fail)
            rest = numbers
            if key not in self.shapes:
                # Line by line until one of them gives the key its first shape (lark reads that one).
                for k, n in enumerate(numbers):
                    if n >= self.limit:
                        break
                    self.line(n, lines[n - 1], key, index, irregular, last=n == last)
                    if key in self.shapes:
                        rest = numbers[k + 1:]
                        break
                else:
                    continue
                if key not in self.shapes:
                    continue
            # In growing chunks: the lines `bulk` refuses for values not proven yet prove them (one at a time, in
            # `line`), so that the next chunk finds them proven; a table repeats its addresses and timeouts.
            shape, start, size = self.shapes[key][0], 0, _FIRST_CHUNK
            while start < len(rest) and rest[start] < self.limit:
                for n in self.bulk(shape, rest[start:start + size], lines, index):
                    if n >= self.limit:
                        break
                    self.line(n, lines[n - 1], key, index, irregular, last=n == last)
                start += size
                size = min(size * 2, _LAST_CHUNK)
        return self.finish(lines, keys, index, irregular)

    def bulk(self, shape: Shape, numbers: list[int], lines: list[bytes], index: dict[bytes, list[int]]) -> list[int]:
        """Checks lines of one key against the key's first shape all at once (what `line` does for one), and
        indexes those that pass. Returns the others, in file order: another shape of the key, values not proven
        yet, or errors, for `line` to tell apart."""
        words = list(map(bytes.split, map(lines.__getitem__, [n - 1 for n in numbers])))
        refused: list[int] = []

        def keep(passed: list[bool]) -> None:
            nonlocal numbers, words
            if passed.count(True) != len(passed):
                refused.extend(compress(numbers, map(not_, passed)))
                numbers, words = list(compress(numbers, passed)), list(compress(words, passed))

        keep(list(map(shape.words.__eq__, map(len, words))))  # (itemgetters need the words to be there)
        keep(list(map(shape.consts.__eq__, map(shape.constants, words))))
        keep(list(map(shape.proven.issuperset, map(shape.main, words))))
        if shape.ports is not None:
            keep(list(map(port_words().issuperset, map(shape.ports, words))))
        if shape.others:
            keep([_others(shape, w) for w in words])
        for dst, n in zip(map(itemgetter(shape.dst), words), numbers, strict=True):
            found = index.get(dst)
            if found is None:
                index[dst] = [n]
            else:
                found.append(n)
        refused.sort()
        return refused

    def line(self, n: int, line: bytes, key: bytes, index: dict[bytes, list[int]], irregular: dict[int, Any], *,
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
                if shape.ports is not None and not port_words().issuperset(shape.ports(words)):
                    continue
                if shape.others and not _others(shape, words):
                    continue
                index.setdefault(words[shape.dst], []).append(n)
                return
            self.slow(n, line, key, index, irregular, last=last)
        elif line.strip():
            self.slow(n, line, key, index, irregular, last=last)

    def finish(self, lines: list[bytes], keys: list[bytes], index: dict[bytes, list[int]],
               irregular: dict[int, Any]) -> ConntrackTable:
        """The table, once every line is read. Lines were read a key at a time: what is kept per line is put back
        in file order, and strict mode raises the first error in the file."""
        failures = sorted(self.failures, key=lambda f: f[0].line)
        for exc, maybe_other_file in failures:
            # (no entry nor conntrack's closing line before it: say what the file should be)
            if maybe_other_file and exc.line < min(self.entries, *(n for n, _ in self.trailers), exc.line + 1):
                exc = _amend(exc, _HINT)
            if not self.lenient:
                raise exc
            self.skipped.append(Skipped(exc.line, exc.reason))
        for numbers in index.values():
            numbers.sort()
        self.trailers.sort()
        table = ConntrackTable(self.source, lines, keys, self.shapes, index, dict(sorted(irregular.items())),
                               skipped=tuple(self.skipped),
                               trailer_count=sum(c for _, c in self.trailers) if self.trailers else None)
        return self.check_count(table)

    def slow(self, n: int, raw: bytes, key: bytes, index: dict[bytes, list[int]], irregular: dict[int, Any], *,
             last: bool) -> None:
        """A line of a new shape, or one the fast path refused: lark and the layout say what it is (or what is
        wrong with it, where)."""
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        syntax = True
        try:
            kind, toks = grammar.tokens(grammar.parse_line(text, source=self.source, line_no=n))
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
        index.setdefault(words[shape.dst], []).append(n)

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


def load(text: str | bytes, *, source: str = "<conntrack>", lenient: bool = False) -> ConntrackTable:
    """Read a conntrack table. Raises ParseError naming file:line:column and what was expected, unless
    `lenient`, in which case unreadable lines are skipped and listed in `ConntrackTable.skipped`."""
    data = text.encode("utf-8", errors="surrogateescape") if isinstance(text, str) else text
    return _Reader(source, lenient).read(data)


def load_path(path: str | Path, *, lenient: bool = False) -> ConntrackTable:
    data, name = read_file(path)
    return load(data, source=name, lenient=lenient)
