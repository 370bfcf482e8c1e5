"""The node's routes, which answer the rules that test the interface a packet leaves by (`-o cni0`,
`oifname "cni0"`): the kernel routes a packet before those hooks, so its output interface is the one of the route
its destination takes.

The file is what the kernel lists, as `cat /proc/net/route /proc/net/ipv6_route` prints it (what `iptrace collect`
saves as routes.txt; the kube-proxy image has no `ip`, but every node has /proc):
- /proc/net/route (IPv4, the main table): a header line `Iface Destination Gateway Flags …`, then one route a line
  of tab-separated columns: interface, destination, gateway, flags, refcnt, use, metric, mask, mtu, window, irtt;
  addresses and masks in hexadecimal, in the machine's byte order (told by the masks: a mask is contiguous ones).
- /proc/net/ipv6_route (IPv6, every table): one route a line of 10 columns: destination, its prefix length,
  source, its prefix length, next hop, metric, refcnt, use, flags (hexadecimal), interface.
A route with the reject flag (unreachable, prohibit; on IPv6 blackhole and throw too, which its file does not tell
apart, and lists without the up flag) is no way out, and so is an IPv4 blackhole route (interface `*` without the
reject flag), whose forwarded packets the kernel drops without an answer; an IPv4 throw route reads the same (the
kernel sets the reject flag for unreachable and prohibit only), though the kernel answers its packets as without a
route: the notes name both. A route that applies to some sources only (IPv6 source routing) is not modeled.

Lookups are longest-prefix match, the lowest metric first among equal prefixes. What the file cannot show: policy
routing (`ip rule`: marks, source addresses, other tables), which the traces that use a route say. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from iptrace.errors import ParseError

RTF_UP = 0x0001
RTF_REJECT = 0x0200
# What a route cannot show, said wherever a route answers a rule.
POLICY_UNSEEN = "policy routing (ip rule: marks, sources, other tables) is not in the routes"


def routed_note(where: str, iface: str) -> str:
    """The note of a rule answered by the route: `where` names the rule."""
    return f"{where}: output interface {iface}, by the node's routes (longest prefix match); {POLICY_UNSEEN}"


# How no_route_note's notes start (the Service view repeats them on the way in they end).
SENT_NOWHERE = ("the node's routes have no way out for ", "the node's routes send ")
BLACKHOLE = ""  # the device of an IPv4 blackhole (or throw) route (`*` without the reject flag): no way out


def no_route_note(destination: str, where: str, version: int, blackhole: bool = False) -> str:
    """The note of a packet the kernel does not send on: the node's routes have no way out for its destination
    (`blackhole`: an IPv4 route of device `*` without the reject flag, a blackhole or a throw route, which
    /proc/net/route shows alike; else no route, or a reject route: unreachable, prohibit, and on IPv6 blackhole and
    throw too). `where`: "forwarded", "own" for the node's own packet, "rerouted" for the node's own after output's
    DNAT; the walk ends the branch there, as the kernel does: REJECT, DROP for a blackhole forwarded and when
    rerouted. A throw route in the main table (the only one the file lists) sends the lookup on to the next table:
    with none holding the destination the kernel answers as with no route (ICMP network unreachable forwarded,
    connect() fails)."""
    if blackhole:
        way = f"{SENT_NOWHERE[1]}{destination} to a blackhole or a throw route (/proc/net/route shows them alike)"
    else:
        kinds = "an unreachable, prohibit or throw route" if version == 6 else "an unreachable or prohibit route"
        way = f"{SENT_NOWHERE[0]}{destination} (no route, or {kinds})"
    if where == "forwarded":
        if blackhole:
            what = ("the kernel drops it silently if it is a blackhole (no rule after the routing decision sees it); "
                    "through a throw route it answers ICMP destination unreachable, as with no route")
        else:
            what = "the kernel answers ICMP destination unreachable (no rule after the routing decision sees it)"
        if version == 6 and not blackhole:
            what += "; a blackhole route, which /proc/net/ipv6_route does not tell from those, would drop it silently"
    elif where == "own":
        what = "the kernel does not send it (connect() fails before any rule sees it)"
    else:
        way += ", where output's DNAT sends it"
        what = "the kernel drops it when it routes it again, after output's nat chains (no rule after them sees it)"
    return f"{way}: {what}; {POLICY_UNSEEN}"


def unrouted(destination: str, where: str, version: int, blackhole: bool = False) -> tuple[str, str]:
    """What the kernel does with a packet its routes send nowhere (`where`, `blackhole`: as no_route_note's), for
    both engines: ("reject" or "drop", the note)."""
    verdict = "drop" if where == "rerouted" or (where == "forwarded" and blackhole) else "reject"
    return verdict, no_route_note(destination, where, version, blackhole)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A line --lenient read past, and why."""

    line: int
    message: str


class RouteTable:
    """One IP version's routes: `device(address)` is the interface of the longest prefix holding it (None: no
    route, or a reject route; BLACKHOLE: an IPv4 blackhole route)."""

    __slots__ = ("_by_length", "_found", "_lengths", "bits", "routes_all", "version")

    def __init__(self, version: int, routes: Sequence[tuple[int, int, str | None]]) -> None:
        self.version = version
        self.bits = 32 if version == 4 else 128
        by_length: dict[int, dict[int, str | None]] = {}
        for network, length, device in routes:  # (in order of preference: the first of a prefix wins)
            by_length.setdefault(length, {}).setdefault(network, device)
        self._by_length = by_length
        self._lengths = tuple(sorted(by_length, reverse=True))
        self._found: dict[int, str | None] = {}
        # Whether every address has a way out (a default route, and no reject route): then no packet is left
        # unrouted, and rules that do not test the output interface are traced as without routes.
        self.routes_all = 0 in by_length.get(0, {}) and all(
            device for networks in by_length.values() for device in networks.values())

    def device(self, address: int) -> str | None:
        found = self._found.get(address, False)
        if found is not False:
            return found  # type: ignore[return-value]
        device = None
        bits = self.bits
        for length in self._lengths:
            shift = bits - length
            networks = self._by_length[length]
            key = (address >> shift) << shift
            if key in networks:
                device = networks[key]
                break
        if len(self._found) >= 65536:
            self._found.clear()
        self._found[address] = device
        return device


@dataclass(frozen=True, slots=True)
class Routes:
    """A node's routes as read from its file: a table per IP version the file lists (None: not in the file, and the
    output interface is then as unknown as without routes)."""

    source: str
    v4: RouteTable | None
    v6: RouteTable | None
    skipped: tuple[Skipped, ...] = ()

    def table(self, version: int) -> RouteTable | None:
        return self.v4 if version == 4 else self.v6


def parse_routes(text: str, *, source: str = "<routes>", lenient: bool = False) -> Routes:
    """Read `cat /proc/net/route /proc/net/ipv6_route`; raises ParseError naming file:line:column (with --lenient
    the line is left out and listed in `skipped`)."""
    v4: list[tuple[int, int, int, str | None, int]] = []  # (metric, line, network, device, length) before sorting
    v6: list[tuple[int, int, int, str | None, int]] = []
    v4_raw: list[tuple[int, str, int, str, int, str]] = []  # (line, iface, flags, destination, metric, mask)
    header = False
    skipped: list[Skipped] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if line.startswith("Iface"):
                header = True
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            fields = [f.strip() for f in fields if f.strip()]
            if len(fields) == 10 and len(fields[0]) == 32:
                route = _v6_route(fields, line, source, number)
                if route is not None:
                    v6.append(route)
            elif len(fields) == 11 and header:
                v4_raw.append(_v4_fields(fields, line, source, number))
            else:
                raise ParseError("not a route of /proc/net/route (after its `Iface …` header: 11 columns) or of "
                                 "/proc/net/ipv6_route (10 columns); expected `cat /proc/net/route "
                                 "/proc/net/ipv6_route`", source=source, line=number, column=1, text=line)
        except ParseError as exc:
            if not lenient:
                raise
            skipped.append(Skipped(number, exc.reason))
    big_endian = _big_endian(v4_raw)
    for number, iface, flags, destination, metric, mask in v4_raw:
        length = _mask_length(_word(mask, big_endian))
        if length < 0:
            line = lines[number - 1]
            exc = ParseError(f"mask {mask!r} is not a network mask (contiguous ones)", source=source, line=number,
                             column=_column(line, 7), text=line)
            if not lenient:
                raise exc
            skipped.append(Skipped(number, exc.reason))
            continue
        network = _word(destination, big_endian)
        device = None if flags & RTF_REJECT else BLACKHOLE if iface == "*" else iface
        if flags & RTF_UP:
            v4.append((metric, number, network & _prefix_mask(length, 32), device, length))
    return Routes(source, _table(4, v4) if header else None, _table(6, v6) if v6 else None, tuple(skipped))


def _table(version: int, routes: list[tuple[int, int, int, str | None, int]]) -> RouteTable:
    routes.sort(key=lambda r: (r[0], r[1]))
    return RouteTable(version, [(network, length, device) for _, _, network, device, length in routes])


def _column(line: str, index: int) -> int:
    """The 1-based column where the `index`-th whitespace-separated field of `line` starts."""
    position = 0
    for k in range(index + 1):
        while position < len(line) and line[position].isspace():
            position += 1
        if k == index:
            return position + 1
        while position < len(line) and not line[position].isspace():
            position += 1
    return position + 1


def _hex(value: str, digits: int, what: str, line: str, source: str, number: int, index: int) -> int:
    if len(value) > digits or not all(c in "0123456789abcdefABCDEF" for c in value):
        raise ParseError(f"{what} {value!r} is not {digits} hexadecimal digits", source=source, line=number,
                         column=_column(line, index), text=line)
    return int(value, 16)


def _v4_fields(fields: list[str], line: str, source: str, number: int) -> tuple[int, str, int, str, int, str]:
    iface, destination, _, flags, _, _, metric, mask = fields[:8]
    _hex(destination, 8, "destination", line, source, number, 1)
    _hex(mask, 8, "mask", line, source, number, 7)
    flag_bits = _hex(flags, 4, "flags", line, source, number, 3)
    if not metric.isdigit():
        raise ParseError(f"metric {metric!r} is not a number", source=source, line=number, column=_column(line, 6),
                         text=line)
    return number, iface, flag_bits, destination, int(metric), mask


def _v6_route(fields: list[str], line: str, source: str, number: int) -> tuple[int, int, int, str | None, int] | None:
    destination = _hex(fields[0], 32, "destination", line, source, number, 0)
    length = _hex(fields[1], 2, "prefix length", line, source, number, 1)
    if length > 128:
        raise ParseError(f"prefix length {length} is more than 128", source=source, line=number,
                         column=_column(line, 1), text=line)
    source_length = _hex(fields[3], 2, "source prefix length", line, source, number, 3)
    metric = _hex(fields[5], 8, "metric", line, source, number, 5)
    flags = _hex(fields[8], 8, "flags", line, source, number, 8)
    # (the kernel lists a reject route, ip6_null_entry's kind, without the up flag: it is no way out all the same)
    if source_length or not flags & (RTF_UP | RTF_REJECT):
        return None
    device = None if flags & RTF_REJECT else fields[9]
    return metric, number, destination & _prefix_mask(length, 128), device, length


def _word(value: str, big_endian: bool) -> int:
    """An address or mask column of /proc/net/route as its number in network order."""
    number = int(value, 16)
    return number if big_endian else int.from_bytes(number.to_bytes(4, "little"), "big")


def _mask_length(mask: int) -> int:
    """The prefix length of a contiguous mask; -1 when it is not one."""
    length = bin(mask).count("1")
    return length if mask == _prefix_mask(length, 32) else -1


def _prefix_mask(length: int, bits: int) -> int:
    return ((1 << length) - 1) << (bits - length) if length > 0 else 0


def _big_endian(raw: list[tuple[int, str, int, str, int, str]]) -> bool:
    """Whether /proc/net/route was written on a big-endian machine: its masks read as contiguous ones in that
    order only (a machine writes them in its own order)."""
    if all(_mask_length(_word(r[5], False)) >= 0 for r in raw):
        return False
    return all(_mask_length(_word(r[5], True)) >= 0 for r in raw)
