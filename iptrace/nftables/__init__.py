"""The nftables dataplane: everything that knows nft's ruleset text (`nft list ruleset`, kube-proxy's transaction
text) and JSON (`nft -j list ruleset`) and the model of tables, chains, sets and rules they describe; the
evaluator and kube-proxy's nft layout build on model.py. Imports only `iptrace.errors`, `iptrace.dataplane` and
its own modules; lark only where statements are parsed (grammar.py, loader.py, commands.py)."""

from iptrace.nftables.api import load, load_path
from iptrace.nftables.save import save
from iptrace.nftables.sniff import detect_format, sniff

__all__ = ["detect_format", "load", "load_path", "save", "sniff"]
