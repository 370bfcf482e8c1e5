"""The rules against the cluster: `compare_with_cluster` (one node's view against the Services and
EndpointSlices kube-proxy was told about). audit.py compares nodes with each other.

What a node *should* have is worked out the way kube-proxy works it out (syncProxyRules in
pkg/proxy/iptables/proxier.go and pkg/proxy/nftables/proxier.go, CategorizeEndpoints in pkg/proxy/topology.go),
so that every difference is something kube-proxy would not have written. Dataplane-free (chain names come from
the dataplane); pure: no I/O, no printing; findings are values for `render.audit` to show.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from iptrace.dataplane import RuleAt
from iptrace.kube import writes
from iptrace.kube.cluster import ClusterEndpoint, ClusterService, ClusterState
from iptrace.kube.evidence import Evidence, EvidenceAt, Quoted, evidence_json, port_rules
from iptrace.kube.expected import (
    ExpectedPort,
    choose_endpoints,
    expected_ports,
)
from iptrace.kube.expected import (
    canonical as _canonical,
)
from iptrace.kube.expected import (
    canonical_cidr as _canonical_cidr,
)
from iptrace.kube.expected import (
    service_label as _service_label,
)
from iptrace.kube.view import (
    CLUSTER_IP,
    EXTERNAL_IP,
    HEALTH_CHECK,
    LOAD_BALANCER,
    NODE_PORT,
    PortLayout,
    ServicePortView,
    port_layout,
)
from iptrace.kube.view_model import PortIdentity

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
# kube-proxy's container was not running when the node was collected (collect --via api reads the pod's status).
KUBE_PROXY_DOWN = "kube-proxy-not-running"
NO_KUBE_PROXY_RULES = "no-kube-proxy-rules"
ERA_MISMATCH = "era-mismatch"
BACKEND_SPLIT = "iptables-backend-split"
# kube-proxy's rules in both proxy modes on one node (iptables-save.txt and nft-ruleset.txt's kube-proxy table).
MODE_SPLIT = "kube-proxy-mode-split"
LOAD_ERROR = "load-error"
NODE_UNKNOWN = "node-not-in-cluster"

NOT_SYNCING = ("kube-proxy on this node has not applied the API's current state: it is not running, "
                "crash-looping, or cannot reach the API server (check its pod's logs and restarts, and its "
                "sync_proxy_rules_last_timestamp_seconds metric)")


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement. `service` is kube-proxy's ServicePortName (`ns/svc:port`) with the protocol when it
    is not TCP (`ns/svc:dns/udp`), or None for a finding about the whole node. `evidence` holds (dump line,
    rule as its dataplane prints it); line 0: not a dump line; nft -j input's say where otherwise (evidence.py)."""

    id: str
    severity: Severity
    node: str
    service: str | None
    summary: str
    detail: str
    fix: str
    evidence: tuple[tuple[EvidenceAt, str], ...] = ()
    # the IP family of the rules it is about, when one ("ipv4", "ipv6"): which picture of a dual-stack Service
    # port a report draws it in. Not in the JSON (a merged audit's findings have none: drawn in every family's)
    family: str | None = field(default=None, compare=False)

    @property
    def sort_key(self) -> tuple[int, str, str, str]:
        return (SEVERITY_ORDER[self.severity], self.node, self.service or "", self.id)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "node": self.node, "service": self.service,
                "summary": self.summary, "detail": self.detail, "fix": self.fix,
                "evidence": [evidence_json(at, rule) for at, rule in self.evidence]}


# ------------------------------------------------------------------------------------------------ helpers


def _address(ip: str, port: int | None) -> str:
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def view_service_label(sp: PortIdentity) -> str:
    """How findings and diffs name a service port of a view (the chain name for an unnamed one)."""
    if not sp.namespace:
        return sp.name if sp.protocol == "tcp" else f"{sp.name}/{sp.protocol}"
    return _service_label(sp.namespace, sp.name, sp.port_name, sp.protocol)


def listing(items: Iterable[str], limit: int = 6) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "") if items else "none"


def _identify(ports: Sequence[PortLayout], cluster: ClusterState,
              dataplane: Any) -> dict[int, tuple[str, str, str, str]]:
    """(ns, name, port name, protocol) for each service port, by index: its own name (a layout read with the
    cluster data has the dataplane's names for comment-less chains), else one of its chains named as the
    dataplane names a Service port's chains, else its ClusterIP and port, else (filter-only fragments of a
    comment-less dump) its nodePort."""
    by_chain: dict[str, tuple[str, str, str, str]] = {}
    by_address: dict[tuple[str, int, str], tuple[str, str, str, str]] = {}
    by_node_port: dict[tuple[int, str], tuple[str, str, str, str]] = {}
    if any(not p.namespace for p in ports):
        for svc, port in cluster.service_ports():
            key = (svc.namespace, svc.name, port.name, port.protocol.lower())
            for role in ("cluster", "local", "external", "firewall"):
                by_chain[dataplane.service_chain(role, svc.service_port_name(port), port.protocol)] = key
            for ip in svc.cluster_ips:
                by_address[(_canonical(ip), port.port, port.protocol.lower())] = key
            if port.node_port:
                by_node_port[(port.node_port, port.protocol.lower())] = key
            if svc.health_check_node_port:
                by_node_port.setdefault((svc.health_check_node_port, "tcp"), key)
    out: dict[int, tuple[str, str, str, str]] = {}
    for i, sp in enumerate(ports):
        if sp.namespace:
            out[i] = (sp.namespace, sp.name, sp.port_name, sp.protocol)
            continue
        found = next((by_chain[c] for c in sp.chains if c in by_chain), None)
        if found is None and sp.cluster_ip is not None and sp.port is not None:
            found = by_address.get((_canonical(sp.cluster_ip), sp.port, sp.protocol))
        if found is None and sp.cluster_ip is None:
            for port in (sp.node_port, sp.health_check_node_port):
                if port is not None and (port, sp.protocol) in by_node_port:
                    found = by_node_port[(port, sp.protocol)]
                    break
        if found is not None:
            out[i] = found
    return out


# ------------------------------------------------------------------------------------------------ compare


class _Comparer:
    def __init__(self, analysis: Any, cluster: ClusterState, node_name: str | None, node: str) -> None:
        self.analysis = analysis
        self.proxy = analysis.layout.proxy
        self.nft = self.proxy.mode == "nftables"  # (what kube-proxy writes is said in that mode's words)
        self.dataplane = analysis.dataplane
        self.cluster = cluster
        self.node_name = node_name
        self.node = node
        self.evidence = Evidence(analysis.ruleset, analysis.family)
        self.findings: list[Finding] = []
        zone = None
        if node_name is not None:
            n = cluster.node(node_name)
            if n is not None:
                zone = n.label_map.get("topology.kubernetes.io/zone")
        self.zone = zone

    def chain(self, role: str, exp: ExpectedPort) -> str:
        """The chain kube-proxy names for `exp` in this node's dataplane (cluster, local, external)."""
        return str(self.dataplane.service_chain(role, exp.service_port_name, exp.port.protocol))

    def ways(self, sp: ServicePortView, kept: Callable[[str], bool] | None = None) -> list[int | Quoted]:
        """Where the port's ways in (all, or those of the kinds `kept`) are: their lines; for input without lines
        (nft -j), the set and map elements keyed on their addresses (Ruleset.elements_at), quoted."""
        entries = [e for e in sp.entries if kept is None or kept(e.kind)]
        lines: list[int | Quoted] = [x for e in entries for x in e.lines]
        if lines or not sp.handles:
            return lines
        at = self.analysis.ruleset.elements_at
        return [Quoted(*q) for e in entries if e.address is not None and e.port is not None
                for q in at(e.address, e.port, e.protocol)]

    def add(self, id_: str, severity: Severity, service: str | None, summary: str, detail: str, fix: str,
            lines: Iterable[int | RuleAt | Quoted] = ()) -> None:
        self.findings.append(Finding(id_, severity, self.node, service, summary, detail, fix,
                                     self.evidence(lines), self.analysis.family))

    def plan(self) -> list[tuple[str, Callable[[], None]]]:
        """What there is to say, as (the label of the Service port it is about, how to say it): every port is
        paired with the API's by its layout (no walk); a port's view is built only when its item runs."""
        layout, cluster = self.analysis.layout, self.cluster
        if self.proxy.mode not in ("iptables", "nftables"):
            return []
        expected = {e.key: e for e in expected_ports(cluster, layout.family)}
        ports = [port_layout(sp) for sp in layout.service_ports]
        names = _identify(ports, cluster, self.dataplane)
        seen: set[tuple[str, str, str, str]] = set()
        unknown: list[tuple[PortLayout, tuple[str, str, str, str] | None]] = []
        named: dict[tuple[str, str, str, str], list[PortLayout]] = {}
        items: list[tuple[str, Callable[[], None]]] = []
        for i, port in enumerate(ports):
            key = names.get(i)
            if key is None:
                unknown.append((port, None))
            else:
                named.setdefault(key, []).append(port)
        for key, found in named.items():
            # Several fragments can name one service port (a comment-less dump's filter rules): the one
            # with the most chains is kube-proxy's programming of it.
            port = max(found, key=lambda x: (len(x.chains), len(x.entries)))
            exp = expected.get(key)
            if exp is None:
                unknown.append((port, key))
                continue
            seen.add(key)
            items.append((exp.label, functools.partial(self.compare_key, port.key, exp)))
        missing = [e for k, e in expected.items() if k not in seen]
        # A protocol change shows as one unknown and one missing port of the same Service port name.
        for port, key in list(unknown):
            if key is None:
                continue
            twin = next((e for e in missing if e.key[:3] == key[:3]), None)
            if twin is None:
                continue
            missing.remove(twin)
            unknown.remove((port, key))
            items.append((twin.label, functools.partial(self.protocol_changed, port, twin)))
        # Data of one namespace (`--namespace`) says nothing of the other namespaces' Service ports, nor of
        # a comment-less port it could not name.
        items += [(view_service_label(port), functools.partial(self.unknown_key, port.key, key))
                  for port, key in unknown if cluster.covers(key[0] if key else port.namespace or None)]
        items += [(exp.label, functools.partial(self.missing_service, exp)) for exp in missing]
        return items

    # --- one service port both sides know ----------------------------------------------------------------

    def compare_key(self, key: str, exp: ExpectedPort) -> None:
        self.compare_port(self.analysis.port_view(key), exp)

    def compare_port(self, sp: ServicePortView, exp: ExpectedPort) -> None:
        label = exp.label
        entry_lines = self.ways(sp)
        if sp.cluster_ip is not None and _canonical(sp.cluster_ip) != exp.cluster_ip:
            self.add(ADDRESS_MISMATCH, "error", label,
                     f"{label}: the rules capture ClusterIP {sp.cluster_ip}, the API says {exp.cluster_ip}",
                     f"Connections to {_address(exp.cluster_ip, exp.port.port)} match no rule on this node "
                     f"and hang. kube-proxy writes a {writes.dispatch(self.nft)} for the Service's current ClusterIP. "
                     f"{NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                     self.ways(sp, {CLUSTER_IP}.__contains__))
        if sp.port is not None and sp.port != exp.port.port:
            self.add(PORT_MISMATCH, "error", label,
                     f"{label}: the rules forward port {sp.port}, the API says port {exp.port.port}",
                     f"Connections to {_address(exp.cluster_ip, exp.port.port)} match no rule on this node; "
                     f"kube-proxy would have rewritten the {writes.dispatch(self.nft)} for port {exp.port.port}. "
                     f"{NOT_SYNCING}.", "restart kube-proxy on this node once it can sync", entry_lines)
        if sp.node_port != exp.node_port and (sp.node_port is not None or sp.endpoints or sp.no_endpoints):
            if exp.node_port is None:
                summary = f"{label}: the rules still open nodePort {sp.node_port}; the API has none"
                detail = (f"The Service has no nodePort any more (type {exp.service.type}); this node still "
                          f"forwards <node>:{sp.node_port}. {NOT_SYNCING}.")
                severity: Severity = "warning"
            else:
                summary = (f"{label}: nodePort is {exp.node_port} in the API, "
                           f"{sp.node_port if sp.node_port is not None else 'absent'} in the rules")
                now = f"; its rules forward <node>:{sp.node_port} instead" if sp.node_port is not None else ""
                detail = (f"Connections to <node>:{exp.node_port} match no nodePort rule on this node{now}; "
                          f"kube-proxy would send {exp.port.protocol.lower()} port {exp.node_port} of the node's "
                          f"addresses to {self.chain('external', exp)}. {NOT_SYNCING}.")
                severity = "error"
            self.add(PORT_MISMATCH, severity, label, summary, detail,
                     "restart kube-proxy on this node once it can sync",
                     self.ways(sp, {NODE_PORT}.__contains__))
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
        lines = self.ways(sp, {EXTERNAL_IP, LOAD_BALANCER}.__contains__)
        missing, extra = sorted(want - have), sorted(have - want)
        parts = []
        if missing:
            parts.append(f"no rule for {listing(missing)} (connections to it are not forwarded)")
        if extra:
            parts.append(f"still captures {listing(extra)}, which the Service no longer lists")
        self.add(ADDRESS_MISMATCH, "error", label,
                 f"{label}: external/LoadBalancer IPs differ from the API: " + "; ".join(parts),
                 f"The API lists externalIPs {listing(exp.external_ips)} and LoadBalancer IPs "
                 f"{listing(exp.lb_ips)}; this node captures {listing(sorted(have))}. {NOT_SYNCING}.",
                 "restart kube-proxy on this node once it can sync", lines)

    def compare_endpoints(self, sp: ServicePortView, exp: ExpectedPort) -> None:
        if not self.cluster.slices:
            # Cluster data without a single EndpointSlice was collected without them (`--cluster` given only
            # the ServiceList): every Service, default/kubernetes included, has a slice in a real cluster, so
            # an empty list says nothing about the endpoints and judging them would call every one stale.
            return
        choice = choose_endpoints(exp, self.node_name, self.zone)
        listed = {e.address: e for e in exp.endpoints}
        by_address = {ep.address: ep for ep in sp.endpoints}
        # Before KEP-3178 (KUBE-XLB layout) internalTrafficPolicy=Local was a feature gate that filtered
        # KUBE-SVC itself: all endpoints with the gate off, the local ones with it on.
        itp_only_xlb = (self.proxy.itp_filters_cluster_chain and exp.internal_policy_local
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
        lines = port_rules(sp, [by_address[a] for a in extra if a in by_address])
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
                     f"connections to the old port, where nothing listens. {NOT_SYNCING}.",
                     "restart kube-proxy on this node once it can sync", lines)
            return
        which = f"local endpoints ({'local-…' if self.nft else 'KUBE-SVL/KUBE-XLB'})" if local else "endpoints"
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
            parts.append(f"DNATs to {listing(reasons, 4)}")
        if missing:
            parts.append(f"misses {listing(missing, 4)}")
        if not have:
            parts.append("has no endpoints (" + ("DROPs: no local endpoints" if local else "REJECTs") + ")")
        # Wrong on this node: it sends traffic where kube-proxy would not, or refuses/drops what it would send.
        severity: Severity = "error" if extra or (want and not have) else "warning"
        cause = NOT_SYNCING
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
                      f"ready endpoints whose nodeName is {self.node_name!r}: {listing(sorted(want))}")
        else:
            should = (f"kube-proxy balances over the ready endpoints (serving+terminating ones when none is "
                      f"ready): {listing(sorted(want))}")
        self.add(STALE_ENDPOINTS, severity, label,
                 f"{label}: this node's {which} disagree with the EndpointSlices: " + "; ".join(parts),
                 f"{should}. Likely cause: {cause}.", fix, lines or port_rules(sp)[:4])

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
                         + f"{NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                         self.ways(sp, CLUSTER_IP.__ne__))
        if sp.internal_traffic_policy is not None and not self.proxy.itp_filters_cluster_chain:
            want = "Local" if exp.internal_policy_local else "Cluster"
            if sp.internal_traffic_policy != want:
                dropping = sp.no_local_endpoints and want == "Cluster"
                self.add(POLICY_MISMATCH, "error" if dropping else "warning", label,
                         f"{label}: internalTrafficPolicy is {want} in the API, {sp.internal_traffic_policy} "
                         "in the rules",
                         ("In-cluster connections are dropped on this node for want of a local endpoint. "
                          if dropping else "In-cluster connections use the old policy's endpoints. ")
                         + f"{NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                         self.ways(sp, {CLUSTER_IP}.__contains__))
        if sp.endpoints and sp.session_affinity_timeout != exp.affinity_timeout:
            def say(t: int | None) -> str:
                return "None" if t is None else f"ClientIP ({t}s)"
            self.add(POLICY_MISMATCH, "warning", label,
                     f"{label}: session affinity is {say(exp.affinity_timeout)} in the API, "
                     f"{say(sp.session_affinity_timeout)} in the rules",
                     f"kube-proxy writes {writes.affinity(self.nft)} exactly when sessionAffinity is ClientIP. "
                     f"{NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                     port_rules(sp, sp.endpoints))
        has_fw = any(c.startswith(("KUBE-FW-", "firewall-")) for c in sp.chains)
        if exp.lb_ips and (has_fw or exp.lb_source_ranges) and sp.endpoints:
            have = {_canonical_cidr(r) for r in sp.lb_source_ranges}
            want_r = set(exp.lb_source_ranges)
            if have != want_r:
                self.add(POLICY_MISMATCH, "error", label,
                         f"{label}: loadBalancerSourceRanges are {listing(sorted(want_r))} in the API, "
                         f"{listing(sorted(have))} in the rules",
                         "Clients the Service admits are dropped on this node, or clients it excludes get "
                         f"through ({writes.firewall(self.nft)}). {NOT_SYNCING}.",
                         "restart kube-proxy on this node once it can sync",
                         self.ways(sp, {LOAD_BALANCER}.__contains__))
        hc_known = any(e.kind == HEALTH_CHECK for e in sp.entries) or sp.health_check_node_port is not None
        if hc_known and sp.health_check_node_port != exp.health_check_node_port:
            self.add(POLICY_MISMATCH, "warning", label,
                     f"{label}: healthCheckNodePort is {exp.health_check_node_port} in the API, "
                     f"{sp.health_check_node_port} in the rules",
                     "The cloud load balancer's health checks may reach a port this node does not accept, and "
                     f"mark it unhealthy. {NOT_SYNCING}.", "restart kube-proxy on this node once it can sync",
                     self.ways(sp, {HEALTH_CHECK}.__contains__))

    # --- one side only -------------------------------------------------------------------------------------

    def unknown_key(self, key: str, name: tuple[str, str, str, str] | None) -> None:
        self.unknown_service(self.analysis.port_view(key), name)

    def protocol_changed(self, port: PortLayout, twin: ExpectedPort) -> None:
        self.add(PORT_MISMATCH, "error", twin.label,
                 f"{twin.label}: protocol is {twin.port.protocol} in the API, {port.protocol.upper()} in the rules",
                 f"The Service's port {twin.port.name or twin.port.port} is {twin.port.protocol}; this node still "
                 f"forwards {port.protocol.upper()} for it, so {twin.port.protocol} connections to "
                 f"{_address(twin.cluster_ip, twin.port.port)} match no rule. kube-proxy would have replaced the "
                 f"chains ({self.chain('cluster', twin)}). {NOT_SYNCING}.",
                 "restart kube-proxy on this node once it can sync", port.lines)

    def missing_service(self, exp: ExpectedPort) -> None:
        choice = choose_endpoints(exp, self.node_name, self.zone)
        proto = exp.port.protocol.lower()
        # (without EndpointSlices kube-proxy's rule is unknown: a jump to the Service's chain, or a REJECT)
        chain = ("" if not self.cluster.slices else
                 self.chain("local" if not exp.uses_cluster_endpoints else "cluster", exp) if choice.has_any else None)
        should = writes.missing(self.nft, self.analysis.layout.family, exp.cluster_ip, exp.port.port, proto, chain)
        ways = [_address(exp.cluster_ip, exp.port.port)]
        if exp.node_port is not None:
            ways.append(f"<node>:{exp.node_port}")
        ways += [_address(ip, exp.port.port) for ip in (*exp.external_ips, *exp.lb_ips)]
        self.add(MISSING_SERVICE, "error" if choice.has_any else "warning", exp.label,
                 f"{exp.label}: the API has this Service port ({exp.service.type}, "
                 f"{_address(exp.cluster_ip, exp.port.port)}/{exp.port.protocol}) but this node has no rules "
                 "for it",
                 f"Connections to {listing(ways)} are not forwarded on this node (they hang). kube-proxy "
                 f"would have written {should}. {NOT_SYNCING}.",
                 "restart kube-proxy on this node once it can sync; check its logs for sync errors")

    def unknown_service(self, sp: ServicePortView, key: tuple[str, str, str, str] | None) -> None:
        label = view_service_label(sp)
        if key is None:
            what = (f"no Service in the cluster data hashes to {sp.name} and none has ClusterIP "
                    f"{_address(sp.cluster_ip, sp.port) if sp.cluster_ip else 'of it'}")
        elif (svc := self.cluster.service(key[0], key[1])) is None:
            what = f"the Service {key[0]}/{key[1]} does not exist in the API"
        else:
            what = f"the Service {svc.key} {_not_proxied(svc, key, self.analysis.layout.family)}"
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
                 detail + f"Likely cause: {NOT_SYNCING} (or the cluster data is from another cluster).",
                 "restart kube-proxy on this node once it can sync; compare with fresh cluster data",
                 sp.lines[:4])


def _not_proxied(svc: ClusterService, key: tuple[str, str, str, str], family: str) -> str:
    """Why kube-proxy's `family` proxier has no Service port `key` of `svc` (ServiceChangeTracker skips headless
    and ExternalName Services, and a Service without a ClusterIP of its family), as "the Service X ..." goes on."""
    if svc.type == "ExternalName":
        return "is of type ExternalName (kube-proxy writes no rules for it)"
    if svc.headless:
        return "is headless (clusterIP None; kube-proxy writes no rules for it)"
    if svc.port(key[2], key[3]) is None:
        return f"exists but has no {key[3].upper()} port named {key[2]!r}"
    families = listing(svc.ip_families) if svc.ip_families else "none"
    return f"has no {'IPv6' if family == 'ipv6' else 'IPv4'} ClusterIP (ipFamilies {families})"


class ClusterComparison:
    """One node's rules against the API: every Service port paired with the API's once (by its layout), the
    findings about any of them said when first asked for (building those ports' views only). A batch of
    questions (`explain --dst-file --cluster`) pairs the node once."""

    def __init__(self, analysis: Any, cluster: ClusterState, *, node_name: str | None,
                 node: str | None = None) -> None:
        self._comparer = _Comparer(analysis, cluster, node_name, node if node is not None else (node_name or ""))
        self._items = self._comparer.plan()
        self._said: dict[int, list[Finding]] = {}

    def findings(self, labels: Collection[str] | None = None) -> list[Finding]:
        """The findings (about the Service ports `labels` names, Finding.service, when given), by severity."""
        out: list[Finding] = []
        said = self._comparer.findings
        for i, (label, say) in enumerate(self._items):
            if labels is not None and label not in labels:
                continue
            found = self._said.get(i)
            if found is None:
                start = len(said)
                say()
                found = self._said[i] = said[start:]
            out += found
        return sorted(out, key=lambda f: f.sort_key)


def compare_with_cluster(analysis: Any, cluster: ClusterState, *, node_name: str | None,
                         node: str | None = None, labels: Collection[str] | None = None) -> list[Finding]:
    """Findings where one node's rules disagree with the API (stale-endpoints, missing-service,
    unknown-service, port-mismatch, address-mismatch, policy-mismatch), ordered by severity.

    `analysis` is an iptrace.kube.analysis.Analysis (built with the same cluster data, so that comment-less
    chains are named). `node_name` is the Node object's name (needed to judge Local traffic policies; None
    skips that check). `node` labels the findings (default: node_name). `labels`: only the findings about
    these Service ports (Finding.service), building only their views (a question about one Service of a big
    node); the same findings as the whole comparison has for them."""
    return ClusterComparison(analysis, cluster, node_name=node_name, node=node).findings(labels)
