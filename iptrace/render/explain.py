"""Renders an explain Report as a few lines of prose (text) or the documented JSON. No I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iptrace.dataplane import PathEncoder
from iptrace.explain import VERDICT_WORDS
from iptrace.explain.diagnosis import Diagnosis, Explanation, Report
from iptrace.render.prose import Prose

_MARK = {"error": "✗", "warning": "!", "info": "✓"}
_WHO = {"pod": "From a pod", "node": "From the node itself", "external": "From outside the cluster"}
_WIDTH = 100  # the documented width of its paragraphs


def _diagnosis(d: Diagnosis, prose: Prose) -> list[str]:
    out = prose.line(f"{_MARK[d.severity]} {d.summary}   [{d.id}, {d.severity}]", "  ")
    out += prose.wrap(d.detail, "  ")
    # A fix may end in commands, one a line: they are shown unwrapped so that they can be pasted.
    fix, *commands = d.fix.split("\n")
    out += prose.wrap(f"{'Note' if d.severity == 'info' else 'Fix'}: {fix}", "  ")
    out += [f"    {c}" for c in commands]
    if d.evidence:
        out.append("  Evidence:")
        for e in d.evidence:
            # (another file's evidence, a conntrack table's, names it; nft JSON input has no lines: the kernel
            # handle of a rule, or of an element's set, says which)
            out.append(f"    {e.where}{e.rule.strip()}")  # a listing indents its lines
    return out


def _who(e: Explanation) -> str:
    src = e.trace.packet.src
    return f"From {src}" if e.source_kind not in _WHO else f"{_WHO[e.source_kind]} ({src})"


def _explanation(e: Explanation, with_source: bool, skip: tuple[Diagnosis, ...], prose: Prose) -> list[str]:
    out = prose.line(f"{_who(e)}: {e.headline}" if with_source else e.headline)
    for d in e.diagnoses:
        if d in skip:
            continue
        out.append("")
        out += _diagnosis(d, prose)
    return out


def render_explain_text(report: Report, width: int | None = None, say: Callable[[str], str] | None = None) -> str:
    """The report as prose; `width`: the terminal's, when it is narrower than the text's own 100 columns, and
    `say` (iptrace.render.prose.Prose)."""
    prose = Prose(width, _WIDTH, say)
    out: list[str] = []
    first = report.explanations[0]
    if len(report.explanations) == 1:
        out += _explanation(first, first.source_kind != "external", (), prose)
    elif not _differ(report) and not _worded_apart(report):
        sources = ", ".join(f"{e.source_kind} {e.trace.packet.src}" for e in report.explanations)
        out += _explanation(first, False, (), prose)
        out.append("")
        out += prose.line(f"The same from every source ({sources}).")
        for d in report.differences:
            out += prose.line(f"Note: {d}", "  ")
    else:
        if _differ(report):
            out += prose.line(f"{report.destination}/{report.proto}: the answer depends on where the client is.")
        else:  # one verdict, in words of each source's own (its address, the endpoints it reaches): each shown
            out += prose.line(f"{report.destination}/{report.proto}: "
                              f"{VERDICT_WORDS.get(first.verdict, first.verdict)} from every source, as each says "
                              "below.")
        for d in report.differences:
            out += prose.line(f"  - {d}", "    ")
        # A finding every source shares (a node-wide one, say) is said once, before the per-source answers.
        shared = tuple(d for d in first.diagnoses if all(d in e.diagnoses for e in report.explanations[1:]))
        for d in shared:
            out.append("")
            out += _diagnosis(d, prose)
        for e in report.explanations:
            out.append("")
            out += _explanation(e, True, shared, prose)
    assumptions = list(dict.fromkeys(a for e in report.explanations for a in e.trace.assumptions))
    if assumptions:
        out.append("")
        out.append("Assumed:")
        for a in assumptions:
            out += prose.wrap(a, "  - ", "    ")
    return "\n".join(out) + "\n"


def _differ(report: Report) -> bool:
    keys = {(e.verdict, tuple(d.id for d in e.diagnoses)) for e in report.explanations}
    return len(keys) > 1


def _worded_apart(report: Report) -> bool:
    """Whether a diagnosis's words differ from source to source: a problem's (source-range-blocked names the
    client), or an answer's summary (healthy lists the endpoints each source reaches: externalTrafficPolicy Local
    keeps outside clients on this node's). An info's detail may differ (healthy says whom it masquerades; the
    differences note it) and is shown once, as the first source's."""
    keys = {tuple((d.summary, d.detail, d.fix) if d.severity != "info" else (d.summary,) for d in e.diagnoses)
            for e in report.explanations}
    return len(keys) > 1


def explain_to_json(report: Report, paths: PathEncoder | None = None) -> dict[str, Any]:
    """The `explain -o json` document; `paths`: see iptrace.dataplane.Outcome.to_json."""
    if len(report.explanations) == 1:
        return report.explanations[0].to_json(paths)
    return report.to_json(paths)
