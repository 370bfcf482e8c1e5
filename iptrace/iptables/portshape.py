"""A Service port's *shape*: what the traces of its questions read of the rules, with its own values (addresses,
ports, chain names, lines) abstracted, so that a port whose shape equals another's has the same traces but for
those values (iptrace.kube.shapes then builds its view from the other's instead of tracing it).

kube-proxy writes every Service port with the same endpoint count, ways in and policies as the same rules but
for addresses, ports, comments and chain names. The shape of a port is:
- its questions (trace or trace_chain: the chain entered, source, destination, ports, protocol, interface), each
  address and port written as its *number* (first appearance order over the whole shape: equal values, equal
  numbers);
- its own chains (the layout's, nat table), all their rules as one *skeleton* (their texts with the values of -s/-d,
  `--dport`, DNAT's `--to-destination`, the target, -m recent's `--name` and comments taken out, checked once per
  skeleton against the rules' structures: those tokens are the values the rules read that way) and those values:
  each host, port, own chain or list name as its number, a network as itself, a comment left out (it decides
  nothing);
- every other rule that can match one of its branches and tests an exact host or port (its dispatch in
  KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, …: the rules whose exact -d/-s hosts and `--dport`s are
  all among the port's values), written the same way, with its chain and how many *generic* rules of that chain
  (rules without exact host or port tests: the same for every port) come before it;
- for each address, what every other test can see of it: its address type and whether it is the node's
  (addrtype, routing), and which of the networks of -s/-d tests (generic rules' and its own rules') contain it.

Why equal shapes mean the same walks. Every branch's source is one of the questions' sources (no rule that the
key admits rewrites it), its destination one of the addresses in the shape (a question's, or a DNAT target of
its own rules), its destination port one of the ports. A rule with an exact host or port test outside those never
matches, and the walk skips a rule that does not match without any effect; the rules that can match are the
generic ones of the chains reachable (the same rules for every port), which read addresses only through -s/-d
networks and addrtype (what the classes hold) and ports only by `--dport N` (then they are not generic; `! --dport`
is no exact test and gives no shape), and the
port's own and dispatch rules, equal but for the numbered values. Chains whose rules read addresses or ports any
other way (ipsets, iprange, conntrack's original addresses, -m recent, port ranges and lists) or rewrite the
packet (DNAT, REDIRECT, NETMAP outside the port's own chains) give no shape; nor do own rules that do, but for
session affinity's -m recent: a list is its name (numbered like the port's chains: kube-proxy names each after an
endpoint chain) and a whole source or destination address (numbered), read and written within the walk.
tests/test_port_shapes.py compares views built with and without shapes.
"""

from __future__ import annotations

import re
import weakref
from itertools import chain as chain_items
from operator import attrgetter, itemgetter
from socket import AF_INET, inet_pton
from typing import Any

from iptrace.dataplane import PortShape
from iptrace.errors import TraceError
from iptrace.iptables.carry import OWN
from iptrace.iptables.matchers import Structure, fast_tokens, rule_structure
from iptrace.iptables.memo import PACKET_WRITERS, chain_target, exact_dport_tokens, structure_reads
from iptrace.iptables.model import BUILTIN_CHAINS, TABLES
from iptrace.iptables.options import BUILTIN_TARGETS
from iptrace.iptables.state import format_ip, ip_int, parse_net

# Optional fields a rule may read besides what the shape holds (-s/-d, addrtype, `--dport N`): the source port
# is every question's own (a constant of the packets, in the shape).
_HARMLESS_READS = frozenset({"sport"})
# `-m recent` (session affinity) in a port's own chains: a list is keyed by its name and the source (or destination)
# address, whole (`--mask` all ones): the names are numbered like the port's chains, the addresses are numbered.
_RECENT_OPTIONS = frozenset({"--set", "--rcheck", "--update", "--remove", "--name", "--mask", "--rsource", "--rdest",
                             "--seconds", "--reap", "--hitcount"})
_ADDRESS_OPTIONS = ("-s", "-d")
_NAT_TO = ("--to-destination",)
_COMMENT = "--comment"
# Kinds of the tokens a rule plan abstracts: an -s/-d value (negated or not), an exact `--dport N`, a DNAT
# target, a comment (left out), the target, a `-m recent` list's name (kube-proxy's: its endpoint chain's).
_ADDR, _NEGATED, _PORT, _NAT, _SKIP, _TARGET, _NAME = 0, 1, 2, 3, 4, 5, 6
# The options whose values a skeleton leaves out, each value one token as the loader reads them (model.TOKEN_RE);
# every skeleton is checked once against its rules' structures (Shapes.skeleton).
_VALUE_OPTIONS = {"-s": _ADDR, "-d": _ADDR, "--dport": _PORT, "--to-destination": _NAT, "--comment": _SKIP,
                  "-j": _TARGET, "-g": _TARGET, "--name": _NAME}
# An option of those and its value, the value one token as model.TOKEN_RE reads it there (a quoted token ends at
# its first unescaped quote); split() gives the text between them, the option and the value, in C. The repeats are
# possessive: none gives back a character that what follows could match, so they match as greedy ones (fewer steps).
# The long options share their "--" and come first, `--comment` (every kube-proxy rule has one) first of them: the
# options start with different characters, so their order changes no match, only the steps to it (~4% fewer).
_VALUE = re.compile(r' (--(?:comment|dport|to-destination|name)|-[sdjg]) '
                    r'("[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"(?!\S)|[^\s"]\S*+)')
_MARK = "\0"  # (joins a skeleton's pieces: no rule text holds it)
_TEXT = itemgetter(1)  # (a Rule's text)
_ORDER = attrgetter("table", "chain", "position")  # (a dispatch rule's place)
_WHERE = attrgetter("table", "chain", "before")  # (what a shape says of it: how many generic rules come before)
_LINE = itemgetter(3)  # (a Rule's line)
_RULES = attrgetter("rules")  # (a Chain's)
_NOTHING: dict[str, int] = {}


class _Decline(Exception):
    """The port's traces read something a shape cannot hold: no shape."""


class _Plan:
    """What the rules of one structure read: their tokens holding values (index, kind), the tokens of their -m recent
    `--mask`s (-1 for each recent match), and whether every read is one a shape holds."""

    __slots__ = ("masks", "ok", "values")

    def __init__(self, values: tuple[tuple[int, int], ...], ok: bool, masks: tuple[int, ...]) -> None:
        self.values = values
        self.ok = ok
        self.masks = masks


def _picker(indices: list[int]) -> Any:
    """`f(values)`: the values at `indices`, as a tuple (in C)."""
    if len(indices) > 1:
        return itemgetter(*indices)
    if indices:
        at = indices[0]
        return lambda values: (values[at],)
    return lambda values: ()


class _Program:
    """How to read the values of rules of one skeleton: its number, and a picker of its values of each kind (a port
    reads all its addresses, then its DNAT targets, ports, list names and targets: any fixed order numbers equal
    values alike)."""

    __slots__ = ("addresses", "names", "nats", "number", "ports", "targets")

    def __init__(self, number: int, kinds: list[int]) -> None:
        self.number = number
        at: dict[int, list[int]] = {}
        for i, kind in enumerate(kinds):
            at.setdefault(_ADDR if kind == _NEGATED else kind, []).append(i)
        self.addresses, self.nats, self.ports, self.names, self.targets = (
            _picker(at.get(kind, [])) for kind in (_ADDR, _NAT, _PORT, _NAME, _TARGET))


class _Rule:
    """A rule of a chain other than a port's own that tests exact hosts or ports: where it is, what it tests and the
    chain it jumps or goes to (None: none)."""

    __slots__ = ("before", "chain", "hosts", "jump", "place", "ports", "position", "rule", "table")

    def __init__(self, table: str, chain: str, position: int, before: int, rule: Any, hosts: frozenset[int],
                 ports: frozenset[int], jump: str | None) -> None:
        self.table = table
        self.chain = chain
        self.place = (table, chain)
        self.position = position
        self.before = before
        self.rule = rule
        self.hosts = hosts
        self.ports = ports
        self.jump = jump


# (a rule's text → Shapes.read's: per process, a node's ~10^4 dispatch rules read once; started again when full)
_READ: dict[str, tuple[Any, ...]] = {}
READ_LIMIT = 100_000


class Shapes:
    """One tracer's rules as shapes read them: other chains analysed once each (their generic rules' networks and
    jumps, their exact-host and exact-port rules filed by value), rule plans by structure."""

    def __init__(self, tracer: Any) -> None:
        # (weak: the tracer holds this, and a cycle would leave a whole ruleset to the cyclic collector)
        self.tracer = weakref.proxy(tracer)
        self.version: int = tracer.version
        self.full = (1 << (32 if self.version == 4 else 128)) - 1
        self.structures: dict[object, Structure] = tracer._structures
        self.plans: dict[int, _Plan] = {}
        self.alive: list[Structure] = []  # (the structures plans are kept by id of)
        self.chains: dict[tuple[str, str], tuple[tuple[str, str], ...] | None] = {}  # → generic jumps, None: no
        self.by_host: dict[int, list[_Rule]] = {}
        self.by_port: dict[int, list[_Rule]] = {}
        self.networks: list[tuple[int, int]] = []  # of generic and exact rules' -s/-d tests, in order found
        self._network_set: set[tuple[int, int]] = set()
        self.exact_networks = False  # (an exact rule added one: see _Port.shape's `portable`)
        self._kinds: dict[int, tuple[Any, ...]] = {}
        ctx = tracer.ctx
        self.local: frozenset[int] = ctx.local_addresses
        self.unicast = (("UNICAST",), not ctx.node_ips_known, False)  # (match_modules._address_types' answer)
        self.skeletons: dict[str, _Program | None] = {}
        self.address_ints: dict[str, Any] = {}  # an -s/-d value → its host (int) or network
        self._reach: dict[tuple[str, str], frozenset[tuple[str, str]] | None] = {}
        roots = [(t, c) for t in TABLES for c in BUILTIN_CHAINS[t]]
        if tracer.entry == "kube-proxy":
            from iptrace.iptables.walk import FRAGMENT_FILTER_CHAINS, FRAGMENT_NAT_CHAIN

            roots += [("nat", FRAGMENT_NAT_CHAIN), *(("filter", c) for c in FRAGMENT_FILTER_CHAINS)]
        self.roots = self.reach(roots)

    # ---------------------------------------------------------------------------------------- other chains

    def reach(self, starts: Any) -> frozenset[tuple[str, str]] | None:
        """Every chain reachable from `starts` by generic rules' jumps (each analysed), None when one of them
        reads what a shape cannot hold."""
        seen: set[tuple[str, str]] = set()
        todo = list(starts)
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            jumps = self.analyse(key)
            if jumps is None:
                return None
            todo.extend(jumps)
        return frozenset(seen)

    def reach_one(self, key: tuple[str, str]) -> frozenset[tuple[str, str]] | None:
        found = self._reach.get(key, False)
        if found is False:
            found = self._reach[key] = self.reach([key])
        return found  # type: ignore[return-value]

    def analyse(self, key: tuple[str, str]) -> tuple[tuple[str, str], ...] | None:
        """The chains a chain's generic rules jump to, its exact rules filed by value (once); None when a rule
        reads what a shape cannot hold or rewrites the packet."""
        if key in self.chains:
            return self.chains[key]
        table_name, name = key
        table = self.tracer.ruleset.table(table_name)
        chain = table.by_name.get(name) if table is not None else None
        if chain is None:
            self.chains[key] = ()
            return ()
        jumps: list[tuple[str, str]] = []
        generic = 0
        found: tuple[tuple[str, str], ...] | None = None
        try:
            by_name, add = table.by_name, self._add_networks
            for position, rule in enumerate(chain.rules):
                read = _READ.get(rule[1])
                if read is None or read[0] is not rule[4] or read[1] != self.version:
                    read = self.read(rule)
                _shape, _version, hosts, ports, networks, target = read
                if networks and add(networks) and (hosts or ports):  # (a rule a shape cannot hold: those before)
                    self.exact_networks = True
                if target is None:
                    raise _Decline
                jump = chain_target(target, by_name, BUILTIN_TARGETS)
                if not hosts and not ports:
                    generic += 1
                    if jump is not None:
                        jumps.append((table_name, jump))
                    continue
                entry = _Rule(table_name, name, position, generic, rule, frozenset(hosts), frozenset(ports), jump)
                for value in (hosts if hosts else ports):
                    (self.by_host if hosts else self.by_port).setdefault(value, []).append(entry)
            found = tuple(jumps)
        except _Decline:
            found = None
        self.chains[key] = found
        return found

    def read(self, rule: Any) -> tuple[Any, ...]:
        """What `analyse` reads of a rule, kept by its text (_READ) with its shape and IP version: its exact hosts and
        ports, its -s/-d networks in order, its target ("" none; None: it reads what a shape cannot hold)."""
        hosts: list[int] = []
        ports: list[int] = []
        networks: list[tuple[int, int]] = []
        target: str | None = None
        try:
            tokens = fast_tokens(rule.text)
            plan = self.plan(rule, tokens)
            if not plan.ok or plan.masks:
                raise _Decline
            for i, kind in plan.values:
                value = tokens[i]
                if kind == _ADDR or kind == _NEGATED:
                    self.address_test(value, kind == _NEGATED, hosts, networks)
                elif kind == _PORT:
                    ports.append(int(value))
                elif kind == _NAT:
                    raise _Decline
            target = rule.target_name or ""
            if target in PACKET_WRITERS:
                raise _Decline
        except (_Decline, TraceError, ValueError):
            target = None
        found = (rule[4], self.version, tuple(hosts), tuple(ports), tuple(networks), target)
        if len(_READ) >= READ_LIMIT:
            _READ.clear()
        _READ[rule[1]] = found
        return found

    def _add_networks(self, networks: tuple[tuple[int, int], ...]) -> bool:
        """Whether one of `networks` is new (added to `networks` in order)."""
        count = len(self.networks)
        for net in networks:
            if net not in self._network_set:
                self._network_set.add(net)
                self.networks.append(net)
        return len(self.networks) > count

    def address_test(self, value: str, negated: bool, hosts: list[int], networks: list[tuple[int, int]]) -> None:
        """A generic or exact rule's -s/-d value: an exact host (unnegated, one address: `hosts`) or networks
        (their containment is part of every address's class: `networks`)."""
        if value[:1] == '"':
            raise _Decline
        for part in value.split(","):
            net = parse_net(part, self.version)
            if net is None:
                raise _Decline  # (another family's address: such a test never matches; not worth a shape)
            if net[1] == self.full and not negated and "," not in value:
                hosts.append(net[0])
            else:
                networks.append(net)

    def plan(self, rule: Any, tokens: list[str]) -> _Plan:
        """The plan of `rule`'s structure (kept by structure)."""
        structure = rule_structure(rule, tokens, self.structures)
        found = self.plans.get(id(structure))
        if found is None:
            found = self.plans[id(structure)] = self._make_plan(rule, structure)
            self.alive.append(structure)
        return found

    def _make_plan(self, rule: Any, structure: Structure) -> _Plan:
        shape = rule.shape
        values: dict[int, int] = {}
        ok = shape is not None and not shape.unknown_options
        rest = []
        masks: list[int] = []  # (-m recent's --mask values, -1 for each recent match)
        for module, specs in structure[0]:
            kept = []
            for name, negated, idx in specs:
                if module == "" and name in _ADDRESS_OPTIONS:
                    if len(idx) != 1:
                        ok = False
                    for i in idx:
                        values[i] = _NEGATED if negated else _ADDR
                    continue
                if name == _COMMENT:
                    for i in idx:
                        values[i] = _SKIP
                kept.append((name, negated, idx))
            if module == "addrtype":
                continue  # (it reads the address type only: part of every address's class)
            if module == "recent":
                for name, _negated, idx in specs:
                    if name not in _RECENT_OPTIONS or len(idx) != (name in ("--name", "--mask", "--seconds",
                                                                             "--hitcount")):
                        ok = False
                    if name == "--name":
                        values[idx[0]] = _NAME
                    elif name == "--mask":
                        masks.append(idx[0])
                masks.append(-1)  # (a recent match: only a port's own rules may have one)
                continue
            rest.append((module, tuple(kept)))
        reads = structure_reads((tuple(rest), structure[1]))
        if reads - _HARMLESS_READS - {"dport"}:
            ok = False
        if "dport" in reads:
            spots = exact_dport_tokens((tuple(rest), structure[1]))
            if spots is None:
                ok = False
            else:
                negated = {i for _module, specs in rest for _name, negation, idx in specs if negation for i in idx}
                ok = ok and negated.isdisjoint(spots)  # (`! --dport N` matches every other port: not exact)
                for i in spots:
                    values[i] = _PORT
        for name, _negated, idx in structure[1]:
            if name in _NAT_TO and len(idx) == 1:
                values[idx[0]] = _NAT
        if shape is not None and shape.target_index >= 0:
            values[shape.target_index] = _TARGET
        return _Plan(tuple(sorted(values.items())), ok, tuple(masks))

    def skeleton(self, skeleton: str, rules: Any) -> _Program | None:
        """How to read the values of rules with this skeleton, checked against their structures the first
        time: every value the skeleton takes out is one the structure reads as that kind, and the only values of
        those kinds; None when not, or when a rule reads what a shape cannot hold."""
        found = self.skeletons.get(skeleton, False)
        if found is not False:
            return found  # type: ignore[return-value]
        kinds: list[int] | None = []
        for rule in rules:
            tokens = fast_tokens(rule.text)
            plan = self.plan(rule, tokens)
            parts = _VALUE.split(" " + rule.text)
            seen = list(zip(parts[1::3], parts[2::3], strict=True))
            if not plan.ok or len(seen) != len(plan.values) or kinds is None or not all(
                    i < 0 or self._full_mask(tokens[i]) for i in plan.masks):
                kinds = None
                break
            for (option, value), (i, kind) in zip(seen, plan.values, strict=True):
                if tokens[i] != value or _VALUE_OPTIONS[option] != (_ADDR if kind == _NEGATED else kind):
                    kinds = None
                    break
                kinds.append(kind)
        found = None if kinds is None else _Program(len(self.skeletons), kinds)
        self.skeletons[skeleton] = found
        return found

    def _full_mask(self, text: str) -> bool:
        """Whether -m recent's `--mask text` keeps every bit (as match_recent reads it)."""
        try:
            found = parse_net(text, self.version)
        except TraceError:
            return False
        return found is not None and found[0] == self.full

    # ---------------------------------------------------------------------------------------- a port

    def kinds(self, addresses: Any) -> tuple[tuple[Any, ...], ...]:
        """What -m addrtype and the routing decision see of each address (Context.is_local, addrtype's types)."""
        if self.version != 4:
            return tuple(map(self.kind, addresses))
        unicast, local, kind = self.unicast, self.local, self.kind
        # (an endpoint's or a Service's: nearly every address asked about, a plain unicast one)
        return tuple([unicast if 0 < a < 0xE0000000 and a >> 24 != 127 and a not in local else kind(a)
                      for a in addresses])

    def kind(self, addr: int) -> tuple[Any, ...]:
        found = self._kinds.get(addr)
        if found is None:
            from iptrace.iptables.match_modules import _address_types

            ctx = self.tracer.ctx
            types, unsure = _address_types(addr, ctx)
            found = self._kinds[addr] = (tuple(sorted(types)), unsure, ctx.is_local(addr))
        return found


def port_shape(tracer: Any, calls: Any, chains: Any) -> PortShape | None:
    """The shape of the traces `calls` ((chain entered directly or None, Packet), as the view asks them) of a
    Service port whose own chains are `chains` (nat), or None when they read what a shape cannot hold."""
    shapes = tracer.__dict__.get("_port_shapes")
    if shapes is None:
        shapes = tracer._port_shapes = Shapes(tracer)
    if shapes.roots is None:
        return None
    try:
        return _Port(shapes, tuple(chains)).shape(calls)
    except (_Decline, TraceError, ValueError):
        return None


class _Port:
    def __init__(self, shapes: Shapes, chains: tuple[str, ...]) -> None:
        self.shapes = shapes
        self.own = {name: i for i, name in enumerate(chains)}
        self.chains = chains
        # A value's number: `numbers.setdefault(value, len(numbers))` (its first appearance's, in C).
        self.addresses: dict[int, int] = {}
        self.hosts: dict[str, int] = {}  # an address's text, as inet_pton reads it, → its number
        self.ports: dict[int, int] = {}
        self.lines: list[int] = []
        self.own_networks: list[tuple[int, int]] = []
        self.jumps: set[tuple[str, str]] = set()

    def host(self, text: str) -> int:
        """The number of the address `text` (one of the shapes' family, else there is no shape). A dotted quad the C
        library reads (four decimal numbers 0-255, no leading zeros: the one text of its address) is kept by its
        text: an endpoint's is read again from its DNAT target, and it gives the address's text back."""
        numbers = self.addresses
        if self.shapes.version == 4:
            try:
                addr = int.from_bytes(inet_pton(AF_INET, text), "big")
            except (OSError, ValueError):
                pass
            else:
                found = self.hosts[text] = numbers.setdefault(addr, len(numbers))
                return found
        version, addr = ip_int(text)
        if version != self.shapes.version:
            raise _Decline
        return numbers.setdefault(addr, len(numbers))

    def rules(self, rules: Any, table: Any, own: bool) -> tuple[Any, ...]:
        """Rules abstracted: their skeleton's number (their texts with every value taken out), then their values by
        kind, each as its number (addresses, ports, own chains) or itself (networks, other targets)."""
        shapes = self.shapes
        text = " " + "\n ".join(map(_TEXT, rules))
        parts = _VALUE.split(text)
        values = parts[2::3]
        del parts[2::3]
        program = shapes.skeleton(_MARK.join(parts), rules)
        if program is None or _MARK in text:
            raise _Decline
        v4, hosts, host, ports = shapes.version == 4, self.hosts, self.host, self.ports
        found: list[Any] = []
        for value in program.addresses(values):
            if value[-3:] == "/32" and v4:
                value = value[:-3]
                at = hosts.get(value)
                found.append(host(value) if at is None else at)
            else:
                found.append(self.network(value))
        for value in program.nats(values):
            addr, _, port = value.rpartition(":")
            if addr[:1] == "[" and addr[-1:] == "]":
                addr = addr[1:-1]
            if not own or not port.isdigit() or int(port) > 65535 or not addr or addr[:1] == '"':
                raise _Decline
            at = hosts.get(addr)
            found.append((host(addr) if at is None else at, ports.setdefault(int(port), len(ports))))
        for value in program.ports(values):
            if not value.isdigit():
                raise _Decline
            found.append(ports.setdefault(int(value), len(ports)))
        nat = table.name == "nat"
        own_get = self.own.get if nat else _NOTHING.get
        names = program.names(values)
        if names:
            if not own or any(name[:1] == '"' for name in names):
                raise _Decline
            found.append(tuple(map(own_get, names, names)))
        targets = tuple(map(own_get, *(program.targets(values),) * 2))
        for target in set(targets):
            if type(target) is str:
                if target[:1] == '"' or (target in PACKET_WRITERS and not (own and target == "DNAT")):
                    raise _Decline
                if target in table.by_name and target not in BUILTIN_TARGETS:
                    self.jumps.add((table.name, target))
        self.lines.extend(map(_LINE, rules))
        return (program.number, tuple(found), targets)

    def network(self, value: str) -> Any:
        """An -s/-d value but /32: a host's number, or the value itself (a network, whose containment of each
        address is part of the key)."""
        shapes = self.shapes
        host = shapes.address_ints.get(value)
        if host is None:
            if value[:1] == '"' or "," in value:
                raise _Decline
            net = parse_net(value, shapes.version)
            if net is None:
                raise _Decline
            host = shapes.address_ints[value] = net[0] if net[1] == shapes.full else net
        if type(host) is int:
            return self.addresses.setdefault(host, len(self.addresses))
        if host not in self.own_networks:
            self.own_networks.append(host)
        return value

    def shape(self, calls: Any) -> PortShape:
        shapes = self.shapes
        ruleset = shapes.tracer.ruleset
        own, addresses, hosts, host, ports = self.own, self.addresses, self.hosts, self.host, self.ports
        asked = []
        for chain, packet in calls:
            if chain is not None and chain not in own:
                raise _Decline
            src, dst = hosts.get(packet.src), hosts.get(packet.dst)
            asked.append((None if chain is None else own[chain], host(packet.src) if src is None else src,
                          host(packet.dst) if dst is None else dst, ports.setdefault(packet.dport, len(ports)),
                          packet.sport, packet.proto, packet.in_interface))
        nat = ruleset.table("nat")
        if nat is None:
            raise _Decline
        by_name = nat.by_name
        chains = [by_name.get(name) for name in self.chains]
        if not all(chains):  # (a Chain is always true: `None in chains` would call its __eq__ for each)
            raise _Decline
        rules = list(chain_items.from_iterable(map(_RULES, chains)))  # (every rule of its own chains: one skeleton)
        own_rules = (tuple([len(c.rules) for c in chains]), self.rules(rules, nat, True))
        own_keys = {("nat", name) for name in self.chains}
        roots = shapes.roots or frozenset()
        reached: frozenset[tuple[str, str]] | set[tuple[str, str]] = roots
        todo = [jump for jump in self.jumps if jump not in roots]  # (the roots reach all they lead to)
        exact: dict[int, _Rule] = {}
        while True:
            if todo:
                reached = set(reached)
                while todo:
                    more = shapes.reach_one(todo.pop())
                    if more is None:
                        raise _Decline
                    reached |= more
            if not reached.isdisjoint(own_keys):
                raise _Decline  # (a chain of the port's own that other rules lead to as well)
            for found in [*map(shapes.by_host.get, list(addresses)), *map(shapes.by_port.get, list(ports))]:
                for r in found or ():
                    if id(r) in exact or r.place not in reached:
                        continue
                    if r.hosts.issubset(addresses) and r.ports.issubset(ports):
                        exact[id(r)] = r
                        jump = r.jump
                        if jump is not None and not (r.table == "nat" and jump in own):
                            todo.append((r.table, jump))
            if not todo:
                break
        # The dispatch rules where they are, and abstracted a table at a time (one skeleton each, as the own ones).
        dispatch = sorted(exact.values(), key=_ORDER)
        by_table: dict[str, list[Any]] = {}
        for r in dispatch:
            by_table.setdefault(r.table, []).append(r.rule)
        read = tuple([self.rules(found, ruleset.table(name), False) for name, found in by_table.items()])
        lines = tuple(self.lines)
        if len(set(lines)) != len(lines) or 0 in lines:
            raise _Decline
        # Each address's class: its kind, and which networks (the generic rules', then the port's own) hold it.
        held = tuple([tuple([a & m == n for a in addresses]) for n, m in (*shapes.networks, *self.own_networks)])
        key = (tuple(asked), own_rules, tuple(map(_WHERE, dispatch)), read, len(shapes.networks),
               shapes.kinds(addresses), held)
        version, texts = shapes.version, {at: text for text, at in hosts.items()}
        # (portable: its traces read no other port's chain but those the context enters (carry's fingerprint digests
        # every other chain by role: another port's rules differ by node), and no exact rule (another node's differ)
        # put one of `held`'s networks before the context's)
        portable = not shapes.exact_networks and (
            reached is roots or not any(chain.startswith(OWN) for _table, chain in reached - roots))
        return PortShape(key, tuple([texts.get(at) or format_ip(a, version) for a, at in addresses.items()]),
                         tuple(ports), self.chains, lines, portable)
