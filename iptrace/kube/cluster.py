"""What the Kubernetes API says about Services, EndpointSlices and Nodes, as frozen values.

These are the facts kube-proxy programs its rules from; iptrace compares the rules with them. This module
holds data and lookups only: reading it from files or the API lives in `iptrace.collect.cluster`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
"""A label map as sorted (key, value) pairs, so that values stay hashable and comparable."""


def _canonical_ip(ip: str) -> str:
    """The one spelling of an address (IPv6 compressed), so lookups do not depend on how it was written."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


@dataclass(frozen=True, slots=True)
class ClusterServicePort:
    """One entry of spec.ports. `target_port` is a number or the name of a container port."""

    name: str
    port: int
    protocol: str
    target_port: int | str
    node_port: int | None = None
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterLoadBalancerIngress:
    """One status.loadBalancer.ingress entry. `ip_mode` "Proxy" means kube-proxy does not capture the IP."""

    ip: str | None
    hostname: str | None = None
    ip_mode: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterService:
    """A Service as the API server stores it, with the defaults the API server applies filled in."""

    namespace: str
    name: str
    type: str
    cluster_ips: tuple[str, ...]
    ports: tuple[ClusterServicePort, ...]
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[ClusterLoadBalancerIngress, ...] = ()
    lb_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str | None = None
    internal_traffic_policy: str | None = None
    session_affinity: str = "None"
    affinity_timeout: int | None = None
    health_check_node_port: int | None = None
    selector: Labels | None = None
    headless: bool = False
    external_name: str | None = None
    ip_families: tuple[str, ...] = ()
    labels: Labels = ()

    @property
    def key(self) -> str:
        """`namespace/name`, kube-proxy's NamespacedName spelling."""
        return f"{self.namespace}/{self.name}"

    def port(self, port_name: str, protocol: str = "TCP") -> ClusterServicePort | None:
        """The spec.ports entry with this name and protocol (protocol compared case-insensitively)."""
        proto = protocol.upper()
        for p in self.ports:
            if p.name == port_name and p.protocol == proto:
                return p
        return None

    def service_port_name(self, port: ClusterServicePort) -> str:
        """kube-proxy's ServicePortName.String(): `ns/name:port` (`ns/name` when the port has no name),
        the text its chain-name hashes and rule comments are made of."""
        return f"{self.key}:{port.name}" if port.name else self.key

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address kube-proxy captures for this Service: ClusterIPs, externalIPs and LB ingress IPs
        (except those in ipMode Proxy, which kube-proxy leaves to the load balancer)."""
        lb = tuple(i.ip for i in self.lb_ips if i.ip and i.ip_mode != "Proxy")
        return self.cluster_ips + self.external_ips + lb


@dataclass(frozen=True, slots=True)
class ClusterEndpoint:
    """One endpoint address of a slice for one of its ports: what a KUBE-SEP chain DNATs to.

    `ready`, `serving` and `terminating` follow kube-proxy's reading of the conditions: an unset ready or
    serving counts as true, an unset terminating as false."""

    ip: str
    port: int
    port_name: str
    protocol: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """`ip:port` (`[ip]:port` for IPv6), as kube-proxy's endpoint String() writes it."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClusterEndpointSlice:
    """An EndpointSlice, with every (address, port) pair it lists expanded to a `ClusterEndpoint`.

    `service` is the kubernetes.io/service-name label: the only link from a slice to its Service."""

    namespace: str
    name: str
    service: str | None
    address_type: str
    endpoints: tuple[ClusterEndpoint, ...]
    managed_by: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A Node's addresses, labels and pod CIDRs: enough to recognise node IPs in rules and to reach it."""

    name: str
    internal_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    labels: Labels = ()
    pod_cidrs: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    ready: bool | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class _Index:
    services: dict[tuple[str, str], ClusterService]
    slices: dict[tuple[str, str], tuple[ClusterEndpointSlice, ...]]
    nodes: dict[str, ClusterNode]


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Services, EndpointSlices and Nodes (the loaders sort each by namespace and name).

    `source` says where the data came from (files or a kubeconfig context); it is left out of equality so
    the same objects read two ways compare equal. `namespace` is set when only that namespace's Services and
    EndpointSlices were read (`--namespace`): the data says nothing about the others."""

    services: tuple[ClusterService, ...] = ()
    slices: tuple[ClusterEndpointSlice, ...] = ()
    nodes: tuple[ClusterNode, ...] = ()
    source: str = field(default="", compare=False)
    namespace: str | None = None
    _index: _Index = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        by_service: dict[tuple[str, str], list[ClusterEndpointSlice]] = {}
        for s in self.slices:
            if s.service is not None:
                by_service.setdefault((s.namespace, s.service), []).append(s)
        node_ips: dict[str, ClusterNode] = {}
        for n in self.nodes:
            for ip in n.internal_ips + n.external_ips:
                node_ips.setdefault(_canonical_ip(ip), n)
        index = _Index(
            services={(s.namespace, s.name): s for s in self.services},
            slices={k: tuple(v) for k, v in by_service.items()},
            nodes=node_ips,
        )
        # frozen dataclass: the derived index is set once here and never changes afterwards.
        object.__setattr__(self, "_index", index)

    @property
    def compared(self) -> str:
        """What an audit was compared with: the source, and the one namespace when only its Services were read (an
        audit of it says nothing of the others', and its shards merge only with shards of that namespace)."""
        return self.source + (f" (namespace {self.namespace} only)" if self.namespace is not None else "")

    def covers(self, namespace: str | None) -> bool:
        """Whether the data lists the Services of `namespace` (None: a namespace not known)."""
        return self.namespace is None or namespace == self.namespace

    def scoped(self, namespace: str) -> ClusterState:
        """Only `namespace`'s Services and EndpointSlices (Nodes are cluster-scoped), as a read of that namespace
        alone gives: data of every namespace (`--cluster` files) asked about one (`--namespace`)."""
        return ClusterState(services=tuple(s for s in self.services if s.namespace == namespace),
                            slices=tuple(s for s in self.slices if s.namespace == namespace),
                            nodes=self.nodes, source=self.source, namespace=namespace)

    def service(self, namespace: str, name: str) -> ClusterService | None:
        return self._index.services.get((namespace, name))

    def slices_for(self, namespace: str, name: str) -> tuple[ClusterEndpointSlice, ...]:
        return self._index.slices.get((namespace, name), ())

    def endpoints_for(self, namespace: str, name: str, port_name: str, protocol: str = "TCP",
                      local_node: str | None = None) -> tuple[ClusterEndpoint, ...]:
        """The endpoints of one Service port, merged over all its slices, one per `ip:port`.

        Mirrors kube-proxy's EndpointSliceCache.addEndpoints: FQDN slices and endpoints without an address
        are ignored, slices are read in name order, and a duplicate `ip:port` keeps its first reading unless
        a later one is on `local_node` (kube-proxy favours the local copy). Sorted by address."""
        proto = protocol.upper()
        seen: dict[str, ClusterEndpoint] = {}
        for s in sorted(self.slices_for(namespace, name), key=lambda s: s.name):
            if s.address_type == "FQDN":
                continue
            for e in s.endpoints:
                if e.port_name != port_name or e.protocol != proto:
                    continue
                if e.address not in seen or (local_node is not None and e.node_name == local_node):
                    seen[e.address] = e
        return tuple(sorted(seen.values(), key=lambda e: (_ip_sort_key(e.ip), e.port)))

    def node_by_ip(self, ip: str) -> ClusterNode | None:
        """The Node that reports this InternalIP or ExternalIP."""
        return self._index.nodes.get(_canonical_ip(ip))

    def node(self, name: str) -> ClusterNode | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    def service_ports(self) -> Iterator[tuple[ClusterService, ClusterServicePort]]:
        """Every (Service, port) pair kube-proxy makes chains for: not headless, not ExternalName."""
        for s in self.services:
            if s.headless or s.type == "ExternalName":
                continue
            for p in s.ports:
                yield s, p

    def services_by_ip(self, ip: str) -> tuple[ClusterService, ...]:
        """Services that capture this address (ClusterIP, externalIP or LB ingress IP)."""
        want = _canonical_ip(ip)
        return tuple(s for s in self.services if any(_canonical_ip(a) == want for a in s.addresses))


def _ip_sort_key(ip: str) -> tuple[int, int, str]:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0, ip)
    return (a.version, int(a), "")
