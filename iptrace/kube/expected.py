"""What kube-proxy should have programmed on a node, worked out the way kube-proxy works it out: the Service
ports of one IP family (syncProxyRules' svcInfo) and the endpoints each uses (pkg/proxy/topology.go
CategorizeEndpoints). Dataplane-free and pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from iptrace.kube.cluster import ClusterEndpoint, ClusterService, ClusterServicePort, ClusterState


def canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def canonical_cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        return text.strip()


def family_of(ip: str) -> str:
    return "ipv6" if ":" in ip else "ipv4"


def service_label(ns: str, name: str, port_name: str, protocol: str) -> str:
    base = f"{ns}/{name}:{port_name}" if port_name else f"{ns}/{name}"
    return base if protocol.lower() == "tcp" else f"{base}/{protocol.lower()}"


@dataclass(frozen=True, slots=True)
class ExpectedPort:
    """What kube-proxy programs for one Service port in one IP family (syncProxyRules' svcInfo)."""

    service: ClusterService
    port: ClusterServicePort
    family: str
    cluster_ip: str
    node_port: int | None
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    lb_source_ranges: tuple[str, ...]
    external_policy_local: bool
    internal_policy_local: bool
    affinity_timeout: int | None
    health_check_node_port: int | None
    endpoints: tuple[ClusterEndpoint, ...]

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.service.namespace, self.service.name, self.port.name, self.port.protocol.lower())

    @property
    def label(self) -> str:
        return service_label(*self.key)

    @property
    def service_port_name(self) -> str:
        return self.service.service_port_name(self.port)

    @property
    def externally_accessible(self) -> bool:
        return self.node_port is not None or bool(self.lb_ips) or bool(self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible)


def expected_ports(cluster: ClusterState, family: str) -> list[ExpectedPort]:
    """Every Service port kube-proxy's `family` proxier handles (headless and ExternalName excluded: kube-proxy
    skips them; LoadBalancer ingress IPs in ipMode Proxy excluded: the load balancer delivers to the node)."""
    out: list[ExpectedPort] = []
    for svc, port in cluster.service_ports():
        cluster_ip = next((canonical(ip) for ip in svc.cluster_ips if family_of(ip) == family), None)
        if cluster_ip is None:
            continue
        typed_external = svc.type in ("NodePort", "LoadBalancer")
        is_lb = svc.type == "LoadBalancer"
        lb_ips = tuple(canonical(i.ip) for i in svc.lb_ips
                       if is_lb and i.ip and i.ip_mode != "Proxy" and family_of(i.ip) == family)
        external_ips = tuple(canonical(ip) for ip in svc.external_ips if family_of(ip) == family)
        accessible = (typed_external and bool(port.node_port)) or bool(lb_ips) or bool(external_ips)
        etp_local = accessible and svc.external_traffic_policy == "Local"
        eps = tuple(e for e in cluster.endpoints_for(svc.namespace, svc.name, port.name, port.protocol)
                    if family_of(e.ip) == family)
        out.append(ExpectedPort(
            service=svc, port=port, family=family, cluster_ip=cluster_ip,
            node_port=port.node_port if typed_external and port.node_port else None,
            external_ips=external_ips, lb_ips=lb_ips,
            lb_source_ranges=tuple(canonical_cidr(r) for r in svc.lb_source_ranges
                                   if is_lb and family_of(r) == family),
            external_policy_local=etp_local,
            internal_policy_local=svc.internal_traffic_policy == "Local",
            affinity_timeout=svc.affinity_timeout if svc.session_affinity == "ClientIP" else None,
            # NeedsHealthCheck: only LoadBalancers with externalTrafficPolicy=Local
            health_check_node_port=svc.health_check_node_port if is_lb and etp_local else None,
            endpoints=eps,
        ))
    return out


@dataclass(frozen=True, slots=True)
class EndpointChoice:
    """kube-proxy's endpoint choice for one Service port on one node. `cluster` is what KUBE-SVC balances
    over (None when the port uses no cluster-wide chain); `local` what KUBE-SVL/KUBE-XLB balances over (None
    when it uses none, or the node's name is unknown). `alternatives` are other cluster sets a correct
    kube-proxy may also have written (older releases without the terminating fallback, topology hints)."""

    cluster: frozenset[str] | None
    local: frozenset[str] | None
    has_any: bool
    alternatives: tuple[frozenset[str], ...] = ()


def choose_endpoints(exp: ExpectedPort, node_name: str | None, zone: str | None = None) -> EndpointChoice:
    """Mirror of proxy.CategorizeEndpoints: ready endpoints; when none is ready, serving+terminating ones
    (ProxyTerminatingEndpoints, on by default since 1.26); for a Local policy only the endpoints whose
    nodeName is this node."""
    eps = exp.endpoints
    ready = [e for e in eps if e.ready]
    terminating = [e for e in eps if e.serving and e.terminating]
    alternatives: list[frozenset[str]] = []
    cluster: frozenset[str] | None = None
    has_any = False
    if exp.uses_cluster_endpoints:
        chosen = ready or terminating
        cluster = frozenset(e.address for e in chosen)
        has_any = bool(chosen)
        if not ready and terminating:
            alternatives.append(frozenset())  # before ProxyTerminatingEndpoints: no endpoints at all
        # topologyModeFromHints: same-node hints (trafficDistribution PreferSameNode, 1.33+) when every ready
        # endpoint has them and one is for this node, else same-zone hints alike.
        if node_name is not None and ready and all(e.node_hints for e in ready):
            hinted = frozenset(e.address for e in ready if node_name in e.node_hints)
            if hinted:
                alternatives.append(hinted)
        if zone is not None and ready and all(e.zone_hints for e in ready):
            hinted = frozenset(e.address for e in ready if zone in e.zone_hints)
            if hinted:
                alternatives.append(hinted)
    local: frozenset[str] | None = None
    if exp.uses_local_endpoints:
        has_any = has_any or bool(ready or terminating)
        if node_name is not None:
            local_ready = [e for e in ready if e.node_name == node_name]
            local_term = [e for e in terminating if e.node_name == node_name]
            local = frozenset(e.address for e in (local_ready or local_term))
    return EndpointChoice(cluster, local, has_any, tuple(alternatives))


# ------------------------------------------------------------------------------------------------ identity
