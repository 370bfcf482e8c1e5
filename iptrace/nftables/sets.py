"""Looking a packet's key up in a set or map as the kernel does: exact keys by a dict (a `service-ips` map of
50,000 elements costs one hash lookup), interval elements (prefixes, ranges, also inside concatenations) by
comparison. Keys are the model's normalised values (canonical address text, ints, protocol names)."""

from __future__ import annotations

from typing import Any

from iptrace.nftables.model import AnonSet, Element, Prefix, Range, Set
from iptrace.nftables.state import ip_int, prefix_bounds
from iptrace.nftables.vocabulary import STRING_TYPES


def _wildcard(value: Any) -> bool:
    """A string ending in `*` (`iifname "veth*"`): nft matches every string it begins (a prefix compare); or in an
    escaped `\\*` (`iifname "a\\*"`, values._string), a literal star. covers() tells them apart."""
    return isinstance(value, str) and value.endswith("*")


def _interval(value: Any) -> bool:
    if isinstance(value, (Prefix, Range)):
        return True
    return isinstance(value, tuple) and any(isinstance(p, (Prefix, Range)) for p in value)


def _wildcarded(value: Any) -> bool:
    return _wildcard(value) or (isinstance(value, tuple) and any(_wildcard(p) for p in value))


def _order(value: Any) -> Any:
    """A scalar as something `<` compares the way the kernel does: addresses as ints."""
    if isinstance(value, str) and ("." in value or ":" in value):
        try:
            return ip_int(value)
        except ValueError:
            return value
    return value


def covers(part: Any, value: Any) -> bool:
    """Whether one element (part) holds `value`: a prefix or range contains it, a wildcard string begins it, a
    scalar equals it."""
    if isinstance(part, Prefix):
        if not isinstance(value, str):
            return False
        try:
            net, mask = prefix_bounds(part.addr, part.length)
            return (ip_int(value) & mask) == net and (":" in value) == (":" in part.addr)
        except ValueError:
            return False
    if isinstance(part, Range):
        low, high, v = _order(part.low), _order(part.high), _order(value)
        try:
            return bool(low <= v <= high) and type(low) is type(v)
        except TypeError:
            return False
    if isinstance(part, tuple):
        return isinstance(value, tuple) and len(part) == len(value) and all(
            covers(p, v) for p, v in zip(part, value, strict=True))
    if isinstance(part, str) and part.endswith("*"):
        if part.endswith("\\*"):
            return value == part[:-2] + "*"
        return isinstance(value, str) and value.startswith(part[:-1])
    return bool(part == value)


class SetIndex:
    """The elements of one set, map or anonymous set, ready for look-ups. `dynamic`: a set the packet path fills
    (`update @set { ip saddr }`, session affinity; loading flags every set a rule updates `dynamic`): a first
    packet finds none of its entries. A timeout alone does not make one: the elements of a set no rule fills (a
    firewall's block list with `flags timeout`) are looked up as listed, as the kernel does."""

    __slots__ = ("dynamic", "exact", "name", "ranged", "set")

    def __init__(self, elements: tuple[Element, ...], name: str | None = None, source: Set | None = None) -> None:
        self.name = name
        self.set = source
        self.exact: dict[Any, Element] = {}
        self.ranged: list[Element] = []
        # (only keys of a string type can be wildcards: `service-ips` need not be looked over for them)
        strings = source is None or any(t in STRING_TYPES for t in source.key_type)
        for e in elements:
            if _interval(e.key) or (strings and _wildcarded(e.key)):
                self.ranged.append(e)
            else:
                self.exact.setdefault(e.key, e)
        self.dynamic = source is not None and "dynamic" in source.flags

    @classmethod
    def of(cls, s: Set | AnonSet) -> SetIndex:
        if isinstance(s, AnonSet):
            return cls(s.elements)
        return cls(s.elements, s.name, s)

    def find(self, key: Any) -> Element | None:
        found = self.exact.get(key)
        if found is not None:
            return found
        for e in self.ranged:
            if covers(e.key, key):
                return e
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.ranged)
