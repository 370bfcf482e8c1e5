"""A Service port's *shape* in nftables mode: what the walks of its questions read of the ruleset, with the port's
own values (addresses, ports, own chain names, lines) abstracted, so that a port whose shape equals another's has
the same walks but for those values (iptrace.kube.shapes then builds its view from the other's instead of tracing
it). The nft counterpart of iptrace.iptables.portshape, read from the rules' items (the evaluator's own model).

kube-proxy writes every Service port with the same endpoint count, ways in and policies as the same chains but for
addresses, ports and chain names, and routes it to them by elements of its verdict maps (`service-ips`,
`service-nodeports`, `no-endpoint-services`, …). The shape of a port is:
- its questions, each address and port written as its *number* (first appearance order over the whole shape:
  equal values, equal numbers; the walk compares addresses as their text, so equal texts are equal values);
- its own chains (kube-proxy's table of the family), every item of every rule, with each address an equality test,
  an anonymous set's element or a DNAT reads written as its number, each port likewise, each own chain a verdict
  names as its number; a network (prefix) stays itself and its containment of every address is in the key;
- every element of every named set or map that a walked rule looks up whose address and port parts are all among
  the port's values, written the same way, in the set's order (a look-up keyed by the branch's address and port
  finds no other element: every address a branch holds is a question's or a DNAT target of its own rules);
- the named sets its own rules look up or fill (session affinity's, kube-proxy's per endpoint), numbered like its
  chains: each one's declaration and the elements of it a branch can find (the port's addresses);
- for each address, what every other test can see of it: its fib type, whether the node holds it, and which of
  the networks and exact hosts of the generic rules (and of its own rules' networks) it is; for each port, which
  of the generic rules' ports and port ranges it is.

*Generic* rules are every rule of every chain the walk can reach other than the port's own: the base chains of
every table of the family and the chains their rules and the elements above send to. They may read addresses and
ports only by prefix, exact host, port and range tests, fib's address type and look-ups in named sets (the above),
and may rewrite nothing but marks and masquerade; any other read (an anonymous map, numgen, ct's original
addresses, a dynamic set, an unknown expression) gives no shape. Own rules may hold only the tests and statements
kube-proxy writes there (address, port and protocol tests, fib type, numgen's verdict maps, jumps, DNAT to a
constant address, affinity sets' look-ups and updates by address); rule comments decide nothing and are left out
(so are the walks' notes: a view reads none). Own chains or sets that a generic rule names give no shape.
tests/test_nft_port_shapes.py compares views built with and without shapes.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from iptrace.dataplane import PortShape
from iptrace.nftables.evaluate import Context
from iptrace.nftables.hooks import TABLE_FAMILIES
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Concat,
    Counter,
    Element,
    Fib,
    Flags,
    Mangle,
    Match,
    Meta,
    Nat,
    Numgen,
    Prefix,
    Range,
    Reject,
    SetRef,
    SetUpdate,
    Verdict,
    VerdictMap,
)
from iptrace.nftables.names import KUBE_PROXY_TABLE
from iptrace.nftables.portrules import ADDR as _ADDR
from iptrace.nftables.portrules import LIT as _LIT
from iptrace.nftables.portrules import PORT as _PORT
from iptrace.nftables.portrules import Decline as _Decline
from iptrace.nftables.portrules import kind as _kind
from iptrace.nftables.portrules import plan
from iptrace.nftables.state import ip_int, prefix_bounds


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
        self._classes: dict[tuple[tuple[int, int, bool], ...], dict[str, Any]] = {}  # own networks → address → class
        self._regions: tuple[Any, ...] | None = None
        self._reach: dict[tuple[int, str], frozenset[tuple[int, str]] | None] = {}
        self.lookups: dict[tuple[int, str, tuple[str, ...]], _Lookup | None] = {}
        self._merged: tuple[Any, ...] | None = None
        self.roots: dict[int, frozenset[tuple[int, str]] | None] = {}

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
        the same (a node's clients are in every port's questions)."""
        regions = self._regions
        if regions is None or regions[0] != len(self.networks) or regions[1] != len(self.hosts):
            self._regions = self._partition()
            self._classes = {}
        own = tuple(own_networks)
        known = self._classes.get(own)
        if known is None:
            known = self._classes[own] = {}
        found = [known.get(a) for a in addresses]
        if None in found:
            address_class = self.address_class
            for i, a in enumerate(addresses):
                if found[i] is None:
                    seen, value = address_class(a)
                    v6 = ":" in a
                    found[i] = known[a] = (seen, tuple([v6 == n6 and value & mask == net for net, mask, n6 in own])
                                           if own else ())
        return tuple(found)

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
        version (the ranges' starts, each range's networks holding it), and each exact host's tuple."""
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
        return len(networks), len(hosts), versions[0], versions[1], each, tuple([False] * len(hosts))

    def port_class(self, port: int) -> str:
        return "".join(["1" if (port == p if type(p) is int else p.low <= port <= p.high) else "0"
                        for p in self.ports])


def port_shape(tracer: Any, calls: Any, chains: Any) -> PortShape | None:
    """The shape of the traces `calls` ((chain entered directly or None, Packet), as the view asks them) of a
    Service port whose own chains are `chains` (kube-proxy's table), or None when they read what a shape cannot
    hold."""
    shapes = tracer.__dict__.get("_port_shapes")
    if shapes is None:
        shapes = tracer._port_shapes = Shapes(tracer)
    try:
        return _Port(shapes, tuple(chains)).shape(calls)
    except (_Decline, ValueError):
        return None


class _Port:
    def __init__(self, shapes: Shapes, chains: tuple[str, ...]) -> None:
        self.shapes = shapes
        self.own = {name: i for i, name in enumerate(chains)}
        self.chains = chains
        self.addresses: dict[str, int] = {}
        self.ports: dict[int, int] = {}
        self.own_networks: list[tuple[int, int, bool]] = []
        self.jumps: set[str] = set()
        self.sets: dict[str, int] = {}  # the named sets its own rules read or fill (session affinity's), numbered

    def own_set(self, name: str) -> tuple[str, int]:
        found = self.sets.get(name)
        if found is None:
            found = self.sets[name] = len(self.sets)
        return ("set", found)

    def address(self, value: str) -> int:
        found = self.addresses.get(value)
        if found is None:
            found = self.addresses[value] = len(self.addresses)
        return found

    def port(self, value: int) -> int:
        found = self.ports.get(value)
        if found is None:
            found = self.ports[value] = len(self.ports)
        return found

    def value(self, kind: str, right: Any) -> Any:
        """An own test's constant: an address or port as its number, a network as itself (its containment of each
        address is in the key), a set of them element by element."""
        t = type(right)
        if t is AnonSet:
            if any(e.data is not None or e.timeout_ms is not None for e in right.elements):
                raise _Decline
            return (AnonSet, tuple([self.value(kind, e.key) for e in right.elements]))
        if t is SetRef and kind == _ADDR:
            return self.own_set(right.name)  # (its declaration and the elements it can find: in the key)
        if t is SetRef or t is tuple:
            raise _Decline
        if kind == _ADDR:
            if t is str:
                found = self.addresses.get(right)
                if found is None:
                    found = self.addresses[right] = len(self.addresses)
                return (_ADDR, found)
            if t is Prefix:
                net, mask = prefix_bounds(right.addr, right.length)
                self.own_networks.append((net, mask, ":" in right.addr))
                return right
            raise _Decline
        if kind == _PORT:
            if t is int:
                return (_PORT, self.port(right))
            raise _Decline
        if t is Range or t is Prefix:
            raise _Decline
        return right

    def verdict(self, v: Any) -> Any:
        if type(v) is not Verdict:
            raise _Decline
        if v.kind not in ("jump", "goto"):
            return v
        return self.target(v.kind, v.target)  # type: ignore[arg-type]

    def target(self, kind: str, chain: str) -> Any:
        """A jump or goto to `chain`: an own chain as its number, another by name (walked as generic)."""
        own = self.own.get(chain)
        if own is None:
            self.jumps.add(chain)
            return (kind, chain)
        return (kind, own)

    def item(self, item: Any) -> Any:
        """An own rule's item with its values as numbers (only what kube-proxy writes in a Service port's chains)."""
        t = type(item)
        if t is Match:
            left = item.left
            if item.op not in ("==", "!=", "in"):
                raise _Decline
            if type(left) is Fib:
                if left.result != "type" or left.flags not in (("saddr",), ("daddr",)) or type(item.right) is not str:
                    raise _Decline
                return item
            return (Match, left, item.op, self.value(_kind(left), item.right))
        if t is VerdictMap:
            key, found = item.key, item.map
            if type(key) is not Numgen or key.mode != "random" or type(found) is not AnonSet:
                raise _Decline
            return (VerdictMap, key, tuple([(e.key, self.verdict(e.data)) for e in found.elements]))
        if t is Verdict:
            return self.verdict(item)
        if t is Nat:
            if item.kind != "dnat" or type(item.addr) is not str or not (item.port is None or type(item.port) is int):
                raise _Decline
            return (Nat, item.family, self.address(item.addr), None if item.port is None else self.port(item.port),
                    item.flags)
        if t is Mangle:
            if type(item.key) is not Meta or item.key.key != "mark" or not (
                    type(item.value) is int or (type(item.value) is Binop and _kind(item.value) == _LIT)):
                raise _Decline
            return item
        if t is SetUpdate:
            if item.op not in ("add", "update") or _kind(item.key) != _ADDR:
                raise _Decline
            return (SetUpdate, item.op, self.own_set(item.set), item.key, item.timeout_ms)
        if t is Counter or t is Reject:
            return item
        raise _Decline

    def set_contents(self, table: Any, lookups: Any) -> tuple[Any, ...]:
        """Each own set's declaration and the elements a branch can find in it (those of the port's addresses),
        written with numbers; a set a generic rule looks up as well gives no shape."""
        looked = {(table_id, name) for table_id, name, _kinds in lookups}
        out = []
        for name in self.sets:
            found = table.set(name)
            if found is None or (id(table), name) in looked or found.key_type not in (("ipv4_addr",), ("ipv6_addr",)) \
                    or found.data_type is not None or "interval" in found.flags:
                raise _Decline
            elements = []
            for element in found.elements:
                if type(element.key) is not str:
                    raise _Decline
                number = self.addresses.get(element.key)
                if number is not None:
                    elements.append((number, element.timeout_ms))
            out.append((found.key_type, found.flags, found.timeout_ms, found.size, tuple(elements)))
        return tuple(out)

    def elements(self, merged: tuple[Any, ...]) -> list[Any]:
        """The elements of the named sets generic rules look up (`merged`: Shapes.merged) that a branch of this port
        can find (their address and port parts all the port's values), written with numbers, in each set's order."""
        _size, found, out, by_address, by_port = merged
        out = list(out)
        addresses, ports = self.addresses, self.ports
        candidates: dict[int, list[int]] = {}
        for values, index in ((addresses, by_address), (ports, by_port)):
            if index:
                for value in values:
                    hits = index.get(value)
                    if hits is not None:
                        for pos, i in hits:
                            candidates.setdefault(pos, []).append(i)
        for pos, indices in sorted(candidates.items()):
            lookup = found[pos]
            kinds = lookup.kinds
            elements = lookup.set.elements
            written = []
            for i in sorted(set(indices)):
                element: Element = elements[i]
                parts = element.key if len(kinds) > 1 else (element.key,)
                key = []
                for kind, part in zip(kinds, parts, strict=True):
                    if kind == _LIT:
                        key.append(part)
                    else:
                        number = (addresses if kind == _ADDR else ports).get(part)
                        if number is None:
                            break
                        key.append((kind, number))
                else:
                    data = element.data
                    if data is not None and not lookup.set.is_vmap:
                        raise _Decline
                    written.append((tuple(key), None if data is None else self.verdict(data), element.timeout_ms))
            out[pos] = (lookup.set.name, kinds, tuple(written))
        return out

    def shape(self, calls: Any) -> PortShape:
        shapes = self.shapes
        version = 0
        asked = []
        for chain, packet in calls:
            v = 6 if ":" in packet.src else 4
            if (version and v != version) or (chain is not None and chain not in self.own):
                raise _Decline
            version = v
            asked.append((None if chain is None else self.own[chain], self.address(packet.src),
                          self.address(packet.dst), self.port(packet.dport), packet.sport, packet.proto,
                          packet.in_interface))
        roots = shapes.roots_of(version) if version else None
        if roots is None:
            raise _Decline
        kube = next((t for t in shapes.ruleset.tables
                     if t.name == KUBE_PROXY_TABLE and t.family == ("ip" if version == 4 else "ip6")), None)
        if kube is None:
            raise _Decline
        shapes.tables[id(kube)] = kube
        chains = [kube.chain(name) for name in self.chains]
        lines: list[int] = []
        own_rules = []
        for chain in chains:
            if chain is None or chain.base is not None:
                raise _Decline
            rules = []
            for rule in chain.rules:
                lazy = rule._lazy
                if lazy is None:
                    rules.append(tuple([self.item(item) for item in rule.items]))
                else:
                    build = lazy[0]
                    try:
                        ops = build.port_plan
                    except AttributeError:
                        ops = build.port_plan = plan(build, len(lazy))
                    rules.append(tuple([self.item(item) for item in rule.peek_items()]) if ops is None
                                 else ops(self, lazy))
                lines.append(rule.line or 0)
            own_rules.append(tuple(rules))
        own_keys = {(id(kube), name) for name in self.chains}
        if not roots.isdisjoint(own_keys):
            raise _Decline  # (a chain of the port's own that other rules lead to as well)
        done: set[str] = set()
        while True:
            for name in self.jumps - done:
                done.add(name)
                more = shapes.reach_one((id(kube), name))
                if more is None or not more.isdisjoint(own_keys):
                    raise _Decline
            elements = self.elements(shapes.merged())
            if self.jumps <= done:
                break
        sets = self.set_contents(kube, shapes.lookups) if self.sets else ()
        if not any(lines):
            lines = []  # (nft's JSON: no rule has a line, and a view says 0 for each, the same for every port)
        elif len(set(lines)) != len(lines) or 0 in lines:
            raise _Decline
        classes = shapes.classes(self.addresses, self.own_networks)
        port_classes = tuple([shapes.port_class(p) for p in self.ports])
        key = (version, tuple(asked), tuple(own_rules), sets, tuple(elements), len(shapes.networks), len(shapes.hosts),
               len(shapes.ports), classes, port_classes)
        return PortShape(key, tuple(self.addresses), tuple(self.ports), self.chains, tuple(lines))
