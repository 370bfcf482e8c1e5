"""A read conntrack table: every line was checked when it was read; entries are built when asked for.

A node's table can hold hundreds of thousands of flows while a question concerns a few destinations, and most
flows to one destination differ only by their client's source port. So the reader only indexes lines by their
original destination (and keeps the flow words of the lines a caller said it would ask about: DstIndex.focus);
`flows_to` groups one destination's lines — same shape, port, client address and reply source — into
`FlowGroup`s (one trace decides a whole group); `to_address` and `entry_at` build entries.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import compress, repeat
from operator import contains
from typing import TYPE_CHECKING, Any, NamedTuple

from iptrace.conntrack.shape import VALUE_CHARS, Shape, shape_of, split_words
from iptrace.dataplane import join_host_port

if TYPE_CHECKING:
    from iptrace.conntrack.model import ConntrackEntry


# A line asked for alone splits the ~64 KB of its block around it (evidence shows a few lines of a block), not the
# whole block (~1 MB: ~7,000 bytes objects and ~1.5 MB of fresh memory for one line).
_WINDOW = 1 << 16


class _Window:
    """Whole lines of a block: data[start:stop] (stop: the newline after the last one, or the block's end), the
    number of its first line, how many lines it has, and its lines once one of them was asked for."""

    __slots__ = ("count", "first", "lines", "start", "stop")

    def __init__(self, data: bytes, start: int, block_stop: int, first: int) -> None:
        stop = data.find(b"\n", start + _WINDOW, block_stop) if start + _WINDOW < block_stop else -1
        self.start, self.stop = start, block_stop if stop < 0 else stop
        self.first = first
        self.count = data.count(b"\n", start, self.stop) + 1
        self.lines: list[bytes] | None = None


class Lines:
    """A file's lines by number (1-based), from its bytes: the reader read them a block at a time and kept where
    each block starts (its first byte and its first line's number), not a bytes object per line. A line asked for
    is found by counting its block's newlines a window (~64 KB of whole lines) at a time, and its window is split;
    `pick` many lines splits the whole file once."""

    def __init__(self, data: bytes, starts: list[int], firsts: list[int]) -> None:
        self._data = data
        self._starts = starts  # block k is data[starts[k]:starts[k + 1] - 1] (one more start ends the last)
        self._firsts = firsts  # the number of block k's first line
        self._windows: dict[int, list[_Window]] = {}  # per block, its windows from its first byte, as far as asked
        self._all: list[bytes] | None = None

    def __getitem__(self, n: int) -> bytes:
        if self._all is not None:
            return self._all[n]
        k = bisect_right(self._firsts, n) - 1
        if k < 0:
            return b""  # (line 0: before the first line, as the reader counts them)
        windows = self._windows.setdefault(k, [])
        window = next((w for w in windows if n < w.first + w.count), None)
        if window is None:
            stop = self._starts[k + 1] - 1
            start, first = (windows[-1].stop + 1, windows[-1].first + windows[-1].count) if windows else (
                self._starts[k], self._firsts[k])
            while True:
                window = _Window(self._data, start, stop, first)
                windows.append(window)
                if n < first + window.count or window.stop >= stop:
                    break
                start, first = window.stop + 1, first + window.count
        if window.lines is None:
            window.lines = self._data[window.start:window.stop].split(b"\n")
        return window.lines[n - window.first]

    def pick(self, numbers: list[int]) -> list[bytes]:
        """These lines, in this order."""
        if len(numbers) < 64:
            return [self[n] for n in numbers]
        if self._all is None:
            self._all = [b"", *self._data.split(b"\n")]  # (line n is _all[n])
            self._windows.clear()
        return list(map(self._all.__getitem__, numbers))


# (Records here are NamedTuples: frozen values as a frozen dataclass is, made ~6x cheaper when the module is imported,
# which `explain --conntrack` does every run.)
class Skipped(NamedTuple):
    """A line `--lenient` left out, and why."""

    line: int
    reason: str


class FlowGroup(NamedTuple):
    """Entries of one protocol from one client address to one destination whose replies come from one source,
    in one state: they differ only by the client's source port. `lines` are theirs, in file order."""

    family: str
    proto: str
    dst: str
    dport: int | None
    src: str
    reply_src: str
    reply_sport: int | None
    state: str | None
    lines: tuple[int, ...]

    @property
    def dnated(self) -> bool:
        return (self.reply_src, self.reply_sport) != (self.dst, self.dport)

    @property
    def reaches(self) -> str:
        """Where these flows' packets go: the reply source, ip:port."""
        return self.reply_src if self.reply_sport is None else join_host_port(self.reply_src, self.reply_sport)


_DST = re.compile(rb" (dst=[^ \n]*)")


class DstIndex:
    """Entry lines by the `dst=` word of their original direction, kept as the reader checked them: a column of
    those words beside a column of line numbers, one pair per chunk of lines. A question concerns one
    destination, found by comparing every word of the columns at C speed (no per-line dict to build for the
    whole table); a dict of them all is built only when every destination is asked for."""

    def __init__(self, focus: frozenset[tuple[bytes, bytes, str]] = frozenset()) -> None:
        self._columns: list[tuple[bytes, list[bytes], list[int]]] = []  # (the lines' shape key, words, numbers)
        # Lines checked one at a time (the reader's `line`): one more column, with each line's key.
        self._keys: list[bytes] = []
        self._words: list[bytes] = []
        self._numbers: list[int] = []
        self._by_word: dict[bytes, dict[bytes, list[int]]] | None = None
        # Runs of lines the reader took whole (pattern.Fast: each is its key's first shape), as (first, stop) line
        # numbers: their words are found in their text when asked for (see `bind`).
        self._runs: list[tuple[int, int]] = []
        self._lines: Lines | None = None
        self._shapes: dict[bytes, list[Shape]] = {}
        self.count = 0
        # The flows the caller will ask about, (`dst=` word, `dport=` word, protocol) of each question: the reader
        # keeps what `Shape.key` picks from their lines while it has their words, so that flows_to neither scans
        # the index nor splits them again. `focus_words`: per protocol, the words asked with it.
        self.focus = focus
        words: dict[str, tuple[set[bytes], set[bytes]]] = {}
        for dst, dport, proto in focus:
            dsts, dports = words.setdefault(proto, (set(), set()))
            dsts.add(dst)
            dports.add(dport)
        self.focus_words = {proto: (frozenset(d), frozenset(p)) for proto, (d, p) in words.items()}
        # Their lines, grouped as flows_to groups them (by the words Shape.key picks), per shape: grouped while the
        # reader has their words at hand (in the processor's cache), not when asked.
        self._focused: dict[Shape, dict[tuple[bytes, ...], list[int]]] = {}

    def add(self, key: bytes, words: list[bytes], numbers: list[int]) -> None:
        self._columns.append((key, words, numbers))
        self.count += len(numbers)

    def add_run(self, first: int, stop: int) -> None:
        self._runs.append((first, stop))
        self.count += stop - first

    def bind(self, lines: Lines, shapes: dict[bytes, list[Shape]]) -> None:
        """The file's lines and the reader's shapes, where the runs' words are read when asked for."""
        self._lines, self._shapes = lines, shapes

    def _run_lines(self) -> tuple[list[int], list[bytes]]:
        """The runs' line numbers and texts, in file order."""
        if not self._runs:
            return [], []
        assert self._lines is not None
        numbers = [n for first, stop in self._runs for n in range(first, stop)]
        return numbers, self._lines.pick(numbers)

    def add_one(self, key: bytes, word: bytes, number: int) -> None:
        self._keys.append(key)
        self._words.append(word)
        self._numbers.append(number)
        self.count += 1

    def add_focused(self, shape: Shape, numbers: list[int], keys: Iterable[tuple[bytes, ...]]) -> None:
        """Lines read with `shape` whose protocol, destination and port were asked about (in `focus_words`), with
        the words `shape.key` picks from each."""
        _group(self._focused.setdefault(shape, {}), keys, numbers)

    def add_groups(self, shape: Shape, groups: dict[tuple[bytes, ...], list[int]]) -> None:
        """Lines read with `shape` whose protocol, destination and port were asked about, grouped by the words
        `shape.key` picks (each list in file order)."""
        into = self._focused.setdefault(shape, {})
        for key, lines in groups.items():
            found = into.get(key)
            if found is None:
                into[key] = lines
            else:
                found += lines

    def focused(self, word: bytes, dport: bytes, proto: str) -> Iterator[tuple[Shape, dict[tuple[bytes, ...],
                                                                                           list[int]]]]:
        """The lines of one flow of `focus` by shape, grouped by the words `Shape.key` picks (not to be changed)."""
        alone = len(self.focus_words[proto][0]) == len(self.focus_words[proto][1]) == 1
        for shape, groups in self._focused.items():
            if shape.proto != proto:
                continue
            if alone:
                yield shape, groups  # (the one flow of its protocol asked about)
                continue
            picked = {key: lines for key, lines in groups.items() if key[0] == word and key[1] == dport}
            if picked:
                yield shape, picked

    def lines_by_key(self, word: bytes) -> dict[bytes, list[int]]:
        """The lines whose original destination is `word`, by shape key, each list in file order."""
        out: dict[bytes, list[int]] = {}
        for key, words, numbers in self._columns:
            found = list(compress(numbers, map(word.__eq__, words)))
            if found:
                out.setdefault(key, []).extend(found)
        alone = list(map(word.__eq__, self._words))
        _group(out, compress(self._keys, alone), compress(self._numbers, alone))
        numbers, texts = self._run_lines()
        if numbers:
            # (the words of a run's lines that hold ` dst=…address ` somewhere: its own original destination, or
            # another word that holds it)
            spaced = b" " + word + b" "
            found = list(map(contains, texts, repeat(spaced)))
            for n, text in zip(compress(numbers, found), compress(texts, found), strict=True):
                key = text.translate(None, VALUE_CHARS)
                if text.split()[self._shapes[key][0].dst] == word:
                    out.setdefault(key, []).append(n)
        for lines in out.values():
            lines.sort()  # (a key's chunks come in file order; its lines read alone come after them)
        return out

    def by_word(self) -> dict[bytes, dict[bytes, list[int]]]:
        """Every destination word's lines, by shape key, each list in file order."""
        if self._by_word is None:
            by_key: dict[bytes, dict[bytes, list[int]]] = {}
            for key, words, numbers in self._columns:
                _group(by_key.setdefault(key, {}), words, numbers)
            for key, word, n in zip(self._keys, self._words, self._numbers, strict=True):
                by_key.setdefault(key, {}).setdefault(word, []).append(n)
            numbers, texts = self._run_lines()
            if texts:
                # Every line the reader took whole holds exactly two ` dst=` words, its tuples' (the vocabulary
                # has no other dst= key, and no value or constant word holds one): the first is the original.
                joined = b"\n".join(texts)
                words = _DST.findall(joined)
                assert len(words) == 2 * len(texts)
                pairs: dict[tuple[bytes, bytes], list[int]] = {}
                _group(pairs, zip(joined.translate(None, VALUE_CHARS).split(b"\n"), words[::2], strict=True), numbers)
                for (key, word), lines in pairs.items():
                    by_key.setdefault(key, {}).setdefault(word, []).extend(lines)
            out: dict[bytes, dict[bytes, list[int]]] = {}
            for key, words_lines in by_key.items():
                for word, lines in words_lines.items():
                    lines.sort()  # (a key's chunks come in file order; its lines read alone come after them)
                    out.setdefault(word, {})[key] = lines
            self._by_word = out
        return self._by_word

    def numbers(self) -> list[int]:
        return ([n for _key, _words, numbers in self._columns for n in numbers] + self._numbers
                + [n for first, stop in self._runs for n in range(first, stop)])


class ConntrackTable:
    """`flows_to(ip, port, proto)` the groups of entries to a destination; `to_address(ip)` and `entries()` the
    entries themselves."""

    def __init__(self, source: str, lines: Lines, shapes: dict[bytes, list[Shape]],
                 index: DstIndex, irregular: dict[int, ConntrackEntry], *,
                 skipped: tuple[Skipped, ...] = (), warnings: tuple[Skipped, ...] = (),
                 trailer_count: int | None = None, nul_free: bool = False) -> None:
        self.source = source
        self._nul_free = nul_free  # no line holds a NUL byte (see split_words)
        self._lines = lines  # line n of the file is lines[n]
        self._shapes = shapes  # the reader's shapes by key: a line's shape is found again from its key
        self._index = index  # the original destination's `dst=` word -> 1-based line numbers
        index.bind(lines, shapes)
        self._irregular = irregular  # lines read by lark alone (timestamps with spaces): line -> entry
        self._by_address: dict[str, dict[bytes, list[int]]] | None = None
        self._addresses: dict[str, str] = {}
        self.skipped = skipped
        self.warnings = warnings
        self.trailer_count = trailer_count
        self.entry_count = index.count + len(irregular)

    def __len__(self) -> int:
        return self.entry_count

    def address(self, text: str) -> str:
        """An address as the model spells it (IPv6 from /proc comes fully expanded)."""
        found = self._addresses.get(text)
        if found is None:
            found = self._addresses[text] = str(ipaddress.ip_address(text))
        return found

    def line_text(self, line: int) -> str:
        """Line `line` (1-based) of the file, as text."""
        return self._lines[line].decode("utf-8", errors="replace").rstrip("\r")

    def entry_at(self, line: int) -> ConntrackEntry:
        """The entry of 1-based line `line` (which must hold one)."""
        entry = self._irregular.get(line)
        if entry is not None:
            return entry
        found = shape_of(self._shapes, self._lines[line], read=True)
        assert found is not None, f"line {line} holds no entry"
        text = self.line_text(line)
        return found[0].build(text.split(), line, text, self.address)

    def line_numbers(self) -> list[int]:
        return sorted(self._index.numbers() + list(self._irregular))

    def entries(self) -> Iterator[ConntrackEntry]:
        for n in self.line_numbers():
            yield self.entry_at(n)

    def destinations(self) -> list[str]:
        """Every original destination address in the table (normalised), sorted."""
        return sorted(set(self._address_index()) | {e.original.dst for e in self._irregular.values()})

    def flows_to(self, ip: str, port: int | None = None, proto: str | None = None) -> list[FlowGroup]:
        """The groups of entries whose original destination is `ip` (and port, protocol when given)."""
        try:
            wanted = str(ipaddress.ip_address(ip.strip("[]")))
        except ValueError:
            return []
        dport = None if port is None else f"dport={port}".encode()
        word = b"dst=" + wanted.encode()
        keyed: Iterator[tuple[Shape, list[int], Iterator[tuple[bytes, ...]]]]
        # (a group's lines may come from several keys, and those of lines read one at a time come after those of
        # the chunks: each group's are sorted into file order below)
        groups: dict[Shape, dict[tuple[bytes, ...], list[int]]] = {}
        if dport is not None and proto is not None and (word, dport, proto) in self._index.focus:
            groups.update(self._index.focused(word, dport, proto))  # (grouped by the reader)
        else:
            # An IPv4 address has one spelling (leading zeros are refused): its lines are found by their word.
            if self._by_address is None and "." in wanted:
                keyed = self._keyed(self._index.lines_by_key(word), proto, dport)
            else:
                keyed = self._keyed(self._address_index().get(wanted, {}), proto, dport)
            for shape, lines, keys in keyed:
                _group(groups.setdefault(shape, {}), keys, lines)
        out = []
        for shape, keyed_lines in groups.items():
            for key, lines in keyed_lines.items():
                src, reply = self.address(key[2][4:].decode()), self.address(key[3][4:].decode())
                family = shape.family or ("ipv6" if ":" in src else "ipv4")
                out.append(FlowGroup(family, shape.proto, wanted, int(key[1][6:]) if shape.dport >= 0 else None,
                                     src, reply, int(key[4][6:]) if shape.rsport >= 0 else None, shape.state,
                                     tuple(sorted(lines))))
        out.sort(key=lambda g: g.lines[0])  # (in the order of their first lines, as the file has them)
        for e in self._irregular.values():
            o, r = e.original, e.reply
            if o.dst == wanted and (proto is None or e.proto == proto) and (port is None or o.dport == port):
                out.append(FlowGroup(e.family, e.proto, o.dst, o.dport, o.src, r.src, r.sport, e.state, (e.line,)))
        return out

    def to_address(self, ip: str, port: int | None = None, proto: str | None = None) -> tuple[ConntrackEntry, ...]:
        """The entries whose original destination is `ip` (and port, protocol when given), in line order."""
        return tuple(self.entry_at(n) for n in sorted(n for g in self.flows_to(ip, port, proto) for n in g.lines))

    def _keyed(self, by_key: dict[bytes, list[int]], proto: str | None, dport: bytes | None,
               ) -> Iterator[tuple[Shape, list[int], Iterator[tuple[bytes, ...]]]]:
        """Lines (by shape key, in file order) a shape at a time, of this protocol and `dport=` word when given,
        with the words `Shape.key` picks from each: a shape's lines are split together (split_words), since one
        destination can have tens of thousands of them."""
        for key, lines in by_key.items():
            shapes = [s for s in self._shapes[key] if proto is None or s.proto == proto]
            if dport is not None:
                shapes = [s for s in shapes if s.dport >= 0]
            if not shapes:
                continue
            if len(shapes) == len(self._shapes[key]) == 1:
                shape = shapes[0]
                words = split_words(self._lines.pick(lines), shape.words, nul_free=self._nul_free)
                if words is not None:
                    stride = shape.words + 1
                    columns = [words[k::stride] for k in shape.key_at]
                    if dport is not None:
                        wanted = list(map(dport.__eq__, columns[1]))
                        lines = list(compress(lines, wanted))
                        columns = [list(compress(column, wanted)) for column in columns]
                    yield shape, lines, zip(*columns, strict=True)
                    continue
            for n in lines:
                found = shape_of(self._shapes, self._lines[n], key, read=True)
                assert found is not None, f"line {n} holds no entry"
                shape, words = found
                if shape in shapes and (dport is None or words[shape.dport] == dport):
                    yield shape, [n], iter([shape.key(words)])

    def _address_index(self) -> dict[str, dict[bytes, list[int]]]:
        """Every original destination's lines, by shape key."""
        if self._by_address is None:
            out: dict[str, dict[bytes, list[int]]] = {}
            for word, keyed in self._index.by_word().items():
                into = out.setdefault(self.address(word[4:].decode("ascii")), {})
                for key, lines in keyed.items():
                    if key in into:
                        into[key] = sorted(into[key] + lines)  # (an IPv6 address spelled two ways: two words)
                    else:
                        into[key] = lines
            self._by_address = out
        return self._by_address


def skipped_notes(name: str, table: ConntrackTable) -> list[str]:
    """--lenient: how many conntrack lines were left out and the first reason; the table's warnings."""
    out = []
    if table.skipped:
        first = table.skipped[0]
        many = "s" if len(table.skipped) != 1 else ""
        out.append(f"note: {name}: skipped {len(table.skipped)} unreadable line{many} (first: line {first.line}: "
                   f"{first.reason})")
    out += [f"note: {name}:{w.line}: {w.reason}" for w in table.warnings]
    return out


def _group(into: dict[Any, list[int]], keys: Iterable[Any], numbers: Iterable[int]) -> None:
    """Each number appended to its key's list in `into`, in order (a table's lines by word or by flow)."""
    for key, n in zip(keys, numbers, strict=True):
        found = into.get(key)
        if found is None:
            into[key] = [n]
        else:
            found.append(n)
