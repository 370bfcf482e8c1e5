"""Renders a Trace as a compact tree: the path all branches share, then one branch per outcome. No I/O."""

from __future__ import annotations

from iptrace.dataplane import Outcome, Step, Trace, join_host_port

_ENTRY = {"hooks": "real hook order (the dump wires the built-in chains)",
          "kube-proxy": "kube-proxy's chains entered directly (the dump has no built-in chains wired)"}


def _pct(p: float) -> str:
    if p == 1:
        return "100%"
    text = f"{p * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _step(step: Step, indent: str, widths: tuple[int, int] = (6, 28)) -> str:
    # (nft JSON input has no lines: the kernel's handle of the rule, or of an element's set)
    kind, _, at = step.where.partition(" ")
    where = f"line {at:<6}" if kind == "line" else f"handle {at:<4}"
    return f"{indent}{step.table:<{widths[0]}} {step.chain:<{widths[1]}} {where} {step.rule}"


def _widths(paths: list[tuple[Step, ...]]) -> tuple[int, int]:
    """Columns wide enough for every step's table and chain (nftables' are longer than iptables' 6 and 28), so that
    the lines and rules of a path stay aligned."""
    steps = [s for path in paths for s in path]
    return (max([6, *(len(s.table) for s in steps)]), max([28, *(len(s.chain) for s in steps)]))


def _outcome_line(o: Outcome) -> str:
    parts = [f"{_pct(o.probability):>6}  {o.verdict}"]
    if o.verdict == "DNAT" and o.destination:
        parts.append(f"→ {o.destination}")
    if o.service:
        parts.append(f"  {o.service}")
    if o.verdict in ("DNAT", "ACCEPT", "CONTINUE"):
        parts.append(f"  masquerade: {'yes' if o.masquerade else 'no'}")
    if o.decided_by is not None and o.decided_by.policy is not None:
        parts.append(f"  (policy of {o.decided_by.table} {o.decided_by.chain})")
    elif o.decided_by is None and o.verdict in ("DROP", "REJECT"):
        parts.append("  (by the node's routes: no way out for its destination)")
    return " ".join(parts)


def render_trace_text(trace: Trace) -> str:
    p = trace.packet
    out = [f"{p.proto} {join_host_port(p.src, p.sport)} → {join_host_port(p.dst, p.dport)}",
           f"entry: {_ENTRY[trace.entry]}"]
    paths = [o.path for o in trace.outcomes]
    widths = _widths(paths)
    common = 0
    if paths:
        shortest = min(len(path) for path in paths)
        while common < shortest and all(path[common] == paths[0][common] for path in paths):
            common += 1
    if len(trace.outcomes) > 1 and common:
        out.append("")
        out.append("every branch:")
        out += [_step(s, "    ", widths) for s in paths[0][:common]]
    for i, o in enumerate(trace.outcomes):
        last = i == len(trace.outcomes) - 1
        out.append("")
        out.append(("└─" if last else "├─") + _outcome_line(o))
        rest = o.path[common:] if len(trace.outcomes) > 1 else o.path
        bar = "   " if last else "│  "
        out += [_step(s, bar + " ", widths) for s in rest]
        if not o.path:
            out.append(bar + " (no rule matched)")
    if trace.assumptions:
        out.append("")
        out.append("assumed:")
        out += [f"  - {a}" for a in trace.assumptions]
    return "\n".join(out) + "\n"
