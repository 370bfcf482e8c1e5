"""What one rule's text says to a footprint (iptrace.iptables.footprint, whose docstring says why its key can be
trusted): the text with its -s/-d values as "@", those tests, how the index files the rule, whether it never
matches, its target, what it does that the key must know. The same on every node, so kept per process by text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from iptrace.errors import IptraceError
from iptrace.iptables.compile import DNAT, NETMAP, REDIRECT, ChainCode
from iptrace.iptables.index import rule_key
from iptrace.iptables.matchers import Structure, binder_for, fast_tokens, rule_structure
from iptrace.iptables.memo import structure_reads
from iptrace.iptables.model import unquote
from iptrace.iptables.options import BUILTIN_TARGETS
from iptrace.iptables.state import parse_net

# What a rule does that the key must know: nothing beyond matching, a DNAT (its target widens the question), a
# rewrite to addresses the key cannot name (no footprint).
KIND_PLAIN, KIND_DNAT, KIND_OPAQUE = 0, 1, 2
Spec = tuple[bool, bool, tuple[tuple[int, int], ...]]  # (a source test, negated, networks as (net, mask))


class Facts:
    """One rule's text as a footprint reads it: `abstract` a digest of it with its -s/-d values as "@" (its target,
    and whether it jumps or goes to it, are in that text)."""

    __slots__ = ("abstract", "fixed", "host", "key", "kind", "nat_to", "never", "plain", "reads", "risky",
                 "set_reads", "specs")

    def __init__(self, abstract: str, specs: tuple[tuple[bool, bool, tuple[tuple[int, int], ...]], ...],
                 key: tuple[int, int, int | None] | None, host: int | None, never: bool, kind: int,
                 nat_to: tuple[int | None, int | None] | None, reads: bool, set_reads: bool) -> None:
        self.abstract = abstract
        self.specs = specs  # (is a source test, negated, networks as (net, mask))
        self.key = key
        self.host = host
        self.never = never
        self.kind = kind
        self.nat_to = nat_to
        self.reads = reads  # reads an address other than through -s/-d, addrtype, a full-mask recent or a set
        self.set_reads = set_reads  # -m set (membership unknown unless the tracer knows the set)
        self.plain = not never and key is None and host is None and not specs  # matches any question
        self.risky = kind == KIND_OPAQUE or reads or set_reads
        # (its text in the key whatever the question, None when that says how its tests answer: _Question.entry)
        self.fixed = abstract if not specs and not self.risky else None


# (IP version, table, whether the target is a chain) → a rule's text → its facts
_FACTS: dict[tuple[int, str, bool], dict[str, Facts]] = {}
FACTS_LIMIT = 400_000
_ADDRESS_READS = frozenset({"src", "dst", "orig_dst"})


def _full_mask(values: Sequence[str], version: int) -> bool:
    try:
        net = parse_net(unquote(values[0]) if values else "", version)
    except IptraceError:
        return False
    return net is not None and net[0] == (1 << (32 if version == 4 else 128)) - 1


def _address_reads(structure: Structure, tokens: Sequence[str], version: int) -> tuple[bool, bool]:
    """(reads an address beyond what the key holds, reads it through -m set)."""
    other: list[tuple[str, Any]] = []
    set_reads = False
    for module, specs in structure[0]:
        if module in ("", "addrtype", "comment", "nfacct"):
            continue
        if module == "set":
            set_reads = True
            continue
        if module == "recent":
            # kube-proxy's affinity: equality of whole addresses, which naming them by role keeps.
            masks = [tokens[idx[0]] for name, _neg, idx in specs if name == "--mask" and idx]
            if not masks or _full_mask(masks, version):
                continue
        other.append((module, specs))
    return bool(structure_reads((tuple(other), structure[1])) & _ADDRESS_READS), set_reads


# id of a rule structure → (it, kept alive so that its id stays its own, the IP version, _address_reads' answer): a
# structure is shared by every rule of one shape, and the answer reads only it (but for -m recent's mask).
_READS: dict[int, tuple[Structure, int, tuple[bool, bool]]] = {}


def _address_reads_of(structure: Structure, tokens: Sequence[str], version: int) -> tuple[bool, bool]:
    """_address_reads, kept per structure when it reads no token (no -m recent)."""
    found = _READS.get(id(structure))
    if found is not None and found[0] is structure and found[1] == version:
        return found[2]
    answer = _address_reads(structure, tokens, version)
    if all(module != "recent" for module, _specs in structure[0]):
        if len(_READS) >= 4096:
            _READS.clear()
        _READS[id(structure)] = (structure, version, answer)
    return answer


def known_facts(version: int, table: str, is_chain: bool) -> dict[str, Facts]:
    """The facts kept of rules of `table` whose target is (not) a chain, by their texts (what rule_facts looks in
    first)."""
    return _FACTS.get((version, table, is_chain)) or _NONE


_NONE: dict[str, Facts] = {}


def rule_facts(cache: Any, code: ChainCode, i: int, is_chain: bool, tokens: list[str] | None = None) -> Facts:
    """The facts of rule `i` of `code`; `cache` is the footprint's node (its tracer, plans and structures kept
    alive), `tokens` the rule's tokens when the caller has them."""
    tracer = cache.tracer
    rule = code.rules[i]
    version = tracer.version
    by_text = _FACTS.get((version, code.table, is_chain))
    found = by_text.get(rule.text) if by_text is not None else None
    if found is not None:
        return found
    c = code.compiled[i] or tracer._compile(code, i)
    if tokens is None:
        tokens = fast_tokens(rule.text)
    structure = rule_structure(rule, tokens, tracer._structures)
    binder = binder_for(structure, tracer._binders)  # (the compiler's: its structures stay alive)
    abstract = list(tokens)
    specs = []
    for attr, negated, index in binder.addresses:
        value = tokens[index] if index >= 0 else ""
        if index >= 0:
            abstract[index] = "@"
        nets = tuple(n for n in (parse_net(v, version) for v in unquote(value).split(",") if v) if n is not None)
        specs.append((attr == "src", negated, nets))
    key, host = rule_key(rule, version, tracer._structures, cache.plans, cache.alive, tokens)
    kind, nat_to = KIND_PLAIN, None
    if c.action == DNAT:
        kind, nat_to = KIND_DNAT, c.arg
    elif c.action in (REDIRECT, NETMAP):
        kind = KIND_OPAQUE
    reads, set_reads = _address_reads_of(structure, tokens, version)
    found = Facts(hashlib.blake2b(" ".join(abstract).encode(), digest_size=16).hexdigest(), tuple(specs), key,
                  host, bool(c.never), kind, nat_to, reads, set_reads)
    if by_text is None or sum(map(len, _FACTS.values())) >= FACTS_LIMIT:
        if by_text is not None:
            _FACTS.clear()
        by_text = _FACTS[(version, code.table, is_chain)] = {}
    by_text[rule.text] = found
    return found


class ChainRules:
    """A chain's rules as a walk reads them: the plan a walk follows (`plan`: the same on every node, made with the
    rules (facts, the chain each jumps to): a walk reads it for every chain it meets)."""

    __slots__ = ("plan",)

    def __init__(self, rules: list[tuple[Facts, tuple[str, str] | None]]) -> None:
        # (facts, jump, position, what `_Question.can_match` must decide, a DNAT's target) of every rule a question
        # may keep, in chain order: a rule that never matches is left out (can_match says no, and leaves `narrowed`
        # as it is), one that matches every question needs no asking (None), one whose only test is one -s of one
        # network (an endpoint's chain's masquerade rule) gives that network, (net, mask), which the walk tests
        # itself (can_match's answer: SRC_TEST), any other True.
        self.plan: tuple[tuple[Facts, tuple[str, str] | None, int, tuple[int, int] | bool | None,
                               tuple[int | None, int | None] | None], ...] = tuple([
            (f, jump, i, _ask(f), f.nat_to if f.kind == KIND_DNAT else None)
            for i, (f, jump) in enumerate(rules) if not f.never])


def _ask(f: Facts) -> tuple[int, int] | bool | None:
    """ChainRules.plan's test of a rule that may match: None (it matches every question), its one network (net,
    mask) when its only test is one -s of one network not negated, else True (can_match decides)."""
    if f.plain:
        return None
    if f.key is None and f.host is None and len(f.specs) == 1:
        is_src, negated, nets = f.specs[0]
        if is_src and not negated and len(nets) == 1:
            return nets[0]  # (the spec's own tuple: no memory per rule)
    return True


def src_test(net: tuple[int, int], sources: Sequence[int]) -> bool:
    """_Question.can_match of a rule whose plan gives `net` (_ask), for a question whose sources are `sources`:
    whether one of them is in it (the walk inlines this)."""
    addr, mask = net
    return any(a & mask == addr for a in sources)


# A short chain read (footprint._CHAINS): its ChainRules, the chains its rules jump to, its other targets that are
# not built in.
ChainRead = tuple[ChainRules, frozenset[str], frozenset[str]]
# (one object for each jump (table, chain) and each set of targets kept: ~10^5 short chains jump to KUBE-MARK-MASQ,
# and most have no other target: a frozenset is 216 bytes, even an empty one)
_JUMPS: dict[tuple[str, str], tuple[str, str]] = {}
_TARGET_SETS: dict[frozenset[str], frozenset[str]] = {}


def chain_read(table: str, read: Sequence[tuple[Facts, bool, str, int]]) -> ChainRead:
    """A short chain's ChainRead from its rules' (facts, whether its target is a chain, that target, line)."""
    if len(_JUMPS) >= FACTS_LIMIT or len(_TARGET_SETS) >= FACTS_LIMIT:
        _JUMPS.clear()
        _TARGET_SETS.clear()
    jumps = _JUMPS
    rules = []
    for f, is_chain, target, _line in read:
        jump = None
        if is_chain:
            jump = (table, target)
            jump = jumps.setdefault(jump, jump)
        rules.append((f, jump))
    chains = frozenset(target for _f, is_chain, target, _line in read if is_chain)
    others = frozenset(target for _f, is_chain, target, _line in read if not is_chain and target not in BUILTIN_TARGETS)
    sets = _TARGET_SETS
    return ChainRules(rules), sets.setdefault(chains, chains), sets.setdefault(others, others)
