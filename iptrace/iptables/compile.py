"""Rules compiled for the walk: each rule once, when a packet first meets it (its matches bound to tests, its
target to an action), and reported as a Step saying what the rule is to kube-proxy. walk.py walks them.
Pure; knows iptables targets and kube-proxy's chain names, nothing about hooks."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from iptrace.dataplane import HANDED_OFF_TARGETS, Decision, Step
from iptrace.errors import ParseError, TraceError
from iptrace.iptables import chainmemo
from iptrace.iptables.comments import parse_comment
from iptrace.iptables.index import MIN_RULES, ChainIndex
from iptrace.iptables.matchers import (
    Assumed,
    Binder,
    Bound,
    Effect,
    MatchPlan,
    Net,
    Structure,
    Test,
    bind_addresses,
    bind_matches,
    binder_for,
    fast_tokens,
    mark_value,
    rule_comment,
    rule_structure,
)
from iptrace.iptables.model import Chain, Rule, Ruleset, RuleShape, unquote
from iptrace.iptables.options import BUILTIN_TARGETS
from iptrace.iptables.state import Context, State, cons_prefix, ip_int, parse_net
from iptrace.records import positional_new

# Actions of a compiled rule.
JUMP, GOTO, RETURN, ACCEPT, DROP, REJECT, DNAT, SNAT, MASQUERADE, REDIRECT, NETMAP = range(11)
SET_MARK, NOTRACK, CONTINUE, UNKNOWN, ACCEPT_ASSUMED = range(11, 16)

# Targets that change nothing iptrace models and return to the chain (logging, QoS, checksums, …); those that end
# the walk by handing the packet over are dataplane.HANDED_OFF_TARGETS.
_PASSIVE_TARGETS = frozenset({
    "LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "CHECKSUM", "TCPMSS", "DSCP", "TOS", "TTL", "HL", "ECN",
    "CLASSIFY", "SECMARK", "CONNSECMARK", "IDLETIMER", "LED", "RATEEST", "TCPOPTSTRIP", "SET", "TEE", "CT",
})

# "ns/svc:port" (or "ns/svc") at the start of a kube-proxy comment or after "for "/"to ".
_SERVICE_RE = re.compile(r"(?:^|\bfor |\bto )([a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(?::[-a-z0-9]+)?)")


KUBE_MARK_MASQ = "KUBE-MARK-MASQ"

# Step(...) without the frozen dataclass's __init__: a question's trace reports each new rule it meets.
_new_step = positional_new(Step, ("table", "chain", "line", "rule", "kind", "service", "handle", "element_of"))
# Decision(...) the same way: a Service view's first pass builds one per endpoint (~5x10^4).
_new_decision = positional_new(Decision, ("table", "chain", "line", "policy", "handle", "element_of"))


KUBE_MARK_DROP = "KUBE-MARK-DROP"


class Compiled:
    """One rule, ready to test and apply. Step and Decision are built on first use (most rules never
    decide anything and never end up in a reported path)."""

    # Slots: a trace of every Service of a big dump compiles ~10^5 rules.
    __slots__ = ("_decision", "_path_step", "_step", "access", "action", "arg", "assumed", "bound", "complement",
                 "dst", "effects", "label", "names_label", "never", "note", "probability", "rule", "src", "sub",
                 "table", "target", "tests")

    def __init__(self, table: str, rule: Rule, matches: Bound) -> None:
        self.table = table
        self.rule = rule
        self.bound = matches  # shared by the rules with the same structure and option values (chainmemo keys)
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
        self._step: Step | None = None  # the rule's place (line, text), for notes
        self._path_step: Step | None = None  # the same with its kind and Service, as a reported path shows it
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
            rule = self.rule
            self._decision = _new_decision(self.table, rule[0], rule[3], None, None, None)
        return self._decision


class ChainCode:
    __slots__ = ("chain", "compiled", "index", "key", "name", "rules", "table", "table_chains")

    def __init__(self, table: str, chain: Chain, index: ChainIndex | None, table_chains: Mapping[str, str],
                 key: tuple[str, str] | None = None) -> None:
        self.table = table
        self.table_chains = table_chains  # the chains a rule of this table can jump to (name → name)
        self.name = chain.name
        self.key = key if key is not None else (table, chain.name)
        self.chain = chain
        self.rules = chain.rules
        self.compiled: list[Compiled | None] = [None] * len(chain.rules)
        self.index = index


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
                raise TraceError(f"NAT address {addr_part!r} is not IPv{version}")
            return addr, _nat_port(text, port_part) if port_part else None, None
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
            raise TraceError(f"NAT address {first_addr!r} is not IPv{version}")
    port = _nat_port(text, port_part.split("-")[0]) if port_part else None
    return addr, port, note


# The value a TraceError of a rule's compile quotes (`cannot read address '10.0.0.999/32'`): where the error points.
_QUOTED = re.compile(r"'([^']*)'")


def _nat_port(text: str, port: str) -> int:
    """A NAT target's port, as iptables prints it (decimal, 0-65535); TraceError naming the target otherwise."""
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise TraceError(f"cannot read the port of NAT target {text!r}: expected a number from 0 to 65535")
    return int(port)


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


def compiled_path(cell: Any) -> Sequence[Compiled]:
    """The rules of a branch's path (a cons list, newest first), oldest first."""
    return cons_prefix(cell) or ()


def chain_list(cell: Any) -> tuple[tuple[str, str], ...]:
    return cons_prefix(cell) or ()


def _dnat_spot(structure: Structure) -> int:
    """The token position of a rule's last --to-destination value, -1 when it has none."""
    spot = -1
    for opt, _negated, idx in structure[1]:
        if opt == "--to-destination":
            spot = idx[0] if idx else -1
    return spot


_KIT_ACCESSES = 64


class _Kit:
    """What every rule of one shape has in common when the shape alone decides its structure (kube-proxy writes
    ~10^5 rules in a handful of shapes, which differ only in addresses, ports, comments and chain names): the
    structure and its Binder, where the target and a DNAT's destination are among its tokens."""

    __slots__ = ("accesses", "addresses", "binder", "comment", "dnat_spot", "jump", "plain", "structure",
                 "target_index", "values")

    def __init__(self, shape: RuleShape, structure: Structure, binder: Binder) -> None:
        self.structure = structure
        self.binder = binder
        self.values = binder.values
        self.addresses = binder.addresses
        # The token index of the shape's one --comment value (-1: none), and whether its rules' tokens have been
        # what a plain split gives so far (see _tokens)
        spot = shape.first.get("--comment")
        spots = shape.slots[spot][3] if spot is not None else ()
        self.comment: int = spots[0] if len(spots) == 1 else -1  # type: ignore[index,arg-type,assignment]
        self.plain = True
        self.target_index = shape.target_index
        self.jump = GOTO if shape.goto else JUMP
        self.dnat_spot = _dnat_spot(structure)
        # chainmemo.access_kind of a target -> the Access of a rule of this shape with such a target and no extra
        # address tests (a handful: kube-proxy's endpoint rules jump to KUBE-MARK-MASQ or DNAT; its Service
        # chains jump to a KUBE-SEP chain each, all of one kind)
        self.accesses: dict[str, chainmemo.Access] = {}


def _tokens(kit: _Kit, text: str) -> list[str]:
    """`fast_tokens(text)` for a rule of `kit`'s shape, as `text.split()` when that gives them: the text has no
    quotes, or its one quoted token is the value of its shape's one --comment and holds no space (kube-proxy's
    endpoint rules). Two quotes, no backslash, and one split piece that starts and ends with one: that piece is
    the quoted token, standing alone, and no other piece holds a quote, as fast_tokens' plain reading asks."""
    if kit.plain:
        parts = text.split()
        if '"' not in text:
            return parts
        q = kit.comment
        if q >= 0 and len(parts) > q and "\\" not in text and text.count('"') == 2:
            piece = parts[q]
            if len(piece) > 1 and piece[0] == '"' and piece[-1] == '"':
                return parts
        kit.plain = False  # (its comments hold spaces: kube-proxy's Service chains; fast_tokens from now on)
    return fast_tokens(text)


def _mark_effect(target: str, opts: Mapping[str, str]) -> Callable[[State], None]:
    """MARK/CONNMARK as a function on the branch state (xt_MARK / xt_CONNMARK semantics)."""
    effect = _mark_change(target, opts)
    if target == "CONNMARK":
        # (a packet without a connection, or an untracked one: connmark_tg does nothing)
        return lambda s: effect(s) if s.notrack is False else None
    return effect


def _mark_change(target: str, opts: Mapping[str, str]) -> Callable[[State], None]:
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


class Compiler:
    """Compiles a Ruleset's rules lazily into `Compiled` ones, chain by chain (ChainCode), and reports them
    (Steps with what each rule is to kube-proxy). The Tracer is a Compiler that walks."""

    def __init__(self, ruleset: Ruleset, ctx: Context, names: Mapping[str, str] | None, use_index: bool) -> None:
        self.ruleset = ruleset
        self.version = 6 if ruleset.family == "ipv6" else 4
        self.ctx = ctx
        self.names = names
        self.use_index = use_index
        self._codes: dict[tuple[str, str], ChainCode | None] = {}
        self._structures: dict[object, Structure] = {}
        self._groups: dict[object, MatchPlan] = {}
        self._binders: dict[int, Binder] = {}
        self._chain_names: dict[str, dict[str, str]] = {}
        self._chains: dict[str, Mapping[str, Chain]] = {}  # table -> its chains by name
        self._bound: dict[object, Bound] = {}
        self._access: dict[tuple[int, str], chainmemo.Access] = {}
        self._dnat_spots: dict[int, tuple[Structure, int]] = {}  # id(structure) -> (it, its --to-destination token)
        self._kits: dict[RuleShape, _Kit] = {}

    def _code(self, table: str, chain: str) -> ChainCode | None:
        key = (table, chain)
        code = self._codes.get(key, False)
        if code is False:
            names = self._chain_names.get(table)
            if names is None:
                found_table = self.ruleset.table(table)
                names = self._chain_names[table] = {
                    c.name: c.name for c in found_table.chains} if found_table is not None else {}
                self._chains[table] = found_table.by_name if found_table is not None else {}
            found = self._chains[table].get(chain)  # (Ruleset.chain, without its two calls: ~10^5 chains)
            if found is None:
                code = None
            else:
                index = None
                if self.use_index and len(found.rules) >= MIN_RULES:
                    index = ChainIndex.build(found.rules, self.version, self._structures)
                code = ChainCode(table, found, index, names, key)
            self._codes[key] = code
        return code  # type: ignore[return-value]

    def refused_values(self) -> list[ParseError]:
        """Every rule compiled: the errors of those with a value iptables-restore would refuse (an address, a NAT
        target, a mark), which a trace otherwise finds only when it first reads the rule (--lenient skips them)."""
        errors = []
        for table in self.ruleset.tables:
            for chain in table.chains:
                code = self._code(table.name, chain.name)
                assert code is not None
                for i in range(len(chain.rules)):
                    try:
                        self._compile(code, i)
                    except ParseError as exc:
                        errors.append(exc)
        return errors

    def _compile(self, code: ChainCode, i: int) -> Compiled:
        """Rule `i` of `code`, compiled (and kept). A value iptables-restore would refuse (an address, a NAT
        target, a mark) is a ParseError naming the rule's file:line:column, as for any other unreadable text."""
        try:
            return self._compile_rule(code, i)
        except TraceError as exc:
            rule = code.rules[i]
            line = f"-A {rule.chain} {rule.text}"
            quoted = _QUOTED.search(str(exc))
            column = line.rfind(quoted.group(1)) + 1 if quoted is not None and quoted.group(1) else 0
            raise ParseError(f"{exc}; is this iptables-save output?", source=self.ruleset.source, line=rule.line,
                             column=column or 1, text=line) from None

    def _compile_rule(self, code: ChainCode, i: int) -> Compiled:
        rule = code.rules[i]
        kit = self._kits.get(rule[4])
        if kit is None:
            tokens = fast_tokens(rule[1])
        else:
            # A shape compiled before (kube-proxy's ~10^5 endpoint and load-balancing rules): what the slow way
            # below does, with what the shape decides read from its kit.
            tokens = _tokens(kit, rule[1])
            values = kit.values
            matches = self._bound.get((kit.binder, values(tokens)) if values is not None else kit.binder)
            if matches is not None:
                c = Compiled(code.table, rule, matches)
                extra = False
                if kit.addresses:
                    src, dst, addresses, never = bind_addresses(kit.addresses, tokens, self.version)
                    c.src = src
                    c.dst = dst
                    if addresses:
                        extra = True
                        c.tests = addresses + matches.tests
                    if never:
                        c.never = True
                if kit.target_index >= 0:
                    self._target(code, rule, c, tokens[kit.target_index], tokens, kit.jump, kit.structure,
                                 kit.dnat_spot)
                if extra:
                    c.access = chainmemo.rule_access(kit.structure, c.target, True, self._access)
                else:
                    target = c.target
                    kind = chainmemo.access_kind(target)  # (a Service chain's rules each jump to their own chain)
                    accesses = kit.accesses
                    access = accesses.get(kind)
                    if access is None:
                        access = chainmemo.rule_access(kit.structure, target, False, self._access)
                        if len(accesses) < _KIT_ACCESSES:
                            accesses[kind] = access
                    c.access = access
                code.compiled[i] = c
                return c
        shape = rule.shape
        if kit is not None:
            structure, binder = kit.structure, kit.binder
        else:
            structure = rule_structure(rule, tokens, self._structures)
            binder = binder_for(structure, self._binders)
            if shape is not None and self._structures.get(shape) is structure:
                # (else the structure depends on the rule's tokens: no kit)
                self._kits[shape] = _Kit(shape, structure, binder)
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
            self._target(code, rule, c, tokens[shape.target_index], tokens, GOTO if shape.goto else JUMP, structure)
        c.access = chainmemo.rule_access(structure, c.target, bool(addresses), self._access)
        code.compiled[i] = c
        return c

    def _target(self, code: ChainCode, rule: Rule, c: Compiled, name: str, tokens: Sequence[str], jump: int,
                structure: Structure, dnat_spot: int | None = None) -> None:
        """The rule's target `name`: a jump (`jump`: JUMP or GOTO) to a chain of the table, else a target proper.
        `dnat_spot`: where a DNAT's --to-destination value is among the tokens, when the caller knows."""
        chain = code.table_chains.get(name) if name not in BUILTIN_TARGETS else None
        if chain is not None:
            # The chain's own name object: the token would be one more string kept per rule.
            c.target = c.arg = chain
            c.action = jump
        elif name == "DNAT" and dnat_spot is not None:
            c.target = name
            self._dnat(c, rule, tokens[dnat_spot] if dnat_spot >= 0 else "")
        else:
            c.target = name
            self._compile_target(code, rule, c, name, tokens, structure)

    def _compile_target(self, code: ChainCode, rule: Rule, c: Compiled, name: str, tokens: Sequence[str],
                        structure: Structure) -> None:
        """A target other than a jump to a chain of the table."""
        if name == "DNAT":
            # kube-proxy's endpoint rules, ~1/3 of a dump: the value of the last --to-destination (as `opts`
            # below reads it), found by a position kept per structure.
            found = self._dnat_spots.get(id(structure))
            if found is None or found[0] is not structure:
                # (holds the structure: its id stays its own)
                found = self._dnat_spots[id(structure)] = (structure, _dnat_spot(structure))
            self._dnat(c, rule, tokens[found[1]] if found[1] >= 0 else "")
            return
        where = f"line {rule.line}"
        # An option's first value (`Opt.value`); later repeats of an option win, as in `dict(options)`.
        opts = {opt: (unquote(tokens[idx[0]]) if tokens[idx[0]][0] == '"' else tokens[idx[0]]) if idx else ""
                for opt, _negated, idx in structure[1]}
        if name == "RETURN":
            c.action = RETURN
        elif name in ("ACCEPT", "DROP", "REJECT"):
            c.action = {"ACCEPT": ACCEPT, "DROP": DROP, "REJECT": REJECT}[name]
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
        elif name in HANDED_OFF_TARGETS:
            c.action = ACCEPT_ASSUMED
            c.note = f"{where}: -j {name}: {HANDED_OFF_TARGETS[name]}; assumed it lets the connection through"
        elif name in BUILTIN_TARGETS:
            c.action = UNKNOWN
            c.note = f"{where}: -j {name} is not modeled: assumed it returns to the chain without changing " \
                     "the packet"
        else:
            c.action = UNKNOWN
            c.note = f"{where}: -j {name}: no such chain in table {code.table} and not a known target; " \
                     "assumed it returns to the chain"

    def _dnat(self, c: Compiled, rule: Rule, to: str) -> None:
        """A DNAT to `to` (its last --to-destination's token, "" when it has none)."""
        if to[:1] == '"':
            to = unquote(to)
        if to:
            addr, port, c.note = _parse_nat_to(to, self.version)
            c.action, c.arg = DNAT, (addr, port)
        else:
            c.action, c.arg = DNAT, (None, None)
            c.note = f"line {rule.line}: DNAT without --to-destination: destination assumed unchanged"

    # ------------------------------------------------------------------------------------ walk

    def _step(self, c: Compiled) -> Step:
        """The Step of a rule on a reported path, with what it is to kube-proxy (Step.kind) and its Service."""
        step = c._path_step
        if step is None:
            rule = c.rule
            comment = rule_comment(rule)
            parsed = parse_comment(comment) if comment else None
            kind = _step_kind(c.table, rule.chain, c.target, parsed[1] if parsed else "")
            service = parsed[0] if parsed else None
            if service is None and self.names is not None:
                service = self.names.get(rule.chain) or (self.names.get(c.target) if c.target else None)
            step = c._path_step = _new_step(c.table, rule.chain, rule.line, f"-A {rule.chain} {rule.text}".rstrip(),
                                            kind, service, None, None)
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
