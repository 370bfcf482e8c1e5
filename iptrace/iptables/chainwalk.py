"""Walking one chain: its rules in order (through the per-chain index where there is one), jumps and gotos,
targets and their effect on the packet's state, and the chain memo that replays a load-balancing closure for
packets it cannot tell apart (chainmemo.py). The Tracer (walk.py) strings these walks along the hooks."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from iptrace.errors import TraceError
from iptrace.iptables import chainmemo
from iptrace.iptables.compile import (
    ACCEPT,
    ACCEPT_ASSUMED,
    CONTINUE,
    DNAT,
    DROP,
    GOTO,
    JUMP,
    KUBE_MARK_DROP,
    KUBE_MARK_MASQ,
    MASQUERADE,
    NETMAP,
    NOTRACK,
    REDIRECT,
    REJECT,
    RETURN,
    SET_MARK,
    SNAT,
    ChainCode,
    Compiled,
    Compiler,
)
from iptrace.iptables.state import State, Terminal, format_ip

# Chains entered a second time before every chain is planned on its first entry.
EAGER_AFTER = 64
# Chains shorter than this that do not split are walked, not planned (see _chain_plan).
SMALL_ENTRY = 8


class ChainWalker(Compiler):
    """Rule-by-rule walks of compiled chains; `share` turns the chain memo on (off only to check that it
    changes nothing)."""

    share: bool
    _reentries = 0  # chains entered a second time so far
    # closure shape (see _chain_plan) -> the walks recorded by position for closures of that shape
    _shape_memos: dict[tuple[object, ...], dict[object, tuple[chainmemo.Positional, ...]]]
    # chain -> True (entered once), its plan, or None (not shared)
    _chain_plans: dict[tuple[str, str], tuple[chainmemo.ChainPlan, tuple[str, ...]] | bool | None]
    # id(shared matches) -> (their number in shape keys, them); shared matches by value -> their number
    _bound_tokens: dict[int, tuple[int, object]]
    _bound_values: dict[object, int]

    def _run_chain(self, code: ChainCode, state: State, stack: tuple[str, ...]) -> list[tuple[State, Terminal]]:
        """Walk one chain; returns every branch with its terminal verdict, or None when it came back."""
        state.chains = (code.key, state.chains)
        index = code.index
        cands: Sequence[int] = ()
        if index is not None:
            key = (state.proto, state.dport, state.dst)
            cands = index.candidates(*key)
            if not cands:
                return [(state, None)]
        out: list[tuple[State, Terminal]] = []
        todo: list[tuple[int, State]] = [(0, state)]
        compiled = code.compiled
        n = len(code.rules)
        while todo:
            start, s = todo.pop()
            finished = False
            if index is None:
                positions: Sequence[int] = range(start, n)
            else:
                if (s.proto, s.dport, s.dst) != key:
                    key = (s.proto, s.dport, s.dst)
                    cands = index.candidates(*key)
                positions = cands[bisect.bisect_left(cands, start):] if start else cands
            for i in positions:
                c = compiled[i] or self._compile(code, i)
                if c.never:
                    continue
                net = c.src
                if net is not None and (s.src & net[0] == net[1]) == net[2]:
                    continue
                net = c.dst
                if net is not None and (s.dst & net[0] == net[1]) == net[2]:
                    continue
                for test in c.tests:
                    if not test(s):
                        break
                else:
                    if c.assumed:
                        ok = True
                        for assumed in c.assumed:
                            result, note = assumed(s)
                            if note is not None:
                                s.assume(note)
                            if not result:
                                ok = False
                                break
                        if not ok:
                            continue
                    p = c.probability
                    if p is not None:
                        if not p[0]:
                            continue
                        num, den = s.prob
                        rest = s.copy()
                        rest.prob = (num * c.complement[0], den * p[1])
                        todo.append((i + 1, rest))
                        s.prob = (num * p[0], den * p[1])
                    for effect in c.effects:
                        effect(s)
                    s.path = (c, s.path)
                    finished = self._apply(code, c, i, s, stack, out, todo)
                    if finished:
                        break
            if not finished:
                out.append((s, None))
        return out

    def _enter(self, code: ChainCode, s: State, stack: tuple[str, ...]) -> list[tuple[State, Terminal]]:
        """Walk a chain entered by a jump, replaying a recorded walk of its closure when one has the same key
        (chainmemo.py)."""
        plan = self._chain_plans.get(code.key, False)
        if plan is False:
            # A chain met once (tracing every Service once) is not worth a plan: plan on the second entry —
            # unless chains keep being entered again (the Service view: every way in, every kind of client).
            if self._reentries < EAGER_AFTER:
                self._chain_plans[code.key] = True
                return self._run_chain(code, s, stack)
            plan = True
        elif plan is True:
            self._reentries += 1
        if plan is True:
            plan = self._chain_plans[code.key] = self._chain_plan(code) if self.share else None
        if plan is None:
            return self._run_chain(code, s, stack)
        chain_plan, written = plan
        key = chain_plan.key(s)
        own = chain_plan.own
        # (`own` is empty for nearly every closure: its walks are recorded by position, in `memo`. A key is a tuple,
        # hashed again by every look-up.)
        found = own.get(key) if own else None
        if found is not None:
            return chainmemo.replay(found, s, written)
        memo = chain_plan.memo
        if memo is not None:
            shared = memo.get(key)
            if shared is not None:
                return chainmemo.replay_positional(shared, s, written, chain_plan)
        start = s.copy()
        start.path = start.chains = None
        start.prob = (1, 1)
        start.assumptions = ()
        before = start.copy()
        results = self._run_chain(code, start, stack)
        if memo is not None:
            shared = chainmemo.record_positional(results, before, chain_plan, written, DNAT)
            if shared is not None:
                if len(memo) >= chainmemo.MEMO_SIZE:
                    memo.clear()
                memo[key] = shared
                return chainmemo.replay_positional(shared, s, written, chain_plan)
        found = chainmemo.record(results, before)
        if len(chain_plan.own) >= chainmemo.MEMO_SIZE:
            chain_plan.own.clear()
        chain_plan.own[key] = found
        return chainmemo.replay(found, s, written)

    def _chain_plan(self, code: ChainCode) -> tuple[chainmemo.ChainPlan, tuple[str, ...]] | None:
        """How to key the walk of `code`'s closure, or None when it cannot be shared (see chainmemo.py); with
        the memo of every closure of its shape."""
        if len(code.rules) < SMALL_ENTRY and code.index is None:
            # A short chain that does not split (KUBE-EXT, KUBE-FW, KUBE-SEP, KUBE-MARK-MASQ) walks its few rules
            # faster than its closure is planned (a KUBE-EXT's holds its Service chain's, planned on its own
            # entry), keyed and replayed.
            for i, c in enumerate(code.compiled):
                if (c or self._compile(code, i)).probability is not None:
                    break
            else:
                return None
        accesses: dict[int, chainmemo.Access] = {}  # (kube-proxy's rules share a handful of Access objects)
        src_nets: list[tuple[int, int]] = []
        dst_nets: list[tuple[int, int]] = []
        order = [code]
        seen = {code.key: 0}
        compiled: list[Compiled] = []
        shape: list[object] = [code.table]
        count = 0
        split = False
        dports: list[int] | None = []  # None once a rule reads the destination port other than by `--dport N`
        compile_rule = self._compile
        bound_tokens = self._bound_tokens
        last_access: object = accesses  # (not an Access)
        for chain in order:  # (grows: the closure's chains in the order their first jump is met)
            rules = chain.rules
            count += len(rules)
            if chain.index is not None or count > chainmemo.MAX_CLOSURE_RULES:
                return None
            shape.append(len(rules))
            for i, c in enumerate(chain.compiled):
                if c is None:
                    c = compile_rule(chain, i)
                access = c.access
                if access is not last_access:
                    if access is None or not access.known or "recent" in access.fields:
                        # (`-m recent`, session affinity: it reads the addresses themselves, so the key would
                        # hold the client's address and the way in's, and nearly every entry would be a miss,
                        # recorded and replayed for nothing)
                        return None
                    accesses[id(access)] = access
                    last_access = access
                compiled.append(c)
                if dports is not None and "dport" in access.raw:
                    dports = chainmemo.exact_dports(c, dports)
                if c.probability is not None:
                    split = True
                src = c.src
                if src is not None:
                    src_nets.append((src[0], src[1]))
                dst = c.dst
                if dst is not None:
                    dst_nets.append((dst[0], dst[1]))
                action = c.action
                target: object = action
                if action == JUMP or action == GOTO:
                    sub = c.sub
                    if sub is None:
                        sub = c.sub = self._code(chain.table, c.arg)
                    if sub is not None:
                        at = seen.get(sub.key)
                        if at is None:
                            at = seen[sub.key] = len(order)
                            order.append(sub)
                        name = c.arg
                        target = (action, at, name if name == KUBE_MARK_MASQ or name == KUBE_MARK_DROP else "")
                    else:
                        target = (action, -1, c.arg)
                elif action == DNAT and not c.note:
                    arg = c.arg
                    target = (DNAT, arg[0] is None, arg[1] is None)
                    if None in arg:
                        dports = None  # (a replay of its own walks copies the recorded destination)
                elif action not in (ACCEPT, DROP, REJECT, RETURN, CONTINUE):
                    target = c  # (a mark, SNAT, …: the same rule only)
                    if action in (DNAT, REDIRECT, NETMAP):
                        dports = None
                # What decides the rule besides its addresses: its shared matches (or the rule itself when it
                # has more address tests than its first -s and -d), the negation of those, its target. Shared
                # matches stand in the shape as a number per distinct value: hashing their tests and Fractions
                # in every shape key cost a tenth of the plan.
                matches: object = c
                bound = c.bound
                if c.tests is bound.tests and not c.assumed:
                    held = bound_tokens.get(id(bound))
                    matches = held[0] if held is not None else self._bound_token(bound)
                shape.append((matches, None if src is None else src[2], None if dst is None else dst[2], c.never,
                              target))
        if count < 8 and not split:
            return None  # a closure this small walks faster than its key is computed and its walk replayed
        fields: set[str] = set()
        raw: set[str] = set()
        for access in accesses.values():
            fields |= access.fields
            raw |= access.raw
        fields.add("proto")  # every port test reads it
        if dports is not None and "dport" in raw:
            raw.discard("dport")  # (the key holds which of `dports` the port equals instead)
        else:
            dports = []
        written = tuple(sorted(fields - {"proto", "hook", "local_origin", "in_iface", "out_iface"}))
        key = tuple(shape)
        memo = self._shape_memos.get(key)
        if memo is None:
            memo = self._shape_memos[key] = {}
        plan = chainmemo.ChainPlan(fields, raw, src_nets, dst_nets, compiled, [c.key for c in order], memo,
                                  dports)
        return plan, written

    def _bound_token(self, bound: object) -> int:
        """The number of shared matches `bound` in shape keys: one per distinct value."""
        token = self._bound_values.setdefault(bound, len(self._bound_values))
        self._bound_tokens[id(bound)] = (token, bound)  # (holds `bound`: its id stays its own)
        return token

    def _apply(self, code: ChainCode, c: Compiled, i: int, s: State, stack: tuple[str, ...],
               out: list[tuple[State, Terminal]], todo: list[tuple[int, State]]) -> bool:
        """Apply a matching rule's target; True when this branch left the chain."""
        action = c.action
        if action == JUMP or action == GOTO:
            name = c.arg
            if name in stack or name == code.name:
                loop = [*stack[stack.index(name):], code.name, name] if name in stack else [code.name, name]
                raise TraceError(f"jump loop in table {code.table}: {' → '.join(loop)} "
                                 f"(closed by the rule at line {c.step.line}); the kernel refuses such a ruleset")
            if name == KUBE_MARK_MASQ:
                s.kube_masq = True
            elif name == KUBE_MARK_DROP and s.mark_drop is None:
                s.mark_drop = c.decision
            sub = c.sub
            if sub is None:
                sub = c.sub = self._code(code.table, name)
                assert sub is not None
            results = self._enter(sub, s, (*stack, code.name))
            if action == JUMP and len(results) == 1 and results[0][0] is s and results[0][1] is None:
                # The common case: the chain came back with this very branch; go on with the next rule.
                # (A chain that returns cannot have rewritten the destination: NAT targets are terminal.)
                return False
            if action == GOTO:
                out.extend(results)  # a goto'd chain returns to our caller
                return True
            back = []
            for result in results:  # (a Service chain's ~10 branches: each pair kept, not rebuilt)
                if result[1] is None:
                    back.append(result[0])
                else:
                    out.append(result)
            if back:
                todo.extend((i + 1, s2) for s2 in reversed(back))
            return True
        if action == CONTINUE:
            return False
        if action == RETURN:
            out.append((s, None))
            return True
        if action == ACCEPT:
            out.append((s, ("ACCEPT", c.decision)))
            return True
        if action == DROP:
            out.append((s, ("DROP", c.decision)))
            return True
        if action == REJECT:
            out.append((s, ("REJECT", c.decision)))
            return True
        if action == SET_MARK:
            c.arg(s)
            return False
        if action == DNAT:
            if c.note:
                s.assume(c.note)
            s.rewrite_destination(c.arg, c.decision)
            out.append((s, ("NAT", c.decision)))
            return True
        if action == REDIRECT:
            self._redirect(s, c)
            out.append((s, ("NAT", c.decision)))
            return True
        if action in (SNAT, MASQUERADE):
            s.snat = True
            s.masq = True
            out.append((s, ("NAT", c.decision)))
            return True
        if action == NETMAP:
            if c.arg is not None and s.hook in ("PREROUTING", "OUTPUT"):
                net, mask = c.arg
                s.dst = (s.dst & ~mask) | net
                s.dnat = True
                s.dnat_by = c.decision
            elif c.arg is not None:
                s.snat = True
                s.masq = True
            out.append((s, ("NAT", c.decision)))
            return True
        if action == NOTRACK:
            if s.notrack is None:  # (CT is raw's only: a packet that has its connection is left as it is)
                s.notrack = True
            return False
        if action == ACCEPT_ASSUMED:
            s.assume(c.note or "")
            out.append((s, ("ACCEPT", c.decision)))
            return True
        # UNKNOWN
        s.assume(c.note or "")
        return False

    def _redirect(self, s: State, c: Compiled) -> None:
        if s.local_origin:
            s.dst = 1 if self.version == 6 else 0x7F000001
        elif self.ctx.local_addresses:
            s.dst = min(self.ctx.local_addresses)
            s.assume(f"line {c.step.line}: REDIRECT to the node's address {format_ip(s.dst, self.version)} "
                     "(the kernel uses the receiving interface's primary address)")
        else:
            s.dst = 1 if self.version == 6 else 0x7F000001
            s.assume(f"line {c.step.line}: REDIRECT to a node address; node addresses unknown, shown as "
                     "loopback (pass --node-ip)")
        if c.arg is not None:
            s.dport = c.arg
        s.dnat = True
        s.dnat_by = c.decision
