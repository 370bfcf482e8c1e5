"""A read conntrack table: every line was checked when it was read; entries are built when asked for.

A node's table can hold hundreds of thousands of flows while a question concerns a few of them, so the
reader keeps each line's bytes and shape plus an index by original destination, and `to_address` builds only
the entries that go to that address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from iptrace.conntrack.model import ConntrackEntry


@dataclass(frozen=True, slots=True)
class Skipped:
    """A line `--lenient` left out, and why."""

    line: int
    reason: str


class ConntrackTable:
    """`entries()` in line order, `to_address(ip)` the entries whose original destination is `ip`."""

    def __init__(self, source: str, lines: list[bytes], rows: list[Any], index: dict[bytes, list[int]],
                 irregular: dict[int, ConntrackEntry], *, skipped: tuple[Skipped, ...] = (),
                 warnings: tuple[Skipped, ...] = (), trailer_count: int | None = None) -> None:
        self.source = source
        self._lines = lines
        self._rows = rows  # per line (0-based): the entry builder of its shape (Layout.builder), or None
        self._index = index  # the original destination's `dst=` word -> 1-based line numbers
        self._irregular = irregular  # lines read by lark alone (timestamps with spaces): line -> entry
        self._by_address: dict[str, list[int]] | None = None
        self._addresses: dict[str, str] = {}
        self.skipped = skipped
        self.warnings = warnings
        self.trailer_count = trailer_count
        self.entry_count = sum(len(v) for v in index.values())

    def __len__(self) -> int:
        return self.entry_count

    def address(self, text: str) -> str:
        """An address as the model spells it (IPv6 from /proc comes fully expanded)."""
        found = self._addresses.get(text)
        if found is None:
            found = self._addresses[text] = str(ipaddress.ip_address(text))
        return found

    def entry_at(self, line: int) -> ConntrackEntry:
        """The entry of 1-based line `line` (which must hold one)."""
        entry = self._irregular.get(line)
        if entry is not None:
            return entry
        raw = self._lines[line - 1]
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        return self._rows[line - 1](text.split(), line, text, self.address)

    def line_numbers(self) -> list[int]:
        return sorted(n for lines in self._index.values() for n in lines)

    def entries(self) -> Iterator[ConntrackEntry]:
        for n in self.line_numbers():
            yield self.entry_at(n)

    def destinations(self) -> list[str]:
        """Every original destination address in the table (normalised), sorted."""
        return sorted(self._address_index())

    def to_address(self, ip: str) -> tuple[ConntrackEntry, ...]:
        """The entries whose original destination is `ip`, in line order."""
        try:
            wanted = str(ipaddress.ip_address(ip.strip("[]")))
        except ValueError:
            return ()
        return tuple(self.entry_at(n) for n in sorted(self._address_index().get(wanted, ())))

    def _address_index(self) -> dict[str, list[int]]:
        if self._by_address is None:
            out: dict[str, list[int]] = {}
            for word, lines in self._index.items():
                out.setdefault(self.address(word[4:].decode("ascii")), []).extend(lines)
            self._by_address = out
        return self._by_address
