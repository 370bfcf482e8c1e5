"""The nftables walk: a new connection's first packet through every base chain of every table of its family, in
the kernel's hook and priority order (hooks.py), branch by branch with exact probabilities.

Hooks: a packet from elsewhere meets prerouting, then — after the routing decision on its (possibly DNATed)
destination — input (the node holds the address) or forward and postrouting. A packet the node sends (its source
is a node address or loopback) meets output, is routed again after output's DNAT, then postrouting; if it is
for the node itself it comes back in through lo (prerouting and input without NAT: its mappings are made).
Verdicts as the kernel: `accept` ends one base chain (the next one on the hook still runs), `drop`/`reject` end
the packet, NAT statements accept, a base chain left without a verdict applies its policy.
"""

from __future__ import annotations

import gc
import ipaddress
import itertools
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from iptrace.dataplane import Decision, Outcome, Packet, Trace, join_host_port
from iptrace.errors import TraceError
from iptrace.nftables.evaluate import NA, Context, Unknown
from iptrace.nftables.hooks import Stage, hook_stages, unwalked_tables
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
from iptrace.nftables.state import State, cons_list, is_loopback
from iptrace.nftables.steps import StepMaker
from iptrace.nftables.values import protocol

# The hooks after the routing decision: (hook, with its NAT chains, entering through lo). A packet the node sends
# to itself comes back in through lo; its NAT mappings are made, so NAT chains are not called again.
_FORWARD = (("forward", True, False), ("postrouting", True, False))
_INPUT = (("input", True, False),)
_OUT = (("postrouting", True, False),)
_OUT_LOOPBACK = (("postrouting", True, False), ("prerouting", False, True), ("input", False, False))

_DRAW_WORDS = frozenset({"numgen", "jhash", "symhash"})

NEW_CONNECTION = "first packet of a new connection (ct state new, mark 0, no conntrack or dynamic-set entries yet)"

BREAK = ("break",)  # the rule did not match (a later test failed, a look-up found nothing)
Terminal = tuple[str, Decision] | None  # ("accept"|"drop"|"reject"|"nat", decision); None = returned


class TableCode:
    """One table, compiled lazily: its chains' rules and its sets' look-up indexes."""

    __slots__ = ("chains", "family", "indexes", "label", "table")

    def __init__(self, table: Table) -> None:
        self.table = table
        self.label = table.label
        self.family = table.family
        self.chains: dict[str, ChainCode | None] = {}
        self.indexes: dict[str, SetIndex | None] = {}

    def chain(self, name: str) -> ChainCode | None:
        found = self.chains.get(name, False)
        if found is False:
            chain = self.table.chain(name)
            found = self.chains[name] = ChainCode(self, chain) if chain is not None else None
        return found  # type: ignore[return-value]

    def named(self, name: str) -> tuple[SetIndex | None, str | None]:
        found = self.indexes.get(name, False)
        if found is False:
            s = self.table.set(name)
            found = self.indexes[name] = SetIndex.of(s) if s is not None else None
        if found is None:
            return None, f"set @{name} is not defined in table {self.label}"
        return found, None  # type: ignore[return-value]


class ChainCode:
    __slots__ = ("chain", "compiled", "key", "name", "table")

    def __init__(self, table: TableCode, chain: Chain) -> None:
        self.table = table
        self.chain = chain
        self.name = chain.name
        self.key = (table.label, chain.name)
        self.compiled: list[CompiledRule | None] = [None] * len(chain.rules)


class Tracer:
    """Traces packets through one nft Ruleset (both IP families when it has tables for both). Build once, call
    `trace(packet)` many times. `node_ips`: the node's own addresses (fib type local, and whether the node sent
    the packet); `names`: chain → "ns/svc:port" from the layout (chains kube-proxy named after their Service
    port label themselves)."""

    entry = "hooks"

    def __init__(self, ruleset: Ruleset, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
                 names: Mapping[str, str] | None = None, share: bool = True) -> None:
        self.ruleset = ruleset
        self.share = share  # replay the hooks after NAT for branches they cannot tell apart (memo.py)
        self._plans: dict[tuple[int, tuple[tuple[str, bool, bool], ...]], Plan | None] = {}
        self._chain_plans: dict[tuple[str, str], Plan | None] = {}
        self.node_ips = tuple(node_ips)
        self.pod_cidrs = tuple(pod_cidrs)
        local = set()
        for ip in node_ips:
            try:
                local.add(str(ipaddress.ip_address(ip)))
            except ValueError:
                continue
        self.local = frozenset(local)
        self.ctx = Context(self.local)
        self._tables: dict[tuple[str, str], TableCode] = {
            (t.family, t.name): TableCode(t) for t in ruleset.tables}
        self._stages: dict[tuple[int, str], tuple[Stage, ...]] = {}
        self._policies: dict[tuple[str, str, str], Decision] = {}
        self._probabilities: dict[tuple[int, int], tuple[Fraction, float]] = {}
        self.steps = StepMaker(ruleset, names)
        self._unwalked = tuple(unwalked_tables(ruleset))

    # ------------------------------------------------------------------------------------------- public

    def trace(self, packet: Packet, *, in_interface: str | None = None, assumptions: Sequence[str] = ()) -> Trace:
        """Every outcome of `packet`'s first packet. `assumptions` are the caller's (e.g. how the source was
        chosen); they follow the first-packet one."""
        s = self._start(packet, in_interface if in_interface is not None else packet.in_interface)
        enabled = gc.isenabled()
        gc.disable()  # a walk allocates many small acyclic objects next to a ruleset of ~10^6 objects
        try:
            finals = self._walk(s)
            original = join_host_port(packet.dst, packet.dport)
            outcomes = tuple([self._outcome(st, term, original) for st, term in finals])
        finally:
            if enabled:
                gc.enable()
        notes = [NEW_CONNECTION, *(a for a in assumptions if a != NEW_CONNECTION)]
        if self._unwalked:
            notes.append("tables or chains on other hooks are not walked (bridge, netdev, arp, ingress/egress): "
                         + ", ".join(self._unwalked))
        if not any(t.family in ("ip", "inet") if packet.version == 4 else t.family in ("ip6", "inet")
                   for t in self.ruleset.tables):
            notes.append(f"the ruleset has no table for IPv{packet.version} (ip{'6' if packet.version == 6 else ''} "
                         "or inet): nothing decides")
        for o in outcomes:
            for note in o.assumptions:
                if note not in notes:
                    notes.append(note)
        return Trace(packet, "hooks", outcomes, tuple(notes))

    def trace_many(self, packets: Sequence[Packet]) -> list[Trace]:
        return [self.trace(p) for p in packets]

    def trace_chain(self, chain: str, packet: Packet) -> Trace:
        """`packet` entering `chain` of kube-proxy's table of its family directly (any table of the family that
        has the chain when there is no kube-proxy table): the endpoint shares of a load-balancing chain, by the
        same walk. The walk stops where the chain does: masquerading (postrouting) is not reached."""
        s = self._start(packet, packet.in_interface)
        code = self._find_chain(chain, s.version)
        if code is None:
            raise TraceError(f"no chain {chain} in kube-proxy's table for IPv{packet.version}")
        s.hook = "output" if self._is_local(s.src) else "prerouting"
        enabled = gc.isenabled()
        gc.disable()
        try:
            finals = self._run_chain(code, s, ())
            original = join_host_port(packet.dst, packet.dport)
            outcomes = tuple([self._outcome(st, term, original) for st, term in finals])
        finally:
            if enabled:
                gc.enable()
        return Trace(packet, "kube-proxy", outcomes, (NEW_CONNECTION,))

    # ------------------------------------------------------------------------------------------- hooks

    def _start(self, packet: Packet, in_interface: str | None) -> State:
        return State(packet.version, packet.src, packet.dst, packet.sport, packet.dport,
                     str(protocol(packet.proto)), in_interface)

    def _is_local(self, ip: str) -> bool:
        return ip in self.local or is_loopback(ip)

    def _find_chain(self, name: str, version: int) -> ChainCode | None:
        kube = self._tables.get(("ip" if version == 4 else "ip6", "kube-proxy"))
        if kube is not None:
            found = kube.chain(name)
            if found is not None:
                return found
        for (family, _), tc in self._tables.items():
            if family in (("ip", "inet") if version == 4 else ("ip6", "inet")):
                found = tc.chain(name)
                if found is not None:
                    return found
        return None

    def _walk(self, s: State) -> list[tuple[State, Terminal]]:
        out: list[tuple[State, Terminal]] = []
        if self._is_local(s.src):
            s.local_origin = True
            s.out_iface = "lo" if self._is_local(s.dst) else None
            for s1, t1 in self._hook(s, "output"):
                if t1 is not None:
                    out.append((s1, t1))
                    continue
                # The route is looked up again after output's DNAT; a packet for the node itself comes back in
                # through lo.
                local = self._is_local(s1.dst)
                s1.out_iface = "lo" if local else None
                out.extend(self._tail(s1, _OUT_LOOPBACK if local else _OUT))
            return out
        for s1, t1 in self._hook(s, "prerouting"):
            if t1 is not None:
                out.append((s1, t1))
            else:
                out.extend(self._tail(s1, _INPUT if self._is_local(s1.dst) else _FORWARD))
        return out

    def _tail(self, s: State, seq: tuple[tuple[str, bool, bool], ...]) -> list[tuple[State, Terminal]]:
        """The hooks after the routing decision, replayed from an earlier branch the rules there cannot tell
        apart from this one (memo.py)."""
        if not self.share:
            return self._walk_seq(s, seq)
        key = (s.version, seq)
        plan = self._plans.get(key, False)
        if plan is False:
            plan = self._plans[key] = self._plan(s.version, seq)
        if plan is None:
            return self._walk_seq(s, seq)
        raw = plan.raw(s)
        found = plan.by_value.get(raw)
        if found is None:
            k = plan.key(s)
            found = plan.memo.get(k)
            if found is None:
                start = s.copy()
                start.path = start.chains = None
                start.assumptions = ()
                start.num = start.den = 1
                before = (start.accept, start.dnat_by)
                found = record(self._walk_seq(start, seq), before)
                if len(plan.memo) >= MEMO_SIZE:
                    plan.memo.clear()
                plan.memo[k] = found
            if len(plan.by_value) >= MEMO_SIZE:
                plan.by_value.clear()
            plan.by_value[raw] = found
        return replay(found, s)

    def _plan(self, version: int, seq: tuple[tuple[str, bool, bool], ...]) -> Plan | None:
        codes = []
        for hook, nat, _ in seq:
            for stage in hook_stages(self.ruleset, version, hook):
                if stage.nat and not nat:
                    continue
                for table, chain in stage.chains:
                    code = self._tables[(table.family, table.name)].chain(chain.name)
                    if code is not None:
                        codes.append(code)
        return make_plan(codes, self._compiled, self._targets)

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
            sub = code.table.chain(name)
            if sub is not None:
                out.append(sub)
        return out

    def _walk_seq(self, s: State, seq: tuple[tuple[str, bool, bool], ...]) -> list[tuple[State, Terminal]]:
        states: list[tuple[State, Terminal]] = [(s, None)]
        for hook, nat, loopback in seq:
            following: list[tuple[State, Terminal]] = []
            for st, term in states:
                if term is not None:
                    following.append((st, term))
                    continue
                if loopback:
                    st.in_iface = "lo"
                following.extend(self._hook(st, hook, nat=nat))
            states = following
        return states

    def _hook(self, s: State, hook: str, *, nat: bool = True) -> list[tuple[State, Terminal]]:
        """Every base chain of one hook; the branches that passed it have terminal None."""
        key = (s.version, hook)
        stages = self._stages.get(key)
        if stages is None:
            stages = self._stages[key] = hook_stages(self.ruleset, s.version, hook)
        s.hook = hook
        states: list[tuple[State, Terminal]] = [(s, None)]
        for stage in stages:
            if stage.nat and not nat:
                continue
            following: list[tuple[State, Terminal]] = []
            for st, term in states:
                if term is not None:
                    following.append((st, term))
                elif stage.nat:
                    following.extend(self._nat_stage(stage.chains, 0, st))
                else:
                    following.extend(self._base(*stage.chains[0], st))
            states = following
        return states

    def _nat_stage(self, chains: tuple[tuple[Table, Chain], ...], k: int, s: State) -> list[tuple[State, Terminal]]:
        """The NAT chains of one hook in their order, until one set up the mapping (nf_nat_inet_fn)."""
        if k == len(chains):
            return [(s, None)]
        before = (s.dnat_by, s.snat)
        out: list[tuple[State, Terminal]] = []
        for s2, term in self._base(*chains[k], s):
            if term is not None or (s2.dnat_by, s2.snat) != before:
                out.append((s2, term))
            else:
                out.extend(self._nat_stage(chains, k + 1, s2))
        return out

    def _base(self, table: Table, chain: Chain, s: State) -> list[tuple[State, Terminal]]:
        code = self._tables[(table.family, table.name)].chain(chain.name)
        assert code is not None and chain.base is not None
        filtering = chain.base.type != "nat"
        out: list[tuple[State, Terminal]] = []
        for s2, term in self._run_chain(code, s, ()):
            if term is None:
                policy = chain.base.policy
                decision = self._policy(code.table.label, chain.name, policy)
                if policy == "drop":
                    out.append((s2, ("drop", decision)))
                    continue
                if filtering:
                    s2.accept = decision
                out.append((s2, None))
            elif term[0] in ("drop", "reject"):
                out.append((s2, term))
            else:
                if term[0] == "accept" and filtering:
                    s2.accept = term[1]
                out.append((s2, None))
        return out

    def _policy(self, table: str, chain: str, policy: str) -> Decision:
        key = (table, chain, policy)
        found = self._policies.get(key)
        if found is None:
            found = self._policies[key] = Decision(table, chain, policy=policy)
        return found

    # ------------------------------------------------------------------------------------------- chains

    def _compiled(self, code: ChainCode, i: int) -> CompiledRule:
        rule = code.chain.rules[i]
        table = code.table
        if rule.line:
            where = f"line {rule.line}"
        else:
            where = f"{table.label} {code.name} rule {i + 1}" + (f" (handle {rule.handle})" if rule.handle else "")
        decision = Decision(table.label, code.name, rule.line or 0, handle=rule.handle)
        found = code.compiled[i] = compile_rule(rule, i, decision, where, self.ctx, table.named, table.family)
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
                    target = code.table.chain(verdict[1])  # type: ignore[arg-type]
                    if target is not None and target.key not in stack and target.key != code.key:
                        results = self._enter(target, st, (*stack, code.key))
                        if len(results) == 1 and results[0][1] is None:
                            st = results[0][0]  # the common case: the chain came back with this very branch
                            continue
                        later = [s2 for s2, term in results if term is None]
                        out.extend(r for r in results if r[1] is not None)
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
        """A chain entered by a jump, goto or verdict map; replayed from an earlier walk of its closure that the
        rules cannot tell apart from this one (memo.py: a Service port's chains, met by every kind of client)."""
        if not self.share:
            return self._run_chain(code, s, stack)
        plan = self._chain_plans.get(code.key, False)
        if plan is False:
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
            start = s.copy()
            start.path = start.chains = None
            start.assumptions = ()
            start.num = start.den = 1
            before = (start.accept, start.dnat_by)
            found = record(self._run_chain(code, start, stack), before)
            if len(plan.memo) >= MEMO_SIZE:
                plan.memo.clear()
            plan.memo[k] = found
        if len(plan.by_value) >= MEMO_SIZE:
            plan.by_value.clear()
        plan.by_value[raw] = found
        return replay(found, s)

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
        decision = act[2] if len(act) > 2 and act[2] is not None else c.decision
        if kind in ("accept", "drop", "reject", "nat"):
            out.append((s, (kind, decision)))
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
            sub = code.table.chain(target)
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
                elif value is not NA:
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
                s.notrack = True
            elif code_ == FORK:
                return self._fork(code, c, op, ops, k, s)
        return [(s, None)]

    def _fork(self, code: ChainCode, c: CompiledRule, op: tuple[Any, ...], ops: tuple[tuple[Any, ...], ...], k: int,
              s: State) -> list[tuple[State, Any]]:
        """A numgen/hash draw: one branch per value, each with its exact share."""
        drawn = op[1]
        size = 1
        for e in drawn:
            size *= e.modulus
        rest = (op[2], *ops[k:])
        out: list[tuple[State, Any]] = []
        for values in itertools.product(*(range(e.offset, e.offset + e.modulus) for e in drawn)):
            s2 = s.copy()
            s2.den *= size
            s2.bind = {id(e): v for e, v in zip(drawn, values, strict=True)}
            for e in drawn:
                if not isinstance(e, Numgen) or e.mode != "random":
                    what = f"numgen {e.mode}" if isinstance(e, Numgen) else f"{e.kind} of the packet's fields"
                    s2.assume(f"{c.where}: {what} mod {e.modulus}: each value assumed equally likely over many "
                              "new connections")
            results = self._ops(code, c, rest, 0, s2)
            for s3, _ in results:
                s3.bind = None
            out.extend(results)
        return out

    def _nat(self, c: CompiledRule, op: tuple[Any, ...], s: State) -> bool:
        _, kind, version, target, port, note, _ = op
        if version is not None and version != s.version:
            return False
        if kind in ("snat", "masquerade"):
            s.snat = True
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

    # ------------------------------------------------------------------------------------------- results

    def _outcome(self, s: State, term: Terminal, original: str) -> Outcome:
        decided: Decision | None
        destination = None
        final = join_host_port(s.dst, s.dport)
        if term is not None and term[0] in ("drop", "reject"):
            verdict, decided = term[0].upper(), term[1]
        elif s.dnat_by is not None:
            verdict, decided, destination = "DNAT", s.dnat_by, final
        elif s.accept is not None:
            verdict, decided = "ACCEPT", s.accept
        else:
            verdict, decided = "CONTINUE", None
        key = (s.num, s.den)
        probability = self._probabilities.get(key)
        if probability is None:
            exact = Fraction(s.num, s.den)
            probability = self._probabilities[key] = (exact, float(exact))
        path_cell, chains_cell = s.path, s.chains
        steps = self.steps
        return Outcome(verdict, destination, probability[1], s.masq,  # type: ignore[arg-type]
                       lambda: steps.service(cons_list(path_cell)), decided,
                       lambda: steps.steps(cons_list(path_cell)), probability[0], original, final,
                       lambda: tuple(cons_list(chains_cell)), s.assumptions)
