"""A faithful kube-proxy (iptables mode) ruleset synthesizer: Services in, the rules kube-proxy writes out.

`render()` mirrors `syncProxyRules` in kubernetes/kubernetes pkg/proxy/iptables/proxier.go for three eras:
"current" (1.29+: KUBE-EXT/KUBE-SVL, nfacct counters, the 127.0.0.0/8 NodePort rule), "ext" (~1.26-1.28: the
same layout without nfacct) and "xlb" (~1.21: KUBE-XLB, cluster-IP masquerading in KUBE-SERVICES, KUBE-FW
ending in kubelet's KUBE-MARK-DROP). With `full_dump=False` it returns the iptables-restore text kube-proxy
feeds the kernel (the shape of kube-proxy's own test expectations); with `full_dump=True` it returns what
`iptables-nft-save` prints on such a node, built-in chains, kubelet's chains and canaries included, in the
kernel's canonical rule form. This module is test and benchmark tooling: it raises ValueError, never iptrace
errors, and does no I/O.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from iptrace.iptables.hashes import endpoint_chain, service_port_chain

ERAS = ("current", "ext", "xlb")

MASQ_MARK = "0x4000"
DROP_MARK = "0x8000"
LARGE_CLUSTER_ENDPOINTS = 1000  # largeClusterEndpointsThreshold
NFACCT_LOCALHOST_NODEPORTS = "localhost_nps_accepted_pkts"
NFACCT_INVALID_DROPPED = "ct_state_invalid_dropped_pkts"
SAVE_DATE = "Mon Jan  6 09:30:00 2025"  # fixed, so that a rendered dump is reproducible byte for byte
SAVE_VERSION = "v1.8.9 (nf_tables)"

_NODEPORTS_LAST = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'


# --------------------------------------------------------------------------------------------- the input


@dataclass
class EndpointSpec:
    """One endpoint (EndpointSlice address). `port` is its target port; `ports` maps a service port name to
    the endpoint's port for that service port when they differ (multi-port services)."""

    ip: str
    port: int
    local: bool = False
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    ports: dict[str, int] | None = None


@dataclass
class PortSpec:
    name: str
    port: int
    protocol: str = "TCP"
    node_port: int | None = None
    target_port: int | str | None = None


@dataclass
class ServiceSpec:
    """A Service and its endpoints. The endpoint port used for service port P is `endpoint.ports[P.name]`
    when given, else P.target_port when it is a number, else `endpoint.port`."""

    namespace: str
    name: str
    cluster_ip: str
    ports: list[PortSpec]
    type: str = "ClusterIP"
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)
    lb_source_ranges: list[str] = field(default_factory=list)
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity_timeout: int | None = None
    health_check_node_port: int | None = None
    endpoints: list[EndpointSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (sample_dumps/scenarios.json); ClientIP affinity iff the timeout is set."""
        data = asdict(self)
        data["session_affinity"] = "ClientIP" if self.session_affinity_timeout is not None else "None"
        for ep in data["endpoints"]:
            if ep["ports"] is None:
                del ep["ports"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServiceSpec:
        data = dict(data)
        data.pop("session_affinity", None)
        data["ports"] = [PortSpec(**p) for p in data["ports"]]
        data["endpoints"] = [EndpointSpec(**e) for e in data.get("endpoints", [])]
        return cls(**data)


# --------------------------------------------------------------------------------------------- addresses


def _norm_ip(text: str) -> str:
    """Normalize like Go's ParseIPSloppy: IPv4 octets may carry leading zeros ("10.180.00.001")."""
    text = text.strip()
    if ":" in text:
        return str(ipaddress.IPv6Address(text))
    return ".".join(str(int(octet)) for octet in text.split("."))


def _norm_cidr(text: str) -> str:
    addr, _, prefix = text.strip().partition("/")
    net = ipaddress.ip_network(f"{_norm_ip(addr)}/{int(prefix)}" if prefix else _norm_ip(addr), strict=False)
    return str(net)


def _is_v6(text: str) -> bool:
    return ":" in text


def _join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if _is_v6(ip) else f"{ip}:{port}"


def probability(n: int) -> str:
    """computeProbability: the text kube-proxy writes for a 1/n split."""
    return f"{1.0 / n:0.10f}"


# --------------------------------------------------------------------------------------------- the model


@dataclass
class _Endpoint:
    ip: str
    port: int
    local: bool
    ready: bool
    serving: bool
    terminating: bool
    text: str
    chain: str


@dataclass
class _ServicePort:
    name: str  # ServicePortName.String(): "ns/svc:port" or "ns/svc"
    protocol: str  # lower case
    cluster_ip: str
    port: int
    node_port: int
    health_check_node_port: int
    external_ips: list[str]
    lb_ips: list[str]
    source_ranges: list[str]
    affinity_seconds: int | None
    external_policy_local: bool
    internal_policy_local: bool
    endpoints: list[_Endpoint]

    def chain(self, prefix: str) -> str:
        return service_port_chain(prefix, self.name, self.protocol)

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.lb_ips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible)


def _service_ports(services: Iterable[ServiceSpec], ipv6: bool) -> list[_ServicePort]:
    """Flatten Services into kube-proxy's svcPortMap for one IP family, in a stable order (kube-proxy walks a
    Go map; sorting by name keeps renders reproducible)."""
    out: list[_ServicePort] = []
    for svc in services:
        if not svc.cluster_ip or svc.cluster_ip == "None" or _is_v6(svc.cluster_ip) != ipv6:
            continue  # headless, or the other family's proxier handles it
        family = [ip for ip in svc.external_ips if _is_v6(ip.strip()) == ipv6]
        lbs = [ip for ip in svc.lb_ips if _is_v6(ip.strip()) == ipv6] if svc.type == "LoadBalancer" else []
        ranges = [r for r in svc.lb_source_ranges if _is_v6(r.strip()) == ipv6]
        typed_external = svc.type in ("NodePort", "LoadBalancer")
        needs_health_check = svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"
        for p in svc.ports:
            name = f"{svc.namespace}/{svc.name}:{p.name}" if p.name else f"{svc.namespace}/{svc.name}"
            protocol = p.protocol.lower()
            eps: dict[str, _Endpoint] = {}
            for e in svc.endpoints:
                if _is_v6(e.ip.strip()) != ipv6:
                    continue
                if e.ports is not None and p.name in e.ports:
                    port = e.ports[p.name]
                elif isinstance(p.target_port, int):
                    port = p.target_port
                else:
                    port = e.port
                ip = _norm_ip(e.ip)
                text = _join_host_port(ip, port)
                eps[text] = _Endpoint(ip, port, e.local, e.ready, e.serving or e.ready, e.terminating, text,
                                      endpoint_chain(name, protocol, text))
            out.append(_ServicePort(
                name=name, protocol=protocol, cluster_ip=_norm_ip(svc.cluster_ip), port=p.port,
                node_port=(p.node_port or 0) if typed_external else 0,
                # NeedsHealthCheck: only LoadBalancers with externalTrafficPolicy=Local get one
                health_check_node_port=(svc.health_check_node_port or 0) if needs_health_check else 0,
                external_ips=[_norm_ip(ip) for ip in family], lb_ips=[_norm_ip(ip) for ip in lbs],
                source_ranges=[_norm_cidr(r) for r in ranges],
                affinity_seconds=svc.session_affinity_timeout,
                external_policy_local=typed_external and svc.external_traffic_policy == "Local",
                internal_policy_local=svc.internal_traffic_policy == "Local",
                # byEndpoint: EndpointSliceCache returns endpoints sorted by their "ip:port" string
                endpoints=[eps[k] for k in sorted(eps)],
            ))
    out.sort(key=lambda sp: (sp.name, sp.protocol))
    return out


def categorize_endpoints(sp: _ServicePort) -> tuple[list[_Endpoint], list[_Endpoint], list[_Endpoint], bool]:
    """proxy.CategorizeEndpoints (without topology hints): cluster, local, all reachable, has any."""
    cluster: list[_Endpoint] = []
    local: list[_Endpoint] = []
    has_any = False
    if sp.uses_cluster_endpoints:
        cluster = [e for e in sp.endpoints if e.ready]
        if not cluster:
            # Fall back to serving-terminating endpoints rather than drop connections.
            cluster = [e for e in sp.endpoints if e.serving and e.terminating]
        has_any = bool(cluster)
    if not sp.uses_local_endpoints:
        return cluster, local, cluster, has_any
    local_ready = local_terminating = False
    for e in sp.endpoints:
        if e.ready:
            has_any = True
            local_ready = local_ready or e.local
        elif e.serving and e.terminating:
            has_any = True
            local_terminating = local_terminating or e.local
    use_terminating = False
    if local_ready:
        local = [e for e in sp.endpoints if e.local and e.ready]
    elif local_terminating:
        use_terminating = True
        local = [e for e in sp.endpoints if e.local and e.serving and e.terminating]
    if not sp.uses_cluster_endpoints:
        return cluster, local, local, has_any
    if not use_terminating:
        return cluster, local, cluster, has_any
    merged = {e.text: e for e in cluster} | {e.text: e for e in local}
    return cluster, local, [merged[k] for k in sorted(merged)], has_any


def expected_service_ports(services: Iterable[ServiceSpec], *, ipv6: bool = False,
                           era: str = "current") -> list[dict[str, Any]]:
    """What a correct services view of render(services) shows, one entry per service port: its ways in, its
    policies, its chains and which endpoints each chain balances over (in rule order)."""
    out: list[dict[str, Any]] = []
    for sp in _service_ports(services, ipv6):
        if era == "xlb":
            cluster = [e for e in sp.endpoints if e.ready]
            local = [e for e in cluster if e.local] if sp.external_policy_local else []
            has_any = bool(cluster)
        else:
            cluster, local, _, has_any = categorize_endpoints(sp)
        # Only the chains the dump declares for this service port.
        present = {"svc": has_any, "xlb": sp.external_policy_local, "fw": has_any and bool(sp.lb_ips)}
        if era != "xlb":
            present = {"svc": bool(cluster) and sp.uses_cluster_endpoints,
                       "svl": bool(local) and sp.uses_local_endpoints,
                       "ext": has_any and sp.externally_accessible,
                       "fw": has_any and bool(sp.lb_ips) and bool(sp.source_ranges)}
        chains = {kind: sp.chain(f"KUBE-{kind.upper()}-") for kind, yes in present.items() if yes}
        out.append({
            "service_port": sp.name, "protocol": sp.protocol, "cluster_ip": sp.cluster_ip, "port": sp.port,
            "node_port": sp.node_port or None, "external_ips": sp.external_ips, "lb_ips": sp.lb_ips,
            "lb_source_ranges": sp.source_ranges,
            "external_traffic_policy": "Local" if sp.external_policy_local else "Cluster",
            "internal_traffic_policy": "Local" if sp.internal_policy_local else "Cluster",
            "session_affinity_timeout": sp.affinity_seconds,
            "health_check_node_port": sp.health_check_node_port or None,
            "has_endpoints": has_any, "chains": chains,
            "endpoints": [{"endpoint": e.text, "local": e.local, "ready": e.ready, "serving": e.serving,
                           "terminating": e.terminating, "chain": e.chain} for e in sp.endpoints],
            "cluster_endpoints": [e.text for e in cluster] if has_any else [],
            "local_endpoints": [e.text for e in local],
        })
    return out


# --------------------------------------------------------------------------------------------- writer


class _Restore:
    """The two LineBuffers per table kube-proxy fills: chain lines and rules (rules as token lists)."""

    def __init__(self) -> None:
        self.filter_chains: list[str] = []
        self.filter_rules: list[tuple[str, list[str]]] = []
        self.nat_chains: list[str] = []
        self.nat_rules: list[tuple[str, list[str]]] = []
        # Save-form lines computed directly for the bulk rules (endpoint chains and the jumps to them),
        # keyed by position in nat_rules; canonical_rule() derives the rest.
        self.nat_saved: dict[int, str] = {}
        self._nat_seen: set[str] = set()

    def nat_chain(self, name: str) -> None:
        if name not in self._nat_seen:
            self._nat_seen.add(name)
            self.nat_chains.append(name)

    def nat(self, chain: str, *args: str) -> None:
        self.nat_rules.append((chain, list(args)))

    def nat_with_save(self, chain: str, args: list[str], saved: str) -> None:
        self.nat_saved[len(self.nat_rules)] = saved
        self.nat_rules.append((chain, args))

    def filter(self, chain: str, *args: str) -> None:
        self.filter_rules.append((chain, list(args)))

    def fragment(self) -> str:
        lines = ["*filter"]
        lines += [f":{c} - [0:0]" for c in self.filter_chains]
        lines += [" ".join(["-A", c, *a]) for c, a in self.filter_rules]
        lines += ["COMMIT", "*nat"]
        lines += [f":{c} - [0:0]" for c in self.nat_chains]
        lines += [" ".join(["-A", c, *a]) for c, a in self.nat_rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


@dataclass
class _Config:
    era: str
    ipv6: bool
    pod_cidr: str | None
    masquerade_all: bool
    localhost_nodeports: bool
    nodeport_tail: list[list[str]]
    nfacct: bool
    random_fully: bool
    comments: bool
    node_ip: str | None

    def if_not_local(self) -> list[str]:
        return ["!", "-s", self.pod_cidr] if self.pod_cidr else []

    def comment(self, text: str) -> list[str]:
        """appendServiceCommentLocked: only these comments disappear in large-cluster mode."""
        return ["-m", "comment", "--comment", text] if self.comments else []


def _q(text: str) -> str:
    return f'"{text}"'


def _nodeport_tail(ipv6: bool, localhost: bool, node_ips: list[str], addresses: list[str] | None,
                   era: str) -> tuple[list[list[str]], bool]:
    """The last KUBE-SERVICES rule(s) and whether localhost NodePorts stay enabled (NodePortAddresses)."""
    loopback = "::1" if ipv6 else "127.0.0.1"
    cidrs = [_norm_cidr(c) for c in (addresses or []) if c != "primary" and _is_v6(c) == ipv6]
    zero = "::/0" if ipv6 else "0.0.0.0/0"
    match_all = not cidrs or zero in cidrs
    if not match_all and not ipv6:
        localhost = localhost and any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(c) for c in cidrs)
    if ipv6:
        localhost = False
    if match_all:
        dest = ["-m", "addrtype", "--dst-type", "LOCAL"]
        if era != "xlb":
            if ipv6:
                dest += ["!", "-d", "::1/128"]
            elif not localhost:
                dest += ["!", "-d", "127.0.0.0/8"]
        return [dest], localhost
    rules: list[list[str]] = []
    candidates = [loopback] + [_norm_ip(ip) for ip in node_ips if _is_v6(ip) == ipv6]
    for ip in dict.fromkeys(candidates):
        if not any(ipaddress.ip_address(ip) in ipaddress.ip_network(c) for c in cidrs):
            continue
        if ip == loopback and era != "xlb" and not localhost:
            continue  # kube-proxy logs an error and skips localhost when it cannot serve it
        rules.append(["-d", ip])
    return rules, localhost


def _masquerade_chains(r: _Restore, cfg: _Config) -> None:
    """The chains every era writes first: KUBE-SERVICES/NODEPORTS and the masquerade-mark pair
    (KUBE-MARK-MASQ sets the mark, KUBE-POSTROUTING clears it and masquerades)."""
    for c in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
        r.nat_chain(c)
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    r.nat("KUBE-POSTROUTING", "-m", "mark", "!", "--mark", mark, "-j", "RETURN")
    r.nat("KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", MASQ_MARK)
    masq = ["-m", "comment", "--comment", _q("kubernetes service traffic requiring SNAT"), "-j", "MASQUERADE"]
    r.nat("KUBE-POSTROUTING", *masq, *(["--random-fully"] if cfg.random_fully else []))
    r.nat("KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", MASQ_MARK)


def _sync_current(sps: list[_ServicePort], cfg: _Config) -> _Restore:
    """syncProxyRules, KUBE-EXT/KUBE-SVL layout (current and ext eras)."""
    r = _Restore()
    r.filter_chains += ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                        "KUBE-PROXY-FIREWALL"]
    _masquerade_chains(r, cfg)
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    if not cfg.ipv6 and cfg.localhost_nodeports:
        r.filter_chains.append("KUBE-FIREWALL")
        r.filter("KUBE-FIREWALL", "-m", "comment", "--comment", _q("block incoming localnet connections"),
                 "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
                 "RELATED,ESTABLISHED,DNAT", "-j", "DROP")

    for sp in sps:
        _sync_service_port(r, sp, cfg)

    for dest in cfg.nodeport_tail:
        r.nat("KUBE-SERVICES", "-m", "comment", "--comment", _NODEPORTS_LAST, *dest, "-j", "KUBE-NODEPORTS")
    invalid = ["-m", "conntrack", "--ctstate", "INVALID"]
    if cfg.nfacct:
        invalid += ["-m", "nfacct", "--nfacct-name", NFACCT_INVALID_DROPPED]
    r.filter("KUBE-FORWARD", *invalid, "-j", "DROP")
    r.filter("KUBE-FORWARD", "-m", "comment", "--comment", _q("kubernetes forwarding rules"),
             "-m", "mark", "--mark", mark, "-j", "ACCEPT")
    r.filter("KUBE-FORWARD", "-m", "comment", "--comment", _q("kubernetes forwarding conntrack rule"),
             "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    return r


def _sync_service_port(r: _Restore, sp: _ServicePort, cfg: _Config) -> None:
    proto = sp.protocol
    name = sp.name
    cluster, local, reachable, has_endpoints = categorize_endpoints(sp)
    svc_chain, svl_chain = sp.chain("KUBE-SVC-"), sp.chain("KUBE-SVL-")
    ext_chain, fw_chain = sp.chain("KUBE-EXT-"), sp.chain("KUBE-FW-")
    uses_cluster_chain = bool(cluster) and sp.uses_cluster_endpoints
    uses_local_chain = bool(local) and sp.uses_local_endpoints

    internal_chain, has_internal = svc_chain, has_endpoints
    if sp.internal_policy_local:
        internal_chain = svl_chain
        has_internal = has_internal and bool(local)
    external_policy_chain, has_external = svc_chain, has_endpoints
    if sp.external_policy_local:
        external_policy_chain = svl_chain
        has_external = has_external and bool(local)
    uses_ext_chain = has_endpoints and sp.externally_accessible
    uses_fw_chain = has_endpoints and bool(sp.lb_ips) and bool(sp.source_ranges)
    lb_chain = fw_chain if uses_fw_chain else ext_chain

    int_target = int_comment = ext_target = ext_comment = ""
    if not has_endpoints:
        int_target = ext_target = "REJECT"
        int_comment = ext_comment = _q(f"{name} has no endpoints")
    else:
        if not has_internal:
            int_target, int_comment = "DROP", _q(f"{name} has no local endpoints")
        if not has_external:
            ext_target, ext_comment = "DROP", _q(f"{name} has no local endpoints")

    port = str(sp.port)
    if has_internal:
        r.nat("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} cluster IP"), "-m", proto, "-p", proto,
              "-d", sp.cluster_ip, "--dport", port, "-j", internal_chain)
    else:
        r.filter("KUBE-SERVICES", "-m", "comment", "--comment", int_comment, "-m", proto, "-p", proto,
                 "-d", sp.cluster_ip, "--dport", port, "-j", int_target)

    for ip in sp.external_ips:
        if has_endpoints:
            r.nat("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} external IP"), "-m", proto,
                  "-p", proto, "-d", ip, "--dport", port, "-j", ext_chain)
        if not has_external:
            r.filter("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", ext_comment, "-m", proto,
                     "-p", proto, "-d", ip, "--dport", port, "-j", ext_target)

    for ip in sp.lb_ips:
        if has_endpoints:
            r.nat("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} loadbalancer IP"), "-m", proto,
                  "-p", proto, "-d", ip, "--dport", port, "-j", lb_chain)
        if uses_fw_chain:
            r.filter("KUBE-PROXY-FIREWALL", "-m", "comment", "--comment",
                     _q(f"{name} traffic not accepted by {fw_chain}"), "-m", proto, "-p", proto,
                     "-d", ip, "--dport", port, "-j", "DROP")
    if not has_external:
        for ip in sp.lb_ips:
            r.filter("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", ext_comment, "-m", proto,
                     "-p", proto, "-d", ip, "--dport", port, "-j", ext_target)

    if sp.node_port:
        node_port = str(sp.node_port)
        if has_endpoints:
            if cfg.localhost_nodeports and not cfg.ipv6 and cfg.nfacct:
                r.nat("KUBE-NODEPORTS", "-m", "comment", "--comment", name, "-m", proto, "-p", proto,
                      "-d", "127.0.0.0/8", "--dport", node_port,
                      "-m", "nfacct", "--nfacct-name", NFACCT_LOCALHOST_NODEPORTS, "-j", ext_chain)
            r.nat("KUBE-NODEPORTS", "-m", "comment", "--comment", name, "-m", proto, "-p", proto,
                  "--dport", node_port, "-j", ext_chain)
        if not has_external:
            r.filter("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", ext_comment,
                     "-m", "addrtype", "--dst-type", "LOCAL", "-m", proto, "-p", proto,
                     "--dport", node_port, "-j", ext_target)

    if sp.health_check_node_port:
        r.filter("KUBE-NODEPORTS", "-m", "comment", "--comment", _q(f"{name} health check node port"),
                 "-m", "tcp", "-p", "tcp", "--dport", str(sp.health_check_node_port), "-j", "ACCEPT")

    if has_internal:
        args = ["-m", "comment", "--comment", _q(f"{name} cluster IP"), "-m", proto, "-p", proto,
                "-d", sp.cluster_ip, "--dport", port]
        if cfg.masquerade_all:
            r.nat(internal_chain, *args, "-j", "KUBE-MARK-MASQ")
        elif cfg.pod_cidr:
            # Off-cluster traffic to a service VIP may bounce off-node, so it is masqueraded.
            r.nat(internal_chain, *args, *cfg.if_not_local(), "-j", "KUBE-MARK-MASQ")

    if uses_ext_chain:
        r.nat_chain(ext_chain)
        if not sp.external_policy_local:
            r.nat(ext_chain, "-m", "comment", "--comment", _q(f"masquerade traffic for {name} external destinations"),
                  "-j", "KUBE-MARK-MASQ")
        else:
            if cfg.pod_cidr:
                r.nat(ext_chain, "-m", "comment", "--comment", _q(f"pod traffic for {name} external destinations"),
                      "-s", cfg.pod_cidr, "-j", svc_chain)
            r.nat(ext_chain, "-m", "comment", "--comment",
                  _q(f"masquerade LOCAL traffic for {name} external destinations"),
                  "-m", "addrtype", "--src-type", "LOCAL", "-j", "KUBE-MARK-MASQ")
            r.nat(ext_chain, "-m", "comment", "--comment",
                  _q(f"route LOCAL traffic for {name} external destinations"),
                  "-m", "addrtype", "--src-type", "LOCAL", "-j", svc_chain)
        if has_external:
            r.nat(ext_chain, "-j", external_policy_chain)

    if uses_fw_chain:
        r.nat_chain(fw_chain)
        args = ["-m", "comment", "--comment", _q(f"{name} loadbalancer IP")]
        allow_from_node = False
        for cidr in sp.source_ranges:
            r.nat(fw_chain, *args, "-s", cidr, "-j", ext_chain)
            if cfg.node_ip and ipaddress.ip_address(cfg.node_ip) in ipaddress.ip_network(cidr):
                allow_from_node = True
        if allow_from_node:
            # A VIP-style LB often adds the VIP locally: node -> VIP then arrives with the VIP as source.
            for ip in sp.lb_ips:
                r.nat(fw_chain, *args, "-s", ip, "-j", ext_chain)
        r.nat(fw_chain, "-m", "comment", "--comment",
              _q(f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"))

    if uses_cluster_chain:
        r.nat_chain(svc_chain)
        _service_to_endpoint_rules(r, sp, svc_chain, cluster, cfg)
    if uses_local_chain:
        r.nat_chain(svl_chain)
        _service_to_endpoint_rules(r, sp, svl_chain, local, cfg)

    for ep in reachable:
        r.nat_chain(ep.chain)
        _endpoint_rules(r, sp, ep, cfg)


def _service_to_endpoint_rules(r: _Restore, sp: _ServicePort, chain: str, eps: list[_Endpoint],
                               cfg: _Config) -> None:
    """writeServiceToEndpointRules: affinity checks first, then the 1/(n-i) random split."""
    _jumps_to_endpoints(r, sp, chain, eps, cfg, [_q(f"{sp.name} -> {ep.text}") for ep in eps])


def _jumps_to_endpoints(r: _Restore, sp: _ServicePort, chain: str, eps: list[_Endpoint], cfg: _Config,
                        comments: list[str]) -> None:
    mask = _RECENT_MASK_V6 if cfg.ipv6 else _RECENT_MASK_V4
    if sp.affinity_seconds is not None:
        seconds = str(sp.affinity_seconds)
        for ep, comment in zip(eps, comments, strict=True):
            args = cfg.comment(comment)
            saved_comment = f" -m comment --comment {_save_comment(comment)}" if args else ""
            r.nat_with_save(chain, [*args, "-m", "recent", "--name", ep.chain, "--rcheck", "--seconds", seconds,
                                    "--reap", "-j", ep.chain],
                            f"-A {chain}{saved_comment} -m recent --rcheck --seconds {seconds} --reap "
                            f"--name {ep.chain} --mask {mask} --rsource -j {ep.chain}")
    n = len(eps)
    for i, (ep, comment) in enumerate(zip(eps, comments, strict=True)):
        args = cfg.comment(comment)
        saved = f"-A {chain} -m comment --comment {_save_comment(comment)}" if args else f"-A {chain}"
        if i < n - 1:
            p = probability(n - i)
            args = [*args, "-m", "statistic", "--mode", "random", "--probability", p]
            saved += f" -m statistic --mode random --probability {_save_probability(p)}"
        r.nat_with_save(chain, [*args, "-j", ep.chain], f"{saved} -j {ep.chain}")


def _endpoint_rules(r: _Restore, sp: _ServicePort, ep: _Endpoint, cfg: _Config) -> None:
    """The two rules of a KUBE-SEP chain: hairpin masquerade (a pod reaching itself) and the DNAT."""
    proto = sp.protocol
    args = cfg.comment(sp.name)
    saved_comment = f" -m comment --comment {_save_comment(sp.name)}" if args else ""
    r.nat_with_save(ep.chain, [*args, "-s", ep.ip, "-j", "KUBE-MARK-MASQ"],
                    f"-A {ep.chain} -s {ep.ip}/{128 if cfg.ipv6 else 32}{saved_comment} -j KUBE-MARK-MASQ")
    recent = ""
    if sp.affinity_seconds is not None:
        args = [*args, "-m", "recent", "--name", ep.chain, "--set"]
        mask = _RECENT_MASK_V6 if cfg.ipv6 else _RECENT_MASK_V4
        recent = f" -m recent --set --name {ep.chain} --mask {mask} --rsource"
    r.nat_with_save(ep.chain, [*args, "-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", ep.text],
                    f"-A {ep.chain} -p {proto}{saved_comment}{recent} -m {proto} -j DNAT "
                    f"--to-destination {ep.text}")


def _sync_xlb(sps: list[_ServicePort], cfg: _Config) -> _Restore:
    """syncProxyRules as of ~1.21: KUBE-XLB for externalTrafficPolicy=Local, masquerading decided in
    KUBE-SERVICES / KUBE-SVC / KUBE-FW, and unroutable LB traffic marked for kubelet's KUBE-FIREWALL."""
    r = _Restore()
    r.filter_chains += ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS"]
    _masquerade_chains(r, cfg)
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    loopback = "::1/128" if cfg.ipv6 else "127.0.0.0/8"

    for sp in sps:
        proto, name, port = sp.protocol, sp.name, str(sp.port)
        svc_chain, xlb_chain, fw_chain = sp.chain("KUBE-SVC-"), sp.chain("KUBE-XLB-"), sp.chain("KUBE-FW-")
        eps = [e for e in sp.endpoints if e.ready]
        local_eps = [e for e in eps if e.local]
        has_endpoints = bool(eps)
        only_local = sp.external_policy_local
        if has_endpoints:
            r.nat_chain(svc_chain)
        if only_local:
            r.nat_chain(xlb_chain)

        if has_endpoints:
            args = ["-m", "comment", "--comment", _q(f"{name} cluster IP"), "-m", proto, "-p", proto,
                    "-d", sp.cluster_ip, "--dport", port]
            if cfg.masquerade_all:
                r.nat("KUBE-SERVICES", *args, "-j", "KUBE-MARK-MASQ")
            elif cfg.pod_cidr:
                r.nat("KUBE-SERVICES", *args, *cfg.if_not_local(), "-j", "KUBE-MARK-MASQ")
            r.nat("KUBE-SERVICES", *args, "-j", svc_chain)
        else:
            r.filter("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} has no endpoints"),
                     "-m", proto, "-p", proto, "-d", sp.cluster_ip, "--dport", port, "-j", "REJECT")

        for ip in sp.external_ips:
            if has_endpoints:
                args = ["-m", "comment", "--comment", _q(f"{name} external IP"), "-m", proto, "-p", proto,
                        "-d", ip, "--dport", port]
                dest = xlb_chain
                if not only_local:
                    dest = svc_chain
                    r.nat(svc_chain, *args, *cfg.if_not_local(), "-j", "KUBE-MARK-MASQ")
                r.nat("KUBE-SERVICES", *args, "-j", dest)
            else:
                r.filter("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", _q(f"{name} has no endpoints"),
                         "-m", proto, "-p", proto, "-d", ip, "--dport", port, "-j", "REJECT")

        for ip in sp.lb_ips:
            if not has_endpoints:
                r.filter("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", _q(f"{name} has no endpoints"),
                         "-m", proto, "-p", proto, "-d", ip, "--dport", port, "-j", "REJECT")
                continue
            r.nat_chain(fw_chain)
            r.nat("KUBE-SERVICES", "-m", "comment", "--comment", _q(f"{name} loadbalancer IP"), "-m", proto,
                  "-p", proto, "-d", ip, "--dport", port, "-j", fw_chain)
            args = ["-m", "comment", "--comment", _q(f"{name} loadbalancer IP")]
            chosen = xlb_chain
            if not only_local:
                r.nat(fw_chain, *args, "-j", "KUBE-MARK-MASQ")
                chosen = svc_chain
            if not sp.source_ranges:
                r.nat(fw_chain, *args, "-j", chosen)
            else:
                allow_from_node = False
                for cidr in sp.source_ranges:
                    r.nat(fw_chain, *args, "-s", cidr, "-j", chosen)
                    if cfg.node_ip and ipaddress.ip_address(cfg.node_ip) in ipaddress.ip_network(cidr):
                        allow_from_node = True
                if allow_from_node:
                    r.nat(fw_chain, *args, "-s", ip, "-j", chosen)
            # Whatever reaches the end of the firewall chain was not DNATed: kubelet's KUBE-FIREWALL drops it.
            r.nat(fw_chain, *args, "-j", "KUBE-MARK-DROP")

        if sp.node_port:
            node_port = str(sp.node_port)
            if has_endpoints:
                args = ["-m", "comment", "--comment", name, "-m", proto, "-p", proto, "--dport", node_port]
                if not only_local:
                    r.nat(svc_chain, *args, "-j", "KUBE-MARK-MASQ")
                    r.nat("KUBE-NODEPORTS", *args, "-j", svc_chain)
                else:
                    r.nat("KUBE-NODEPORTS", *args, "-s", loopback, "-j", "KUBE-MARK-MASQ")
                    r.nat("KUBE-NODEPORTS", *args, "-j", xlb_chain)
            else:
                r.filter("KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", _q(f"{name} has no endpoints"),
                         "-m", "addrtype", "--dst-type", "LOCAL", "-m", proto, "-p", proto,
                         "--dport", node_port, "-j", "REJECT")

        if sp.health_check_node_port:
            r.filter("KUBE-NODEPORTS", "-m", "comment", "--comment", _q(f"{name} health check node port"),
                     "-m", "tcp", "-p", "tcp", "--dport", str(sp.health_check_node_port), "-j", "ACCEPT")

        if not has_endpoints:
            continue

        for ep in eps:
            r.nat_chain(ep.chain)
        # Affinity checks, the balancing rules, then the endpoint chains (as ~1.21 ordered them).
        _jumps_to_endpoints(r, sp, svc_chain, eps, cfg, [name] * len(eps))
        for ep in eps:
            _endpoint_rules(r, sp, ep, cfg)

        if not only_local:
            continue
        if cfg.pod_cidr:
            r.nat(xlb_chain, "-m", "comment", "--comment",
                  _q("Redirect pods trying to reach external loadbalancer VIP to clusterIP"),
                  "-s", cfg.pod_cidr, "-j", svc_chain)
        r.nat(xlb_chain, "-m", "comment", "--comment", _q(f"masquerade LOCAL traffic for {name} LB IP"),
              "-m", "addrtype", "--src-type", "LOCAL", "-j", "KUBE-MARK-MASQ")
        r.nat(xlb_chain, "-m", "comment", "--comment", _q(f"route LOCAL traffic for {name} LB IP to service chain"),
              "-m", "addrtype", "--src-type", "LOCAL", "-j", svc_chain)
        if not local_eps:
            r.nat(xlb_chain, "-m", "comment", "--comment", _q(f"{name} has no local endpoints"),
                  "-j", "KUBE-MARK-DROP")
            continue
        if sp.affinity_seconds is not None:
            for ep in local_eps:
                r.nat(xlb_chain, "-m", "comment", "--comment", name, "-m", "recent", "--name", ep.chain,
                      "--rcheck", "--seconds", str(sp.affinity_seconds), "--reap", "-j", ep.chain)
        n = len(local_eps)
        for i, ep in enumerate(local_eps):
            args = ["-m", "comment", "--comment", _q(f"Balancing rule {i} for {name}")]
            if i < n - 1:
                args += ["-m", "statistic", "--mode", "random", "--probability", probability(n - i)]
            r.nat(xlb_chain, *args, "-j", ep.chain)

    for dest in cfg.nodeport_tail:
        r.nat("KUBE-SERVICES", "-m", "comment", "--comment", _NODEPORTS_LAST, *dest, "-j", "KUBE-NODEPORTS")
    r.filter("KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    r.filter("KUBE-FORWARD", "-m", "comment", "--comment", _q("kubernetes forwarding rules"),
             "-m", "mark", "--mark", mark, "-j", "ACCEPT")
    if cfg.pod_cidr:
        r.filter("KUBE-FORWARD", "-s", cfg.pod_cidr, "-m", "comment", "--comment",
                 _q("kubernetes forwarding conntrack pod source rule"),
                 "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
        r.filter("KUBE-FORWARD", "-m", "comment", "--comment",
                 _q("kubernetes forwarding conntrack pod destination rule"), "-d", cfg.pod_cidr,
                 "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    return r


# --------------------------------------------------------------------------------------------- canonical form

# How many arguments each option kube-proxy (and kubelet) writes takes; the kernel's save form is rebuilt
# from this, the way libxtables parses and prints a rule.
_OPTION_ARITY = {
    "--comment": 1, "--dport": 1, "--sport": 1, "--ctstate": 1, "--dst-type": 1, "--src-type": 1,
    "--mode": 1, "--probability": 1, "--name": 1, "--rcheck": 0, "--set": 0, "--seconds": 1, "--reap": 0,
    "--mark": 1, "--nfacct-name": 1, "--or-mark": 1, "--xor-mark": 1, "--set-xmark": 1,
    "--to-destination": 1, "--random-fully": 0, "--reject-with": 1, "--physdev-is-in": 0,
}
_ADDRESS_FLAGS = {"-s": "src", "--source": "src", "--src": "src", "-d": "dst", "--destination": "dst", "--dst": "dst",
                  "-i": "in", "-o": "out", "-p": "proto", "--protocol": "proto"}


# canonical_rule compiles one plan per rule shape (the flags, modules and target of a rule, without values):
# the slow path below runs once per shape on placeholder values, and transforms it cannot apply to a
# placeholder are recorded as deferred steps (kind letter + token index) for the fast path to apply.
_VALUE = "\x00"
_DEFER = "\x01"


def _deferred(kind: str, text: str) -> str | None:
    return f"{_DEFER}{kind}{text[1:-1]}{_DEFER}" if text.startswith(_VALUE) else None


_RECENT_MASK_V4 = "255.255.255.255"
_RECENT_MASK_V6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def _save_address(text: str, ipv6: bool) -> str:
    deferred = _deferred("A", text)
    if deferred is not None:
        return deferred
    if "/" in text:
        return text
    return f"{text}/128" if ipv6 else f"{text}/32"


def _save_comment(text: str) -> str:
    deferred = _deferred("C", text)
    if deferred is not None:
        return deferred
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{text}"'


def _save_probability(text: str) -> str:
    deferred = _deferred("P", text)
    if deferred is not None:
        return deferred
    # xt_statistic stores the probability as a 31-bit fraction; iptables-save prints that back with %.11f.
    fixed = int(0x80000000 * float(text) + 0.5)
    return f"{fixed / 0x80000000:.11f}"


_Plan = list[str | tuple[str, int]]
_plans: dict[tuple[bool, tuple[str | None, ...]], _Plan] = {}
_TRANSFORMS = {"A": _save_address, "C": lambda text, ipv6: _save_comment(text),
               "P": lambda text, ipv6: _save_probability(text), "V": lambda text, ipv6: text}


def canonical_rule(chain: str, args: list[str], ipv6: bool = False) -> str:
    """The line `iptables-save` prints for `-A chain args...` as kube-proxy wrote it: -s/-d/-i/-o/-p first,
    addresses with a prefix length, every match module's options in its own print order, targets in their
    saved form (MARK as --set-xmark, REJECT with its default --reject-with)."""
    # Values become None; flags, module names and the built-in targets (whose options print differently)
    # stay. Jumps to chains are values, or every KUBE-SEP-* would be a shape of its own.
    shape = tuple(tok if tok[0] == "-" or tok == "!" or prev == "-m" or (prev == "-j" and tok.isalpha())
                  else None for prev, tok in zip(("", *args), args, strict=False))
    plan = _plans.get((ipv6, shape))
    if plan is None:
        plan = _plans[(ipv6, shape)] = _compile(shape, ipv6)
    parts = [f"-A {chain} "]
    for step in plan:
        parts.append(step if step.__class__ is str else _TRANSFORMS[step[0]](args[step[1]], ipv6))
    return "".join(parts)


def _compile(shape: tuple[str | None, ...], ipv6: bool) -> _Plan:
    placeholders = [tok if tok is not None else f"{_VALUE}{i}{_VALUE}" for i, tok in enumerate(shape)]
    text = _canonical_slow("", placeholders, ipv6)[4:]  # drop "-A " and the empty chain name's space
    plan: _Plan = []
    for j, piece in enumerate(text.split(_DEFER)):
        if j % 2:
            plan.append((piece[0], int(piece[1:])))
            continue
        for k, sub in enumerate(piece.split(_VALUE)):
            if k % 2:
                plan.append(("V", int(sub)))
            elif sub:
                plan.append(sub)
    return plan


def _canonical_slow(chain: str, args: list[str], ipv6: bool) -> str:
    head: dict[str, str] = {}
    matches: list[tuple[str, list[tuple[bool, str, list[str]]]]] = []
    target = ""
    target_opts: list[tuple[bool, str, list[str]]] = []
    negate = False
    in_target = False
    i, n = 0, len(args)
    while i < n:
        tok = args[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        key = _ADDRESS_FLAGS.get(tok)
        if key is not None:
            value = args[i + 1]
            if key in ("src", "dst"):
                value = _save_address(value, ipv6)
            head[key] = ("! " if negate else "") + f"{tok if len(tok) == 2 else '-' + key[0]} {value}"
            negate = False
            i += 2
            continue
        if tok == "-m":
            matches.append((args[i + 1], []))
            i += 2
            continue
        if tok in ("-j", "-g"):
            target = f"{tok} {args[i + 1]}"
            in_target = True
            i += 2
            continue
        arity = _OPTION_ARITY.get(tok, 1)
        opt = (negate, tok, args[i + 1:i + 1 + arity])
        negate = False
        (target_opts if in_target else matches[-1][1]).append(opt)
        i += 1 + arity

    out = [f"-A {chain}"]
    for key in ("src", "dst", "in", "out", "proto"):
        if key in head:
            out.append(head[key])
    for module, opts in matches:
        out.append(f"-m {module}")
        out.append(_save_match_options(module, opts, ipv6))
    if target:
        out.append(target)
        out.append(_save_target_options(target[3:], target_opts, ipv6))
    return " ".join(part for part in out if part)


def _fmt(opts: list[tuple[bool, str, list[str]]]) -> str:
    return " ".join(("! " if neg else "") + " ".join([name, *values]) for neg, name, values in opts)


def _save_match_options(module: str, opts: list[tuple[bool, str, list[str]]], ipv6: bool) -> str:
    by_name = {name: (neg, name, values) for neg, name, values in opts}
    if module == "comment":
        return f"--comment {_save_comment(by_name['--comment'][2][0])}"
    if module == "statistic":
        return f"--mode random --probability {_save_probability(by_name['--probability'][2][0])}"
    if module == "recent":
        mask = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if ipv6 else "255.255.255.255"
        parts = [name for name in ("--set", "--rcheck") if name in by_name]
        if "--seconds" in by_name:
            parts.append(f"--seconds {by_name['--seconds'][2][0]}")
        if "--reap" in by_name:
            parts.append("--reap")
        parts += [f"--name {by_name['--name'][2][0]}", f"--mask {mask}", "--rsource"]
        return " ".join(parts)
    if module == "addrtype":
        return _fmt([by_name[k] for k in ("--src-type", "--dst-type") if k in by_name])
    if module in ("tcp", "udp", "sctp"):
        return _fmt([by_name[k] for k in ("--sport", "--dport") if k in by_name])
    if module == "nfacct":
        return f"--nfacct-name  {by_name['--nfacct-name'][2][0]}"  # sic: libxt_nfacct prints two spaces
    return _fmt(opts)


def _save_target_options(target: str, opts: list[tuple[bool, str, list[str]]], ipv6: bool) -> str:
    if target == "MARK":
        _neg, name, values = opts[0]
        if name == "--or-mark":
            return f"--set-xmark {values[0]}/{values[0]}"
        if name == "--xor-mark":
            return f"--set-xmark {values[0]}/0x0"
    if target == "REJECT" and not opts:
        return "--reject-with icmp6-port-unreachable" if ipv6 else "--reject-with icmp-port-unreachable"
    return _fmt(opts)


# --------------------------------------------------------------------------------------------- full dumps

_BUILTINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
# iptables-nft-save walks its table array in this order, whatever order they were created in.
_NFT_TABLE_ORDER = ("mangle", "security", "raw", "filter", "nat")


class _Table:
    def __init__(self, name: str) -> None:
        self.name = name
        self.policies = {c: "ACCEPT" for c in _BUILTINS[name]}
        self.chains: dict[str, list[str]] = {c: [] for c in _BUILTINS[name]}

    def chain(self, name: str) -> list[str]:
        return self.chains.setdefault(name, [])

    def text(self, ipv6: bool) -> str:
        tool = "ip6tables-nft-save" if ipv6 else "iptables-nft-save"
        lines = [f"# Generated by {tool} {SAVE_VERSION} on {SAVE_DATE}", f"*{self.name}"]
        builtins = _BUILTINS[self.name]
        users = sorted(c for c in self.chains if c not in builtins)
        lines += [f":{c} {self.policies[c]} [0:0]" for c in builtins]
        lines += [f":{c} - [0:0]" for c in users]
        for c in (*builtins, *users):
            lines += self.chains[c]
        lines += ["COMMIT", f"# Completed on {SAVE_DATE}"]
        return "\n".join(lines)


def _jump(table: _Table, chain: str, ipv6: bool, *args: str) -> None:
    """EnsureRule(Prepend, ...): each new jump goes in front of the ones already there."""
    table.chain(chain).insert(0, canonical_rule(chain, list(args), ipv6))


def _merge_extra(tables: dict[str, _Table], extra: str) -> None:
    """Fold hand-written iptables-save text into the dump: chain lines declare chains (a built-in chain's
    policy is taken when it is not "-"), `-I CHAIN` rules go in front of a chain (in the order given),
    `-A CHAIN` rules are appended. Rule text is kept verbatim, so write it in iptables-save form."""
    table: _Table | None = None
    inserted: dict[tuple[str, str], int] = {}
    for raw in extra.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            name = line[1:]
            table = tables.setdefault(name, _Table(name))
            continue
        if table is None:
            raise ValueError(f"extra rule outside a table: {line!r}")
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            table.chain(name)
            if policy != "-":
                table.policies[name] = policy
            continue
        op, chain, *_ = line.split(maxsplit=2)
        rule = "-A " + line[3:]
        if op == "-I":
            pos = inserted.get((table.name, chain), 0)
            table.chain(chain).insert(pos, rule)
            inserted[(table.name, chain)] = pos + 1
        elif op == "-A":
            table.chain(chain).append(rule)
        else:
            raise ValueError(f"extra line is neither a chain, -A nor -I: {line!r}")


def _full_dump(r: _Restore, cfg: _Config, extra: str) -> str:
    ipv6 = cfg.ipv6
    tables = {name: _Table(name) for name in ("mangle", "raw", "filter", "nat")}
    mangle, filt, nat = tables["mangle"], tables["filter"], tables["nat"]

    # kubelet starts first: its chains and jumps exist before kube-proxy prepends its own.
    for t in (mangle, nat, filt):
        t.chain("KUBE-KUBELET-CANARY")
        t.chain("KUBE-PROXY-CANARY")
    firewall = filt.chain("KUBE-FIREWALL")
    _jump(filt, "INPUT", ipv6, "-j", "KUBE-FIREWALL")
    _jump(filt, "OUTPUT", ipv6, "-j", "KUBE-FIREWALL")
    if cfg.era == "xlb":
        nat.chain("KUBE-MARK-DROP").append(canonical_rule("KUBE-MARK-DROP", ["-j", "MARK", "--or-mark", DROP_MARK]))
        firewall.append(canonical_rule("KUBE-FIREWALL", [
            "-m", "comment", "--comment", _q("kubernetes firewall for dropping marked packets"),
            "-m", "mark", "--mark", f"{DROP_MARK}/{DROP_MARK}", "-j", "DROP"]))
    else:
        mangle.chain("KUBE-IPTABLES-HINT")
    if not ipv6:
        firewall.append(canonical_rule("KUBE-FIREWALL", [
            "-m", "comment", "--comment", _q("block incoming localnet connections"), "--dst", "127.0.0.0/8",
            "!", "--src", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
            "-j", "DROP"]))

    new = ["-m", "conntrack", "--ctstate", "NEW"]
    # iptablesJumpChains, in kube-proxy's order; each is prepended.
    jumps: list[tuple[_Table, str, str, str, list[str]]] = [
        (filt, "INPUT", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", new),
        (filt, "FORWARD", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", new),
        (filt, "INPUT", "KUBE-NODEPORTS", "kubernetes health check service ports", []),
        (filt, "FORWARD", "KUBE-SERVICES", "kubernetes service portals", new),
        (filt, "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", new),
        (filt, "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules", []),
    ]
    if cfg.era != "xlb":
        jumps += [(filt, c, "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", new)
                  for c in ("INPUT", "OUTPUT", "FORWARD")]
    jumps += [
        (nat, "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", []),
        (nat, "PREROUTING", "KUBE-SERVICES", "kubernetes service portals", []),
        (nat, "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules", []),
    ]
    for table, src, dst, comment, extra_args in jumps:
        table.chain(dst)
        _jump(table, src, ipv6, *extra_args, "-m", "comment", "--comment", _q(comment), "-j", dst)

    # The restore: a chain line flushes the chain, so kube-proxy's rules replace kubelet's identical ones.
    for table, chains, rules, saved in ((filt, r.filter_chains, r.filter_rules, {}),
                                        (nat, r.nat_chains, r.nat_rules, r.nat_saved)):
        for c in chains:
            table.chains[c] = []
        for i, (c, args) in enumerate(rules):
            line = saved.get(i)
            table.chains[c].append(line if line is not None else canonical_rule(c, args, ipv6))
    if not filt.chains["KUBE-FIREWALL"] and not ipv6:
        filt.chains["KUBE-FIREWALL"] = firewall

    if extra:
        _merge_extra(tables, extra)
    return "\n".join(tables[t].text(ipv6) for t in _NFT_TABLE_ORDER if t in tables) + "\n"


# --------------------------------------------------------------------------------------------- render


def render(services: Iterable[ServiceSpec], *, node_ips: list[str], pod_cidr: str | None, era: str = "current",
           comments: bool | None = None, localhost_nodeports: bool = True,
           nodeport_addresses: list[str] | None = None, masquerade_all: bool = False, random_fully: bool = False,
           nfacct: bool = True, full_dump: bool = True, ipv6: bool = False, extra: str = "") -> str:
    """The rules kube-proxy programs for `services` on a node with `node_ips`.

    pod_cidr: the cluster CIDR of DetectLocalByCIDR (None: no local-traffic detection). comments: None applies
    kube-proxy's rule (dropped above 1000 endpoints). nfacct only matters for "current". extra: iptables-save
    text merged into a full dump (see _merge_extra); not allowed with full_dump=False.
    """
    if era not in ERAS:
        raise ValueError(f"unknown era {era!r}; expected one of {', '.join(ERAS)}")
    if extra and not full_dump:
        raise ValueError("extra rules only go into a full dump")
    sps = _service_ports(services, ipv6)
    if comments is None:
        comments = sum(len(sp.endpoints) for sp in sps) <= LARGE_CLUSTER_ENDPOINTS
    tail, localhost = _nodeport_tail(ipv6, localhost_nodeports, node_ips, nodeport_addresses, era)
    family_ips = [_norm_ip(ip) for ip in node_ips if _is_v6(ip) == ipv6]
    cfg = _Config(era=era, ipv6=ipv6, pod_cidr=_norm_cidr(pod_cidr) if pod_cidr else None,
                  masquerade_all=masquerade_all, localhost_nodeports=localhost, nodeport_tail=tail,
                  nfacct=nfacct and era == "current", random_fully=random_fully, comments=comments,
                  node_ip=family_ips[0] if family_ips else None)
    restore = _sync_xlb(sps, cfg) if era == "xlb" else _sync_current(sps, cfg)
    if not full_dump:
        return restore.fragment()
    return _full_dump(restore, cfg, extra)


# --------------------------------------------------------------------------------------------- scale

_WORDS = ("api", "web", "db", "cache", "auth", "queue", "cron", "mail", "logs", "ui", "feed", "pay", "cart",
          "user", "search", "media", "geo", "ads", "chat", "jobs")
# LoadBalancer Services' addresses: the i-th Service's is this + i (so no two Services share one).
_FIRST_LB_IP = int(ipaddress.IPv4Address("203.0.113.0"))
_TEAMS = ("default", "web", "data", "infra", "ml", "apps", "batch", "auth", "shop", "ops")


def scale(n_services: int, endpoints_per_service: int, seed: int = 0) -> list[ServiceSpec]:
    """A deterministic, realistic cluster: mostly ClusterIP, ~20% NodePort, ~5% LoadBalancer (a third of them
    with source ranges), ~5% externalTrafficPolicy=Local, ~5% ClientIP affinity, ~1% with two ports, ~2% with
    no endpoints. Endpoints are local to this node with probability 1/20."""
    rng = random.Random(seed)
    services: list[ServiceSpec] = []
    node_ports = iter(rng.sample(range(30000, 32768), min(n_services * 2, 2768)))
    for i in range(n_services):
        ns = rng.choice(_TEAMS)
        name = f"{rng.choice(_WORDS)}-{i}"
        cluster_ip = f"10.{96 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        roll = rng.random()
        svc_type = "LoadBalancer" if roll < 0.05 else "NodePort" if roll < 0.25 else "ClusterIP"
        multi = rng.random() < 0.01
        target = rng.choice((8080, 8443, 9090, 3000, 5000))
        ports = [PortSpec("http", 80, "TCP", target_port=target)]
        if multi:
            ports.append(PortSpec("grpc", 9000, "TCP", target_port=9000))
        if svc_type != "ClusterIP":
            for p in ports:
                p.node_port = next(node_ports, None)
        svc = ServiceSpec(ns, name, cluster_ip, ports, type=svc_type)
        if svc_type != "ClusterIP" and rng.random() < 0.2:
            svc.external_traffic_policy = "Local"
            svc.health_check_node_port = next(node_ports, None) if svc_type == "LoadBalancer" else None
        if svc_type == "LoadBalancer":
            # (one address per Service, as a cloud's controller gives them: 203.0.113.0 + i)
            svc.lb_ips = [str(ipaddress.IPv4Address(_FIRST_LB_IP + i))]
            if rng.random() < 0.35:
                svc.lb_source_ranges = ["198.51.100.0/24", f"192.0.2.{(i % 16) * 16}/28"]
        if rng.random() < 0.05:
            svc.session_affinity_timeout = 10800
        if rng.random() >= 0.02:
            base = rng.randrange(0, 1 << 16)
            for j in range(endpoints_per_service):
                k = (base + j * 2654435761) & 0xFFFF
                ip = f"10.244.{k >> 8}.{k & 255}" if k & 255 else f"10.245.{k >> 8}.1"
                svc.endpoints.append(EndpointSpec(ip, target, local=rng.random() < 0.05))
        services.append(svc)
    return services
