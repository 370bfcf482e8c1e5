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
  names as its number; each network (prefix) as its number too (equal networks, equal numbers), whose
  containment of every address is in the key: a test of a network tells the walks no more than that (every address
  a branch holds is one of the port's), so ports whose loadBalancerSourceRanges differ share a shape when the
  ranges hold the same of their addresses;
- every element of every named set or map that a walked rule looks up whose address and port parts are all among
  the port's values, written the same way, in the set's order (a look-up keyed by the branch's address and port
  finds no other element: every address a branch holds is a question's or a DNAT target of its own rules);
- the named sets its own rules look up or fill (session affinity's, kube-proxy's per endpoint), numbered like its
  chains: each one's declaration and the elements of it a branch can find (the port's addresses);
- for each address, what every other test can see of it: its fib type, whether the node holds it, and which of
  the networks and exact hosts of the generic rules (and of its own rules' networks) it is; for each port, which
  of the generic rules' ports and port ranges it is.

*Generic* rules (generic.py reads them) are every rule of every chain the walk can reach other than the port's own:
the base chains of every table of the family and the chains their rules and the elements above send to. They may
read addresses and ports only by prefix, exact host, port and range tests, fib's address type and look-ups in named
sets (the above), and may rewrite nothing but marks and masquerade; any other read (an anonymous map, numgen, ct's
original addresses, a dynamic set, an unknown expression) gives no shape. Own rules may hold only the tests and
statements kube-proxy writes there (address, port and protocol tests, fib type, numgen's verdict maps, jumps, DNAT
to a constant address, affinity sets' look-ups and updates by address); rule comments decide nothing and are left
out (so are the walks' notes: a view reads none). Own chains or sets that a generic rule names give no shape.
tests/test_nft_port_shapes.py compares views built with and without shapes.
"""

from __future__ import annotations

from typing import Any

from iptrace.dataplane import PortShape, RuleAt
from iptrace.nftables.generic import Shapes
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Counter,
    Element,
    Fib,
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
from iptrace.nftables.portrules import ADDR as _ADDR
from iptrace.nftables.portrules import LIT as _LIT
from iptrace.nftables.portrules import PORT as _PORT
from iptrace.nftables.portrules import Decline as _Decline
from iptrace.nftables.portrules import chain_plan, plan
from iptrace.nftables.portrules import kind as _kind
from iptrace.nftables.state import prefix_bounds

_new_tuple = tuple.__new__  # RuleAt(…) without the NamedTuple's Python-level __new__


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
        self.networks: dict[tuple[int, int, bool], int] = {}  # its own tests' networks (net, mask, v6), numbered
        self.own_networks: list[tuple[int, int, bool]] = []  # them in number order
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
        """An own test's constant: an address, port or network as its number (a network's containment of each
        address is in the key: all a test of it can tell the walks), a set of them element by element."""
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
                network = (*prefix_bounds(right.addr, right.length), ":" in right.addr)
                found = self.networks.get(network)
                if found is None:
                    found = self.networks[network] = len(self.networks)
                    self.own_networks.append(network)
                return (Prefix, found)
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
                for hits in filter(None, map(index.get, values)):  # (a port's ~16 values, most in no element)
                    for pos, i in hits:
                        at = candidates.get(pos)
                        if at is None:
                            candidates[pos] = [i]
                        else:
                            at.append(i)
        for pos in sorted(candidates) if len(candidates) > 1 else candidates:
            indices = candidates[pos]
            lookup = found[pos]
            kinds = lookup.kinds
            elements = lookup.set.elements
            vmap: bool | None = None  # (lookup.set.is_vmap, read at the first element with data)
            written = []
            for i in (sorted(set(indices)) if len(indices) > 1 else indices):
                element: Element = elements[i]
                # (each part of the key: a literal as itself, an address or port as its number, or not found)
                if len(kinds) == 1:
                    part = element.key
                    kind = kinds[0]
                    if kind == _LIT:
                        key: tuple[Any, ...] = (part,)
                    else:
                        number = (addresses if kind == _ADDR else ports).get(part)
                        if number is None:
                            continue
                        key = ((kind, number),)
                else:
                    parts: list[Any] | None = []
                    for kind, part in zip(kinds, element.key, strict=True):
                        if kind == _LIT:
                            parts.append(part)  # type: ignore[union-attr]
                        else:
                            number = (addresses if kind == _ADDR else ports).get(part)
                            if number is None:
                                parts = None  # (a part that is none of the port's values: not found)
                                break
                            parts.append((kind, number))  # type: ignore[union-attr]
                    if parts is None:
                        continue
                    key = tuple(parts)
                data = element.data
                if data is None:
                    written.append((key, None, element.timeout_ms))
                    continue
                if vmap is None:
                    vmap = lookup.set.is_vmap
                if not vmap:
                    raise _Decline
                written.append((key, self.verdict(data), element.timeout_ms))
            out[pos] = (lookup.set.name, kinds, tuple(written))
        return out

    def shape(self, calls: Any) -> PortShape:
        shapes = self.shapes
        version = 0
        asked = []
        own, addresses, ports = self.own, self.addresses, self.ports
        for chain, packet in calls:
            src, dst, dport = packet.src, packet.dst, packet.dport
            v = 6 if ":" in src else 4
            if (version and v != version) or (chain is not None and chain not in own):
                raise _Decline
            version = v
            # (self.address(src), self.address(dst), self.port(dport), in that order, inline: ~25,000 questions)
            a = addresses.get(src)
            if a is None:
                a = addresses[src] = len(addresses)
            b = addresses.get(dst)
            if b is None:
                b = addresses[dst] = len(addresses)
            p = ports.get(dport)
            if p is None:
                p = ports[dport] = len(ports)
            asked.append((None if chain is None else own[chain], a, b, p, packet.sport, packet.proto,
                          packet.in_interface))
        found = shapes.kube_of(version) if version else None
        if found is None:
            raise _Decline
        kube, reached = found
        chains = kube.chains_named(self.chains)
        lines: list[int | RuleAt] = []
        own_rules = []
        table = kube.label
        for chain in chains:
            if chain is None or chain.base is not None:
                raise _Decline
            record = chain._lazy
            if record is not None:  # a chain read by a template: its rules written from its record, not made
                maker = record[0]
                try:
                    whole = maker.port_plan
                except AttributeError:
                    whole = maker.port_plan = chain_plan(maker)
                if whole is not None:
                    own_rules.append(whole(self, record))
                    lines.extend(range(record[2] + 1, record[2] + 1 + maker.count))
                    continue
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
                # (nft JSON input: no line, the rule's kernel handle, as a view's path names it; a plain tuple's
                # new: ~25,000 rules at 1,000 Services)
                lines.append(rule.line or (0 if rule.handle is None else _new_tuple(RuleAt, (table, chain.name,
                                                                                            rule.handle))))
            own_rules.append(tuple(rules))
        if not reached.isdisjoint(self.chains):
            raise _Decline  # (a chain of the port's own that other rules lead to as well)
        done: set[str] = set()
        while True:
            for name in self.jumps - done:
                done.add(name)
                more = shapes.reach_names(kube, name)
                if more is None or not more.isdisjoint(self.chains):
                    raise _Decline
            elements = self.elements(shapes.merged())
            if self.jumps <= done:
                break
        sets = self.set_contents(kube, shapes.lookups) if self.sets else ()
        if not any(lines):
            lines = []  # (no rule has a line or handle, and a view says 0 for each, the same for every port)
        elif len(set(lines)) != len(lines) or 0 in lines:
            raise _Decline
        classes = shapes.classes(self.addresses, self.own_networks)
        port_classes = tuple([shapes.port_class(p) for p in self.ports])
        key = (version, tuple(asked), tuple(own_rules), sets, tuple(elements), len(shapes.networks), len(shapes.hosts),
               len(shapes.ports), classes, port_classes)
        return PortShape(key, tuple(self.addresses), tuple(self.ports), self.chains, tuple(lines))
