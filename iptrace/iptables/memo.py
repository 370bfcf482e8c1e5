"""Sharing the walk after NAT between branches that the rules met there cannot tell apart.

A kube-proxy Service with ten endpoints splits into ten branches that differ (after DNAT) only in the
destination; every branch then crosses the same FORWARD and POSTROUTING chains, whose rules look at marks and
conntrack state, or at destinations that none of the endpoints has. So the walk through such a stage sequence
is recorded once as a *delta* (rules appended to the path, chains entered, the probability factor, the
assumptions made, the branch's other fields afterwards) and replayed for every state with the same *key*.

The key is exact, not a guess. It holds every field of the branch the walk can read, except that of the
optional fields (the packet's addresses and ports, and `recent`) it holds only those some rule reachable from
the stages reads. Three refinements make it useful:
- a rule with an exact destination host (or an exact protocol + destination port: what the index files it
  under, whether its chain is indexed or not) fails for every packet without that host (port), so what it
  reads, and what the chains it jumps to read, only counts for such packets — and for them the key holds the
  exact destination (port);
- the packet fields are never written on the way (a closure holding DNAT, REDIRECT or NETMAP is not shared),
  and `recent` only by rules that read it, so a replayed branch keeps its own values of unkeyed fields;
- the walk only ever appends to `assumptions` (skipping texts already there), so it is recorded from an empty
  list and the texts are appended the same way on replay — they need not be in the key.
Two states with equal keys therefore meet the same candidate rules, every test answers the same, and the
live walk would produce exactly the recorded delta (tests/test_trace_properties.py compares both walks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from iptrace.errors import TraceError
from iptrace.iptables.index import KeyPlan, rule_key
from iptrace.iptables.matchers import MATCHERS, Structure, fast_tokens, rule_structure
from iptrace.iptables.model import Rule, Ruleset
from iptrace.iptables.options import BUILTIN_TARGETS
from iptrace.iptables.state import cons_prefix, cons_push, merged_assumptions, parse_net

# Fields the key leaves out unless a reachable rule reads them.
OPTIONAL_FIELDS = ("src", "sport", "dst", "dport", "orig_dst", "orig_dport", "recent")
_ALL = frozenset(OPTIONAL_FIELDS)
_NONE: frozenset[str] = frozenset()
# Every other field a walk reads or writes is always part of the key (`dnat_by` is neither read nor written
# in a shared closure: only DNAT-like targets set it, and they make the closure unshared; `assumptions` see
# above; `path`, `chains` and `prob` are replayed as deltas).
KEYED_FIELDS = ("proto", "hook", "local_origin", "in_iface", "out_iface", "mark", "ctmark", "dnat", "snat", "masq",
                "notrack", "kube_masq", "mark_drop", "accept")
# Targets that rewrite the packet's addresses or ports.
PACKET_WRITERS = frozenset({"DNAT", "REDIRECT", "NETMAP"})
# Analysing a closure costs about as much as compiling it: give up on very large ones.
MAX_CLOSURE_RULES = 20_000

_PORT_OPTIONS = {"--dport": {"dport"}, "--destination-port": {"dport"}, "--sport": {"sport"},
                 "--source-port": {"sport"}, "--syn": set(), "--tcp-flags": set(), "--tcp-option": set()}
_CONNTRACK_OPTIONS = {
    "--ctstate": set(), "--state": set(), "--ctproto": set(), "--ctstatus": set(), "--ctdir": set(),
    "--ctorigsrc": {"src"}, "--ctorigdst": {"orig_dst"}, "--ctreplsrc": {"dst"}, "--ctrepldst": {"src"},
    "--ctorigsrcport": {"sport"}, "--ctorigdstport": {"orig_dport"}, "--ctreplsrcport": {"dport"},
    "--ctrepldstport": {"sport"},
}
# Optional fields each option of a modeled match reads (see matchers.py); an option not listed reads all of them.
_OPTION_READS: dict[str, dict[str, set[str]]] = {
    "": {"-s": {"src"}, "-d": {"dst"}, "-p": set(), "-i": set(), "-o": set(), "-f": set()},
    **{m: _PORT_OPTIONS for m in ("tcp", "udp", "udplite", "sctp", "dccp")},
    "multiport": {"--dports": {"dport"}, "--destination-ports": {"dport"}, "--sports": {"sport"},
                  "--source-ports": {"sport"}, "--ports": {"sport", "dport"}},
    "addrtype": {"--src-type": {"src"}, "--dst-type": {"dst"}, "--limit-iface-in": set(),
                 "--limit-iface-out": set()},
    "conntrack": _CONNTRACK_OPTIONS,
    "state": _CONNTRACK_OPTIONS,
    "mark": {"--mark": set()},
    "connmark": {"--mark": set()},
}
# Modules whose tests (and effects) read the same optional fields whatever their options.
_MODULE_READS: dict[str, frozenset[str]] = {
    **{m: _NONE for m in ("comment", "nfacct", "statistic", "limit", "hashlimit", "connlimit", "quota", "rpfilter",
                          "length", "ttl", "hl", "tos", "dscp", "policy", "icmp", "icmp6", "icmpv6", "ipv6-icmp")},
    "recent": frozenset({"src", "dst", "recent"}),
    "set": frozenset({"src", "dst"}),
    "pkttype": frozenset({"dst"}),
    "iprange": frozenset({"src", "dst"}),
}


def structure_reads(structure: Structure) -> frozenset[str]:
    """The optional fields a rule's matches can read (a superset: unknown options count as reading all)."""
    reads: set[str] = set()
    for module, specs in structure[0]:
        fixed = _MODULE_READS.get(module)
        if fixed is not None:
            reads |= fixed
            continue
        table = _OPTION_READS.get(module)
        if table is None:
            if module in MATCHERS:
                return _ALL
            continue  # not modeled: the matcher answers a constant (matchers._unmodeled)
        for name, _neg, _idx in specs:
            found = table.get(name)
            if found is None:
                return _ALL
            reads |= found
    return frozenset(reads)


_PORT_MODULES = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
_EXACT_PORT_OPTIONS = frozenset({"--dport", "--destination-port"})


def exact_dport_tokens(structure: Structure) -> tuple[int, ...] | None:
    """Where a rule's `--dport N` values are among its tokens, when those options are the only way it reads the
    destination port (a value found there may still be a range or a list: the caller checks); None when it
    reads the port some other way (multiport, conntrack's reply port, an unknown option)."""
    found: list[int] = []
    for module, specs in structure[0]:
        fixed = _MODULE_READS.get(module)
        if fixed is not None:
            if "dport" in fixed:
                return None
            continue
        table = _OPTION_READS.get(module)
        for name, _negated, idx in specs:
            if module in _PORT_MODULES and name in _EXACT_PORT_OPTIONS and len(idx) == 1:
                found.append(idx[0])
                continue
            reads = table.get(name) if table is not None else (None if module in MATCHERS else set())
            if reads is None or "dport" in reads:
                return None
    return tuple(found)


# Conditions under which an index makes a rule a candidate: always, for its destination host, for its
# protocol + port, or for both.
ALWAYS, HOST, PORT, BOTH = 0, 1, 2, 3


class StagePlan:
    """How to key the walk through one stage sequence (Tracer._stage_plan gives None when it cannot be
    shared), and the walks recorded so far.

    `reads` are the optional fields read per condition (ALWAYS, HOST, PORT, BOTH) other than through plain
    -s/-d tests; `nets` the (network, mask) pairs of those tests per condition and address ("src", "dst"): of
    an address only they read, the key holds which of them contain it (a pod, the node and an endpoint are
    then told apart by a few bits, not by their addresses)."""

    __slots__ = ("hosts", "key", "memo", "ports")

    def __init__(self, reads: Sequence[set[str]], hosts: set[int], ports: set[tuple[int, int]],
                 nets: Sequence[dict[str, set[tuple[int, int]]]] | None = None) -> None:
        self.hosts = frozenset(hosts)
        self.ports = frozenset(ports)
        self.memo: dict[tuple[Any, ...], tuple[Recorded, ...]] = {}
        variants: list[tuple[list[str], list[tuple[str, tuple[tuple[int, int], ...]]], bool]] = []
        for dst_in in (False, True):
            for port_in in (False, True):
                labels = [ALWAYS, *([HOST] if dst_in else []), *([PORT] if port_in else []),
                          *([BOTH] if dst_in and port_in else [])]
                fields = set().union(*(reads[label] for label in labels))
                if dst_in:
                    fields.add("dst")
                if port_in:
                    fields.add("dport")
                read = [f for f in OPTIONAL_FIELDS if f in fields]
                tests = []
                for attr in ("src", "dst"):
                    found = set().union(*(nets[label].get(attr, set()) for label in labels)) if nets else set()
                    if found and attr not in fields:
                        tests.append((attr, tuple(sorted(found))))
                variants.append((read, tests, "recent" in fields))
        # key(s): (the key of state `s`, whether the key holds `recent`)
        self.key: Callable[[Any], tuple[tuple[Any, ...], bool]] = _key_function(self.hosts, self.ports, variants)


def _key_function(hosts: frozenset[int], ports: frozenset[tuple[int, int]],
                  variants: Sequence[tuple[Sequence[str], Sequence[tuple[str, tuple[tuple[int, int], ...]]], bool]],
                  ) -> Callable[[Any], tuple[tuple[Any, ...], bool]]:
    """The key function of a StagePlan, written out as one flat tuple per variant (whether the destination is
    one of `hosts`, whether (protocol, port) is one of `ports`): the variant's number, every KEYED_FIELDS value,
    the optional fields it reads, then for each address only tested against networks whether each network
    contains it. Generated code: this runs once per branch of every trace after its DNAT. The names are
    State's own slots (this module's tables); the networks are ints."""
    bodies = []
    for number, (read, tests, recent) in enumerate(variants):
        parts = [str(number), *(f"s.{f}" for f in (*KEYED_FIELDS, *read))]
        for attr, members in tests:
            parts += [f"s.{attr} & {mask} == {net}" for net, mask in members]
        bodies.append(f"({', '.join(parts)}), {recent}")
    source = (f"def key(s):\n"
              f"    if s.dst in hosts:\n"
              f"        if (s.proto, s.dport) in ports:\n"
              f"            return {bodies[3]}\n"
              f"        return {bodies[2]}\n"
              f"    if (s.proto, s.dport) in ports:\n"
              f"        return {bodies[1]}\n"
              f"    return {bodies[0]}\n")
    namespace: dict[str, Any] = {"hosts": hosts, "ports": ports}
    exec(source, namespace)
    # (taken out of its own globals: a function its namespace holds is a reference cycle, which only a full
    # garbage collection frees — one a node, each scanning everything an audit worker keeps)
    return namespace.pop("key")  # type: ignore[no-any-return]


# (template state, path items oldest first, chains entered oldest first, probability factor (numerator,
# denominator), assumptions made, terminal, the template's KEYED_FIELDS values)
Recorded = tuple[Any, tuple[Any, ...], tuple[Any, ...], int, int, tuple[str, ...], Any, tuple[Any, ...]]
_keyed_values = attrgetter(*KEYED_FIELDS)


def record(results: Sequence[tuple[Any, Any]], path: Any, chains: Any, prob: tuple[int, int],
           assumptions: tuple[str, ...]) -> tuple[Recorded, ...] | None:
    """The branches of a walk that started from `assumptions=()` as deltas from the state it started with
    (path, chains, prob and assumptions before it). Puts the assumptions the live walk would have left back
    on each branch."""
    num0, den0 = prob
    out = []
    for s, terminal in results:
        made = s.assumptions
        s.assumptions = merged_assumptions(assumptions, made)
        items = cons_prefix(s.path, path)
        entered = cons_prefix(s.chains, chains)
        if items is None or entered is None or not num0 or not den0:
            continue  # (cannot happen: the walk only prepends to path and chains, and multiplies prob)
        fnum, rnum = divmod(s.prob[0], num0)
        fden, rden = divmod(s.prob[1], den0)
        if rnum or rden:
            continue
        out.append((s.copy(), items, entered, fnum, fden, made, terminal, _keyed_values(s)))
    return tuple(out) if len(out) == len(results) else None


def replay(recorded: tuple[Recorded, ...], s: Any, keyed_recent: bool) -> list[tuple[Any, Any]]:
    """The recorded branches on state `s`: its unkeyed fields (and `dnat_by`), the recorded rest. The last
    branch is `s` itself, given the recorded keyed fields (the caller hands `s` over, as to a walk)."""
    if len(recorded) == 1:
        # The common case (the stages after DNAT do not split): `s` itself, spelled out — this runs once per
        # branch of every trace.
        template, items, entered, fnum, fden, made, terminal, values = recorded[0]
        _set_keyed(s, values)
        if keyed_recent:
            s.recent = template.recent
        if made:
            s.assumptions = merged_assumptions(s.assumptions, made)
        cell = s.path
        for item in items:
            cell = (item, cell)
        s.path = cell
        cell = s.chains
        for item in entered:
            cell = (item, cell)
        s.chains = cell
        if fnum != 1 or fden != 1:
            num, den = s.prob
            s.prob = (num * fnum, den * fden)
        return [(s, terminal)]
    out = []
    num, den = s.prob
    last = len(recorded) - 1
    for k, (template, items, entered, fnum, fden, made, terminal, values) in enumerate(recorded):
        if k == last:
            new = s
            _set_keyed(new, values)
            if keyed_recent:
                new.recent = template.recent
        else:
            new = template.copy()
            new.src = s.src
            new.sport = s.sport
            new.dst = s.dst
            new.dport = s.dport
            new.orig_dst = s.orig_dst
            new.orig_dport = s.orig_dport
            new.dnat_by = s.dnat_by
            if not keyed_recent:
                new.recent = s.recent
        new.assumptions = merged_assumptions(s.assumptions, made) if made else s.assumptions
        new.path = cons_push(s.path, items)
        new.chains = cons_push(s.chains, entered)
        new.prob = (num * fnum, den * fden)
        out.append((new, terminal))
    return out


def _set_keyed(s: Any, values: tuple[Any, ...]) -> None:
    """`s` takes the KEYED_FIELDS `values` (in that order; spelled out: this runs once per replayed branch)."""
    (s.proto, s.hook, s.local_origin, s.in_iface, s.out_iface, s.mark, s.ctmark, s.dnat, s.snat, s.masq, s.notrack,
     s.kube_masq, s.mark_drop, s.accept) = values


def stage_plan(ruleset: Ruleset, version: int, structures: dict[object, Structure],
               stages: tuple[tuple[str, str], ...]) -> StagePlan | None:
    """What the rules reachable from `stages` read (memo.py), or None when their walk cannot be shared.

    A rule with an exact destination host, or an exact protocol and destination port (what the index files
    it under, indexed chain or not), fails for every packet without them: what it reads, and what the
    chains it jumps to read, only counts for packets that have them."""
    if _writes_packets(ruleset, stages):
        return None
    reads: list[set[str]] = [set(), set(), set(), set()]
    nets: list[dict[str, set[tuple[int, int]]]] = [{}, {}, {}, {}]
    hosts: set[int] = set()
    ports: set[tuple[int, int]] = set()
    seen: set[tuple[str, str, int]] = set()
    todo = [(table, chain, ALWAYS) for table, chain in stages]
    plans: dict[int, KeyPlan] = {}
    alive: list[Structure] = []
    count = 0
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        table, chain, label = item
        found_chain = ruleset.chain(table, chain)
        if found_chain is None:
            continue
        count += len(found_chain.rules)
        if count > MAX_CLOSURE_RULES:
            return None
        found = ruleset.table(table)
        for rule in found_chain.rules:
            key, host = rule_key(rule, version, structures, plans, alive)
            here = label
            if key is not None:
                ports.add(key[:2])
                if key[2] is not None:
                    hosts.add(key[2])
                here |= PORT if key[2] is None else BOTH
            elif host is not None:
                hosts.add(host)
                here |= HOST
            tokens = fast_tokens(rule.text)
            structure = rule_structure(rule, tokens, structures)
            addresses = _address_nets(structure, tokens, version)
            if addresses is None:
                reads[here] |= structure_reads(structure)
            else:
                reads[here] |= structure_reads(_without_addresses(structure))
                for attr, found_nets in addresses:
                    nets[here].setdefault(attr, set()).update(found_nets)
            jump, name = rule_target(rule, found, BUILTIN_TARGETS)
            if jump is not None:
                todo.append((table, jump, here))
            elif name in PACKET_WRITERS:
                return None
    return StagePlan(reads, hosts, ports, nets)


def _writes_packets(ruleset: Ruleset, stages: tuple[tuple[str, str], ...]) -> bool:
    """Whether a rule reachable from `stages` rewrites the packet (then its walk is never shared), found by
    target names alone: the nat stages reach every Service's DNAT, and reading all of KUBE-SERVICES' rules
    first to find that out costs a tenth of a second each."""
    seen: set[tuple[str, str]] = set()
    todo = list(stages)
    while todo:
        table, chain = todo.pop()
        if (table, chain) in seen:
            continue
        seen.add((table, chain))
        found_chain = ruleset.chain(table, chain)
        if found_chain is None:
            continue
        found = ruleset.table(table)
        for rule in found_chain.rules:
            jump, name = rule_target(rule, found, BUILTIN_TARGETS)
            if jump is not None:
                if (table, jump) not in seen:
                    todo.append((table, jump))
            elif name in PACKET_WRITERS:
                return True
    return False


def _without_addresses(structure: Structure) -> Structure:
    """The structure minus its -s/-d options."""
    return (tuple((module, tuple(spec for spec in specs if spec[0] not in ("-s", "-d"))) if module == "" else
                  (module, specs) for module, specs in structure[0]), structure[1])


def _address_nets(structure: Structure, tokens: Sequence[str], version: int,
                  ) -> list[tuple[str, list[tuple[int, int]]]] | None:
    """The networks of a rule's -s/-d options as ("src"|"dst", [(network, mask), …]) (a test, negated or not,
    asks whether one of them contains the address); None when one cannot be read (it then reads the address)."""
    out: list[tuple[str, list[tuple[int, int]]]] = []
    for module, specs in structure[0]:
        if module != "":
            continue
        for name, _negated, idx in specs:
            if name not in ("-s", "-d"):
                continue
            if not idx:
                return None
            value = tokens[idx[0]]
            if value[:1] == '"':
                return None
            found = []
            for part in value.split(","):
                try:
                    net = parse_net(part, version)
                except TraceError:
                    return None
                if net is not None:
                    found.append(net)
            out.append(("src" if name == "-s" else "dst", found))
    return out


def rule_target(rule: Rule, table_chains: Any, builtin_targets: Any) -> tuple[str | None, str]:
    """(the chain a rule jumps or goes to, or None; its target name) as the walk reads them."""
    name = rule.target_name
    return chain_target(name, table_chains, builtin_targets), name


def chain_target(name: str | None, table_chains: Any, builtin_targets: Any) -> str | None:
    """The chain a rule whose target is `name` jumps or goes to (a chain of the table, not a built-in target), or
    None."""
    return name if name and name not in builtin_targets and name in table_chains else None
