"""An index over a long chain (kube-proxy's KUBE-SERVICES or KUBE-NODEPORTS holds one rule per Service port),
so that a packet visits only the rules that can match it, in their original order.

A rule is filed under its exact, non-negated protocol + destination port (+ destination host when it has one),
or under its destination host alone; every other rule (CIDRs, negations, addrtype, no -d) stays in `rest`.
The index only skips rules whose definite tests would fail, so a walk with it gives the same result as a
walk without it (tests/test_trace_index.py checks that).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from iptrace.errors import IptraceError
from iptrace.model.rules import Rule
from iptrace.trace.matchers import Structure, rule_options
from iptrace.trace.packet import protocol_number
from iptrace.trace.state import parse_net

MIN_RULES = 16  # below this a plain walk is as fast
_PORT_MODULES = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
_DPORT = frozenset({"--dport", "--destination-port"})

Key = tuple[int, int, int | None]


def index_key(rule: Rule, version: int, cache: dict[object, Structure] | None = None,
              ) -> tuple[Key | None, int | None]:
    """(protocol, dport, host-or-None) when the rule requires an exact protocol and port, else None; and the
    exact destination host the rule requires (or None)."""
    proto: int | None = None
    dport: int | None = None
    host: int | None = None
    bits = 32 if version == 4 else 128
    for module, opts in rule_options(rule, cache):
        for opt in opts:
            if opt.negated:
                continue
            if module == "" and opt.name == "-p":
                try:
                    proto = protocol_number(opt.value)
                except IptraceError:
                    proto = None
            elif module == "" and opt.name == "-d" and "," not in opt.value:
                try:
                    net = parse_net(opt.value, version)
                except IptraceError:
                    net = None
                if net is not None and net[1] == (1 << bits) - 1:
                    host = net[0]
            elif module in _PORT_MODULES and opt.name in _DPORT and opt.value.isdigit():
                dport = int(opt.value)
    if proto is not None and dport is not None:
        return (proto, dport, host), host
    return None, host


class ChainIndex:
    """Candidate rule positions for a packet (protocol, destination port, destination address)."""

    __slots__ = ("by_host", "by_port", "rest")

    def __init__(self, rules: Sequence[Rule], version: int, cache: dict[object, Structure] | None = None,
                 ) -> None:
        self.by_port: dict[Key, list[int]] = {}
        self.by_host: dict[int, list[int]] = {}
        self.rest: list[int] = []
        for i, rule in enumerate(rules):
            key, host = index_key(rule, version, cache)
            if key is not None:
                self.by_port.setdefault(key, []).append(i)
            elif host is not None:
                self.by_host.setdefault(host, []).append(i)
            else:
                self.rest.append(i)

    @classmethod
    def build(cls, rules: Sequence[Rule], version: int, cache: dict[object, Structure] | None = None,
              ) -> ChainIndex | None:
        """An index when it pays (a long chain, mostly indexable), else None."""
        if len(rules) < MIN_RULES:
            return None
        index = cls(rules, version, cache)
        if len(index.rest) * 2 > len(rules):
            return None
        return index

    def candidates(self, proto: int, dport: int, dst: int) -> list[int]:
        parts = [p for p in (self.by_port.get((proto, dport, dst)), self.by_port.get((proto, dport, None)),
                             self.by_host.get(dst), self.rest) if p]
        if len(parts) <= 1:
            return parts[0] if parts else []
        return list(heapq.merge(*parts))
