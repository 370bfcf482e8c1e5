"""Text ⇄ model: the lark grammar, the option-arity table (data), the fast loader and `save`, its inverse."""

from iptrace.parse.loader import load, load_path, read_dump
from iptrace.parse.save import save

__all__ = ["load", "load_path", "read_dump", "save"]
