"""The datatype of an expression: what the values it is compared with, set to or looked up by mean
(`ip saddr` → ipv4_addr, `meta mark` → mark, `ip daddr . th dport` → (ipv4_addr, inet_service)).
Shared by the readers (to normalise values) and the renderer (to print them back)."""

from __future__ import annotations

from iptrace.nftables.model import Binop, Concat, Ct, Expr, Fib, Hash, MapLookup, Meta, Numgen, Payload, Selector
from iptrace.nftables.vocabulary import BITMASK_TYPES, CT, FIB_RESULTS, META, PAYLOAD, SELECTOR_TYPES

ANY = "any"


def expr_type(expr: object, family: str = "ip") -> str:
    """The datatype of one (non-concatenated) expression; ANY when iptrace cannot tell."""
    if isinstance(expr, Payload):
        return PAYLOAD.get(expr.protocol, {}).get(expr.field, ANY)
    if isinstance(expr, Meta):
        return META.get(expr.key, ANY)
    if isinstance(expr, Ct):
        if expr.key in ("saddr", "daddr"):
            fam = expr.family or family
            return "ipv6_addr" if fam == "ip6" else "ipv4_addr" if fam == "ip" else "ct_addr"
        return CT.get(expr.key, ANY)
    if isinstance(expr, Fib):
        return FIB_RESULTS.get(expr.result, ANY)
    if isinstance(expr, (Numgen, Hash)):
        return "integer"
    if isinstance(expr, Selector):
        return SELECTOR_TYPES.get(expr.words, ANY)
    if isinstance(expr, Binop):
        return expr_type(expr.left, family)
    if isinstance(expr, MapLookup):
        return ANY
    return ANY


def key_types(expr: Expr, family: str = "ip") -> tuple[str, ...]:
    """The datatypes of a lookup key: one per part of a concatenation."""
    if isinstance(expr, Concat):
        return tuple(expr_type(p, family) for p in expr.parts)
    return (expr_type(expr, family),)


def is_bitmask(expr: object, family: str = "ip") -> bool:
    return expr_type(expr, family) in BITMASK_TYPES
