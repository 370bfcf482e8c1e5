"""What each word of an entry line is: the structure lark found, checked against the vocabulary.

`read_layout` turns one parsed line into a `Layout` (a role per word) or raises ParseError naming the column
and what was expected there; `Layout.build` turns the words of any line of that layout into a ConntrackEntry.
Every line of one shape shares one Layout, so this runs once per shape, not once per line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from iptrace.conntrack import vocabulary as v
from iptrace.errors import ParseError

if TYPE_CHECKING:
    from iptrace.conntrack.grammar import Word
    from iptrace.conntrack.model import ConntrackEntry, FlowTuple

# Roles of a word. Constant roles must be the same word on every line of a shape; the others carry values.
FAMILY, FAMILY_NUMBER, PROTO, PROTO_NUMBER, STATE, FLAG = "family", "family#", "proto", "proto#", "state", "flag"
CONSTANT_ROLES = frozenset({FAMILY, FAMILY_NUMBER, PROTO, PROTO_NUMBER, STATE, FLAG})
TIMEOUT, TUPLE, COUNTER, FIELD = "timeout", "tuple", "counter", "field"
PROTO_INFO = "proto-info"  # a tracker's own field before the original tuple (vocabulary.PROTO_INFO_FIELDS)
ORIGINAL, REPLY = "original", "reply"


# (Records here are NamedTuples: frozen values as a frozen dataclass is, made ~6x cheaper when the module is imported,
# which `explain --conntrack` does every run.)
class Role(NamedTuple):
    role: str
    direction: str = ""  # ORIGINAL | REPLY for TUPLE and COUNTER
    key: str = ""  # the field's key ("" for header words and flags)
    kind: str = ""  # vocabulary kind of the value (ADDRESS, PORT, …); "" for constants

    @property
    def prefix(self) -> str:
        return f"{self.key}=" if self.key else ""


class Layout(NamedTuple):
    """A role per word; `family` is None for plain `conntrack -L` lines (the addresses tell)."""

    roles: tuple[Role, ...]
    family: str | None
    proto: str

    def builder(self) -> Builder:
        """`build(words, line, text, address)`: the entry of a line of this layout (`words` its whitespace-split
        words; `address` normalises an address). Worked out once per layout; the reader keeps it per shape."""
        return _plan(self)


Builder = Callable[[Sequence[str], int, str, Callable[[str], str]], "ConntrackEntry"]


def _plan(layout: Layout) -> Builder:
    # (the model is imported when the first entry is built: `explain` with a table often builds none, and its two
    # frozen dataclasses cost ~1 ms to create)
    from iptrace.conntrack.model import ConntrackEntry, FlowTuple

    roles = layout.roles

    def at(role: str, direction: str = "", key: str = "") -> int | None:
        return next((i for i, r in enumerate(roles) if r.role == role and r.direction == direction
                     and (not key or r.key == key)), None)

    tuples = []
    for d in (ORIGINAL, REPLY):
        src, dst, sport, dport = (at(TUPLE, d, k) for k in ("src", "dst", "sport", "dport"))
        rest = tuple((i, roles[i].key) for i, r in enumerate(roles) if r.role == TUPLE and r.direction == d
                     and r.key not in ("src", "dst", "sport", "dport"))
        counters = tuple((i, roles[i].key) for i, r in enumerate(roles) if r.role == COUNTER and r.direction == d)
        tuples.append((src, dst, sport, dport, rest, counters))
    timeout, state, number = at(TIMEOUT), at(STATE), at(PROTO_NUMBER)
    mark, zone = at(FIELD, key="mark"), at(FIELD, key="zone")
    flags = tuple(i for i, r in enumerate(roles) if r.role == FLAG)
    fields = tuple((i, r.key) for i, r in enumerate(roles) if r.role == FIELD and r.key not in ("mark", "zone"))
    family, proto = layout.family, layout.proto
    assert number is not None

    def pairs(words: Sequence[str], where: tuple[tuple[int, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple([(k, words[i][len(k) + 1:]) for i, k in where]) if where else ()

    def flow(words: Sequence[str], plan: tuple[Any, ...], address: Callable[[str], str]) -> FlowTuple:
        src, dst, sport, dport, rest, counters = plan
        return FlowTuple(address(words[src][4:]), address(words[dst][4:]),
                         int(words[sport][6:]) if sport is not None else None,
                         int(words[dport][6:]) if dport is not None else None,
                         pairs(words, rest), pairs(words, counters))

    mark_at = len("mark=")
    zone_at = len("zone=")

    def build(words: Sequence[str], line: int, text: str, address: Callable[[str], str]) -> ConntrackEntry:
        original, reply = flow(words, tuples[0], address), flow(words, tuples[1], address)
        return ConntrackEntry(
            family or ("ipv6" if ":" in original.src else "ipv4"), proto, int(words[number]),
            words[state] if state is not None else None,
            int(words[timeout]) if timeout is not None else None, original, reply,
            tuple([words[i][1:-1] for i in flags]) if flags else (),
            int(words[mark][mark_at:]) if mark is not None else None,
            int(words[zone][zone_at:]) if zone is not None else None,
            pairs(words, fields), line, text)

    return build


class _Reader:
    """One pass over a line's tokens: the state machine of what may come next."""

    def __init__(self, source: str, line_no: int, text: str) -> None:
        self.source, self.line_no, self.text = source, line_no, text
        self.roles: list[Role] = []
        self.versions: list[tuple[int, Word]] = []

    def error(self, why: str, column: int) -> ParseError:
        return ParseError(why, source=self.source, line=self.line_no, column=column, text=self.text)

    def header(self, toks: list[Word]) -> tuple[str | None, str, int]:
        """Family, protocol and where the fields start."""
        names = [i for i, t in enumerate(toks) if t.type == "NAME"]
        family: str | None = None
        i = 0
        if len(names) == 2:
            family = str(toks[0])
            if family not in v.FAMILIES:
                raise self.error(f"unknown family {family!r}; expected {' or '.join(v.FAMILIES)}", toks[0].column)
            if int(toks[1]) != v.FAMILIES[family]:
                raise self.error(f"{family} is family number {v.FAMILIES[family]}, not {toks[1]}", toks[1].column)
            self.roles += [Role(FAMILY), Role(FAMILY_NUMBER)]
            i = 2
        proto, number = toks[i], toks[i + 1]
        if proto not in v.PROTOCOLS:
            if proto in v.FAMILIES:
                raise self.error(f"expected a protocol name after the family, found {toks[i + 1]!r}",
                                 toks[i + 1].column)
            raise self.error(f"unknown protocol {str(proto)!r}; expected one of {', '.join(v.PROTOCOLS)}",
                             proto.column)
        known = v.PROTOCOLS[str(proto)]
        if (known is not None and int(number) != known) or not v.check_value(v.U8, str(number)):
            raise self.error(f"{proto} is protocol number {known}, not {number}" if known is not None
                             else f"protocol number {number} is out of range (0-255)", number.column)
        self.roles += [Role(PROTO), Role(PROTO_NUMBER)]
        i += 2
        if i < len(toks) and toks[i].type == "NUMBER":
            if not v.check_value(v.U32, str(toks[i])):
                raise self.error(f"timeout {toks[i]} is out of range; expected seconds (a 32-bit number)",
                                 toks[i].column)
            self.roles.append(Role(TIMEOUT, kind=v.U32))
            i += 1
        if i < len(toks) and toks[i].type == "STATE":
            if proto not in v.STATEFUL:
                raise self.error(f"{proto} entries have no state; found {str(toks[i])!r}", toks[i].column)
            self.roles.append(Role(STATE))
            i += 1
        return family, str(proto), i

    def value(self, tok: Word, key: str, kind: str) -> None:
        value = tok[len(key) + 1:]
        column = tok.column + len(key) + 1
        if kind == v.ADDRESS:
            try:
                self.versions.append((ipaddress.ip_address(value).version, tok))
            except ValueError:
                raise self.error(f"invalid address {value!r} in {key}=; expected {v.expected_value(kind)}",
                                 column) from None
        elif not v.check_value(kind, value):
            raise self.error(f"invalid value {value!r} in {key}=; expected {v.expected_value(kind)}", column)

    def items(self, toks: list[Word], proto: str) -> None:
        needed: list[tuple[str, str]] = []
        direction = ""
        phase = "start"  # start → original → after-original → reply → after-reply → fields
        seen: set[str] = set()
        tuple_fields = v.ADDRESS_FIELDS + v.TUPLE_FIELDS[proto]
        info = list(v.PROTO_INFO_FIELDS.get(proto, ()))
        for tok in toks:
            if tok.type == "FLAG":
                self.flag(tok, phase)
                if phase == "fields":
                    pass
                continue
            key = tok.split("=", 1)[0]
            if needed:
                want, kind = needed[0]
                if key != want:
                    raise self.error(f"unexpected {key}=; expected {want}=… ({direction} tuple of a {proto} entry)",
                                     tok.column)
                needed.pop(0)
                self.value(tok, key, kind)
                self.roles.append(Role(TUPLE, direction, key, kind))
                if not needed:
                    phase = f"after-{direction}"
                continue
            if key == "src" and phase in ("start", "after-original"):
                direction = ORIGINAL if phase == "start" else REPLY
                needed = list(tuple_fields[1:])
                self.value(tok, key, v.ADDRESS)
                self.roles.append(Role(TUPLE, direction, key, v.ADDRESS))
                phase = direction
                continue
            if phase == "start" and key in dict(info):
                while info[0][0] != key:  # (in the kernel's order; one may be missing)
                    info.pop(0)
                kind = info.pop(0)[1]
                self.value(tok, key, kind)
                self.roles.append(Role(PROTO_INFO, "", key, kind))
                continue
            if phase == "start":
                raise self.error(f"unexpected {key}=; expected src=… (the original tuple)", tok.column)
            if phase in ("after-original", "after-reply") and key in v.DIRECTION_FIELDS[direction]:
                self.value(tok, key, v.DIRECTION_FIELDS[direction][key])
                self.roles.append(Role(COUNTER, direction, key, v.DIRECTION_FIELDS[direction][key]))
                continue
            if phase == "after-original":
                raise self.error(f"unexpected {key}=; expected src=… (the reply tuple)", tok.column)
            if key not in v.ENTRY_FIELDS:
                raise self.error(f"unknown field {key}=; expected one of {', '.join(v.ENTRY_FIELDS)}", tok.column)
            if key in seen:
                raise self.error(f"{key}= appears twice in one entry", tok.column)
            seen.add(key)
            phase = "fields"
            self.value(tok, key, v.ENTRY_FIELDS[key])
            self.roles.append(Role(FIELD, "", key, v.ENTRY_FIELDS[key]))
        if phase not in ("after-reply", "fields"):
            column = len(self.text.rstrip()) + 1
            what = f"{needed[0][0]}=… ({direction} tuple)" if needed else "src=… (the reply tuple)"
            raise self.error(f"unexpected end of line; expected {what}: the entry is cut short", column)

    def flag(self, tok: Word, phase: str) -> None:
        inner = tok[1:-1]
        if inner in v.FLAGS_BETWEEN_TUPLES:
            if phase != "after-original":
                raise self.error(f"[{inner}] belongs between the original and the reply tuple", tok.column)
        elif inner in v.FLAGS_AFTER_REPLY or inner.startswith(v.TIMESTAMP_FLAGS):
            if phase not in ("after-reply", "fields"):
                raise self.error(f"[{inner}] belongs after the reply tuple", tok.column)
        else:
            known = sorted(v.FLAGS_BETWEEN_TUPLES | v.FLAGS_AFTER_REPLY)
            raise self.error(f"unknown flag {str(tok)!r}; expected {', '.join(f'[{f}]' for f in known)}", tok.column)
        self.roles.append(Role(FLAG))

    def families(self, family: str | None) -> None:
        if not self.versions:
            return
        first = self.versions[0][0]
        wanted = {"ipv4": 4, "ipv6": 6}.get(family or "", first)
        for version, tok in self.versions:
            if version != wanted:
                what = f"a {family} entry" if family else f"an IPv{first} entry"
                raise self.error(f"IPv{version} address in {what}", tok.column + tok.index("=") + 1)


def read_layout(toks: list[Word], *, source: str, line_no: int, text: str) -> Layout:
    """The layout of one entry line (its tokens from the grammar); raises ParseError where it is wrong."""
    reader = _Reader(source, line_no, text)
    family, proto, start = reader.header(toks)
    reader.items(toks[start:], proto)
    reader.families(family)
    return Layout(tuple(reader.roles), family, proto)
