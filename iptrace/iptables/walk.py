"""The walk: a new connection through the hooks (or kube-proxy's top-level chains), branch by branch.

`Tracer(ruleset, …)` compiles rules lazily and keeps per-chain indexes, so that tracing every Service of a
160,000-rule dump costs little more than the rules each packet actually meets. `trace()` is the convenience
function over a small cache of tracers.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from operator import attrgetter
from typing import Any

from iptrace.dataplane import (
    Decision,
    Entry,
    Outcome,
    Packet,
    Step,
    Trace,
    for_this_host,
    from_the_node,
    join_host_port,
    loopback_notes,
    new_outcome,
    senders_own_loopback,
)
from iptrace.errors import InputError, TraceError
from iptrace.iptables import chainmemo
from iptrace.iptables.chainwalk import ChainWalker
from iptrace.iptables.compile import ChainCode, chain_list, compiled_path
from iptrace.iptables.era import LEGACY_WARNING, NFT_INCOMPATIBLE
from iptrace.iptables.matchers import NEW_CONNECTION
from iptrace.iptables.memo import StagePlan, record, replay, stage_plan
from iptrace.iptables.model import BUILTIN_CHAINS, Ruleset
from iptrace.iptables.state import Context, State, Terminal, format_ip, ip_int
from iptrace.records import positional_new
from iptrace.routes import BLACKHOLE, Routes, unrouted
from iptrace.text import met_order

# Hook order (net/netfilter priorities): raw -300, mangle -150, nat DNAT -100, filter 0, security 50,
# nat SNAT 100.
_PREROUTING = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"))
_LOCAL_IN = (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT"), ("nat", "INPUT"))
_FORWARD = (("mangle", "FORWARD"), ("filter", "FORWARD"), ("security", "FORWARD"))
_POSTROUTING = (("mangle", "POSTROUTING"), ("nat", "POSTROUTING"))
_OUTPUT = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"), ("filter", "OUTPUT"),
           ("security", "OUTPUT"))
# OUTPUT up to its DNAT (not shared: it rewrites destinations) and after it (shared between the branches).
_OUTPUT_NAT, _OUTPUT_FILTER = _OUTPUT[:3], _OUTPUT[3:]
_FORWARD_POSTROUTING = _FORWARD + _POSTROUTING
# A node-to-itself packet comes back in through lo; its NAT bindings were made on the way out, so the nat
# table is not consulted again (nf_nat_inet_fn: one binding per manipulation type).
_LOOPBACK_IN = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "INPUT"), ("filter", "INPUT"),
                ("security", "INPUT"))

# SPEC.md "Fragments without built-in chains".
# Stages walked this many times get a plan and a memo (memo.py).
PLAN_STAGES_AFTER = 48
FRAGMENT_NAT_CHAIN = "KUBE-SERVICES"
FRAGMENT_FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")

FRAGMENT_ASSUMPTION = (
    "the dump does not wire the built-in chains: entered nat KUBE-SERVICES, then filter KUBE-SERVICES, "
    "KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and KUBE-PROXY-FIREWALL directly; masquerade = the path crossed "
    "a jump to KUBE-MARK-MASQ")


# Recorded walks kept per stage sequence (a few per distinct mark/conntrack state in practice).
MEMO_SIZE = 4096
# Final destinations kept as text (a Service view reaches each endpoint from every way in and kind of client,
# one Service after the other).
FINALS_SIZE = 4096



# iptables-nft-save's note on a table that holds base chains of nft's own (`type filter hook forward priority 5`).
NFT_BASE_CHAINS = "contains incompatible base-chains, use 'nft' tool"


def _unseen_rules(ruleset: Ruleset) -> tuple[str, ...]:
    """What iptables-nft-save says the kernel runs beside the dump's rules: named on every trace, since a packet
    meets those rules too (the kernel dropped what a legacy FORWARD rule dropped, beside a trace that DNATed it)."""
    comments = " ".join(ruleset.comments)
    notes = []
    if LEGACY_WARNING in comments:
        notes.append("the dump warns that iptables-legacy tables are present: the kernel runs their rules too, and "
                     "this dump does not hold them (iptables-legacy-save does): assumed they let the packet through "
                     "unchanged")
    if NFT_INCOMPATIBLE in comments or NFT_BASE_CHAINS in comments:
        notes.append("the dump says some tables or base chains are incompatible (written by nft, not iptables): the "
                     "kernel runs their rules too, and this dump does not hold them (nft list ruleset does): assumed "
                     "they let the packet through unchanged")
    return tuple(notes)


_OUT_IFACE = re.compile(r"(?:^|\s)(?:-o|--out-interface)\s")


def _tests_out_iface(ruleset: Ruleset) -> bool:
    """Whether a rule tests the output interface (`-o`): the node's routes change nothing else when they route
    every address, so a ruleset without one is then traced as without them (and keeps its port shapes). (Its text
    is searched: a comment that spells `-o` only costs the shapes.)"""
    search = _OUT_IFACE.search
    return any("-o" in r[1] and search(r[1]) for t in ruleset.tables for c in t.chains for r in c.rules)


def _wired(ruleset: Ruleset) -> bool:
    """Whether the dump's built-in chains carry the traffic (else a kube-proxy fragment)."""
    for table in ruleset.tables:
        builtin = BUILTIN_CHAINS.get(table.name, ())
        if any(c.rules for c in table.chains if c.name in builtin):
            return True
    kube = ruleset.chain("nat", FRAGMENT_NAT_CHAIN) is not None or any(
        ruleset.chain("filter", name) is not None for name in FRAGMENT_FILTER_CHAINS)
    return not kube


class Tracer(ChainWalker):
    """Traces packets through one Ruleset. Build once, call `.trace(packet)` many times.

    node_ips: the node's own addresses (`--dst-type LOCAL`, and whether a packet is node-originated or for
    the node). pod_cidrs: kept for callers choosing sources. names: chain name → "ns/svc:port" labels from
    the kube view (None: labels come from the rules' comments). ipsets: known ipset members (set name →
    addresses/CIDRs); sets not listed have unknown membership. share: replay the walk after NAT for branches
    the rules there cannot tell apart (memo.py; off only to check that it changes nothing).
    """

    def __init__(self, ruleset: Ruleset, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
                 names: Mapping[str, str] | None = None, use_index: bool = True,
                 ipsets: Mapping[str, Sequence[str]] | None = None, share: bool = True,
                 routes: Routes | None = None) -> None:
        version = 6 if ruleset.family == "ipv6" else 4
        table = routes.table(version) if routes is not None else None
        if table is not None and table.routes_all and not _tests_out_iface(ruleset):
            table = None  # (they would change nothing, and cost the port shapes)
        super().__init__(ruleset, Context.build(version, node_ips, ipsets, table), names, use_index)
        self.routed = table is not None
        self.node_ips = tuple(node_ips)
        self.pod_cidrs = tuple(pod_cidrs)
        self.share = share
        self._plans: dict[tuple[tuple[str, str], ...], StagePlan | None] = {}
        self._stage_walks: dict[tuple[tuple[str, str], ...], int] = {}  # walks of stages not planned yet
        self._plan_stages_after = PLAN_STAGES_AFTER
        self.entry: Entry = "hooks" if _wired(ruleset) else "kube-proxy"
        self._unseen = _unseen_rules(ruleset)
        self._probabilities: dict[tuple[int, int], tuple[Fraction, float]] = {}
        self._finals: dict[tuple[int, int], str] = {}  # (address, port) -> "ip:port" (an endpoint's, many times)
        self._policies: dict[tuple[str, str, str], Decision] = {}
        self._effective_stages: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        # id(stage tuple) -> [it, its effective stages, their StagePlan (None: not shared; False: not yet), the last
        # key found in its memo, what was found]
        self._stage_info: dict[int, list[Any]] = {}
        # chain -> True (entered once), its plan, or None (not shared)
        self._chain_plans: dict[tuple[str, str], tuple[chainmemo.ChainPlan, tuple[str, ...]] | bool | None] = {}
        self._shape_memos = {}
        self._bound_tokens = {}
        self._bound_values = {}
        no_policy = {w.line for w in ruleset.warnings if "has no policy" in w.message}
        self._dash_policy = {(t.name, c.name) for t in ruleset.tables for c in t.chains if c.line in no_policy}


    # ------------------------------------------------------------------------------------ hooks

    def _stage(self, table: str, chain: str, s: State) -> list[tuple[State, Terminal]]:
        """One built-in chain of one hook; ACCEPT and NAT results continue (None), DROP/REJECT end."""
        if table == "nat" and s.notrack:
            return [(s, None)]
        code = self._code(table, chain)
        if code is None:
            return [(s, None)]
        if table == "raw" and s.notrack is False and (chain == "OUTPUT" or not s.local_origin):
            # raw runs before conntrack (-300 < -200), except for the node's own packet coming back in through lo
            s.notrack = None
            out = self._stage_chain(table, chain, code, s)
            for s2, _ in out:
                if s2.notrack is None:  # conntrack runs next: the packet gets its connection
                    s2.notrack = False
            return out
        return self._stage_chain(table, chain, code, s)

    def _stage_chain(self, table: str, chain: str, code: ChainCode, s: State) -> list[tuple[State, Terminal]]:
        """`_stage` once the chain's code is found."""
        s.hook = chain
        out: list[tuple[State, Terminal]] = []
        if not code.rules:
            s.chains = ((table, chain), s.chains)
            results: list[tuple[State, Terminal]] = [(s, None)]
        else:
            results = self._run_chain(code, s, ())
        for s2, terminal in results:
            if terminal is None:
                policy = code.chain.policy or "ACCEPT"
                decision = self._policy_decision(table, chain, policy)
                if policy == "DROP":
                    out.append((s2, ("DROP", decision)))
                    continue
                if table == "filter":
                    s2.accept = decision
                out.append((s2, None))
            elif terminal[0] in ("DROP", "REJECT"):
                out.append((s2, terminal))
            else:
                if terminal[0] == "ACCEPT" and table == "filter":
                    s2.accept = terminal[1]
                out.append((s2, None))
        return out

    def _effective(self, stages: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """The stages that can do anything: chains the dump has, minus empty ones whose ACCEPT policy only
        lets the packet through (filter's are kept: their policy is the verdict)."""
        key = tuple(stages)
        found = self._effective_stages.get(key)
        if found is None:
            kept = []
            for table, chain in stages:
                found_chain = self.ruleset.chain(table, chain)
                if found_chain is None:
                    continue
                if not found_chain.rules and (found_chain.policy or "ACCEPT") == "ACCEPT" and table != "filter":
                    continue
                kept.append((table, chain))
            found = self._effective_stages[key] = tuple(kept)
        return found

    def _policy_decision(self, table: str, chain: str, policy: str) -> Decision:
        key = (table, chain, policy)
        found = self._policies.get(key)
        if found is None:
            found = self._policies[key] = Decision(table, chain, policy=policy)
        return found

    def _stages(self, s: State, stages: tuple[tuple[str, str], ...],
                then: Callable[[State], list[tuple[State, Terminal]]] | None = None,
                ) -> list[tuple[State, Terminal]]:
        # This runs for every branch after its DNAT, mostly to replay a recorded walk: the stages' effective
        # chains and plan are found by the identity of the (module-level) stage tuple, and a planned walk's
        # memo is read here.
        info = self._stage_info.get(id(stages))
        if info is None or info[0] is not stages:
            info = self._stage_info[id(stages)] = [stages, self._effective(stages), False, None, None]
        plan = info[2]
        if plan is False or plan is None:
            results = self._shared_stages(s, info[1])
            if plan is False:
                info[2] = self._plans.get(info[1], False)
        else:
            key, keyed_recent = plan.key(s)
            # (The branches of a Service after its DNAT mostly have the key of the branch before: compared with
            # it, not hashed (a Decision's hash is a Python call) and looked up. The memo's walks are exact for
            # their key, kept or cleared.)
            if key == info[3]:
                found = info[4]
            else:
                found = plan.memo.get(key)
                if found is not None:
                    info[3], info[4] = key, found
            results = replay(found, s, keyed_recent) if found is not None else self._shared_stages(s, info[1])
        if then is None:
            return results
        # The stages' walk (shared when it can be), then `then` on every branch that went through them (what
        # `_walk_stages(…, then)` does, in the same order).
        out: list[tuple[State, Terminal]] = []
        for s2, terminal in results:
            if terminal is not None:
                out.append((s2, terminal))
            else:
                out.extend(then(s2))
        return out

    def _shared_stages(self, s: State, stages: tuple[tuple[str, str], ...]) -> list[tuple[State, Terminal]]:
        """The walk through `stages` (effective ones), replayed from the stage memo when it can be."""
        if self.share:
            plan = self._plans.get(stages, False)
            if plan is False:
                # A plan reads every rule the stages can reach (all of KUBE-SERVICES): made only once the stages
                # are walked often enough to pay for it (a question about one address walks them a few times).
                walks = self._stage_walks[stages] = self._stage_walks.get(stages, 0) + 1
                if walks < self._plan_stages_after:
                    return self._walk_stages(s, stages, 0, None)
                plan = self._plans[stages] = stage_plan(self.ruleset, self.version, self._structures, stages)
            if plan is not None:
                key, keyed_recent = plan.key(s)
                found = plan.memo.get(key)
                if found is not None:
                    return replay(found, s, keyed_recent)
                path, chains, prob, assumptions = s.path, s.chains, s.prob, s.assumptions
                s.assumptions = ()
                results = self._walk_stages(s, stages, 0, None)
                recorded = record(results, path, chains, prob, assumptions)
                if recorded is not None:
                    if len(plan.memo) >= MEMO_SIZE:
                        plan.memo.clear()
                    plan.memo[key] = recorded
                return results
        return self._walk_stages(s, stages, 0, None)

    def _walk_stages(self, s: State, stages: tuple[tuple[str, str], ...], k: int,
                     then: Callable[[State], list[tuple[State, Terminal]]] | None) -> list[tuple[State, Terminal]]:
        if k == len(stages):
            return then(s) if then is not None else [(s, None)]
        if then is None and k + 1 == len(stages):
            # (After the last stage with nothing to follow, the stage's branches are the result: a Service's ten
            # branches leave nat PREROUTING this way.)
            return self._stage(stages[k][0], stages[k][1], s)
        out: list[tuple[State, Terminal]] = []
        for s2, terminal in self._stage(stages[k][0], stages[k][1], s):
            if terminal is not None:
                out.append((s2, terminal))
            else:
                out.extend(self._walk_stages(s2, stages, k + 1, then))
        return out

    def _after_output(self, s: State) -> list[tuple[State, Terminal]]:
        if not self.ctx.is_local(s.dst):
            return [(s, None)]
        s.in_iface = "lo"
        return self._stages(s, _LOOPBACK_IN)

    def _walk_hooks(self, s: State) -> list[tuple[State, Terminal]]:
        if self.ctx.is_local(s.src):
            s.local_origin = True
            if not self._route(s):
                verdict, note = unrouted(format_ip(s.dst, self.version), "own", self.version, s.out_iface == BLACKHOLE)
                s.assume(note)
                return [(s, (verdict.upper(), None))]
            return self._stages(s, _OUTPUT_NAT, self._output_filter)
        # (`_stages(s, _PREROUTING, self._after_prerouting)`, its loop spelled out: a Service's every branch)
        out: list[tuple[State, Terminal]] = []
        stages = self._stages
        is_local = self.ctx.is_local
        routed = self.routed
        for s2, terminal in stages(s, _PREROUTING):
            if terminal is not None:
                out.append((s2, terminal))
            elif is_local(s2.dst):
                out.extend(stages(s2, _LOCAL_IN))
            else:
                # (the routing decision on the destination after DNAT: FORWARD and POSTROUTING see it)
                if routed and not self._route(s2):
                    verdict, note = unrouted(format_ip(s2.dst, self.version), "forwarded", self.version,
                                             s2.out_iface == BLACKHOLE)
                    s2.assume(note)
                    out.append((s2, (verdict.upper(), None)))
                    continue
                out.extend(stages(s2, _FORWARD_POSTROUTING))
        return out

    def _output_filter(self, s: State) -> list[tuple[State, Terminal]]:
        if self.routed and not (iface := self.ctx.out_iface(s.dst)):
            # (nat OUTPUT's DNAT sent it where the node has no way out (it had one before): the kernel routes it
            # again in the nat hook itself and drops it there, ip_route_me_harder)
            verdict, note = unrouted(format_ip(s.dst, self.version), "rerouted", self.version, iface == BLACKHOLE)
            s.assume(note)
            return [(s, (verdict.upper(), None))]
        return self._stages(s, _OUTPUT_FILTER, self._post_output)

    def _route(self, s: State) -> bool:
        """The routing decision on the branch's destination: its output interface (lo for the node's own); with
        the node's routes, the route's. False when they have none for it (the kernel sends it nowhere)."""
        s.out_iface = iface = self.ctx.out_iface(s.dst)
        return bool(iface) or not self.routed

    def _post_output(self, s: State) -> list[tuple[State, Terminal]]:
        # The routing decision is taken again after nat OUTPUT rewrote the destination; the OUTPUT hook's own
        # chains still see the interface it started with (the hook's output device is set once, before it).
        self._route(s)
        return self._stages(s, _POSTROUTING, self._after_output)

    def _walk_fragment(self, s: State) -> list[tuple[State, Terminal]]:
        s.assume(FRAGMENT_ASSUMPTION)
        s.hook = "PREROUTING"
        results: list[tuple[State, Terminal]] = []
        nat = self._code("nat", FRAGMENT_NAT_CHAIN)
        starts = [(s, None)] if nat is None else self._run_chain(nat, s, ())
        for s1, terminal in starts:
            if terminal is not None and terminal[0] in ("DROP", "REJECT"):
                results.append((s1, terminal))
                continue
            results.extend(self._fragment_filter(s1, 0))
        return results

    def _fragment_filter(self, s: State, k: int) -> list[tuple[State, Terminal]]:
        if k == len(FRAGMENT_FILTER_CHAINS):
            return [(s, None)]
        code = self._code("filter", FRAGMENT_FILTER_CHAINS[k])
        if code is None:
            return self._fragment_filter(s, k + 1)
        s.hook = "FORWARD"
        out: list[tuple[State, Terminal]] = []
        for s2, terminal in self._run_chain(code, s, ()):
            if terminal is None or terminal[0] == "NAT":
                out.extend(self._fragment_filter(s2, k + 1))
            elif terminal[0] == "ACCEPT":
                s2.accept = terminal[1]
                out.append((s2, None))
            else:
                out.append((s2, terminal))
        return out

    # ------------------------------------------------------------------------------------ results

    def trace_many(self, packets: Sequence[Packet]) -> list[Trace]:
        """Trace many packets (e.g. every ClusterIP of a dump) with the cyclic garbage collector paused for
        the whole batch: what traces allocate is acyclic, and a full collection would rescan the ruleset."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return [self.trace(p) for p in packets]
        finally:
            if gc_was_enabled:
                gc.enable()

    def trace_chain(self, chain: str, packet: Packet, *, table: str = "nat") -> Trace:
        """`packet` entering `chain` directly, without the hooks: the same walk, from inside (the Service view
        reads a load-balancing chain's endpoint shares this way)."""
        code = self._code(table, chain)
        if code is None:
            raise TraceError(f"no chain {chain} in table {table}")
        state = State(ip_int(packet.src)[1], ip_int(packet.dst)[1], packet.sport, packet.dport,
                      packet.proto_number, packet.in_interface)
        state.hook = "OUTPUT" if self.ctx.is_local(state.src) else "PREROUTING"
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            finals = self._enter(code, state, ())
            original = join_host_port(packet.dst, packet.dport)
            outcomes = self._outcomes(finals, original, True)
        finally:
            if gc_was_enabled:
                gc.enable()
        return _new_trace(packet, "kube-proxy", outcomes, _FIRST_PACKET)

    def port_shape(self, calls: Sequence[tuple[str | None, Packet]], chains: Sequence[str]) -> Any:
        """The shape of a Service port's traces (portshape.py): equal keys, the same traces but for its values.
        None with routes: a shape does not hold which interface each of its addresses is routed out of."""
        if self.routed:
            return None
        from iptrace.iptables.portshape import port_shape

        return port_shape(self, calls, chains)

    def trace(self, packet: Packet, *, in_interface: str | None = None, assumptions: Sequence[str] = ()) -> Trace:
        """Every outcome of `packet`. `assumptions` are the caller's (e.g. pick_source's note on the source
        address); they are listed after the first-packet one."""
        if packet.version != self.version:
            raise InputError(f"the packet is IPv{packet.version} but the dump is IPv{self.version} "
                             f"({'ip6tables-save' if self.version == 6 else 'iptables-save'} output); "
                             f"trace it against the {'ip6tables' if packet.version == 6 else 'iptables'} dump")
        src = ip_int(packet.src)[1]
        to_loopback = for_this_host(packet.dst)
        if to_loopback:
            if not self.ctx.is_local(src):
                return senders_own_loopback(packet, self.entry,
                                            [NEW_CONNECTION, *(a for a in assumptions if a != NEW_CONNECTION)])
            packet, sent = from_the_node(packet)
            assumptions = (*assumptions, *sent)
        if self._unseen:
            assumptions = (*assumptions, *self._unseen)
        dst = ip_int(packet.dst)[1]
        state = State(src, dst, packet.sport, packet.dport, packet.proto_number,
                      in_interface if in_interface is not None else packet.in_interface)
        gc_was_enabled = gc.isenabled()
        # A walk allocates many small acyclic objects next to a ruleset of ~10^6 objects: a cyclic collection
        # triggered in between would scan the whole ruleset for nothing. (A Service view pauses it already.)
        if gc_was_enabled:
            gc.disable()
        try:
            if self.entry == "hooks":
                finals = self._walk_hooks(state)
            else:
                finals = self._walk_fragment(state)
            original = join_host_port(packet.dst, packet.dport)
            outcomes = self._outcomes(finals, original, self.entry == "kube-proxy")
        finally:
            if gc_was_enabled:
                gc.enable()
        if to_loopback:
            assumptions = (*assumptions, *loopback_notes(packet, outcomes, self._is_local_text))
        if not assumptions:
            made = False
            for o in outcomes:
                if o.assumptions:
                    made = True
                    break
            if not made:  # (the common case: the first-packet note alone)
                return _new_trace(packet, self.entry, outcomes, _FIRST_PACKET)
        notes: list[str] = [NEW_CONNECTION, *(a for a in assumptions if a != NEW_CONNECTION)]
        notes.extend(met_order([o.assumptions for o in outcomes], notes))  # (in the order the packet met them)
        return Trace(packet, self.entry, outcomes, tuple(notes))

    def _is_local_text(self, ip: str) -> bool:
        return self.ctx.is_local(ip_int(ip)[1])

    def _outcomes(self, branches: Sequence[tuple[State, Terminal]], original: str, fragment: bool,
                  ) -> tuple[Outcome, ...]:
        """The outcome of every final branch, in order; `fragment`: the walk entered kube-proxy's chains directly (a
        dump without the built-in chains, or trace_chain). (One loop for a trace's branches, ten for a Service's
        way in: what it looks up once per branch is looked up once.)"""
        finals = self._finals
        probabilities = self._probabilities
        version = self.version
        out = []
        for s, terminal in branches:
            decided: Decision | None
            destination = None
            key = (s.dst, s.dport)
            final = finals.get(key)
            if final is None:
                if len(finals) >= FINALS_SIZE:
                    finals.clear()
                final = finals[key] = join_host_port(format_ip(s.dst, version), s.dport)
            if terminal is not None and (terminal[0] == "DROP" or terminal[0] == "REJECT"):
                verdict, decided = terminal
            elif fragment and s.mark_drop is not None:
                verdict, decided = "DROP", s.mark_drop
                s.assume(f"line {decided.line}: the packet is marked by KUBE-MARK-DROP, which kubelet's "
                         "KUBE-FIREWALL chain drops")
            elif s.dnat:
                verdict, decided, destination = "DNAT", s.dnat_by, final
            elif s.accept is not None:
                verdict, decided = "ACCEPT", s.accept
                if decided.policy is not None and (decided.table, decided.chain) in self._dash_policy:
                    s.assume(f"built-in chain {decided.table} {decided.chain} has no policy in the dump ('-'): "
                             "assumed ACCEPT")
            else:
                verdict, decided = "CONTINUE", None
            # Branches of Services with the same endpoint count have the same probabilities.
            prob = s.prob
            probability = probabilities.get(prob)
            if probability is None:
                exact = Fraction(*prob)
                probability = (exact, float(exact))
                if len(probabilities) >= MEMO_SIZE:
                    probabilities.clear()
                probabilities[prob] = probability
            # Steps, chains and the Service label are built only when read (most outcomes of a Service view never
            # are).
            lazy = _new_branch(_Branch, (self, s.path, s.chains))
            out.append(new_outcome(verdict, destination, probability[1], s.kube_masq if fragment else s.masq,
                                   lazy.service, decided, lazy, probability[0], original, final, lazy.chains,
                                   s.assumptions))
        return tuple(out)


class _Branch(tuple):  # type: ignore[type-arg]
    """(tracer, path, chains) of a final branch: what its outcome reads of it only when asked — called, the Steps
    of its path; `service`, its Service label; `chains`, the chains it entered. One object for the three, not
    three closures (made, and freed, for each of ~10^5 outcomes of a Service view)."""

    __slots__ = ()

    def __call__(self) -> tuple[Step, ...]:
        compiled = compiled_path(self[1])
        steps = tuple(map(_path_step, compiled))  # (each rule's Step, once made: read without a call a rule)
        return steps if all(steps) else tuple(map(self[0]._step, compiled))

    def service(self) -> str | None:
        return self[0]._service(compiled_path(self[1]))  # type: ignore[no-any-return]

    def chains(self) -> tuple[tuple[str, str], ...]:
        return chain_list(self[2])


_new_branch = tuple.__new__
_path_step = attrgetter("_path_step")  # (Compiler._step's memo: None until the rule's Step is made)


# Trace(...) without the frozen dataclass's __init__ (one a way in and kind of client of every Service port), and
# the notes of a trace that made no assumption.
_new_trace = positional_new(Trace, ("packet", "entry", "outcomes", "assumptions"))
_FIRST_PACKET = (NEW_CONNECTION,)

_CACHE: list[tuple[Ruleset, tuple[Any, ...], Tracer]] = []
_CACHE_SIZE = 4


def trace(ruleset: Ruleset, packet: Packet, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
          names: Mapping[str, str] | None = None, in_interface: str | None = None,
          use_index: bool = True) -> Trace:
    """Trace one new connection; reuses a Tracer for the same ruleset object and options."""
    # `names` can hold thousands of entries: identity is the cache key (the Tracer keeps it alive).
    key = (tuple(node_ips), tuple(pod_cidrs), id(names) if names is not None else None, use_index)
    for rs, k, cached in _CACHE:
        if rs is ruleset and k == key:
            tracer = cached
            break
    else:
        tracer = Tracer(ruleset, node_ips=node_ips, pod_cidrs=pod_cidrs, names=names, use_index=use_index)
        _CACHE.insert(0, (ruleset, key, tracer))
        del _CACHE[_CACHE_SIZE:]
    return tracer.trace(packet, in_interface=in_interface)
