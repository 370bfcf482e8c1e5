"""A fleet of nodes: every node analysed, compared with the API (compare.py) or, without cluster data, with
the other nodes. Dataplane-free: a node is the Analysis of each of its families (iptrace.kube.analysis), built
by the caller, which also reads the files (iptrace.collect.inputs). Pure: no I/O, no printing.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from iptrace.dataplane import RuleAt
from iptrace.kube.cluster import ClusterState
from iptrace.kube.compare import (
    ADDRESS_MISMATCH,
    ENDPOINTS_DIFFER,
    ERA_MISMATCH,
    FORWARDING_DIFFERS,
    KUBE_PROXY_DOWN,
    KUBE_PROXY_STALE,
    LOAD_ERROR,
    MISSING_SERVICE,
    NODE_UNKNOWN,
    NOT_SYNCING,
    PORT_MISMATCH,
    SERVICE_MISSING_ON_NODE,
    SERVICE_ONLY_ON_NODE,
    STALE_ENDPOINTS,
    UNKNOWN_SERVICE,
    Finding,
    Severity,
    listing,
)
from iptrace.kube.digest import NOT_COLLECTED, FamilyDigest, NodeResult, PortDigest, ShiftedLines, node_result
from iptrace.kube.evidence import EvidenceAt
from iptrace.kube.fleets import cluster_groups, other_cluster_findings
from iptrace.kube.nodechecks import PROXY_MODE_MISMATCH, Modes, modes_of, node_checks
from iptrace.kube.peers import ExplainAt, majority, ways_differ
from iptrace.kube.portviews import PortViews, port_views
from iptrace.text import counted


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
    result: NodeResult
    findings: list[Finding] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.result.name

    @property
    def kube_node(self) -> str | None:
        return self.result.kube_node

    @property
    def primary(self) -> FamilyDigest | None:
        return self.result.primary

    @property
    def has_rules(self) -> bool:
        return self.result.proxied


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
    return combine([node_result(n, cluster, pictures=True) for n in nodes], cluster)


def combine(results: Sequence[NodeResult], cluster: ClusterState | None = None, *,
            cluster_source: str | None = None, cluster_nodes: bool | None = None) -> AuditReport:
    """The audit of nodes already digested (iptrace.kube.digest.node_result: each with its API comparison done
    when `cluster` was given), in this order. A merge of audits, which has no ClusterState, gives the cluster
    data's `cluster_source` and whether it listed Nodes (`cluster_nodes`) instead."""
    compared = cluster is not None or cluster_source is not None
    if cluster is not None:
        cluster_source = cluster.compared
        cluster_nodes = bool(cluster.nodes)
    states = [_NodeState(r) for r in results]
    findings: list[Finding] = []
    for s in states:
        if not s.result.families:
            findings.append(_unread(s.result))
    loaded = [s for s in states if s.result.families]
    proxied = [s for s in loaded if s.has_rules]
    # Nodes of different clusters (a collection of two) are compared within their own cluster only.
    clusters = cluster_groups(proxied, lambda s: s.primary)
    groups = [[proxied[i] for i in g.members] for g in clusters]
    findings.extend(other_cluster_findings([s.name for s in proxied], clusters))
    # (each node is checked against its cluster's modes and layouts, one without rules against every cluster's)
    every = modes_of([s.result for s in proxied])
    group_modes: dict[int, Modes] = {}
    for g in groups:
        group_modes.update(dict.fromkeys(map(id, g), modes_of([s.result for s in g])))
    for s in loaded:
        findings.extend(node_checks(s.result, group_modes.get(id(s), every)))
    if compared:
        for s in proxied:
            if s.kube_node is None and cluster_nodes:
                findings.append(Finding(
                    NODE_UNKNOWN, "warning", s.name, None,
                    f"{s.name}: no Node in the cluster data has its addresses or name",
                    f"Addresses collected: {listing(s.result.addresses)}. Without the Node's name, endpoints "
                    "local to this node (traffic policy Local) cannot be checked.",
                    "give the node's address (--node-ip IP; a collection has it), or cluster data with this Node"))
            for fam in s.result.families:
                if fam.proxied:
                    s.findings.extend(fam.compared)
        for family in ("ipv4", "ipv6"):
            for group in groups:
                members = [s for s in group if (f := s.result.family(family)) is not None and f.proxied]
                if len(members) >= 2:
                    _compare_ways(members, family)
    else:
        for family in ("ipv4", "ipv6"):
            for group in groups:
                members = [s for s in group if (f := s.result.family(family)) is not None and f.proxied]
                if len(members) >= 2:
                    _peer_compare(members, family)
    for s in proxied:
        findings.extend(s.findings)
    skewed = {f.node: f.id for f in findings if f.id in (ERA_MISMATCH, PROXY_MODE_MISMATCH) and f.node}
    for group in groups:
        findings.extend(_stale_summaries(group, skewed))
    drawn = sorted({f.service for f in findings if f.service})  # (a conntrack finding draws no picture)
    findings.extend(f for s in states for f in s.result.extra)
    findings.sort(key=lambda f: f.sort_key)
    mine: dict[str, list[Finding]] = {}
    for f in findings:
        mine.setdefault(f.node, []).append(f)
    summaries = []
    for s in states:
        own = mine.get(s.name, [])
        fam = s.primary
        status = "load-error" if not s.result.families else ("ok" if s.has_rules else "no-kube-proxy")
        summaries.append(NodeSummary(
            name=s.name, status=status, kube_node=s.kube_node,
            era=fam.proxy.name if fam is not None else "-",
            version_hint=fam.proxy.version_hint if fam is not None else "",
            services=sum(f.services for f in s.result.families),
            errors=sum(f.severity == "error" for f in own), warnings=sum(f.severity == "warning" for f in own),
            infos=sum(f.severity == "info" for f in own), error=s.result.error,
            mode=fam.proxy.mode if fam is not None else "-",
            dataplane=fam.proxy.dataplane if fam is not None else "-"))
    return AuditReport(tuple(summaries), tuple(findings), cluster_source if compared else None,
                       port_views([s.result for s in proxied], drawn))


def _unread(r: NodeResult) -> Finding:
    """The load-error of a node without rules to analyse. One this audit could not collect says so, and its fix is
    the cause its error names (e.g. a PodSecurity level, an SSH key), not a re-collection, which could only name
    one way in while the audit may have collected through the API, where SSH is closed."""
    if r.error is not None and r.error.startswith(NOT_COLLECTED):
        return Finding(LOAD_ERROR, "error", r.name, None, f"{r.name}: could not be collected",
                       r.error, "fix what its error names, then run this audit again: it collects the node the "
                       "same way")
    return Finding(LOAD_ERROR, "error", r.name, None, f"{r.name}: its rules could not be read", r.error or "no dump",
                   "fix or re-collect this node's dump (`iptrace collect`), then audit again")


class _Port:
    """One node's digest of one Service port, with its lines (the evidence slots): read from the node's only when
    a finding shows them."""

    __slots__ = ("_lines", "_node", "digest")

    def __init__(self, digest: PortDigest, node: _NodePorts) -> None:
        self.digest = digest
        self._node = node
        self._lines: Sequence[int] | None = None

    @property
    def lines(self) -> Sequence[int]:
        if self._lines is None:
            self._lines = self._node.lines(self.digest.key)
        return self._lines

    def evidence(self, lines: Iterable[int], limit: int = 6) -> tuple[tuple[EvidenceAt, str], ...]:
        """compare.Evidence over the lines this port's evidence slots hold (for input without lines, nft -j: the
        kernel handles of the rules of FamilyDigest.handles_of's table)."""
        d = self.digest
        texts = dict(zip(self.lines, (*d.head, *(t for _a, _c, t in d.endpoints)), strict=True))
        wanted = sorted({x for x in lines if x})[:limit]
        table = self._node.fam.handles_of
        if table:
            return tuple((RuleAt(table, "", x), texts.get(x, "")) for x in wanted)
        return tuple((x, texts.get(x, "")) for x in wanted)

    @property
    def head_lines(self) -> list[int]:
        return list(self.lines[:len(self.digest.head)])

    def endpoint_lines(self, addresses: Iterable[str] | None = None) -> list[int]:
        wanted = set(addresses) if addresses is not None else None
        at = len(self.digest.head)
        lines = self.lines
        return [lines[at + i] for i, (a, _c, _t) in enumerate(self.digest.endpoints)
                if wanted is None or a in wanted]


class _NodePorts:
    """One node's ports of one family by key (the last of a key, as the comparison reads a view), each by its
    position among the family's: no object per port of every node (a fleet of 100 nodes of 5,000 ports made
    half a million, ~100 MB, with their lines) — a _Port is made for a port the comparison reads."""

    __slots__ = ("_starts", "fam", "index")

    def __init__(self, fam: FamilyDigest, positions: Sequence[int]) -> None:
        self.fam = fam
        # (`positions`: one int object per position, shared by every node's index)
        self.index = {p.key: i for p, i in zip(fam.ports, positions, strict=False)}
        self._starts: array[int] | None = None

    def digest(self, key: str) -> PortDigest:
        return self.fam.ports[self.index[key]]

    def port(self, key: str) -> _Port:
        return _Port(self.digest(key), self)

    def lines(self, key: str) -> Sequence[int]:
        """The node's lines of the port of `key` (FamilyDigest.port_lines')."""
        i = self.index[key]
        if self._starts is None:
            self._starts = array("I", accumulate((p.slots for p in self.fam.ports), initial=0))
        start, stop = self._starts[i], self._starts[i + 1]
        lines = self.fam.lines
        return lines.window(start, stop) if isinstance(lines, ShiftedLines) else lines[start:stop]


def _ports_by_node(members: Sequence[_NodeState], family: str,
                   ) -> tuple[dict[str, _NodePorts], Any, dict[str, tuple[str, str]], dict[str, ExplainAt]]:
    """Each node's ports of `family`, the function that files a finding on a node, each node's kube-proxy
    mode and layout (era), and where `iptrace explain` reads it."""
    by_node: dict[str, _NodePorts] = {}
    layouts: dict[str, tuple[str, str]] = {}
    at: dict[str, ExplainAt] = {}
    families = [s.result.family(family) for s in members]
    positions = list(range(max((len(f.ports) for f in families if f is not None), default=0)))
    for s, fam in zip(members, families, strict=True):
        assert fam is not None
        by_node[s.name] = _NodePorts(fam, positions)
        layouts[s.name] = (fam.proxy.mode, fam.proxy.name)
        at[s.name] = ExplainAt(s.result.explain_at, fam.node_address)
    states = {s.name: s for s in members}

    def add(node: str, id_: str, severity: Severity, service: str, summary: str, detail: str, fix: str,
            port: _Port | None = None, lines: Iterable[int] = ()) -> None:
        states[node].findings.append(Finding(id_, severity, node, service, summary, detail, fix,
                                             port.evidence(lines) if port is not None else (), family))

    return by_node, add, layouts, at


def _differ(key: str, having: Sequence[str], by_node: Mapping[str, _NodePorts]) -> dict[str, _Port] | None:
    """The ports of `key` of the nodes `having` it, when they are not all one digest object (nodes that program a
    port alike share it: nothing differs), else None."""
    first = by_node[having[0]].digest(key)
    if all(by_node[n].digest(key) is first for n in having):
        return None
    return {n: by_node[n].port(key) for n in having}


def _compare_ways(members: Sequence[_NodeState], family: str) -> None:
    """With cluster data (which says what each node should program, not what its own other rules do to it):
    the nodes' ways in against each other all the same."""
    by_node, add, layouts, at = _ports_by_node(members, family)
    for key in sorted({k for ports in by_node.values() for k in ports.index}):
        having = [n for n, ports in by_node.items() if key in ports.index]
        if len(having) >= 2 and (ports := _differ(key, having, by_node)) is not None:
            ways_differ(key, ports, add, layouts, at)


def _peer_compare(members: Sequence[_NodeState], family: str) -> None:
    """Nodes against each other, service port by service port (no cluster data: the majority is the
    reference; with a tie, every node in the disagreement is told)."""
    by_node, add, layouts, at = _ports_by_node(members, family)
    all_keys = sorted({k for ports in by_node.values() for k in ports.index})
    total = len(members)
    alike = _alike(by_node)
    everyone = list(by_node)

    for key in all_keys:
        if alike is not None:  # (every node has every key)
            if key not in alike:
                continue
            having, lacking = everyone, []
        else:
            having = [n for n in by_node if key in by_node[n].index]
            lacking = [n for n in by_node if key not in by_node[n].index]
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
                    port = by_node[n].port(key)
                    add(n, SERVICE_ONLY_ON_NODE, "warning", key,
                        f"{key}: only {len(having)} of {total} nodes have rules for it, this one included",
                        f"Nodes without it: {listing(lacking)}. Either this node keeps rules for a deleted "
                        "Service (kube-proxy here is not syncing) or the others have not picked up a new one.",
                        "audit with --cluster/--kubeconfig to see which side the API agrees with",
                        port, port.head_lines)
        if len(having) >= 2 and (ports := _differ(key, having, by_node)) is not None:
            _peer_compare_port(key, ports, add)
            ways_differ(key, ports, add, layouts, at)


def _alike(by_node: Mapping[str, _NodePorts]) -> set[str] | None:
    """When every node has the same keys at the same positions (a cluster's nodes, as a rule): the keys whose ports are
    not one digest object on every node (_differ's), found a position at a time across the nodes (a 100-node fleet of
    5,000 ports: half a million lookups by key, most of an audit's comparison); else None."""
    nodes = list(by_node.values())
    first = nodes[0].index
    if any(n.index != first for n in nodes[1:]):
        return None
    # (equal indexes, whose positions are each key's last port's: ports of equal length)
    columns = list(zip(*(n.fam.ports for n in nodes), strict=True))
    return {key for key, i in first.items() if len(set(map(id, columns[i]))) > 1}


def _shown(value: Any) -> str:
    """A compared field's value in a sentence, not the tuple it is held in: `none`, `203.0.113.50`, or
    `[192.168.49.0/24, 198.51.100.0/24]` (bracketed, so that the detail's `node=value, node=value` stays
    readable)."""
    if isinstance(value, tuple | list):
        return "none" if not value else str(value[0]) if len(value) == 1 else "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _peer_compare_port(key: str, ports: Mapping[str, _Port], add: Any) -> None:
    fields: list[tuple[str, str, Severity, Any]] = [
        ("ClusterIP", "cluster_ip", "error", lambda d: d.cluster_ip),
        ("port", "port", "error", lambda d: d.port),
        ("nodePort", "node_port", "error", lambda d: d.node_port),
        ("external/LoadBalancer IPs", "ips", "error", lambda d: d.ips),
        ("externalTrafficPolicy", "etp", "warning", lambda d: d.external_traffic_policy),
        ("internalTrafficPolicy", "itp", "warning", lambda d: d.internal_traffic_policy),
        ("session affinity timeout", "affinity", "warning", lambda d: d.affinity),
        ("loadBalancerSourceRanges", "ranges", "error", lambda d: d.ranges),
        ("healthCheckNodePort", "hc", "warning", lambda d: d.health_check_node_port),
    ]
    for title, _name, severity, get in fields:
        values = {n: get(p.digest) for n, p in ports.items()}
        # Unknown on a node (no endpoint chains to read it from) is no disagreement.
        values = {n: v for n, v in values.items() if v is not None}
        if len(set(values.values())) <= 1:
            continue
        ref, strict = majority(values)
        for n, v in values.items():
            if strict and v == ref:
                continue
            others = sorted({f"{o}={_shown(values[o])}" for o in values if values[o] != v})
            add(n, FORWARDING_DIFFERS, severity, key,
                f"{key}: {title} is {_shown(v)} on this node, {_shown(ref) if strict else 'different'} on other "
                "nodes",
                f"Other nodes: {listing(others)}. One kube-proxy has not applied the Service's current spec. "
                f"{NOT_SYNCING}.",
                "audit with --cluster/--kubeconfig to see which nodes agree with the API; restart the stale "
                "kube-proxy", ports[n], ports[n].head_lines)
    sigs = {n: p.digest.signature for n, p in ports.items()}
    if len(set(sigs.values())) <= 1:
        return
    addresses = {n: {a for a, _ in sig} for n, sig in sigs.items()}
    ref, strict = majority(sigs)
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
        port = ports[n]
        lines = port.endpoint_lines(extra)
        if not extra and not missing:
            add(n, FORWARDING_DIFFERS, "warning", key,
                f"{key}: same endpoints as the other nodes but different probabilities",
                "kube-proxy always splits evenly (1/n, 1/(n-1), …); different probabilities mean the rules were "
                "edited by hand or by another tool.", "let kube-proxy rewrite the rules (restart it)",
                port, port.endpoint_lines())
            continue
        parts = []
        if extra:
            parts.append(f"DNATs to {listing(extra, 4)}, which " +
                         ("the other nodes do not have" if strict else "no other node has"))
        if missing:
            parts.append(f"misses {listing(missing, 4)}")
        if not mine:
            parts.append("REJECTs (no endpoints)" if port.digest.no_endpoints else "has no endpoints")
        severity: Severity = "error" if extra or not mine else "warning"
        add(n, ENDPOINTS_DIFFER, severity, key, f"{key}: this node " + "; ".join(parts),
            "Every node's kube-proxy sends a Service port to the same endpoints (its KUBE-SVC chain in iptables "
            "mode, its service-… chain in nftables mode; only the local ones of a Local traffic policy differ). "
            "This node's list is " +
            ("older than the others'" if strict and extra else "different from the others'") +
            f". {NOT_SYNCING}.",
            "restart kube-proxy on this node once it can sync; audit with --cluster/--kubeconfig to confirm "
            "against the EndpointSlices", port, lines or port.head_lines)


def _stale_summaries(proxied: Sequence[_NodeState], skewed: Mapping[str, str]) -> list[Finding]:
    """A node-level finding for each node whose kube-proxy looks behind: it has per-service disagreements
    and some other node has none. On a node running another kube-proxy version or proxy mode (`skewed`: node ->
    the finding that says so) the differences may be the version's or the mode's, so it is not called stale."""
    counts = {s.name: [f for f in s.findings if f.id in _STALE_IDS] for s in proxied}
    clean = [n for n, fs in counts.items() if not fs]
    out: list[Finding] = []
    if not clean:
        return out
    # A node that differs where a node of its own mode and layout does not: neither explains the difference.
    kinds = {s.name: (s.primary.proxy.mode, s.primary.proxy.name) for s in proxied if s.primary is not None}
    clean_kinds = {kinds.get(n) for n in clean}
    skewed = {n: why for n, why in skewed.items() if kinds.get(n) not in clean_kinds}
    kube_nodes = {s.name: s.kube_node for s in proxied}
    # (a node whose kube-proxy was not running: its pod's log says why, a new pod would fail alike)
    down = {s.name: f for s in proxied for f in s.result.extra if f.id == KUBE_PROXY_DOWN}
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
                f"{n}: {counted(len(services), 'Service port')} forwarded differently ({errors} serious); "
                f"{matching}; this node runs kube-proxy in another {what} (see {skewed[n]})",
                f"Service ports that differ: {listing(services, 8)}. The differences may come from the {what}, "
                f"or from a kube-proxy that stopped syncing.",
                down[n].fix if n in down else f"run the fleet's kube-proxy {what} on {n}, then audit again"))
            continue
        out.append(Finding(
            KUBE_PROXY_STALE, "error" if errors else "warning", n, None,
            f"{n}: kube-proxy looks stale: {counted(len(services), 'Service port differs', 'Service ports differ')} "
            f"({errors} serious); "
            f"{matching}",
            f"Service ports that differ: {listing(services, 8)}. " + (
                f"kube-proxy on this node was not running when it was collected ({KUBE_PROXY_DOWN})."
                if n in down else f"{NOT_SYNCING}."),
            down[n].fix if n in down else
            f"restart kube-proxy on {n} ({_delete_kube_proxy_pod(kube_nodes.get(n))}) and check its logs"))
    return out


def _delete_kube_proxy_pod(kube_node: str | None) -> str:
    """The command that restarts a node's kube-proxy (its DaemonSet makes the pod again): by the Node object's
    name when cluster data matched the node (the label collect --via api finds kube-proxy's pods by), else
    for the person to fill in."""
    if kube_node is None:
        return "kubectl -n kube-system delete pod <its kube-proxy pod>"
    return f"kubectl -n kube-system delete pod -l k8s-app=kube-proxy --field-selector spec.nodeName={kube_node}"
