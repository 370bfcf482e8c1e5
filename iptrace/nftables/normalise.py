"""The kernel's rewrites, applied to every form so that equal rulesets give equal models.

Within a rule: `reject with tcp reset` implies its `meta l4proto tcp` (the kernel adds or hides that match
depending on the family), `dnat ip to` in an ip table is `dnat to`, defaults the kernel leaves out of a listing
(`limit … burst 5 packets`, `log level warn`) go. Across a table: a set a rule updates from the packet path
is `dynamic` with `size 65535` unless sized (nft does this when it adds the rule), a set with a timeout has the
`timeout` flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import cache
from typing import Any

from iptrace.nftables import values
from iptrace.nftables.model import (
    Binop,
    Concat,
    Mangle,
    Match,
    Meta,
    Nat,
    Payload,
    Reject,
    Ruleset,
    Set,
    SetUpdate,
    Statement,
    VerdictMap,
)
from iptrace.nftables.vocabulary import REJECT_DEFAULT, STATEMENT_DEFAULTS

# The default size nft gives a set that rules add elements to.
DYNAMIC_SET_SIZE = 65535
_TCP_DEPENDENCIES = (Meta("l4proto"), Payload("ip", "protocol"), Payload("ip6", "nexthdr"))
_PAYLOAD_OF = {"ipv6-icmp": "icmpv6"}  # the protocol's name → the header's (`icmpv6 type …`)
_DEFAULTS: dict[str, tuple[tuple[str, ...], ...]] = {**STATEMENT_DEFAULTS, "log": (("level", "warn"),)}


def _protocol_match(item: Any) -> str | None:
    """The protocol `meta l4proto tcp` / `ip protocol tcp` tests, else None."""
    if isinstance(item, Match) and item.op == "==" and item.left in _TCP_DEPENDENCIES and isinstance(item.right, str):
        return _PAYLOAD_OF.get(item.right, item.right)
    return None


def _uses_header(item: Any, protocol: str) -> bool:
    left = item.left if isinstance(item, Match) else item.key if isinstance(item, (VerdictMap, Mangle)) else None
    parts = left.parts if isinstance(left, Concat) else (left.left,) if isinstance(left, Binop) else (left,)
    return any(isinstance(p, Payload) and p.protocol == protocol for p in parts)


def normalise_items(items: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop a protocol match the kernel treats as a dependency of what follows (and leaves out of its
    listing): `meta l4proto tcp` before `tcp dport 80`, or before `reject with tcp reset`."""
    out = list(items)
    for i in range(len(out) - 1, -1, -1):
        protocol = _protocol_match(out[i])
        if protocol is None:
            continue
        later = out[i + 1:]
        if any(_uses_header(x, protocol) for x in later) or (
                protocol == "tcp" and later and isinstance(later[0], Reject) and later[0].kind == "tcp reset"):
            del out[i]
    return tuple(out) if len(out) != len(items) else items


def make_reject(kind: str, code: Any, family: str) -> Reject:
    """`reject with icmp type port-unreachable` in an ip table is the kernel's bare `reject`."""
    if (kind, code) == REJECT_DEFAULT.get(family):
        return Reject()
    return Reject(kind, code)


def make_nat(kind: str, family: str | None, target: tuple[Any, Any], flags: tuple[str, ...]) -> Nat:
    return Nat(kind, family, target[0], target[1], tuple(sorted(flags)))


@cache
def nat_from_text(kind: str, family: str | None, addr_type: str, flags: tuple[str, ...]) -> Callable[[str], Nat]:
    """The Nat of `dnat to TARGET` as a function of the target's text (one call per kube-proxy endpoint)."""
    target = values.nat_target(addr_type)
    flags = tuple(sorted(flags))

    def build(text: str) -> Nat:
        addr, port = target(text)
        return Nat(kind, family, addr, port, flags)

    return build


def make_statement(keyword: str, args: tuple[str, ...]) -> Statement:
    for default in _DEFAULTS.get(keyword, ()):
        n = len(default)
        for i in range(len(args) - n + 1):
            if args[i:i + n] == default:
                args = args[:i] + args[i + n:]
                break
    return Statement(keyword, args)


def updated_sets(rules: Iterable[Any]) -> set[str]:
    """Names of the sets the packet path adds to (`update @s { … }`, `add @s { … }`)."""
    names: set[str] = set()
    for rule in rules:
        for item in rule.items:
            if isinstance(item, SetUpdate):
                names.add(item.set)
    return names


def normalise_set(s: Set, *, updated: bool) -> Set:
    flags = set(s.flags)
    size = s.size
    if s.timeout_ms is not None:
        flags.add("timeout")
    if updated:
        flags.add("dynamic")
        if size is None:
            size = DYNAMIC_SET_SIZE
    new_flags = tuple(sorted(flags))
    if new_flags == s.flags and size == s.size:
        return s
    return replace(s, flags=new_flags, size=size)


def without_json_gaps(ruleset: Ruleset) -> Ruleset:
    """`ruleset` without what nftables 1.0.6's JSON output leaves out — table and chain comments, chain
    devices, a `dynamic` flag no rule implies — so that a text model can be compared with the JSON one."""
    tables = []
    for t in ruleset.tables:
        updated = updated_sets(r for c in t.chains for r in c.rules)
        chains = tuple(replace(c, comment=None, base=c.base and replace(c.base, devices=())) for c in t.chains)
        sets = tuple(replace(s, flags=tuple(f for f in s.flags if f != "dynamic" or s.name in updated))
                     for s in t.sets)
        tables.append(replace(t, chains=chains, sets=sets, comment=None))
    return replace(ruleset, tables=tuple(tables))
