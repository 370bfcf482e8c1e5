"""The mutable state of one branch of a trace (copied on every split) and the static trace context."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from socket import AF_INET, inet_pton
from typing import Any

from iptrace.dataplane import Decision
from iptrace.errors import InputError, TraceError
from iptrace.routes import RouteTable

# A terminal result of a chain walk: (verdict, decision); None = the chain returned / fell off its end.
Terminal = tuple[str, Decision | None] | None  # (None: decided by no rule, the node's routes)

# A persistent singly linked list: (head, tail) or None. Branches share their common prefix for free.
Cons = tuple[Any, "Cons"] | None


def cons_prefix(cell: Cons, stop: Cons = None) -> tuple[Any, ...] | None:
    """The items a cons list gained in front of `stop` (its whole length when None), oldest first; None if `stop`
    is not its tail."""
    items = []
    while cell is not stop:
        if cell is None:
            return None
        items.append(cell[0])
        cell = cell[1]
    items.reverse()
    return tuple(items)


def cons_push(cell: Cons, items: Iterable[Any]) -> Cons:
    """`cell` with `items` (oldest first) pushed in front."""
    for item in items:
        cell = (item, cell)
    return cell


def merged_assumptions(assumptions: tuple[str, ...], made: tuple[str, ...]) -> tuple[str, ...]:
    """`State.assume` of every text in `made`, in order."""
    new = tuple(text for text in made if text not in assumptions)
    return assumptions + new if new else assumptions


@functools.lru_cache(maxsize=4096)  # (an address is read again soon after: the same rules, the same Service)
def ip_int(text: str) -> tuple[int, int]:
    """(version, integer) of an address; dotted quads take a fast path (a dump holds ~10^5 of them): as the C
    library reads them (inet_pton: four decimal numbers 0-255, the form rules are written in), else split and read
    by int(). Cached: an endpoint's address is read from its -s test and its DNAT target, and a view traces each
    address thrice."""
    try:
        return 4, int.from_bytes(inet_pton(AF_INET, text), "big")
    except (OSError, ValueError):
        pass
    parts = text.split(".")
    if len(parts) == 4:
        try:
            a, b, c, d = map(int, parts)
        except ValueError:
            pass
        else:
            if 0 <= a < 256 and 0 <= b < 256 and 0 <= c < 256 and 0 <= d < 256 and text.isascii():
                return 4, (a << 24) | (b << 16) | (c << 8) | d
    addr = ipaddress.ip_address(text)
    return addr.version, int(addr)


@functools.lru_cache(maxsize=65536)
def parse_net(text: str, version: int) -> tuple[int, int] | None:
    """`addr`, `addr/len` or `addr/netmask` (also non-contiguous masks) → (network, mask) as ints.

    None when the address is of the other IP version (such a rule never matches this packet).
    """
    addr_text, _, mask_text = text.partition("/")
    try:
        addr_version, addr = ip_int(addr_text)
    except ValueError:
        raise TraceError(f"cannot read address {text!r}; expected an IP address, CIDR or addr/netmask") from None
    if addr_version != version:
        return None
    bits = 32 if version == 4 else 128
    full = (1 << bits) - 1
    if not mask_text:
        mask = full
    elif mask_text.isdigit():
        length = int(mask_text)
        if length > bits:
            raise TraceError(f"cannot read address {text!r}: prefix length {length} exceeds {bits}")
        mask = (full << (bits - length)) & full
    else:
        try:
            mask_addr = ipaddress.ip_address(mask_text)
        except ValueError:
            raise TraceError(f"cannot read netmask in {text!r}") from None
        if mask_addr.version != version:
            return None
        mask = int(mask_addr)
    return addr & mask, mask


def format_ip(value: int, version: int) -> str:
    if version == 4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


LOOPBACK_V4 = parse_net("127.0.0.0/8", 4)


@dataclass(frozen=True, slots=True)
class Context:
    """What a trace knows besides the packet: the node's own addresses, known ipset memberships and the node's
    routes of this IP version (None: not given; the interface a packet leaves by is then unknown)."""

    version: int
    local_addresses: frozenset[int]
    node_ips_known: bool
    ipsets: Mapping[str, tuple[tuple[int, int], ...]]
    routes: RouteTable | None = None

    @classmethod
    def build(cls, version: int, node_ips: Iterable[str], ipsets: Mapping[str, Sequence[str]] | None,
              routes: RouteTable | None = None) -> Context:
        local: set[int] = set()
        known = False
        for text in node_ips:
            try:
                addr = ipaddress.ip_address(text.strip("[]"))
            except ValueError:
                raise InputError(f"node address {text!r} is not an IP address") from None
            known = True  # an address of the other family still tells us the user gave the node's addresses
            if addr.version == version:
                local.add(int(addr))
        sets: dict[str, tuple[tuple[int, int], ...]] = {}
        for name, members in (ipsets or {}).items():
            nets = [parse_net(m, version) for m in members]
            sets[name] = tuple(n for n in nets if n is not None)
        return cls(version, frozenset(local), known, sets, routes)

    def out_iface(self, addr: int) -> str | None:
        """The interface a packet for `addr` leaves by, when known: lo for the node's own addresses, else the
        route's (None without routes, or without a route for it; BLACKHOLE for a blackhole route)."""
        if self.is_local(addr):
            return "lo"
        return self.routes.device(addr) if self.routes is not None else None

    def is_loopback(self, addr: int) -> bool:
        if self.version == 4:
            net, mask = LOOPBACK_V4  # type: ignore[misc]
            return addr & mask == net
        return addr == 1

    def is_local(self, addr: int) -> bool:
        """A node address or loopback: `--dst-type LOCAL`, and what the routing decision delivers locally."""
        if addr in self.local_addresses:
            return True
        # (is_loopback spelled out: this runs for every branch of every trace after its DNAT)
        if self.version == 4:
            net, mask = LOOPBACK_V4  # type: ignore[misc]
            return addr & mask == net
        return addr == 1


class State:
    """One branch: the packet as rules see it now, marks, NAT done so far, and what the branch went through.

    Mutable on purpose (a trace of a 10-endpoint Service makes ~10 of these); `copy()` before every split.
    """

    __slots__ = (
        "accept", "assumptions", "chains", "ctmark", "dnat", "dnat_by", "dport", "dst", "hook", "in_iface",
        "kube_masq", "local_origin", "mark", "mark_drop", "masq", "notrack", "orig_dport", "orig_dst",
        "out_iface", "path", "prob", "proto", "recent", "snat", "sport", "src",
    )

    def __init__(self, src: int, dst: int, sport: int, dport: int, proto: int, in_iface: str | None) -> None:
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.proto = proto
        self.orig_dst = dst
        self.orig_dport = dport
        self.in_iface = in_iface
        self.hook = ""  # the netfilter hook being walked (PREROUTING, OUTPUT, …)
        self.local_origin = False  # sent by the node itself (OUTPUT path)
        self.out_iface: str | None = None
        self.mark = 0
        self.ctmark = 0
        self.dnat = False
        self.snat = False
        self.masq = False
        # False: the packet has its connection; True: untracked (NOTRACK, CT --notrack); None: no connection yet,
        # in the raw table of the first hook, which runs before conntrack (Tracer._stage).
        self.notrack: bool | None = False
        self.kube_masq = False
        self.mark_drop: Any = None  # the Step of a jump to KUBE-MARK-DROP (fragment entry only)
        self.recent: frozenset[tuple[str, int]] = frozenset()
        self.prob = (1, 1)  # exact branch probability as (numerator, denominator)
        self.path: Cons = None
        self.chains: Cons = None
        self.assumptions: tuple[str, ...] = ()
        self.accept: Any = None  # Decision of the last filter-table ACCEPT (rule or policy)
        self.dnat_by: Any = None  # Decision of the DNAT/REDIRECT rule

    def copy(self) -> State:
        new = State.__new__(State)
        new.accept = self.accept
        new.assumptions = self.assumptions
        new.chains = self.chains
        new.ctmark = self.ctmark
        new.dnat = self.dnat
        new.dnat_by = self.dnat_by
        new.dport = self.dport
        new.dst = self.dst
        new.hook = self.hook
        new.in_iface = self.in_iface
        new.kube_masq = self.kube_masq
        new.local_origin = self.local_origin
        new.mark = self.mark
        new.mark_drop = self.mark_drop
        new.masq = self.masq
        new.notrack = self.notrack
        new.orig_dport = self.orig_dport
        new.orig_dst = self.orig_dst
        new.out_iface = self.out_iface
        new.path = self.path
        new.prob = self.prob
        new.proto = self.proto
        new.recent = self.recent
        new.snat = self.snat
        new.sport = self.sport
        new.src = self.src
        return new

    def rewrite_destination(self, arg: tuple[int | None, int | None], decision: Any) -> None:
        """A DNAT's rewrite (`arg`: its address and port, None where it keeps the packet's), made by `decision`."""
        addr, port = arg
        if addr is not None:
            self.dst = addr
        if port is not None:
            self.dport = port
        self.dnat = True
        self.dnat_by = decision

    def assume(self, text: str) -> None:
        if text not in self.assumptions:
            self.assumptions = (*self.assumptions, text)
