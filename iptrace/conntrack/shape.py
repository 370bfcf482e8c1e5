"""A line's shape: the line with every character a value is made of deleted. The reader keys lines by it and
keeps, per shape, where each word is and what it must be; the table finds a line's shape again the same way
when it builds that line's entry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from iptrace.conntrack.layout import CONSTANT_ROLES, ORIGINAL, REPLY, STATE, TUPLE, Builder, Layout

if TYPE_CHECKING:
    from iptrace.conntrack.model import ConntrackEntry

# What values are made of (digits, hex digits, `.` and `:`); whatever else a line holds is its shape.
VALUE_CHARS = b"0123456789abcdef.:"


class Shape:
    """One layout with one set of constant words (protocol, state, flags, family), compiled for the reader's
    checks: `constants(words) == consts` recognises a line; `main(words)` picks its addresses and the values
    whose key means one kind everywhere (proven by `proven`, else by `check`), `ports_at` its port words,
    `others` the rest (keys of several kinds: icmp's id= is 16 bits, the entry's id= 32). The `…_at` positions
    are the same words for the reader's column checks (split_words)."""

    __slots__ = ("_builder", "check", "constant_at", "constants", "consts", "dport", "dst", "family", "key",
                 "key_at", "layout", "main", "main_at", "main_kinds", "others", "others_at", "ports_at", "proto",
                 "proven", "rsport", "state", "words")

    def __init__(self, layout: Layout, words: Sequence[bytes]) -> None:
        roles = layout.roles
        constant = [i for i, r in enumerate(roles) if r.role in CONSTANT_ROLES]
        self.words = len(words)
        self.constant_at = tuple(constant)
        self.constants: Callable[[Sequence[bytes]], Any] = itemgetter(*constant)
        self.consts = tuple(words[i] for i in constant)
        original = {r.key: i for i, r in enumerate(roles) if r.role == TUPLE and r.direction == ORIGINAL}
        reply = {r.key: i for i, r in enumerate(roles) if r.role == TUPLE and r.direction == REPLY}
        self.dst = original["dst"]
        self.dport = original.get("dport", -1)
        self.rsport = reply.get("sport", -1)
        # What a trace and a deletion filter tell flows apart by (the source port aside): the table groups the
        # lines of one destination by these words.
        self.key_at = (self.dst, self.dport if self.dport >= 0 else self.dst, original["src"], reply["src"],
                       self.rsport if self.rsport >= 0 else reply["src"])
        self.key: Callable[[Sequence[bytes]], tuple[bytes, ...]] = itemgetter(*self.key_at)
        state = next((i for i, r in enumerate(roles) if r.role == STATE), None)
        self.state = words[state].decode() if state is not None else None
        self.family = layout.family
        self.proto = layout.proto
        self.layout = layout
        self._builder: Builder | None = None  # (worked out for the first entry built: see build)
        # Set by the reader, which owns the sets of proven words: getters for one line's words, and the same
        # positions for columns (see split_words).
        self.main_at: tuple[int, ...] = ()
        self.main_kinds: tuple[tuple[bytes, str], ...] = ()  # (b"key=", kind) of each
        self.ports_at: tuple[tuple[int, bytes], ...] = ()  # (position, its prefix: b"sport=")
        # ((position, (b"key=", kind)) of each, the kind's own set of proven words) per kind
        self.others_at: tuple[tuple[tuple[tuple[int, tuple[bytes, str]], ...], set[bytes]], ...] = ()
        self.main: Callable[[Sequence[bytes]], tuple[bytes, ...]] = itemgetter(0, 0)
        self.proven: set[bytes] = set()
        self.check: Callable[[tuple[bytes, ...]], bool] = lambda words: False
        self.others: tuple[tuple[Callable[[Sequence[bytes]], tuple[bytes, ...]], set[bytes],
                                 Callable[[tuple[bytes, ...]], bool]], ...] = ()

    def build(self, words: Sequence[str], line: int, text: str, address: Callable[[str], str]) -> ConntrackEntry:
        """The entry of a line of this shape (`words`: its whitespace-split words). The layout's builder is worked
        out at the first entry: `explain` often builds none (and then never imports the model)."""
        if self._builder is None:
            self._builder = self.layout.builder()
        return self._builder(words, line, text, address)


def shape_of(shapes: dict[bytes, list[Shape]], raw: bytes, key: bytes | None = None, *,
             read: bool = False) -> tuple[Shape, list[bytes]] | None:
    """The shape a line was read with (and its words): found again from its key (given, or worked out), as the
    reader found it. `read`: the reader took this line as an entry, so a key with one shape needs no check."""
    words = raw.split()
    candidates = shapes.get(raw.translate(None, VALUE_CHARS) if key is None else key, ())
    if read and len(candidates) == 1:
        return candidates[0], words
    for shape in candidates:
        if len(words) == shape.words and shape.constants(words) == shape.consts:
            return shape, words
    return None


SENTINEL = b"\x00"


def split_words(lines: list[bytes], words: int, *, nul_free: bool = False) -> list[bytes] | None:
    """The words of `lines` in one list, with a NUL word after each line's: if every line has `words` words,
    line i's word k is at i * (words + 1) + k, so a slice `[k::words + 1]` is a column, the same word of every
    line. None when a line has another number of words. One join and one split in C: the column checks that
    follow need no list per line (what splitting 100,000 lines one by one spends most on). `nul_free`: the
    caller knows that no line holds a NUL byte (one look at the whole file costs less than counting them in
    every chunk)."""
    count = len(lines)
    joined = b" \x00 ".join([*lines, b""])
    if not nul_free and joined.count(SENTINEL) != count:
        return None  # (a line holds a NUL byte: the NUL words could not be told from the separators)
    out = joined.split()
    stride = words + 1
    # Exactly `count` NUL words, all at the separators' places: so every line has exactly `words` words.
    if len(out) != count * stride or out[words::stride].count(SENTINEL) != count:
        return None
    return out
