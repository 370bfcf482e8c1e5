"""The representative clients of the Service view: each kind of client a way in is walked for, its source
address, and where NodePorts are traced to (iptrace.kube.view reads one trace per way in and kind of client).
Dataplane-free and pure."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

from iptrace.kube.sources import Claimed, inside, of_family, outside, pick_source, pod_interface
from iptrace.layout import LOAD_BALANCER, Layout, WayIn

# Kinds of client an entry is walked for.
EXTERNAL = "external"  # outside the cluster (for a firewalled LB IP: inside loadBalancerSourceRanges)
OUTSIDE_RANGES = "outside-source-ranges"  # outside loadBalancerSourceRanges (firewalled LB IPs only)
POD = "pod"  # a pod on this node (source in the pod CIDR)
NODE = "node"  # a process on the node itself
SOURCES = (EXTERNAL, OUTSIDE_RANGES, POD, NODE)
CLIENT_WORDS = {EXTERNAL: "from outside the cluster", OUTSIDE_RANGES: "from outside loadBalancerSourceRanges",
                POD: "from a pod", NODE: "from the node itself"}

# Where a placeholder node address stands in when the node's own addresses are unknown (NodePorts are
# traced to it; documentation ranges, never a real host).
_PLACEHOLDER_NODE = {"ipv4": "192.0.2.10", "ipv6": "2001:db8::10"}


@dataclass(frozen=True, slots=True)
class _Taken:
    """Addresses a representative client must not have: a few known ones, and every endpoint's."""

    addresses: frozenset[str]
    endpoints: Container[str]

    def __contains__(self, ip: object) -> bool:
        return ip in self.addresses or ip in self.endpoints


@dataclass(frozen=True, slots=True)
class Clients:
    """The representative source of each kind of client, and where NodePorts are traced to."""

    external: str
    pod: str
    node: str
    node_address: str  # the node address NodePorts are traced to
    taken: _Taken  # node, pod and endpoint addresses (never picked for a source-range client)
    pod_interface: str | None  # where the pod's packets come in, when the rules tell pods by interface

    @classmethod
    def for_layout(cls, layout: Layout, node_ips: Sequence[str]) -> Clients:
        family = layout.family
        nodes = of_family(node_ips, family) or of_family(layout.node_ips, family)
        node_address = nodes[0] if nodes else _PLACEHOLDER_NODE[family]
        known = [node_address, *nodes]
        external = pick_source("external", family, known, layout.pod_cidrs, layout.endpoint_ips,
                               claimed=Claimed(layout))[0]
        pod = pick_source("pod", family, known, layout.pod_cidrs, layout.endpoint_ips, layout.node_pod_cidrs)[0]
        node = pick_source("node", family, known)[0]
        return cls(external, pod, node, node_address, _Taken(frozenset({*known, pod, external}), layout.endpoint_ips),
                   pod_interface(layout.pod_interfaces))

    @property
    def node_unknown(self) -> bool:
        """The node's own addresses were neither given nor revealed by the rules: NodePorts are traced to a
        placeholder, and an endpoint on the node itself looks like another machine."""
        return self.node_address in _PLACEHOLDER_NODE.values()

    def packets(self, way: WayIn, source_ranges: Sequence[str], family: str) -> tuple[str, list[tuple[str, str]]]:
        """The destination a way in is traced to, and (kind of client, source address) for each client: for a
        LoadBalancer IP with source ranges, "external" is inside the first range and "outside-source-ranges"
        outside them all."""
        dst = way.address if way.address is not None else self.node_address
        sources: list[tuple[str, str]] = []
        if way.kind == LOAD_BALANCER and source_ranges:
            taken = _Taken(self.taken.addresses | {dst}, self.taken.endpoints)
            sources.append((EXTERNAL, inside(source_ranges[0], taken) or self.external))
            outer = outside(family, taken, source_ranges)
            if outer is not None:
                sources.append((OUTSIDE_RANGES, outer))
        else:
            sources.append((EXTERNAL, self.external))
        return dst, [*sources, (POD, self.pod), (NODE, self.node)]


def view_node_ips(layout: Layout, node_ips: Sequence[str]) -> list[str]:
    """The node addresses a view's tracer must treat as local: the given ones, else those the rules reveal,
    else a documentation placeholder (so that NodePorts can be traced at all)."""
    if of_family(node_ips, layout.family):
        return list(node_ips)
    revealed = of_family(layout.node_ips, layout.family)
    return [*node_ips, *(revealed or [_PLACEHOLDER_NODE[layout.family]])]
