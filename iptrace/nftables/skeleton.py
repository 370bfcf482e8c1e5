"""Sharing the walk of small chains written alike: kube-proxy's ~50,000 `endpoint-…` chains are two rules each,
`ip saddr EP jump mark-for-masquerade` and `meta l4proto tcp dnat to EP:PORT`, equal but for the endpoint's
address and port. Every trace of a Service enters ten of them; walking (and first compiling) each costs more
than the rest of the trace.

A chain's *skeleton* is its rules' items with the parameters taken out: the address of an `ip saddr ADDR` /
`ip daddr ADDR` equality test (evaluate.address_equals), and the address and port of a `dnat to ADDR[:PORT]`.
Every other item must be equal. Chains with one skeleton share their recorded walks. The key of a branch is
what each parameter test answers for it (with the chain's own addresses) and every branch field the items
other than those tests — of the chain and of every chain it jumps or goes to — read, together with the fields
the replay sets (marks, conntrack and NAT status, interfaces, hook): two branches with equal keys take the
same path through the closure, rule by rule, so a walk recorded on one member replays on every other, with
that member's own rules, Decisions and DNAT address and port. Only closures whose walk is a function of that
key are shared: no numgen/hash draw, no set update, no dynamic set, no NAT outside the chain itself or to
anything but a constant address; a walk that made an assumption (its text names a line) is not recorded.
tests/test_nft_walk_properties.py compares shared and unshared walks.

Which skeleton a chain has is read without building its rules' items when the loader read them through shapes
(shapes.py): rules of one shape are built by one function from their values, so chains whose rules have the
same builders and the same values but for parameters (which the shape's template says where they are) have
one skeleton. The first chain of each such key still gets its skeleton from its items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from iptrace.dataplane import Decision
from iptrace.nftables.evaluate import address_equals
from iptrace.nftables.model import Match, Nat, Payload, SetUpdate, VerdictMap
from iptrace.nftables.normalise import make_nat, make_reject, make_statement
from iptrace.nftables.reads import forks, reads
from iptrace.nftables.rules import FORK, NAT, UPDATE, CompiledRule
from iptrace.nftables.shapes import Call, Slot
from iptrace.nftables.state import Segment, State, cons_list

MAX_RULES = 8  # chains with more rules are not worth a skeleton (kube-proxy's endpoint chains have 2 or 3)
MEMO_SIZE = 4096
# Fields a replay sets from the recording (so they are part of the key: the walk may have left them as found;
# splits.py keys alike).
RESTORED = ("mark", "ct_mark", "notrack", "snat", "masq", "in_iface", "out_iface", "hook", "version", "proto")
NOT_RAW = frozenset({"dnat_by", "updates"})


class RuleRef:
    """A rule of a chain whose walk was replayed, as path entries and steps read it (rule, index, Decision)
    without compiling it."""

    __slots__ = ("decision", "index", "rule")

    def __init__(self, rule: Any, index: int, decision: Decision) -> None:
        self.rule = rule
        self.index = index
        self.decision = decision


class Skeleton:
    """One skeleton's key function and recorded walks (keyed by (parameter answers, fields))."""

    __slots__ = ("key", "memo", "nested")

    def __init__(self, nested: frozenset[Any], fields: tuple[str, ...]) -> None:
        self.nested = nested  # the closure's other chains: one on the caller's stack makes a jump loop
        # key(s, tests): the fields, whether the branch is DNATed, then what the member's parameter tests answer
        # (one test: its answer; every member of a skeleton has as many). Generated code, one flat tuple: it
        # runs for every endpoint of every trace of a Service.
        values = ", ".join([f"s.{f}" for f in fields])
        source = (f"def key(s, tests):\n"
                  f"    if len(tests) == 1:\n"
                  f"        field, addr = tests[0]\n"
                  f"        return ({values}, s.dnat_by is None, (s.src if field == 'src' else s.dst) == addr)\n"
                  f"    return ({values}, s.dnat_by is None, tuple([getattr(s, f) == a for f, a in tests]))\n")
        namespace: dict[str, Any] = {}
        exec(source, namespace)
        self.key: Callable[[State, tuple[tuple[str, str], ...]], Any] = namespace["key"]
        self.memo: dict[Any, Any] = {}


def _signature(rules: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The skeleton of a chain's rules (items with parameters replaced by their kind), or None when a rule has
    something a replay could not restore."""
    out: list[Any] = []
    for rule in rules:
        items = []
        for item in rule.items:
            t = type(item)
            if t is Match and address_equals(item) is not None:
                items.append(("addr", item.left))
            elif t is Nat and item.kind == "dnat" and type(item.addr) is str and (
                    item.port is None or type(item.port) is int):
                items.append(("dnat", item.family, item.port is None, item.flags))
            elif t is SetUpdate:
                return None
            else:
                items.append(item)
        out.append((tuple(items), rule.comment))
    return tuple(out)


Dnats = tuple[tuple[str, int | None] | None, ...]  # by rule index: (address, port) of its DNAT, or None


def _dnat_parameter(item: Nat) -> bool:
    """A DNAT to one address (and maybe a port): a parameter of its chain's skeleton, replayed with the
    member's own values. Any other DNAT of a chain (`dnat to :8001`, to a map) leaves it unshared."""
    return item.kind == "dnat" and type(item.addr) is str and (item.port is None or type(item.port) is int)


def parameters(rules: tuple[Any, ...]) -> tuple[tuple[tuple[str, str], ...], Dnats]:
    """A chain's own values of its skeleton's parameters: the address tests (field, address) in rule and item
    order, and each rule's first DNAT (the one that acts: a NAT statement ends the rule) by rule index (a tuple,
    not a dict: kept for each of ~50,000 endpoint chains)."""
    tests: list[tuple[str, str]] = []
    dnats: dict[int, tuple[str, int | None]] = {}
    for i, rule in enumerate(rules):
        for item in rule.items:
            t = type(item)
            if t is Match and address_equals(item) is not None:
                tests.append(("src" if item.left.field == "saddr" else "dst", item.right))
            elif t is Nat and _dnat_parameter(item):
                dnats.setdefault(i, (item.addr, item.port))
    return tuple(tests), tuple([dnats.get(i) for i in range(len(rules))])


class Skeletons:
    """The skeletons of one tracer's chains. `closure_fields(code)` is the walker's: the fields a chain's
    closure reads besides the parameter tests, or None when the closure cannot be shared."""

    def __init__(self, closure_fields: Callable[[Any, set[int]], tuple[set[str], frozenset[Any]] | None]) -> None:
        self._closure_fields = closure_fields
        self._by_signature: dict[Any, Skeleton | None] = {}
        # (table, quick key) -> the skeleton of chains with that key (None: none; _SLOW: read their items)
        self._by_quick: dict[Any, Any] = {}

    def of(self, code: Any) -> tuple[Skeleton, tuple[tuple[str, str], ...], Dnats] | None:
        """(skeleton, tests, dnats) of chain `code`, or None. The walker keeps the answer (ChainCode.shaped):
        asked once per chain."""
        found = None
        rules = code.chain.rules
        if 0 < len(rules) <= MAX_RULES and code.chain.base is None:
            quick = _quick(rules)
            sk: Any = _SLOW
            if quick is _DRAWS:
                sk = None
            elif quick is not None:
                key = (code.table.label, quick[0])
                try:
                    sk = self._by_quick.get(key, False)
                except TypeError:
                    sk = _SLOW
                if sk is False:
                    # The first chain of these shapes and values: its skeleton read from its items, and its
                    # parameters both ways (they agree; should a shape ever say otherwise, its chains are read
                    # from their items).
                    sk = self._by_items(code)
                    if sk is not None and parameters(rules) != quick[1:]:
                        sk = _SLOW
                    self._by_quick[key] = sk
            if sk is _SLOW:
                sk = self._by_items(code)
                if sk is not None:
                    found = (sk, *parameters(rules))
            elif sk is not None:
                found = (sk, *quick[1:])  # type: ignore[index]
        return found

    def _by_items(self, code: Any) -> Skeleton | None:
        signature = _signature(code.chain.rules)
        # Only chains with parameters: a chain without is its skeleton's only member (memo.py's plans serve).
        if signature is None or not any(type(i) is tuple for items, _ in signature for i in items):
            return None
        key = (code.table.label, signature)
        sk = self._by_signature.get(key, False)
        if sk is False:
            sk = self._by_signature[key] = self._make(code)
        return sk  # type: ignore[return-value]

    def _make(self, code: Any) -> Skeleton | None:
        param_items: set[int] = set()
        for rule in code.chain.rules:
            for item in rule.items:
                if type(item) is Match and address_equals(item) is not None:
                    param_items.add(id(item))
                elif type(item) is Nat and item.kind == "dnat" and not _dnat_parameter(item):
                    return None  # (replay sets the destination from the chain's parameters: it has none here)
        found = self._closure_fields(code, param_items)
        if found is None:
            return None
        fields, nested = found
        return Skeleton(nested, tuple(sorted((fields | set(RESTORED)) - NOT_RAW)))


# -- a chain's skeleton read from its rules' shapes (loader.py) without building their items ---------------

_SLOW: Any = object()
_DRAWS: Any = object()  # a chain with a numgen/hash verdict map (kube-proxy's service chains): never a skeleton


def _template_plan(build: Any) -> tuple[tuple[tuple[str, int, str], ...], tuple[int, ...]] | None:
    """What the rules of one shape (shapes.compile_template's `build` and its template) have as parameters:
    ((kind, position in the rule's `_lazy`, field), …) in item order, and the positions of the other values;
    None when the template cannot say (a set update, a parameter that is no value, a value used twice)."""
    template = getattr(build, "template", None)
    if template is None:
        return None
    items, comment, where = template
    if any(type(item) is VerdictMap and forks(item) for item in items):
        return _DRAWS  # (its rule compiles to a draw: closure_fields would say no skeleton)
    counts: dict[tuple[int, int], int] = {}
    _count_slots((items, comment), counts)
    params: list[tuple[str, int, str]] = []
    for item in items:
        t = type(item)
        if t is Call:
            if item.fn is make_nat:
                kind, _family, target, _flags = item.args
                if kind != "dnat":
                    continue
                if type(target) is Slot:
                    key = (target.index, id(target.fn))
                    if counts[key] != 1:
                        return None
                    params.append(("dnat", where[key], ""))
                elif type(target) is not tuple or len(target) != 2 or type(target[0]) in (str, Slot):
                    return None
            elif item.fn is not make_reject and item.fn is not make_statement:
                return None
        elif t is SetUpdate or t is Nat:
            return None  # (a Nat without values: its constant target would be a parameter)
        elif t is Match:
            left, right = item.left, item.right
            if type(left) is Payload and item.op == "==" and left.protocol in ("ip", "ip6") and \
                    left.field in ("saddr", "daddr"):
                if type(right) is Slot:
                    key = (right.index, id(right.fn))
                    if counts[key] != 1:
                        return None
                    params.append(("addr", where[key], "src" if left.field == "saddr" else "dst"))
                elif type(right) is str:
                    return None
    taken = {k for _, k, _ in params}
    return tuple(params), tuple(sorted(k for k in set(where.values()) if k not in taken))


def _count_slots(node: Any, counts: dict[tuple[int, int], int]) -> None:
    if type(node) is Slot:
        key = (node.index, id(node.fn))
        counts[key] = counts.get(key, 0) + 1
    elif type(node) is Call:
        _count_slots(node.args, counts)
    elif isinstance(node, tuple):
        for x in node:
            _count_slots(x, counts)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            _count_slots(getattr(node, f.name), counts)


def _quick(rules: tuple[Any, ...]) -> tuple[Any, tuple[tuple[str, str], ...], Dnats] | None:
    """(key, tests, dnats) of a chain whose rules were all read through shapes: chains with equal keys have one
    skeleton (equal builders and equal values but for parameters, which the key holds by kind); `tests` and
    `dnats` as `parameters` reads them from the items. None for other chains."""
    keys = []
    tests: list[tuple[str, str]] = []
    dnats: dict[int, tuple[str, int | None]] = {}
    for i, rule in enumerate(rules):
        lazy = rule._lazy
        if lazy is None:
            return None
        build = lazy[0]
        try:
            plan = build.skeleton_plan
        except AttributeError:
            plan = build.skeleton_plan = _template_plan(build)
        if plan is None or plan is _DRAWS:
            return plan  # type: ignore[return-value]
        params, others = plan
        kinds: list[Any] = []
        for kind, k, field in params:
            v = lazy[k]
            if kind == "addr":
                if type(v) is str:
                    tests.append((field, v))
                    kinds.append(True)
                    continue
            elif type(v) is tuple and len(v) == 2 and type(v[0]) is str and (v[1] is None or type(v[1]) is int):
                if i not in dnats:
                    dnats[i] = v
                kinds.append(v[1] is None)
                continue
            kinds.append((v,))  # not a parameter here: the item is as the value makes it
        keys.append((build, tuple([lazy[k] for k in others]) if others else (), tuple(kinds)))
    # (a value that cannot be hashed: Skeletons.of reads the items)
    return tuple(keys), tuple(tests), tuple([dnats.get(i) for i in range(len(rules))])


def rule_reads(c: CompiledRule, parameter: Callable[[Any], bool]) -> set[str] | None:
    """The fields rule `c`'s items read, its `parameter` items left out; None when an item's reads are unknown or
    the rule reads a dynamic set (its walk would not be a function of the fields)."""
    fields: set[str] = set()
    for item in c.rule.items:
        if parameter(item):
            continue
        found = reads(item)
        if found is None:
            return None
        fields |= found
    if any(getattr(t, "dynamic", False) for t in c.assumed):
        return None
    return fields


def closure_fields(code: Any, param_items: set[int], compiled: Callable[[Any, int], CompiledRule],
                   targets: Callable[[Any, CompiledRule], list[Any]]) -> tuple[set[str], frozenset[Any]] | None:
    """The fields the closure of `code` reads (items in `param_items` left out) and its other chains, or None
    when its walk is not a function of them and the parameter answers (draws, set updates, dynamic sets, NAT
    other than the chain's own constant DNAT)."""
    fields: set[str] = set()
    seen: set[Any] = set()
    todo = [code]
    count = 0
    while todo:
        current = todo.pop()
        if current.key in seen:
            continue
        seen.add(current.key)
        count += len(current.chain.rules)
        if count > 64:
            return None
        for i in range(len(current.chain.rules)):
            c = current.compiled[i] or compiled(current, i)
            found = rule_reads(c, lambda item: id(item) in param_items)
            if found is None:
                return None
            fields |= found
            for op in c.ops:
                if op[0] in (FORK, UPDATE):
                    return None
                if op[0] == NAT and op[1] not in ("snat", "masquerade"):
                    item_ok = current is code and op[1] == "dnat" and op[5] is None and not op[6]
                    if not item_ok:
                        return None
            todo.extend(targets(current, c))
    return fields, frozenset(seen - {code.key})


def record(results: list[tuple[State, Any]], before: tuple[Any, Any, str, int], code: Any,
           ) -> list[tuple[Any, ...]] | None:
    """A walk of member `code` from a branch with path, chains and assumptions emptied and share 1 whose
    (accept, dnat_by, dst, dport) were `before` (the walk may have gone on with that very branch), with what is
    the chain's own (its rules, by index) told from what is not; None when it cannot be replayed on another
    member (an assumption made, a Decision of the chain's own that is not a rule's, a rewrite other than its
    DNAT)."""
    accept, dnat_by, dst, dport = before
    own = {id(c.decision): c.index for c in code.compiled if c is not None}
    out = []
    for s, term in results:
        if s.assumptions or s.accept is not accept or s.num != 1 or s.den != 1:
            return None
        path = tuple([(None, e[1].index, e[2], e[3]) if e[0] is code else e for e in cons_list(s.path)])
        chains = tuple([None if key == code.key else key for key in cons_list(s.chains)])
        nat = -1
        if s.dnat_by is not dnat_by:
            nat = own.get(id(s.dnat_by), -1)
            if nat < 0:
                return None
        elif (s.dst, s.dport) != (dst, dport):
            return None
        at = -1
        if term is not None and term[1] is not None:
            at = own.get(id(term[1]), -1)
            if at < 0 and term[1].chain == code.name:
                return None
        out.append((term, at, path, chains, s.mark, s.ct_mark, s.notrack, s.snat, s.masq, s.hook, s.in_iface,
                    s.out_iface, nat))
    return out


def replay(recorded: list[tuple[Any, ...]], s: State, code: Any, dnats: Dnats, ref: Callable[[Any, int], Any],
           ) -> list[tuple[State, Any]]:
    """The recorded walk on branch `s` entering member `code` (`dnats`: its DNAT parameters in order; `ref`:
    the walker's (chain, index) → the rule as path entries hold it)."""
    if len(recorded) == 1:  # (an endpoint chain's walk does not split: `s` itself)
        return [_replay_one(recorded[0], s, code, dnats, ref)]
    last = len(recorded) - 1
    return [_replay_one(walk, s if i == last else s.copy(), code, dnats, ref) for i, walk in enumerate(recorded)]


def _replay_one(recorded: tuple[Any, ...], s: State, code: Any, dnats: Dnats, ref: Callable[[Any, int], Any],
                ) -> tuple[State, Any]:
    """One recorded branch on `s` itself (spelled out: it runs for every endpoint of every trace)."""
    (term, at, path, chains, s.mark, s.ct_mark, s.notrack, s.snat, s.masq, s.hook, s.in_iface, s.out_iface,
     nat) = recorded
    if path:
        if len(path) == 1:
            e = path[0]
            s.path = ((code, ref(code, e[1]), e[2], e[3]) if e[0] is None else e, s.path)
        else:
            s.path = (Segment([(code, ref(code, e[1]), e[2], e[3]) if e[0] is None else e for e in path]), s.path)
    if chains:
        if len(chains) == 1:
            s.chains = (code.key if chains[0] is None else chains[0], s.chains)
        else:
            s.chains = (Segment([code.key if k is None else k for k in chains]), s.chains)
    if nat >= 0:
        addr, port = dnats[nat]  # type: ignore[misc]
        s.dst = addr
        if port is not None:
            s.dport = port
        decision = s.dnat_by = ref(code, nat).decision
        if at == nat:
            return s, (term[0], decision)
    if at >= 0:
        term = (term[0], ref(code, at).decision)
    return s, term
