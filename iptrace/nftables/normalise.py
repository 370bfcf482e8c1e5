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
from iptrace.nftables.model import Match, Meta, Nat, Payload, Reject, Ruleset, Set, SetUpdate, Statement
from iptrace.nftables.vocabulary import STATEMENT_DEFAULTS

# The default size nft gives a set that rules add elements to.
DYNAMIC_SET_SIZE = 65535
_TCP_DEPENDENCIES = (Meta("l4proto"), Payload("ip", "protocol"), Payload("ip6", "nexthdr"))
_DEFAULTS: dict[str, tuple[tuple[str, ...], ...]] = {**STATEMENT_DEFAULTS, "log": (("level", "warn"),)}


def normalise_items(items: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the protocol match the kernel treats as part of `reject with tcp reset`."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        if isinstance(out[i], Reject) and out[i].kind == "tcp reset":
            prev = out[i - 1]
            if isinstance(prev, Match) and prev.op == "==" and prev.right == "tcp" and prev.left in _TCP_DEPENDENCIES:
                del out[i - 1]
    return tuple(out) if len(out) != len(items) else items


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
