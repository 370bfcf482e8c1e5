"""A fleet of nodes: every node analysed, compared with the API (compare.py) or, without cluster data, with
the other nodes. Dataplane-free: a node is the Analysis of each of its families (iptrace.kube.analysis), built
by the caller, which also reads the files (iptrace.collect.inputs). Pure: no I/O, no printing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iptrace.kube.cluster import ClusterState
from iptrace.kube.compare import (
    ADDRESS_MISMATCH,
    BACKEND_SPLIT,
    ENDPOINTS_DIFFER,
    ERA_MISMATCH,
    FORWARDING_DIFFERS,
    KUBE_PROXY_STALE,
    LOAD_ERROR,
    MISSING_SERVICE,
    NO_KUBE_PROXY_RULES,
    NODE_UNKNOWN,
    NOT_SYNCING,
    PORT_MISMATCH,
    SERVICE_MISSING_ON_NODE,
    SERVICE_ONLY_ON_NODE,
    STALE_ENDPOINTS,
    UNKNOWN_SERVICE,
    Evidence,
    Finding,
    Severity,
    compare_with_cluster,
    listing,
    view_service_label,
)
from iptrace.kube.view import KubeView, ServicePortView

# A node whose kube-proxy runs in another proxy mode than the others' (a fleet migrating to nftables mode).
PROXY_MODE_MISMATCH = "proxy-mode-mismatch"


@dataclass(frozen=True, slots=True)
class NodeInput:
    """One node of an audit: the Analysis of each IP family it was collected for, or the error that stopped it
    from loading. `legacy_note` says what the node's iptables-legacy dump holds, when one was collected."""

    name: str
    analyses: Mapping[str, Any] = field(default_factory=dict)  # family -> iptrace.kube.analysis.Analysis
    error: str | None = None
    addresses: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    legacy_note: str | None = None


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
    mode: str = "-"  # kube-proxy's proxy mode seen: iptables, nftables, ipvs, userspace, none
    dataplane: str = "-"  # the rules read: iptables or nftables


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
        return any(_proxied(v) for v in self.views.values())

    def evidence(self, family: str | None = None) -> Evidence:
        analyses = self.input.analyses
        analysis = analyses.get(family) if family else None
        analysis = analysis or next(iter(analyses.values()), None)
        return Evidence(analysis.ruleset if analysis is not None else None)


def _proxied(view: KubeView) -> bool:
    """kube-proxy's Service rules (iptables or nftables mode) are in this view."""
    return view.proxy.mode in ("iptables", "nftables")


def kube_node_for(name: str, addresses: Sequence[str], cluster: ClusterState | None,
                  meta: Mapping[str, Any] | None = None) -> str | None:
    """The Node object a collected node (or a dump given with --node-ip) is: by any of its addresses, else by
    its name or SSH host (often the node's name or InternalIP). None without cluster data or a match."""
    return _kube_node_name(NodeInput(name, addresses=tuple(addresses), meta=dict(meta or {})), cluster)


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
        if not node.analyses:
            findings.append(Finding(
                LOAD_ERROR, "error", node.name, None, f"{node.name}: its rules could not be read",
                node.error or "no dump", "fix or re-collect this node's dump (`iptrace collect`), then audit again"))
            states.append(_NodeState(node, {}, _kube_node_name(node, cluster)))
            continue
        views = {family: a.view for family, a in node.analyses.items()}
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
                    f"Addresses collected: {listing(s.input.addresses)}. Without the Node's name, endpoints "
                    "local to this node (traffic policy Local) cannot be checked.",
                    "collect the node's addresses, or pass cluster data that includes this Node"))
            for family, view in s.views.items():
                if not _proxied(view):
                    continue
                s.findings.extend(compare_with_cluster(s.input.analyses[family], cluster, node_name=s.kube_node,
                                                       node=s.name))
    else:
        for family in ("ipv4", "ipv6"):
            members = [s for s in proxied if family in s.views and _proxied(s.views[family])]
            if len(members) >= 2:
                _peer_compare(members, family)
    for s in proxied:
        findings.extend(s.findings)
    skewed = {f.node: f.id for f in findings if f.id in (ERA_MISMATCH, PROXY_MODE_MISMATCH) and f.node}
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
            infos=sum(f.severity == "info" for f in mine), error=s.input.error,
            mode=view.proxy.mode if view is not None else "-",
            dataplane=view.proxy.dataplane if view is not None else "-"))
    return AuditReport(tuple(summaries), tuple(findings), cluster.source if cluster is not None else None,
                       _port_views(proxied, findings))


def _node_checks(s: _NodeState, proxied: Sequence[_NodeState], cluster: ClusterState | None) -> list[Finding]:
    out: list[Finding] = []
    view = s.primary
    assert view is not None
    evidence = s.evidence()
    if not s.has_rules:
        others = len(proxied)
        detail = "; ".join(view.warnings) or "no kube-proxy Service rules"
        if others:
            detail += f". {others} other node(s) have kube-proxy rules, so Services do not work the same here"
        out.append(Finding(
            NO_KUBE_PROXY_RULES, "error", s.name, None,
            f"{s.name}: no kube-proxy {view.proxy.dataplane} rules ({view.era.name})", detail,
            "check that kube-proxy runs on this node (kubectl -n kube-system get pods -o wide | grep kube-proxy) "
            "and in which --proxy-mode, or that the Service proxy replacing it is healthy"))
    elif proxied:
        mode_finding = _mode_check(s, view, proxied)
        if mode_finding is not None:
            out.append(mode_finding)
        # Layout versions are compared among the nodes of one proxy mode only.
        same_mode = [p for p in proxied if p.primary is not None and p.primary.proxy.mode == view.proxy.mode]
        eras = Counter(p.primary.era.name for p in same_mode if p.primary is not None)
        common, count = eras.most_common(1)[0]
        if view.era.name != common and count > eras[view.era.name]:
            others = next(p.primary.era for p in same_mode if p.primary is not None and p.primary.era.name == common)
            out.append(Finding(
                ERA_MISMATCH, "warning", s.name, None,
                f"{s.name}: kube-proxy writes the {view.era.name} layout ({view.era.version_hint}); "
                f"{count} other node(s) write the {common} layout ({others.version_hint})",
                "Different kube-proxy versions handle traffic policies, terminating endpoints and source ranges "
                "differently; " + "; ".join(view.era.evidence),
                "run the same kube-proxy version on every node (check the DaemonSet's image and any node "
                "running a static pod)"))
    if view.era.legacy_tables_present:
        detail = ("iptables-nft-save warned that iptables-legacy tables are present: some component writes to "
                  "the legacy backend, and the kernel runs both, so the rules that decide may not be these. ")
        severity: Severity = "warning"
        if s.input.legacy_note is not None:
            detail += s.input.legacy_note
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


def _mode_check(s: _NodeState, view: KubeView, proxied: Sequence[_NodeState]) -> Finding | None:
    """proxy-mode-mismatch for a node in a minority (or a tie) of kube-proxy's proxy modes across the fleet. Its
    Service ports are still compared with the other nodes' (the view is the same in every mode)."""
    modes = Counter(p.primary.proxy.mode for p in proxied if p.primary is not None)
    mine = view.proxy.mode
    others = [(count, mode) for mode, count in modes.items() if mode != mine]
    if not others:
        return None
    count, mode = max(others)
    if count < modes[mine]:
        return None
    holders = [p.name for p in proxied if p.primary is not None and p.primary.proxy.mode == mode]
    return Finding(
        PROXY_MODE_MISMATCH, "warning", s.name, None,
        f"{s.name}: kube-proxy runs in {mine} mode here; {count} other node(s) run it in {mode} mode",
        f"Nodes in {mode} mode: {listing(holders)}. This node's rules are {view.proxy.dataplane} rules "
        f"({view.era.name}). Its Service ports are compared with the other nodes' as on any node: a Service "
        "port it forwards differently has a finding of its own; none means it forwards every one as they do "
        "(what one mode cannot show, such as a health check nodePort in nftables mode, is not compared).",
        "finish the migration: give every node's kube-proxy the same mode (the KubeProxyConfiguration `mode`, "
        "or --proxy-mode) and restart the odd ones; `iptrace diff IPTABLES_DUMP NFT_RULESET` of one node "
        "checks first that both modes forward every Service port alike")


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
    evidence = {s.name: s.evidence(family) for s in members}
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
                        f"{listing(having)}. {NOT_SYNCING}.",
                        "restart kube-proxy on this node once it can sync; audit with --cluster/--kubeconfig to "
                        "compare with the API")
            else:
                for n in having:
                    add(n, SERVICE_ONLY_ON_NODE, "warning", key,
                        f"{key}: only {len(having)} of {total} nodes have rules for it, this one included",
                        f"Nodes without it: {listing(lacking)}. Either this node keeps rules for a deleted "
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
                f"Other nodes: {listing(others)}. One kube-proxy has not applied the Service's current spec. "
                f"{NOT_SYNCING}.",
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
            parts.append(f"DNATs to {listing(extra, 4)}, which " +
                         ("the other nodes do not have" if strict else "no other node has"))
        if missing:
            parts.append(f"misses {listing(missing, 4)}")
        if not mine:
            parts.append("REJECTs (no endpoints)" if sp.no_endpoints else "has no endpoints")
        severity: Severity = "error" if extra or not mine else "warning"
        add(n, ENDPOINTS_DIFFER, severity, key, f"{key}: this node " + "; ".join(parts),
            "Every node's KUBE-SVC chain for a Service port lists the same endpoints (only the local ones of a "
            "Local traffic policy differ). This node's list is " +
            ("older than the others'" if strict and extra else "different from the others'") +
            f". {NOT_SYNCING}.",
            "restart kube-proxy on this node once it can sync; audit with --cluster/--kubeconfig to confirm "
            "against the EndpointSlices", lines or sp.lines[:4])


def _stale_summaries(proxied: Sequence[_NodeState], skewed: Mapping[str, str]) -> list[Finding]:
    """A node-level finding for each node whose kube-proxy looks behind: it has per-service disagreements
    and some other node has none. On a node running another kube-proxy version or proxy mode (`skewed`: node ->
    the finding that says so) the differences may be the version's or the mode's, so it is not called stale."""
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
        matching = f"{listing(clean, 3)} match{'es' if len(clean) == 1 else ''}"
        if n in skewed:
            what = "proxy mode" if skewed[n] == PROXY_MODE_MISMATCH else "version"
            out.append(Finding(
                KUBE_PROXY_STALE, "error" if errors else "warning", n, None,
                f"{n}: {len(services)} Service port(s) forwarded differently ({errors} serious); "
                f"{matching}; this node runs kube-proxy in another {what} (see {skewed[n]})",
                f"Service ports that differ: {listing(services, 8)}. The differences may come from the {what}, "
                f"or from a kube-proxy that stopped syncing.",
                f"run the fleet's kube-proxy {what} on {n}, then audit again"))
            continue
        out.append(Finding(
            KUBE_PROXY_STALE, "error" if errors else "warning", n, None,
            f"{n}: kube-proxy looks stale: {len(services)} Service port(s) differ ({errors} serious); "
            f"{matching}",
            f"Service ports that differ: {listing(services, 8)}. {NOT_SYNCING}.",
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
    families = sorted({fam for s in proxied for fam, v in s.views.items() if _proxied(v)})
    by_node: dict[tuple[str, str], dict[str, ServicePortView]] = {}
    for s in proxied:
        for family in families:
            view = s.views.get(family)
            if view is None or not _proxied(view):
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
