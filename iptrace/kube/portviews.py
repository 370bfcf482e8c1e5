"""What an audit report draws (render.html): each Service port a finding names, as every node programmed it. Kept
apart from the comparison (iptrace.kube.audit), which never reads it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from iptrace.kube.digest import NodeResult
from iptrace.kube.view import ServicePortView


@dataclass(frozen=True, slots=True)
class PortViews:
    """One Service port a finding names, in one IP family: every node with kube-proxy rules in that family, in
    audit order, with its view of the port (None: the node has no rules for it; lines are left out)."""

    service: str
    family: str
    nodes: tuple[tuple[str, ServicePortView | None], ...]


def port_views(proxied: Sequence[NodeResult], wanted: Sequence[str]) -> tuple[PortViews, ...]:
    """The views of the Service ports `wanted` (keys) on the nodes with kube-proxy rules, in audit order."""
    if not wanted or not any(f.pictures is not None for s in proxied for f in s.families):
        return ()  # (nodes digested without their pictures: a merge of audits draws none)
    families = sorted({f.family for s in proxied for f in s.families if f.proxied})
    by_node: dict[tuple[str, str], dict[str, ServicePortView]] = {}
    for s in proxied:
        for family in families:
            fam = s.family(family)
            if fam is None or not fam.proxied or fam.pictures is None:
                continue
            by_node[(s.name, family)] = dict(fam.pictures)
    out: list[PortViews] = []
    for key in wanted:
        drawn = False
        for family in families:
            nodes = tuple((s.name, by_node[(s.name, family)].get(key)) for s in proxied
                          if (s.name, family) in by_node)
            if any(sp is not None for _, sp in nodes):
                out.append(PortViews(key, family, nodes))
                drawn = True
        if not drawn and families:  # no node has rules for it (the API has it): one row of absences
            family = families[0]
            out.append(PortViews(key, family, tuple((s.name, None) for s in proxied if (s.name, family) in by_node)))
    return tuple(out)
