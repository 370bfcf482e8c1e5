"""A read conntrack table: every line was checked when it was read; entries are built when asked for.

A node's table can hold hundreds of thousands of flows while a question concerns a few destinations, and most
flows to one destination differ only by their client's source port. So the reader only indexes lines by their
original destination; `flows_to` groups one destination's lines — same shape, port, client address and reply
source — into `FlowGroup`s (one trace decides a whole group); `to_address` and `entry_at` build entries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from iptrace.conntrack.model import ConntrackEntry
from iptrace.conntrack.shape import Shape, shape_of
from iptrace.dataplane import join_host_port


@dataclass(frozen=True, slots=True)
class Skipped:
    """A line `--lenient` left out, and why."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class FlowGroup:
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


class ConntrackTable:
    """`flows_to(ip, port, proto)` the groups of entries to a destination; `to_address(ip)` and `entries()` the
    entries themselves."""

    def __init__(self, source: str, lines: list[bytes], keys: list[bytes], shapes: dict[bytes, list[Shape]],
                 index: dict[bytes, list[int]], irregular: dict[int, ConntrackEntry], *,
                 skipped: tuple[Skipped, ...] = (), warnings: tuple[Skipped, ...] = (),
                 trailer_count: int | None = None) -> None:
        self.source = source
        self._lines = lines
        self._keys = keys  # each line's key (reader.py): its shape is found again from it
        self._shapes = shapes  # the reader's shapes by key: a line's shape is found again from its key
        self._index = index  # the original destination's `dst=` word -> 1-based line numbers
        self._irregular = irregular  # lines read by lark alone (timestamps with spaces): line -> entry
        self._by_address: dict[str, list[int]] | None = None
        self._addresses: dict[str, str] = {}
        self.skipped = skipped
        self.warnings = warnings
        self.trailer_count = trailer_count
        self.entry_count = sum(len(lines) for lines in index.values()) + len(irregular)

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
        return self._lines[line - 1].decode("utf-8", errors="replace").rstrip("\r")

    def entry_at(self, line: int) -> ConntrackEntry:
        """The entry of 1-based line `line` (which must hold one)."""
        entry = self._irregular.get(line)
        if entry is not None:
            return entry
        found = shape_of(self._shapes, self._lines[line - 1], self._keys[line - 1], read=True)
        assert found is not None, f"line {line} holds no entry"
        text = self.line_text(line)
        return found[0].builder(text.split(), line, text, self.address)

    def line_numbers(self) -> list[int]:
        return sorted([n for lines in self._index.values() for n in lines] + list(self._irregular))

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
        dport = f"dport={port}".encode()
        groups: dict[tuple[Shape, tuple[bytes, ...]], list[int]] = {}
        # An IPv4 address has one spelling (leading zeros are refused): its lines are found by their word.
        numbers = (self._index.get(b"dst=" + wanted.encode(), ()) if self._by_address is None and "." in wanted
                   else self._address_index().get(wanted, ()))
        lines, keys, shapes = self._lines, self._keys, self._shapes
        for n in numbers:
            found = shape_of(shapes, lines[n - 1], keys[n - 1], read=True)
            assert found is not None, f"line {n} holds no entry"
            shape, words = found
            if (proto is None or shape.proto == proto) and (
                    port is None or (shape.dport >= 0 and words[shape.dport] == dport)):
                groups.setdefault((shape, shape.key(words)), []).append(n)
        out = []
        for (shape, key), lines in groups.items():
            src, reply = self.address(key[2][4:].decode()), self.address(key[3][4:].decode())
            family = shape.family or ("ipv6" if ":" in src else "ipv4")
            out.append(FlowGroup(family, shape.proto, wanted, int(key[1][6:]) if shape.dport >= 0 else None, src,
                                 reply, int(key[4][6:]) if shape.rsport >= 0 else None, shape.state, tuple(lines)))
        for e in self._irregular.values():
            o, r = e.original, e.reply
            if o.dst == wanted and (proto is None or e.proto == proto) and (port is None or o.dport == port):
                out.append(FlowGroup(e.family, e.proto, o.dst, o.dport, o.src, r.src, r.sport, e.state, (e.line,)))
        return out

    def to_address(self, ip: str, port: int | None = None, proto: str | None = None) -> tuple[ConntrackEntry, ...]:
        """The entries whose original destination is `ip` (and port, protocol when given), in line order."""
        return tuple(self.entry_at(n) for n in sorted(n for g in self.flows_to(ip, port, proto) for n in g.lines))

    def _address_index(self) -> dict[str, list[int]]:
        if self._by_address is None:
            out: dict[str, list[int]] = {}
            for word, lines in self._index.items():
                out.setdefault(self.address(word[4:].decode("ascii")), []).extend(lines)
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
