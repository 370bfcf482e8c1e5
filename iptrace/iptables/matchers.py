"""One function per match module: each turns a rule's options into tests on a branch `State`.

A test is *definite* (the packet's first-packet properties decide it) or *assumed* (the answer needs
something a dump does not show: an interface, an ipset's members, a `recent` list). Definite tests run first;
assumed ones only when every definite test passed, so an assumption is recorded exactly when it decided
whether the rule applies — and an index that skips rules failing a definite test changes nothing.

The model (documented once, here):
- conntrack/state: the first packet of a new connection: NEW matches; ESTABLISHED, RELATED, INVALID do not;
  UNTRACKED only after NOTRACK/CT --notrack; DNAT/SNAT once this trace rewrote the destination/source.
- statistic random: a branch with the kernel's exact probability (iptables stores lround(p·2³¹) and the
  kernel compares 31 random bits with it). nth: the counter position of a first packet is unknown, so the rule
  is a branch with probability 1/every (an assumption).
- recent --rcheck/--update/--remove: no entry unless this trace ran `--set` for the same list and address
  (the first connection from a client: session affinity not yet established).
- set: membership is unknown unless the caller passes it: unknown membership is "not in the set".
- limit/hashlimit: under the limit. connlimit: this is the only connection. rpfilter: the path is valid.
- -i/-o unknown unless given: the packet is assumed to use none of the named interfaces.
- Every other module iptrace does not model (physdev, owner, socket, mac, time, string, u32, …): the packet is
  assumed not to have the property, so a rule using it does not match (and its `!` options do) — recorded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from operator import itemgetter
from typing import NamedTuple

from iptrace.dataplane import protocol_number
from iptrace.errors import TraceError
from iptrace.iptables.model import TOKEN_RE, Rule, unquote
from iptrace.iptables.options import BASIC_ALIASES, BASIC_ARITY, MODULE_ARITY
from iptrace.iptables.state import Context, State, parse_net

Test = Callable[[State], bool]
# An assumed test answers (matches, assumption text or None when it turned out to be definite after all).
Assumed = Callable[[State], tuple[bool, str | None]]
Effect = Callable[[State], None]

NEW_CONNECTION = "first packet of a new connection (ctstate NEW, no marks, no recent entries)"

_PORT_PROTOCOLS = frozenset({6, 17, 132, 136, 33})
_MODULE_PROTOCOL = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33, "icmp": 1, "icmp6": 58,
                    "icmpv6": 58, "ipv6-icmp": 58}
# The TCP options a Linux SYN carries: MSS, window scale, SACK permitted, timestamps.
_SYN_TCP_OPTIONS = frozenset({2, 3, 4, 8})
_TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20, "ECE": 0x40,
              "CWR": 0x80, "ALL": 0xFF, "NONE": 0}
_SYN = 0x02
_ICMP_TYPES = {"echo-request": 8, "echo-reply": 0, "destination-unreachable": 3, "time-exceeded": 11,
               "any": -1}
_ICMP6_TYPES = {"echo-request": 128, "echo-reply": 129, "destination-unreachable": 1, "packet-too-big": 2,
                "time-exceeded": 3, "neighbour-solicitation": 135, "neighbor-solicitation": 135,
                "neighbour-advertisement": 136, "neighbor-advertisement": 136, "any": -1}
_ASSUMED_TTL = 64
_ASSUMED_LENGTH = {4: 60, 6: 80}  # a TCP SYN with Linux's options


@dataclass(slots=True)
class MatchPlan:
    """Everything a rule's matches ask of a packet, compiled once per rule."""

    tests: list[Test] = field(default_factory=list)
    assumed: list[Assumed] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    probability: Fraction | None = None
    never: bool = False  # a definite test can never pass (e.g. an address of the other IP version)


def _owners() -> dict[str, tuple[str, ...]]:
    owners: dict[str, list[str]] = {}
    for module, table in MODULE_ARITY.items():
        for option in table:
            owners.setdefault(option, []).append(module)
    return {k: tuple(v) for k, v in owners.items()}


_OWNERS = _owners()


class Opt(NamedTuple):
    """A match or target option with its unquoted values (a light `model.rules.Option`)."""

    name: str
    values: tuple[str, ...]
    negated: bool = False

    @property
    def value(self) -> str:
        return self.values[0] if self.values else ""


# (option name, negated, token indices of its values)
OptSpec = tuple[str, bool, tuple[int, ...]]
# A rule's matches as (module, options) groups ("" = the basic matches), plus its target options.
Structure = tuple[tuple[tuple[str, tuple[OptSpec, ...]], ...], tuple[OptSpec, ...]]


def fast_tokens(text: str) -> list[str]:
    """`TOKEN_RE.findall(text)` (model.rules), faster for a rule with at most one quoted token whose quotes
    stand alone (kube-proxy's comments): a plain split around it gives the same tokens."""
    if '"' not in text:
        return text.split()
    if "\\" not in text:
        parts = text.split('"')
        if len(parts) == 3:
            head, quoted, tail = parts
            if (not head or head[-1].isspace()) and (not tail or tail[0].isspace()):
                return [*head.split(), f'"{quoted}"', *tail.split()]
    return TOKEN_RE.findall(text)


def token_value(token: str) -> str:
    """`unquote(token)` (model.rules), without its regex when there is nothing to unescape."""
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        inner = token[1:-1]
        return inner if "\\" not in inner else unquote(token)
    return token


def rule_comment(rule: Rule) -> str | None:
    """`rule.comment`: the values of its first --comment, joined."""
    shape = rule.shape
    index = shape.first.get("--comment") if shape is not None else None
    if index is None:
        return None
    tokens = fast_tokens(rule.text)
    return " ".join([token_value(tokens[i]) for i in shape.slots[index][3]])  # type: ignore[union-attr]


def _modules(rule: Rule, tokens: Sequence[str]) -> tuple[str, ...]:
    assert rule.shape is not None
    return tuple(slot[1] if slot[2] < 0 else tokens[slot[2]] for slot in rule.shape.slots if slot[0] == "match")


def rule_structure(rule: Rule, tokens: Sequence[str], cache: dict[object, Structure] | None = None) -> Structure:
    """Which option belongs to which match module, as token indices (shared by every rule of one shape).

    The model groups an option with the match it follows in the text; an option written after `-p`/`-d`
    (`-m tcp -p tcp -d X --dport 80`) still belongs to the last loaded module that defines it, as in
    iptables' own option parsing.
    """
    shape = rule.shape
    if shape is None:
        return (), ()
    if cache is not None:
        # Explicit `-m NAME` is part of the shape; only implicit protocol matches (`-p tcp --dport`) take their
        # module from a value, so most shapes need no per-rule key.
        found = cache.get(shape)
        if found is not None:
            return found
        implicit = any(slot[0] == "match" and slot[3] for slot in shape.slots)
        modules = _modules(rule, tokens)
        key: object = (shape, modules) if implicit else shape
        found = cache.get(key)
        if found is not None:
            return found
    else:
        modules = _modules(rule, tokens)
        key = shape
    groups: list[tuple[str, list[OptSpec]]] = []
    loaded: list[tuple[str, list[OptSpec]]] = []
    basic: list[OptSpec] = []
    target_opts: list[OptSpec] = []
    protocol = ""
    module = ""
    in_target = False
    m = 0
    for slot in shape.slots:
        kind = slot[0]
        if kind == "target":
            in_target = True
            continue
        if kind == "match":
            module = modules[m] or ""
            m += 1
            in_target = False
            if module:
                group: tuple[str, list[OptSpec]] = (module, [])
                groups.append(group)
                loaded.append(group)
            continue
        spec: OptSpec = (BASIC_ALIASES.get(slot[1], slot[1]), slot[2], tuple(slot[3]))
        if in_target:
            target_opts.append(spec)
            continue
        name = spec[0]
        if name in BASIC_ARITY and name not in ("-4", "-6", "-c"):
            basic.append(spec)
            if name == "-p" and spec[2]:
                protocol = tokens[spec[2][0]].lower()
            continue
        owner = None
        if module and name in MODULE_ARITY.get(module, {}):
            owner = next(g for g in reversed(loaded) if g[0] == module)
        else:
            for group in reversed(loaded):
                if name in MODULE_ARITY.get(group[0], {}):
                    owner = group
                    break
        if owner is None:
            implicit = protocol if name in MODULE_ARITY.get(protocol, {}) else None
            if implicit is None:
                candidates = _OWNERS.get(name, ())
                implicit = candidates[0] if candidates else "?"
            owner = (implicit, [])
            groups.append(owner)
            loaded.append(owner)
        owner[1].append(spec)
    if basic:
        groups.insert(0, ("", basic))
    result: Structure = (tuple((g[0], tuple(g[1])) for g in groups), tuple(target_opts))
    if cache is not None:
        cache[key] = result
    return result


def options_of(specs: Sequence[OptSpec], tokens: Sequence[str]) -> list[Opt]:
    return [Opt(name, tuple(unquote(tokens[i]) if tokens[i][0] == '"' else tokens[i] for i in idx), neg)
            for name, neg, idx in specs]


def compile_matches(rule: Rule, ctx: Context, structure: Structure, tokens: Sequence[str],
                    groups: dict[object, MatchPlan] | None = None) -> MatchPlan:
    """The tests of one rule. `groups` caches the tests of a match group by its option values (`-p tcp`,
    one `--probability`, …): thousands of rules share them. Groups that record assumptions name the rule's
    line in them, so those are never shared."""
    plan = MatchPlan()
    where = f"line {rule.line}"
    for module, specs in structure[0]:
        if module in ("comment", "nfacct"):
            continue
        key = None
        if groups is not None and not (module == "" and any(spec[0] in ("-s", "-d") for spec in specs)):
            # (Addresses are nearly unique per rule: caching them would only grow the cache.)
            key = (module, tuple((name, neg, tuple(tokens[i] for i in idx)) for name, neg, idx in specs))
            part = groups.get(key)
            if part is not None:
                _merge(plan, part)
                continue
        part = MatchPlan()
        opts = options_of(specs, tokens)
        handler = MATCHERS.get(module)
        if handler is None:
            _unmodeled(module, opts, part, where)
        else:
            handler(opts, ctx, part, where)
        if key is not None and not part.assumed and groups is not None:
            groups[key] = part
        _merge(plan, part)
    return plan


class Bound(NamedTuple):
    """A rule's compiled matches (MatchPlan's fields, frozen so that rules can share them)."""

    tests: tuple[Test, ...]
    assumed: tuple[Assumed, ...]
    effects: tuple[Effect, ...]
    probability: Fraction | None
    never: bool
    # A probability below 1 as ((num, den), (den - num, den)): the rule's branch and the rest.
    branch: tuple[tuple[int, int], tuple[int, int]] | None


class Binder:
    """One rule structure, split into what is compiled once per distinct option values (shared by every rule
    with those values: kube-proxy repeats `-p tcp -m tcp --dport 80` thousands of times) and the addresses
    (-s/-d: nearly unique per rule), bound per rule. Definite tests are pure, so their order does not matter;
    addresses give no assumptions, so the assumptions keep their order."""

    __slots__ = ("addresses", "rest", "values")

    def __init__(self, structure: Structure) -> None:
        groups: list[tuple[str, tuple[OptSpec, ...]]] = []
        addresses: list[OptSpec] = []
        indices: list[int] = []
        for module, specs in structure[0]:
            if module in ("comment", "nfacct"):
                continue
            if module == "":
                addresses.extend(spec for spec in specs if spec[0] in ("-s", "-d"))
                specs = tuple(spec for spec in specs if spec[0] not in ("-s", "-d"))
                if not specs:
                    continue
            groups.append((module, specs))
            for spec in specs:
                indices.extend(spec[2])
        self.rest: Structure = (tuple(groups), structure[1])
        # (attr, negated, token index of the value or -1)
        self.addresses = tuple(("src" if name == "-s" else "dst", negated, idx[0] if idx else -1)
                               for name, negated, idx in addresses)
        self.values: Callable[[Sequence[str]], object] | None = itemgetter(*indices) if indices else None


def binder_for(structure: Structure, binders: dict[int, Binder]) -> Binder:
    """The Binder of a structure; `binders` is keyed by the id of a structure the caller keeps alive (in its
    structure cache)."""
    binder = binders.get(id(structure))
    if binder is None:
        binder = binders[id(structure)] = Binder(structure)
    return binder


# A -s/-d test as data, (mask, network, negated): the packet passes when (address & mask == network) != negated.
# Data rather than a closure: a big dump's rules hold ~10^5 of these, and plain int tuples cost the cyclic
# garbage collector nothing.
Net = tuple[int, int, bool]


def bind_matches(rule: Rule, ctx: Context, binder: Binder, tokens: Sequence[str], bound: dict[object, Bound],
                 groups: dict[object, MatchPlan] | None = None,
                 ) -> tuple[Bound, Net | None, Net | None, tuple[Test, ...], bool]:
    """`compile_matches` for a rule: (the matches it shares with every rule of the same structure and option
    values, its first -s and first -d as data (if they name one network), its other -s/-d tests, whether one
    of those can never match). Matches that make assumptions (which name the rule's line) are compiled per
    rule."""
    key: object = (binder, binder.values(tokens)) if binder.values is not None else binder
    found = bound.get(key)
    if found is None:
        plan = compile_matches(rule, ctx, binder.rest, tokens, groups)
        p = plan.probability
        branch = None
        if p is not None and p != 1:
            branch = ((p.numerator, p.denominator), (p.denominator - p.numerator, p.denominator))
        found = Bound(tuple(plan.tests), tuple(plan.assumed), tuple(plan.effects), p, plan.never, branch)
        if not plan.assumed:
            if len(bound) >= _BOUND_SIZE:
                bound.clear()
            bound[key] = found
    if not binder.addresses:
        return found, None, None, (), False
    src: Net | None = None
    dst: Net | None = None
    tests: list[Test] = []
    never = False
    version = ctx.version
    for attr, negated, i in binder.addresses:
        value = tokens[i] if i >= 0 else ""
        if value[:1] == '"':
            value = unquote(value)
        if "," not in value and (src is None if attr == "src" else dst is None):
            net = parse_net(value, version)
            if net is None:
                never = never or not negated
            elif attr == "src":
                src = (net[1], net[0], negated)
            else:
                dst = (net[1], net[0], negated)
            continue
        test = address_test(value, negated, attr, version)
        if test is not None:
            tests.append(test)
        elif not negated:
            never = True
    return found, src, dst, tuple(tests), never


_BOUND_SIZE = 100_000


def _merge(plan: MatchPlan, part: MatchPlan) -> None:
    plan.tests.extend(part.tests)
    plan.assumed.extend(part.assumed)
    plan.effects.extend(part.effects)
    plan.never = plan.never or part.never
    if part.probability is not None:
        plan.probability = part.probability if plan.probability is None else plan.probability * part.probability


# ------------------------------------------------------------------------------------------ helpers


def _ports(text: str) -> list[tuple[int, int]]:
    """`80`, `80:90`, `:90`, `80:` and comma lists (multiport) → inclusive ranges."""
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        try:
            low = int(lo) if lo else 0
            high = (int(hi) if hi else 65535) if sep else low
        except ValueError:
            raise TraceError(f"cannot read port {part!r}; expected a number or a range a:b") from None
        out.append((low, high))
    return out


def mark_value(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    try:
        return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF
    except ValueError:
        raise TraceError(f"cannot read mark {text!r}; expected value[/mask]") from None


def _port_test(ranges: list[tuple[int, int]], negated: bool, attr: str) -> Test:
    if len(ranges) == 1:
        lo, hi = ranges[0]
        if lo == hi:
            if attr == "dport":
                return (lambda s: s.dport != lo) if negated else (lambda s: s.dport == lo)
            return (lambda s: s.sport != lo) if negated else (lambda s: s.sport == lo)
    if attr == "dport":
        return lambda s: any(a <= s.dport <= b for a, b in ranges) != negated
    if attr == "sport":
        return lambda s: any(a <= s.sport <= b for a, b in ranges) != negated
    return lambda s: any(a <= s.sport <= b or a <= s.dport <= b for a, b in ranges) != negated


def _addr_test(values: str, negated: bool, attr: str, ctx: Context, plan: MatchPlan) -> None:
    test = address_test(values, negated, attr, ctx.version)
    if test is not None:
        plan.tests.append(test)
    elif not negated:
        plan.never = True


def address_test(values: str, negated: bool, attr: str, version: int) -> Test | None:
    """-s/-d (`attr` "src"/"dst"); None when no listed address is of this IP version (the option can never
    match; negated, it always does)."""
    if "," in values:
        nets = [n for n in (parse_net(v, version) for v in values.split(",")) if n is not None]
    else:
        one = parse_net(values, version)
        nets = [one] if one is not None else []
    if not nets:
        return None
    if len(nets) == 1:
        net, mask = nets[0]
        if attr == "src":
            return (lambda s: s.src & mask != net) if negated else (lambda s: s.src & mask == net)
        return (lambda s: s.dst & mask != net) if negated else (lambda s: s.dst & mask == net)
    if attr == "src":
        return lambda s: any(s.src & m == n for n, m in nets) != negated
    return lambda s: any(s.dst & m == n for n, m in nets) != negated


def _iface_matches(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _unmodeled(module: str, opts: Sequence[Opt], plan: MatchPlan, where: str) -> None:
    shown = " ".join(("! " if o.negated else "") + o.name for o in opts)
    text = (f"{where}: -m {module} {shown}".rstrip() + " is not modeled: assumed the packet does not have "
            "that property")
    result = bool(opts) and all(o.negated for o in opts)
    plan.assumed.append(lambda s: (result, text))


def _require_protocol(module: str, plan: MatchPlan) -> None:
    number = _MODULE_PROTOCOL.get(module)
    if number is not None:
        plan.tests.append(lambda s: s.proto == number)


# ------------------------------------------------------------------------------------------ modules


def match_basic(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    """-s -d -p -i -o -f, each with `!`."""
    for opt in opts:
        name, neg = opt.name, opt.negated
        if name in ("-s", "-d"):
            _addr_test(opt.value, neg, "src" if name == "-s" else "dst", ctx, plan)
        elif name == "-p":
            number = protocol_number(opt.value)
            if number is None:
                if neg:
                    plan.never = True
                continue
            plan.tests.append((lambda s, n=number: s.proto != n) if neg else (lambda s, n=number: s.proto == n))
        elif name in ("-i", "-o"):
            pattern = opt.value
            attr = "in_iface" if name == "-i" else "out_iface"
            flag = "--in-interface" if name == "-i" else "--out-interface"
            text = (f"{where}: {'input' if name == '-i' else 'output'} interface unknown: assumed not "
                    f"{pattern} (pass {flag})")

            def iface(s: State, attr: str = attr, pattern: str = pattern, neg: bool = neg,
                      text: str = text) -> tuple[bool, str | None]:
                current = getattr(s, attr)
                if current is None:
                    return neg, text
                return _iface_matches(pattern, current) != neg, None

            plan.assumed.append(iface)
        elif name == "-f":
            # A first packet is never a non-first fragment.
            if not neg:
                plan.never = True


def match_ports(module: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        _require_protocol(module, plan)
        for opt in opts:
            name = opt.name
            if name in ("--dport", "--destination-port"):
                plan.tests.append(_port_test(_ports(opt.value), opt.negated, "dport"))
            elif name in ("--sport", "--source-port"):
                plan.tests.append(_port_test(_ports(opt.value), opt.negated, "sport"))
            elif name == "--syn":
                # The first packet of a TCP connection is a bare SYN.
                if opt.negated:
                    plan.never = True
            elif name == "--tcp-flags":
                mask = sum(_TCP_FLAGS.get(f, 0) for f in opt.values[0].split(","))
                comp = sum(_TCP_FLAGS.get(f, 0) for f in opt.values[1].split(",")) if len(opt.values) > 1 else 0
                if ((_SYN & mask) == comp) == opt.negated:
                    plan.never = True
            elif name == "--tcp-option":
                present = int(opt.value) in _SYN_TCP_OPTIONS
                text = f"{where}: the SYN is assumed to carry Linux's TCP options (MSS, wscale, SACK, timestamps)"
                result = present != opt.negated
                plan.assumed.append(lambda s, r=result, t=text: (r, t))
            else:
                _unmodeled(f"{module} {name}", [], plan, where)
    return handler


def match_multiport(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    plan.tests.append(lambda s: s.proto in _PORT_PROTOCOLS)
    for opt in opts:
        attr = {"--dports": "dport", "--destination-ports": "dport", "--sports": "sport",
                "--source-ports": "sport", "--ports": "either"}.get(opt.name)
        if attr is None:
            _unmodeled(f"multiport {opt.name}", [], plan, where)
            continue
        plan.tests.append(_port_test(_ports(opt.value), opt.negated, attr))


def match_icmp(module: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    types = _ICMP_TYPES if module == "icmp" else _ICMP6_TYPES
    echo = 8 if module == "icmp" else 128

    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        _require_protocol(module, plan)
        for opt in opts:
            head = opt.value.split("/")[0]
            wanted = types.get(head, int(head) if head.isdigit() else -2)
            result = (wanted in (-1, echo)) != opt.negated
            text = f"{where}: an ICMP packet is assumed to be an echo request"
            plan.assumed.append(lambda s, r=result, t=text: (r, t))
    return handler


def match_nothing(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    """comment, nfacct: always match."""


def _address_types(addr: int, ctx: Context) -> tuple[set[str], bool]:
    """The addrtype of an address, and whether that answer rests on unknown node addresses."""
    if ctx.is_loopback(addr) or addr in ctx.local_addresses:
        return {"LOCAL"}, False
    if ctx.version == 4:
        if addr >> 28 == 0xE:
            return {"MULTICAST"}, False
        if addr == 0xFFFFFFFF:
            return {"BROADCAST"}, False
        if addr == 0:
            return {"UNSPEC"}, False
    else:
        if addr >> 120 == 0xFF:
            return {"MULTICAST"}, False
        if addr == 0:
            return {"UNSPEC"}, False
    return {"UNICAST"}, not ctx.node_ips_known


_ROUTE_ONLY_TYPES = frozenset({"ANYCAST", "BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE"})


def match_addrtype(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        if opt.name in ("--limit-iface-in", "--limit-iface-out"):
            text = f"{where}: addrtype {opt.name} assumed not to change the address type"
            plan.assumed.append(lambda s, t=text: (True, t))
            continue
        attr = "src" if opt.name == "--src-type" else "dst"
        wanted = frozenset(opt.value.upper().split(","))
        neg = opt.negated
        route_only = bool(wanted & _ROUTE_ONLY_TYPES)

        def addrtype(s: State, attr: str = attr, wanted: frozenset[str] = wanted, neg: bool = neg,
                     route_only: bool = route_only, opt_name: str = opt.name) -> tuple[bool, str | None]:
            types, unsure = _address_types(s.src if attr == "src" else s.dst, ctx)
            result = bool(types & wanted) != neg
            if unsure:
                return result, ("node addresses unknown: only loopback counts as --dst-type/--src-type LOCAL "
                                "(pass --node-ip)")
            if route_only:
                return result, f"{where}: {opt_name} {','.join(sorted(wanted))} needs the routing table: " \
                               "assumed a plain unicast route"
            return result, None

        plan.assumed.append(addrtype)


def match_conntrack(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        name, neg = opt.name, opt.negated
        if name in ("--ctstate", "--state"):
            wanted = frozenset(opt.value.upper().split(","))
            new, dnat, snat, untracked = ("NEW" in wanted, "DNAT" in wanted, "SNAT" in wanted,
                                          "UNTRACKED" in wanted)

            def ctstate(s: State, new: bool = new, dnat: bool = dnat, snat: bool = snat,
                        untracked: bool = untracked, neg: bool = neg) -> bool:
                if s.notrack:
                    return untracked != neg
                return (new or (dnat and s.dnat) or (snat and s.snat)) != neg

            plan.tests.append(ctstate)
        elif name == "--ctproto":
            number = protocol_number(opt.value)
            plan.tests.append(lambda s, p=number, n=neg: (p is None or s.proto == p) != n)
        elif name in ("--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst"):
            nets = [x for x in (parse_net(v, ctx.version) for v in opt.value.split(",")) if x is not None]
            getter: Callable[[State], int] = {
                "--ctorigsrc": lambda s: s.src, "--ctorigdst": lambda s: s.orig_dst,
                "--ctreplsrc": lambda s: s.dst, "--ctrepldst": lambda s: s.src}[name]
            plan.tests.append(lambda s, g=getter, ns=nets, n=neg: any(g(s) & m == x for x, m in ns) != n)
        elif name in ("--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport"):
            ranges = _ports(opt.value)
            port: Callable[[State], int] = {
                "--ctorigsrcport": lambda s: s.sport, "--ctorigdstport": lambda s: s.orig_dport,
                "--ctreplsrcport": lambda s: s.dport, "--ctrepldstport": lambda s: s.sport}[name]
            plan.tests.append(lambda s, p=port, r=ranges, n=neg: any(a <= p(s) <= b for a, b in r) != n)
        elif name == "--ctstatus":
            # A connection's first packet has none of EXPECTED, SEEN_REPLY, ASSURED, CONFIRMED.
            result = ("NONE" in opt.value.upper().split(",")) != neg
            plan.tests.append(lambda s, r=result: r)
        elif name == "--ctdir":
            result = (opt.value.upper() == "ORIGINAL") != neg
            plan.tests.append(lambda s, r=result: r)
        else:
            text = f"{where}: conntrack {name} {opt.value} assumed to match a new connection"
            plan.assumed.append(lambda s, t=text: (True, t))


def match_mark(attr: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        for opt in opts:
            if opt.name != "--mark":
                _unmodeled(f"mark {opt.name}", [], plan, where)
                continue
            value, mask = mark_value(opt.value)
            neg = opt.negated
            if attr == "mark":
                plan.tests.append(lambda s, v=value, m=mask, n=neg: (s.mark & m == v) != n)
            else:
                plan.tests.append(lambda s, v=value, m=mask, n=neg: (s.ctmark & m == v) != n)
    return handler


@functools.lru_cache(maxsize=4096)
def kernel_probability(text: str) -> Fraction:
    """xt_statistic's probability: iptables stores lround(p·2³¹); the kernel matches when 31 random bits are
    below it. So the exact probability is that integer over 2³¹ (0.5 stays 1/2)."""
    try:
        p = Fraction(text)
    except ValueError:
        raise TraceError(f"cannot read probability {text!r}") from None
    scaled = p * 0x80000000
    rounded = int(scaled + Fraction(1, 2)) if scaled >= 0 else -int(-scaled + Fraction(1, 2))
    return Fraction(min(max(rounded, 0), 0x80000000), 0x80000000)


def match_statistic(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    by_name = {o.name: o for o in opts}
    mode = by_name.get("--mode")
    if mode is not None and mode.value == "nth":
        every = by_name.get("--every")
        n = int(every.value) if every is not None else 1
        p = Fraction(1, max(n, 1))
        if every is not None and every.negated:
            p = 1 - p
        text = (f"{where}: -m statistic --mode nth: the position of this connection in the rule's packet "
                f"counter is unknown; modeled as a branch with probability 1/{n}")
        plan.assumed.append(lambda s, t=text: (True, t))
    else:
        prob = by_name.get("--probability")
        p = kernel_probability(prob.value) if prob is not None else Fraction(1)
        if prob is not None and prob.negated:
            p = 1 - p
    plan.probability = p if plan.probability is None else plan.probability * p


def match_recent(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    by_name = {o.name: o for o in opts}
    name = by_name["--name"].value if "--name" in by_name else "DEFAULT"
    rdest = "--rdest" in by_name
    mask_opt = by_name.get("--mask")
    bits = 32 if ctx.version == 4 else 128
    mask = parse_net(f"{mask_opt.value}", ctx.version) if mask_opt is not None else None
    addr_mask = mask[0] if mask is not None else (1 << bits) - 1
    hitcount = int(by_name["--hitcount"].value) if "--hitcount" in by_name else 1

    def key(s: State) -> tuple[str, int]:
        return name, (s.dst if rdest else s.src) & addr_mask

    for command in ("--set", "--rcheck", "--update", "--remove"):
        opt = by_name.get(command)
        if opt is None:
            continue
        neg = opt.negated
        if command == "--set":
            plan.effects.append(lambda s: setattr(s, "recent", s.recent | {key(s)}))
            if neg:
                plan.never = True
            break
        text = (f"{where}: no entry in recent list {name!r} yet (first connection from this client: "
                "e.g. session affinity not established)")

        def check(s: State, neg: bool = neg, text: str = text) -> tuple[bool, str | None]:
            if key(s) in s.recent and hitcount <= 1:
                return not neg, None
            return neg, text

        plan.assumed.append(check)
        if command == "--remove":
            plan.effects.append(lambda s: setattr(s, "recent", s.recent - {key(s)}))
        break


def match_set(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        if opt.name not in ("--match-set", "--set"):
            text = f"{where}: set {opt.name} counters assumed to match"
            plan.assumed.append(lambda s, t=text: (True, t))
            continue
        set_name = opt.values[0]
        flags = opt.values[1].split(",") if len(opt.values) > 1 else ["src"]
        neg = opt.negated
        members = ctx.ipsets.get(set_name)
        if members is not None and len(flags) == 1:
            src = flags[0] == "src"
            plan.tests.append(lambda s, ms=members, src=src, n=neg:
                              any(((s.src if src else s.dst) & m) == x for x, m in ms) != n)
            continue
        text = (f"{where}: ipset {set_name!r} membership unknown: assumed the packet's {','.join(flags)} is not "
                "in it")
        plan.assumed.append(lambda s, n=neg, t=text: (n, t))


def _assumed_true(what: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        text = f"{where}: {what}"
        result = not any(o.negated for o in opts)
        plan.assumed.append(lambda s: (result, text))
    return handler


def match_hashlimit(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    above = any(o.name == "--hashlimit-above" for o in opts)
    text = f"{where}: hashlimit assumed under its rate limit"
    plan.assumed.append(lambda s: (not above, text))


def match_connlimit(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    result = True
    for opt in opts:
        if opt.name == "--connlimit-upto":
            result = result and int(opt.value) >= 1
        elif opt.name == "--connlimit-above":
            result = result and (int(opt.value) < 1) != opt.negated
    text = f"{where}: connlimit counts only this connection"
    plan.assumed.append(lambda s: (result, text))


def match_rpfilter(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    invert = any(o.name == "--invert" for o in opts)
    text = f"{where}: the packet is assumed to pass the reverse-path check"
    plan.assumed.append(lambda s: (not invert, text))


def _ranged(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition(":")
    return int(lo or 0), int(hi) if sep and hi else (int(lo) if not sep else 65535)


def match_length(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    length = _ASSUMED_LENGTH[ctx.version]
    for opt in opts:
        lo, hi = _ranged(opt.value)
        result = (lo <= length <= hi) != opt.negated
        text = f"{where}: the packet is assumed {length} bytes long (a TCP SYN)"
        plan.assumed.append(lambda s, r=result, t=text: (r, t))


def match_ttl(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        value = int(opt.value)
        kind = opt.name.rsplit("-", 1)[-1]
        result = {"eq": _ASSUMED_TTL == value, "gt": _ASSUMED_TTL > value, "lt": _ASSUMED_TTL < value}[kind]
        text = f"{where}: the packet's TTL/hop limit is assumed {_ASSUMED_TTL}"
        plan.assumed.append(lambda s, r=result != opt.negated, t=text: (r, t))


def match_zero_field(what: str) -> Callable[[Sequence[Opt], Context, MatchPlan, str], None]:
    """tos/dscp: a new connection's packets normally carry 0."""
    def handler(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
        for opt in opts:
            head = opt.value.split("/")[0]
            zero = (head.isdigit() and int(head) == 0) or head.lower() in ("0x00", "0x0", "cs0", "be")
            text = f"{where}: the packet's {what} is assumed 0"
            plan.assumed.append(lambda s, r=zero != opt.negated, t=text: (r, t))
    return handler


def match_pkttype(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        wanted = opt.value.lower()

        def pkttype(s: State, wanted: str = wanted, neg: bool = opt.negated) -> bool:
            types, _ = _address_types(s.dst, ctx)
            kind = "multicast" if "MULTICAST" in types else "broadcast" if "BROADCAST" in types else "unicast"
            return (kind == wanted) != neg

        plan.tests.append(pkttype)


def match_iprange(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    for opt in opts:
        lo_text, _, hi_text = opt.value.partition("-")
        lo = parse_net(lo_text, ctx.version)
        hi = parse_net(hi_text or lo_text, ctx.version)
        if lo is None or hi is None:
            if not opt.negated:
                plan.never = True
            continue
        a, b = lo[0], hi[0]
        if opt.name == "--src-range":
            plan.tests.append(lambda s, a=a, b=b, n=opt.negated: (a <= s.src <= b) != n)
        else:
            plan.tests.append(lambda s, a=a, b=b, n=opt.negated: (a <= s.dst <= b) != n)


def match_policy(opts: Sequence[Opt], ctx: Context, plan: MatchPlan, where: str) -> None:
    pol = next((o for o in opts if o.name == "--pol"), None)
    result = pol is not None and pol.value == "none"
    if pol is not None and pol.negated:
        result = not result
    text = f"{where}: no IPsec policy is assumed to apply to the packet"
    plan.assumed.append(lambda s: (result, text))


MatchHandler = Callable[[Sequence[Opt], Context, MatchPlan, str], None]

MATCHERS: dict[str, MatchHandler] = {
    "": match_basic,
    "tcp": match_ports("tcp"),
    "udp": match_ports("udp"),
    "udplite": match_ports("udplite"),
    "sctp": match_ports("sctp"),
    "dccp": match_ports("dccp"),
    "multiport": match_multiport,
    "icmp": match_icmp("icmp"),
    "icmp6": match_icmp("icmp6"),
    "icmpv6": match_icmp("icmp6"),
    "ipv6-icmp": match_icmp("icmp6"),
    "comment": match_nothing,
    "nfacct": match_nothing,
    "addrtype": match_addrtype,
    "conntrack": match_conntrack,
    "state": match_conntrack,
    "mark": match_mark("mark"),
    "connmark": match_mark("ctmark"),
    "statistic": match_statistic,
    "recent": match_recent,
    "set": match_set,
    "limit": _assumed_true("-m limit assumed under its rate limit"),
    "hashlimit": match_hashlimit,
    "connlimit": match_connlimit,
    "quota": _assumed_true("-m quota assumed not used up"),
    "rpfilter": match_rpfilter,
    "length": match_length,
    "ttl": match_ttl,
    "hl": match_ttl,
    "tos": match_zero_field("TOS"),
    "dscp": match_zero_field("DSCP"),
    "pkttype": match_pkttype,
    "iprange": match_iprange,
    "policy": match_policy,
}
