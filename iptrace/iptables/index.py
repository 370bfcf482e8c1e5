"""An index over a long chain (kube-proxy's KUBE-SERVICES or KUBE-NODEPORTS holds one rule per Service port),
so that a packet visits only the rules that can match it, in their original order.

A rule is filed under its exact, non-negated protocol + destination port (+ destination host when it has one),
or under its destination host alone; every other rule (CIDRs, negations, addrtype, no -d) stays in `rest`.
The index only skips rules whose definite tests would fail, so a walk with it gives the same result as a
walk without it (tests/test_trace_properties.py checks that).
"""

from __future__ import annotations

from collections.abc import Sequence

from iptrace.dataplane import protocol_number
from iptrace.errors import IptraceError
from iptrace.iptables.matchers import Structure, fast_tokens, rule_structure
from iptrace.iptables.model import Rule, unquote
from iptrace.iptables.state import ip_int, parse_net

MIN_RULES = 16  # below this a plain walk is as fast
_PORT_MODULES = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
_DPORT = frozenset({"--dport", "--destination-port"})

Key = tuple[int, int, int | None]


# What the index reads from a rule of one structure, in order: ("-p" | "-d" | "--dport", value token index or
# None when the option has no value).
KeyPlan = tuple[tuple[str, int | None], ...]


def _key_plan(structure: Structure) -> KeyPlan:
    plan: list[tuple[str, int | None]] = []
    for module, specs in structure[0]:
        for name, negated, idx in specs:
            if negated:
                continue
            if module == "" and name in ("-p", "-d"):
                plan.append((name, idx[0] if idx else None))
            elif module in _PORT_MODULES and name in _DPORT:
                plan.append(("--dport", idx[0] if idx else None))
    return tuple(plan)


def _planned_key(plan: KeyPlan, tokens: Sequence[str], version: int) -> tuple[Key | None, int | None]:
    """(protocol, dport, host-or-None) when the rule requires an exact protocol and port, else None; and the
    exact destination host the rule requires (or None). The last of repeated options wins, as in iptables."""
    proto: int | None = None
    dport: int | None = None
    host: int | None = None
    full = (1 << (32 if version == 4 else 128)) - 1
    for kind, i in plan:
        value = "" if i is None else unquote(tokens[i]) if tokens[i][0] == '"' else tokens[i]
        if kind == "-p":
            try:
                proto = protocol_number(value)
            except IptraceError:
                proto = None
        elif kind == "-d":
            if i is not None and "," not in value:
                if version == 4 and value.endswith("/32"):  # (kube-proxy's every -d: parse_net's answer, uncached)
                    try:
                        found = ip_int(value[:-3])
                    except ValueError:
                        continue
                    if found[0] == 4:
                        host = found[1]
                    continue
                try:
                    net = parse_net(value, version)
                except IptraceError:
                    net = None
                if net is not None and net[1] == full:
                    host = net[0]
        elif value.isdigit():
            dport = int(value)
    if proto is not None and dport is not None:
        return (proto, dport, host), host
    return None, host


def rule_key(rule: Rule, version: int, cache: dict[object, Structure], plans: dict[int, KeyPlan],
             alive: list[Structure], tokens: Sequence[str] | None = None) -> tuple[Key | None, int | None]:
    """What the index files a rule under: ((protocol, dport, host-or-None) or None, exact host or None).
    A rule filed under a key (a host) has definite tests that fail for every packet without that protocol and
    port (that destination). `plans` caches per structure id; `alive` keeps those structures alive. `tokens`:
    the rule's (fast_tokens), when the caller has them."""
    structure = cache.get(rule.shape) if rule.shape is not None else None
    if structure is None:
        if tokens is None:
            tokens = fast_tokens(rule.text)
        structure = rule_structure(rule, tokens, cache)
    plan = plans.get(id(structure))
    if plan is None:
        plan = plans[id(structure)] = _key_plan(structure)
        alive.append(structure)
    if not plan:
        return None, None
    return _planned_key(plan, tokens if tokens is not None else fast_tokens(rule.text), version)


# What `rule_key` files a rule under, by all it reads of the rule: its text, its shape (by identity: the key keeps it
# alive) and the IP version. Process-wide: an audit's nodes write KUBE-SERVICES' rules alike, in another order each,
# and build its index once a node (their tracers are their own). Started again when full.
_KEYS: dict[tuple[str, object, int], tuple[Key | None, int | None]] = {}
KEYS_LIMIT = 50_000

# Merged candidate lists kept per index.
MERGED_SIZE = 4096


class ChainIndex:
    """Candidate rule positions for a packet (protocol, destination port, destination address)."""

    __slots__ = ("_merged", "by_host", "by_port", "rest")

    def __init__(self) -> None:
        self.by_port: dict[Key, list[int]] = {}
        self.by_host: dict[int, list[int]] = {}
        self.rest: list[int] = []
        # (proto, dport, dst) -> merged candidates (a Service view asks for each address once per kind of client)
        self._merged: dict[tuple[int, int, int], list[int]] = {}

    @classmethod
    def build(cls, rules: Sequence[Rule], version: int, cache: dict[object, Structure] | None = None,
              ) -> ChainIndex | None:
        """An index when it pays (a long chain, mostly indexable), else None."""
        if len(rules) < MIN_RULES:
            return None
        index = cls()
        limit = len(rules) // 2  # more rules left unindexed than this: a plain walk is as fast
        plans: dict[int, KeyPlan] = {}
        alive: list[Structure] = []  # keeps every structure (hence its id) alive while `plans` is in use
        if cache is None:
            cache = {}
        keys = _KEYS
        for i, rule in enumerate(rules):
            what = (rule[1], rule[4], version)
            found = keys.get(what)
            if found is None:
                if len(keys) >= KEYS_LIMIT:
                    keys.clear()
                found = keys[what] = rule_key(rule, version, cache, plans, alive)
            key, host = found
            if key is not None:
                index.by_port.setdefault(key, []).append(i)
            elif host is not None:
                index.by_host.setdefault(host, []).append(i)
            else:
                index.rest.append(i)
                if len(index.rest) > limit:
                    return None
        return index

    def candidates(self, proto: int, dport: int, dst: int) -> list[int]:
        parts = [p for p in (self.by_port.get((proto, dport, dst)), self.by_port.get((proto, dport, None)),
                             self.by_host.get(dst), self.rest) if p]
        if len(parts) <= 1:
            return parts[0] if parts else []
        key = (proto, dport, dst)
        found = self._merged.get(key)
        if found is None:
            if len(self._merged) >= MERGED_SIZE:
                self._merged.clear()
            # (each list holds rule positions in increasing order, every position in one list only: their merge
            # is the sorted concatenation, which `sorted` makes in C, faster than heapq.merge's generator)
            found = self._merged[key] = sorted([i for part in parts for i in part])
        return found  # (callers only read candidate lists)
