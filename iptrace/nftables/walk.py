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
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from iptrace.dataplane import (
    Decision,
    Outcome,
    Packet,
    Trace,
    for_this_host,
    from_the_node,
    join_host_port,
    loopback_notes,
    new_outcome,
    senders_own_loopback,
)
from iptrace.errors import TraceError
from iptrace.nftables.chains import ChainCode, ChainWalker, Terminal
from iptrace.nftables.evaluate import Context
from iptrace.nftables.hooks import Stage, base_chains, hook_stages, unwalked_tables
from iptrace.nftables.memo import MEMO_SIZE, Plan, make_plan, record, replay, replay_one
from iptrace.nftables.model import Chain, Ruleset, Table
from iptrace.nftables.state import State, cons_list, ip_int, is_loopback
from iptrace.nftables.steps import StepMaker
from iptrace.nftables.values import protocol
from iptrace.routes import BLACKHOLE, Routes, unrouted
from iptrace.text import met_order

# The hooks after the routing decision: (hook, with its NAT chains, entering through lo). A packet the node sends
# to itself comes back in through lo; its NAT mappings are made, so NAT chains are not called again.
_FORWARD = (("forward", True, False), ("postrouting", True, False))
_INPUT = (("input", True, False),)
_OUT = (("postrouting", True, False),)
_OUT_LOOPBACK = (("postrouting", True, False), ("prerouting", False, True), ("input", False, False))

# nf_conntrack's hooks on prerouting and output (NF_IP_PRI_CONNTRACK). Of a chain at exactly -200 the kernel runs
# whichever registered last first (when the first table that needs conntrack came, which the listing does not
# tell): it is taken as after conntrack, and the trace says so.
CONNTRACK_PRIORITY = -200
SNAT_HOOKS = ("postrouting", "input")  # (their NAT rewrites the source)
NEW_CONNECTION = "first packet of a new connection (ct state new, mark 0, no conntrack or dynamic-set entries yet)"


def _tests_out_iface(ruleset: Ruleset) -> bool:
    """Whether a rule may test the output interface (`oifname`, `oif`): the node's routes change nothing else
    when they route every address.
    (The input text is searched, else every rule's: a mention elsewhere, `oiftype`, a comment, only costs the
    port shapes.)"""
    if ruleset.text is not None:
        return "oif" in ruleset.text
    return any("oif" in rule.text for _, _, rule in ruleset.rules())


class Tracer(ChainWalker):
    """Traces packets through one nft Ruleset (both IP families when it has tables for both). Build once, call
    `trace(packet)` many times. `node_ips`: the node's own addresses (fib type local, and whether the node sent
    the packet); `names`: chain → "ns/svc:port" from the layout (chains kube-proxy named after their Service
    port label themselves)."""

    entry = "hooks"

    def __init__(self, ruleset: Ruleset, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
                 names: Mapping[str, str] | None = None, share: bool = True, routes: Routes | None = None) -> None:
        local = set()
        for ip in node_ips:
            try:
                local.add(str(ipaddress.ip_address(ip)))
            except ValueError:
                continue
        if routes is not None and all(t is None or t.routes_all for t in (routes.v4, routes.v6)) \
                and not _tests_out_iface(ruleset):
            routes = None  # (they would change nothing, and cost the port shapes)
        # share: replay the hooks after NAT, and a load-balancing chain, for branches they cannot tell apart
        super().__init__(ruleset, Context(frozenset(local), routes), frozenset(local), StepMaker(ruleset, names),
                         share)
        self.routes = routes
        self.node_ips = tuple(node_ips)
        self.pod_cidrs = tuple(pod_cidrs)
        self._plans: dict[tuple[Any, ...], Plan | None] = {}
        self._answers: dict[Any, Any] = {}  # the plans' answers by value (memo.py), shared by plans asking alike
        self._stages: dict[tuple[int, str], tuple[Stage, ...]] = {}
        self._policies: dict[tuple[str, str, str], Decision] = {}
        self._probabilities: dict[tuple[int, int], tuple[Fraction, float]] = {}
        self._unwalked = tuple(unwalked_tables(ruleset))
        self._bases = base_chains(ruleset)
        self._version_notes: dict[int, tuple[str, ...]] = {}

    # ------------------------------------------------------------------------------------------- public

    def trace(self, packet: Packet, *, in_interface: str | None = None, assumptions: Sequence[str] = ()) -> Trace:
        """Every outcome of `packet`'s first packet. `assumptions` are the caller's (e.g. how the source was
        chosen); they follow the first-packet one."""
        notes = [NEW_CONNECTION, *(a for a in assumptions if a != NEW_CONNECTION)] if assumptions else [
            NEW_CONNECTION]
        to_loopback = for_this_host(packet.dst)
        if to_loopback:
            if not self._is_local(packet.src):
                return senders_own_loopback(packet, "hooks", notes)
            packet, sent = from_the_node(packet)
            notes.extend(sent)
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
        notes.extend(self._notes(packet.version))
        if to_loopback:
            notes.extend(loopback_notes(packet, outcomes, self._is_local))
        notes.extend(met_order([o.assumptions for o in outcomes], notes))  # (in the order the packet met them)
        return Trace(packet, "hooks", outcomes, tuple(notes))

    def _notes(self, version: int) -> tuple[str, ...]:
        """The notes every trace of an IP version has after its first-packet one and the caller's (kept: the view
        asks ~10^4 traces)."""
        found = self._version_notes.get(version)
        if found is None:
            notes = []
            if self._unwalked:
                notes.append("tables or chains on other hooks are not walked (bridge, netdev, arp, ingress/egress): "
                             + ", ".join(self._unwalked))
            if not any(t.family in ("ip", "inet") if version == 4 else t.family in ("ip6", "inet")
                       for t in self.ruleset.tables):
                notes.append(f"the ruleset has no table for IPv{version} (ip{'6' if version == 6 else ''} "
                             "or inet): nothing decides")
            found = self._version_notes[version] = tuple(notes)
        return found

    def port_shape(self, calls: Sequence[tuple[str | None, Packet]], chains: Sequence[str]) -> Any:
        """The shape of a Service port's traces (portshape.py): equal keys, the same traces but for its values.
        None with routes: a shape does not hold which interface each of its addresses is routed out of."""
        if self.routes is not None:
            return None
        from iptrace.nftables.portshape import port_shape

        return port_shape(self, calls, chains)

    def trace_many(self, packets: Sequence[Packet]) -> list[Trace]:
        return [self.trace(p) for p in packets]

    def trace_chain(self, chain: str, packet: Packet) -> Trace:
        """`packet` entering `chain` of kube-proxy's table of its family directly (any table of the family that
        has the chain when there is no kube-proxy table): the endpoint shares of a load-balancing chain, by the
        same walk (entered as a jump enters it: shared alike). The walk stops where the chain does: masquerading
        (postrouting) is not reached."""
        s = self._start(packet, packet.in_interface)
        code = self._find_chain(chain, s.version)
        if code is None:
            raise TraceError(f"no chain {chain} in kube-proxy's table for IPv{packet.version}")
        s.hook = "output" if self._is_local(s.src) else "prerouting"
        enabled = gc.isenabled()
        gc.disable()
        try:
            finals = self._enter(code, s, ())
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
            found = self._chain(kube, name)
            if found is not None:
                return found
        for (family, _), tc in self._tables.items():
            if family in (("ip", "inet") if version == 4 else ("ip6", "inet")):
                found = self._chain(tc, name)
                if found is not None:
                    return found
        return None

    def _walk(self, s: State) -> list[tuple[State, Terminal]]:
        out: list[tuple[State, Terminal]] = []
        s.notrack = None  # no connection until the first hook's conntrack (_base)
        if self._is_local(s.src):
            s.local_origin = True
            if not self._route(s):
                verdict, note = unrouted(s.dst, "own", s.version, s.out_iface == BLACKHOLE)
                s.assume(note)
                return [(s, (verdict, None))]
            branches = self._hook(s, "output")
            for s1, t1 in branches:
                if s1.notrack is None:  # (no base chain after conntrack on the hook)
                    s1.notrack = False
                if t1 is None:
                    # The route is looked up again after output's DNAT (the hook's chains all saw the interface it
                    # started with; one it has none for was dropped in the hook, _rerouted); a packet for the node
                    # itself comes back in through lo.
                    self._route(s1)
            self._tails(branches, _OUT_LOOPBACK, _OUT, out)
            return out
        branches = self._hook(s, "prerouting")
        for s1, _ in branches:
            if s1.notrack is None:  # (no base chain after conntrack on the hook)
                s1.notrack = False
        self._tails(branches, _INPUT, _FORWARD, out)
        return out

    def _route(self, s: State) -> bool:
        """The routing decision on the branch's destination: its output interface (lo for the node's own); with
        the node's routes, the route's. False when they have none for it (the kernel sends it nowhere)."""
        s.out_iface = iface = self.ctx.out_iface(s.dst, s.version)
        return bool(iface) or self.routes is None or self.routes.table(s.version) is None

    def _rerouted(self, branch: tuple[State, Terminal]) -> tuple[State, Terminal]:
        """A branch of the node's own after output's nat chains: dropped there when their DNAT sent it where the
        node's routes have no route (the nat hook routes it again, ip_route_me_harder; it had one before)."""
        s, term = branch
        if term is None and self.routes.table(s.version) is not None and not (  # type: ignore[union-attr]
                iface := self.ctx.out_iface(s.dst, s.version)):
            verdict, note = unrouted(s.dst, "rerouted", s.version, iface == BLACKHOLE)
            s.assume(note)
            return s, (verdict, None)
        return branch

    def _tails(self, branches: list[tuple[State, Terminal]], to_node: tuple[tuple[str, bool, bool], ...],
               elsewhere: tuple[tuple[str, bool, bool], ...], out: list[tuple[State, Terminal]]) -> None:
        """Every branch that passed a hook, through the hooks after the routing decision: `to_node` for a
        destination of the node itself, else `elsewhere`; each replayed from an earlier branch the rules there
        cannot tell apart from it (memo.py, as _shared does; spelled out here with the two plans found once:
        this runs for every branch of every trace, most of them for endpoints elsewhere)."""
        local = self.local
        routed = self.routes is not None
        plans: dict[Any, tuple[int, Plan | None]] = {}  # (the branches of one trace have one IP version)
        for s1, t1 in branches:
            if t1 is not None:
                out.append((s1, t1))
                continue
            dst = s1.dst
            if dst in local or is_loopback(dst):
                seq = to_node
            else:
                seq = elsewhere
                # (the routing decision on the destination after DNAT: forward and postrouting see it)
                if routed and not self._route(s1):
                    verdict, note = unrouted(dst, "forwarded", s1.version, s1.out_iface == BLACKHOLE)
                    s1.assume(note)
                    out.append((s1, (verdict, None)))
                    continue
            if not self.share:
                out.extend(self._walk_seq(s1, seq))
                continue
            found = plans.get(seq)
            if found is None or found[0] != s1.version:
                key = (s1.version, seq)
                plan = self._plans.get(key, False)
                if plan is False:
                    plan = self._plans[key] = self._plan(key)
                plans[seq] = (s1.version, plan)
            else:
                plan = found[1]
            if plan is None:
                out.extend(self._walk_seq(s1, seq))
                continue
            found = self._recorded(plan, s1, self._walk_seq, seq)
            if len(found) == 1:
                out.append(replay_one(found[0], s1))
            else:
                out.extend(replay(found, s1))

    def _shared(self, key: tuple[Any, ...], s: State, walk: Callable[[State, Any], list[tuple[State, Terminal]]],
                arg: Any) -> list[tuple[State, Terminal]]:
        """`walk(s, arg)`, replayed from an earlier branch when the chains it walks (the plan of `key`: a tail
        of hooks, or the stages of a hook after its NAT) cannot tell the two apart."""
        plan = self._plans.get(key, False)
        if plan is False:
            plan = self._plans[key] = self._plan(key)
        if plan is None:
            return walk(s, arg)
        return replay(self._recorded(plan, s, walk, arg), s)

    @staticmethod
    def _recorded(plan: Plan, s: State, walk: Callable[[State, Any], list[tuple[State, Terminal]]],
                  arg: Any) -> list[tuple[Any, ...]]:
        """What `walk` did from a blank state like `s` under `plan` (memo.record), walked once per key of the
        plan: what replay applies to `s`."""
        k = plan.key(s)
        found = plan.memo.get(k)
        if found is None:
            start = s.blank()
            before = (start.accept, start.dnat_by)
            found = record(walk(start, arg), before)
            if len(plan.memo) >= MEMO_SIZE:
                plan.memo.clear()
            plan.memo[k] = found
        return found

    def _plan(self, key: tuple[Any, ...]) -> Plan | None:
        """The plan of a tail of hooks (version, seq) or of a hook's stages from the k-th (version, hook, k)."""
        stages: list[Stage] = []
        if len(key) == 2:
            snat = False
            for hook, nat, _ in key[1]:
                for stage in self._hook_stages(key[0], hook):
                    if nat or not stage.nat:
                        if snat and not stage.nat:
                            return None  # (it sees the source SNAT rewrote, which a plan's key does not hold)
                        snat = snat or (stage.nat and hook in SNAT_HOOKS)
                        stages.append(stage)
        else:
            hook_stages = self._hook_stages(key[0], key[1])
            if key[1] in SNAT_HOOKS and any(stage.nat for stage in hook_stages[:key[2]]):
                return None
            stages.extend(hook_stages[key[2]:])
        codes = []
        for stage in stages:
            for table, chain in stage.chains:
                code = self._chain(self._tables[(table.family, table.name)], chain.name)
                if code is not None:
                    codes.append(code)
        return make_plan(codes, self._compiled, self._targets, caches=self._answers)

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
        stages = self._stages.get((s.version, hook)) or self._hook_stages(s.version, hook)
        s.hook = hook
        states: list[tuple[State, Terminal]] = [(s, None)]
        after_nat = False
        for k, stage in enumerate(stages):
            if stage.nat and not nat:
                continue
            if after_nat and self.share:
                # The filter chains after NAT (output's filter-output): every branch of a load-balancing split
                # meets them, replayed like the hooks after the routing decision.
                following = []
                for st, term in states:
                    if term is not None:
                        following.append((st, term))
                    else:
                        following.extend(self._shared((s.version, hook, k), st, self._walk_stages, (hook, k)))
                return following
            following = []
            for st, term in states:
                if term is not None:
                    following.append((st, term))
                elif stage.nat:
                    following.extend(self._nat_stage(stage.chains, 0, st))
                else:
                    following.extend(self._base(*stage.chains[0], st))
            if stage.nat and hook == "output" and self.routes is not None:
                following = list(map(self._rerouted, following))
            states = following
            after_nat = stage.nat and len(states) > 1 and not any(x.nat for x in stages[k + 1:])
        return states

    def _walk_stages(self, s: State, where: tuple[str, int]) -> list[tuple[State, Terminal]]:
        """The (filter) stages of hook `where[0]` from the `where[1]`-th on."""
        hook, k = where
        states: list[tuple[State, Terminal]] = [(s, None)]
        for stage in self._hook_stages(s.version, hook)[k:]:
            following: list[tuple[State, Terminal]] = []
            for st, term in states:
                if term is not None:
                    following.append((st, term))
                else:
                    following.extend(self._base(*stage.chains[0], st))
            states = following
        return states

    def _hook_stages(self, version: int, hook: str) -> tuple[Stage, ...]:
        key = (version, hook)
        stages = self._stages.get(key)
        if stages is None:
            stages = self._stages[key] = hook_stages(self.ruleset, version, hook, self._bases)
        return stages

    def _nat_stage(self, chains: tuple[tuple[Table, Chain], ...], k: int, s: State) -> list[tuple[State, Terminal]]:
        """The NAT chains of one hook in their order, until one set up the mapping (nf_nat_inet_fn); none for an
        untracked packet (nf_nat_inet_fn passes a packet without a connection)."""
        if k == len(chains) or s.notrack:
            return [(s, None)]
        dnat_by, snat = s.dnat_by, s.snat
        out: list[tuple[State, Terminal]] = []
        for s2, term in self._base(*chains[k], s):
            # (a mapping set up: its Decision compared by value only when both are Decisions)
            d = s2.dnat_by
            if term is not None or s2.snat != snat or (d is not dnat_by and (
                    d is None or dnat_by is None or d != dnat_by)):
                out.append((s2, term))
            else:
                out.extend(self._nat_stage(chains, k + 1, s2))
        return out

    def _base(self, table: Table, chain: Chain, s: State) -> list[tuple[State, Terminal]]:
        code = self._chain(self._tables[(table.family, table.name)], chain.name)
        assert code is not None and chain.base is not None
        if s.snat and chain.base.type != "nat":
            self._translated_source(s)
        if s.notrack is None and chain.base.priority >= CONNTRACK_PRIORITY:
            if chain.base.priority == CONNTRACK_PRIORITY:
                s.assume(f"{code.table.label} {chain.name}: at priority -200, conntrack's own, assumed to run after "
                         "conntrack (it runs before it when it was created after conntrack's hooks were)")
            s.notrack = False  # conntrack (-200) has run: the packet has its connection
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

    def _translated_source(self, s: State) -> None:
        """The source as the chains after SNAT see it (nf_nat_packet rewrites it in the NAT hook itself): the
        address `snat to` named, or for masquerade the outgoing interface's, which the rules do not say (the node
        address closest to the destination stands for it)."""
        if isinstance(s.snat, str):
            s.src = s.snat
            return
        own = sorted(ip for ip in self.local if (":" in ip) == (s.version == 6))
        if not own:
            s.assume("masquerade: the source becomes the address of the interface the packet leaves by, which "
                     "neither the rules nor the node addresses say: later rules are assumed to see the original one")
            return
        dst = ip_int(s.dst)
        pick = min(own, key=lambda ip: (ip_int(ip) ^ dst).bit_length())
        if s.src != pick:
            s.src = pick
            s.assume(f"masquerade: the source becomes the address of the interface the packet leaves by, which the "
                     f"rules do not say; shown as the node address closest to the destination, {pick}")

    def _policy(self, table: str, chain: str, policy: str) -> Decision:
        key = (table, chain, policy)
        found = self._policies.get(key)
        if found is None:
            found = self._policies[key] = Decision(table, chain, policy=policy)
        return found

    # ------------------------------------------------------------------------------------------- chains

    # ------------------------------------------------------------------------------------------- results

    def _outcome(self, s: State, term: Terminal, original: str) -> Outcome:
        decided: Decision | None
        destination = None
        dst = s.dst
        final = join_host_port(dst, s.dport)
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
        return new_outcome(verdict, destination, probability[1], s.masq,  # type: ignore[arg-type]
                       lambda: steps.service(cons_list(path_cell)), decided,
                       lambda: steps.steps(cons_list(path_cell)), probability[0], original, final,
                       lambda: tuple(cons_list(chains_cell)), s.assumptions)
