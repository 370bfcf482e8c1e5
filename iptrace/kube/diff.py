"""What changed between two dumps, at the level people think about: Service ports added or removed, their
ways in, policies and endpoints, and — outside kube-proxy's own chains — rules added or removed.

Both sides are iptrace.kube.analysis.Analysis objects, of the same dataplane or not (an iptables dump against
an nftables ruleset of the same cluster is the migration check). Rules outside kube-proxy's are compared as text
(counters and line numbers ignored), in order, with difflib, and only between dumps of one dataplane. Pure.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from iptrace.kube.compare import view_service_label
from iptrace.kube.view import ServicePortView


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str  # e.g. "node_port", "external_traffic_policy"
    before: object
    after: object


@dataclass(frozen=True, slots=True)
class EndpointChange:
    endpoint: str  # ip:port
    change: str  # "added" | "removed" | "probability" | "locality"
    before: float | bool | None = None
    after: float | bool | None = None


@dataclass(frozen=True, slots=True)
class ServiceChange:
    service: str  # ns/svc:port (with "/udp" etc. when not TCP)
    fields: tuple[FieldChange, ...]
    endpoints: tuple[EndpointChange, ...]


@dataclass(frozen=True, slots=True)
class ServiceSide:
    """A Service port that exists on one side only."""

    service: str
    cluster_ip: str | None
    port: int | None
    node_port: int | None
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleChange:
    table: str
    chain: str
    change: str  # "added" | "removed" | "chain-added" | "chain-removed" | "policy"
    rule: str  # "-A CHAIN …" as iptables-save prints it, without counters (or the chain line)
    line: int  # line in A for removed, in B for added


@dataclass(frozen=True, slots=True)
class Diff:
    a: str
    b: str
    era_a: str
    era_b: str
    added: tuple[ServiceSide, ...]
    removed: tuple[ServiceSide, ...]
    changed: tuple[ServiceChange, ...]
    rules: tuple[RuleChange, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.rules) and self.era_a == self.era_b


_FIELDS = ("cluster_ip", "port", "node_port", "external_ips", "lb_ips", "lb_source_ranges",
           "health_check_node_port", "external_traffic_policy", "internal_traffic_policy",
           "session_affinity_timeout", "no_endpoints", "no_local_endpoints")


def _side(sp: ServicePortView) -> ServiceSide:
    return ServiceSide(view_service_label(sp), sp.cluster_ip, sp.port, sp.node_port,
                       tuple(ep.address for ep in sp.endpoints))


def _service_change(a: ServicePortView, b: ServicePortView) -> ServiceChange | None:
    fields = []
    for name in _FIELDS:
        before, after = getattr(a, name), getattr(b, name)
        if isinstance(before, tuple):
            before, after = tuple(sorted(before)), tuple(sorted(after))
        if before != after:
            fields.append(FieldChange(name, before, after))
    ea = {ep.address: ep for ep in a.endpoints}
    eb = {ep.address: ep for ep in b.endpoints}
    endpoints = []
    for addr in sorted(ea.keys() | eb.keys()):
        x, y = ea.get(addr), eb.get(addr)
        if x is None:
            endpoints.append(EndpointChange(addr, "added", None, y.probability if y else None))
        elif y is None:
            endpoints.append(EndpointChange(addr, "removed", x.probability, None))
        else:
            if abs(x.probability - y.probability) > 1e-6:
                endpoints.append(EndpointChange(addr, "probability", x.probability, y.probability))
            if x.local != y.local:
                endpoints.append(EndpointChange(addr, "locality", x.local, y.local))
    if not fields and not endpoints:
        return None
    return ServiceChange(view_service_label(a), tuple(fields), tuple(endpoints))


def _other_rules(a: Any, b: Any) -> list[RuleChange]:
    """Rules of the chains kube-proxy did not write, rule by rule as text (one dataplane on both sides)."""
    out: list[RuleChange] = []
    if a.dataplane.name != b.dataplane.name:
        return out
    chains_a = {(c.table, c.name): c for c in a.dataplane.foreign_chains(a.ruleset)}
    chains_b = {(c.table, c.name): c for c in b.dataplane.foreign_chains(b.ruleset)}
    for key in list(chains_a) + [k for k in chains_b if k not in chains_a]:
        tname, cname = key
        ca, cb = chains_a.get(key), chains_b.get(key)
        if ca is None and cb is not None:
            out.append(RuleChange(tname, cname, "chain-added", cb.header, cb.line))
        elif cb is None and ca is not None:
            out.append(RuleChange(tname, cname, "chain-removed", ca.header, ca.line))
        elif ca is not None and cb is not None and ca.header != cb.header:
            out.append(RuleChange(tname, cname, "policy", f"{ca.header} -> {cb.header.split()[-1]}", cb.line))
        ra = list(ca.rules) if ca is not None else []
        rb = list(cb.rules) if cb is not None else []
        texts_a = [r[0] for r in ra]
        texts_b = [r[0] for r in rb]
        if texts_a == texts_b:
            continue
        matcher = difflib.SequenceMatcher(a=texts_a, b=texts_b, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            for text, line in ra[i1:i2]:
                out.append(RuleChange(tname, cname, "removed", text, line))
            for text, line in rb[j1:j2]:
                out.append(RuleChange(tname, cname, "added", text, line))
    return out


def diff(a: Any, b: Any) -> Diff:
    """The difference from `a` to `b` (iptrace.kube.analysis.Analysis of one family each; build both with the
    same cluster data so that comment-less chains are named alike)."""
    va, vb = a.view, b.view
    sa = {view_service_label(sp): sp for sp in va.services}
    sb = {view_service_label(sp): sp for sp in vb.services}
    added = tuple(_side(sb[k]) for k in sorted(sb.keys() - sa.keys()))
    removed = tuple(_side(sa[k]) for k in sorted(sa.keys() - sb.keys()))
    changed = []
    for k in sorted(sa.keys() & sb.keys()):
        change = _service_change(sa[k], sb[k])
        if change is not None:
            changed.append(change)
    return Diff(a.ruleset.source, b.ruleset.source, va.era.name, vb.era.name, added, removed, tuple(changed),
                tuple(_other_rules(a, b)))
