"""Small helpers tests share for comparing dumps."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from iptrace.iptables.model import TOKEN_RE


def rule_tokens(text: str) -> list[tuple[str, ...]]:
    """Every `-A` rule of an iptables-save text as its tokens (counters dropped), sorted: equal lists mean the
    same rules, token for token, whatever the spacing and order of chains."""
    out = []
    for line in text.splitlines():
        s = re.sub(r"^\[\d+:\d+\]\s+", "", line.strip())
        if s.startswith("-A "):
            out.append(tuple(TOKEN_RE.findall(s)))
    return sorted(out)


def analysis(ruleset: Any, *, cluster: Any = None, node_ips: Sequence[str] = (), family: str | None = None) -> Any:
    """The Analysis (layout, tracer, Service view) of a parsed dump, as the CLI builds it."""
    from iptrace.dataplanes import by_name
    from iptrace.kube.analysis import analyse

    dataplane = by_name("nftables" if type(ruleset).__module__.startswith("iptrace.nftables") else "iptables")
    return analyse(dataplane, ruleset, family, node_ips=node_ips, cluster=cluster)


def build_view(ruleset: Any, *, cluster: Any = None, node_ips: Sequence[str] = ()) -> Any:
    """The Service view of a parsed dump (built from its dataplane's own walk)."""
    return analysis(ruleset, cluster=cluster, node_ips=node_ips).view


def explainer(ruleset: Any, *, node_ips: Sequence[str] = (), cluster: Any = None) -> Any:
    from iptrace.explain import Explainer

    return Explainer(analysis(ruleset, cluster=cluster, node_ips=node_ips), cluster=cluster)
