"""A line's shape: the line with every character a value is made of deleted. The reader keys lines by it and
keeps, per shape, where each word is and what it must be; the table finds a line's shape again the same way
when it builds that line's entry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from iptrace.conntrack.layout import CONSTANT_ROLES, ORIGINAL, REPLY, STATE, TUPLE, Builder, Layout

# What values are made of (digits, hex digits, `.` and `:`); whatever else a line holds is its shape.
VALUE_CHARS = b"0123456789abcdef.:"


class Shape:
    """One layout with one set of constant words (protocol, state, flags, family), compiled for the reader's
    per-line loop: `constants(words) == consts` recognises a line; `main(words)` picks its addresses and the
    values whose key means one kind everywhere (proven by `proven`, else by `check`), `ports(words)` its port
    words, `others` the rest (keys of several kinds: icmp's id= is 16 bits, the entry's id= 32)."""

    __slots__ = ("builder", "check", "constants", "consts", "dport", "dst", "family", "key", "main",
                 "others", "ports", "proto", "proven", "rsport", "state", "words")

    def __init__(self, layout: Layout, words: Sequence[bytes]) -> None:
        roles = layout.roles
        constant = [i for i, r in enumerate(roles) if r.role in CONSTANT_ROLES]
        self.words = len(words)
        self.constants: Callable[[Sequence[bytes]], Any] = itemgetter(*constant)
        self.consts = tuple(words[i] for i in constant)
        original = {r.key: i for i, r in enumerate(roles) if r.role == TUPLE and r.direction == ORIGINAL}
        reply = {r.key: i for i, r in enumerate(roles) if r.role == TUPLE and r.direction == REPLY}
        self.dst = original["dst"]
        self.dport = original.get("dport", -1)
        self.rsport = reply.get("sport", -1)
        # What a trace and a deletion filter tell flows apart by (the source port aside): the table groups the
        # lines of one destination by these words.
        self.key: Callable[[Sequence[bytes]], tuple[bytes, ...]] = itemgetter(
            self.dst, self.dport if self.dport >= 0 else self.dst, original["src"], reply["src"],
            self.rsport if self.rsport >= 0 else reply["src"])
        state = next((i for i, r in enumerate(roles) if r.role == STATE), None)
        self.state = words[state].decode() if state is not None else None
        self.family = layout.family
        self.proto = layout.proto
        self.builder: Builder = layout.builder()
        # Set by the reader, which owns the sets of proven words.
        self.main: Callable[[Sequence[bytes]], tuple[bytes, ...]] = itemgetter(0, 0)
        self.proven: set[bytes] = set()
        self.check: Callable[[tuple[bytes, ...]], bool] = lambda words: False
        self.ports: Callable[[Sequence[bytes]], tuple[bytes, ...]] | None = None
        self.others: tuple[tuple[Callable[[Sequence[bytes]], tuple[bytes, ...]], set[bytes],
                                 Callable[[tuple[bytes, ...]], bool]], ...] = ()


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
