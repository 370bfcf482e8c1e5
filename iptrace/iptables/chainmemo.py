"""Sharing the walk of a user chain between branches that enter it alike (memo.py does it for whole stages).

A Service's load-balancing chain (KUBE-SVC-…, with its KUBE-SEP-… chains) is entered once per way in and
kind of client; the Service view asks for every one of them. The chain's walk is recorded once per *key* as
deltas (rules appended to the path, chains entered, the probability factor, assumptions made, the fields the
walk may write, and for each branch whether it rewrote the destination) and replayed onto every later
branch with the same key.

The key is exact. It holds every branch field a rule of the chain's closure (the chain and every chain it
jumps or goes to) can read or write; of the source and destination addresses, when only plain `-s`/`-d`
networks read them, it holds which of those networks contain the address (kube-proxy's closures test a pod
CIDR and a few endpoint addresses: a pod, the node and an outside client are then told apart by two bits,
not by their addresses); of the destination port, when only `--dport N` options read it, which of those N it
equals (a Service's ClusterIP port and its NodePort then share recordings). Fields outside the key are
neither read nor written on the way, so a replayed branch keeps its own values; fields the walk writes are in
the key, so the recorded values are right.
A closure with a module or target whose reads are not listed here is not shared (walked every time), nor one
with `-m recent` rules (session affinity: its key would hold the addresses themselves; chainwalk._chain_plan).

Closures of one *shape* share their recorded walks: kube-proxy writes every Service port with the same number
of endpoints as the same rules but for addresses and chain names. A shape lists, rule by rule, what decides
the rule besides its addresses (its matches as compiled for its option values — shared by every rule with
those values —, the negation of its -s/-d, its target, a jump as the position of the chain it enters); the
key then holds which -s/-d network of each position contains the address, and a walk recorded by position
(rule k of the closure, chain j) replays with the rules, chains, Decisions and DNAT addresses of the closure
entered. Walks that made assumptions (their texts name lines) stay with their own closure.
tests/test_trace_properties.py compares shared and unshared walks (also sweeping every Service like the view).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from iptrace.dataplane import Decision
from iptrace.iptables.matchers import Structure, fast_tokens
from iptrace.iptables.memo import exact_dport_tokens, structure_reads
from iptrace.iptables.state import cons_prefix, cons_push, merged_assumptions

# Branch fields a closure may read or write besides the packet's addresses and ports, per match module.
_MODULE_FIELDS: dict[str, frozenset[str]] = {
    **{m: frozenset() for m in ("comment", "nfacct", "statistic", "tcp", "udp", "sctp", "udplite", "dccp",
                                "multiport", "icmp", "icmp6", "icmpv6", "ipv6-icmp", "limit", "length", "tos",
                                "dscp", "quota", "hashlimit", "connlimit", "rpfilter")},
    **{m: frozenset({"hook", "local_origin"}) for m in ("ttl", "hl")},  # (one less once forwarded)
    "mark": frozenset({"mark"}),
    "connmark": frozenset({"ctmark", "notrack"}),
    "conntrack": frozenset({"dnat", "snat", "notrack"}),
    "state": frozenset({"dnat", "snat", "notrack"}),
    "recent": frozenset({"recent"}),
    "addrtype": frozenset({"hook", "local_origin", "in_iface", "out_iface"}),
}
_INTERFACES = frozenset({"in_iface", "out_iface", "hook", "local_origin"})
# Fields each target writes (and, for the read-modify-write ones, reads).
_TARGET_FIELDS: dict[str, frozenset[str]] = {
    "MARK": frozenset({"mark", "ctmark"}), "CONNMARK": frozenset({"mark", "ctmark", "notrack"}),
    "SNAT": frozenset({"snat", "masq"}), "MASQUERADE": frozenset({"snat", "masq"}),
    "NOTRACK": frozenset({"notrack"}), "CT": frozenset({"notrack"}),
    "DNAT": frozenset({"dnat"}), "REDIRECT": frozenset({"dnat", "local_origin"}),
    "NETMAP": frozenset({"dnat", "snat", "masq", "hook"}),
    "KUBE-MARK-MASQ": frozenset({"kube_masq"}), "KUBE-MARK-DROP": frozenset({"mark_drop"}),
}
_NO_FIELDS: frozenset[str] = frozenset()
# Very large closures (KUBE-SERVICES) are never shared: their key would be the whole packet.
MAX_CLOSURE_RULES = 2_000
# Recorded keys kept per chain before the memo is cleared (a few per kind of client in practice).
MEMO_SIZE = 256


class Access:
    """What one rule's matches and target can read or write: `fields` (branch fields), `raw` (optional packet
    fields read other than through the rule's own first -s/-d network), `known` (every module is listed),
    `dport_tokens` (where its `--dport N` values are among its tokens when they are how it reads the
    destination port: memo.exact_dport_tokens)."""

    __slots__ = ("dport_tokens", "fields", "known", "raw")

    def __init__(self, fields: frozenset[str], raw: frozenset[str], known: bool,
                 dport_tokens: tuple[int, ...] | None = None) -> None:
        self.fields = fields
        self.raw = raw
        self.known = known
        self.dport_tokens = dport_tokens


def access_kind(target: str) -> str:
    """What a rule's Access depends on of its target (a chain's name for a jump): the target itself for a
    target proper and for kube-proxy's marking chains, "" for a jump to any other chain (of jump targets only
    the marking chains write anything by being jumped to)."""
    return target if target in _TARGET_FIELDS or (target.isupper() and "-" not in target) else ""


def rule_access(structure: Structure, target: str, extra_addresses: bool, cache: dict[tuple[int, str], Access],
                ) -> Access:
    """The Access of a rule of `structure` with target `target` (a chain's name for a jump). `extra_addresses`:
    the rule has -s/-d tests besides its first of each (they read the address itself). `cache` is keyed by the
    id of a structure the caller keeps alive (its tracer's structure cache)."""
    kind = access_kind(target)
    key = (id(structure), kind)
    found = cache.get(key)
    if found is not None and not extra_addresses:
        return found
    fields: set[str] = set(_TARGET_FIELDS.get(kind, _NO_FIELDS))
    known = True
    rest = []
    for module, specs in structure[0]:
        if module == "":
            for name, _negated, _idx in specs:
                if name in ("-i", "-o", "--in-interface", "--out-interface"):
                    fields |= _INTERFACES
            rest.append((module, tuple(s for s in specs if s[0] not in ("-s", "-d", "--source", "--destination"))))
            continue
        module_fields = _MODULE_FIELDS.get(module)
        if module_fields is None:
            known = False
        else:
            fields |= module_fields
        rest.append((module, specs))
    raw = set(structure_reads((tuple(rest), structure[1])))
    # (A DNAT's own matches may read the destination it then rewrites: what they read stays in the key.)
    if extra_addresses:
        raw |= {"src", "dst"}
    dport_tokens = exact_dport_tokens((tuple(rest), structure[1])) if "dport" in raw else None
    access = Access(frozenset(fields), frozenset(raw), known, dport_tokens)
    if not extra_addresses:
        cache[key] = access
    return access


class ChainPlan:
    """How to key the walk of one chain's closure, and the walks recorded so far.

    `compiled` lists the closure's rules by position (its chains in the order the walk of the plan met them,
    each chain's rules in order) and `chains` its chains. `memo` holds walks recorded by position (rule k, chain
    j of the closure): it is shared by every closure of the same *shape* (see `shape` in chainwalk.py:
    kube-proxy's Service chains differ only in addresses and names), so a walk recorded for one Service
    replays on the next one with that shape. `own` holds the walks that cannot be told by position (they made
    assumptions, which name rules' lines), for this closure only."""

    __slots__ = ("_decisions", "_positions", "chains", "compiled", "key", "memo", "own")

    def __init__(self, fields: Iterable[str], raw: Iterable[str], src_nets: Sequence[tuple[int, int]],
                 dst_nets: Sequence[tuple[int, int]], compiled: Sequence[Any] = (),
                 chains: Sequence[tuple[str, str]] = (), memo: dict[Any, Any] | None = None,
                 dports: Sequence[int] = ()) -> None:
        self.own: dict[Any, tuple[Recorded, ...]] = {}
        self.memo: dict[Any, tuple[Positional, ...]] | None = memo
        self.compiled = tuple(compiled)
        self.chains = tuple(chains)
        self._positions: dict[int, int] | None = None
        self._decisions: dict[int, int] | None = None
        # key(s): the key of branch `s` (an attribute, not a method: one call on every entry into the chain)
        self.key: Callable[[Any], Any] = _key_function(sorted(set(fields)), sorted(set(raw)), src_nets, dst_nets,
                                                       tuple(sorted(set(dports))))

    def positions(self) -> dict[int, int]:
        """id(compiled rule) -> its position."""
        if self._positions is None:
            self._positions = {id(c): k for k, c in enumerate(self.compiled)}
        return self._positions

    def decisions(self) -> dict[int, int]:
        """id(Decision of a rule) -> the rule's position (rules whose Decision was built so far)."""
        found = {id(c._decision): k for k, c in enumerate(self.compiled) if c._decision is not None}
        self._decisions = found
        return found


# A key's layout -> (its number, the function making a key function of that layout from its ints).
_LAYOUTS: dict[tuple[Any, ...], tuple[int, Callable[..., Callable[[Any], Any]]]] = {}


def _key_function(fields: list[str], raw: list[str], src_nets: Sequence[tuple[int, int]],
                  dst_nets: Sequence[tuple[int, int]], dports: tuple[int, ...] = ()) -> Callable[[Any], Any]:
    """The key of a closure's walk as one flat tuple: its layout's number, the fields and raw packet fields read,
    which of `dports` the destination port equals (the closure compares the port with these only, `--dport N`:
    which it equals tells its walk as well as the port itself, and a NodePort and a Service port then share a
    recording), and for each address not read raw which of its networks (mask, network), in order, contain
    it. Generated code (this runs on every entry into a shared chain), once per layout; the names are State's
    own slots (this module's tables)."""
    names = (*fields, *raw)
    src = () if "src" in raw else tuple(src_nets)
    dst = () if "dst" in raw else tuple(dst_nets)
    layout = (names, len(dports), len(src), len(dst))
    found = _LAYOUTS.get(layout)
    if found is None:
        number = len(_LAYOUTS)
        parts = [str(number), *(f"s.{name}" for name in names), *(f"s.dport == p{i}" for i in range(len(dports)))]
        parts += [f"s.src & sm{i} == sn{i}" for i in range(len(src))]
        parts += [f"s.dst & dm{i} == dn{i}" for i in range(len(dst))]
        params = [*(f"p{i}" for i in range(len(dports))), *(f"sm{i}, sn{i}" for i in range(len(src))),
                  *(f"dm{i}, dn{i}" for i in range(len(dst)))]
        namespace: dict[str, Any] = {}
        exec(f"def make({', '.join(params)}):\n"
             f"    def key(s):\n"
             f"        return ({', '.join(parts)},)\n"
             f"    return key\n", namespace)
        found = _LAYOUTS[layout] = (number, namespace["make"])
    return found[1](*dports, *(x for pair in src for x in pair), *(x for pair in dst for x in pair))


def exact_dports(c: Any, into: list[int]) -> list[int] | None:
    """`into` plus the ports a compiled rule compares the destination port with, when `--dport N` options are
    how it reads it (Access.dport_tokens); None when it reads the port otherwise (a range, a list, …)."""
    spots = c.access.dport_tokens
    if spots is None:
        return None
    tokens = fast_tokens(c.rule.text)
    for i in spots:
        value = tokens[i]
        if not value.isdigit():
            return None
        into.append(int(value))
    return into


class _At:
    """A recorded field value that is the Decision of the closure's rule at `position`."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


# (written fields' values (an _At for a rule's Decision), path positions oldest first, chain positions entered
# oldest first, probability factor (num, den), terminal verdict or None, its rule's position, whether the branch
# was DNATed by that rule, whether the values hold no _At)
Positional = tuple[tuple[Any, ...], tuple[int, ...], tuple[int, ...], int, int, Any, int, bool, bool]


def record_positional(results: Sequence[tuple[Any, Any]], start: Any, plan: ChainPlan, written: tuple[str, ...],
                      dnat: int) -> tuple[Positional, ...] | None:
    """The branches of a walk from `start` (path, chains and assumptions empty, probability 1) by position in
    the closure, or None when one cannot be told by position (an assumption made; a rewrite other than a
    plain DNAT of the closure's own; a Decision from elsewhere). `dnat`: the compiled action code of DNAT."""
    positions = plan.positions()
    chain_positions = {key: j for j, key in enumerate(plan.chains)}
    decisions: dict[int, int] | None = None
    out = []
    for s, terminal in results:
        if s.assumptions:
            return None
        path = cons_prefix(s.path) or ()
        chains = cons_prefix(s.chains) or ()
        try:
            items = tuple([positions[id(c)] for c in path])
            entered = tuple([chain_positions[key] for key in chains])
        except KeyError:
            return None
        if decisions is None:
            decisions = plan.decisions()
        values = []
        for name in written:
            value = getattr(s, name)
            if isinstance(value, Decision) and value is not getattr(start, name):
                at = decisions.get(id(value))
                if at is None:
                    return None
                value = _At(at)
            values.append(value)
        verdict, at = None, -1
        if terminal is not None:
            verdict = terminal[0]
            found = decisions.get(id(terminal[1]))
            if found is None:
                return None
            at = found
        wrote = (s.dst, s.dport, s.dnat, s.dnat_by) != (start.dst, start.dport, start.dnat, start.dnat_by)
        if wrote:
            c = plan.compiled[at] if at >= 0 else None
            if c is None or c.action != dnat or c.note or s.dnat_by is not c._decision or not s.dnat:
                return None
            addr, port = c.arg
            if s.dst != (start.dst if addr is None else addr) or s.dport != (start.dport if port is None else port):
                return None
        plain = not any(type(v) is _At for v in values)
        out.append((tuple(values), items, entered, s.prob[0], s.prob[1], verdict, at, wrote, plain))
    return tuple(out)


def replay_positional(recorded: tuple[Positional, ...], s: Any, written: tuple[str, ...], plan: ChainPlan,
                      ) -> list[tuple[Any, Any]]:
    """The recorded branches on branch `s`, with the rules, chains and Decisions of `plan`'s closure. The last
    branch is `s` itself (the caller hands it over)."""
    out = []
    num, den = s.prob
    path0, chains0 = s.path, s.chains
    compiled = plan.compiled
    chains = plan.chains
    last = len(recorded) - 1
    set_written = _setter(written)
    for k, (values, items, entered, fnum, fden, verdict, at, wrote, plain) in enumerate(recorded):
        new = s if k == last else s.copy()
        set_written(new, values if plain else tuple([compiled[v.position].decision if type(v) is _At else v
                                                     for v in values]))
        if at >= 0:
            c = compiled[at]
            decision = c._decision  # (Compiled.decision, without its call once built)
            if decision is None:
                decision = c.decision
            if wrote:
                new.rewrite_destination(c.arg, decision)
        path = path0
        for i in items:
            path = (compiled[i], path)
        new.path = path
        cell = chains0
        for j in entered:
            cell = (chains[j], cell)
        new.chains = cell
        if fnum != fden:
            new.prob = (num * fnum, den * fden)
        out.append((new, None if verdict is None else (verdict, decision)))
    return out


_SETTERS: dict[tuple[str, ...], Callable[[Any, tuple[Any, ...]], None]] = {}


def _setter(written: tuple[str, ...]) -> Callable[[Any, tuple[Any, ...]], None]:
    """`f(s, values)` setting the fields `written` of `s` to `values` in one assignment: a replay sets them on
    every branch of every trace (the names are State's own slots, from this module's tables)."""
    found = _SETTERS.get(written)
    if found is None:
        if written:
            namespace: dict[str, Any] = {}
            exec(f"def set_written(s, values):\n    {', '.join(f's.{n}' for n in written)}, = values\n", namespace)
            found = namespace["set_written"]
        else:
            found = _set_nothing
        _SETTERS[written] = found
    return found


def _set_nothing(s: Any, values: tuple[Any, ...]) -> None:
    return None


# (final state, path items oldest first, chains entered oldest first, probability factor (num, den),
# assumptions made, terminal, whether the branch rewrote its destination)
Recorded = tuple[Any, tuple[Any, ...], tuple[Any, ...], int, int, tuple[str, ...], Any, bool]


def record(results: Iterable[tuple[Any, Any]], start: Any) -> tuple[Recorded, ...]:
    """The branches of a walk that started from `start` (with path, chains and assumptions empty and
    probability 1) as deltas."""
    before = (start.dst, start.dport, start.dnat, start.dnat_by)
    out = []
    for s, terminal in results:
        wrote = (s.dst, s.dport, s.dnat, s.dnat_by) != before
        path, chains = cons_prefix(s.path) or (), cons_prefix(s.chains) or ()
        out.append((s, path, chains, s.prob[0], s.prob[1], s.assumptions, terminal, wrote))
    return tuple(out)


def replay(recorded: tuple[Recorded, ...], s: Any, written: tuple[str, ...]) -> list[tuple[Any, Any]]:
    """The recorded branches on branch `s`: its own fields, the recorded written ones and deltas."""
    out = []
    num, den = s.prob
    single = len(recorded) == 1
    for template, items, entered, fnum, fden, made, terminal, wrote in recorded:
        new = s if single else s.copy()
        for name in written:
            setattr(new, name, getattr(template, name))
        if wrote:
            new.dst, new.dport, new.dnat, new.dnat_by = template.dst, template.dport, template.dnat, template.dnat_by
        if made:
            new.assumptions = merged_assumptions(new.assumptions, made)
        new.path = cons_push(s.path, items)
        new.chains = cons_push(s.chains, entered)
        if fnum != fden:
            new.prob = (num * fnum, den * fden)
        out.append((new, terminal))
    return out
