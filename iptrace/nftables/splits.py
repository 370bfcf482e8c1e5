"""Sharing the walk of load-balancing chains written alike: kube-proxy's ~5,000 `service-…` (and `local-…`) chains
are each an address test or two and one `numgen random mod N vmap { 0 : goto endpoint-A, 1 : goto endpoint-B, … }`,
equal but for the Service's address and the endpoint chains they go to — and those are members of one skeleton
(skeleton.py). Every way in and kind of client of every Service enters its chain: the walk forks into N branches,
each entering its endpoint chain, N times the per-endpoint work of every trace.

A *split shape* is such a chain's rules with its parameters taken out: the address of each `ip saddr ADDR` /
`ip daddr ADDR` equality test (evaluate.address_equals), and the targets of its draw's anonymous verdict map,
by position — each target's skeleton (the same Skeleton object) stays in the shape. Chains of one shape share
their recorded walks. The key of a branch is every field the closure reads besides those tests (the chain's
other items, the chains they jump to, the endpoint chains' closures besides their own parameter tests), the
fields a replay sets, whether the branch is DNATed, and what each parameter test answers with the member's own
addresses (the chain's, then each endpoint chain's in draw order): two branches with equal keys take the same
path through the two closures, rule by rule and branch by branch, so a walk recorded on one member replays on
every other with its own rules, chains, Decisions and DNAT addresses and ports. Only closures whose walk is a
function of that key are shared: the one draw is `numgen random` over goto/jump verdicts to distinct chains
that each have a skeleton; no other draw, no set update, no dynamic set, no NAT but the endpoint chains' own
(skeleton.py's rules); a walk that made an assumption is not recorded. tests/test_nft_splits.py compares shared
and unshared walks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iptrace.nftables.evaluate import address_equals
from iptrace.nftables.model import AnonSet, Match, Nat, Numgen, SetUpdate, Verdict, VerdictMap
from iptrace.nftables.normalise import make_nat
from iptrace.nftables.reads import forks
from iptrace.nftables.rules import FORK, NAT, UPDATE, VMAP
from iptrace.nftables.shapes import Call, Slot
from iptrace.nftables.skeleton import NOT_RAW, RESTORED, closure_fields, rule_reads
from iptrace.nftables.state import Bound, State, cons_list

MAX_RULES = 8  # (kube-proxy's service chains have 2 rules, its local chains 1)
MEMO_SIZE = 4096
_WORDS = ("numgen",)


def _may_draw(rule: Any) -> bool:
    """Whether a rule may hold a `numgen` draw (`_signature` decides; this only spares it the rest): its text says
    `numgen`. One a shape's builder made is read from its template when that tells (`_template_draws`), and its
    text is not read: the text of a listing's rule is a line found in the whole listing (source.SourceText),
    which is otherwise searched only as far as its sets' elements."""
    lazy = rule._lazy
    if lazy is not None:
        build = lazy[0]
        try:
            may = build.may_draw
        except AttributeError:
            template = getattr(build, "template", None)
            may = build.may_draw = None if template is None else _template_draws(template[0])
        if may is not None:
            return may  # type: ignore[no-any-return]
    return "numgen" in rule.text


def _template_draws(items: tuple[Any, ...]) -> bool | None:
    """Whether the rules a template makes have a verdict map keyed by numgen (what `_signature` looks for), or
    None when a value could make one: an item, or a verdict map's key, that a value's function or a Call other
    than make_nat (which makes a Nat) makes."""
    found = False
    for item in items:
        t = type(item)
        if t is Slot or (t is Call and item.fn is not make_nat):
            return None
        if t is VerdictMap:
            if type(item.key) is Numgen:
                found = True
            elif type(item.key) in (Slot, Call):
                return None
    return found


class SplitShape:
    """One split shape's key function and recorded walks (keyed by the fields and parameter answers)."""

    __slots__ = ("key", "memo", "nested")

    def __init__(self, fields: tuple[str, ...], tests: tuple[str, ...], nested: frozenset[Any]) -> None:
        self.nested = nested  # the closures' chains other than a member's own: one on the caller's stack loops
        # key(s, addrs): the fields, whether the branch is DNATed, then what each parameter test answers with the
        # member's addresses. Generated code, one flat tuple: it runs for every way in of every Service port.
        parts = [f"s.{f}" for f in fields] + ["s.dnat_by is None"]
        parts += [f"s.{field} == a[{i}]" for i, field in enumerate(tests)]
        namespace: dict[str, Any] = {}
        exec(f"def key(s, a):\n    return ({', '.join(parts)},)\n", namespace)
        self.key: Callable[[State, tuple[str, ...]], Any] = namespace["key"]
        self.memo: dict[Any, Any] = {}


class Member:
    """What a chain of a split shape has of its own: its parameter addresses (in the key's order), its endpoint
    chains' codes (`targets`: the j-th is the target of the j-th draw element as listed, position j + 1; position
    0 is the chain itself, whose code holds this Member: not held here, or the two would make a reference cycle),
    their DNAT parameters by position and rule index, and the keys of them all."""

    __slots__ = ("addrs", "dnats", "keys", "shape", "targets")

    def __init__(self, shape: SplitShape, addrs: tuple[str, ...], code: Any, targets: tuple[Any, ...],
                 dnats: tuple[Any, ...]) -> None:
        self.shape = shape
        self.addrs = addrs
        self.targets = targets
        self.dnats = dnats
        self.keys = frozenset([code.key, *(c.key for c in targets)])


def _signature(rules: tuple[Any, ...]) -> tuple[Any, tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """(shape of a chain's rules, its draw's targets as listed, its own address tests (field, address)), or None
    when the chain is not a split: no single `numgen random` verdict map over distinct goto/jump targets, or
    something a replay could not restore."""
    out: list[Any] = []
    targets: list[str] = []
    tests: list[tuple[str, str]] = []
    draws = 0
    for rule in rules:
        items: list[Any] = []
        for item in rule.items:
            t = type(item)
            if t is Match and address_equals(item) is not None:
                items.append(("addr", item.left))
                tests.append(("src" if item.left.field == "saddr" else "dst", item.right))
            elif t is VerdictMap and type(item.key) is Numgen and item.key.mode == "random" and \
                    type(item.map) is AnonSet:
                draws += 1
                elements = []
                for e in item.map.elements:
                    d = e.data
                    if type(d) is not Verdict or d.kind not in ("goto", "jump") or not d.target or \
                            d.target in targets:
                        return None
                    elements.append((e.key, e.timeout_ms, e.comment, d.kind, len(targets)))
                    targets.append(d.target)
                items.append(("draw", item.key, tuple(elements)))
            elif t is SetUpdate or t is Nat or forks(item):
                return None
            else:
                items.append(item)
        out.append((tuple(items), rule.comment))
    if draws != 1:
        return None
    return tuple(out), tuple(targets), tuple(tests)


class Splits:
    """The split shapes of one walker's chains. `of(code, walker)` is asked once per chain (ChainCode.split)."""

    def __init__(self) -> None:
        self._shapes: dict[Any, SplitShape | None] = {}

    def of(self, code: Any, walker: Any) -> Member | None:
        rules = code.chain.rules
        if code.chain.base is not None or not 0 < len(rules) <= MAX_RULES or not any(map(_may_draw, rules)):
            return None
        found = _signature(rules)
        if found is None:
            return None
        signature, targets, tests = found
        table = code.table
        codes = [code]
        dnats: list[Any] = [()]
        skeletons = []
        addrs = [a for _, a in tests]
        fields = [f for f, _ in tests]
        for name in targets:
            target = walker._chain(table, name)
            if target is None or target.key == code.key:
                return None
            shaped = target.shaped
            if shaped is False:
                shaped = target.shaped = walker._skeletons.of(target)
            if shaped is None:
                return None
            sk, its_tests, its_dnats = shaped
            skeletons.append(sk)
            codes.append(target)
            dnats.append(its_dnats)
            addrs.extend(a for _, a in its_tests)
            fields.extend(f for f, _ in its_tests)
        key = (table.label, signature, tuple(skeletons), tuple(fields))
        try:
            shape = self._shapes.get(key, False)
        except TypeError:  # (an item that cannot be hashed)
            return None
        if shape is False:
            shape = self._shapes[key] = _make(code, codes, tuple(fields), walker)
        if shape is None:
            return None
        member = Member(shape, tuple(addrs), code, tuple(codes[1:]), tuple(dnats))
        if not shape.nested.isdisjoint(member.keys):
            return None  # (a chain of its own is another member's fixed chain: the positions would not tell)
        return member


def _parameter(item: Any) -> bool:
    """A split's own item: an address equality test, or its draw."""
    t = type(item)
    return (t is Match and address_equals(item) is not None) or (t is VerdictMap and type(item.key) is Numgen)


def _make(code: Any, codes: list[Any], tests: tuple[str, ...], walker: Any) -> SplitShape | None:
    """The shape of the split `code` (its endpoint chains `codes[1:]`), or None when its walk is not a function
    of the key."""
    own = {c.key for c in codes}
    fields: set[str] = set()
    nested: set[Any] = set()
    for i in range(len(code.compiled)):
        c = code.compiled[i] or walker._compiled(code, i)
        found = rule_reads(c, _parameter)
        if found is None:
            return None
        fields |= found
        for op in c.ops:
            if op[0] == FORK:
                if not op[3] or op[2][0] != VMAP or op[2][3] is not None:
                    return None
            elif op[0] in (UPDATE, NAT):
                return None
        draw = any(op[0] == FORK for op in c.ops)
        for target in walker._targets(code, c):
            if target.key in own:
                if draw:
                    continue  # (the draw's own targets: the endpoint chains)
                return None  # (an endpoint chain also reached otherwise, or the chain itself)
            closure = closure_fields(target, set(), walker._compiled, walker._targets)
            if closure is None:
                return None
            fields |= closure[0]
            nested |= {target.key, *closure[1]}
    for target in codes[1:]:
        params = {id(item) for rule in target.chain.rules for item in rule.items
                  if type(item) is Match and address_equals(item) is not None}
        closure = closure_fields(target, params, walker._compiled, walker._targets)
        if closure is None:
            return None
        fields |= closure[0]
        nested |= closure[1]
    if not nested.isdisjoint(own):
        return None
    return SplitShape(tuple(sorted((fields | set(RESTORED)) - NOT_RAW)), tests, frozenset(nested))


def record(results: list[tuple[State, Any]], before: tuple[Any, Any, str, int], member: Member,
           codes: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
    """A walk of `member` (`codes`: its chain's code and its targets') from a branch with path, chains and
    assumptions emptied and share 1 whose (accept, dnat_by, dst, dport) were `before`, with the member's own
    rules and chains told by position; None when it cannot be replayed on another member (an assumption made, a
    Decision of a chain of its own that is no rule's, a rewrite other than an endpoint chain's DNAT)."""
    accept, dnat_by, dst, dport = before
    position = {c.key: p for p, c in enumerate(codes)}
    out = []
    for s, term in results:
        if s.assumptions or s.accept is not accept:
            return None
        path = []
        decisions: dict[int, tuple[int, int]] = {}
        for e in cons_list(s.path):
            p = position.get(e[0].key)
            if p is None:
                path.append(e)
            else:
                path.append((p, e[1].index, e[2], e[3]))
                decisions[id(e[1].decision)] = (p, e[1].index)
        chains = tuple([position.get(k, k) for k in cons_list(s.chains)])
        nat = None
        if s.dnat_by is not dnat_by:
            nat = decisions.get(id(s.dnat_by))
            if nat is None or member.dnats[nat[0]][nat[1]] is None:
                return None
        elif (s.dst, s.dport) != (dst, dport):
            return None
        at = None
        if term is not None and term[1] is not None:
            at = decisions.get(id(term[1]))
            if at is None and (term[1].table, term[1].chain) in position:
                return None
        restored = (s.mark, s.ct_mark, s.notrack, s.snat, s.masq, s.hook, s.in_iface, s.out_iface)
        out.append((term, at, tuple(path), chains, restored, s.num, s.den, nat))
    return out


def replay(recorded: list[tuple[Any, ...]], s: State, member: Member, codes: tuple[Any, ...],
           ref: Callable[[Any, int], Any]) -> list[tuple[State, Any]]:
    """The recorded walk on branch `s` entering `member` (`codes`: its chain's code and its targets'; `ref`: the
    walker's (chain, index) → the rule as path entries hold it). Each branch but the last is a new State made
    with the recorded fields; the last is `s` itself."""
    last = len(recorded) - 1
    out: list[tuple[State, Any]] = []
    dnats = member.dnats
    for i, walk in enumerate(recorded):
        # One recorded branch (spelled out: this runs for every endpoint of every trace): a new State with the
        # restored fields (mark … out_iface), or `s` itself for the last.
        term, at, path, chains, restored, num, den, nat = walk
        if i == last:
            st = s
            (st.mark, st.ct_mark, st.notrack, st.snat, st.masq, st.hook, st.in_iface, st.out_iface) = restored
        else:
            st = s.branch(*restored)
        if path:
            st.path = (Bound((path, codes, ref)), st.path)
        if chains:
            st.chains = (Bound((chains, codes, None)), st.chains)
        if num != 1 or den != 1:
            st.num *= num
            st.den *= den
        if nat is not None:
            p, k = nat
            addr, port = dnats[p][k]
            st.dst = addr
            if port is not None:
                st.dport = port
            decision = st.dnat_by = ref(codes[p], k).decision
            if at == nat:
                out.append((st, (term[0], decision)))
                continue
        if at is not None:
            term = (term[0], ref(codes[at[0]], at[1]).decision)
        out.append((st, term))
    return out
