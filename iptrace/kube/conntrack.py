"""`audit`'s conntrack findings: for every collected node with a conntrack table, one `stale-conntrack` (or
`stale-conntrack-no-dnat`) finding per Service port whose flows the node's rules no longer decide, with the
count and the exact `conntrack -D` fix.

Dataplane-free: the caller gives a Tracer per IP family of the node's rules (the dataplane's own), and the
table it read. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from iptrace.conntrack import advice
from iptrace.conntrack.stale import NOT_DNATED, STALE, Judgement, judge_table
from iptrace.conntrack.table import ConntrackTable
from iptrace.dataplane import Tracer, join_host_port
from iptrace.kube.audit import AuditReport
from iptrace.kube.compare import Finding

# Conntrack lines shown per finding (the fix covers every entry).
EVIDENCE_LIMIT = 6


@dataclass(frozen=True, slots=True)
class ConntrackFinding(Finding):
    """A finding whose evidence lines are lines of a conntrack table (`source`), not of the node's dump."""

    source: str = ""

    def to_json(self) -> dict[str, Any]:
        data = Finding.to_json(self)
        for item in data["evidence"]:
            item["source"] = self.source
        return data


def _label(j: Judgement) -> str:
    """kube-proxy's ServicePortName with the protocol when not TCP (as compare.Finding names services), or the
    original destination when no rule names the Service."""
    g = j.flows
    name = j.service or join_host_port(g.dst, g.dport or 0)
    return name if g.proto == "tcp" else f"{name}/{g.proto}"


def conntrack_findings(node: str, table: ConntrackTable, tracers: Mapping[str, Tracer], *,
                       version_hint: str = "") -> list[Finding]:
    """The findings of one node. `tracers`: "ipv4"/"ipv6" → the Tracer of that family's rules."""
    out: list[Finding] = []
    for family, tracer in tracers.items():
        judgements = judge_table(table, tracer, family)
        by_destination: dict[tuple[str, int | None, str], list[Judgement]] = {}
        for j in judgements:
            by_destination.setdefault((j.flows.dst, j.flows.dport, j.flows.proto), []).append(j)
        groups: dict[tuple[str, str], list[Judgement]] = {}
        for j in judgements:
            if j.status in (STALE, NOT_DNATED):
                groups.setdefault((j.status, _label(j)), []).append(j)
        for (status, label), found in groups.items():
            destinations = list(dict.fromkeys((j.flows.dst, j.flows.dport, j.flows.proto) for j in found))
            # Every flow to those destinations was judged: the deletion filters can only match those.
            universe = [j.flows for d in destinations for j in by_destination[d]]
            chosen = sorted({c for d in destinations for j in by_destination[d] for c in j.chosen})
            where = advice._listing([join_host_port(dst, dport or 0) for dst, dport, _ in destinations])
            if status == STALE:
                a = advice.stale(found, universe, where, entry_at=table.entry_at, chosen=chosen,
                                 version_hint=version_hint)
            else:
                a = advice.not_dnated(found, universe, where, entry_at=table.entry_at, chosen=chosen)
            shown = a.lines[:EVIDENCE_LIMIT]
            detail = a.detail
            if len(a.lines) > len(shown):
                detail += f" (Evidence shows {len(shown)} of {len(a.lines)} entries; the fix covers all.)"
            out.append(ConntrackFinding(a.id, "error", node, label, f"{label}: {a.summary}", detail, a.fix,
                                        tuple((n, table.line_text(n)) for n in shown), source=table.source))
    return out


def add_findings(report: AuditReport, findings: Sequence[Finding]) -> AuditReport:
    """The audit with these findings merged in (ordered as the audit orders them, node counts updated)."""
    if not findings:
        return report
    nodes = []
    for n in report.nodes:
        mine = [f for f in findings if f.node == n.name]
        nodes.append(replace(n, errors=n.errors + sum(f.severity == "error" for f in mine),
                             warnings=n.warnings + sum(f.severity == "warning" for f in mine),
                             infos=n.infos + sum(f.severity == "info" for f in mine)))
    merged = sorted((*report.findings, *findings), key=lambda f: f.sort_key)
    return replace(report, nodes=tuple(nodes), findings=tuple(merged))
