"""A match on `meta random`: a chance, not a property of the packet.

`meta random` is a fresh uniform 32-bit number for every packet the rule sees. iptables-nft writes iptables'
`-m statistic --mode random --probability P` (kube-proxy's iptables-mode endpoint split, on a node whose iptables
is the nf_tables backend) as `meta random & 2147483647 < P·2^31`, as xt_statistic compares it, and nft lists it
that way. Such a match holds with an exact probability whatever the packet is: the walk splits there, one branch
that matched and one that did not, each with its share (chains.Walker._fork).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from iptrace.nftables.model import Binop, Match, Meta

_BITS = 32
_ALL = (1 << _BITS) - 1
_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!="})


class Chance:
    """How likely a `meta random` match holds: num/den in lowest terms (0/1: never, 1/1: always)."""

    __slots__ = ("den", "num")

    def __init__(self, num: int, den: int) -> None:
        self.num = num
        self.den = den

    def __repr__(self) -> str:
        return f"Chance({self.num}/{self.den})"


def chance(m: Match) -> Chance | None:
    """The probability that match `m` holds when it compares `meta random` (masked by a constant or not) with a
    constant; None for any other match."""
    left: Any = m.left
    mask = _ALL
    if type(left) is Binop and left.op == "&" and type(left.right) is int:
        mask = left.right & _ALL
        left = left.left
    if type(left) is not Meta or left.key != "random" or type(m.right) is not int or m.op not in _RELATIONS:
        return None
    t = m.right
    # Every value of `random & mask` is one submask of `mask`, each as likely as the others.
    free = bin(mask).count("1")
    if m.op in ("==", "!="):
        hits = int(0 <= t <= _ALL and t & ~mask == 0)
    else:
        below = _submasks_below(mask, t + (m.op in ("<=", ">")))
        hits = below if m.op in ("<", "<=") else (1 << free) - below
    if m.op == "!=":
        hits = (1 << free) - hits
    share = Fraction(hits, 1 << free)
    return Chance(share.numerator, share.denominator)


def _submasks_below(mask: int, t: int) -> int:
    """How many submasks of `mask` (values v with v & ~mask == 0) are less than t."""
    if t <= 0:
        return 0
    if t > _ALL:
        return 1 << bin(mask).count("1")
    count = 0
    for b in range(_BITS - 1, -1, -1):
        bit = 1 << b
        if t & bit:
            count += 1 << bin(mask & (bit - 1)).count("1")  # (a 0 where t has a 1: any lower bits are less)
            if not mask & bit:
                return count  # (the value cannot have that 1: none equals t from here on)
        # (where t has a 0, a value equal to t so far has a 0 too; a 1 would pass t)
    return count  # (equal to t: not below)
