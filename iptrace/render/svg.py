"""Draws one Service port (the nodes and edges of `graph.service_graph`) as inline SVG, in pure Python: ways in
on the left, kube-proxy's chains in the middle, endpoints (with their shares) or verdicts on the right.

No Graphviz: the layout is a small layered one (columns by path length, rows by the mean height of each box's
predecessors), text widths are estimated for a monospace font, every string is escaped, and the same input
always gives the same bytes. Returns str; no I/O.
"""

from __future__ import annotations

import itertools
import re
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
_GAP_X = 84  # room for the share labels on the edges
_MARGIN = 12
_HEAD = 22  # the column headings

# kind -> (fill, stroke, text colour); light fills so that the picture prints on any printer.
_COLOURS = {
    "entry": ("#e8f0fe", "#4a6fb5", "#0b2e6b"),
    "chain": ("#ffffff", "#80868b", "#202124"),
    "endpoint": ("#e6f4ea", "#3c8d50", "#0d3d1b"),
    "verdict": ("#fce8e6", "#c5221f", "#6d0e0a"),
    # an ACCEPT is no failure (kube-proxy accepts a health check nodePort for its own server): not in red
    "accept": ("#f1f3f4", "#5f6368", "#202124"),
    "ghost": ("#ffffff", "#9aa0a6", "#5f6368"),
}
_FLAGGED_STROKE = "#c5221f"
# A chain name longer than this is drawn over several lines: nftables mode's chain names carry the Service
# port (`service-FRX3YWVZ-ingress-nginx/ingress-nginx-controller/tcp/https`, up to ~100 characters), and one
# line each made a picture of three chains ~1,500 px wide, shrunk to an unreadable size on paper and in a
# narrow window. No iptables chain name is longer (the kernel allows 28 characters).
_CHAIN_LINE = 28
_NFT_HEAD = re.compile(r"[a-z]+-[A-Z0-9]{8}-")  # kube-proxy's `<kind>-<hash>-` before the Service port
_KIND_WORDS = {"entry": "way in", "chain": "chain", "endpoint": "endpoint", "verdict": "verdict",
               "ghost": "endpoint"}
# Boxes of kind "lane" are invisible: the place where an edge crosses a column it skips.


@dataclass(frozen=True, slots=True)
class _Box:
    id: str
    lines: tuple[str, ...]
    kind: str
    flagged: bool
    col: int
    width: float
    height: float
    whole: bool = False  # the lines are the pieces of one name (a long chain name), read as one text


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


def _label_point(x1: float, y1: float, x2: float, y2: float, bend: float, t: float = 0.6) -> tuple[float, float]:
    """A point on the cubic curve of one edge segment (control points level with its ends)."""
    u = 1 - t
    x = u ** 3 * x1 + 3 * u * u * t * (x1 + bend) + 3 * u * t * t * (x2 - bend) + t ** 3 * x2
    y = u ** 3 * y1 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t ** 3 * y2
    return x, y


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
        if kind == "chain" and len(label) > _CHAIN_LINE:
            boxes.append(_box(nid, _name_lines(label), kind, False, column[nid], whole=True))
            continue
        lines = tuple(label.split("\n")) + ((notes[nid],) if nid in notes else ())
        boxes.append(_box(nid, lines, kind, nid in notes, column[nid]))
    last = max([b.col for b in boxes] or [0])
    for i, address in enumerate(ghosts):
        boxes.append(_box(f"{ident}g{i}", (address, ghost_note) if ghost_note else (address,), "ghost", False,
                          max(last, 1)))
    # An edge that skips columns runs through a lane (a "dummy" box of no width) in each column it crosses,
    # so that it never cuts through a box.
    routes: list[tuple[list[str], str]] = []
    preds: dict[str, list[str]] = {}
    for a, b, label in edges:
        path = [a]
        for c in range(column[a] + 1, column[b]):
            lane = _Box(f"{ident}l{len(boxes)}", (), "lane", False, c, 0, 8)
            boxes.append(lane)
            path.append(lane.id)
        path.append(b)
        for x, y in itertools.pairwise(path):
            preds.setdefault(y, []).append(x)
        routes.append((path, label))
    ncols = max([b.col for b in boxes] or [0]) + 1
    widths = [max([b.width for b in boxes if b.col == c] or [0]) for c in range(ncols)]
    xs = [_MARGIN + sum(widths[:c]) + _GAP_X * c for c in range(ncols)]
    top = _stack(boxes, preds, ncols)
    by_id = {b.id: b for b in boxes}
    centre = {b.id: top[b.id] + b.height / 2 for b in boxes}
    width = xs[-1] + widths[-1] + _MARGIN if boxes else 2 * _MARGIN
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
    for path, label in routes:
        first, end = by_id[path[0]], by_id[path[-1]]
        x, y = xs[first.col] + first.width, centre[first.id]
        d = [f"M{_fmt(x)},{_fmt(y)}"]
        # The share labels the first segment, where the chain that balances fans out.
        at: tuple[float, float] | None = None
        for lane_id in path[1:-1]:
            lane = by_id[lane_id]
            lx, ly = xs[lane.col], centre[lane_id]
            bend = max((lx - x) * 0.45, 12.0)
            d.append(f"C{_fmt(x + bend)},{_fmt(y)} {_fmt(lx - bend)},{_fmt(ly)} {_fmt(lx)},{_fmt(ly)}")
            at = at or _label_point(x, y, lx, ly, bend, 0.72)
            x, y = lx + widths[lane.col], ly
            d.append(f"L{_fmt(x)},{_fmt(y)}")
        x2, y2 = xs[end.col], centre[end.id]
        bend = max((x2 - x) * 0.45, 12.0)
        d.append(f"C{_fmt(x + bend)},{_fmt(y)} {_fmt(x2 - bend)},{_fmt(y2)} {_fmt(x2 - 1)},{_fmt(y2)}")
        out.append(f'<path class="edge" d="{" ".join(d)}" fill="none" stroke="#5f6368" stroke-width="1.3" '
                   f'marker-end="url(#{ident}-a)"/>')
        if label:
            lx, ly = at or _label_point(x, y, x2, y2, bend)
            out.append(f'<text class="share" x="{_fmt(lx)}" y="{_fmt(ly - 4)}" text-anchor="middle" '
                       f'font-size="11" font-weight="bold" fill="#202124" stroke="#ffffff" stroke-width="3" '
                       f'paint-order="stroke">{escape(label)}</text>')
        source = first.lines[0] if first.lines else ""
        incoming.setdefault(end.id, []).append(f"{label} from {source}" if label else f"from {source}")
    for b in boxes:
        if b.kind == "lane":
            continue
        fill, stroke, ink = _COLOURS["accept" if b.kind == "verdict" and b.lines[0] == "ACCEPT" else b.kind]
        if b.flagged:
            stroke = _FLAGGED_STROKE
        dash = ' stroke-dasharray="5 3"' if b.kind == "ghost" or b.flagged else ""
        x, y = xs[b.col], top[b.id]
        tip = f"{_KIND_WORDS[b.kind]} " + ("".join(b.lines) if b.whole else " — ".join(b.lines))
        if incoming.get(b.id):
            tip += " (" + "; ".join(incoming[b.id]) + ")"
        cls = f"n n-{b.kind}" + (" flagged" if b.flagged else "")
        out.append(f'<g class="{cls}"><title>{escape(tip)}</title>'
                   f'<rect x="{_fmt(x)}" y="{_fmt(y)}" width="{_fmt(b.width)}" height="{_fmt(b.height)}" '
                   f'rx="{10 if b.kind == "entry" else 3}" fill="{fill}" stroke="{stroke}" '
                   f'stroke-width="{2.2 if b.flagged else 1.2}"{dash}/>')
        if b.whole:  # one <text>: the page's search and its filter read the name whole
            pieces = "".join(f'<tspan x="{_fmt(x + _PAD_X)}" dy="{_LINE_H if i else 0}">{escape(line)}</tspan>'
                             for i, line in enumerate(b.lines))
            out.append(f'<text x="{_fmt(x + _PAD_X)}" y="{_fmt(y + _PAD_Y + 11)}" fill="{ink}">{pieces}</text>')
            out.append("</g>")
            continue
        for i, line in enumerate(b.lines):
            bold = ' font-weight="bold"' if b.kind in ("endpoint", "verdict") and i == 0 else ""
            colour = _FLAGGED_STROKE if (b.flagged and i == len(b.lines) - 1) else ink
            out.append(f'<text x="{_fmt(x + _PAD_X)}" y="{_fmt(y + _PAD_Y + _LINE_H * i + 11)}" '
                       f'fill="{colour}"{bold}>{escape(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _box(nid: str, lines: tuple[str, ...], kind: str, flagged: bool, col: int, whole: bool = False) -> _Box:
    return _Box(nid, lines, kind, flagged, col, round(max(len(x) for x in lines) * _CHAR_W + 2 * _PAD_X),
                len(lines) * _LINE_H + 2 * _PAD_Y, whole)


def _name_lines(name: str) -> tuple[str, ...]:
    """A long chain name in lines of at most _CHAIN_LINE characters where it can be: nftables mode's
    `<kind>-<hash>-` first, then the Service port broken after its `/`s (a part still too long, after its
    `-`s); joined, the lines are the name again."""
    head = _NFT_HEAD.match(name)
    lines = [head.group(0)] if head else []
    parts = re.findall(r"[^/]*/|[^/]+$", name[head.end() if head else 0:])
    tokens = [t for part in parts
              for t in ((part,) if len(part) <= _CHAIN_LINE else re.findall(r"[^-]*-|[^-]+$", part))]
    line = ""
    for token in tokens:
        if line and len(line) + len(token) > _CHAIN_LINE:
            lines.append(line)
            line = ""
        line += token
    if line:
        lines.append(line)
    return tuple(lines)


def _stack(boxes: Sequence[_Box], preds: Mapping[str, list[str]], ncols: int) -> dict[str, float]:
    """The top of every box: column by column, each box as near the mean height of its predecessors as the
    box above it allows, then the column moved up by the mean overshoot (never above the headings)."""
    top: dict[str, float] = {}
    centre: dict[str, float] = {}
    order = {b.id: i for i, b in enumerate(boxes)}
    first = _MARGIN + _HEAD
    for c in range(ncols):
        members = [b for b in boxes if b.col == c]
        desired: dict[str, float | None] = {}
        for b in members:
            ys = [centre[p] for p in preds.get(b.id, ()) if p in centre]
            desired[b.id] = sum(ys) / len(ys) if ys else None
        members.sort(key=lambda b: (desired[b.id] is None, desired[b.id] or 0.0, order[b.id]))
        y = first
        placed: list[tuple[_Box, float]] = []
        for b in members:
            wish = desired[b.id]
            at = max(y if wish is None else wish - b.height / 2, y)
            placed.append((b, at))
            y = at + b.height + _GAP_Y
        over = [at - (wish - b.height / 2) for b, at in placed if (wish := desired[b.id]) is not None]
        shift = min(sum(over) / len(over) if over else 0.0, min((at for _, at in placed), default=first) - first)
        for b, at in placed:
            top[b.id] = at - shift
            centre[b.id] = top[b.id] + b.height / 2
    return top
