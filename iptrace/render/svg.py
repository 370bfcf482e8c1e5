"""Draws one Service port (the nodes and edges of `graph.service_graph`) as inline SVG, in pure Python: ways in
on the left, kube-proxy's chains in the middle, endpoints (with their shares) or verdicts on the right.

No Graphviz: the layout is a small layered one (columns by path length, rows by the mean height of each box's
predecessors), text widths are estimated for a monospace font, every string is escaped, and the same input
always gives the same bytes. Returns str; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from iptrace.render.graph import GraphEdge, GraphNode

FONT = "ui-monospace, 'DejaVu Sans Mono', 'Liberation Mono', Menlo, Consolas, monospace"
_FONT_SIZE = 12
_CHAR_W = 7.3  # DejaVu Sans Mono advances 0.602 em; a little more keeps text inside its box everywhere
_LINE_H = 15
_PAD_X = 9
_PAD_Y = 7
_GAP_Y = 12
_GAP_X = 92  # room for the share labels on the edges
_MARGIN = 12
_HEAD = 22  # the column headings

# kind -> (fill, stroke, text colour); light fills so that the picture prints on any printer.
_COLOURS = {
    "entry": ("#e8f0fe", "#4a6fb5", "#0b2e6b"),
    "chain": ("#ffffff", "#80868b", "#202124"),
    "endpoint": ("#e6f4ea", "#3c8d50", "#0d3d1b"),
    "verdict": ("#fce8e6", "#c5221f", "#6d0e0a"),
    "ghost": ("#ffffff", "#9aa0a6", "#5f6368"),
}
_FLAGGED_STROKE = "#c5221f"
_KIND_WORDS = {"entry": "way in", "chain": "chain", "endpoint": "endpoint", "verdict": "verdict",
               "ghost": "endpoint"}


@dataclass(frozen=True, slots=True)
class _Box:
    id: str
    lines: tuple[str, ...]
    kind: str
    flagged: bool
    col: int
    width: float
    height: float


def _fmt(v: float) -> str:
    text = f"{v:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _columns(nodes: Sequence[GraphNode], edges: Sequence[GraphEdge]) -> dict[str, int]:
    """Ways in in column 0, each chain one column right of its furthest predecessor, endpoints and verdicts
    in the last column (so that they line up)."""
    col = {nid: 0 for nid, _, kind in nodes if kind == "entry"}
    chains = {nid for nid, _, kind in nodes if kind == "chain"}
    for _ in range(len(nodes)):  # longest path by relaxation: the graph is tiny and acyclic
        changed = False
        for a, b, _label in edges:
            if b in chains and a in col and col.get(b, -1) < col[a] + 1:
                col[b] = col[a] + 1
                changed = True
        if not changed:
            break
    for nid in chains:
        col.setdefault(nid, 1)
    last = max([c + 1 for c in col.values()] or [1])
    for nid, _, kind in nodes:
        if kind in ("endpoint", "verdict"):
            col[nid] = last
    return col


def draw_service_port(nodes: Sequence[GraphNode], edges: Sequence[GraphEdge], *, ident: str, title: str,
                      description: str, notes: Mapping[str, str] | None = None,
                      ghosts: Sequence[str] = (), ghost_note: str = "") -> str:
    """An `<svg>` element for one Service port. `ident` prefixes every id (unique within the page); `title`
    and `description` become its accessible name and description. `notes` adds a line to the boxes it
    names (node id → text) and outlines them in red; `ghosts` are endpoint addresses drawn dashed in the
    endpoint column without an edge (e.g. endpoints the API lists that this node does not use), each with
    `ghost_note` as its second line."""
    notes = notes or {}
    column = _columns(nodes, edges)
    boxes: list[_Box] = []
    for nid, label, kind in nodes:
        lines = tuple(label.split("\n")) + ((notes[nid],) if nid in notes else ())
        boxes.append(_Box(nid, lines, kind, nid in notes, column[nid], 0, 0))
    last = max([b.col for b in boxes] or [0])
    for i, address in enumerate(ghosts):
        lines = (address, ghost_note) if ghost_note else (address,)
        boxes.append(_Box(f"{ident}g{i}", lines, "ghost", False, max(last, 1), 0, 0))
    boxes = [_Box(b.id, b.lines, b.kind, b.flagged, b.col,
                  round(max(len(x) for x in b.lines) * _CHAR_W + 2 * _PAD_X),
                  len(b.lines) * _LINE_H + 2 * _PAD_Y) for b in boxes]
    ncols = max([b.col for b in boxes] or [0]) + 1
    widths = [max([b.width for b in boxes if b.col == c] or [0]) for c in range(ncols)]
    xs = [_MARGIN + sum(widths[:c]) + _GAP_X * c for c in range(ncols)]
    preds: dict[str, list[str]] = {}
    for a, b, _ in edges:
        preds.setdefault(b, []).append(a)
    centre: dict[str, float] = {}
    top: dict[str, float] = {}
    order = {b.id: i for i, b in enumerate(boxes)}
    for c in range(ncols):
        members = [b for b in boxes if b.col == c]
        desired: dict[str, float] = {}
        for b in members:
            ys = [centre[p] for p in preds.get(b.id, ()) if p in centre]
            desired[b.id] = sum(ys) / len(ys) if ys else float("inf")
        members.sort(key=lambda b: (desired[b.id], order[b.id]))
        # Stack in that order, each box as near its wish as the one above allows, then move the column up
        # by the mean overshoot (never above the top margin).
        y = _MARGIN + _HEAD
        placed: list[tuple[_Box, float]] = []
        for b in members:
            want = desired[b.id] - b.height / 2 if desired[b.id] != float("inf") else y
            at = max(want, y)
            placed.append((b, at))
            y = at + b.height + _GAP_Y
        wished = [(at - (desired[b.id] - b.height / 2)) for b, at in placed if desired[b.id] != float("inf")]
        shift = min(sum(wished) / len(wished) if wished else 0.0,
                    min((at for _, at in placed), default=_MARGIN + _HEAD) - (_MARGIN + _HEAD))
        for b, at in placed:
            top[b.id] = at - shift
            centre[b.id] = top[b.id] + b.height / 2
    by_id = {b.id: b for b in boxes}
    width = (xs[-1] + widths[-1] + _MARGIN) if boxes else 2 * _MARGIN
    height = max([top[b.id] + b.height for b in boxes] or [_MARGIN + _HEAD]) + _MARGIN

    out = [f'<svg class="flow" role="img" aria-labelledby="{ident}-t {ident}-d" width="{_fmt(width)}" '
           f'height="{_fmt(height)}" viewBox="0 0 {_fmt(width)} {_fmt(height)}" font-family="{escape(FONT)}" '
           f'font-size="{_FONT_SIZE}">',
           f'<title id="{ident}-t">{escape(title)}</title>',
           f'<desc id="{ident}-d">{escape(description)}</desc>',
           f'<defs><marker id="{ident}-a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           f'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#5f6368"/></marker></defs>']
    kinds_last = {b.kind for b in boxes if b.col == ncols - 1}
    last_heading = " / ".join(w for w, k in (("endpoints", ("endpoint", "ghost")), ("verdict", ("verdict",)))
                              if kinds_last & set(k))
    headings = {0: "ways in"}
    if ncols > 2:
        headings[1] = "kube-proxy chains"
    if ncols > 1:
        headings[ncols - 1] = last_heading
    for c, text in headings.items():
        out.append(f'<text class="col" x="{_fmt(xs[c])}" y="{_MARGIN + 10}" font-size="11" '
                   f'fill="#5f6368">{escape(text)}</text>')
    incoming: dict[str, list[str]] = {}
    for a, b, label in edges:
        pa, pb = by_id[a], by_id[b]
        x1, y1 = xs[pa.col] + pa.width, centre[a]
        x2, y2 = xs[pb.col], centre[b]
        bend = max((x2 - x1) * 0.45, 20.0)
        out.append(f'<path class="edge" d="M{_fmt(x1)},{_fmt(y1)} C{_fmt(x1 + bend)},{_fmt(y1)} '
                   f'{_fmt(x2 - bend)},{_fmt(y2)} {_fmt(x2 - 1)},{_fmt(y2)}" fill="none" stroke="#5f6368" '
                   f'stroke-width="1.3" marker-end="url(#{ident}-a)"/>')
        if label:
            t = 0.6  # on the curve, past its middle: the labels of one fan do not collide
            bx = (1 - t) ** 3 * x1 + 3 * (1 - t) ** 2 * t * (x1 + bend) + 3 * (1 - t) * t * t * (x2 - bend) \
                + t ** 3 * x2
            by = (1 - t) ** 3 * y1 + 3 * (1 - t) ** 2 * t * y1 + 3 * (1 - t) * t * t * y2 + t ** 3 * y2
            out.append(f'<text class="share" x="{_fmt(bx)}" y="{_fmt(by - 4)}" text-anchor="middle" '
                       f'font-size="11" font-weight="bold" fill="#202124" stroke="#ffffff" stroke-width="3" '
                       f'paint-order="stroke">{escape(label)}</text>')
        incoming.setdefault(b, []).append(f"{label} from {' '.join(pa.lines[:1])}" if label else
                                          f"from {' '.join(pa.lines[:1])}")
    for b in boxes:
        fill, stroke, ink = _COLOURS[b.kind]
        if b.flagged:
            stroke = _FLAGGED_STROKE
        dash = ' stroke-dasharray="5 3"' if b.kind == "ghost" or b.flagged else ""
        x, y = xs[b.col], top[b.id]
        rx = 10 if b.kind == "entry" else 3
        tip = f"{_KIND_WORDS[b.kind]} " + " — ".join(b.lines)
        if incoming.get(b.id):
            tip += " (" + "; ".join(incoming[b.id]) + ")"
        cls = f"n n-{b.kind}" + (" flagged" if b.flagged else "")
        out.append(f'<g class="{cls}"><title>{escape(tip)}</title>'
                   f'<rect x="{_fmt(x)}" y="{_fmt(y)}" width="{_fmt(b.width)}" height="{_fmt(b.height)}" rx="{rx}" '
                   f'fill="{fill}" stroke="{stroke}" stroke-width="{2.2 if b.flagged else 1.2}"{dash}/>')
        for i, line in enumerate(b.lines):
            bold = ' font-weight="bold"' if b.kind in ("endpoint", "verdict") and i == 0 else ""
            colour = _FLAGGED_STROKE if (b.flagged and i == len(b.lines) - 1) else ink
            out.append(f'<text x="{_fmt(x + _PAD_X)}" y="{_fmt(y + _PAD_Y + _LINE_H * i + 11)}" '
                       f'fill="{colour}"{bold}>{escape(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
