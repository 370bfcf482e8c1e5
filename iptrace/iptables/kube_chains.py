"""kube-proxy's chains in an iptables dump, read on demand: one regex pass over the chain names lists the
per-Service-port chains; the endpoint chains and their hairpin addresses are listed when first asked for, and a
chain's rules become RuleFacts only when something asks for them, so a question about one address never reads
the whole dump; what a Service port reads of one of its chains (ChainSummary) is kept per process by the chain's
rule texts. Pure."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, fields
from operator import itemgetter
from sys import intern

from iptrace.iptables.comments import parse_comment
from iptrace.iptables.facts import RuleFacts, read, shape_fields
from iptrace.iptables.hashes import SERVICE_PORT_CHAIN_PREFIXES
from iptrace.iptables.model import Chain, Rule, Ruleset, RuleShape, Table
from iptrace.records import positional_new

MASQ_CHAIN = "KUBE-MARK-MASQ"
DROP_CHAIN = "KUBE-MARK-DROP"
NODEPORTS = "KUBE-NODEPORTS"
SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
SEP = "KUBE-SEP-"
FILTER_CHAINS = (SERVICES, EXTERNAL_SERVICES, NODEPORTS, PROXY_FIREWALL)


# Over "\n"-joined rule texts: each line's `-s`, leading as iptables-save prints it, or after the comment as
# kube-proxy's own restore input has it (`-m comment --comment ns/svc:port -s 10.180.0.1 -j KUBE-MARK-MASQ`).
_HAIRPIN_SOURCE = re.compile(r"[\n ]-s ([^/ \n]+)")
# Every per-Service-port chain name, found in the "\n"-joined chain names: (name, prefix, hash), as chain_key
# splits it (each prefix is "KUBE-<word>-"), one regex pass instead of a Python call per name.
_SERVICE_CHAIN = re.compile("^((" + "|".join(map(re.escape, SERVICE_PORT_CHAIN_PREFIXES)) + ")(.*))$", re.M)


def _found(text: str, needle: str) -> bool:
    """Whether `needle` (`-s IP`) is in `text` followed by the end of its address (one scan; the text ends with
    a newline)."""
    at = text.find(needle)
    while at >= 0 and text[at + len(needle)] not in "/ \n":
        at = text.find(needle, at + 1)
    return at >= 0


class _Hairpins:
    """The endpoints' addresses, as the `-s EP/32` of each endpoint chain's hairpin rule says them, for membership
    tests: the first addresses asked are looked for in the rules' joined text (a big dump has ~10^5 of these
    rules, and a question needs to know about the few addresses a pod source is picked from); past that, the set
    is built once. Nothing is read before the first test."""

    _SEARCHES = 32

    def __init__(self, texts: Callable[[], list[str]]) -> None:
        self._texts = texts
        self._text: str | None = None
        self._set: frozenset[str] | None = None
        self._asked: dict[str, bool] = {}

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str) or not ip or "/" in ip or " " in ip or "\n" in ip:
            return False  # (never a captured address)
        if self._set is not None:
            return ip in self._set
        found = self._asked.get(ip)
        if found is not None:
            return found
        if self._text is None:
            self._text = "\n" + "\n".join(self._texts()) + "\n"
        if len(self._asked) >= self._SEARCHES:
            self._set = frozenset(_HAIRPIN_SOURCE.findall(self._text))
            return ip in self._set
        found = self._asked[ip] = any(_found(self._text, f"{lead}-s {ip}") for lead in "\n ")
        return found


class KubeChains:
    """The rules of the chains kube-proxy owns, read into RuleFacts: the dispatch chains at once, a Service
    port's own chains when that port is asked for. Of the ~10^5 chain names of a big dump only the per-Service-
    port ones are listed up front; the endpoint chains and their hairpin addresses when first asked for."""

    _EAGER = (SERVICES, NODEPORTS, MASQ_CHAIN, "KUBE-POSTROUTING", "POSTROUTING")

    def __init__(self, ruleset: Ruleset) -> None:
        self.filter: dict[str, list[RuleFacts]] = {}
        self.nat_chains: Mapping[str, Chain] = {}
        self.service_chains: dict[str, tuple[str, str]] = {}  # per-service-port chain -> (prefix, hash)
        self.endpoint_ips: Container[str] = frozenset()  # the `-s EP` of each endpoint chain's hairpin rule
        self._nat = ruleset.table("nat")
        self._sep_chains: dict[str, Chain] | None = None
        self._facts: dict[str, list[RuleFacts]] = {}
        nat = self._nat
        filt = ruleset.table("filter")
        if nat is not None:
            self.nat_chains = nat.by_name
            names = "\n".join([chain.name for chain in nat.chains])
            self.service_chains = {name: (prefix, key) for name, prefix, key in _SERVICE_CHAIN.findall(names)}
            self.endpoint_ips = _Hairpins(functools.partial(_hairpin_texts, nat))  # (not a method: no cycle)
            for name in self._EAGER:
                self.facts(name)
        if filt is not None:
            for name in FILTER_CHAINS:
                found = filt.chain(name)
                if found is not None:
                    self.filter[name] = [read(r) for r in found.rules]

    @property
    def sep_chains(self) -> dict[str, Chain]:
        """The endpoint chains (KUBE-SEP-…) by name, in dump order."""
        if self._sep_chains is None:
            nat = self._nat
            self._sep_chains = {c.name: c for c in nat.chains if c.name.startswith(SEP)} if nat is not None else {}
        return self._sep_chains

    def facts(self, name: str) -> list[RuleFacts]:
        """The rules of nat chain `name` (empty when the dump has no such chain)."""
        found = self._facts.get(name)
        if found is None:
            chain = self.nat_chains.get(name)
            found = self._facts[name] = [read(r) for r in chain.rules] if chain is not None else []
        return found

    def mark(self) -> int:
        """Where the facts read from now on start (for forget_since)."""
        return len(self._facts)

    def forget_since(self, mark: int) -> None:
        """Drop the facts read since `mark`: a Service port's own chains are read for that port alone, and
        kept they would be ~10^5 objects (~30 MB of a 160,000-rule dump) that nothing reads again."""
        facts = self._facts
        while len(facts) > mark:
            facts.popitem()  # (the last read first: a dict keeps its insertion order)


def _hairpin_texts(nat: Table) -> list[str]:
    """The first rule of every endpoint chain: kube-proxy writes the hairpin rule first."""
    return [chain.rules[0][1] for chain in nat.chains if chain.rules and chain.name.startswith(SEP)]


@dataclass(frozen=True, slots=True)
class ChainSummary:
    """What a Service port reads of one of its chains: the first name a comment gives, whether it drops for
    want of local endpoints, the first protocol, its endpoint chains (in rule order), the sources its
    firewall rules let through (KUBE-FW), whether it sends external traffic to local endpoints only
    (KUBE-EXT), the session affinity timeout."""

    name: str | None = None
    no_local_drop: bool = False
    proto: str | None = None
    endpoint_chains: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    ext_local: bool = False
    affinity: int | None = None


NO_RULES = ChainSummary()
_new_summary = positional_new(ChainSummary, [f.name for f in fields(ChainSummary)])
# A chain's summary by its rule texts, process-wide: the nodes of one cluster (`audit`) write a Service port's
# chains alike, so each distinct chain is read into RuleFacts once, not once a node. The facts a rule gives are
# its text's (the loader gives equal texts equal shapes; a rule without a shape is read apart, see chain_summary).
# Bounded: a node has ~10^4 such chains, and the cache starts again when full.
_SUMMARIES: dict[tuple[str, ...], ChainSummary] = {}
SUMMARIES_LIMIT = 100_000
_RULE_TEXT = itemgetter(1)
_RULE_SHAPE = itemgetter(4)


def chain_summary(rules: Sequence[Rule]) -> ChainSummary:
    """The summary of a chain with these rules (read once per distinct texts)."""
    texts = tuple(map(_RULE_TEXT, rules))
    found = _SUMMARIES.get(texts)
    if found is not None and all(map(_RULE_SHAPE, rules)):
        return found
    found = _summary(rules)
    if all(map(_RULE_SHAPE, rules)):  # (a rule built without a shape reads as no facts: not its text's)
        if len(_SUMMARIES) >= SUMMARIES_LIMIT:
            _SUMMARIES.clear()
        _SUMMARIES[texts] = found
    return found


# What a rule can give a summary besides its target: a rule whose shape sets none of these (or only the name's
# comment and the protocol once both are known) is not read, its target taken from its text (facts.shape_fields).
_NAME_FIELDS = frozenset({"comment"})
_PROTO_FIELDS = frozenset({"proto"})
_OTHER_FIELDS = frozenset({"src", "src_type", "recent_check", "seconds"})


def _summary(rules: Sequence[Rule]) -> ChainSummary:
    """A chain's ChainSummary: the first name a comment gives, the first protocol, and so on, in rule order; the
    rules whose facts cannot add to it read for their target alone (an endpoint jump of a load-balancing chain,
    once the chain's first rule gave its name and protocol)."""
    name: str | None = None
    proto: str | None = None
    no_local_drop = ext_local = False
    endpoint_chains: dict[str, None] = {}
    ranges: list[str] = []
    affinity: int | None = None
    skips = _SKIPS
    for rule in rules:
        shape = rule[4]
        if shape is not None:
            skip = skips.get(id(shape))
            if skip is None or skip[0] is not shape:
                skip = _skip(shape)
            if skip[1] and (name is not None or not skip[2]) and (proto is not None or not skip[3]):
                text = rule[1]
                target = text[text.rfind(" ") + 1:]  # (see facts.shape_fields)
                if '"' not in target and target != DROP_CHAIN:
                    if target.startswith(SEP):
                        endpoint_chains[target] = None
                    elif target.startswith("KUBE-SVL-"):
                        ext_local = True
                    continue
        f = read(rule)
        target = f.target
        if name is None and f.comment:
            parsed = parse_comment(f.comment)
            if parsed is not None:
                name = parsed[0]
        if affinity is None and f.recent_check and f.seconds is not None:
            affinity = _number(f.seconds)
        if target == DROP_CHAIN and f.comment and "has no local endpoints" in f.comment:
            no_local_drop = True
        if proto is None and f.proto:
            proto = f.proto.lower()
        if target.startswith(SEP):
            endpoint_chains[target] = None
        if f.src is not None and not f.src_neg and target.startswith(("KUBE-EXT-", "KUBE-SVC-", "KUBE-XLB-")):
            ranges.append(f.src)
        if target.startswith("KUBE-SVL-") or f.src_type is not None:
            ext_local = True
    # (the endpoint chains' names interned: summaries are kept (_SUMMARIES), and carry's reads name the same chains)
    return _new_summary(name, no_local_drop, proto, tuple(map(intern, endpoint_chains)), tuple(ranges), ext_local,
                        affinity)


# id(shape) -> (shape, whether its rules can be read for their target alone, whether only once the chain's name is
# known, whether only once its protocol is).
_SKIPS: dict[int, tuple[RuleShape, bool, bool, bool]] = {}


def _skip(shape: RuleShape) -> tuple[RuleShape, bool, bool, bool]:
    last, attrs = shape_fields(shape)
    found = _SKIPS[id(shape)] = (shape, last and attrs.isdisjoint(_OTHER_FIELDS), not attrs.isdisjoint(_NAME_FIELDS),
                                 not attrs.isdisjoint(_PROTO_FIELDS))
    return found


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
