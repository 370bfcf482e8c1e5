"""The walk: a new connection through the hooks (or kube-proxy's top-level chains), branch by branch.

`Tracer(ruleset, …)` compiles rules lazily and keeps per-chain indexes, so that tracing every Service of a
160,000-rule dump costs little more than the rules each packet actually meets. `trace()` is the convenience
function over a small cache of tracers.
"""

from __future__ import annotations

import bisect
import gc
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from iptrace.dataplane import Decision, Entry, Outcome, Packet, Step, Trace, join_host_port
from iptrace.errors import InputError, TraceError
from iptrace.iptables import chainmemo
from iptrace.iptables.index import MIN_RULES, ChainIndex, KeyPlan, rule_key
from iptrace.iptables.layout import parse_comment
from iptrace.iptables.matchers import (
    NEW_CONNECTION,
    Assumed,
    Binder,
    Bound,
    Effect,
    MatchPlan,
    Net,
    Structure,
    Test,
    bind_matches,
    binder_for,
    fast_tokens,
    mark_value,
    rule_comment,
    rule_structure,
)
from iptrace.iptables.memo import (
    ALWAYS,
    BOTH,
    HOST,
    MAX_CLOSURE_RULES,
    PACKET_WRITERS,
    PORT,
    StagePlan,
    record,
    replay,
    rule_target,
    structure_reads,
)
from iptrace.iptables.model import BUILTIN_CHAINS, Chain, Rule, Ruleset, RuleShape, unquote
from iptrace.iptables.options import BUILTIN_TARGETS
from iptrace.iptables.state import Context, State, format_ip, ip_int, parse_net

# Actions of a compiled rule.
JUMP, GOTO, RETURN, ACCEPT, DROP, REJECT, DNAT, SNAT, MASQUERADE, REDIRECT, NETMAP = range(11)
SET_MARK, NOTRACK, CONTINUE, UNKNOWN, ACCEPT_ASSUMED = range(11, 16)

# Targets that change nothing iptrace models and return to the chain (logging, QoS, checksums, …).
_PASSIVE_TARGETS = frozenset({
    "LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "CHECKSUM", "TCPMSS", "DSCP", "TOS", "TTL", "HL", "ECN",
    "CLASSIFY", "SECMARK", "CONNSECMARK", "IDLETIMER", "LED", "RATEEST", "TCPOPTSTRIP", "SET", "TEE", "CT",
})
# Terminating targets whose effect lies outside the rules (a userspace program, a transparent proxy).
_HANDED_OFF = {"QUEUE": "queued to a userspace program", "NFQUEUE": "queued to a userspace program",
               "TPROXY": "handed to a transparent proxy socket", "SYNPROXY": "answered by SYNPROXY",
               "MIRROR": "mirrored back"}

# Hook order (net/netfilter priorities): raw -300, mangle -150, nat DNAT -100, filter 0, security 50,
# nat SNAT 100.
_PREROUTING = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"))
_LOCAL_IN = (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT"), ("nat", "INPUT"))
_FORWARD = (("mangle", "FORWARD"), ("filter", "FORWARD"), ("security", "FORWARD"))
_POSTROUTING = (("mangle", "POSTROUTING"), ("nat", "POSTROUTING"))
_OUTPUT = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"), ("filter", "OUTPUT"),
           ("security", "OUTPUT"))
# A node-to-itself packet comes back in through lo; its NAT bindings were made on the way out, so the nat
# table is not consulted again (nf_nat_inet_fn: one binding per manipulation type).
_LOOPBACK_IN = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "INPUT"), ("filter", "INPUT"),
                ("security", "INPUT"))

# SPEC.md "Fragments without built-in chains".
FRAGMENT_NAT_CHAIN = "KUBE-SERVICES"
FRAGMENT_FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_MARK_DROP = "KUBE-MARK-DROP"

FRAGMENT_ASSUMPTION = (
    "the dump does not wire the built-in chains: entered nat KUBE-SERVICES, then filter KUBE-SERVICES, "
    "KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and KUBE-PROXY-FIREWALL directly; masquerade = the path crossed "
    "a jump to KUBE-MARK-MASQ")

# "ns/svc:port" (or "ns/svc") at the start of a kube-proxy comment or after "for "/"to ".
_SERVICE_RE = re.compile(r"(?:^|\bfor |\bto )([a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(?::[-a-z0-9]+)?)")

# Recorded walks kept per stage sequence (a few per distinct mark/conntrack state in practice).
MEMO_SIZE = 4096

# A terminal result of a chain walk: (verdict, decision); None = the chain returned / fell off its end.
Terminal = tuple[str, Decision] | None


class Compiled:
    """One rule, ready to test and apply. Step and Decision are built on first use (most rules never
    decide anything and never end up in a reported path)."""

    # Slots: a trace of every Service of a big dump compiles ~10^5 rules.
    __slots__ = ("_decision", "_step", "access", "action", "arg", "assumed", "complement", "dst", "effects", "label",
                 "names_label", "never", "note", "probability", "rule", "src", "sub", "table", "target", "tests")

    def __init__(self, table: str, rule: Rule, matches: Bound) -> None:
        self.table = table
        self.rule = rule
        self.tests: tuple[Test, ...] = matches.tests
        self.assumed: tuple[Assumed, ...] = matches.assumed
        self.effects: tuple[Effect, ...] = matches.effects
        # Branch weights as (numerator, denominator) int pairs: exact like Fraction, without normalising at
        # every split (the outcome normalises once).
        branch = matches.branch
        self.probability: tuple[int, int] | None = branch[0] if branch is not None else None
        self.complement: tuple[int, int] = branch[1] if branch is not None else (0, 1)
        self.never = matches.never
        # -s and -d as (mask, network, negated), tested before `tests` (matchers.Net)
        self.src: Net | None = None
        self.dst: Net | None = None
        self.action = CONTINUE
        self.arg: Any = None
        self.note: str | None = None
        self.target = ""
        self.label: str | None = None  # from the rule's comment, "" when none (see service_label)
        self.names_label: str | None = None  # from the Tracer's `names`, "" when none (see Tracer._service)
        self._step: Step | None = None
        self._decision: Decision | None = None
        self.sub: ChainCode | None = None  # the jump target, resolved on first use
        self.access: chainmemo.Access | None = None  # what it reads and writes (for chainmemo)

    @property
    def step(self) -> Step:
        if self._step is None:
            rule = self.rule
            self._step = Step(self.table, rule.chain, rule.line, f"-A {rule.chain} {rule.text}".rstrip())
        return self._step

    @property
    def service_label(self) -> str | None:
        """The "ns/svc:port" a kube-proxy comment on this rule names, if any."""
        if self.label is None:
            comment = rule_comment(self.rule)
            found = _SERVICE_RE.search(comment) if comment else None
            self.label = found.group(1) if found else ""
        return self.label or None

    @property
    def decision(self) -> Decision:
        if self._decision is None:
            self._decision = Decision(self.table, self.rule.chain, self.rule.line)
        return self._decision


class ChainCode:
    __slots__ = ("chain", "compiled", "index", "key", "name", "rules", "table", "table_chains")

    def __init__(self, table: str, chain: Chain, index: ChainIndex | None, table_chains: Mapping[str, str]) -> None:
        self.table = table
        self.table_chains = table_chains  # the chains a rule of this table can jump to (name → name)
        self.name = chain.name
        self.key = (table, chain.name)
        self.chain = chain
        self.rules = chain.rules
        self.compiled: list[Compiled | None] = [None] * len(chain.rules)
        self.index = index


def _wired(ruleset: Ruleset) -> bool:
    """Whether the dump's built-in chains carry the traffic (else a kube-proxy fragment)."""
    for table in ruleset.tables:
        builtin = BUILTIN_CHAINS.get(table.name, ())
        if any(c.rules for c in table.chains if c.name in builtin):
            return True
    kube = ruleset.chain("nat", FRAGMENT_NAT_CHAIN) is not None or any(
        ruleset.chain("filter", name) is not None for name in FRAGMENT_FILTER_CHAINS)
    return not kube


def _parse_nat_to(text: str, version: int) -> tuple[int | None, int | None, str | None]:
    """`ip`, `ip:port`, `[v6]:port`, ranges `a-b:p-q` → (first address, first port, note on ranges)."""
    if version == 4 and "-" not in text and "/" not in text and not text.startswith("["):
        # kube-proxy's `a.b.c.d:port` (one per endpoint): the general reading below, minus what cannot apply.
        addr_part, _, port_part = text.partition(":")
        if addr_part:
            try:
                addr_version, addr = ip_int(addr_part)
            except ValueError:
                raise TraceError(f"cannot read NAT address {text!r}") from None
            if addr_version != version:
                raise TraceError(f"NAT address {addr_part} is not IPv{version}")
            return addr, int(port_part) if port_part else None, None
    addr_part, port_part = text, ""
    if text.startswith("["):
        addr_part, _, rest = text[1:].partition("]")
        port_part = rest[1:] if rest.startswith(":") else ""
    elif version == 4 or text.count(":") == 1:
        addr_part, _, port_part = text.partition(":")
    note = None
    first_addr = addr_part.split("-")[0]
    if "-" in addr_part or "-" in port_part:
        note = f"NAT to the range {text}: the first address/port assumed"
    if "/" in port_part:  # port range with a base (newer iptables: a-b/base)
        port_part = port_part.split("/")[0]
    addr = None
    if first_addr:
        try:
            addr_version, addr = ip_int(first_addr)
        except ValueError:
            raise TraceError(f"cannot read NAT address {text!r}") from None
        if addr_version != version:
            raise TraceError(f"NAT address {first_addr} is not IPv{version}")
    port = int(port_part.split("-")[0]) if port_part else None
    return addr, port, note


class Tracer:
    """Traces packets through one Ruleset. Build once, call `.trace(packet)` many times.

    node_ips: the node's own addresses (`--dst-type LOCAL`, and whether a packet is node-originated or for
    the node). pod_cidrs: kept for callers choosing sources. names: chain name → "ns/svc:port" labels from
    the kube view (None: labels come from the rules' comments). ipsets: known ipset members (set name →
    addresses/CIDRs); sets not listed have unknown membership. share: replay the walk after NAT for branches
    the rules there cannot tell apart (memo.py; off only to check that it changes nothing).
    """

    def __init__(self, ruleset: Ruleset, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
                 names: Mapping[str, str] | None = None, use_index: bool = True,
                 ipsets: Mapping[str, Sequence[str]] | None = None, share: bool = True) -> None:
        self.ruleset = ruleset
        self.version = 6 if ruleset.family == "ipv6" else 4
        self.ctx = Context.build(self.version, node_ips, ipsets)
        self.node_ips = tuple(node_ips)
        self.pod_cidrs = tuple(pod_cidrs)
        self.names = names
        self.use_index = use_index
        self.share = share
        self._plans: dict[tuple[tuple[str, str], ...], StagePlan | None] = {}
        self.entry: Entry = "hooks" if _wired(ruleset) else "kube-proxy"
        self._codes: dict[tuple[str, str], ChainCode | None] = {}
        self._structures: dict[object, Structure] = {}
        self._groups: dict[object, MatchPlan] = {}
        self._binders: dict[int, Binder] = {}
        self._shape_binders: dict[RuleShape | None, tuple[Structure, Binder]] = {}
        self._chain_names: dict[str, dict[str, str]] = {}
        self._probabilities: dict[tuple[int, int], tuple[Fraction, float]] = {}
        self._bound: dict[object, Bound] = {}
        self._policies: dict[tuple[str, str, str], Decision] = {}
        self._effective_stages: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        self._chain_plans: dict[tuple[str, str], tuple[chainmemo.ChainPlan, tuple[str, ...]] | None] = {}
        no_policy = {w.line for w in ruleset.warnings if "has no policy" in w.message}
        self._dash_policy = {(t.name, c.name) for t in ruleset.tables for c in t.chains if c.line in no_policy}

    # ------------------------------------------------------------------------------------ compile

    def _code(self, table: str, chain: str) -> ChainCode | None:
        key = (table, chain)
        code = self._codes.get(key, False)
        if code is False:
            found = self.ruleset.chain(table, chain)
            if found is None:
                code = None
            else:
                index = None
                if self.use_index and len(found.rules) >= MIN_RULES:
                    index = ChainIndex.build(found.rules, self.version, self._structures)
                names = self._chain_names.get(table)
                if names is None:
                    found_table = self.ruleset.table(table)
                    names = self._chain_names[table] = {
                        c.name: c.name for c in found_table.chains} if found_table is not None else {}
                code = ChainCode(table, found, index, names)
            self._codes[key] = code
        return code  # type: ignore[return-value]

    def _compile(self, code: ChainCode, i: int) -> Compiled:
        rule = code.rules[i]
        tokens = fast_tokens(rule.text)
        shape = rule.shape
        found = self._shape_binders.get(shape)
        if found is None:
            structure = rule_structure(rule, tokens, self._structures)
            binder = binder_for(structure, self._binders)
            if self._structures.get(shape) is structure:  # (else the structure depends on the rule's tokens)
                self._shape_binders[shape] = (structure, binder)
        else:
            structure, binder = found
        matches, src, dst, addresses, never = bind_matches(rule, self.ctx, binder, tokens, self._bound,
                                                           self._groups)
        c = Compiled(code.table, rule, matches)
        c.src = src
        c.dst = dst
        if addresses:
            c.tests = addresses + matches.tests  # (pure tests: their order does not matter)
        if never:
            c.never = True
        if shape is not None and shape.target_index >= 0:
            name = tokens[shape.target_index]
            chain = code.table_chains.get(name) if name not in BUILTIN_TARGETS else None
            if chain is not None:
                # The chain's own name object: the token would be one more string kept per rule.
                c.target = c.arg = chain
                c.action = GOTO if shape.goto else JUMP
            else:
                c.target = name
                self._compile_target(code, rule, c, name, tokens, structure)
        c.access = chainmemo.rule_access(structure, c.target, bool(addresses))
        code.compiled[i] = c
        return c

    def _compile_target(self, code: ChainCode, rule: Rule, c: Compiled, name: str, tokens: Sequence[str],
                        structure: Structure) -> None:
        """A target other than a jump to a chain of the table."""
        where = f"line {rule.line}"
        # An option's first value (`Opt.value`); later repeats of an option win, as in `dict(options)`.
        opts = {opt: (unquote(tokens[idx[0]]) if tokens[idx[0]][0] == '"' else tokens[idx[0]]) if idx else ""
                for opt, _negated, idx in structure[1]}
        if name == "RETURN":
            c.action = RETURN
        elif name in ("ACCEPT", "DROP", "REJECT"):
            c.action = {"ACCEPT": ACCEPT, "DROP": DROP, "REJECT": REJECT}[name]
        elif name == "DNAT":
            to = opts.get("--to-destination", "")
            addr, port, c.note = _parse_nat_to(to, self.version) if to else (None, None, None)
            c.action, c.arg = DNAT, (addr, port)
            if not to:
                c.note = f"{where}: DNAT without --to-destination: destination assumed unchanged"
        elif name == "REDIRECT":
            ports = opts.get("--to-ports", "")
            c.action, c.arg = REDIRECT, int(ports.split("-")[0]) if ports else None
        elif name in ("SNAT", "MASQUERADE"):
            c.action = SNAT if name == "SNAT" else MASQUERADE
        elif name == "NETMAP":
            net = parse_net(opts.get("--to", ""), self.version) if opts.get("--to") else None
            c.action, c.arg = NETMAP, net
        elif name in ("MARK", "CONNMARK"):
            c.action, c.arg = SET_MARK, _mark_effect(name, opts)
        elif name == "NOTRACK" or (name == "CT" and "--notrack" in opts):
            c.action = NOTRACK
        elif name in _PASSIVE_TARGETS:
            c.action = CONTINUE
        elif name in _HANDED_OFF:
            c.action = ACCEPT_ASSUMED
            c.note = f"{where}: -j {name}: {_HANDED_OFF[name]}; assumed it lets the connection through"
        elif name in BUILTIN_TARGETS:
            c.action = UNKNOWN
            c.note = f"{where}: -j {name} is not modeled: assumed it returns to the chain without changing " \
                     "the packet"
        else:
            c.action = UNKNOWN
            c.note = f"{where}: -j {name}: no such chain in table {code.table} and not a known target; " \
                     "assumed it returns to the chain"

    # ------------------------------------------------------------------------------------ walk

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
            plan = self._chain_plans[code.key] = self._chain_plan(code) if self.share else None
        if plan is None:
            return self._run_chain(code, s, stack)
        chain_plan, written = plan
        key = chain_plan.key(s)
        found = chain_plan.memo.get(key)
        if found is None:
            start = s.copy()
            start.path = start.chains = None
            start.prob = (1, 1)
            start.assumptions = ()
            before = start.copy()
            found = chainmemo.record(self._run_chain(code, start, stack), before)
            if len(chain_plan.memo) >= chainmemo.MEMO_SIZE:
                chain_plan.memo.clear()
            chain_plan.memo[key] = found
        return chainmemo.replay(found, s, written)

    def _chain_plan(self, code: ChainCode) -> tuple[chainmemo.ChainPlan, tuple[str, ...]] | None:
        """How to key the walk of `code`'s closure, or None when it cannot be shared (see chainmemo.py)."""
        fields: set[str] = set()
        raw: set[str] = set()
        src_nets: list[tuple[int, int]] = []
        dst_nets: list[tuple[int, int]] = []
        seen: set[tuple[str, str]] = set()
        todo = [code]
        count = 0
        split = False
        while todo:
            chain = todo.pop()
            if chain.key in seen:
                continue
            seen.add(chain.key)
            count += len(chain.rules)
            if chain.index is not None or count > chainmemo.MAX_CLOSURE_RULES:
                return None
            for i in range(len(chain.rules)):
                c = chain.compiled[i] or self._compile(chain, i)
                access = c.access
                if access is None or not access.known:
                    return None
                fields |= access.fields
                raw |= access.raw
                split = split or c.probability is not None
                if c.src is not None:
                    src_nets.append((c.src[0], c.src[1]))
                if c.dst is not None:
                    dst_nets.append((c.dst[0], c.dst[1]))
                if c.action == JUMP or c.action == GOTO:
                    sub = c.sub
                    if sub is None:
                        sub = c.sub = self._code(chain.table, c.arg)
                    if sub is not None:
                        todo.append(sub)
        if count < 8 and not split:
            return None  # a closure this small walks faster than its key is computed and its walk replayed
        fields.add("proto")  # every port test reads it
        written = tuple(sorted(fields - {"proto", "hook", "local_origin", "in_iface", "out_iface"}))
        return chainmemo.ChainPlan(fields, raw, src_nets, dst_nets), written

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
            for s2, terminal in results:
                if terminal is None:
                    back.append(s2)
                else:
                    out.append((s2, terminal))
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
            addr, port = c.arg
            if c.note:
                s.assume(c.note)
            if addr is not None:
                s.dst = addr
            if port is not None:
                s.dport = port
            s.dnat = True
            s.dnat_by = c.decision
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

    # ------------------------------------------------------------------------------------ hooks

    def _stage(self, table: str, chain: str, s: State) -> list[tuple[State, Terminal]]:
        """One built-in chain of one hook; ACCEPT and NAT results continue (None), DROP/REJECT end."""
        if table == "nat" and s.notrack:
            return [(s, None)]
        code = self._code(table, chain)
        if code is None:
            return [(s, None)]
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

    def _stages(self, s: State, stages: Sequence[tuple[str, str]],
                then: Callable[[State], list[tuple[State, Terminal]]] | None = None,
                ) -> list[tuple[State, Terminal]]:
        stages = self._effective(stages)
        if then is None and self.share:
            plan = self._plans.get(stages, False)
            if plan is False:
                plan = self._plans[stages] = self._stage_plan(stages)
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
        return self._walk_stages(s, stages, 0, then)

    def _walk_stages(self, s: State, stages: tuple[tuple[str, str], ...], k: int,
                     then: Callable[[State], list[tuple[State, Terminal]]] | None) -> list[tuple[State, Terminal]]:
        if k == len(stages):
            return then(s) if then is not None else [(s, None)]
        out: list[tuple[State, Terminal]] = []
        for s2, terminal in self._stage(stages[k][0], stages[k][1], s):
            if terminal is not None:
                out.append((s2, terminal))
            else:
                out.extend(self._walk_stages(s2, stages, k + 1, then))
        return out

    def _stage_plan(self, stages: tuple[tuple[str, str], ...]) -> StagePlan | None:
        """What the rules reachable from `stages` read (memo.py), or None when their walk cannot be shared.

        A rule with an exact destination host, or an exact protocol and destination port (what the index files
        it under, indexed chain or not), fails for every packet without them: what it reads, and what the
        chains it jumps to read, only counts for packets that have them."""
        reads: list[set[str]] = [set(), set(), set(), set()]
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
            found_chain = self.ruleset.chain(table, chain)
            if found_chain is None:
                continue
            count += len(found_chain.rules)
            if count > MAX_CLOSURE_RULES:
                return None
            found = self.ruleset.table(table)
            for rule in found_chain.rules:
                key, host = rule_key(rule, self.version, self._structures, plans, alive)
                here = label
                if key is not None:
                    ports.add(key[:2])
                    if key[2] is not None:
                        hosts.add(key[2])
                    here |= PORT if key[2] is None else BOTH
                elif host is not None:
                    hosts.add(host)
                    here |= HOST
                reads[here] |= structure_reads(rule_structure(rule, fast_tokens(rule.text), self._structures))
                jump, name = rule_target(rule, found, BUILTIN_TARGETS)
                if jump is not None:
                    todo.append((table, jump, here))
                elif name in PACKET_WRITERS:
                    return None
        return StagePlan(reads, hosts, ports)

    def _after_prerouting(self, s: State) -> list[tuple[State, Terminal]]:
        if self.ctx.is_local(s.dst):
            return self._stages(s, _LOCAL_IN)
        return self._stages(s, _FORWARD + _POSTROUTING)

    def _after_output(self, s: State) -> list[tuple[State, Terminal]]:
        if not self.ctx.is_local(s.dst):
            return [(s, None)]
        s.in_iface = "lo"
        return self._stages(s, _LOOPBACK_IN)

    def _walk_hooks(self, s: State) -> list[tuple[State, Terminal]]:
        if self.ctx.is_local(s.src):
            s.local_origin = True
            s.out_iface = "lo" if self.ctx.is_local(s.dst) else None
            return self._stages(s, _OUTPUT, self._post_output)
        return self._stages(s, _PREROUTING, self._after_prerouting)

    def _post_output(self, s: State) -> list[tuple[State, Terminal]]:
        # The routing decision is taken again after nat OUTPUT rewrote the destination.
        s.out_iface = "lo" if self.ctx.is_local(s.dst) else None
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
            outcomes = tuple([self._outcome(s, terminal, original, fragment=True) for s, terminal in finals])
        finally:
            if gc_was_enabled:
                gc.enable()
        return Trace(packet, "kube-proxy", outcomes, (NEW_CONNECTION,))

    def trace(self, packet: Packet, *, in_interface: str | None = None, assumptions: Sequence[str] = ()) -> Trace:
        """Every outcome of `packet`. `assumptions` are the caller's (e.g. pick_source's note on the source
        address); they are listed after the first-packet one."""
        if packet.version != self.version:
            raise InputError(f"the packet is IPv{packet.version} but the dump is IPv{self.version} "
                             f"({'ip6tables-save' if self.version == 6 else 'iptables-save'} output); "
                             f"trace it against the {'ip6tables' if packet.version == 6 else 'iptables'} dump")
        src = ip_int(packet.src)[1]
        dst = ip_int(packet.dst)[1]
        state = State(src, dst, packet.sport, packet.dport, packet.proto_number,
                      in_interface if in_interface is not None else packet.in_interface)
        gc_was_enabled = gc.isenabled()
        # A walk allocates many small acyclic objects next to a ruleset of ~10^6 objects: a cyclic collection
        # triggered in between would scan the whole ruleset for nothing.
        gc.disable()
        try:
            if self.entry == "hooks":
                finals = self._walk_hooks(state)
            else:
                finals = self._walk_fragment(state)
            original = join_host_port(packet.dst, packet.dport)
            outcomes = tuple([self._outcome(s, terminal, original) for s, terminal in finals])
        finally:
            if gc_was_enabled:
                gc.enable()
        notes: list[str] = [NEW_CONNECTION, *(a for a in assumptions if a != NEW_CONNECTION)]
        for o in outcomes:
            for note in o.assumptions:
                if note not in notes:
                    notes.append(note)
        return Trace(packet, self.entry, outcomes, tuple(notes))

    def _outcome(self, s: State, terminal: Terminal, original: str, *, fragment: bool | None = None) -> Outcome:
        path_cell, chains_cell = s.path, s.chains
        if fragment is None:
            fragment = self.entry == "kube-proxy"
        decided: Decision | None
        destination = None
        final = join_host_port(format_ip(s.dst, self.version), s.dport)
        if terminal is not None and terminal[0] in ("DROP", "REJECT"):
            verdict, decided = terminal
        elif fragment and s.mark_drop is not None:
            verdict, decided = "DROP", s.mark_drop
            s.assume(f"line {decided.line}: the packet is marked by KUBE-MARK-DROP, which kubelet's KUBE-FIREWALL "
                     "chain drops")
        elif s.dnat:
            verdict, decided, destination = "DNAT", s.dnat_by, final
        elif s.accept is not None:
            verdict, decided = "ACCEPT", s.accept
            if decided.policy is not None and (decided.table, decided.chain) in self._dash_policy:
                s.assume(f"built-in chain {decided.table} {decided.chain} has no policy in the dump ('-'): "
                         "assumed ACCEPT")
        else:
            verdict, decided = "CONTINUE", None
        masquerade = s.kube_masq if fragment else s.masq
        # Branches of Services with the same endpoint count have the same probabilities.
        probability = self._probabilities.get(s.prob)
        if probability is None:
            exact = Fraction(*s.prob)
            probability = (exact, float(exact))
            if len(self._probabilities) >= MEMO_SIZE:
                self._probabilities.clear()
            self._probabilities[s.prob] = probability
        # Steps, chains and the Service label are built only when read (most outcomes of a Service view never are).
        return Outcome(verdict, destination, probability[1], masquerade,  # type: ignore[arg-type]
                       lambda: self._service(_compiled_path(path_cell)), decided,
                       lambda: tuple(self._step(c) for c in _compiled_path(path_cell)), probability[0],
                       original, final, lambda: _chain_list(chains_cell), s.assumptions)

    def _step(self, c: Compiled) -> Step:
        """The Step of a rule on a reported path, with what it is to kube-proxy (Step.kind) and its Service."""
        step = c._step
        if step is None or (not step.kind and step.service is None):
            rule = c.rule
            comment = rule_comment(rule)
            parsed = parse_comment(comment) if comment else None
            kind = _step_kind(c.table, rule.chain, c.target, parsed[1] if parsed else "")
            service = parsed[0] if parsed else None
            if service is None and self.names is not None:
                service = self.names.get(rule.chain) or (self.names.get(c.target) if c.target else None)
            step = c._step = Step(c.table, rule.chain, rule.line, f"-A {rule.chain} {rule.text}".rstrip(), kind,
                                  service)
        return step

    def _service(self, compiled: Sequence[Compiled]) -> str | None:
        names = self.names
        if names is not None:
            for c in compiled:
                label = c.names_label
                if label is None:
                    label = c.names_label = names.get(c.rule.chain) or (
                        names.get(c.arg) if isinstance(c.arg, str) else None) or ""
                if label:
                    return label
        # Without the kube view (or for chains it does not know), kube-proxy's comments name the Service.
        for c in compiled:
            label = c.service_label
            if label:
                return label
        return None


_DISPATCH_CHAINS = frozenset({"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"})
_SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")


def _step_kind(table: str, chain: str, target: str, comment_kind: str) -> str:
    """What a rule is to kube-proxy (Step.kind), from its comment's kind (layout.parse_comment), its chain and
    its target."""
    if comment_kind in ("no-endpoints", "no-local-endpoints", "firewall"):
        return comment_kind
    if chain.startswith("KUBE-FW-") and target == KUBE_MARK_DROP:
        return "firewall"
    if chain in _DISPATCH_CHAINS and (target.startswith(_SERVICE_CHAIN_PREFIXES) or target == "KUBE-NODEPORTS"
                                      or (table == "filter" and target == "REJECT")):
        return "no-endpoints" if table == "filter" else "dispatch"
    if chain.startswith("KUBE-SEP-"):
        return "endpoint"
    return ""


def _compiled_path(cell: Any) -> list[Compiled]:
    """The rules of a branch's path (a cons list, newest first), oldest first."""
    out = []
    while cell is not None:
        out.append(cell[0])
        cell = cell[1]
    out.reverse()
    return out


def _chain_list(cell: Any) -> tuple[tuple[str, str], ...]:
    out = []
    while cell is not None:
        out.append(cell[0])
        cell = cell[1]
    out.reverse()
    return tuple(out)


def _mark_effect(target: str, opts: Mapping[str, str]) -> Callable[[State], None]:
    """MARK/CONNMARK as a function on the branch state (xt_MARK / xt_CONNMARK semantics)."""
    attr = "mark" if target == "MARK" else "ctmark"
    full = 0xFFFFFFFF
    if "--set-xmark" in opts or "--set-mark" in opts:
        value, mask = mark_value(opts.get("--set-xmark") or opts["--set-mark"])
        if "--set-mark" in opts and "/" not in opts["--set-mark"]:
            mask = full
        return lambda s: setattr(s, attr, (getattr(s, attr) & ~mask & full) ^ value)
    if "--or-mark" in opts:
        value = int(opts["--or-mark"], 0)
        return lambda s: setattr(s, attr, getattr(s, attr) | value)
    if "--and-mark" in opts:
        value = int(opts["--and-mark"], 0)
        return lambda s: setattr(s, attr, getattr(s, attr) & value)
    if "--xor-mark" in opts:
        value = int(opts["--xor-mark"], 0)
        return lambda s: setattr(s, attr, getattr(s, attr) ^ value)
    if target == "CONNMARK" and "--save-mark" in opts:
        nfmask = int(opts.get("--nfmask", opts.get("--mask", "0xffffffff")), 0)
        ctmask = int(opts.get("--ctmask", opts.get("--mask", "0xffffffff")), 0)
        return lambda s: setattr(s, "ctmark", (s.ctmark & ~ctmask & full) ^ (s.mark & nfmask))
    if target == "CONNMARK" and "--restore-mark" in opts:
        nfmask = int(opts.get("--nfmask", opts.get("--mask", "0xffffffff")), 0)
        ctmask = int(opts.get("--ctmask", opts.get("--mask", "0xffffffff")), 0)
        return lambda s: setattr(s, "mark", (s.mark & ~nfmask & full) ^ (s.ctmark & ctmask))
    return lambda s: None


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
