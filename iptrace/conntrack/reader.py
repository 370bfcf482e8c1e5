"""Text → ConntrackTable: `conntrack -L` (plain, `-o extended`, …) and /proc/net/nf_conntrack.

A node's table can hold 100,000 flows (16 MB), so lines are read at about the speed of splitting them into
words. Every line is keyed by its *shape*: the line with every character a value is made of (digits, hex
digits, `.` and `:`) deleted — one `bytes.translate` over the whole file. kube-proxy nodes' tables repeat a few
dozen shapes; lark parses one line of each new shape (which validates its structure and gives exact error
columns) and `read_layout` says what each word is. Every other line of that shape is split into words and
checked against it: constant words (protocol, state, flags) by one tuple comparison, values by set membership
of words already proven valid (a new word is checked once, then remembered). A line that fails goes through
lark again, which names the column and what was expected. The whole file is checked; nothing is sampled.
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
from iptrace.conntrack.layout import CONSTANT_ROLES, ORIGINAL, TUPLE, Builder, Layout, read_layout
from iptrace.conntrack.table import ConntrackTable, Skipped
from iptrace.errors import InputError, ParseError

# What values are made of; whatever else a line holds is its shape.
_VALUE_CHARS = b"0123456789abcdef.:"
_TRAILER_COUNT = re.compile(r"\): (\d+) flow entries have been shown\.\s*$")
_HINT = "; is this `conntrack -L` output (or /proc/net/nf_conntrack)?"

# Keys whose value is of different kinds in different places (icmp's id= vs the entry's id=), and those kinds.
_KINDS_OF_KEY: dict[str, set[str]] = {}
for _key, _kind in [*(f for fields in v.TUPLE_FIELDS.values() for f in fields),
                    *(f for fields in v.DIRECTION_FIELDS.values() for f in fields.items()), *v.ENTRY_FIELDS.items()]:
    _KINDS_OF_KEY.setdefault(_key, set()).add(_kind)
_AMBIGUOUS_KEYS = frozenset(k for k, kinds in _KINDS_OF_KEY.items() if len(kinds) > 1)
_AMBIGUOUS = frozenset(kind for k in _AMBIGUOUS_KEYS for kind in _KINDS_OF_KEY[k])

# New port words of one key after which every port word of that key is proven at once.
_SATURATE_PORTS = 4096

_Shape = tuple[int, Callable[[Sequence[bytes]], Any], tuple[bytes, ...], tuple[Any, ...], int, Builder]


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
    """Checks the value words of one group that its set of proven words did not hold; remembers good ones."""

    def __init__(self, reader: _Reader, proven: str, checks: Sequence[tuple[bytes, str]], family: str | None) -> None:
        self.reader = reader
        self.proven = reader.valid[proven]
        self.checks = tuple(checks)  # (b"key=", kind) per value word, in getter order
        self.family = family

    def __call__(self, words: Sequence[bytes]) -> bool:
        versions = set()
        proven = self.proven
        valid = self.reader.valid
        for word, (prefix, kind) in zip(words, self.checks, strict=True):
            if kind == v.ADDRESS:
                # A line's addresses must all be of one family, so proven ones count too.
                if word in valid["address4"]:
                    versions.add(4)
                    continue
                if word in valid["address6"]:
                    versions.add(6)
                    continue
            elif word in proven:
                continue
            if not word.startswith(prefix):
                return False
            if kind == v.PORT:
                if word[len(prefix):] not in _port_values():
                    return False
                self.reader.prove_port(proven, word, prefix)
                continue
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
                valid[f"address{version}"].add(word)
            elif v.check_value(kind, value):
                proven.add(word)
            else:
                return False
        if len(versions) > 1:
            return False
        return not (self.family and versions and versions != {4 if self.family == "ipv4" else 6})


class _Reader:
    def __init__(self, source: str, lenient: bool) -> None:
        self.source = source
        self.lenient = lenient
        self.shapes: dict[bytes, list[_Shape]] = {}
        self.layouts: dict[tuple[Any, ...], _Shape] = {}
        # Words proven valid: addresses per family, and every other value whose key means one kind everywhere
        # ("scalar"); a key of several kinds (icmp's id= is 16 bits, the entry's id= 32) gets a set per kind.
        self.valid: dict[str, set[bytes]] = {k: set() for k in ("address4", "address6", "scalar", *_AMBIGUOUS)}
        self.skipped: list[Skipped] = []
        self.trailers: list[tuple[int, int]] = []  # (line, count)
        self.seen_entry = False
        self.port_misses: dict[bytes, int] = {}

    def prove_port(self, proven: set[bytes], word: bytes, prefix: bytes) -> None:
        """Remember a valid port word. Source ports are nearly unique per flow, so after a few thousand new ones
        every port word of that key is proven at once (cheaper than proving them one at a time)."""
        proven.add(word)
        self.port_misses[prefix] = misses = self.port_misses.get(prefix, 0) + 1
        if misses == _SATURATE_PORTS:
            proven.update(prefix + value for value in _port_values())

    # -- errors -------------------------------------------------------------------------------------------
    def fail(self, exc: ParseError) -> None:
        if not self.lenient:
            raise exc
        self.skipped.append(Skipped(exc.line, exc.reason))

    # -- shapes -------------------------------------------------------------------------------------------
    def compile(self, layout: Layout, words: list[bytes]) -> _Shape:
        """The fast-path form of a layout: getters and proven-word sets per kind of value."""
        constants = [i for i, r in enumerate(layout.roles) if r.role in CONSTANT_ROLES]
        consts = tuple(words[i] for i in constants)
        known = self.layouts.get((layout, consts))
        if known is not None:
            return known
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(layout.roles):
            if r.role not in CONSTANT_ROLES:
                if r.kind == v.ADDRESS:
                    group = {"ipv4": "address4", "ipv6": "address6"}.get(layout.family or "", "address?")
                else:
                    group = r.kind if (r.key or "") in _AMBIGUOUS_KEYS else "scalar"
                groups.setdefault(group, []).append(i)
        checks = []
        for group, positions in groups.items():
            if len(positions) == 1:
                positions = positions * 2  # itemgetter of one position returns the word, not a tuple
            proven = "address4" if group == "address?" else group
            checker: Callable[[Sequence[bytes]], bool] = _Checker(
                self, proven, [(layout.roles[i].prefix.encode(), layout.roles[i].kind) for i in positions],
                layout.family)
            if group == "address?":
                # Plain `conntrack -L` prints no family: an IPv6 line is proven by the IPv6 set.
                checker = _either(self.valid["address6"], checker)
            checks.append((itemgetter(*positions), self.valid[proven], checker))
        dst = next(i for i, r in enumerate(layout.roles) if r.role == TUPLE and r.direction == ORIGINAL
                   and r.key == "dst")
        shape: _Shape = (len(words), itemgetter(*constants), consts, tuple(checks), dst, layout.builder())
        self.layouts[(layout, consts)] = shape
        return shape

    # -- lines --------------------------------------------------------------------------------------------
    def read(self, data: bytes) -> ConntrackTable:
        lines = data.split(b"\n")
        keys = data.translate(None, _VALUE_CHARS).split(b"\n")
        rows: list[Any] = [None] * len(lines)
        index: dict[bytes, list[int]] = {}
        irregular: dict[int, Any] = {}
        shapes = self.shapes
        for n, (line, key) in enumerate(zip(lines, keys, strict=True), 1):
            candidates = shapes.get(key)
            if candidates is not None:
                words = line.split()
                for shape in candidates:
                    if len(words) != shape[0] or shape[1](words) != shape[2]:
                        continue
                    for get, proven, check in shape[3]:
                        values = get(words)
                        if not proven.issuperset(values) and not check(values):
                            break
                    else:
                        rows[n - 1] = shape[5]
                        dst = words[shape[4]]
                        found = index.get(dst)
                        if found is None:
                            index[dst] = [n]
                        else:
                            found.append(n)
                        break
                else:
                    self.slow(n, line, key, rows, index, irregular, last=n == len(lines))
                continue
            if line.strip():
                self.slow(n, line, key, rows, index, irregular, last=n == len(lines))
        table = ConntrackTable(self.source, lines, rows, index, irregular, skipped=tuple(self.skipped),
                               trailer_count=sum(c for _, c in self.trailers) if self.trailers else None)
        return self.check_count(table)

    def slow(self, n: int, raw: bytes, key: bytes, rows: list[Any], index: dict[bytes, list[int]],
             irregular: dict[int, Any], *, last: bool) -> None:
        """A line of a new shape, or one the fast path refused: lark and the layout say what it is (or what is
        wrong with it, where)."""
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        syntax = True
        try:
            kind, toks = grammar.tokens(grammar.parse_line(text, source=self.source, line_no=n))
            if kind == "trailer":
                self.trailer(n, text)
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
            entry = layout.builder()([str(t) for t in toks], n, text, _normalise)
            irregular[n] = entry
            index.setdefault(f"dst={entry.original.dst}".encode(), []).append(n)
            return
        shape = self.compile(layout, words)
        for get, proven, check in shape[3]:
            values = get(words)
            if not proven.issuperset(values):
                check(values)  # read_layout proved them: this remembers them
        bucket = self.shapes.setdefault(key, [])
        if shape not in bucket:
            bucket.append(shape)
        rows[n - 1] = shape[5]
        index.setdefault(words[shape[4]], []).append(n)

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
                             column=1, text=table._lines[line - 1].decode("utf-8", errors="replace"))
        table.warnings = (*table.warnings, Skipped(line, why))
        return table


@cache
def _port_values() -> frozenset[bytes]:
    return frozenset(str(port).encode() for port in range(65536))


def _amend(exc: ParseError, more: str) -> ParseError:
    return ParseError(exc.reason + more, source=exc.source, line=exc.line, column=exc.column, text=exc.text)


def _either(other: set[bytes], checker: _Checker) -> Callable[[Sequence[bytes]], bool]:
    return lambda words: other.issuperset(words) or checker(words)


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
