"""Reads conntrack's flow table (`conntrack -L`, plain or `-o extended`, and /proc/net/nf_conntrack) into a
frozen model, and compares its entries with what a dataplane's rules choose today. Imports only
`iptrace.errors`, `iptrace.dataplane` and its own modules; lark only in grammar.py and layout.py. No I/O but
reading the file it is given (reader.read_file, for the CLI)."""

from iptrace.conntrack.model import ConntrackEntry, FlowTuple
from iptrace.conntrack.reader import load, load_path, read_file
from iptrace.conntrack.table import ConntrackTable, Skipped

__all__ = ["ConntrackEntry", "ConntrackTable", "FlowTuple", "Skipped", "load", "load_path", "read_file"]
