"""Small helpers tests share for comparing dumps."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

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


class Dumped(NamedTuple):
    """A node given as its parsed dump; `audit` below analyses it with the audit's cluster data, as the CLI
    does (iptrace.collect.inputs)."""

    name: str
    ruleset: Any
    addresses: tuple[str, ...] = ()
    legacy: Any = None


def audit(nodes: list[Any], cluster: Any) -> Any:
    """iptrace.kube.audit.audit of Dumped nodes (or ready NodeInputs), each analysed with `cluster`."""
    from iptrace.collect.inputs import legacy_note_for
    from iptrace.iptables import DATAPLANE
    from iptrace.kube.audit import NodeInput
    from iptrace.kube.audit import audit as _audit

    inputs = [n if isinstance(n, NodeInput) else NodeInput(
        n.name, {n.ruleset.family: analysis(n.ruleset, cluster=cluster, node_ips=n.addresses)}, None, n.addresses,
        {}, legacy_note_for(DATAPLANE, n.legacy) if n.legacy is not None else None) for n in nodes]
    return _audit(inputs, cluster)
