"""Renders an audit report and a dump diff as short text or the documented JSON (the README's JSON reference).
Returns strings; no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from iptrace.kube.audit import AuditReport
from iptrace.kube.compare import Finding
from iptrace.kube.diff import Diff, NodeAddressGap, family_name
from iptrace.kube.evidence import evidence_where
from iptrace.render.prose import Prose
from iptrace.text import counted

AUDIT_FORMAT = 1
DIFF_FORMAT = 1
_MARK = {"error": "✗", "warning": "!", "info": "·"}
_CLIENT_WORDS = {"external": "outside", "outside-source-ranges": "outside the source ranges", "pod": "a pod",
                 "node": "the node"}


# ------------------------------------------------------------------------------------------------ audit


def audit_to_json(report: AuditReport) -> dict[str, Any]:
    """The audit as a JSON-ready dict; keys are stable (the README's JSON reference)."""
    counts = {s: sum(f.severity == s for f in report.findings) for s in ("error", "warning", "info")}
    return {
        "format": AUDIT_FORMAT,
        "cluster": report.cluster_source,
        "ok": not report.has_error,
        "counts": counts,
        "nodes": [{
            "name": n.name, "status": n.status, "kube_node": n.kube_node, "era": n.era,
            "version_hint": n.version_hint, "mode": n.mode, "dataplane": n.dataplane, "services": n.services,
            "findings": {"error": n.errors, "warning": n.warnings, "info": n.infos}, "error": n.error,
        } for n in report.nodes],
        "findings": [f.to_json() for f in report.findings],
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_findings_lines(findings: Sequence[Finding], *, verbose: bool = False, with_node: bool = True,
                          width: int | None = None, say: Callable[[str], str] | None = None) -> list[str]:
    """One line per finding (plus its fix; `verbose` adds the detail and the evidence lines); `width`: the
    terminal's, to wrap them to, and `say` (iptrace.render.prose.Prose)."""
    prose = Prose(width, None, say)
    out: list[str] = []
    for f in findings:
        summary = f.summary
        if f.service is None and f.node and summary.startswith(f"{f.node}: "):
            summary = summary[len(f.node) + 2:]  # the node is already in the brackets
        where = f"[{f.node}] " if f.node and with_node else ""
        out += prose.line(f"{_MARK[f.severity]} {where}{summary}   ({f.id})", "  ")
        if verbose:
            out += prose.wrap(f.detail, "    ")
        # A fix may end in commands, one a line (conntrack -D …): indented, never joined, so they can be pasted.
        fix, *commands = f.fix.split("\n")
        out += prose.wrap(f"fix: {fix}", "    ", "      ")
        out += [f"      {c}" for c in commands]
        if verbose:
            source = getattr(f, "source", "")  # evidence from a conntrack table, not the dump
            for at, rule in f.evidence:
                out.append(f"    {source}:{at}: {rule}" if source else f"    {evidence_where(at)}{rule}")
    return out


def render_audit_text(report: AuditReport, *, verbose: bool = False, width: int | None = None,
                      say: Callable[[str], str] | None = None) -> str:
    """Findings ordered by severity (one line each, plus the fix; `verbose` adds details and evidence),
    then one row per node; `width`: the terminal's, to wrap the findings to."""
    out: list[str] = []
    errors = sum(f.severity == "error" for f in report.findings)
    warnings = sum(f.severity == "warning" for f in report.findings)
    n = len(report.nodes)
    head = f"Audit of {n} node{'s' if n != 1 else ''}"
    if report.cluster_source:
        head += f" against {report.cluster_source}"
    if not report.findings:
        out.append(f"{head}: no findings — every node forwards every Service the same way"
                   + (" the API asks" if report.cluster_source else "") + ".")
    else:
        out.append(f"{head}: {counted(errors, 'error')}, {counted(warnings, 'warning')}.")
        out.append("")
        out += render_findings_lines(report.findings, verbose=verbose, width=width, say=say)
    out.append("")
    # A MODE column only for a fleet whose kube-proxies run in more than one proxy mode.
    mixed = len({s.mode for s in report.nodes if s.status == "ok"}) > 1
    rows = [["NODE", "STATUS", *(["MODE"] if mixed else []), "ERA", "SERVICES", "FINDINGS"]]
    for s in report.nodes:
        name = s.name if not s.kube_node or s.kube_node == s.name else f"{s.name} ({s.kube_node})"
        era = s.era + (f" {s.version_hint}" if s.version_hint else "")
        found = f"{counted(s.errors, 'error')}, {counted(s.warnings, 'warning')}" if (s.errors or s.warnings) else "-"
        rows.append([name, s.status, *([s.mode] if mixed else []), era,
                     str(s.services) if s.status != "load-error" else "-", found])
    out += _table(rows)
    for s in report.nodes:
        if s.error:
            out.append(f"{s.name}: {s.error}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ diff


def diff_to_json(d: Diff) -> dict[str, Any]:
    """The diff as a JSON-ready dict; keys are stable (the README's JSON reference)."""
    def side(s: Any) -> dict[str, Any]:
        return {"service": s.service, "cluster_ip": s.cluster_ip, "port": s.port, "node_port": s.node_port,
                "endpoints": list(s.endpoints), "family": s.family}

    def value(v: object) -> object:
        return list(v) if isinstance(v, tuple) else v

    return {
        "format": DIFF_FORMAT,
        "a": d.a, "b": d.b,
        "era": {"a": d.era_a, "b": d.era_b},
        "services_added": [side(s) for s in d.added],
        "services_removed": [side(s) for s in d.removed],
        "services_changed": [{
            "service": c.service,
            "fields": [{"field": f.field, "a": value(f.before), "b": value(f.after)} for f in c.fields],
            "endpoints": [{"endpoint": e.endpoint, "change": e.change, "a": e.before, "b": e.after}
                          for e in c.endpoints],
            "forwarding": [{"way": f.way, "client": f.client, "a": f.before, "b": f.after} for f in c.forwarding],
            "family": c.family,
        } for c in d.changed],
        "rules": [{"table": r.table, "chain": r.chain, "change": r.change, "rule": r.rule, "line": r.line}
                  for r in d.rules],
        "mode": {"a": d.mode_a, "b": d.mode_b},
        "equivalent": d.equivalent,
        "notes": list(d.notes),
        "warnings": list(d.warnings),
    }


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):  # (the fields are `services -o json`'s keys: their values as it writes them)
        return "true" if v else "false"
    if isinstance(v, tuple):
        return ", ".join(str(x) for x in v) or "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _verdict_line(d: Diff) -> str:
    """The migration check's answer (or a diff's, when only rules outside kube-proxy's chains differ)."""
    ports = len({(x.family, x.service) for x in (*d.added, *d.removed, *d.changed)})
    if d.equivalent:
        return "equivalent: every Service port is forwarded alike" + (
            f" in {d.mode_a} and {d.mode_b} mode" if d.mode_a != d.mode_b else "")
    return f"not equivalent: {counted(ports, 'Service port differs', 'Service ports differ')}"


def _host_port(ip: str, port: int | None) -> str:
    """`ip:port`, `[ip]:port` for IPv6 (whose own colons would swallow the port), `ip` without a port."""
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_MASQUERADED = " (masqueraded)"


# (a way in whose packet no rule forwards and a chain's ACCEPT or policy lets in: said for a person, in text only)
_ACCEPTED = "ACCEPT (not forwarded: the node itself receives it)"


def _fares_change(before: str, after: str) -> str:
    """`before -> after`; when only masquerading changed, the DNAT once (it may list many endpoints) and then
    that change."""
    dnat = before.removesuffix(_MASQUERADED)
    if not dnat.startswith("DNAT") or dnat != after.removesuffix(_MASQUERADED):
        return " -> ".join(_ACCEPTED if x == "ACCEPT" else x for x in (before, after))
    masq = {True: "masqueraded", False: "not masqueraded"}
    return f"{dnat}; {masq[before.endswith(_MASQUERADED)]} -> {masq[after.endswith(_MASQUERADED)]}"


def _node_address_gap_lines(d: Diff, gap: NodeAddressGap, family: str, prose: Prose) -> list[str]:
    """Node addresses only one mode accepts nodePorts on, once: a node lists every local address (cni0, docker0,
    …), and each nodePort at each of them would bury every other difference."""
    yes, no = (d.mode_a, d.mode_b) if gap.accepting == "a" else (d.mode_b, d.mode_a)
    other = "b" if gap.accepting == "a" else "a"
    many = len(gap.addresses) > 1
    where = f"only on {', '.join(gap.elsewhere)}" if gap.elsewhere else "on none of the node's addresses"
    f = gap.example
    text = (f"~ nodePorts at {', '.join(gap.addresses)}{family}: {yes} mode ({gap.accepting}) accepts every nodePort "
            f"there, {no} mode ({other}) none (it accepts them {where}: its --nodeport-addresses): "
            f"{counted(len(gap.services), 'Service port differs', 'Service ports differ')} there from outside "
            f"(-o json lists each), e.g. {gap.example_service} at {f.way} from {_CLIENT_WORDS[f.client]}: "
            f"{_fares_change(f.before, f.after)}")
    them = "them" if many else "it"
    fix = (f"fix: a client of {'these addresses' if many else 'this address'} reaches those nodePorts in {yes} mode "
           f"only: set {no} mode's --nodeport-addresses to cover {them}")
    if gap.elsewhere:
        fix += f", or have the clients use {' or '.join(gap.elsewhere)}"
    return prose.line(text, "    ") + prose.wrap(fix, "    ", "      ")


def render_diff_text(d: Diff, *, width: int | None = None, say: Callable[[str], str] | None = None) -> str:
    """`-`/`+` lines per Service port, then the rules changed outside kube-proxy's chains, then the notes;
    `width`: the terminal's, to wrap the warnings and notes to, and `say` (iptrace.render.prose.Prose)."""
    prose = Prose(width, None, say)
    out = [f"--- {d.a}", f"+++ {d.b}"]
    for w in d.warnings:
        out += prose.line(f"warning: {w}", "  ")
    if d.empty:
        out.append("no differences in Services, endpoints or non-kube-proxy rules")
        return "\n".join(out) + "\n"
    if d.mode_a != d.mode_b:
        out.append(f"kube-proxy mode: {d.mode_a} -> {d.mode_b} ({d.era_a} -> {d.era_b})")
    elif d.era_a != d.era_b:
        out.append(f"kube-proxy layout: {d.era_a} -> {d.era_b}")
    out.append(_verdict_line(d))
    # (kube-proxy names a dual-stack Service's ports alike in both families: which one, when both are compared)
    def family(x: Any) -> str:
        return f" ({family_name(x.family)})" if len(d.families) > 1 else ""

    for gap in d.node_address_gaps:
        out += _node_address_gap_lines(d, gap, family(gap), prose)

    for sign, sides in (("-", d.removed), ("+", d.added)):
        for s in sides:
            where = f" {_host_port(s.cluster_ip, s.port)}" if s.cluster_ip else ""
            out.append(f"{sign} service {s.service}{family(s)}{where} ({counted(len(s.endpoints), 'endpoint')})")
    for c in d.changed:
        ways = [f for f in c.forwarding if not f.node_address]  # (said once above, per set of node addresses)
        if not (c.fields or c.endpoints or ways):
            continue
        out.append(f"~ service {c.service}{family(c)}")
        for f in c.fields:
            out.append(f"    {f.field}: {_fmt(f.before)} -> {_fmt(f.after)}")
        for e in c.endpoints:
            if e.change == "added":
                out.append(f"    + endpoint {e.endpoint} (p={_fmt(e.after)})")
            elif e.change == "removed":
                out.append(f"    - endpoint {e.endpoint} (p={_fmt(e.before)})")
            elif e.change == "probability":
                out.append(f"    ~ endpoint {e.endpoint} probability {_fmt(e.before)} -> {_fmt(e.after)}")
            else:
                out.append(f"    ~ endpoint {e.endpoint} local {_fmt(e.before)} -> {_fmt(e.after)}")
        for f in ways:
            client = _CLIENT_WORDS.get(f.client, f.client)
            out.append(f"    ~ {f.way} from {client}: {_fares_change(f.before, f.after)}")
    if d.rules:
        out.append("rules outside kube-proxy's chains:")
        for r in d.rules:
            sign = {"added": "+", "removed": "-", "chain-added": "+", "chain-removed": "-"}.get(r.change, "~")
            side = "b" if r.change in ("added", "chain-added", "policy") else "a"
            out.append(f"  {sign} [{r.table}] {r.rule}   ({side}:{r.line})")
    if d.notes:
        out.append("notes (what one mode cannot show; no Service-port difference):")
        for n in d.notes:
            out += prose.line(f"  - {n}", "    ")
    return "\n".join(out) + "\n"
