"""The iptables dataplane: everything that knows iptables-save text, its model, the netfilter walk over it
and how kube-proxy lays out its rules there. Imports only `iptrace.errors`, `iptrace.dataplane` and its own
modules; lark only in grammar.py and loader.py."""

from iptrace.iptables.loader import load, load_path, read_dump
from iptrace.iptables.save import save
from iptrace.iptables.sniff import sniff

__all__ = ["load", "load_path", "read_dump", "save", "sniff"]
