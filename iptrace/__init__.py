"""iptrace: how a Kubernetes node really forwards traffic, read from its iptables rules.

A small facade over the layers (parse → kube → trace → explain); heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from iptrace.iptables.model import Ruleset


def load(text: str | bytes, *, source: str = "<dump>", lenient: bool = False,
         table: str | None = None) -> Ruleset:
    """Parse iptables-save / ip6tables-save / `iptables -S` text into a frozen Ruleset."""
    from iptrace.iptables import load as _load

    return _load(text, source=source, lenient=lenient, table=table)


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'iptrace' has no attribute {name!r}")
