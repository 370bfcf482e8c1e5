"""The records of kube-proxy's view of a node (iptrace.kube.view builds them): a Service port's identity, its
endpoints, its ways in and what each kind of client gets through them, and the node's view of all its ports.
Dataplane-free and pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from iptrace.dataplane import RuleAt
from iptrace.kube.clients import Clients
from iptrace.layout import NodePortAddresses, ProxyMode, WayIn

# Masquerade behaviour of a way in (for its DNATed traffic).
MASQ_ALWAYS = "always"
MASQ_OFF_POD = "off-node/off-pod only"
MASQ_NEVER = "never"


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One endpoint: `port` is the targetPort. `probability` is its share of the new connections entering the
    chain that lists it — the cluster chain when it is there, else the local one — as the walk computes it.
    `local_probability` is its share within the local chain when it is local."""

    ip: str
    port: int | None
    probability: float
    local: bool
    chain: str
    local_probability: float | None = None
    in_cluster_chain: bool = True
    line: int = 0

    @property
    def address(self) -> str:
        """`ip:port`, `[ip]:port` for IPv6, as kube-proxy writes it."""
        if self.port is None:
            return self.ip
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class Reach(NamedTuple):
    """An endpoint one kind of client reaches through an entry, with its probability."""

    endpoint: str  # ip:port
    probability: float


@dataclass(frozen=True, slots=True)
class SourcePath:
    """What one kind of client gets through an entry: `verdict` DNAT|DROP|REJECT|ACCEPT|CONTINUE."""

    source: str
    verdict: str
    via: tuple[str, ...]
    reaches: tuple[Reach, ...]
    masquerade: bool
    # The rule that dropped/rejected: its dump line, 0 when none did; for input without lines (nft -j) its table,
    # chain and kernel handle
    decided_by: int | RuleAt = 0


@dataclass(frozen=True, slots=True)
class EntryView:
    """One way in. `address` None means "the node's own addresses" (NodePorts, see
    KubeView.node_port_addresses). `verdict`, `reaches`, `via` are for a client outside the cluster (inside
    the source ranges for a firewalled LB IP); `paths` lists the kinds of client that fare differently."""

    kind: str
    address: str | None
    port: int
    protocol: str
    chain: str
    verdict: str
    reaches: tuple[Reach, ...]
    masquerade: str
    masquerade_sources: tuple[str, ...]
    via: tuple[str, ...]
    paths: tuple[SourcePath, ...] = ()
    notes: tuple[str, ...] = ()
    lines: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        host = "<node>" if self.address is None else (f"[{self.address}]" if ":" in self.address
                                                        else self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PortIdentity:
    """Who a Service port is and where it is reached, read off its ways in (the first fields of its view and of
    its PortFacts). Identity from the rules (comments, nft chain names), else from the chain-name hash and
    cluster data, else the chain name (namespace "")."""

    namespace: str
    name: str
    port_name: str
    protocol: str
    cluster_ip: str | None
    port: int | None
    node_port: int | None
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    lb_source_ranges: tuple[str, ...]
    health_check_node_port: int | None

    @property
    def label(self) -> str:
        """`ns/svc:port` (`ns/svc` for an unnamed port), kube-proxy's ServicePortName; else the chain name."""
        if not self.namespace:
            return self.name
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base


@dataclass(frozen=True, slots=True)
class ServicePortView(PortIdentity):
    """One Service port as kube-proxy programmed it on this node: its identity, then what the walk says of it."""

    external_traffic_policy: str | None
    internal_traffic_policy: str | None
    session_affinity_timeout: int | None
    endpoints: tuple[EndpointView, ...]
    entries: tuple[EntryView, ...]
    no_endpoints: bool
    no_local_endpoints: bool
    chains: tuple[str, ...]
    lines: tuple[int, ...]
    identity: str  # "comment" | "hash" (chain name + cluster data) | "address" (cluster data) | "chain"
    notes: tuple[str, ...] = ()
    # Input without lines (nft -j): its rules' kernel handles, and per chain its DNAT rule's (ServicePortLayout's)
    handles: tuple[int, ...] = ()
    dnat_handles: tuple[tuple[str, int], ...] = ()

    @property
    def type(self) -> str:
        """The Service type the rules imply: LoadBalancer, NodePort or ClusterIP."""
        if self.lb_ips or self.lb_source_ranges or self.health_check_node_port is not None:
            return "LoadBalancer"
        if self.node_port is not None:
            return "NodePort"
        return "ClusterIP"

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.namespace, self.name, self.port_name, self.protocol)


@dataclass(frozen=True, slots=True)
class PortFacts(PortIdentity):
    """A Service port without the traces of its ways in: its identity, its endpoints from the same walk, its
    ways in as `entries` (kind, address, port, lines). What explain asks of the Service ports a question
    meets, at the cost of their endpoints alone, and those walked only when read: most questions about a
    Service's address read its port and protocol, not its endpoints (~0.1 ms of an explain answer)."""

    entries: tuple[WayIn, ...]
    # (as the view says them: where outside clients are answered, which explain's advice needs)
    external_traffic_policy: str | None
    no_local_endpoints: bool
    session_affinity_timeout: int | None
    # The endpoints, or the walk that finds them (called once, on first read).
    _endpoints: tuple[EndpointView, ...] | Callable[[], Sequence[EndpointView]] = field(repr=False, compare=False)

    @property
    def endpoints(self) -> tuple[EndpointView, ...]:
        found = self._endpoints
        if callable(found):
            found = tuple(found())
            object.__setattr__(self, "_endpoints", found)
        return found


@dataclass(frozen=True, slots=True)
class PortLayout(PortIdentity):
    """A Service port as its layout says it, without a walk: its identity, chains, ways in as `entries`, lines.
    What the filters and the API comparison read of every port of a node before building the views of the few
    they need (`endpoints`: when a caller has read them)."""

    key: str
    chains: tuple[str, ...]
    entries: tuple[WayIn, ...]
    lines: tuple[int, ...]
    endpoints: tuple[EndpointView, ...] = ()


@dataclass(frozen=True, slots=True)
class KubeView:
    """Everything kube-proxy programmed on one node for one IP family, per Service port, sorted by (namespace,
    name, port name, protocol). `chain_labels` names the Service of every per-service chain so that a trace
    can say which Service an outcome belongs to."""

    proxy: ProxyMode
    services: tuple[ServicePortView, ...]
    chain_labels: dict[str, str]
    node_port_addresses: NodePortAddresses
    pod_cidrs: tuple[str, ...]
    pod_interfaces: tuple[str, ...]
    masquerade_mark: str | None
    random_fully: bool
    family: str
    warnings: tuple[str, ...] = ()
    source: str = field(default="<dump>", compare=False)
    clients: Clients | None = field(default=None, compare=False)  # the representative packets' sources

    @property
    def era(self) -> ProxyMode:
        return self.proxy
