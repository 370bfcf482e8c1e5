"""What changed between two dumps, at the level people think about: Service ports added or removed, their
ways in, policies and endpoints, and — outside kube-proxy's KUBE-* chains — rules added or removed.

Rules are compared as text (counters and line numbers ignored), in order, with difflib, so a rule that moved
shows as removed here and added there. Pure: no I/O, no printing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from iptrace.iptables.model import Ruleset
from iptrace.kube.cluster import ClusterState
from iptrace.kube.compare import view_service_label
from iptrace.kube.view import KubeView, ServicePortView, build_view


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


def _other_rules(a: Ruleset, b: Ruleset) -> list[RuleChange]:
    """Rules of the chains outside kube-proxy's (not KUBE-*), rule by rule as text."""
    out: list[RuleChange] = []
    tables = [t.name for t in a.tables] + [t.name for t in b.tables if a.table(t.name) is None]
    for tname in tables:
        ta, tb = a.table(tname), b.table(tname)
        chains_a = {c.name: c for c in ta.chains} if ta is not None else {}
        chains_b = {c.name: c for c in tb.chains} if tb is not None else {}
        names = list(chains_a) + [c for c in chains_b if c not in chains_a]
        for cname in names:
            if cname.startswith("KUBE-"):
                continue
            ca, cb = chains_a.get(cname), chains_b.get(cname)
            if ca is None and cb is not None:
                out.append(RuleChange(tname, cname, "chain-added", f":{cname} {cb.policy or '-'}", cb.line))
            elif cb is None and ca is not None:
                out.append(RuleChange(tname, cname, "chain-removed", f":{cname} {ca.policy or '-'}", ca.line))
            elif ca is not None and cb is not None and ca.policy != cb.policy:
                out.append(RuleChange(tname, cname, "policy", f":{cname} {ca.policy} -> {cb.policy}", cb.line))
            ra = list(ca.rules) if ca is not None else []
            rb = list(cb.rules) if cb is not None else []
            texts_a = [r.text for r in ra]
            texts_b = [r.text for r in rb]
            if texts_a == texts_b:
                continue
            matcher = difflib.SequenceMatcher(a=texts_a, b=texts_b, autojunk=False)
            for op, i1, i2, j1, j2 in matcher.get_opcodes():
                if op == "equal":
                    continue
                for r in ra[i1:i2]:
                    out.append(RuleChange(tname, cname, "removed", f"-A {cname} {r.text}".rstrip(), r.line))
                for r in rb[j1:j2]:
                    out.append(RuleChange(tname, cname, "added", f"-A {cname} {r.text}".rstrip(), r.line))
    return out


def diff(a: Ruleset, b: Ruleset, *, a_view: KubeView | None = None, b_view: KubeView | None = None,
         cluster: ClusterState | None = None) -> Diff:
    """The difference from dump `a` to dump `b`. Views are built here unless given (pass the ones you have;
    `cluster` names comment-less chains on both sides)."""
    va = a_view if a_view is not None else build_view(a, cluster=cluster)
    vb = b_view if b_view is not None else build_view(b, cluster=cluster)
    sa = {view_service_label(sp): sp for sp in va.services}
    sb = {view_service_label(sp): sp for sp in vb.services}
    added = tuple(_side(sb[k]) for k in sorted(sb.keys() - sa.keys()))
    removed = tuple(_side(sa[k]) for k in sorted(sa.keys() - sb.keys()))
    changed = []
    for k in sorted(sa.keys() & sb.keys()):
        change = _service_change(sa[k], sb[k])
        if change is not None:
            changed.append(change)
    return Diff(a.source, b.source, va.era.name, vb.era.name, added, removed, tuple(changed),
                tuple(_other_rules(a, b)))
