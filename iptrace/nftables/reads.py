"""What an nft item draws and reads of a branch, for the walk's splits and memos: the numgen/hash expressions it
draws a number from (`forks`), and the branch fields it reads (`reads`: memo.py's keys hold them)."""

from __future__ import annotations

from typing import Any

from iptrace.nftables.chance import Chance, chance
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Concat,
    Counter,
    Ct,
    Fib,
    Flags,
    Hash,
    Mangle,
    MapLookup,
    Match,
    Meta,
    Nat,
    Numgen,
    Payload,
    Prefix,
    Range,
    Reject,
    Selector,
    SetRef,
    Statement,
    Verdict,
    VerdictMap,
    Xt,
)
from iptrace.nftables.model import Unknown as UnknownItem

_NO_DRAW = frozenset({Payload, Meta, Ct, Fib, Selector, str, int, Prefix, Range, Flags, SetRef, AnonSet,
                      type(None)})


def forks(e: Any) -> list[Numgen | Hash] | list[Chance]:
    """The numgen/hash expressions inside an item (each draws its own number when the item runs); for a match on
    `meta random`, its Chance alone."""
    if type(e) in _NO_DRAW:
        return []
    if isinstance(e, Match):
        if type(e.left) is Binop or type(e.left) is Meta:
            found = chance(e)
            if found is not None:
                return [found]
        return forks(e.left) if type(e.left) not in _NO_DRAW else []
    if isinstance(e, (Numgen, Hash)):
        return [e]
    if isinstance(e, Binop):
        return [*forks(e.left), *forks(e.right)]
    if isinstance(e, Concat):
        return [x for p in e.parts for x in forks(p)]
    if isinstance(e, MapLookup):
        return forks(e.key)
    if isinstance(e, VerdictMap):
        return forks(e.key)
    if isinstance(e, Mangle):
        return forks(e.value)
    if isinstance(e, Nat):
        return [*forks(e.addr), *forks(e.port)]
    return []


# What each expression reads of a branch (State attribute names), for memo.py's keys. None: cannot tell.
_PAYLOAD_FIELDS = {"saddr": ("src",), "daddr": ("dst",), "dport": ("dport", "proto"), "sport": ("sport", "proto"),
                   "protocol": ("proto",), "nexthdr": ("proto",), "flags": ("proto",)}
_META_FIELDS = {"l4proto": ("proto",), "mark": ("mark",), "iifname": ("in_iface",), "oifname": ("out_iface",),
                "iif": ("in_iface",), "oif": ("out_iface",), "nfproto": (), "protocol": (), "nftrace": (),
                "pkttype": ("dst",)}
# (every ct key reads `notrack`: whether the packet has a connection)
_CT_FIELDS = {"state": ("notrack",), "status": ("notrack", "dnat_by", "snat"), "mark": ("notrack", "ct_mark"),
              "direction": ("notrack",), "l3proto": ("notrack",), "protocol": ("notrack", "proto"),
              "zone": ("notrack",), "saddr": ("notrack", "src", "dst"), "daddr": ("notrack", "src", "orig_dst"),
              "proto-dst": ("notrack", "sport", "orig_dport"), "proto-src": ("notrack", "sport", "dport")}


def reads(e: Any) -> set[str] | None:
    """The branch fields an item or expression reads; None when it is not known (read everything)."""
    if e is None or isinstance(e, (str, int, Prefix, Range, Flags, SetRef, AnonSet)):
        return set()
    if isinstance(e, Payload):
        found = _PAYLOAD_FIELDS.get(e.field)
        return {*found, "proto"} if found is not None else {"proto"}
    if isinstance(e, Meta):
        meta = _META_FIELDS.get(e.key)
        return set(meta) if meta is not None else set()
    if isinstance(e, Ct):
        ct = _CT_FIELDS.get(e.key)
        return set(ct) if ct is not None else {"notrack"}
    if isinstance(e, Fib):
        return {"src", "dst"}
    if isinstance(e, (Numgen, Hash)):
        return reads(e.expr) if isinstance(e, Hash) else set()
    if isinstance(e, Binop):
        left, right = reads(e.left), reads(e.right)
        return None if left is None or right is None else left | right
    if isinstance(e, Concat):
        out: set[str] = set()
        for p in e.parts:
            found = reads(p)
            if found is None:
                return None
            out |= found
        return out
    if isinstance(e, MapLookup):
        return reads(e.key)
    if isinstance(e, Match):
        left = reads(e.left)
        return None if left is None else left | ({"updates"} if isinstance(e.right, SetRef) else set())
    if isinstance(e, VerdictMap):
        return reads(e.key)
    if isinstance(e, Mangle):
        return reads(e.value)
    if isinstance(e, Nat):
        addr, port = reads(e.addr), reads(e.port)
        return None if addr is None or port is None else addr | port
    if isinstance(e, (Selector, Verdict, Reject, Counter, Statement, Xt, UnknownItem)):
        return set()  # verdicts, counters, notes: they read no branch field (the walk only records notes)
    return None
