"""Which of the audited nodes are one cluster's. Nodes of one cluster give their Services the same ClusterIPs; a
node whose kube-proxy lags behind misses some of them, or still has some removed, but shares most. Nodes of two
clusters share none (or only the addresses that every kubeadm cluster gives the same Services, such as
10.96.0.1 for default/kubernetes). Comparing such nodes with each other would call every Service of the smaller
cluster wrong; they are compared within their own cluster, and told apart. Dataplane-free and pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import TypeVar

from iptrace.kube.compare import Finding, listing
from iptrace.kube.digest import FamilyDigest
from iptrace.text import counted

# Nodes are another cluster's when less than this share of the smaller node's Service ports (name and ClusterIP)
# are also the other's — a lagging node's ports are nearly all the others' (whatever it misses), another
# cluster's almost none — and the smaller node has at least MIN_PORTS of them: on fewer, a Service recreated
# with a new ClusterIP cannot be told from another cluster. default/kubernetes is decisive: its ClusterIP is the
# first address of the cluster's service range, never given to another Service while the cluster lives.
SAME_CLUSTER = 0.5
MIN_PORTS = 4
KUBERNETES = "default/kubernetes:https"
# The finding that says a node belongs to another cluster than most of the audited nodes.
OTHER_CLUSTER = "other-cluster"

T = TypeVar("T")
_KEY_IP = attrgetter("key", "cluster_ip")
_IP = itemgetter(1)


def other_clusters(a: AbstractSet[tuple[str, str]], b: AbstractSet[tuple[str, str]]) -> str | None:
    """Why two nodes' Service ports, as (name, ClusterIP), look like two clusters' (None: they may be one's)."""
    ka, kb = _kubernetes(a), _kubernetes(b)
    if _overlap(a, b, ka, kb) is not None:
        return None
    if ka is not None and kb is not None and ka != kb:
        return f"{KUBERNETES} is at {ka} on one and at {kb} on the other"
    small = min(len(a), len(b))
    return f"only {len(a & b)} of the {small} Service ports of the smaller one have the same name and ClusterIP on both"


def _ports(digest: FamilyDigest | None) -> frozenset[tuple[str, str]]:
    """A node's Service ports as (name, ClusterIP): what one cluster's nodes share."""
    if digest is None:
        return frozenset()
    return frozenset(filter(_IP, map(_KEY_IP, digest.ports)))  # (C-level: 5,000 ports a node)


def _kubernetes(ports: AbstractSet[tuple[str, str]]) -> str | None:
    return next((ip for name, ip in ports if name == KUBERNETES), None)


def _overlap(a: AbstractSet[tuple[str, str]], b: AbstractSet[tuple[str, str]], ka: str | None, kb: str | None,
             ) -> float | None:
    """The share of the smaller node's ports found in the other's; None when they are another cluster's. `ka`,
    `kb`: each node's default/kubernetes ClusterIP (_kubernetes)."""
    if ka is not None and kb is not None and ka != kb:
        return None
    small = min(len(a), len(b))
    share = 1.0 if small == 0 else len(a & b) / small
    return None if small >= MIN_PORTS and share < SAME_CLUSTER else share


@dataclass(frozen=True, slots=True)
class Group:
    """Nodes of one cluster, in audit order, with the address of its default/kubernetes Service when one has it."""

    members: tuple[int, ...]  # positions in the audited nodes
    kubernetes: str | None


def cluster_groups(nodes: Sequence[T], primary: Callable[[T], FamilyDigest | None]) -> list[Group]:
    """The nodes (with kube-proxy rules) by cluster, largest group first (then audit order). A node joins the
    group whose first node shares most of its Service ports, unless every group's first node is another
    cluster's (see SAME_CLUSTER)."""
    ports = [_ports(primary(n)) for n in nodes]
    kube = [_kubernetes(p) for p in ports]
    groups: list[list[int]] = []
    for i, mine in enumerate(ports):
        scores = [(share, -k) for k, g in enumerate(groups)
                  if (share := _overlap(mine, ports[g[0]], kube[i], kube[g[0]])) is not None]
        if scores:
            groups[-max(scores)[1]].append(i)
        else:
            groups.append([i])
    groups.sort(key=lambda g: (-len(g), g[0]))
    return [Group(tuple(g), next((kube[i] for i in g if kube[i] is not None), None)) for g in groups]


def other_cluster_findings(names: Sequence[str], groups: Sequence[Group]) -> list[Finding]:
    """One finding for each node outside the largest group (none when all are one cluster's)."""
    if len(groups) < 2:
        return []

    def described(g: Group) -> str:
        where = f", default/kubernetes at {g.kubernetes}" if g.kubernetes else ""
        return f"{listing([names[i] for i in g.members], 4)} ({counted(len(g.members), 'node')}{where})"

    overview = "; ".join(described(g) for g in groups)
    main = ("most audited nodes" if len(groups[0].members) > len(groups[1].members)
            else listing([names[i] for i in groups[0].members], 2))
    out = []
    for g in groups[1:]:
        for i in g.members:
            out.append(Finding(
                OTHER_CLUSTER, "warning", names[i], None,
                f"{names[i]}: a node of another cluster? Its Services (names and ClusterIPs) are not those of "
                f"{main}",
                f"The audited nodes fall into groups whose Services are not one cluster's (default/kubernetes has "
                f"another ClusterIP, or almost no Service has the same name and ClusterIP): {overview}. Each node "
                "is compared only with the nodes of its own group.",
                "audit each cluster's nodes on their own (one collection directory per cluster), or give "
                "--cluster/--kubeconfig of the cluster this node belongs to"))
    return out
