"""The generic rules of a ruleset as Service port shapes read them (portshape.py): every rule of every chain a
walk can reach other than a port's own, analysed once per tracer — the networks, exact hosts and ports they test,
the named sets they look up (indexed by value) — and what those tests see of an address (its class) or port.
A rule that reads anything else gives no shape (see portshape.py)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from socket import AF_INET, inet_pton
from typing import Any

from iptrace.nftables.evaluate import Context
from iptrace.nftables.hooks import TABLE_FAMILIES
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Concat,
    Counter,
    Fib,
    Flags,
    Mangle,
    Match,
    Meta,
    Nat,
    Prefix,
    Range,
    Reject,
    SetRef,
    Verdict,
    VerdictMap,
)
from iptrace.nftables.names import KUBE_PROXY_TABLE
from iptrace.nftables.portrules import ADDR as _ADDR
from iptrace.nftables.portrules import LIT as _LIT
from iptrace.nftables.portrules import PORT as _PORT
from iptrace.nftables.portrules import Decline as _Decline
from iptrace.nftables.portrules import kind as _kind
from iptrace.nftables.state import ip_int, prefix_bounds


def _is_ipv4(text: str) -> bool:
    try:
        ip_int(text)
    except ValueError:
        return False
    return True


class _Lookup:
    """A named set generic rules look up by a key of `kinds`: its elements' indices by the value of their part of
    kind `by`."""

    __slots__ = ("by", "index", "kinds", "set")

    def __init__(self, found: Any, kinds: tuple[str, ...], by: str, index: dict[Any, list[int]]) -> None:
        self.set = found
        self.kinds = kinds
        self.by = by
        self.index = index


class Shapes:
    """One tracer's generic rules as shapes read them, per IP version: the chains they reach (analysed once each),
    their networks, exact hosts and ports, and the named sets they look up (indexed by value)."""

    def __init__(self, tracer: Any) -> None:
        self.ruleset = tracer.ruleset
        self.ctx: Context = tracer.ctx
        self.local: frozenset[str] = tracer.local
        self.chains: dict[tuple[int, str], tuple[tuple[int, str], ...] | None] = {}  # (table, chain) → jumps
        self.tables: dict[int, Any] = {}
        self.networks: list[tuple[int, int, bool]] = []  # (net, mask, v6) of generic prefix tests, in order found
        self.hosts: list[str] = []  # generic exact-host tests
        self.ports: list[Any] = []  # generic exact-port tests (int) and ranges (Range)
        self._seen: set[Any] = set()
        # own networks → (address → class, an IPv4 /24 (its 3 bytes) that _uniform holds alike → its addresses' class)
        self._classes: dict[tuple[tuple[int, int, bool], ...], tuple[dict[str, Any], dict[bytes, Any]]] = {}
        self._regions: tuple[Any, ...] | None = None
        self._reach: dict[tuple[int, str], frozenset[tuple[int, str]] | None] = {}
        self.lookups: dict[tuple[int, str, tuple[str, ...]], _Lookup | None] = {}
        self._merged: tuple[Any, ...] | None = None
        self.roots: dict[int, frozenset[tuple[int, str]] | None] = {}
        self._kube: dict[int, tuple[Any, frozenset[str]] | None] = {}
        self._reach_names: dict[tuple[int, str], frozenset[str] | None] = {}

    # ------------------------------------------------------------------------------------------- generic rules

    def _note(self, value: Any, into: list[Any]) -> None:
        if value not in self._seen:
            self._seen.add(value)
            into.append(value)

    def _test(self, kind: str, right: Any, table: Any) -> None:
        """A generic test of an address or port against `right` (a constant, prefix, range, set)."""
        if kind == _LIT:
            if isinstance(right, (SetRef, AnonSet, Prefix, Range, tuple)) and not isinstance(right, Flags):
                if type(right) is Range and all(type(x) is int for x in (right.low, right.high)):
                    return
                raise _Decline
            return
        if type(right) is AnonSet:
            for element in right.elements:
                if element.data is not None:
                    raise _Decline
                self._test(kind, element.key, table)
            return
        if type(right) is SetRef:
            self._lookup(table, right.name, (kind,))
            return
        if kind == _ADDR:
            if type(right) is Prefix:
                net, mask = prefix_bounds(right.addr, right.length)
                self._note((net, mask, ":" in right.addr), self.networks)
            elif type(right) is str:
                self._note(right, self.hosts)
            else:
                raise _Decline
        elif type(right) is int or (type(right) is Range and type(right.low) is int and type(right.high) is int):
            self._note(right, self.ports)
        else:
            raise _Decline

    def _lookup(self, table: Any, name: str, kinds: tuple[str, ...]) -> None:
        """A look-up of named set `name` by a key of `kinds`: its exact elements filed by one part (a set of
        intervals, or one the packet path fills, gives no shape)."""
        key = (id(table), name, kinds)
        if key in self.lookups:
            if self.lookups[key] is None:
                raise _Decline
            return
        found = table.set(name)
        lookup: _Lookup | None = None
        # (filed by its address part when it has one, else its port part: a port part alone, the Service port
        # every ClusterIP shares, would file most elements under one value)
        by = kinds.index(_ADDR) if _ADDR in kinds else kinds.index(_PORT) if _PORT in kinds else -1
        if found is not None and by >= 0 and not {"dynamic", "timeout", "interval"} & set(found.flags) \
                and len(found.key_type) == len(kinds):
            index: dict[Any, list[int]] = {}
            for i, element in enumerate(found.elements):
                parts = element.key if len(kinds) > 1 else (element.key,)
                if type(parts) is not tuple or len(parts) != len(kinds) or not all(
                        kind == _LIT or type(part) is (str if kind == _ADDR else int)
                        for kind, part in zip(kinds, parts, strict=True)):
                    break
                index.setdefault(parts[by], []).append(i)
            else:
                lookup = _Lookup(found, kinds, kinds[by], index)
        self.lookups[key] = lookup
        if lookup is None:
            raise _Decline

    def merged(self) -> tuple[Any, ...]:
        """The lookups' indices merged (kept while no lookup is added): (each lookup as (set, kinds), every non-None
        lookup's empty entry, value → [(its lookup's position, element index)] for the lookups filed by address,
        the same for those filed by port). A port finds its candidates with one get per value of its own."""
        merged = self._merged
        if merged is None or merged[0] != len(self.lookups):
            found = [lookup for lookup in self.lookups.values() if lookup is not None]
            by: tuple[dict[Any, list[tuple[int, int]]], dict[Any, list[tuple[int, int]]]] = ({}, {})
            for pos, lookup in enumerate(found):
                into = by[0] if lookup.by == _ADDR else by[1]
                for value, indices in lookup.index.items():
                    into.setdefault(value, []).extend([(pos, i) for i in indices])
            merged = self._merged = (len(self.lookups), found,
                                     [(lookup.set.name, lookup.kinds, ()) for lookup in found], *by)
        return merged

    def analyse(self, table: Any, name: str) -> tuple[tuple[int, str], ...] | None:
        """The chains a generic chain sends to (its rules analysed once); None when a rule reads what a shape cannot
        hold."""
        key = (id(table), name)
        if key in self.chains:
            return self.chains[key]
        self.tables[id(table)] = table
        chain = table.chain(name)
        jumps: list[tuple[int, str]] = []
        found: tuple[tuple[int, str], ...] | None = None
        try:
            if chain is None:
                raise _Decline
            for rule in chain.rules:
                for item in rule.items:
                    self._item(item, table, jumps)
            found = tuple(jumps)
        except (_Decline, ValueError):
            found = None
        self.chains[key] = found
        return found

    def _item(self, item: Any, table: Any, jumps: list[tuple[int, str]]) -> None:
        t = type(item)
        if t is Match:
            left = item.left
            if type(left) is Fib:
                if left.result != "type" or left.flags not in (("saddr",), ("daddr",)):
                    raise _Decline
                return  # (an address's fib type is in its class)
            if type(left) is Concat:
                if type(item.right) is not SetRef or item.op != "==":
                    raise _Decline
                self._lookup(table, item.right.name, tuple(map(_kind, left.parts)))
                return
            if item.op not in ("==", "!=", "in"):
                raise _Decline
            self._test(_kind(left), item.right, table)
        elif t is VerdictMap:
            if type(item.map) is not SetRef:
                raise _Decline
            key = item.key
            # (its elements' verdicts are each port's: `_Port.elements` reads the ones a port's walks can find)
            self._lookup(table, item.map.name, tuple(map(_kind, key.parts)) if type(key) is Concat else (_kind(key),))
        elif t is Verdict:
            self._verdict(item, table, jumps)
        elif t is Nat:
            if item.kind != "masquerade" or item.addr is not None or item.port is not None:
                raise _Decline
        elif t is Mangle:
            if type(item.key) is not Meta or item.key.key != "mark" or not (
                    type(item.value) is int or (type(item.value) is Binop and _kind(item.value) == _LIT)):
                raise _Decline
        elif t not in (Counter, Reject):
            raise _Decline

    @staticmethod
    def _verdict(v: Any, table: Any, jumps: list[tuple[int, str]]) -> None:
        if type(v) is not Verdict:
            raise _Decline
        if v.kind in ("jump", "goto"):
            jumps.append((id(table), v.target))

    def reach(self, starts: Any) -> frozenset[tuple[int, str]] | None:
        """Every chain reachable from `starts` by generic rules (each analysed); None when one gives no shape."""
        seen: set[tuple[int, str]] = set()
        todo = list(starts)
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            jumps = self.analyse(self.tables[key[0]], key[1])
            if jumps is None:
                return None
            todo.extend(jumps)
        return frozenset(seen)

    def reach_one(self, start: tuple[int, str]) -> frozenset[tuple[int, str]] | None:
        """`reach([start])`, kept (the chains' rules do not change)."""
        found = self._reach.get(start, False)
        if found is False:
            found = self._reach[start] = self.reach([start])
        return found  # type: ignore[return-value]

    def reach_names(self, table: Any, start: str) -> frozenset[str] | None:
        """The names of `table`'s chains that reach_one((table, start)) reaches, kept."""
        key = (id(table), start)
        found = self._reach_names.get(key, False)
        if found is False:
            reached = self.reach_one(key)
            found = self._reach_names[key] = None if reached is None else frozenset(
                name for table_id, name in reached if table_id == key[0])
        return found  # type: ignore[return-value]

    def kube_of(self, version: int) -> tuple[Any, frozenset[str]] | None:
        """kube-proxy's table of IP `version` and the names of its chains that roots_of(version) holds, kept; None
        when there is no such table or the roots give no shape."""
        if version not in self._kube:
            roots = self.roots_of(version)
            kube = next((t for t in self.ruleset.tables
                         if t.name == KUBE_PROXY_TABLE and t.family == ("ip" if version == 4 else "ip6")), None)
            if roots is None or kube is None:
                self._kube[version] = None
            else:
                self.tables[id(kube)] = kube
                self._kube[version] = (kube, frozenset(name for table_id, name in roots if table_id == id(kube)))
        return self._kube[version]

    def roots_of(self, version: int) -> frozenset[tuple[int, str]] | None:
        """The generic chains every walk of IP `version` can reach: every base chain of its tables, and on."""
        if version not in self.roots:
            families = TABLE_FAMILIES[version]
            starts = []
            for table in self.ruleset.tables:
                if table.family in families:
                    self.tables[id(table)] = table
                    starts.extend((id(table), c.name) for c in table.chains if c.base is not None)
            self.roots[version] = self.reach(starts)
        return self.roots[version]

    def classes(self, addresses: Any, own_networks: list[tuple[int, int, bool]]) -> tuple[Any, ...]:
        """Each address's class (address_class) and which of a port's own networks hold it. Kept per address and
        own networks (every port of a node has the same: its pod CIDR's) while the generic networks and hosts are
        the same (a node's clients are in every port's questions), and per IPv4 /24 that nothing tells apart
        (_uniform: a node's 50,000 endpoints lie in a few hundred /24s of its pod CIDR, each met once)."""
        regions = self._regions
        if regions is None or regions[0] != len(self.networks) or regions[1] != len(self.hosts):
            self._regions = self._partition()
            self._classes = {}
        own = tuple(own_networks)
        kept = self._classes.get(own)
        if kept is None:
            kept = self._classes[own] = ({}, {})
        known, blocks = kept
        found = list(map(known.get, addresses))
        if None in found:
            for i, a in enumerate(addresses):
                if found[i] is None:
                    if ":" not in a:
                        try:
                            block = inet_pton(AF_INET, a)[:3]  # (its /24; one text per IPv4 address)
                        except OSError:
                            block = b""  # (no address: address_class raises ValueError)
                        got = blocks.get(block) if block else None
                        if got is not None:
                            found[i] = got
                            continue
                        if block and self._uniform(int.from_bytes(block, "big"), own):
                            found[i] = blocks[block] = self._class(a, own)
                            continue
                    found[i] = known[a] = self._class(a, own)
        return tuple(found)

    def _class(self, a: str, own: tuple[tuple[int, int, bool], ...]) -> tuple[Any, tuple[bool, ...]]:
        seen, value = self.address_class(a)
        v6 = ":" in a
        return seen, tuple([v6 == n6 and value & mask == net for net, mask, n6 in own]) if own else ()

    def _uniform(self, block: int, own: tuple[tuple[int, int, bool], ...]) -> bool:
        """Whether every address of the IPv4 /24 `block` has one class: no generic network starts or ends inside it
        (no range bound of _partition), it holds no generic exact host and no local address (both told by their
        text: an IPv4 address has one), each own network is IPv6 or at most a /24, and it is not 255.255.255.0/24
        (broadcast; address types are otherwise alike within a /8: ctx.addrtype)."""
        regions = self._regions
        bounds, specials = regions[2][0], regions[6]  # type: ignore[index]
        start = block << 8
        end = start | 0xFF
        at = bisect_left(specials, start)
        return (block != 0xFFFFFF and bisect_right(bounds, start) == bisect_right(bounds, end)
                and (at == len(specials) or specials[at] > end) and all(n6 or not mask & 0xFF for _n, mask, n6 in own))

    def address_class(self, addr: str) -> tuple[tuple[str, tuple[bool, ...], tuple[bool, ...]], int]:
        """What generic tests and the routing decision see of an address: its fib type ("local" for the node's
        addresses and loopback: also whether the node sent it), which generic networks hold it and which exact
        host it is; and the address as an int."""
        regions = self._regions
        if regions is None or regions[0] != len(self.networks) or regions[1] != len(self.hosts):
            regions = self._regions = self._partition()
        value = ip_int(addr)
        bounds, nets = regions[3] if ":" in addr else regions[2]
        host = regions[4].get(addr)
        return (self.ctx.addrtype(addr), nets[bisect_right(bounds, value) - 1],
                regions[5] if host is None else host), value

    def _partition(self) -> tuple[Any, ...]:
        """The generic networks as ranges of addresses that each network holds whole or not at all: per IP
        version (the ranges' starts, each range's networks holding it), each exact host's tuple, and the IPv4
        generic hosts and local addresses as ints, sorted (_uniform)."""
        networks = self.networks
        versions = []
        for v6 in (False, True):
            full = (1 << (128 if v6 else 32)) - 1
            starts = {0}
            for net, mask, n6 in networks:
                if n6 == v6:
                    starts.add(net)
                    if net | (full ^ mask) < full:
                        starts.add((net | (full ^ mask)) + 1)
            bounds = sorted(starts)
            versions.append((bounds, [tuple([v6 == n6 and start & mask == net for net, mask, n6 in networks])
                                      for start in bounds]))
        hosts = self.hosts
        each = {host: tuple([h == host for h in hosts]) for host in hosts}
        specials = sorted({ip_int(a) for a in (*hosts, *self.ctx.local) if ":" not in a and _is_ipv4(a)})
        return len(networks), len(hosts), versions[0], versions[1], each, tuple([False] * len(hosts)), specials

    def port_class(self, port: int) -> str:
        return "".join(["1" if (port == p if type(p) is int else p.low <= port <= p.high) else "0"
                        for p in self.ports])
