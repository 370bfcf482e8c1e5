"""Renders an audit as one self-contained HTML page (`iptrace audit … -o html`): the verdict and the node
table first, then every finding (errors first) with its detail, fix and evidence lines, then a picture of
every Service port a finding names, per node where the nodes differ.

The page loads nothing from anywhere (no external style, script, font, image or link; a
Content-Security-Policy says so to the browser too), reads the same with scripts off, and prints. Every string
that comes from a dump or the cluster is escaped (rule comments are written by whoever can create a Service).
Pure and deterministic: no I/O, no clock. The JSON twin is `render.audit.audit_to_json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from iptrace import __version__
from iptrace.kube.audit import AuditReport
from iptrace.kube.compare import SEVERITY_ORDER, Finding
from iptrace.kube.digest import NOT_COLLECTED
from iptrace.kube.evidence import evidence_where
from iptrace.kube.portviews import PortViews
from iptrace.kube.view import HEALTH_CHECK, ServicePortView
from iptrace.render.audit import AUDIT_FORMAT
from iptrace.render.graph import KIND_SHORT, service_graph
from iptrace.render.html_assets import CONTENT_SECURITY_POLICY, SCRIPT, STYLE
from iptrace.render.json import percent
from iptrace.render.svg import draw_service_port

_SEVERITIES = ("error", "warning", "info")
_WORD = {"error": "ERROR", "warning": "WARNING", "info": "INFO"}
# Pictures per Service port; with a Local traffic policy every node's picture differs (each balances over its
# own endpoints), and a fleet of 100 nodes must not make a page of 100 pictures per port.
_MAX_PICTURES = 6
_STATUS_WORDS = {"ok": "ok", "no-kube-proxy": "no kube-proxy rules", "load-error": "could not be read"}


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _json_attr(values: Sequence[str]) -> str:
    return _e(json.dumps(list(values), ensure_ascii=False))


# ------------------------------------------------------------------------------------------------ pictures


@dataclass
class _Variant:
    """Nodes whose rules draw the same picture of one Service port."""

    nodes: list[str]
    view: ServicePortView
    graph: tuple[str, list[tuple[str, str, str]], list[tuple[str, str, str]]]
    severities: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Reference:
    """What the endpoints of one Service port should be: the API's, or the nodes' without findings."""

    listed: frozenset[str]  # every address the reference knows
    usable: frozenset[str]  # what KUBE-SVC should balance over
    extra_note: str
    unready_note: str
    missing_note: str


def _split_label(label: str) -> tuple[str, str, str, str] | None:
    """`ns/name:port[/proto]` (compare's finding label) → (ns, name, port name, PROTOCOL)."""
    parts = label.split("/")
    if len(parts) not in (2, 3):
        return None
    name, _, port_name = parts[1].partition(":")
    return parts[0], name, port_name, (parts[2] if len(parts) == 3 else "tcp").upper()


def _api_endpoints(cluster: Any, label: str, family: str) -> tuple[Any, Any, tuple[Any, ...]] | None:
    """(Service, its port, endpoints of the family) from the cluster data; None when the API lacks it."""
    key = _split_label(label)
    if cluster is None or key is None:
        return None
    svc = cluster.service(key[0], key[1])
    port = svc.port(key[2], key[3]) if svc is not None else None
    if port is None:
        return None
    endpoints = tuple(e for e in cluster.endpoints_for(key[0], key[1], key[2], key[3])
                      if (":" in e.ip) == (family == "ipv6"))
    return svc, port, endpoints


def _reference(api: tuple[Any, Any, tuple[Any, ...]] | None, variants: Sequence[_Variant]) -> _Reference | None:
    if api is not None:
        endpoints = api[2]
        ready = [e.address for e in endpoints if e.ready]
        # proxy.CategorizeEndpoints: serving+terminating endpoints only when none is ready.
        usable = ready or [e.address for e in endpoints if e.serving and e.terminating]
        return _Reference(frozenset(e.address for e in endpoints), frozenset(usable),
                          "not in any EndpointSlice", "listed, not ready", "ready in the API, not here")
    clean = [v for v in variants if not v.severities]
    if not clean or len(clean) == len(variants):
        return None
    usable = frozenset(ep.address for v in clean for ep in v.view.endpoints if ep.in_cluster_chain)
    return _Reference(usable, usable, "not on the other nodes", "", "on the other nodes, not here")


def _uses_local(sp: ServicePortView) -> bool:
    return sp.external_traffic_policy == "Local" or sp.internal_traffic_policy == "Local"


def _variants(pv: PortViews, findings: Sequence[Finding]) -> tuple[list[_Variant], list[str]]:
    local = any(sp is not None and _uses_local(sp) for _, sp in pv.nodes)
    variants: dict[tuple[Any, ...], _Variant] = {}
    absent: list[str] = []
    for name, sp in pv.nodes:
        if sp is None:
            absent.append(name)
            continue
        graph = service_graph(sp, "n", mark_local=local)
        key = (graph[0], tuple(graph[1]), tuple(graph[2]))
        variant = variants.setdefault(key, _Variant([], sp, graph))
        variant.nodes.append(name)
    for v in variants.values():
        v.severities = {f.severity for f in findings if f.node in v.nodes}
    ordered = sorted(variants.values(), key=lambda v: (min((SEVERITY_ORDER[s] for s in v.severities), default=9)))
    return ordered, absent


def _figure(v: _Variant, ident: str, service: str, ref: _Reference | None, counts: dict[str, dict[str, int]]) -> str:
    title, gnodes, gedges = v.graph
    sp = v.view
    notes: dict[str, str] = {}
    flagged: list[str] = []
    ghosts: list[str] = []
    if ref is not None:
        for nid, label, kind in gnodes:
            address = label.split("\n", 1)[0]
            if kind != "endpoint":
                continue
            if address not in ref.listed:
                notes[nid] = ref.extra_note
            elif address not in ref.usable and ref.unready_note:
                notes[nid] = ref.unready_note
            if nid in notes:
                flagged.append(f"{address} ({notes[nid]})")
        balances = any(ep.in_cluster_chain for ep in sp.endpoints) or sp.no_endpoints
        if balances:
            mine = {ep.address for ep in sp.endpoints if ep.in_cluster_chain}
            ghosts = sorted(ref.usable - mine)
    who = ", ".join(v.nodes)
    lines = [(_ways_in(sp), False), *((x, False) for x in _outcomes(sp, _uses_local(sp)))]
    if flagged:
        lines.append(("Flagged: " + ", ".join(flagged), True))
    if ghosts and ref is not None:
        lines.append((f"Missing ({ref.missing_note}): " + ", ".join(ghosts), True))
    svg = draw_service_port(gnodes, gedges, ident=ident, title=f"{service} on {who}: {title}",
                            description=" ".join(text for text, _ in lines), notes=notes, ghosts=ghosts,
                            ghost_note=ref.missing_note if ref is not None else "")
    tally = [_plural(n, s) for s in _SEVERITIES if (n := sum(counts.get(node, {}).get(s, 0) for node in v.nodes))]
    state = ("findings for this Service port: " + ", ".join(tally)) if tally else \
        "no findings for this Service port"
    items = [("<li class=\"flag\">" if flag else "<li>") + f"{_e(text)}</li>" for text, flag in lines]
    return "\n".join([
        f'<figure class="variant{" has-findings" if tally else ""}" id="{ident}" data-nodes="{_json_attr(v.nodes)}">',
        f'<figcaption><span class="nodes">{_e(who)}</span> — {_e(state)}</figcaption>',
        svg,
        '<ul class="flow-text">', *items, "</ul>",
        "</figure>",
    ])


def _ways_in(sp: ServicePortView) -> str:
    ways = [f"{e.label} ({KIND_SHORT[e.kind]})" for e in sp.entries]
    return "Ways in: " + (", ".join(ways) if ways else "none (no KUBE-SERVICES or KUBE-NODEPORTS rule leads here)")


def _outcomes(sp: ServicePortView, local: bool) -> list[str]:
    out = []
    if sp.endpoints:
        parts = [f"{ep.address} {percent(ep.probability)}" + (" (local)" if local and ep.local else "")
                 for ep in sp.endpoints]
        out.append("Endpoints (share of new connections): " + ", ".join(parts))
    for e in sp.entries:
        if e.kind == HEALTH_CHECK or e.verdict == "DNAT":
            continue
        why = {"REJECT": " — has no endpoints (connection refused)" if sp.no_endpoints else "",
               "DROP": " — no local endpoints (timeout)" if sp.no_local_endpoints else "",
               "CONTINUE": " — not DNATed, no rule decides (hangs)"}.get(e.verdict, "")
        out.append(f"{e.label}: {e.verdict}{why}")
    return out


def _api_line(api: tuple[Any, Any, tuple[Any, ...]] | None, cluster: Any) -> str:
    if cluster is None:
        return ""
    if api is None:
        return '<p class="api"><b>API:</b> no such Service port in the cluster data.</p>'
    svc, port, endpoints = api
    parts = [f"type {svc.type}", "ClusterIP " + (", ".join(svc.cluster_ips) or "none"),
             f"port {port.port}/{port.protocol}"]
    if port.node_port:
        parts.append(f"nodePort {port.node_port}")
    parts.append(f"targetPort {port.target_port}")
    if svc.external_traffic_policy:
        parts.append(f"externalTrafficPolicy {svc.external_traffic_policy}")
    eps = []
    for e in endpoints:
        state = "ready" if e.ready else ("terminating" if e.terminating else "not ready")
        eps.append(f"{e.address} ({state}{', ' + e.node_name if e.node_name else ''})")
    listed = ", ".join(eps) if eps else "none" if cluster.slices else "no EndpointSlice in the cluster data"
    text = " · ".join(parts) + ". Endpoints: " + listed + "."
    return f'<p class="api"><b>API:</b> {_e(text)}</p>'


# ------------------------------------------------------------------------------------------------ page


def _masthead(report: AuditReport) -> list[str]:
    n = len(report.nodes)
    source = (f"compared with the cluster data: {report.cluster_source}" if report.cluster_source else
              "nodes compared with each other (no cluster data: the majority of the nodes is the reference)")
    return ['<header class="masthead">', f"<h1>iptrace audit of {_e(_plural(n, 'node'))}</h1>",
            f'<span class="source">{_e(source)}</span>', "</header>"]


def _verdict(report: AuditReport, counts: dict[str, int], names: _Names) -> list[str]:
    bad = sorted({f.node for f in report.findings if f.severity == "error"})
    if counts["error"]:
        cls, word = "fail", "FAIL"
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        text = (f"{_plural(counts['error'], 'error')} on {_plural(len(bad), 'node')} ({shown}): traffic "
                "to some Services fails or goes to the wrong place there.")
    elif counts["warning"]:
        cls, word = "warn", "WARNINGS"
        text = "No errors; the warnings below deserve a look."
    else:
        cls, word = "pass", "OK"
        text = ("Every node forwards every Service the same way"
                + (" the API asks." if report.cluster_source else "."))
    out = [f'<section class="verdict {cls}" aria-label="verdict">', f"<strong>{word}</strong>{names(text)}",
           '<ul class="tally">']
    for s in _SEVERITIES:
        out.append(f'<li><span class="badge {s}">{_WORD[s]}</span> {counts[s]}</li>')
    out += ["</ul>", "</section>"]
    return out


def _controls(report: AuditReport, counts: dict[str, int]) -> list[str]:
    out = ['<nav class="controls" id="controls" hidden aria-label="filters">', "<span>Show:</span>"]
    for s in _SEVERITIES:
        out.append(f'<label><input type="checkbox" name="severity" value="{s}" checked> '
                   f'<span class="badge {s}">{_WORD[s]}</span> {counts[s]}</label>')
    out.append('<label>Node <select id="filter-node"><option value="">all nodes</option>')
    for n in report.nodes:
        out.append(f'<option value="{_e(n.name)}">{_e(n.name)}</option>')
    out.append("</select></label>")
    out.append('<label>Search <input type="search" id="filter-text" placeholder="address, Service, rule…"></label>')
    out.append('<span class="shown" id="filter-shown"></span>')
    out.append("</nav>")
    return out


def _node_table(report: AuditReport) -> list[str]:
    out = ['<section id="nodes">', f'<h2>Nodes <span class="count">({len(report.nodes)})</span></h2>',
           '<div class="table-scroll">', '<table class="nodes">',
           "<thead><tr><th>Node</th><th>Status</th><th>Mode</th><th>kube-proxy layout</th><th>Dataplane read</th>"
           '<th class="num">Service ports</th><th>Errors</th><th>Warnings</th><th>Info</th></tr></thead>', "<tbody>"]
    for n in report.nodes:
        name = _node_name(n.name) + (f' <span class="none">(Node {_e(n.kube_node)})</span>'
                                     if n.kube_node and n.kube_node != n.name else "")
        status_cls = "ok" if n.status == "ok" else "error"
        word = "could not be collected" if (n.error or "").startswith(NOT_COLLECTED) else \
            _STATUS_WORDS.get(n.status, n.status)
        status = f'<span class="badge {status_cls}">{_e(word)}</span>'
        loaded = n.status != "load-error"
        layout = _e(n.era + (f" ({n.version_hint})" if n.version_hint else "")) if loaded else "—"
        cells = [f'<td class="node">{name}</td>', f"<td>{status}</td>",
                 f"<td>{_e(n.mode) if loaded else '—'}</td>", f"<td>{layout}</td>",
                 f"<td>{_e(n.dataplane) if loaded else '—'}</td>",
                 f'<td class="num">{n.services if loaded else "—"}</td>']
        for s, count in (("error", n.errors), ("warning", n.warnings), ("info", n.infos)):
            cells.append(f'<td><span class="badge {s}">{count}</span></td>' if count else '<td class="none">0</td>')
        out.append(f'<tr class="{_e(n.status)}">' + "".join(cells) + "</tr>")
        if n.error:
            out.append(f'<tr class="{_e(n.status)}"><td></td>'
                       f'<td colspan="8" class="error-text">{_e(n.error)}</td></tr>')
    out += ["</tbody>", "</table>", "</div>", "</section>"]
    return out


def _node_name(name: str) -> str:
    """A node's name for the node table: never broken at its hyphens (`node-` over `001`); on paper, a name too
    long for its column breaks only after a dot of a DNS name (`ip-10-0-1-2.` over `eu-west-1.compute.internal`:
    each label is a box of its own there), and copies back whole either way."""
    labels = name.split(".")
    parts = "".join(f"<span>{_e(label)}{'.' if i < len(labels) - 1 else ''}</span>" for i, label in enumerate(labels))
    return f'<span class="name">{parts}</span>'


class _Names:
    """A finding's text escaped with each node name in it kept whole as the node table keeps it (_node_name): a
    browser broke `node-` over `b` in a summary, a fix's command (`spec.nodeName=node-b`) or a verdict."""

    def __init__(self, names: Iterable[str]) -> None:
        longest_first = sorted({n for n in names if n}, key=len, reverse=True)
        # (a name inside a longer word or DNS name is not that node: `node-b` in `node-bb`, `a` in `a.b`)
        self.pattern = re.compile(r"(?<![\w.-])(?:" + "|".join(map(re.escape, longest_first))
                                  + r")(?![\w-]|\.\w)") if longest_first else None

    def __call__(self, text: object) -> str:
        text = str(text)
        if self.pattern is None:
            return _e(text)
        out, at = [], 0
        for m in self.pattern.finditer(text):
            out += [_e(text[at:m.start()]), _node_name(m.group())]
            at = m.end()
        out.append(_e(text[at:]))
        return "".join(out)


def _drawn_in(f: Finding, family: str) -> bool:
    """Whether a finding belongs in a picture of `family` (one without a family, from a merge: in every one)."""
    return f.family is None or f.family == family


def _finding(f: Finding, i: int, port_ids: dict[str, list[tuple[str, str]]], names: _Names) -> list[str]:
    meta = [f"<code>{_e(f.id)}</code>", f"node <code>{names(f.node)}</code>"]
    if f.service:
        meta.append(f"Service port <code>{_e(f.service)}</code>")
    links = "".join(f' · <a href="#{pid}">picture</a>' for family, pid in port_ids.get(f.service or "", [])
                    if _drawn_in(f, family))
    out = [f'<article class="finding {f.severity}" id="finding-{i}" data-severity="{f.severity}" '
           f'data-node="{_e(f.node)}">',
           f'<div class="head"><span class="badge {f.severity}">{_WORD[f.severity]}</span>'
           f'<p class="summary">{names(f.summary)}</p></div>',
           f'<p class="meta">{" · ".join(meta)}{links}</p>',
           '<div class="body">',
           f'<p class="detail">{names(f.detail)}</p>']
    # A fix may end in commands, one a line (conntrack -D …): shown as code, one a line, to be pasted.
    fix, *commands = f.fix.split("\n")
    out.append(f'<div class="fix"><p><b>Fix:</b> {names(fix)}</p>'
               + ('<pre class="commands">' + "\n".join(map(names, commands)) + "</pre>" if commands else "")
               + "</div>")
    if f.evidence:
        # (nft -j input has no lines: `handle N` of an element's set or of a rule, evidence_where's)
        wheres = [evidence_where(at).removesuffix(": ").partition(" ") for at, _ in f.evidence]
        width = max(len(number) for _, _, number in wheres)
        # One row a rule, wrapped under its own text when it is longer than the box (a rule's DNAT target or
        # comment is at its end): each row a flex box, whose newline is there for copying, not drawn.
        rows = ['<span class="row">' + (f'<span class="ln">{word} {number:>{width}}  </span>' if word else "")
                + f'<span class="rule">{_e(rule)}</span>\n</span>'
                for (word, _, number), (_, rule) in zip(wheres, f.evidence, strict=True)]
        # (a conntrack finding's evidence is entries of the node's conntrack table, not its rules)
        source = getattr(f, "source", "")
        of = _e(source) if source else f"{names(f.node)}'s rules"
        out += [f"<details open><summary>Evidence: {_plural(len(f.evidence), 'line')} of {of}</summary>",
                '<pre class="evidence">' + "".join(rows) + "</pre>", "</details>"]
    out += ["</div>", "</article>"]
    return out


def _port_section(pv: PortViews, ident: str, findings: Sequence[tuple[int, Finding]], cluster: Any,
                  names: _Names) -> list[str]:
    mine = [f for _, f in findings]
    counts: dict[str, dict[str, int]] = {}
    for f in mine:
        counts.setdefault(f.node, {}).setdefault(f.severity, 0)
        counts[f.node][f.severity] += 1
    variants, absent = _variants(pv, mine)
    api = _api_endpoints(cluster, pv.service, pv.family)
    # (cluster data without a single EndpointSlice says nothing of the endpoints: compare.py skips them too)
    ref = _reference(api if api is not None and cluster.slices else None, variants)
    kinds = sorted({v.view.type for v in variants})
    severities = sorted({f.severity for f in mine}, key=SEVERITY_ORDER.__getitem__)
    nodes = sorted({f.node for f in mine})
    out = [f'<section class="port" id="{ident}" data-severities="{_json_attr(severities)}" '
           f'data-nodes="{_json_attr(nodes)}">',
           f'<div class="head"><h3>{_e(pv.service)}</h3><span class="kind">{_e(" / ".join(kinds) or "no rules")}'
           f' · {_e(pv.family.replace("ip", "IP"))}</span></div>',
           '<ul class="port-findings">']
    for i, f in findings:
        summary = f.summary.removeprefix(f"{pv.service}: ")
        out.append(f'<li><span class="badge {f.severity}">{_WORD[f.severity]}</span> '
                   f'<a href="#finding-{i}"><code>{_e(f.id)}</code> on {names(f.node)}</a>: {names(summary)}</li>')
    out.append("</ul>")
    api_line = _api_line(api, cluster)
    if api_line:
        out.append(api_line)
    for j, v in enumerate(variants[:_MAX_PICTURES]):
        out.append(_figure(v, f"{ident}-v{j + 1}", pv.service, ref, counts))
    rest = variants[_MAX_PICTURES:]
    if rest:
        names = [n for v in rest for n in v.nodes]
        flagged = [n for v in rest for n in v.nodes if n in counts]
        out.append(f'<p class="more">Not drawn: {_e(_plural(len(names), "more node"))} forwarding it in '
                   f"{len(rest)} other ways ({_e(', '.join(names))})"
                   + (f"; with findings for it: {_e(', '.join(flagged))}" if flagged else "") + ".</p>")
    if absent:
        where = _e(", ".join(absent))
        if any(n in counts for n in absent) or api is not None:
            out.append(f'<p class="absent wrong">No rules for this Service port on {where}: connections to it '
                       f"through {'this node' if len(absent) == 1 else 'these nodes'} are not forwarded.</p>")
        elif cluster is not None:
            out.append(f'<p class="absent">No rules for this Service port on {where}, as the API asks (it has no '
                       "such Service port).</p>")
        else:
            out.append(f'<p class="absent">No rules for this Service port on {where}.</p>')
    out.append("</section>")
    return out


def render_audit_html(report: AuditReport, cluster: Any = None, say: Callable[[str], str] | None = None) -> str:
    """The audit as one HTML page. `cluster` (a kube.cluster.ClusterState, optional) adds what the API says
    of each Service port drawn and marks the endpoints it does not list. `say` spells the commands the page
    suggests as the program was called (`kubectl iptrace audit …`: iptrace.cli.named); the page's title and
    heading name the report, `iptrace audit`, however it was made."""
    counts = {s: sum(f.severity == s for f in report.findings) for s in _SEVERITIES}
    numbered = list(enumerate(report.findings, start=1))

    by_service: dict[str, list[tuple[int, Finding]]] = {}
    for i, f in numbered:
        if f.service:
            by_service.setdefault(f.service, []).append((i, f))

    def rank(pv: PortViews) -> tuple[int, str, str]:
        worst = min((SEVERITY_ORDER[f.severity] for _, f in by_service.get(pv.service, ())), default=9)
        return (worst, pv.service, pv.family)

    # (a dual-stack Service port is drawn in each family; its pictures of a family no finding is about, where
    # the nodes agree, are left out)
    ports = sorted((pv for pv in report.port_views if not by_service.get(pv.service)
                    or any(_drawn_in(f, pv.family) for _, f in by_service[pv.service])), key=rank)
    port_ids: dict[str, list[tuple[str, str]]] = {}
    for j, pv in enumerate(ports, start=1):
        port_ids.setdefault(pv.service, []).append((pv.family, f"port-{j}"))
    word = "FAIL" if counts["error"] else ("WARNINGS" if counts["warning"] else "OK")
    body: list[str] = []
    names = _Names(n.name for n in report.nodes)
    body += _verdict(report, counts, names)
    body += _controls(report, counts)
    body += _node_table(report)
    body += ['<section id="findings">', f'<h2>Findings <span class="count">({len(report.findings)}, errors '
             "first)</span></h2>"]
    if not report.findings:
        body.append('<p class="none">No findings.</p>')
    for i, f in numbered:
        body += _finding(f, i, port_ids, names)
    body.append("</section>")
    if ports:
        body += ['<section id="ports">', f'<h2>Service ports that differ <span class="count">({len(ports)}: how '
                 "each node forwards them, nodes with the same rules drawn once)</span></h2>"]
        for j, pv in enumerate(ports, start=1):
            mine = [(i, f) for i, f in by_service.get(pv.service, []) if _drawn_in(f, pv.family)]
            body += _port_section(pv, f"port-{j}", mine, cluster, names)
        body.append("</section>")
    body += [f"<footer>iptrace {_e(__version__)} · the same audit as <code>iptrace audit … -o json</code> "
             f"(format {AUDIT_FORMAT}) · this page loads nothing from the network</footer>"]
    head = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="referrer" content="no-referrer">',
            f"<title>iptrace audit: {word} — {_e(_plural(counts['error'], 'error'))}, "
            f"{_e(_plural(counts['warning'], 'warning'))} on {_e(_plural(len(report.nodes), 'node'))}</title>",
            f"<style>{STYLE}</style>", "</head>", "<body>"]
    tail = [f"<script>{SCRIPT}</script>", "</body>", "</html>"]
    said = "\n".join(body)
    return "\n".join([*head, *_masthead(report), said if say is None else say(said), *tail]) + "\n"
