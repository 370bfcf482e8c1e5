"""One branch of a trace through nftables: the packet as the rules see it at this point (addresses, ports, marks,
conntrack), the probability of getting here, and what it met on the way. Mutable while the walk runs; a branch
forks by `copy()`. Also the address arithmetic the evaluator shares (addresses as ints, prefixes, ranges)."""

from __future__ import annotations

from functools import lru_cache
from socket import AF_INET, AF_INET6, inet_pton
from typing import Any

from iptrace.dataplane import Decision

# ct state / ct status bits (linux/netfilter/nf_conntrack_common.h) and tcp flags, as nft names them.
CT_STATE_BITS = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
CT_STATUS_BITS = {"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32,
                  "dying": 512}
TCP_FLAG_BITS = {"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32, "ecn": 64, "cwr": 128}
BITS = {"ct_state": CT_STATE_BITS, "ct_status": CT_STATUS_BITS, "tcp_flag": TCP_FLAG_BITS}


@lru_cache(maxsize=262144)
def ip_int(text: str) -> int:
    """An address (canonical text) as an int; IPv4 and IPv6 never meet in one comparison."""
    try:
        return int.from_bytes(inet_pton(AF_INET6 if ":" in text else AF_INET, text), "big")
    except OSError:
        raise ValueError(f"{text!r} is not an IP address") from None


@lru_cache(maxsize=8192)
def prefix_bounds(addr: str, length: int) -> tuple[int, int]:
    """(network, mask) of `addr/length` as ints."""
    bits = 128 if ":" in addr else 32
    mask = ((1 << length) - 1) << (bits - length) if length else 0
    return ip_int(addr) & mask, mask


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


class State:
    """One branch. `path` and `chains` are cons lists (newest first) of the rules/elements matched and the chains
    entered; `num/den` its probability; `accept` the last filter-type decision that let it through."""

    __slots__ = ("accept", "assumptions", "bind", "chains", "ct_mark", "den", "dnat_by", "dport", "dst", "hook",
                 "in_iface", "local_origin", "mark", "masq", "notrack", "num", "orig_dport", "orig_dst", "out_iface",
                 "path", "proto", "snat", "sport", "src", "updates", "version")

    def __init__(self, version: int, src: str, dst: str, sport: int, dport: int, proto: str,
                 in_iface: str | None) -> None:
        self.version = version
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.proto = proto
        self.orig_dst = dst
        self.orig_dport = dport
        self.in_iface = in_iface
        self.out_iface: str | None = None
        self.local_origin = False
        self.hook = ""
        self.mark = 0
        self.ct_mark = 0
        # False: tracked (the packet has its connection); True: untracked (`notrack`); None: no connection yet, in
        # the chains hooked before conntrack (priority < -200) of the first hook, where `notrack` takes effect.
        self.notrack: bool | None = False
        self.dnat_by: Decision | None = None
        self.snat: bool | str = False  # str: the address `snat to` named
        self.masq = False
        self.accept: Decision | None = None
        self.num = 1
        self.den = 1
        self.path: Any = None
        self.chains: Any = None
        self.assumptions: tuple[str, ...] = ()
        self.updates: tuple[tuple[str, str, Any], ...] = ()  # (table label, set, key) added from the packet path
        self.bind: dict[int, int] | None = None  # numgen/hash draws of the item being evaluated

    def copy(self) -> State:
        new = State.__new__(State)
        new.accept = self.accept
        new.assumptions = self.assumptions
        new.bind = self.bind
        new.chains = self.chains
        new.ct_mark = self.ct_mark
        new.den = self.den
        new.dnat_by = self.dnat_by
        new.dport = self.dport
        new.dst = self.dst
        new.hook = self.hook
        new.in_iface = self.in_iface
        new.local_origin = self.local_origin
        new.mark = self.mark
        new.masq = self.masq
        new.notrack = self.notrack
        new.num = self.num
        new.orig_dport = self.orig_dport
        new.orig_dst = self.orig_dst
        new.out_iface = self.out_iface
        new.path = self.path
        new.proto = self.proto
        new.snat = self.snat
        new.sport = self.sport
        new.src = self.src
        new.updates = self.updates
        new.version = self.version
        return new

    def blank(self) -> State:
        """A copy with path, chains and assumptions emptied and share 1: the start a walk shared between branches
        is recorded from (memo.py, skeleton.py, splits.py), then replayed onto each."""
        new = self.copy()
        new.path = new.chains = None
        new.assumptions = ()
        new.num = new.den = 1
        return new

    def branch(self, mark: int, ct_mark: int, notrack: bool | None, snat: bool | str, masq: bool, hook: str,
               in_iface: str | None, out_iface: str | None) -> State:
        """`copy()` with the fields a replayed walk restores set to the recorded ones (splits.py: each branch of a
        load-balancing chain's replay, made in one go)."""
        new = State.__new__(State)
        new.accept = self.accept
        new.assumptions = self.assumptions
        new.bind = self.bind
        new.chains = self.chains
        new.ct_mark = ct_mark
        new.den = self.den
        new.dnat_by = self.dnat_by
        new.dport = self.dport
        new.dst = self.dst
        new.hook = hook
        new.in_iface = in_iface
        new.local_origin = self.local_origin
        new.mark = mark
        new.masq = masq
        new.notrack = notrack
        new.num = self.num
        new.orig_dport = self.orig_dport
        new.orig_dst = self.orig_dst
        new.out_iface = out_iface
        new.path = self.path
        new.proto = self.proto
        new.snat = snat
        new.sport = self.sport
        new.src = self.src
        new.updates = self.updates
        new.version = self.version
        return new

    def assume(self, note: str) -> None:
        if note and note not in self.assumptions:
            self.assumptions = (*self.assumptions, note)

    @property
    def ct_state(self) -> int:
        return CT_STATE_BITS["new" if self.notrack is False else "untracked" if self.notrack else "invalid"]

    @property
    def ct_status(self) -> int:
        return (CT_STATUS_BITS["dnat"] if self.dnat_by is not None else 0) | (CT_STATUS_BITS["snat"] if self.snat
                                                                              else 0)


class Segment(list):  # type: ignore[type-arg]
    """Several entries of a cons list held by one cell, oldest first (a replayed walk, memo.py)."""

    __slots__ = ()


class Bound(tuple):  # type: ignore[type-arg]
    """Several entries of a cons list held by one cell, oldest first, those of a walk's own chains told by their
    position among the codes (a walk replayed on another chain of its shape, splits.py): `(entries, codes, ref)`
    with (position, rule index, map, element) path entries made with `ref` (the walker's (chain, index) → rule),
    or, when `ref` is None, chain keys. Unfolded when the list is read: most replayed branches' paths never are.
    (A tuple: made without calling an __init__, once per replayed branch.)"""

    __slots__ = ()

    def unfold(self) -> list[Any]:
        entries, codes, ref = self
        if ref is None:
            return [codes[k].key if type(k) is int else k for k in entries]
        return [e if type(e[0]) is not int else (codes[e[0]], ref(codes[e[0]], e[1]), e[2], e[3]) for e in entries]


def cons_list(cell: Any) -> list[Any]:
    """A cons list (newest first) as a list, oldest first; Segment and Bound cells unfolded."""
    out: list[Any] = []
    while cell is not None:
        head = cell[0]
        if type(head) is Segment:
            out.extend(reversed(head))
        elif type(head) is Bound:
            out.extend(reversed(head.unfold()))
        else:
            out.append(head)
        cell = cell[1]
    out.reverse()
    return out
