"""The walk through one table's chains: rules compiled on first use, jumps, gotos and returns, verdict maps,
numgen draws with their exact shares, NAT, marks and set updates — and the sharing of a chain's walk between
branches and traces its rules cannot tell apart: small chains written alike (skeleton.py: endpoint chains),
load-balancing chains written alike (splits.py: service and local chains, across Services), any other chain
with a draw entered often (memo.py). walk.py's Tracer runs the hooks on top of this; nothing here knows about
hooks or kube-proxy.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

from iptrace.dataplane import Decision
from iptrace.errors import TraceError
from iptrace.nftables import skeleton, splits
from iptrace.nftables.chance import Chance
from iptrace.nftables.evaluate import NA, Context, Unknown
from iptrace.nftables.memo import MEMO_SIZE, Plan, make_plan, record, replay
from iptrace.nftables.model import Chain, Numgen, Ruleset, Table
from iptrace.nftables.rules import (
    FAIL,
    FORK,
    MANGLE,
    NAT,
    NOTE,
    NOTRACK,
    QUEUE,
    REJECT,
    TEST,
    UPDATE,
    VERDICT,
    VMAP,
    CompiledRule,
    compile_rule,
)
from iptrace.nftables.sets import SetIndex
from iptrace.nftables.skeleton import RuleRef, Skeleton, Skeletons, closure_fields
from iptrace.nftables.state import State
from iptrace.nftables.steps import StepMaker

_DRAW_WORDS = frozenset({"numgen", "jhash", "symhash"})
CODES_SIZE = 8192  # chain codes kept (see _chain)
PLAN_AFTER = 16  # entries of a chain walked before its plan is made (see _enter)

BREAK = ("break",)  # the rule did not match (a later test failed, a look-up found nothing)
Terminal = tuple[str, Decision | None] | None  # ("accept"|"drop"|"reject"|"nat", decision: None when the node's
# routes decided); None = returned


class TableCode:
    """One table, compiled lazily: its chains' rules and its sets' look-up indexes."""

    __slots__ = ("family", "indexes", "items", "label", "table")

    def __init__(self, table: Table) -> None:
        self.table = table
        self.label = table.label
        self.family = table.family
        self.indexes: dict[str, SetIndex | None] = {}
        self.items: dict[Any, Any] = {}  # what items compiled to (rules.compile_rule's `shared`)

    def named(self, name: str) -> tuple[SetIndex | None, str | None]:
        found = self.indexes.get(name, False)
        if found is False:
            s = self.table.set(name)
            found = self.indexes[name] = SetIndex.of(s) if s is not None else None
        if found is None:
            return None, f"set @{name} is not defined in table {self.label}"
        return found, None  # type: ignore[return-value]


class ChainCode:
    __slots__ = ("chain", "compiled", "key", "name", "refs", "shaped", "split", "table")

    def __init__(self, table: TableCode, chain: Chain) -> None:
        self.table = table
        self.chain = chain
        self.name = chain.name
        self.key = (table.label, chain.name)
        self.compiled: list[CompiledRule | None] = [None] * len(chain.rules)
        self.refs: list[RuleRef | None] | None = None  # rules met only through replays (skeleton.py)
        self.shaped: Any = False  # Skeletons.of(self), once asked
        self.split: Any = False  # Splits.of(self), once asked


class ChainWalker:
    """Walks chains of one ruleset's tables for a branch (`_run_chain`, `_enter`). `local` are the node's own
    addresses; `share` turns the replay of shared walks on (off only to check that it changes nothing)."""

    def __init__(self, ruleset: Ruleset, ctx: Context, local: frozenset[str], steps: StepMaker, share: bool) -> None:
        self.ruleset = ruleset
        self.ctx = ctx
        self.local = local
        self.steps = steps
        self.share = share
        self._tables: dict[tuple[str, str], TableCode] = {
            (t.family, t.name): TableCode(t) for t in ruleset.tables}
        self._codes: dict[tuple[str, str], ChainCode | None] = {}  # (table label, chain) -> its code
        self._chain_plans: dict[tuple[str, str], Plan | None] = {}
        self._entered: dict[tuple[str, str], int] = {}
        walker = weakref.ref(self)  # (the skeletons belong to this walker: no reference cycle through them)

        def fields(code: ChainCode, params: Any) -> Any:
            me = walker()
            assert me is not None
            return closure_fields(code, params, me._compiled, me._targets)

        self._skeletons = Skeletons(fields)
        self._splits = splits.Splits()
        self.plan_after = PLAN_AFTER
        self.codes_size = CODES_SIZE

    def _chain(self, table: TableCode, name: str) -> ChainCode | None:
        """The code of chain `name` of `table`, compiled on first use. Kept here, not in the table's code, which
        every chain's code refers to: no reference cycle leaves a ruleset to the cyclic collector."""
        key = (table.label, name)
        found = self._codes.get(key, False)
        if found is False:
            if len(self._codes) >= self.codes_size:
                # Codes are kept for the chains met lately, not all: the Service view meets each of ~55,000
                # chains of a 5,000-Service listing in a few traces of its own Service port, and their codes
                # (compiled rules, RuleRefs, skeleton parameters) would be ~40 MB. A chain met again is
                # compiled again, alike; path entries and plans keep the codes they hold.
                self._codes.clear()
            chain = table.table.chain(name)
            found = self._codes[key] = ChainCode(table, chain) if chain is not None else None
        return found  # type: ignore[return-value]

    def _compiled(self, code: ChainCode, i: int) -> CompiledRule:
        rule = code.chain.rules[i]
        table = code.table
        if rule.line:
            where = f"line {rule.line}"
        else:
            where = f"{table.label} {code.name} rule {i + 1}" + (f" (handle {rule.handle})" if rule.handle else "")
        decision = Decision(table.label, code.name, rule.line or 0, handle=rule.handle)
        found = code.compiled[i] = compile_rule(rule, i, decision, where, self.ctx, table.named, table.family,
                                                table.items, table.table.objects)
        return found

    def _run_chain(self, code: ChainCode, s: State, stack: tuple[tuple[str, str], ...]
                   ) -> list[tuple[State, Terminal]]:
        """Walk one chain; every branch with its terminal verdict, or None when it came back."""
        s.chains = (code.key, s.chains)
        out: list[tuple[State, Terminal]] = []
        todo: list[tuple[int, State]] = [(0, s)]
        compiled = code.compiled
        n = len(compiled)
        while todo:
            i, st = todo.pop()
            left = False
            while i < n:
                c = compiled[i] or self._compiled(code, i)
                i += 1
                ok = True
                for test in c.tests:
                    if not test(st):
                        ok = False
                        break
                if not ok:
                    continue
                for test in c.assumed:
                    holds, note = test(st)
                    if note is not None:
                        st.assume(note)
                    if not holds:
                        ok = False
                        break
                if not ok:
                    continue
                saved = st.path
                st.path = ((code, c, None, None), saved)
                verdict = c.verdict
                if verdict is not None and verdict[0] == "jump":
                    target = self._chain(code.table, verdict[1])  # type: ignore[arg-type]
                    if target is not None and target.key not in stack and target.key != code.key:
                        results = self._enter(target, st, (*stack, code.key))
                        if len(results) == 1 and results[0][1] is None:
                            st = results[0][0]  # the common case: the chain came back with this very branch
                            continue
                        later = [s2 for s2, term in results if term is None]
                        out.extend([r for r in results if r[1] is not None])
                        todo.extend((i, s2) for s2 in reversed(later))
                        left = True
                        break
                results = self._ops(code, c, c.ops, 0, st) if verdict is None else [(st, verdict)]
                if len(results) == 1 and results[0][1] is None and results[0][0] is st:
                    continue  # the common case: a rule without a verdict, on this very branch
                later: list[State] = []
                for s2, act in results:
                    if act is BREAK:
                        s2.path = saved
                        later.append(s2)
                    elif act is None:
                        later.append(s2)
                    else:
                        self._verdict(code, c, s2, act, stack, out, later)
                todo.extend((i, s2) for s2 in reversed(later))
                left = True
                break
            if not left:
                out.append((st, None))
        return out

    def _enter(self, code: ChainCode, s: State, stack: tuple[tuple[str, str], ...]) -> list[tuple[State, Terminal]]:
        """A chain entered by a jump, goto or verdict map (or directly, by trace_chain); replayed from an earlier
        walk of its closure — or of the closure of a chain written alike — that the rules cannot tell apart from
        this one (skeleton.py, splits.py, memo.py: a Service port's chains, met by every kind of client)."""
        if not self.share:
            return self._run_chain(code, s, stack)
        shaped = code.shaped
        if shaped is False:
            shaped = code.shaped = self._skeletons.of(code)
        if shaped is not None:
            return self._enter_skeleton(code, s, stack, *shaped)
        split = code.split
        if split is False:
            split = code.split = self._splits.of(code, self)
        if split is not None:
            return self._enter_split(code, s, stack, split)
        plan = self._chain_plans.get(code.key, False)
        if plan is False:
            # A plan costs a few walks (compiling and reading the whole closure): worth it for a chain entered
            # many times (the Service view enters each Service port's chain a few times, by different clients).
            entered = self._entered.get(code.key, 0)
            if entered < self.plan_after:
                self._entered[code.key] = entered + 1
                return self._run_chain(code, s, stack)
            plan = self._chain_plans[code.key] = make_plan(
                (code,), self._compiled, self._targets, chains=True) if self._draws(code) else None
        if plan is None:
            return self._run_chain(code, s, stack)
        raw = plan.raw(s)
        found = plan.by_value.get(raw)
        if found is not None:
            return replay(found, s)
        k = plan.key(s)
        found = plan.memo.get(k)
        if found is None:
            start = s.blank()
            before = (start.accept, start.dnat_by)
            found = record(self._run_chain(code, start, stack), before)
            if len(plan.memo) >= MEMO_SIZE:
                plan.memo.clear()
            plan.memo[k] = found
        if len(plan.by_value) >= MEMO_SIZE:
            plan.by_value.clear()
        plan.by_value[raw] = found
        return replay(found, s)

    def _enter_skeleton(self, code: ChainCode, s: State, stack: tuple[tuple[str, str], ...], sk: Skeleton,
                        tests: tuple[tuple[str, str], ...], dnats: skeleton.Dnats) -> list[tuple[State, Terminal]]:
        """A small chain replayed from the walk of a chain written alike (skeleton.py)."""
        if not sk.nested.isdisjoint(stack):  # a jump loop through the caller: the walk says so
            return self._run_chain(code, s, stack)
        key = sk.key(s, tests)
        found = sk.memo.get(key, False)
        if found is False:
            found = self._record(sk.memo, key, skeleton.MEMO_SIZE, code, s, stack, skeleton.record, code)
        if found is None:
            return self._run_chain(code, s, stack)
        return skeleton.replay(found, s, code, dnats, self._ref)

    def _enter_split(self, code: ChainCode, s: State, stack: tuple[tuple[str, str], ...], member: splits.Member
                     ) -> list[tuple[State, Terminal]]:
        """A load-balancing chain replayed from the walk of a chain written alike (splits.py)."""
        shape = member.shape
        if not (shape.nested.isdisjoint(stack) and member.keys.isdisjoint(stack)):
            return self._run_chain(code, s, stack)  # (a jump loop through the caller: the walk says so)
        key = shape.key(s, member.addrs)
        codes = (code, *member.targets)
        found = shape.memo.get(key, False)
        if found is False:
            found = self._record(shape.memo, key, splits.MEMO_SIZE, code, s, stack, splits.record, member, codes)
        if found is None:
            return self._run_chain(code, s, stack)
        return splits.replay(found, s, member, codes, self._ref)

    def _record(self, memo: dict[Any, Any], key: Any, limit: int, code: ChainCode, s: State,
                stack: tuple[tuple[str, str], ...], record: Callable[..., Any], *args: Any) -> Any:
        """`record(walk, before, *args)` of `code`'s walk from `s` made blank (State.blank; `before`: its accept,
        dnat_by, dst and dport), kept in `memo` under `key` (cleared at `limit`): a skeleton's or a split's
        recording, None when it cannot be replayed."""
        start = s.blank()
        before = (start.accept, start.dnat_by, start.dst, start.dport)
        found = record(self._run_chain(code, start, stack), before, *args)
        if len(memo) >= limit:
            memo.clear()
        memo[key] = found
        return found

    def _ref(self, code: ChainCode, i: int) -> CompiledRule | RuleRef:
        """Rule `i` of `code` as a path entry holds it: compiled when it was, else a RuleRef (same Decision)."""
        c = code.compiled[i]
        if c is not None:
            return c
        refs = code.refs
        if refs is None:
            refs = code.refs = [None] * len(code.compiled)
        found = refs[i]
        if found is None:
            rule = code.chain.rules[i]
            found = refs[i] = RuleRef(rule, i, Decision(code.table.label, code.name, rule.line or 0,
                                                        handle=rule.handle))
        return found

    def _draws(self, code: ChainCode) -> bool:
        """Whether a chain, or one it jumps or goes to, splits the packet by a numgen draw: the load-balancing
        chains worth sharing between traces (smaller closures walk faster than they are keyed). Read from the
        rules' text, so that deciding compiles nothing."""
        chains = [code.chain]
        for rule in code.chain.rules:
            words = rule.text.split()
            for i, word in enumerate(words[:-1]):
                if word in ("jump", "goto"):
                    target = code.table.table.chain(words[i + 1])
                    if target is not None and len(target.rules) < 64:
                        chains.append(target)
        return any(_DRAW_WORDS.intersection(rule.text.split()) for chain in chains for rule in chain.rules)

    def _verdict(self, code: ChainCode, c: CompiledRule, s: State, act: tuple[Any, ...],
                 stack: tuple[tuple[str, str], ...], out: list[tuple[State, Terminal]], later: list[State]) -> None:
        kind = act[0]
        if kind in ("accept", "drop", "reject", "nat"):
            out.append((s, (kind, act[2] if len(act) > 2 and act[2] is not None else c.decision)))
        elif kind == "return":
            out.append((s, None))
        elif kind == "continue":
            later.append(s)
        elif kind in ("jump", "goto"):
            target = act[1]
            key = (code.table.label, target)
            if key in stack or key == code.key:
                loop = " → ".join(name for _, name in (*stack, code.key, key))
                raise TraceError(f"jump loop in table {code.table.label}: {loop}; the kernel refuses such a ruleset")
            sub = self._chain(code.table, target)
            if sub is None:
                s.assume(f"{c.where}: chain {target} is not in the ruleset: assumed empty")
                if kind == "jump":
                    later.append(s)
                else:
                    out.append((s, None))
                return
            results = self._enter(sub, s, (*stack, code.key))
            if kind == "goto":
                out.extend(results)  # a goto'd chain returns to our caller
                return
            for s2, term in results:
                if term is None:
                    later.append(s2)
                else:
                    out.append((s2, term))

    def _ops(self, code: ChainCode, c: CompiledRule, ops: tuple[tuple[Any, ...], ...], k: int, s: State
             ) -> list[tuple[State, Any]]:
        """Run a rule's operations from `k`: [(branch, act)], act None when the rule ended without a verdict."""
        while k < len(ops):
            op = ops[k]
            code_ = op[0]
            k += 1
            if code_ == TEST:
                if op[1] is not None:
                    if not op[1](s):
                        return [(s, BREAK)]
                    continue
                holds, note = op[2](s)
                if note is not None:
                    s.assume(note)
                if not holds:
                    return [(s, BREAK)]
            elif code_ == VMAP:
                value = op[1](s)
                if value is NA:
                    return [(s, BREAK)]
                if isinstance(value, Unknown):
                    s.assume(value.note)
                    return [(s, BREAK)]
                if op[4] is not None and (iface := s.out_iface) is not None and iface != "lo":
                    s.assume(op[4](iface))
                element = op[2].find(value)
                if element is None:
                    return [(s, BREAK)]
                verdict = element.data
                decision = None
                if op[3] is not None:
                    s.path = ((code, c, op[3], element), s.path)
                    if verdict.kind in ("drop", "accept"):  # the element itself decides
                        decision = self.steps.element_decision(code, op[3], element)
                return [(s, (verdict.kind, verdict.target, decision))]
            elif code_ == VERDICT:
                return [(s, (op[1], op[2]))]
            elif code_ == REJECT:
                return [(s, ("reject",))]
            elif code_ == NAT:
                if not self._nat(c, op, s):
                    return [(s, BREAK)]
                return [(s, ("nat",))]
            elif code_ == MANGLE:
                value = op[2](s)
                if isinstance(value, Unknown):
                    s.assume(value.note)
                elif value is not NA and (op[1] != "ct_mark" or s.notrack is False):
                    # (`ct mark set` on a packet without a connection does nothing: nft_ct_set_eval)
                    setattr(s, op[1], value)
            elif code_ == UPDATE:
                value = op[3](s)
                if value is not NA and not isinstance(value, Unknown):
                    entry = (code.table.label, op[2], value)
                    if op[1] == "delete":
                        s.updates = tuple(u for u in s.updates if u != entry)
                    elif entry not in s.updates:
                        s.updates = (*s.updates, entry)
            elif code_ == NOTE:
                s.assume(op[1])
            elif code_ == FAIL:
                s.assume(op[1])
                return [(s, BREAK)]
            elif code_ == QUEUE:
                s.assume(op[1])
                return [(s, ("accept",))]
            elif code_ == NOTRACK:
                if s.notrack is None:  # (a packet that has its connection already is left as it is)
                    s.notrack = True
            elif code_ == FORK:
                return self._fork(code, c, op, ops, k, s)
        return [(s, None)]

    def _fork(self, code: ChainCode, c: CompiledRule, op: tuple[Any, ...], ops: tuple[tuple[Any, ...], ...], k: int,
              s: State) -> list[tuple[State, Any]]:
        """A numgen/hash draw: one branch per value, each with its exact share. A chance (a `meta random`
        match): the branch where it held goes on with the rule, the other leaves it."""
        drawn = op[1]
        if type(drawn[0]) is Chance:
            num, den = drawn[0].num, drawn[0].den
            if num == 0:
                return [(s, BREAK)]
            if num == den:
                return self._ops(code, c, ops, k, s)
            missed = s.copy()
            missed.num *= den - num
            missed.den *= den
            s.num *= num
            s.den *= den
            return [*self._ops(code, c, ops, k, s), (missed, BREAK)]
        size = 1
        for e in drawn:
            size *= e.modulus
        rest = (op[2], *ops[k:])
        out: list[tuple[State, Any]] = []
        notes = []
        for e in drawn:
            if not isinstance(e, Numgen) or e.mode != "random":
                what = f"numgen {e.mode}" if isinstance(e, Numgen) else f"{e.kind} of the packet's fields"
                notes.append(f"{c.where}: {what} mod {e.modulus}: each value assumed equally likely over many "
                             "new connections")
        ids = [id(e) for e in drawn]
        if len(drawn) == 1:
            # One draw (kube-proxy's `numgen random mod N vmap { … }`): spelled out, this runs for every endpoint
            # of every trace of a Service.
            den = s.den * size
            acts = self._draw_acts(c, op, rest)
            if acts is not None:
                for act in acts:
                    s2 = s.copy()
                    s2.den = den
                    s2.bind = None
                    for note in notes:
                        s2.assume(note)
                    out.append((s2, act))
                return out
            ident = ids[0]
            ops_ = self._ops
            for value in range(drawn[0].offset, drawn[0].offset + size):
                s2 = s.copy()
                s2.den = den
                s2.bind = {ident: value}
                for note in notes:
                    s2.assume(note)
                results = ops_(code, c, rest, 0, s2)
                for s3, _ in results:
                    s3.bind = None
                out.extend(results)
            return out
        for values in itertools.product(*(range(e.offset, e.offset + e.modulus) for e in drawn)):
            s2 = s.copy()
            s2.den *= size
            s2.bind = dict(zip(ids, values, strict=True))
            for note in notes:
                s2.assume(note)
            results = self._ops(code, c, rest, 0, s2)
            for s3, _ in results:
                s3.bind = None
            out.extend(results)
        return out

    def _draw_acts(self, c: CompiledRule, op: tuple[Any, ...], rest: tuple[tuple[Any, ...], ...]
                   ) -> list[Any] | None:
        """What a draw's branches end with, by drawn value, when the rest of its rule is one look-up in an
        anonymous verdict map keyed by the draw alone: the look-up answers the same for every packet (the draw
        is all it reads; no path entry names an anonymous map's element). None for any other draw. Kept with
        the compiled rule (as long as its chain's code)."""
        if len(rest) != 1 or not op[3] or rest[0][0] != VMAP or rest[0][3] is not None:
            return None
        found = c.acts
        if found is not None and found[0] is op:
            return found[1]
        e = op[1][0]
        vmap = rest[0]
        probe = State(4, "", "", 0, 0, "", None)
        acts: list[Any] = []
        for value in range(e.offset, e.offset + e.modulus):
            probe.bind = {id(e): value}
            key = vmap[1](probe)
            element = vmap[2].find(key) if key is not NA and not isinstance(key, Unknown) else None
            if element is None:
                if key is not NA and not isinstance(key, Unknown):
                    acts.append(BREAK)
                    continue
                return None  # (a draw alone is always known)
            acts.append((element.data.kind, element.data.target, None))
        c.acts = (op, acts)
        return acts

    def _nat(self, c: CompiledRule, op: tuple[Any, ...], s: State) -> bool:
        _, kind, version, target, port, note, _ = op
        if version is not None and version != s.version:
            return False
        if kind in ("snat", "masquerade"):
            # The address the source becomes, for the chains after the NAT hook (Tracer._translated_source):
            # `snat to` names it; masquerade's (True) is the outgoing interface's.
            value = target(s) if kind == "snat" else None
            addr = value[0] if isinstance(value, tuple) else value
            s.snat = str(addr) if addr is not None and addr is not NA else True
            s.masq = True
            return True
        if kind == "redirect":
            # To the node itself: loopback for its own packets, else the receiving interface's address (which
            # the rules do not say: the node's first address stands for it).
            loopback = "127.0.0.1" if s.version == 4 else "::1"
            own = sorted(ip for ip in self.local if (":" in ip) == (s.version == 6))
            s.dst = loopback if s.local_origin or not own else own[0]
            if not s.local_origin and own:
                s.assume(f"{c.where}: redirect to the address of the interface the packet came in on; shown as "
                         f"the node address {own[0]}")
            if port is not None:
                s.dport = port
            s.dnat_by = c.decision
            return True
        value = target(s)
        if value is NA:
            return False
        if isinstance(value, tuple):  # `dnat ip addr . port to … map { … : addr . port }`
            addr, new_port = value[0], value[1]
        else:
            addr, new_port = value, port
        if note is not None:
            s.assume(note)
        if addr is not None:
            s.dst = str(addr)
        if new_port is not None:
            s.dport = int(new_port)
        s.dnat_by = c.decision
        return True

    def _targets(self, code: ChainCode, c: CompiledRule) -> list[ChainCode]:
        """The chains a rule may send a packet to (jumps, gotos, every verdict of its verdict maps)."""
        names: set[str] = set()
        for op in c.ops:
            if op[0] == FORK:
                op = op[2]
            if op[0] == VERDICT and op[2]:
                names.add(op[2])
            elif op[0] == VMAP:
                index = op[2]
                for e in (*index.exact.values(), *index.ranged):
                    if getattr(e.data, "target", None):
                        names.add(e.data.target)
        out = []
        for name in names:
            sub = self._chain(code.table, name)
            if sub is not None:
                out.append(sub)
        return out
