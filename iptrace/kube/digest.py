"""One node of an audit, reduced to what the fleet needs of it: its row, its own findings (the API comparison,
made where its rules are), and a digest per Service port for the comparison between nodes — the values kube-
proxy must agree on across nodes and the text of the rules that would be evidence. A digest holds no line
numbers (they are the node's, in `FamilyDigest.lines`), so that the nodes that program a port alike share one
digest object: a fleet of hundreds of nodes is kept in little more memory than one node's rules.
Dataplane-free and pure: digests are made from an iptrace.kube.analysis.Analysis, never from files.
"""

from __future__ import annotations

import functools
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter, itemgetter
from typing import Any

from iptrace.kube.claims import claim_findings, claim_lines, claims_of
from iptrace.kube.cluster import ClusterState
from iptrace.kube.compare import (
    KUBE_PROXY_DOWN,
    LOAD_ERROR,
    MODE_SPLIT,
    Finding,
    compare_with_cluster,
    view_service_label,
)
from iptrace.kube.evidence import endpoint_rules
from iptrace.kube.view import EXTERNAL, HEALTH_CHECK, KubeView, ServicePortView
from iptrace.layout import ONE_MODE_FIX, ProxyMode
from iptrace.records import positional_new
from iptrace.text import counted

# A node whose nft listing, the dump that answers for it, collect found nft could not read in full.
NFT_MISREAD_SAID = "the nft-ruleset.txt analysed may be wrong"

HEAD = 4  # lines of a Service port shown as evidence when no endpoint line says more (audit.py)


@dataclass(frozen=True, slots=True)
class PortDigest:
    """One Service port of one node as the cross-node comparison reads it (audit._peer_compare_port). The
    evidence texts go with the node's lines position by position: `head` with its first HEAD rule lines, then
    one text per endpoint (`endpoints`: address, in the cluster chain, rule text) with that endpoint's line."""

    key: str
    cluster_ip: str | None
    port: int | None
    node_port: int | None
    ips: tuple[str, ...]
    external_traffic_policy: str | None
    internal_traffic_policy: str | None
    affinity: int | None  # the session affinity timeout, when the port has endpoints
    ranges: tuple[str, ...] | None  # loadBalancerSourceRanges, when it has endpoints and LB IPs
    health_check_node_port: int | None
    signature: tuple[tuple[str, float], ...]  # the cluster chain's endpoints and shares
    endpoints: tuple[tuple[str, bool, str], ...]
    no_endpoints: bool
    head: tuple[str, ...]
    # How each kind of client fares through each way in (kind, address or "", port, protocol, ((client, verdict,
    # reaches its own chains), …)): what a node's own rules change (a host firewall, the order of shared addresses)
    ways: tuple[tuple[str, str, int, str, tuple[tuple[str, str, bool], ...]], ...] = ()

    @property
    def slots(self) -> int:
        return len(self.head) + len(self.endpoints)


@dataclass(frozen=True, slots=True)
class FamilyDigest:
    """A node's Service ports in one IP family: sorted by key, one per key (the last, as the comparison reads a
    view), with the node's lines for their evidence slots, one after the other. `pictures`, when asked for, are
    the ports as the HTML report draws them (lines left out); `compared`, with cluster data, the findings of
    compare_with_cluster."""

    family: str
    proxy: ProxyMode
    warnings: tuple[str, ...]
    services: int
    ports: tuple[PortDigest, ...]
    lines: array | ShiftedLines  # type: ignore[type-arg]
    compared: tuple[Finding, ...] = ()
    pictures: tuple[tuple[str, ServicePortView], ...] | None = None
    # the node address its NodePorts were traced to ("" for a stand-in: its addresses were unknown)
    node_address: str = ""
    # For input without lines (nft -j): the table whose kernel handles `lines` are (`ip kube-proxy`): evidence says
    # `handle N` (evidence_slots)
    handles_of: str = ""

    @property
    def proxied(self) -> bool:
        """kube-proxy's Service rules (iptables or nftables mode) are in this family."""
        return self.proxy.mode in ("iptables", "nftables")

    def port_lines(self) -> Iterable[tuple[PortDigest, array]]:  # type: ignore[type-arg]
        """Every port with its lines."""
        lines = self.lines.array() if isinstance(self.lines, ShiftedLines) else self.lines
        at = 0
        for p in self.ports:
            n = p.slots
            yield p, lines[at:at + n]
            at += n


class ShiftedLines:
    """A node's lines (FamilyDigest.lines) kept as another node's, `base`, each moved by `shift`, but for those at
    the positions `at` (ascending), which are `values`: the nodes of one cluster list their Service ports in one
    order, and most of their lines lie at one distance from another node's (5,000-Service nodes of the bench
    fleet: 66,000 of 69,000). An audit's parent keeps every node's lines until it compares them: 0.28 MB a node
    as an array, ~25 KB so."""

    __slots__ = ("at", "base", "shift", "values")

    def __init__(self, base: array, shift: int, at: array, values: array) -> None:  # type: ignore[type-arg]
        self.base = base
        self.shift = shift
        self.at = at
        self.values = values

    @classmethod
    def of(cls, lines: array, base: array) -> ShiftedLines | None:  # type: ignore[type-arg]
        """`lines` kept so, when no more than a quarter of them lie elsewhere; None when more do."""
        if len(lines) != len(base) or not lines:
            return None
        shift = lines[0] - base[0]
        at = array("I", [i for i, d in enumerate(map(int.__sub__, lines, base)) if d != shift])
        if 4 * len(at) > len(lines):
            return None
        return cls(base, shift, at, array("I", [lines[i] for i in at]))

    def array(self) -> array:  # type: ignore[type-arg]
        """The lines, as the node gave them."""
        return array("I", self.tolist())

    def window(self, start: int, stop: int) -> array:  # type: ignore[type-arg]
        """`array()[start:stop]`, made alone."""
        lines = list(map(self.shift.__add__, self.base[start:stop]))
        at = self.at
        for k in range(bisect_left(at, start), bisect_left(at, stop)):
            lines[at[k] - start] = self.values[k]
        return array("I", lines)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[int]:
        return iter(self.array())

    def tolist(self) -> list[int]:
        """The lines as a list (what a merge document prints), made as such, not through an array."""
        lines = list(map(self.shift.__add__, self.base))  # (those at `at` may be negative before they are set)
        for i, value in zip(self.at, self.values, strict=True):
            lines[i] = value
        return lines

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ShiftedLines):
            other = other.array()
        return self.array() == other if isinstance(other, array) else NotImplemented


# A node's error in the report (and the JSON a merge reads) when the audit could not collect it.
NOT_COLLECTED = "could not be collected: "


@dataclass(frozen=True, slots=True)
class NodeResult:
    """What an audit keeps of one node: enough for its row, its findings and the comparison with the others.
    `kube_node`: the Node object it was matched with (cluster data). `extra`: the node's own findings, which the
    comparison between nodes does not make (address conflicts, its conntrack table, what its meta.json says:
    kube-proxy not running, both proxy modes, a failed collection). `notes`: what reading it said on the way
    (for stderr). `explain_at`: the DUMP argument (shell-quoted) and --node-ip options `iptrace explain` reads
    the node's rules as the audit read them, None when there is none to name (stdin, a collection the audit did
    not keep)."""

    name: str
    error: str | None = None
    addresses: tuple[str, ...] = ()
    host: str = ""
    kube_node: str | None = None
    legacy_note: str | None = None
    load_warnings: tuple[str, ...] = ()
    families: tuple[FamilyDigest, ...] = ()
    extra: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    explain_at: str | None = field(default=None, compare=False)

    def family(self, name: str) -> FamilyDigest | None:
        return next((f for f in self.families if f.family == name), None)

    @property
    def primary(self) -> FamilyDigest | None:
        """The family that says the node's mode, layout and cluster: the first with kube-proxy's rules (IPv4 before
        IPv6; an IPv6-only node's IPv4 table holds only kubelet's chains), else the first."""
        ordered = [f for f in (self.family("ipv4"), self.family("ipv6")) if f is not None]
        return next((f for f in ordered if f.proxied), ordered[0] if ordered else None)

    @property
    def proxied(self) -> bool:
        return any(f.proxied for f in self.families)


def port_digest(sp: ServicePortView, texts: Mapping[int, str], intern: dict[Any, Any] | None = None,
                label: str | None = None) -> tuple[PortDigest, list[int]]:
    """The digest of one Service port and its evidence lines (`texts`: line -> the rule's text; for input without
    lines, handles: see evidence_slots). `intern`: the digests made before, by their fields' values (a digest equal
    to one of them is that one); `label`: the port's view_service_label, when known."""
    head_lines, at = evidence_slots(sp)
    # (each endpoint's address made once: a node's digests read ~50,000 of them)
    endpoints = tuple([(ep.address, ep.in_cluster_chain, texts.get(x, "") if x else "")
                       for ep, x in zip(sp.endpoints, at, strict=True)])
    has_endpoints = bool(endpoints)
    signature = sorted([(address, round(ep.probability, 6))
                        for ep, (address, in_cluster, _) in zip(sp.endpoints, endpoints, strict=True) if in_cluster])
    values = (
        view_service_label(sp) if label is None else label, sp.cluster_ip, sp.port, sp.node_port,
        tuple(sorted({*sp.external_ips, *sp.lb_ips})),
        sp.external_traffic_policy, sp.internal_traffic_policy,
        sp.session_affinity_timeout if has_endpoints else None,
        tuple(sorted(sp.lb_source_ranges)) if has_endpoints and sp.lb_ips else None, sp.health_check_node_port,
        tuple(signature), endpoints, sp.no_endpoints, tuple([texts.get(x, "") if x else "" for x in head_lines]),
        tuple([(e.kind, e.address or "", e.port, e.protocol,
                ((EXTERNAL, e.verdict, bool(e.via)), *[(p.source, p.verdict, bool(p.via)) for p in e.paths]))
               for e in sp.entries if e.kind != HEALTH_CHECK]))
    # (looked up by the values, a plain tuple: PortDigest's own __hash__ and __eq__ are Python calls that build
    # such a tuple each time, and an equal digest is then not made at all)
    digest = intern.get(values) if intern is not None else None
    if digest is None:
        digest = _new_digest(*values)
        if intern is not None:
            intern[values] = digest
    return digest, [*head_lines, *at]


def evidence_slots(sp: ServicePortView) -> tuple[list[int], list[int]]:
    """A port's evidence slots: its first HEAD rules and each endpoint's rule (0: none), by line; for input without
    lines (nft -j), by kernel handle: its view's rules' handles, an endpoint's its chain's DNAT rule's."""
    return list((sp.handles or sp.lines)[:HEAD]), endpoint_rules(sp, sp.endpoints)


# PortDigest(…) with every field given in order, without the frozen dataclass's __init__ (a node makes thousands).
_new_digest = positional_new(PortDigest, [f.name for f in fields(PortDigest)])


def _family_digest(analysis: Any, cluster: ClusterState | None, kube_node: str | None, node: str, pictures: bool,
                   intern: dict[Any, Any] | None, more: set[int]) -> tuple[FamilyDigest, dict[int, str]]:
    """One family of one node (an iptrace.kube.analysis.Analysis; `intern` shares equal digests between the nodes
    a process digests), and the text of each line its digests quote and of each of `more` (read in the same pass
    over the rules: the node's claims quote some)."""
    view: KubeView = analysis.view
    ruleset = analysis.ruleset
    by_key: dict[str, ServicePortView] = {}
    for sp in view.services:
        by_key[view_service_label(sp)] = sp  # the last one of a key, as the comparison reads a view
    wanted: set[int] = set()
    for sp in by_key.values():
        wanted.update(sp.lines[:HEAD])
        wanted.update(map(_LINE, sp.endpoints))
    wanted -= _NO_LINES  # (a line 0 is none)
    # (an iptables ruleset finds them all in one pass over its rules: one by one is ~2 µs a line)
    texts = {x: t or "" for x, t in ruleset.line_texts(wanted | more if more else wanted).items()}
    quoted, handles_of = texts, ""
    if any(sp.handles for sp in by_key.values()):  # (input without lines, nft -j: its rules by kernel handle)
        handles: set[int] = set()
        for sp in by_key.values():
            head, at = evidence_slots(sp)
            handles.update(head, at)
        handles.discard(0)
        handles_of, quoted = ruleset.handle_texts(analysis.family, handles)
    ports: list[PortDigest] = []
    lines = array("I")
    for key in sorted(by_key):
        digest, mine = port_digest(by_key[key], quoted, intern, key)
        ports.append(digest)
        lines.extend(mine)
    compared: tuple[Finding, ...] = ()
    if cluster is not None and view.proxy.mode in ("iptables", "nftables"):
        compared = tuple(compare_with_cluster(analysis, cluster, node_name=kube_node, node=node))
    return FamilyDigest(analysis.family, view.proxy, family_warnings(analysis), len(view.services), tuple(ports),
                        lines, compared, _pictures(view) if pictures else None, traced_node_address(analysis),
                        handles_of), texts


def traced_node_address(analysis: Any) -> str:
    """The node address an Analysis traces NodePorts to, "" when a stand-in (FamilyDigest.node_address)."""
    clients = analysis.views.clients
    return "" if clients.node_unknown else str(clients.node_address)


def family_warnings(analysis: Any) -> tuple[str, ...]:
    """The layout's warnings of a family, and, where --lenient read past problems and found no kube-proxy rules,
    that they may be in what could not be read (the report must not send its reader after a stopped kube-proxy
    for a truncated dump)."""
    layout = analysis.layout
    skipped = analysis.ruleset.skipped
    if not skipped or layout.proxy.has_rules:
        return tuple(layout.warnings)
    where = f"line {skipped[0].line}: " if skipped[0].line else ""
    return (f"its dump was read with --lenient past {counted(len(skipped), 'problem')} (first: {where}"
            f"{skipped[0].message}): kube-proxy's rules may be in what could not be read", *layout.warnings)


_LINE = attrgetter("line")  # (an EndpointView's)
_NO_LINES: frozenset[int | None] = frozenset({0, None})


_QUOTED = itemgetter(2)  # (a PortDigest endpoint's text)


def _pictures(view: KubeView) -> tuple[tuple[str, ServicePortView], ...]:
    """Per key the port the report draws: kube-proxy's main one when several fragments name it (the most
    chains, then entries), its lines (and nft JSON input's handles) left out (the picture shows none)."""
    from dataclasses import replace

    chosen: dict[str, ServicePortView] = {}
    for sp in view.services:
        key = view_service_label(sp)
        if key not in chosen or (len(sp.chains), len(sp.entries)) > (len(chosen[key].chains),
                                                                     len(chosen[key].entries)):
            chosen[key] = sp
    out = []
    for key in sorted(chosen):
        sp = chosen[key]
        entries = tuple(replace(e, lines=(), paths=tuple(replace(p, decided_by=0) for p in e.paths))
                        for e in sp.entries)
        out.append((key, replace(sp, lines=(), endpoints=tuple(replace(ep, line=0) for ep in sp.endpoints),
                                 entries=entries, handles=(), dnat_handles=())))
    return tuple(out)


def node_result(node: Any, cluster: ClusterState | None = None, *, pictures: bool = False,
                intern: dict[Any, Any] | None = None, extra: Sequence[Finding] = (),
                notes: Sequence[str] = (), carried: Any = None, explain_at: str | None = None) -> NodeResult:
    """The NodeResult of an iptrace.kube.audit.NodeInput. `carried`: an iptrace.kube.carried.Carried, whose
    digests of earlier nodes stand for ports of this one without cluster data or pictures."""
    from iptrace.kube.audit import kube_node_for

    meta = node.meta or {}
    kube_node = kube_node_for(node.name, node.addresses, cluster, meta)
    families: list[FamilyDigest] = []
    # (addresses several Service ports claim: which one takes them differs from node to node)
    claims: list[Finding] = []
    for a in node.analyses.values():
        if carried is not None and cluster is None and not pictures:
            done = carried.family_digest(a, intern)
            if done is not None:  # (no address is claimed twice: no claims)
                families.append(done)
                continue
        found = claims_of(a.view)
        # (the lines the claims quote are read in the digest's pass over the rules, not in a pass of their own)
        digest, texts = _family_digest(a, cluster, kube_node, node.name, pictures, intern, claim_lines(found))
        families.append(digest)
        claims += claim_findings(a.view, node.name, functools.partial(_quoted, texts), found,
                                 a.ruleset.elements_at)
    warnings = meta.get("load_warnings")
    split, then = meta.get("mode_split"), "; until then compare both dumps"
    if not isinstance(split, str):
        # (one ruleset with both: an nft ruleset whose iptables-nft `nat` table still holds iptables mode's rules)
        split, then = next((f"{f.proxy.other_mode}, beside kube-proxy's {f.proxy.mode}-mode rules. The kernel runs "
                            "both, and the first DNAT decides: of equal priorities, the chain created later runs first "
                            "(`iptrace trace` follows that order)" for f in families
                            if f.proxy.has_rules and f.proxy.other_mode), None), ""
    if isinstance(split, str):
        extra = (*extra, Finding(
            MODE_SPLIT, "warning", node.name, None, f"{node.name}: kube-proxy's rules in both proxy modes "
            "(iptables and nftables)", split.removeprefix(f"{node.name}: "),
            ONE_MODE_FIX + then))
    failed = meta.get("failed_attempt_note")
    if isinstance(failed, str):
        # (collected through the API, as where SSH is closed: again that way, and the node is its Node's name)
        again = f"--via api {node.name}" if meta.get("via") == "api" else "NODE"
        extra = (*extra, Finding(
            LOAD_ERROR, "warning", node.name, None, f"{node.name}: its last collection failed; its rules are from an "
            "earlier one", failed, f"collect this node again (`iptrace collect {again} --out DIR` writes the node's "
            "directory anew)"))
    misfiled = meta.get("misfiled")
    if isinstance(misfiled, str):
        extra = (*extra, Finding(
            LOAD_ERROR, "warning", node.name, None, f"{node.name}: a dump holds the other IP family's rules",
            misfiled.removeprefix(f"{node.name}: "), "put iptables-save's output in iptables-save.txt and "
            "ip6tables-save's in ip6tables-save.txt"))
    misread = meta.get("nft_misread")
    if isinstance(misread, str):
        extra = (*extra, Finding(
            LOAD_ERROR, "warning", node.name, None, f"{node.name}: {NFT_MISREAD_SAID}",
            f"When it was collected: {misread}. Its Service ports may be missing or read wrongly here.",
            "collect it again with an nft as new as the one that wrote the rules (`iptrace collect --via api` runs "
            "kube-proxy's own)"))
    down = meta.get("kube_proxy_down")
    if isinstance(down, str):  # (collect --via api read it off the pod's status: the cause of stale rules)
        extra = (*extra, not_running(node.name, down))
    return NodeResult(node.name, node.error, tuple(node.addresses), str(meta.get("host", "") or ""), kube_node,
                      node.legacy_note, tuple(str(w) for w in warnings) if isinstance(warnings, list) else (),
                      tuple(families), (*claims, *extra), (*_lenient_notes(node), *notes), explain_at)


def not_running(node: str, down: str) -> Finding:
    """The kube-proxy-not-running finding of a node whose meta.json says `kube_proxy_down` ("NS/POD: why", as
    collect --via api read it off the pod's status). Its fix reads why: the last run's log when the container
    ran before (a crash loop), else the pod's events (an image that cannot be pulled, a bad config map)."""
    pod, _, why = down.partition(": ")
    namespace, _, name = pod.partition("/")
    if not name or not why:  # (not as collect writes it: said as it is, the pod left for the person to name)
        namespace, name, why = "kube-system", "<its kube-proxy pod>", down
    ran = "restarted" in why or "exited" in why
    fix = (f"read why its last run ended: `kubectl -n {namespace} logs {name} --previous`; fix that, then audit "
           "again (deleting the pod does not help: its new container fails alike)") if ran else (
        f"read why its container does not start: `kubectl -n {namespace} describe pod {name}` (its events); fix "
        "that, then audit again")
    return Finding(
        KUBE_PROXY_DOWN, "error", node, None, f"{node}: kube-proxy is not running ({why})",
        f"When the node was collected, kube-proxy's container in {namespace}/{name} was not running: {why}. The "
        "node's rules are as kube-proxy last wrote them: a Service or endpoint changed since is not applied here, "
        "and what else this audit finds on the node may come from that.", fix)


def _lenient_notes(node: Any) -> list[str]:
    """--lenient: what each of the node's dumps was read past (its findings leave that out)."""
    out = []
    for ruleset in {id(a.ruleset): a.ruleset for a in node.analyses.values()}.values():
        skipped = ruleset.skipped
        if skipped:
            first = skipped[0]
            where = f"line {first.line}: " if first.line else ""
            many = "s" if len(skipped) != 1 else ""
            out.append(f"note: {node.name}: {ruleset.source} read with --lenient past {len(skipped)} problem{many} "
                       f"(first: {where}{first.message})")
    return out


def _quoted(texts: Mapping[int, str], lines: Iterable[int]) -> dict[int, str | None]:
    """Ruleset.line_texts of `lines`, all of them in `texts` (a missing line's text is "" here, None there: the
    claims read both as "")."""
    return {n: texts.get(n) for n in lines}
