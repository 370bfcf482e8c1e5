"""--lenient past values iptables-restore would refuse (`-d 10.0.0.1689/32`, a NAT target without a port): the
grammar reads such a rule, and the compiler finds its value only when a trace first reads it, so without this a
lenient `services` would still stop there. Here every rule is compiled once after loading, and the dump is read
again with the refused rules' lines left empty (every other line keeps its number); each is listed in `skipped`
like an unreadable line. Only with --lenient: a strict load leaves values to the compiler (no cost to the
common dump)."""

from __future__ import annotations

from typing import Any

from iptrace.iptables.loader import load
from iptrace.iptables.model import LoadWarning, Ruleset


def without_refused_values(text: str | bytes, ruleset: Ruleset, *, source: str, table: str | None,
                           memo: Any = None) -> Ruleset:
    from iptrace.iptables.walk import Tracer

    refused = {exc.line: exc.reason for exc in Tracer(ruleset).refused_values()}
    if not refused:
        return ruleset
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = text.split("\n")  # (as the loader numbers them)
    for line in refused:
        lines[line - 1] = ""
    again = load("\n".join(lines), source=source, lenient=True, table=table, memo=memo)
    skipped = tuple(sorted((*again.skipped, *(LoadWarning(n, why) for n, why in refused.items())),
                           key=lambda w: w.line))
    return Ruleset(again.tables, again.family, again.format, again.trailer, again.source, again.warnings, skipped)
