"""The rules against the cluster, and nodes against each other: `compare_with_cluster` (one node's view
against the Services and EndpointSlices kube-proxy was told about) and `audit` (a fleet of nodes).

What a node *should* have is worked out the way kube-proxy works it out (pkg/proxy/iptables/proxier.go
syncProxyRules and pkg/proxy/topology.go CategorizeEndpoints), so that every difference is something kube-proxy
would not have written. Pure: no I/O, no printing; findings are values for `render.audit` to show.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from iptrace.iptables import era as era_mod
from iptrace.iptables.hashes import SERVICE_PORT_CHAIN_PREFIXES, service_port_chain
from iptrace.iptables.model import Ruleset
from iptrace.kube.cluster import ClusterEndpoint, ClusterService, ClusterServicePort, ClusterState
from iptrace.kube.view import (
    EXTERNAL_IP,
    HEALTH_CHECK,
    LOAD_BALANCER,
    NODE_PORT,
    KubeView,
    ServicePortView,
    build_view,
)

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}

# Finding ids (stable: scripts match on them; the README's JSON reference lists them).
STALE_ENDPOINTS = "stale-endpoints"
MISSING_SERVICE = "missing-service"
UNKNOWN_SERVICE = "unknown-service"
PORT_MISMATCH = "port-mismatch"
ADDRESS_MISMATCH = "address-mismatch"
POLICY_MISMATCH = "policy-mismatch"
SERVICE_MISSING_ON_NODE = "service-missing-on-node"
SERVICE_ONLY_ON_NODE = "service-only-on-node"
ENDPOINTS_DIFFER = "endpoints-differ"
FORWARDING_DIFFERS = "forwarding-differs"
KUBE_PROXY_STALE = "kube-proxy-stale"
NO_KUBE_PROXY_RULES = "no-kube-proxy-rules"
ERA_MISMATCH = "era-mismatch"
BACKEND_SPLIT = "iptables-backend-split"
LOAD_ERROR = "load-error"
NODE_UNKNOWN = "node-not-in-cluster"

_NOT_SYNCING = ("kube-proxy on this node has not applied the API's current state: it is not running, "
                "crash-looping, or cannot reach the API server (check its pod's logs and restarts, and its "
                "sync_proxy_rules_last_timestamp_seconds metric)")
_EVIDENCE_LIMIT = 6


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement. `service` is kube-proxy's ServicePortName (`ns/svc:port`) with the protocol when it
    is not TCP (`ns/svc:dns/udp`), or None for a finding about the whole node. `evidence` holds (dump line,
    rule as iptables-save prints it); line 0 means the evidence is not a dump line."""

    id: str
    severity: Severity
    node: str
    service: str | None
    summary: str
    detail: str
    fix: str
    evidence: tuple[tuple[int, str], ...] = ()

    @property
    def sort_key(self) -> tuple[int, str, str, str]:
        return (SEVERITY_ORDER[self.severity], self.node, self.service or "", self.id)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "node": self.node, "service": self.service,
                "summary": self.summary, "detail": self.detail, "fix": self.fix,
                "evidence": [{"line": line, "rule": rule} for line, rule in self.evidence]}


# ------------------------------------------------------------------------------------------------ helpers


def _canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _canonical_cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        return text.strip()


def _family_of(ip: str) -> str:
    return "ipv6" if ":" in ip else "ipv4"


def _address(ip: str, port: int | None) -> str:
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _service_label(ns: str, name: str, port_name: str, protocol: str) -> str:
    base = f"{ns}/{name}:{port_name}" if port_name else f"{ns}/{name}"
    return base if protocol.lower() == "tcp" else f"{base}/{protocol.lower()}"


def view_service_label(sp: ServicePortView) -> str:
    """How findings and diffs name a service port of a view (the chain name for an unnamed one)."""
    if not sp.namespace:
        return sp.name if sp.protocol == "tcp" else f"{sp.name}/{sp.protocol}"
    return _service_label(sp.namespace, sp.name, sp.port_name, sp.protocol)


def _listing(items: Iterable[str], limit: int = 6) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "") if items else "none"


class _Evidence:
    """Dump lines as iptables-save prints them, looked up once per call (a dump can hold 10^5 rules)."""

    def __init__(self, ruleset: Ruleset | None) -> None:
        self._ruleset = ruleset
        self._lines: dict[int, str] | None = None

    def __call__(self, lines: Iterable[int], limit: int = _EVIDENCE_LIMIT) -> tuple[tuple[int, str], ...]:
        wanted = sorted({x for x in lines if x})[:limit]
        if not wanted:
            return ()
        if self._lines is None:
            self._lines = {}
            if self._ruleset is not None:
                for _, _, rule in self._ruleset.rules():
                    self._lines[rule.line] = rule.to_save()
        return tuple((x, self._lines.get(x, "")) for x in wanted)


# ------------------------------------------------------------------------------------------------ expected


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
        return _service_label(*self.key)

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

    def chain(self, prefix: str) -> str:
        return service_port_chain(prefix, self.service_port_name, self.port.protocol)


def expected_ports(cluster: ClusterState, family: str) -> list[ExpectedPort]:
    """Every Service port kube-proxy's `family` proxier handles (headless and ExternalName excluded: kube-proxy
    skips them; LoadBalancer ingress IPs in ipMode Proxy excluded: the load balancer delivers to the node)."""
    out: list[ExpectedPort] = []
    for svc, port in cluster.service_ports():
        cluster_ip = next((_canonical(ip) for ip in svc.cluster_ips if _family_of(ip) == family), None)
        if cluster_ip is None:
            continue
        typed_external = svc.type in ("NodePort", "LoadBalancer")
        is_lb = svc.type == "LoadBalancer"
        lb_ips = tuple(_canonical(i.ip) for i in svc.lb_ips
                       if is_lb and i.ip and i.ip_mode != "Proxy" and _family_of(i.ip) == family)
        external_ips = tuple(_canonical(ip) for ip in svc.external_ips if _family_of(ip) == family)
        accessible = (typed_external and bool(port.node_port)) or bool(lb_ips) or bool(external_ips)
        etp_local = accessible and svc.external_traffic_policy == "Local"
        eps = tuple(e for e in cluster.endpoints_for(svc.namespace, svc.name, port.name, port.protocol)
                    if _family_of(e.ip) == family)
        out.append(ExpectedPort(
            service=svc, port=port, family=family, cluster_ip=cluster_ip,
            node_port=port.node_port if typed_external and port.node_port else None,
            external_ips=external_ips, lb_ips=lb_ips,
            lb_source_ranges=tuple(_canonical_cidr(r) for r in svc.lb_source_ranges
                                   if is_lb and _family_of(r) == family),
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


def _identify(view: KubeView, cluster: ClusterState) -> dict[int, tuple[str, str, str, str]]:
    """(ns, name, port name, protocol) for each service port of the view, by index. The view's own name
    when it has one; for a chain-named one (the view was built without cluster data) kube-proxy's chain-name
    hash, then its ClusterIP and port. build_view(cluster=…) already does this; here it only fills gaps."""
    hashes: dict[str, tuple[str, str, str, str]] = {}
    by_address: dict[tuple[str, int, str], tuple[str, str, str, str]] = {}
    by_node_port: dict[tuple[int, str], tuple[str, str, str, str]] = {}
    if any(not sp.namespace for sp in view.services):
        for svc, port in cluster.service_ports():
            key = (svc.namespace, svc.name, port.name, port.protocol.lower())
            hashes[service_port_chain("", svc.service_port_name(port), port.protocol)] = key
            for ip in svc.cluster_ips:
                by_address[(_canonical(ip), port.port, port.protocol.lower())] = key
            if port.node_port:
                by_node_port[(port.node_port, port.protocol.lower())] = key
            if svc.health_check_node_port:
                by_node_port.setdefault((svc.health_check_node_port, "tcp"), key)
    out: dict[int, tuple[str, str, str, str]] = {}
    for i, sp in enumerate(view.services):
        if sp.namespace:
            out[i] = (sp.namespace, sp.name, sp.port_name, sp.protocol)
            continue
        found = None
        for chain in sp.chains:
            for prefix in SERVICE_PORT_CHAIN_PREFIXES:
                if chain.startswith(prefix) and chain[len(prefix):] in hashes:
                    found = hashes[chain[len(prefix):]]
                    break
            if found:
                break
        if found is None and sp.cluster_ip is not None and sp.port is not None:
            found = by_address.get((_canonical(sp.cluster_ip), sp.port, sp.protocol))
        if found is None and sp.cluster_ip is None:
            # Filter-only fragments of a comment-less dump: a nodePort REJECT, a health check ACCEPT.
            for port in (sp.node_port, sp.health_check_node_port):
                if port is not None and (port, sp.protocol) in by_node_port:
                    found = by_node_port[(port, sp.protocol)]
                    break
        if found is not None:
            out[i] = found
    return out


# ------------------------------------------------------------------------------------------------ compare


class _Comparer:
    def __init__(self, view: KubeView, cluster: ClusterState, node_name: str | None, node: str,
                 ruleset: Ruleset | None) -> None:
        self.view = view
        self.cluster = cluster
        self.node_name = node_name
        self.node = node
        self.evidence = _Evidence(ruleset)
        self.findings: list[Finding] = []
        zone = None
        if node_name is not None:
            n = cluster.node(node_name)
            if n is not None:
                zone = n.label_map.get("topology.kubernetes.io/zone")
        self.zone = zone

    def add(self, id_: str, severity: Severity, service: str | None, summary: str, detail: str, fix: str,
            lines: Iterable[int] = ()) -> None:
        self.findings.append(Finding(id_, severity, self.node, service, summary, detail, fix,
                                     self.evidence(lines)))

    def run(self) -> list[Finding]:
        view, cluster = self.view, self.cluster
        if not view.era.has_iptables_rules or view.era.name == era_mod.USERSPACE:
            return []
        expected = {e.key: e for e in expected_ports(cluster, view.family)}
        names = _identify(view, cluster)
        seen: set[tuple[str, str, str, str]] = set()
        unknown: list[tuple[ServicePortView, tuple[str, str, str, str] | None]] = []
        named: dict[tuple[str, str, str, str], list[ServicePortView]] = {}
        for i, sp in enumerate(view.services):
            key = names.get(i)
            if key is None:
                unknown.append((sp, None))
            else:
                named.setdefault(key, []).append(sp)
        for key, sps in named.items():
            # Several fragments can name one service port (a comment-less dump's filter rules): the one
            # with the most chains is kube-proxy's programming of it.
            sp = max(sps, key=lambda x: (len(x.chains), len(x.entries)))
            exp = expected.get(key)
            if exp is None:
                unknown.append((sp, key))
                continue
            seen.add(key)
            self.compare_port(sp, exp)
        missing = [e for k, e in expected.items() if k not in seen]
        # A protocol change shows as one unknown and one missing port of the same Service port name.
        for sp, key in list(unknown):
            if key is None:
                continue
            twin = next((e for e in missing if e.key[:3] == key[:3]), None)
            if twin is None:
                continue
            missing.remove(twin)
            unknown.remove((sp, key))
            self.add(PORT_MISMATCH, "error", twin.label,
                     f"{twin.label}: protocol is {twin.port.protocol} in the API, {sp.protocol.upper()} in the rules",
                     f"The Service's port {twin.port.name or twin.port.port} is {twin.port.protocol}; this node "
                     f"still forwards {sp.protocol.upper()} for it, so {twin.port.protocol} connections to "
                     f"{_address(twin.cluster_ip, twin.port.port)} match no rule. kube-proxy would have "
                     f"replaced the chains ({twin.chain('KUBE-SVC-')}). {_NOT_SYNCING}.",
                     "restart kube-proxy on this node once it can sync", sp.lines)
        for sp, key in unknown:
            self.unknown_service(sp, key)
        for exp in missing:
            self.missing_service(exp)
        return self.findings

    # --- one service port both sides know ----------------------------------------------------------------

    def compare_port(self, sp: ServicePortView, exp: ExpectedPort) -> None:
        label = exp.label
        entry_lines = [x for e in sp.entries for x in e.lines]
        if sp.cluster_ip is not None and _canonical(sp.cluster_ip) != exp.cluster_ip:
            self.add(ADDRESS_MISMATCH, "error", label,
                     f"{label}: the rules capture ClusterIP {sp.cluster_ip}, the API says {exp.cluster_ip}",
                     f"Connections to {_address(exp.cluster_ip, exp.port.port)} match no rule on this node "
                     f"and hang. kube-proxy writes a KUBE-SERVICES rule for the Service's current ClusterIP. "
                     f"{_NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                     [x for e in sp.entries if e.kind == "clusterIP" for x in e.lines])
        if sp.port is not None and sp.port != exp.port.port:
            self.add(PORT_MISMATCH, "error", label,
                     f"{label}: the rules forward port {sp.port}, the API says port {exp.port.port}",
                     f"Connections to {_address(exp.cluster_ip, exp.port.port)} match no rule on this node; "
                     f"kube-proxy would have rewritten the KUBE-SERVICES rule for port {exp.port.port}. "
                     f"{_NOT_SYNCING}.", "restart kube-proxy on this node once it can sync", entry_lines)
        if sp.node_port != exp.node_port and (sp.node_port is not None or sp.endpoints or sp.no_endpoints):
            if exp.node_port is None:
                summary = f"{label}: the rules still open nodePort {sp.node_port}; the API has none"
                detail = (f"The Service has no nodePort any more (type {exp.service.type}); this node still "
                          f"forwards <node>:{sp.node_port}. {_NOT_SYNCING}.")
                severity: Severity = "warning"
            else:
                summary = (f"{label}: nodePort is {exp.node_port} in the API, "
                           f"{sp.node_port if sp.node_port is not None else 'absent'} in the rules")
                detail = (f"Connections to <node>:{exp.node_port} match no KUBE-NODEPORTS rule on this node. "
                          f"kube-proxy writes `-A KUBE-NODEPORTS -p {exp.port.protocol.lower()} --dport "
                          f"{exp.node_port} -j {exp.chain('KUBE-EXT-')}`. {_NOT_SYNCING}.")
                severity = "error"
            self.add(PORT_MISMATCH, severity, label, summary, detail,
                     "restart kube-proxy on this node once it can sync",
                     [x for e in sp.entries if e.kind == NODE_PORT for x in e.lines])
        self.compare_addresses(sp, exp)
        self.compare_endpoints(sp, exp)
        self.compare_policies(sp, exp)

    def compare_addresses(self, sp: ServicePortView, exp: ExpectedPort) -> None:
        # kube-proxy writes the same KUBE-SERVICES rule for an externalIP and a LoadBalancer IP (only the
        # comment tells them apart), so the two are compared together.
        have = {_canonical(a) for a in (*sp.external_ips, *sp.lb_ips)}
        want = set(exp.external_ips) | set(exp.lb_ips)
        if have == want:
            return
        label = exp.label
        lines = [x for e in sp.entries if e.kind in (EXTERNAL_IP, LOAD_BALANCER) for x in e.lines]
        missing, extra = sorted(want - have), sorted(have - want)
        parts = []
        if missing:
            parts.append(f"no rule for {_listing(missing)} (connections to it are not forwarded)")
        if extra:
            parts.append(f"still captures {_listing(extra)}, which the Service no longer lists")
        self.add(ADDRESS_MISMATCH, "error", label,
                 f"{label}: external/LoadBalancer IPs differ from the API: " + "; ".join(parts),
                 f"The API lists externalIPs {_listing(exp.external_ips)} and LoadBalancer IPs "
                 f"{_listing(exp.lb_ips)}; this node captures {_listing(sorted(have))}. {_NOT_SYNCING}.",
                 "restart kube-proxy on this node once it can sync", lines)

    def compare_endpoints(self, sp: ServicePortView, exp: ExpectedPort) -> None:
        choice = choose_endpoints(exp, self.node_name, self.zone)
        listed = {e.address: e for e in exp.endpoints}
        by_address = {ep.address: ep for ep in sp.endpoints}
        # Before KEP-3178 (KUBE-XLB layout) internalTrafficPolicy=Local was a feature gate that filtered
        # KUBE-SVC itself: all endpoints with the gate off, the local ones with it on.
        itp_only_xlb = (self.view.era.name == era_mod.XLB and exp.internal_policy_local
                        and not exp.external_policy_local)
        cluster_want = choice.cluster
        alternatives = choice.alternatives
        if itp_only_xlb:
            plain = choose_endpoints(replace(exp, internal_policy_local=False), self.node_name, self.zone)
            cluster_want = plain.cluster
            alternatives = (*plain.alternatives, *((choice.local,) if choice.local is not None else ()))
        if cluster_want is not None:
            have = frozenset(ep.address for ep in sp.endpoints if ep.in_cluster_chain)
            if have != cluster_want and have not in alternatives:
                self.endpoint_finding(sp, exp, have, cluster_want, listed, by_address, local=False)
        if exp.uses_local_endpoints and not itp_only_xlb:
            have_local = frozenset(ep.address for ep in sp.endpoints if ep.local)
            if choice.local is not None:
                if have_local != choice.local:
                    self.endpoint_finding(sp, exp, have_local, choice.local, listed, by_address, local=True)
            else:
                usable = {e.address for e in exp.endpoints if e.ready or (e.serving and e.terminating)}
                if not have_local <= usable:
                    self.endpoint_finding(sp, exp, have_local, frozenset(have_local & usable), listed,
                                          by_address, local=True)

    def endpoint_finding(self, sp: ServicePortView, exp: ExpectedPort, have: frozenset[str], want: frozenset[str],
                         listed: Mapping[str, ClusterEndpoint], by_address: Mapping[str, Any],
                         *, local: bool) -> None:
        label = exp.label
        extra, missing = sorted(have - want), sorted(want - have)
        lines = [by_address[a].line for a in extra if a in by_address]
        # Same pods, other ports: the Service's targetPort changed and the rules still use the old one.
        extra_ips = {a.rsplit(":", 1)[0] for a in extra}
        missing_ips = {a.rsplit(":", 1)[0] for a in missing}
        if extra and missing and extra_ips == missing_ips and not local:
            old_ports = sorted({a.rsplit(":", 1)[1] for a in extra})
            new_ports = sorted({a.rsplit(":", 1)[1] for a in missing})
            self.add(PORT_MISMATCH, "error", label,
                     f"{label}: the rules DNAT to port {', '.join(old_ports)}, the EndpointSlices say "
                     f"{', '.join(new_ports)} (targetPort {exp.port.target_port})",
                     f"The endpoints are the same pods, but their target port changed; this node still sends "
                     f"connections to the old port, where nothing listens. {_NOT_SYNCING}.",
                     "restart kube-proxy on this node once it can sync", lines)
            return
        which = "local endpoints (KUBE-SVL/KUBE-XLB)" if local else "endpoints"
        reasons = []
        for a in extra:
            e = listed.get(a)
            if e is None:
                reasons.append(f"{a} (no longer in any EndpointSlice)")
            elif local and e.node_name != self.node_name:
                reasons.append(f"{a} (on node {e.node_name or 'unknown'}, not {self.node_name})")
            elif not e.ready:
                reasons.append(f"{a} (listed but not ready{', terminating' if e.terminating else ''})")
            else:
                reasons.append(a)
        parts = []
        if extra:
            parts.append(f"DNATs to {_listing(reasons, 4)}")
        if missing:
            parts.append(f"misses {_listing(missing, 4)}")
        if not have:
            parts.append("has no endpoints (" + ("DROPs: no local endpoints" if local else "REJECTs") + ")")
        # Wrong on this node: it sends traffic where kube-proxy would not, or refuses/drops what it would send.
        severity: Severity = "error" if extra or (want and not have) else "warning"
        cause = _NOT_SYNCING
        fix = "restart kube-proxy on this node once it can sync"
        if local and self.node_name is not None:
            other = self._node_whose_local_set_is(exp, have)
            if other is not None:
                cause = (f"kube-proxy treats the endpoints of node {other} as local: its node name "
                         f"(--hostname-override, or the host's name) is {other!r}, not {self.node_name!r}")
                fix = (f"set kube-proxy's --hostname-override (or its config's hostnameOverride) to the Node "
                       f"object's name {self.node_name!r}")
            elif want and not have:
                cause = (f"kube-proxy does not see the endpoints on {self.node_name!r} as local: either its node "
                         f"name (--hostname-override) differs from the Node object's name, or it is not syncing")
                fix = (f"check that kube-proxy's node name is {self.node_name!r} (--hostname-override), then "
                       f"restart it")
        if local:
            should = (f"kube-proxy balances externalTrafficPolicy/internalTrafficPolicy Local traffic over the "
                      f"ready endpoints whose nodeName is {self.node_name!r}: {_listing(sorted(want))}")
        else:
            should = (f"kube-proxy balances over the ready endpoints (serving+terminating ones when none is "
                      f"ready): {_listing(sorted(want))}")
        self.add(STALE_ENDPOINTS, severity, label,
                 f"{label}: this node's {which} disagree with the EndpointSlices: " + "; ".join(parts),
                 f"{should}. Likely cause: {cause}.", fix, lines or sp.lines[:4])

    def _node_whose_local_set_is(self, exp: ExpectedPort, have: frozenset[str]) -> str | None:
        if not have:
            return None
        nodes = {e.node_name for e in exp.endpoints if e.node_name and e.node_name != self.node_name}
        for name in sorted(nodes):
            local = choose_endpoints(exp, name).local
            if local == have:
                return name
        return None

    def compare_policies(self, sp: ServicePortView, exp: ExpectedPort) -> None:
        label = exp.label
        if exp.externally_accessible and sp.external_traffic_policy is not None:
            want = "Local" if exp.external_policy_local else "Cluster"
            if sp.external_traffic_policy != want:
                dropping = sp.no_local_endpoints and want == "Cluster"
                self.add(POLICY_MISMATCH, "error" if dropping else "warning", label,
                         f"{label}: externalTrafficPolicy is {want} in the API, {sp.external_traffic_policy} "
                         "in the rules",
                         ("External connections are dropped on this node for want of a local endpoint, though "
                          "the Service allows any endpoint. " if dropping else
                          "External connections are balanced as the old policy says (client source IP "
                          "preservation and the node's share of traffic differ from what the Service asks). ")
                         + f"{_NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                         [x for e in sp.entries if e.kind != "clusterIP" for x in e.lines])
        if sp.internal_traffic_policy is not None and self.view.era.name != era_mod.XLB:
            want = "Local" if exp.internal_policy_local else "Cluster"
            if sp.internal_traffic_policy != want:
                dropping = sp.no_local_endpoints and want == "Cluster"
                self.add(POLICY_MISMATCH, "error" if dropping else "warning", label,
                         f"{label}: internalTrafficPolicy is {want} in the API, {sp.internal_traffic_policy} "
                         "in the rules",
                         ("In-cluster connections are dropped on this node for want of a local endpoint. "
                          if dropping else "In-cluster connections use the old policy's endpoints. ")
                         + f"{_NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                         [x for e in sp.entries if e.kind == "clusterIP" for x in e.lines])
        if sp.endpoints and sp.session_affinity_timeout != exp.affinity_timeout:
            def say(t: int | None) -> str:
                return "None" if t is None else f"ClientIP ({t}s)"
            self.add(POLICY_MISMATCH, "warning", label,
                     f"{label}: session affinity is {say(exp.affinity_timeout)} in the API, "
                     f"{say(sp.session_affinity_timeout)} in the rules",
                     f"kube-proxy writes `-m recent` affinity rules exactly when sessionAffinity is ClientIP. "
                     f"{_NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                     [ep.line for ep in sp.endpoints])
        has_fw = any(c.startswith("KUBE-FW-") for c in sp.chains)
        if exp.lb_ips and (has_fw or exp.lb_source_ranges) and sp.endpoints:
            have = {_canonical_cidr(r) for r in sp.lb_source_ranges}
            want_r = set(exp.lb_source_ranges)
            if have != want_r:
                self.add(POLICY_MISMATCH, "error", label,
                         f"{label}: loadBalancerSourceRanges are {_listing(sorted(want_r))} in the API, "
                         f"{_listing(sorted(have))} in the rules",
                         "Clients the Service admits are dropped on this node, or clients it excludes get "
                         f"through (KUBE-FW-/KUBE-PROXY-FIREWALL). {_NOT_SYNCING}.",
                         "restart kube-proxy on this node once it can sync",
                         [x for e in sp.entries if e.kind == LOAD_BALANCER for x in e.lines])
        hc_known = any(e.kind == HEALTH_CHECK for e in sp.entries) or sp.health_check_node_port is not None
        if hc_known and sp.health_check_node_port != exp.health_check_node_port:
            self.add(POLICY_MISMATCH, "warning", label,
                     f"{label}: healthCheckNodePort is {exp.health_check_node_port} in the API, "
                     f"{sp.health_check_node_port} in the rules",
                     "The cloud load balancer's health checks may reach a port this node does not accept, and "
                     f"mark it unhealthy. {_NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                     [x for e in sp.entries if e.kind == HEALTH_CHECK for x in e.lines])

    # --- one side only -------------------------------------------------------------------------------------

    def missing_service(self, exp: ExpectedPort) -> None:
        choice = choose_endpoints(exp, self.node_name, self.zone)
        proto = exp.port.protocol.lower()
        if choice.has_any:
            should = (f"`-A KUBE-SERVICES -d {exp.cluster_ip} -p {proto} --dport {exp.port.port} "
                      f"-j {exp.chain('KUBE-SVL-' if not exp.uses_cluster_endpoints else 'KUBE-SVC-')}`")
        else:
            should = (f"a filter `KUBE-SERVICES ... -d {exp.cluster_ip} --dport {exp.port.port} -j REJECT` "
                      "(\"has no endpoints\")")
        ways = [_address(exp.cluster_ip, exp.port.port)]
        if exp.node_port is not None:
            ways.append(f"<node>:{exp.node_port}")
        ways += [_address(ip, exp.port.port) for ip in (*exp.external_ips, *exp.lb_ips)]
        self.add(MISSING_SERVICE, "error" if choice.has_any else "warning", exp.label,
                 f"{exp.label}: the API has this Service port ({exp.service.type}, "
                 f"{_address(exp.cluster_ip, exp.port.port)}/{exp.port.protocol}) but this node has no rules "
                 "for it",
                 f"Connections to {_listing(ways)} are not forwarded on this node (they hang). kube-proxy "
                 f"would have written {should}. {_NOT_SYNCING}.",
                 "restart kube-proxy on this node once it can sync; check its logs for sync errors")

    def unknown_service(self, sp: ServicePortView, key: tuple[str, str, str, str] | None) -> None:
        label = view_service_label(sp)
        if key is None:
            what = (f"no Service in the cluster data hashes to {sp.name} and none has ClusterIP "
                    f"{_address(sp.cluster_ip, sp.port) if sp.cluster_ip else 'of it'}")
        elif self.cluster.service(key[0], key[1]) is None:
            what = f"the Service {key[0]}/{key[1]} does not exist in the API"
        else:
            what = f"the Service {key[0]}/{key[1]} exists but has no {key[3].upper()} port named {key[2]!r}"
        reused = ()
        if sp.cluster_ip is not None:
            reused = tuple(s.key for s in self.cluster.services_by_ip(sp.cluster_ip)
                           if key is None or s.key != f"{key[0]}/{key[1]}")
        severity: Severity = "error" if reused else "warning"
        where = _address(sp.cluster_ip, sp.port) if sp.cluster_ip else "no ClusterIP"
        detail = (f"This node still forwards {label} ({where}) "
                  f"but {what}; kube-proxy deletes the chains of a removed Service port on its next sync. ")
        if reused:
            detail += (f"The address now belongs to {', '.join(reused)}, whose connections these stale rules may "
                       "send to the old endpoints. ")
        self.add(UNKNOWN_SERVICE, severity, label,
                 f"{label}: rules for a Service port the API does not have",
                 detail + f"Likely cause: {_NOT_SYNCING} (or the cluster data is from another cluster).",
                 "restart kube-proxy on this node once it can sync; compare with fresh cluster data",
                 sp.lines[:4])


def compare_with_cluster(view: KubeView, cluster: ClusterState, *, node_name: str | None,
                         ruleset: Ruleset | None = None, node: str | None = None) -> list[Finding]:
    """Findings where one node's rules disagree with the API (stale-endpoints, missing-service,
    unknown-service, port-mismatch, address-mismatch, policy-mismatch), ordered by severity.

    `node_name` is the Node object's name (needed to judge Local traffic policies; None skips that check).
    `ruleset` is the dump the view was built from, for the text of evidence lines. `node` labels the
    findings (default: node_name). Build the view with `build_view(ruleset, cluster=cluster)` so that
    comment-less chains are named; chain-named ports of a view built without it are named here by hash."""
    findings = _Comparer(view, cluster, node_name, node if node is not None else (node_name or ""),
                         ruleset).run()
    return sorted(findings, key=lambda f: f.sort_key)


# ------------------------------------------------------------------------------------------------ audit


@dataclass(frozen=True, slots=True)
class NodeInput:
    """One node of an audit: its dump as parsed, or the error that stopped it from loading. `ip6_ruleset`
    and `legacy_ruleset` are the ip6tables-save and iptables-legacy-save dumps when they were collected."""

    name: str
    ruleset: Ruleset | None
    error: str | None = None
    addresses: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    ip6_ruleset: Ruleset | None = None
    legacy_ruleset: Ruleset | None = None


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """One row of the audit's node table."""

    name: str
    status: str  # "ok" | "load-error" | "no-kube-proxy"
    kube_node: str | None  # the Node object it was matched with (by address or name), with cluster data
    era: str
    version_hint: str
    services: int
    errors: int
    warnings: int
    infos: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AuditReport:
    """`port_views`: the Service ports the findings name, as each node programmed them (for reports that draw
    them, render.html); not part of the comparison, not in the JSON."""

    nodes: tuple[NodeSummary, ...]
    findings: tuple[Finding, ...]
    cluster_source: str | None = None
    port_views: tuple[PortViews, ...] = field(default=(), compare=False)

    @property
    def has_error(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


def node_input_from_snapshot(snapshot: Any, *, lenient: bool = False) -> NodeInput:
    """A NodeInput from a `collect.store.NodeSnapshot` (or any object with its fields): the dumps are parsed
    here, and a dump that does not parse becomes the node's `error` instead of stopping the audit."""
    from iptrace.errors import IptraceError
    from iptrace.iptables import load

    def parse(text: str | None, name: str) -> Ruleset | None:
        if text is None:
            return None
        return load(text, source=f"{snapshot.node}/{name}", lenient=lenient)

    try:
        ruleset = load(snapshot.dump_text, source=str(snapshot.dump_path), lenient=lenient)
    except IptraceError as exc:
        return NodeInput(snapshot.node, None, str(exc), tuple(snapshot.addresses), snapshot.meta)
    extra: dict[str, Ruleset | None] = {}
    problems: list[str] = []
    for attr, text, name in (("ip6_ruleset", snapshot.ip6_dump_text, "ip6tables-save.txt"),
                             ("legacy_ruleset", snapshot.legacy_dump_text, "iptables-legacy-save.txt")):
        try:
            extra[attr] = parse(text, name)
        except IptraceError as exc:
            extra[attr] = None
            problems.append(str(exc))
    meta = dict(snapshot.meta)
    if problems:
        meta["load_warnings"] = problems
    return NodeInput(snapshot.node, ruleset, None, tuple(snapshot.addresses), meta,
                     extra["ip6_ruleset"], extra["legacy_ruleset"])


@dataclass
class _NodeState:
    input: NodeInput
    views: dict[str, KubeView]
    kube_node: str | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.input.name

    @property
    def primary(self) -> KubeView | None:
        return self.views.get("ipv4") or self.views.get("ipv6")

    @property
    def has_rules(self) -> bool:
        return any(v.era.has_iptables_rules and v.era.name != era_mod.USERSPACE for v in self.views.values())


def inputs_from_directory(directory: Any, *, lenient: bool = False) -> list[NodeInput]:
    """Every node of a collection directory (`iptrace collect --out DIR`), or the one node when `directory`
    is itself a node directory, sorted by name. A node whose files cannot be read or parsed becomes a
    NodeInput with its `error`, so one bad node never stops the audit. Raises InputError when `directory`
    holds no node at all. Reads through `collect.store`."""
    from pathlib import Path

    from iptrace.collect import store
    from iptrace.errors import InputError

    root = Path(directory)
    if store.is_node_dir(root):
        candidates = [root]
    elif root.is_dir():
        candidates = sorted((c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")
                             and ((c / store.DUMP_FILE).exists() or (c / store.META_FILE).exists())),
                            key=lambda c: c.name)
    else:
        raise InputError(f"{root}: not a directory; expected the --out directory of `iptrace collect`")
    if not candidates:
        raise InputError(f"{root}: no node directories (NODE/iptables-save.txt + NODE/meta.json) found; "
                         "run `iptrace collect NODE... --out DIR` first")
    out: list[NodeInput] = []
    for path in candidates:
        try:
            snapshot = store.read_node_dir(path)
        except InputError as exc:
            out.append(NodeInput(path.name, None, str(exc)))
            continue
        out.append(node_input_from_snapshot(snapshot, lenient=lenient))
    return out


def kube_node_for(name: str, addresses: Sequence[str], cluster: ClusterState | None,
                  meta: Mapping[str, Any] | None = None) -> str | None:
    """The Node object a collected node (or a dump given with --node-ip) is: by any of its addresses, else by
    its name or SSH host (often the node's name or InternalIP). None without cluster data or a match."""
    return _kube_node_name(NodeInput(name, None, addresses=tuple(addresses), meta=dict(meta or {})), cluster)


def _kube_node_name(node: NodeInput, cluster: ClusterState | None) -> str | None:
    if cluster is None:
        return None
    for ip in node.addresses:
        n = cluster.node_by_ip(ip.split("/", 1)[0])
        if n is not None:
            return n.name
    host = str(node.meta.get("host", "")) if node.meta else ""
    for candidate in (node.name, host, node.name.rsplit("@", 1)[-1].split(":", 1)[0]):
        if not candidate:
            continue
        if cluster.node(candidate) is not None:
            return candidate
        n = cluster.node_by_ip(candidate)
        if n is not None:
            return n.name
    return None


_STALE_IDS = {STALE_ENDPOINTS, MISSING_SERVICE, UNKNOWN_SERVICE, PORT_MISMATCH, ADDRESS_MISMATCH,
              SERVICE_MISSING_ON_NODE, SERVICE_ONLY_ON_NODE, ENDPOINTS_DIFFER, FORWARDING_DIFFERS}


def audit(nodes: Sequence[NodeInput], cluster: ClusterState | None = None) -> AuditReport:
    """Analyze every node and compare them with each other (and with the API when `cluster` is given).

    Differences that a Local traffic policy explains (which endpoints are local, "has no local endpoints"
    DROPs) are not findings. With cluster data the API is the reference for every Service port; without it,
    the majority of the nodes is."""
    states: list[_NodeState] = []
    findings: list[Finding] = []
    for node in nodes:
        if node.ruleset is None:
            findings.append(Finding(
                LOAD_ERROR, "error", node.name, None, f"{node.name}: its rules could not be read",
                node.error or "no dump", "fix or re-collect this node's dump (`iptrace collect`), then audit again"))
            states.append(_NodeState(node, {}, _kube_node_name(node, cluster)))
            continue
        views = {node.ruleset.family: build_view(node.ruleset, cluster=cluster)}
        if node.ip6_ruleset is not None and node.ip6_ruleset.family not in views:
            views[node.ip6_ruleset.family] = build_view(node.ip6_ruleset, cluster=cluster)
        states.append(_NodeState(node, views, _kube_node_name(node, cluster)))
    loaded = [s for s in states if s.views]
    proxied = [s for s in loaded if s.has_rules]

    for s in loaded:
        findings.extend(_node_checks(s, proxied, cluster))
    if cluster is not None:
        for s in proxied:
            if s.kube_node is None and cluster.nodes:
                findings.append(Finding(
                    NODE_UNKNOWN, "warning", s.name, None,
                    f"{s.name}: no Node in the cluster data has its addresses or name",
                    f"Addresses collected: {_listing(s.input.addresses)}. Without the Node's name, endpoints "
                    "local to this node (traffic policy Local) cannot be checked.",
                    "collect the node's addresses, or pass cluster data that includes this Node"))
            for family, view in s.views.items():
                if not (view.era.has_iptables_rules and view.era.name != era_mod.USERSPACE):
                    continue
                ruleset = s.input.ruleset if s.input.ruleset is not None and \
                    s.input.ruleset.family == family else s.input.ip6_ruleset
                s.findings.extend(compare_with_cluster(view, cluster, node_name=s.kube_node, ruleset=ruleset,
                                                       node=s.name))
    else:
        for family in ("ipv4", "ipv6"):
            members = [s for s in proxied if family in s.views and s.views[family].era.has_iptables_rules]
            if len(members) >= 2:
                _peer_compare(members, family)
    for s in proxied:
        findings.extend(s.findings)
    skewed = {f.node for f in findings if f.id == ERA_MISMATCH}
    findings.extend(_stale_summaries(proxied, skewed))
    findings.sort(key=lambda f: f.sort_key)
    summaries = []
    for s in states:
        mine = [f for f in findings if f.node == s.name]
        view = s.primary
        status = "load-error" if not s.views else ("ok" if s.has_rules else "no-kube-proxy")
        summaries.append(NodeSummary(
            name=s.name, status=status, kube_node=s.kube_node,
            era=view.era.name if view is not None else "-",
            version_hint=view.era.version_hint if view is not None else "",
            services=sum(len(v.services) for v in s.views.values()),
            errors=sum(f.severity == "error" for f in mine), warnings=sum(f.severity == "warning" for f in mine),
            infos=sum(f.severity == "info" for f in mine), error=s.input.error))
    return AuditReport(tuple(summaries), tuple(findings), cluster.source if cluster is not None else None,
                       _port_views(proxied, findings))


def _node_checks(s: _NodeState, proxied: Sequence[_NodeState], cluster: ClusterState | None) -> list[Finding]:
    out: list[Finding] = []
    view = s.primary
    assert view is not None
    ruleset = s.input.ruleset
    evidence = _Evidence(ruleset)
    if not s.has_rules:
        others = len(proxied)
        detail = "; ".join(view.warnings) or "no KUBE-SERVICES chain"
        if others:
            detail += f". {others} other node(s) have kube-proxy rules, so Services do not work the same here"
        out.append(Finding(
            NO_KUBE_PROXY_RULES, "error", s.name, None,
            f"{s.name}: no kube-proxy iptables rules ({view.era.name})", detail,
            "check that kube-proxy runs on this node in iptables mode (kubectl -n kube-system get pods -o wide "
            "| grep kube-proxy), or that the Service proxy replacing it is healthy"))
    elif proxied:
        eras = Counter(p.primary.era.name for p in proxied if p.primary is not None)
        common, count = eras.most_common(1)[0]
        if view.era.name != common and count > eras[view.era.name]:
            others = next(p.primary.era for p in proxied if p.primary is not None and p.primary.era.name == common)
            out.append(Finding(
                ERA_MISMATCH, "warning", s.name, None,
                f"{s.name}: kube-proxy writes the {view.era.name} layout ({view.era.version_hint}); "
                f"{count} other node(s) write the {common} layout ({others.version_hint})",
                "Different kube-proxy versions handle traffic policies, terminating endpoints and source ranges "
                "differently; " + "; ".join(view.era.evidence),
                "run the same kube-proxy version on every node (check the DaemonSet's image and any node "
                "running a static pod)"))
    if view.era.legacy_tables_present:
        legacy = s.input.legacy_ruleset
        detail = ("iptables-nft-save warned that iptables-legacy tables are present: some component writes to "
                  "the legacy backend, and the kernel runs both, so the rules that decide may not be these. ")
        severity: Severity = "warning"
        if legacy is not None:
            legacy_kube = [c.name for t in legacy.tables for c in t.chains
                           if c.name.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-SERVICES"))]
            if legacy_kube:
                detail += (f"The legacy dump holds {len(legacy_kube)} kube-proxy chain(s) (e.g. "
                           f"{legacy_kube[0]}): kube-proxy (or an old copy of it) writes there too.")
            else:
                detail += "The collected legacy dump holds no kube-proxy Service chains."
        else:
            detail += "Collect iptables-legacy-save too (iptrace collect does when it sees the warning)."
        out.append(Finding(
            BACKEND_SPLIT, severity, s.name, None, f"{s.name}: rules in both iptables backends (nft and legacy)",
            detail, "make every component on the node use one backend (the nft one on current distributions); "
            "remove the legacy rules with iptables-legacy -F/-X once nothing writes them",
            evidence([])))
    problems = s.input.meta.get("load_warnings") if s.input.meta else None
    if isinstance(problems, list):
        for p in problems:
            out.append(Finding(LOAD_ERROR, "warning", s.name, None, f"{s.name}: an extra dump could not be read",
                               str(p), "re-collect this node"))
    return out


def _view_key(sp: ServicePortView) -> str:
    return view_service_label(sp)


def _majority(values: Mapping[str, Any]) -> tuple[Any, bool]:
    """The value most nodes have, and whether it is a strict majority of the distinct groups."""
    counts = Counter(values.values())
    ranked = counts.most_common()
    if not ranked:
        return None, False
    top, n = ranked[0]
    return top, len(ranked) == 1 or n > ranked[1][1]


def _peer_compare(members: Sequence[_NodeState], family: str) -> None:
    """Nodes against each other, service port by service port (no cluster data: the majority is the
    reference; with a tie, every node in the disagreement is told)."""
    by_node: dict[str, dict[str, ServicePortView]] = {}
    for s in members:
        by_node[s.name] = {_view_key(sp): sp for sp in s.views[family].services}
    states = {s.name: s for s in members}
    evidence = {s.name: _Evidence(s.input.ruleset if s.input.ruleset is not None and
                                  s.input.ruleset.family == family else s.input.ip6_ruleset) for s in members}
    all_keys = sorted({k for ports in by_node.values() for k in ports})
    total = len(members)

    def add(node: str, id_: str, severity: Severity, service: str, summary: str, detail: str, fix: str,
            lines: Iterable[int] = ()) -> None:
        states[node].findings.append(Finding(id_, severity, node, service, summary, detail, fix,
                                             evidence[node](lines)))

    for key in all_keys:
        having = [n for n in by_node if key in by_node[n]]
        lacking = [n for n in by_node if key not in by_node[n]]
        if lacking:
            if len(having) * 2 > total:
                for n in lacking:
                    add(n, SERVICE_MISSING_ON_NODE, "error", key,
                        f"{key}: {len(having)} of {total} nodes forward it; this node has no rules for it",
                        f"Connections to it from or through this node hang. Nodes that forward it: "
                        f"{_listing(having)}. {_NOT_SYNCING}.",
                        "restart kube-proxy on this node once it can sync; audit with --cluster/--kubeconfig to "
                        "compare with the API")
            else:
                for n in having:
                    add(n, SERVICE_ONLY_ON_NODE, "warning", key,
                        f"{key}: only {len(having)} of {total} nodes have rules for it, this one included",
                        f"Nodes without it: {_listing(lacking)}. Either this node keeps rules for a deleted "
                        "Service (kube-proxy here is not syncing) or the others have not picked up a new one.",
                        "audit with --cluster/--kubeconfig to see which side the API agrees with",
                        by_node[n][key].lines[:4])
        if len(having) >= 2:
            _peer_compare_port(key, {n: by_node[n][key] for n in having}, add)


def _endpoint_signature(sp: ServicePortView) -> tuple[tuple[str, float], ...]:
    # KUBE-SVC's endpoints only: KUBE-SVL/KUBE-XLB hold this node's local endpoints, which differ by design.
    return tuple(sorted((ep.address, round(ep.probability, 6)) for ep in sp.endpoints if ep.in_cluster_chain))


def _peer_compare_port(key: str, ports: Mapping[str, ServicePortView], add: Any) -> None:
    fields: list[tuple[str, str, Severity, Any]] = [
        ("ClusterIP", "cluster_ip", "error", lambda sp: sp.cluster_ip),
        ("port", "port", "error", lambda sp: sp.port),
        ("nodePort", "node_port", "error", lambda sp: sp.node_port),
        ("external/LoadBalancer IPs", "ips", "error",
         lambda sp: tuple(sorted({*sp.external_ips, *sp.lb_ips}))),
        ("externalTrafficPolicy", "etp", "warning", lambda sp: sp.external_traffic_policy),
        ("internalTrafficPolicy", "itp", "warning", lambda sp: sp.internal_traffic_policy),
        ("session affinity timeout", "affinity", "warning",
         lambda sp: sp.session_affinity_timeout if sp.endpoints else None),
        ("loadBalancerSourceRanges", "ranges", "error",
         lambda sp: tuple(sorted(sp.lb_source_ranges)) if sp.endpoints and sp.lb_ips else None),
        ("healthCheckNodePort", "hc", "warning", lambda sp: sp.health_check_node_port),
    ]
    for title, _name, severity, get in fields:
        values = {n: get(sp) for n, sp in ports.items()}
        # Unknown on a node (no endpoint chains to read it from) is no disagreement.
        values = {n: v for n, v in values.items() if v is not None}
        if len(set(values.values())) <= 1:
            continue
        ref, strict = _majority(values)
        for n, v in values.items():
            if strict and v == ref:
                continue
            others = sorted({f"{o}={values[o]}" for o in values if values[o] != v})
            add(n, FORWARDING_DIFFERS, severity, key,
                f"{key}: {title} is {v} on this node, {ref if strict else 'different'} on other nodes",
                f"Other nodes: {_listing(others)}. One kube-proxy has not applied the Service's current spec. "
                f"{_NOT_SYNCING}.",
                "audit with --cluster/--kubeconfig to see which nodes agree with the API; restart the stale "
                "kube-proxy", ports[n].lines[:4])
    sigs = {n: _endpoint_signature(sp) for n, sp in ports.items()}
    if len(set(sigs.values())) <= 1:
        return
    addresses = {n: {a for a, _ in sig} for n, sig in sigs.items()}
    ref, strict = _majority(sigs)
    ref_addresses = {a for a, _ in ref} if strict else set()
    for n, sig in sigs.items():
        if strict and sig == ref:
            continue
        mine = addresses[n]
        if strict:
            extra = sorted(mine - ref_addresses)
            missing = sorted(ref_addresses - mine)
        else:
            union_others = set().union(*(addresses[o] for o in addresses if o != n))
            extra = sorted(a for a in mine if all(a not in addresses[o] for o in addresses if o != n))
            missing = sorted(a for a in union_others if a not in mine)
        sp = ports[n]
        lines = [ep.line for ep in sp.endpoints if ep.address in extra]
        if not extra and not missing:
            add(n, FORWARDING_DIFFERS, "warning", key,
                f"{key}: same endpoints as the other nodes but different probabilities",
                "kube-proxy always splits evenly (1/n, 1/(n-1), …); different probabilities mean the rules were "
                "edited by hand or by another tool.", "let kube-proxy rewrite the rules (restart it)",
                [ep.line for ep in sp.endpoints])
            continue
        parts = []
        if extra:
            parts.append(f"DNATs to {_listing(extra, 4)}, which " +
                         ("the other nodes do not have" if strict else "no other node has"))
        if missing:
            parts.append(f"misses {_listing(missing, 4)}")
        if not mine:
            parts.append("REJECTs (no endpoints)" if sp.no_endpoints else "has no endpoints")
        severity: Severity = "error" if extra or not mine else "warning"
        add(n, ENDPOINTS_DIFFER, severity, key, f"{key}: this node " + "; ".join(parts),
            "Every node's KUBE-SVC chain for a Service port lists the same endpoints (only the local ones of a "
            "Local traffic policy differ). This node's list is " +
            ("older than the others'" if strict and extra else "different from the others'") +
            f". {_NOT_SYNCING}.",
            "restart kube-proxy on this node once it can sync; audit with --cluster/--kubeconfig to confirm "
            "against the EndpointSlices", lines or sp.lines[:4])


def _stale_summaries(proxied: Sequence[_NodeState], skewed: set[str]) -> list[Finding]:
    """A node-level finding for each node whose kube-proxy looks behind: it has per-service disagreements
    and some other node has none. On a node running another kube-proxy version (`skewed`) the differences
    may be the version's, so it is not called stale."""
    counts = {s.name: [f for f in s.findings if f.id in _STALE_IDS] for s in proxied}
    clean = [n for n, fs in counts.items() if not fs]
    out: list[Finding] = []
    if not clean:
        return out
    for n, fs in counts.items():
        if not fs:
            continue
        services = sorted({f.service for f in fs if f.service})
        errors = sum(f.severity == "error" for f in fs)
        matching = f"{_listing(clean, 3)} match{'es' if len(clean) == 1 else ''}"
        if n in skewed:
            out.append(Finding(
                KUBE_PROXY_STALE, "error" if errors else "warning", n, None,
                f"{n}: {len(services)} Service port(s) forwarded differently ({errors} serious); "
                f"{matching}; this node runs another kube-proxy version (see era-mismatch)",
                f"Service ports that differ: {_listing(services, 8)}. The differences may come from the version "
                f"skew, or from a kube-proxy that stopped syncing.",
                f"run the fleet's kube-proxy version on {n}, then audit again"))
            continue
        out.append(Finding(
            KUBE_PROXY_STALE, "error" if errors else "warning", n, None,
            f"{n}: kube-proxy looks stale: {len(services)} Service port(s) differ ({errors} serious); "
            f"{matching}",
            f"Service ports that differ: {_listing(services, 8)}. {_NOT_SYNCING}.",
            f"restart kube-proxy on {n} (kubectl -n kube-system delete pod <its kube-proxy pod>) and check its logs"))
    return out


# ------------------------------------------------------------------------------------------------ report views
# What a report draws (render.html): kept apart from the comparison above, which never reads it.


@dataclass(frozen=True, slots=True)
class PortViews:
    """One Service port a finding names, in one IP family: every node with kube-proxy rules in that family, in
    audit order, with its view of the port (None: the node has no rules for it)."""

    service: str
    family: str
    nodes: tuple[tuple[str, ServicePortView | None], ...]


def _port_views(proxied: Sequence[_NodeState], findings: Sequence[Finding]) -> tuple[PortViews, ...]:
    wanted = sorted({f.service for f in findings if f.service})
    if not wanted:
        return ()
    # A Service's name, or a chain's for an unnamed one: a cheap filter before spelling every port's label.
    names = {key.split("/", 1)[-1].split(":", 1)[0].split("/", 1)[0] for key in wanted}
    families = sorted({fam for s in proxied for fam, v in s.views.items() if v.era.has_iptables_rules})
    by_node: dict[tuple[str, str], dict[str, ServicePortView]] = {}
    for s in proxied:
        for family in families:
            view = s.views.get(family)
            if view is None or not view.era.has_iptables_rules:
                continue
            ports: dict[str, ServicePortView] = {}
            for sp in view.services:
                if sp.name not in names:
                    continue
                key = view_service_label(sp)
                # Several fragments can name one port (comment-less filter rules): draw kube-proxy's main one.
                if key not in ports or (len(sp.chains), len(sp.entries)) > (len(ports[key].chains),
                                                                            len(ports[key].entries)):
                    ports[key] = sp
            by_node[(s.name, family)] = ports
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
