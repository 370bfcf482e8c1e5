"""Pictures of the kube-proxy view: Graphviz DOT (`-o dot`, `-o svg` through `dot -Tsvg`) and a Mermaid
flowchart that pastes into a GitHub issue. One box per Service port: ways in → chains → endpoints, edges
labelled with each endpoint's share. Returns str; no I/O."""

from __future__ import annotations

from iptrace.kube.view import HEALTH_CHECK, EntryView, KubeView, ServicePortView
from iptrace.render.json import percent

KIND_SHORT = {"clusterIP": "ClusterIP", "nodePort": "NodePort", "externalIP": "externalIP",
              "loadBalancer": "LB IP", "healthCheck": "health check"}


class _Graph:
    """Nodes and edges of one picture, format-neutral; ids are short and safe in both languages."""

    def __init__(self) -> None:
        self.clusters: list[tuple[str, str, list[tuple[str, str, str]]]] = []  # (id, label, nodes)
        self.edges: list[tuple[str, str, str]] = []  # (from, to, label)


def _entry_text(e: EntryView) -> str:
    return f"{e.label}\n{KIND_SHORT[e.kind]}"


def _verdict_text(s: ServicePortView, verdict: str) -> str:
    if verdict == "REJECT" and s.no_endpoints:
        return "REJECT\nhas no endpoints"
    if verdict == "DROP" and s.no_local_endpoints:
        return "DROP\nno local endpoints"
    return verdict


GraphNode = tuple[str, str, str]  # (id, label, kind: entry|chain|endpoint|verdict)
GraphEdge = tuple[str, str, str]  # (from, to, label: the endpoint's share, or "")


def service_graph(s: ServicePortView, sid: str, *, mark_local: bool = True) -> tuple[str, list[GraphNode],
                                                                                     list[GraphEdge]]:
    """One Service port as a picture: (title, nodes, edges) — every way in, the chains it crosses, every
    endpoint (edge labelled with its share) or verdict. Node ids start with `sid`. `mark_local` adds "local"
    to the endpoints on this node (what a Local traffic policy balances over)."""
    nodes: list[GraphNode] = []
    ids: dict[str, str] = {}
    edges: dict[tuple[str, str], str] = {}

    def node(key: str, label: str, kind: str, prefix: str) -> str:
        found = ids.get(key)
        if found is None:
            found = ids[key] = f"{sid}{prefix}{len(ids)}"
            nodes.append((found, label, kind))
        return found

    local = {ep.address for ep in s.endpoints if ep.local} if mark_local else set()
    for e in s.entries:
        entry = node(f"entry:{e.kind}:{e.address}:{e.port}", _entry_text(e), "entry", "e")
        if e.kind == HEALTH_CHECK:
            edges.setdefault((entry, node("verdict:ACCEPT", "ACCEPT\nhealth check server", "verdict", "v")), "")
            continue
        previous = entry
        for chain in e.via:
            current = node(f"chain:{chain}", chain, "chain", "c")
            edges.setdefault((previous, current), "")
            previous = current
        if e.verdict == "DNAT":
            for r in e.reaches:
                label = r.endpoint + ("\nlocal" if r.endpoint in local else "")
                target = node(f"ep:{r.endpoint}", label, "endpoint", "p")
                edges.setdefault((previous, target), percent(r.probability))
        else:
            target = node(f"verdict:{e.verdict}", _verdict_text(s, e.verdict), "verdict", "v")
            edges.setdefault((previous, target), "")
    title = f"{s.label} · {s.protocol} · {s.type}"
    if s.external_traffic_policy:
        title += f" · eTP={s.external_traffic_policy}"
    if s.internal_traffic_policy == "Local":
        title += " · iTP=Local"
    if s.session_affinity_timeout is not None:
        title += f" · affinity {s.session_affinity_timeout}s"
    return title, nodes, [(a, b, label) for (a, b), label in edges.items()]


def _build(view: KubeView) -> _Graph:
    graph = _Graph()
    for i, s in enumerate(view.services):
        sid = f"s{i}"
        title, nodes, edges = service_graph(s, sid)
        graph.clusters.append((sid, title, nodes))
        graph.edges.extend(edges)
    return graph


# ------------------------------------------------------------------------------------------------ DOT


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_STYLE = {
    "entry": 'shape=box, style="rounded,filled", fillcolor="#e8f0fe"',
    "chain": 'shape=box, fontname="monospace"',
    "endpoint": 'shape=box, style=filled, fillcolor="#e6f4ea"',
    "verdict": 'shape=octagon, style=filled, fillcolor="#fce8e6"',
}


def render_dot(view: KubeView) -> str:
    """Graphviz DOT: `iptrace services DUMP -o dot | dot -Tsvg > services.svg`."""
    graph = _build(view)
    out = ["digraph services {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];',
           "  edge [fontsize=9];", f"  label={_dot_quote(_title(view))};", "  labelloc=t;"]
    for sid, title, nodes in graph.clusters:
        out.append(f"  subgraph cluster_{sid} {{")
        out.append(f"    label={_dot_quote(title)};")
        for nid, label, kind in nodes:
            out.append(f"    {nid} [label={_dot_quote(label)}, {_DOT_STYLE[kind]}];")
        out.append("  }")
    for a, b, label in graph.edges:
        attrs = f" [label={_dot_quote(label)}]" if label else ""
        out.append(f"  {a} -> {b}{attrs};")
    out.append("}")
    return "\n".join(out) + "\n"


def _title(view: KubeView) -> str:
    if not view.era.has_rules:
        return f"{view.source}: {view.era.name}: no kube-proxy {view.era.dataplane} service rules"
    return f"{view.source}: kube-proxy {view.era.name}, {len(view.services)} service ports"


# ------------------------------------------------------------------------------------------------ Mermaid


def _mermaid_quote(text: str) -> str:
    # Mermaid reads labels as HTML-ish text: entities for the characters it would interpret, its own entity
    # sign `#` (`#name;` is an entity to it) first.
    escaped = (text.replace("#", "#35;").replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;")
               .replace(">", "#gt;").replace("\n", "<br/>"))
    return '"' + escaped + '"'


_MERMAID_SHAPE = {"entry": ("([", "])"), "chain": ("[", "]"), "endpoint": ("[", "]"), "verdict": ("{{", "}}")}


# What Mermaid draws at most unless its site raises them (maxTextSize, maxEdges; GitHub's renderer keeps them): a
# larger diagram shows only an error there.
MERMAID_MAX_TEXT, MERMAID_MAX_EDGES = 50_000, 500


def mermaid_too_big(text: str) -> str | None:
    """Why a render_mermaid text will not be drawn by a default Mermaid (GitHub's), None when it will."""
    edges = text.count(" -->")  # (labels are entity-escaped: an arrow in the text is an edge)
    if len(text) <= MERMAID_MAX_TEXT and edges <= MERMAID_MAX_EDGES:
        return None
    return (f"this diagram has {edges:,} edges and {len(text):,} characters; Mermaid (GitHub's too) draws at most "
            f"{MERMAID_MAX_EDGES:,} edges and {MERMAID_MAX_TEXT:,} characters: narrow it with --namespace, --service "
            f"or --address, or draw it with -o svg")


def render_mermaid(view: KubeView) -> str:
    """A Mermaid flowchart (```mermaid block in a GitHub issue or README renders it)."""
    graph = _build(view)
    out = ["flowchart LR"]
    if not graph.clusters:
        out.append(f"  empty[{_mermaid_quote(_title(view))}]")
    for sid, title, nodes in graph.clusters:
        out.append(f"  subgraph {sid}[{_mermaid_quote(title)}]")
        for nid, label, kind in nodes:
            left, right = _MERMAID_SHAPE[kind]
            out.append(f"    {nid}{left}{_mermaid_quote(label)}{right}")
        out.append("  end")
    for a, b, label in graph.edges:
        arrow = f" -->|{_mermaid_quote(label)}| " if label else " --> "
        out.append(f"  {a}{arrow}{b}")
    classes = {"entry": "fill:#e8f0fe", "endpoint": "fill:#e6f4ea", "verdict": "fill:#fce8e6"}
    for kind, style in classes.items():
        members = [nid for _, _, nodes in graph.clusters for nid, _, k in nodes if k == kind]
        if members:
            out.append(f"  classDef {kind} {style}")
            out.append(f"  class {','.join(members)} {kind}")
    return "\n".join(out) + "\n"
