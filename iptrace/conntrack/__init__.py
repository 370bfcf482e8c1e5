"""Reads conntrack's flow table (`conntrack -L`, plain or `-o extended`, and /proc/net/nf_conntrack) into a
frozen model, and compares its entries with what a dataplane's rules choose today. Imports only
`iptrace.errors`, `iptrace.dataplane` and its own modules; lark only in grammar.py, when a line needs its parser.
No I/O but reading the file it is given (reader.read_file, for the CLI)."""

from typing import Any

from iptrace.conntrack.reader import load, load_path, read_file
from iptrace.conntrack.table import ConntrackTable, Skipped

__all__ = ["ConntrackEntry", "ConntrackTable", "FlowTuple", "Skipped", "load", "load_path", "read_file"]


def __getattr__(name: str) -> Any:
    """The model's classes, imported when first used (see layout._plan)."""
    if name in ("ConntrackEntry", "FlowTuple"):
        from iptrace.conntrack import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
