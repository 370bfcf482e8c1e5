"""The nftables dataplane: everything that knows nft's ruleset text and JSON, the model of tables, chains, sets
and rules they describe, and (later) the evaluator and kube-proxy's nft layout. Imports only `iptrace.errors`,
`iptrace.dataplane` and its own modules; lark only in grammar.py and loader.py."""

from iptrace.nftables.api import load, load_path
from iptrace.nftables.save import save
from iptrace.nftables.sniff import detect_format, sniff

__all__ = ["detect_format", "load", "load_path", "save", "sniff"]
