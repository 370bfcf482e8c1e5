"""Text → ConntrackTable: `conntrack -L` (plain, `-o extended`, …) and /proc/net/nf_conntrack.

A node's table can hold 100,000 flows (16 MB), so lines are read at about the speed of splitting them into
words. Every line is keyed by its *shape*: the line with every character a value is made of (digits, hex
digits, `.` and `:`) deleted — one `bytes.translate` over the whole file. A node's table repeats a few dozen
shapes; lark parses one line of each new shape (which validates its structure and gives exact error columns)
and `read_layout` says what each word is. Every other line of that shape is split into words and checked
against it: its constant words (protocol, state, flags) by one tuple comparison, its value words by set
membership: addresses and other values among the words already proven valid (a new word is checked once,
then remembered), port words among all valid ones. A line that fails goes through lark and the vocabulary
again, which name the column and what was expected. The whole file is checked; nothing is sampled.
"""

from __future__ import annotations

import gzip
import ipaddress
import re
import sys
from collections.abc import Callable, Sequence
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from iptrace.conntrack import grammar
from iptrace.conntrack import vocabulary as v
from iptrace.conntrack.layout import CONSTANT_ROLES, Layout, read_layout
from iptrace.conntrack.shape import VALUE_CHARS, Shape
from iptrace.conntrack.table import ConntrackTable, Skipped
from iptrace.errors import InputError, ParseError

_TRAILER_COUNT = re.compile(r"\): (\d+) flow entries have been shown\.\s*$")
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
        self.seen_entry = False

    def fail(self, exc: ParseError) -> None:
        if not self.lenient:
            raise exc
        self.skipped.append(Skipped(exc.line, exc.reason))

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
        index: dict[bytes, list[int]] = {}  # the original destination's dst= word -> its lines
        irregular: dict[int, Any] = {}
        shapes = self.shapes
        valid_ports = port_words()
        n = 0
        for line, key in zip(lines, keys, strict=True):
            n += 1
            candidates = shapes.get(key)
            if candidates is not None:
                words = line.split()
                for shape in candidates:
                    if len(words) != shape.words or shape.constants(words) != shape.consts:
                        continue
                    values = shape.main(words)
                    if not shape.proven.issuperset(values) and not shape.check(values):
                        continue
                    if shape.ports is not None and not valid_ports.issuperset(shape.ports(words)):
                        continue
                    if shape.others and not _others(shape, words):
                        continue
                    dst = words[shape.dst]
                    found = index.get(dst)
                    if found is None:
                        index[dst] = [n]
                    else:
                        found.append(n)
                    break
                else:
                    self.slow(n, line, key, index, irregular, last=n == len(lines))
                continue
            if line.strip():
                self.slow(n, line, key, index, irregular, last=n == len(lines))
        table = ConntrackTable(self.source, lines, shapes, index, irregular, skipped=tuple(self.skipped),
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
            elif syntax and not self.seen_entry and not self.trailers:
                exc = _amend(exc, _HINT)
            self.fail(exc)
            return
        self.seen_entry = True
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
