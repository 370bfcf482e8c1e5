"""`explain … --conntrack FILE`: the connections the rules no longer decide.

`conntrack_diagnoses` judges every entry of the table whose original tuple goes to the asked address (each by a
trace of its own first packet, through the dataplane's Tracer) and says which ones still go where the rules no
longer send them (`stale-conntrack`), which UDP flows were never DNATed though the rules now DNAT them
(`stale-conntrack-no-dnat`), and, on request, that the others agree with the rules (`conntrack-healthy`).
`with_conntrack` adds them to an explain Report. Pure: the table was read by the caller.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from iptrace.conntrack import advice
from iptrace.conntrack.stale import (
    CURRENT,
    FINISHED,
    NOT_DNATED,
    STALE,
    UNCHANGED,
    Judge,
    endpoints_chosen,
    flows_to,
)
from iptrace.conntrack.table import ConntrackTable
from iptrace.dataplane import Ruleset, Tracer, join_host_port
from iptrace.explain.diagnosis import SEVERITY_ORDER, Diagnosis, Evidence, Report
from iptrace.explain.facts import step_evidence

# At most this many conntrack lines are shown as evidence of one diagnosis (the fix covers every entry).
EVIDENCE_LIMIT = 20


def _diagnosis(a: advice.Advice, table: ConntrackTable, ruleset: Ruleset) -> Diagnosis:
    shown = a.lines[:EVIDENCE_LIMIT]
    detail = a.detail
    if len(a.lines) > len(shown):
        detail += f" (Evidence shows the first {len(shown)} of {len(a.lines)} entries; the fix covers all.)"
    evidence = [Evidence(n, table.line_text(n), table.source) for n in shown]
    evidence += step_evidence(a.rules, ruleset)  # the rules as explain's own evidence shows them
    return Diagnosis(a.id, a.severity, a.summary, detail, a.fix, tuple(evidence))  # type: ignore[arg-type]


def conntrack_diagnoses(tracer: Tracer, ruleset: Ruleset, table: ConntrackTable, dst: str, dport: int, *,
                        proto: str = "tcp", src: str | None = None, verbose: bool = False,
                        version_hint: str = "") -> tuple[Diagnosis, ...]:
    """The conntrack diagnoses for dst:dport/proto by `tracer`, a Tracer of `ruleset` (whose evidence_text the
    rules' evidence reads as). `src`: an IP limits them to that client's flows (a source kind such as `pod` does
    not); `verbose` adds `conntrack-healthy` for the entries that agree with the rules."""
    client = src if src is not None and _is_ip(src) else None
    label = join_host_port(dst, dport)
    # Every deletion filter names the protocol, destination and port: those flows are all it could match.
    universe = flows_to(table, dst, dport, proto)
    judgements = Judge(tracer).judge_all([g for g in universe if client is None or g.src == client])
    chosen = sorted(endpoints_chosen(judgements))
    out: list[Diagnosis] = []
    stale = [j for j in judgements if j.status == STALE]
    if stale:
        out.append(_diagnosis(advice.stale(stale, universe, label, entry_at=table.entry_at, chosen=chosen,
                                           version_hint=version_hint, orig_src=client), table, ruleset))
    never = [j for j in judgements if j.status == NOT_DNATED]
    if never:
        out.append(_diagnosis(advice.not_dnated(never, universe, label, entry_at=table.entry_at, chosen=chosen,
                                                orig_src=client), table, ruleset))
    if verbose:
        fine = [j for j in judgements if j.status in (CURRENT, UNCHANGED, FINISHED)]
        if fine or not judgements:
            out.append(_diagnosis(advice.healthy(fine, label, source=table.source, total=len(table)), table,
                                  ruleset))
    return tuple(out)


def with_conntrack(report: Report, diagnoses: tuple[Diagnosis, ...]) -> Report:
    """The report with these diagnoses added to every source's explanation (they concern the entries' own
    clients, whichever kind of client the report simulated)."""
    if not diagnoses:
        return report
    explanations = tuple(
        replace(e, diagnoses=tuple(sorted((*e.diagnoses, *diagnoses), key=lambda d: SEVERITY_ORDER[d.severity])))
        for e in report.explanations)
    return replace(report, explanations=explanations)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
