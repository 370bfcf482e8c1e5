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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from operator import itemgetter
from typing import NamedTuple

from iptrace.errors import TraceError
from iptrace.iptables.model import TOKEN_RE, Rule, unquote
from iptrace.iptables.options import BASIC_ALIASES, BASIC_ARITY, MODULE_ARITY
from iptrace.iptables.state import Context, State, ip_int, parse_net

Test = Callable[[State], bool]
# An assumed test answers (matches, assumption text or None when it turned out to be definite after all).
Assumed = Callable[[State], tuple[bool, str | None]]
Effect = Callable[[State], None]

NEW_CONNECTION = "first packet of a new connection (ctstate NEW, no marks, no recent entries)"

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
            unmodeled(module, opts, part, where)
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

    __slots__ = ("addresses", "indices", "rest", "values")

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
        self.indices = tuple(indices)  # the token indices `values` reads
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
    src, dst, tests, never = bind_addresses(binder.addresses, tokens, ctx.version)
    return found, src, dst, tests, never


def bind_addresses(addresses: Sequence[tuple[str, bool, int]], tokens: Sequence[str], version: int,
                   ) -> tuple[Net | None, Net | None, tuple[Test, ...], bool]:
    """A rule's -s/-d (a Binder's `addresses`, read from `tokens`): its first -s and first -d as data (if they
    name one network), its other -s/-d tests, whether one of those can never match."""
    src: Net | None = None
    dst: Net | None = None
    tests: list[Test] = []
    never = False
    for attr, negated, i in addresses:
        value = tokens[i] if i >= 0 else ""
        if value[:1] == '"':
            value = unquote(value)
        if "," not in value and (src is None if attr == "src" else dst is None):
            if version == 4 and value[-3:] == "/32":
                # kube-proxy's endpoint and Service addresses, each read once: parse_net's answer without its
                # cache
                try:
                    host = ip_int(value[:-3])
                except ValueError:
                    net = parse_net(value, version)  # (raises its error)
                else:
                    net = (host[1], 0xFFFFFFFF) if host[0] == 4 else None
            else:
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
    return src, dst, tuple(tests), never


_BOUND_SIZE = 100_000


def _merge(plan: MatchPlan, part: MatchPlan) -> None:
    plan.tests.extend(part.tests)
    plan.assumed.extend(part.assumed)
    plan.effects.extend(part.effects)
    plan.never = plan.never or part.never
    if part.probability is not None:
        plan.probability = part.probability if plan.probability is None else plan.probability * part.probability


# ------------------------------------------------------------------------------------------ helpers


def mark_value(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    try:
        return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF
    except ValueError:
        raise TraceError(f"cannot read mark {text!r}; expected value[/mask]") from None


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


def unmodeled(module: str, opts: Sequence[Opt], plan: MatchPlan, where: str) -> None:
    shown = " ".join(("! " if o.negated else "") + o.name for o in opts)
    text = (f"{where}: -m {module} {shown}".rstrip() + " is not modeled: assumed the packet does not have "
            "that property")
    result = bool(opts) and all(o.negated for o in opts)
    plan.assumed.append(lambda s: (result, text))


# ------------------------------------------------------------------------------------------ modules


# The match modules register themselves in MATCHERS (match_modules.py imports this module's types: keep this
# import last).
from iptrace.iptables.match_modules import MATCHERS, kernel_probability  # noqa: E402

__all__ = ["MATCHERS", "kernel_probability"]
