"""kube-proxy's view of every Service port on one node: every way in, every endpoint, for every kind of client.

Built from two things a dataplane gives through its interface: its `Layout` (iptrace.layout: which chains make up
each Service port, read statically) and its `Tracer` (iptrace.dataplane: the walk `iptrace trace` runs). Every
verdict, endpoint, share and masquerade decision below is read off a trace of a representative packet — one per way
in and kind of client — so the view and a trace of the same packet cannot disagree. Dataplane-free and pure.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import fields, replace
from functools import partial
from sys import intern
from typing import Any

from iptrace.dataplane import Outcome, Packet, PortShape, RuleAt, Trace, Tracer, packet_of
from iptrace.kube import shapes  # (ports of one shape: read when used, it builds on this module)
from iptrace.kube.clients import (
    CLIENT_WORDS,
    EXTERNAL,
    NODE,
    OUTSIDE_RANGES,
    POD,
    SOURCES,
    Clients,
    view_node_ips,
)
from iptrace.kube.names import split_destination, split_service_port_name
from iptrace.kube.sharing import ADDRESS_KINDS, shared_claims
from iptrace.kube.view_model import (
    MASQ_ALWAYS,
    MASQ_NEVER,
    MASQ_OFF_POD,
    EndpointView,
    EntryView,
    KubeView,
    PortFacts,
    PortLayout,
    Reach,
    ServicePortView,
    SourcePath,
)
from iptrace.layout import (
    CLUSTER_IP,
    EXTERNAL_IP,
    HEALTH_CHECK,
    LOAD_BALANCER,
    NODE_PORT,
    Layout,
    NodePortAddresses,
    ServicePortLayout,
    WayIn,
)
from iptrace.records import positional_new
from iptrace.routes import SENT_NOWHERE

__all__ = [
    "CLUSTER_IP", "EXTERNAL", "EXTERNAL_IP", "HEALTH_CHECK", "LOAD_BALANCER", "MASQ_ALWAYS", "MASQ_NEVER",
    "MASQ_OFF_POD", "NODE", "NODE_PORT", "OUTSIDE_RANGES", "POD", "SOURCES", "EndpointView", "EntryView",
    "KubeView", "NodePortAddresses", "PortFacts", "Reach", "ServicePortView", "SourcePath", "build_view",
    "split_destination", "split_service_port_name", "view_node_ips",
]


def _positional_new(cls: type) -> Callable[..., object]:
    """`cls(*values)` for a frozen slots dataclass, every field given, without its generated `__init__`."""
    return positional_new(cls, [f.name for f in fields(cls)])


_new_endpoint = _positional_new(EndpointView)
_new_path = _positional_new(SourcePath)
_new_entry = _positional_new(EntryView)
_new_service = _positional_new(ServicePortView)


# ------------------------------------------------------------------------------------------------ reading traces


# Reaches by the (destination, probability) of the DNAT outcomes read, process-wide (immutable): every kind of
# client and way in of a Service port reaches the same endpoints with the same shares, and one tuple then
# stands for them all. Starts again when full.
_REACHES: dict[tuple[tuple[str | None, ...], tuple[float, ...]], tuple[Reach, ...]] = {}
REACHES_LIMIT = 20_000
_LAST_REACHES: list[tuple[Any, Any]] = [((), ())]  # the last key read and its reaches
_new_reach = tuple.__new__  # Reach(endpoint, probability) without the NamedTuple's Python-level __new__


def _reaches(dnat: Sequence[Outcome]) -> tuple[Reach, ...]:
    """The endpoints DNAT outcomes reach, each with its summed probability, in order of first appearance."""
    key = (tuple([o.destination for o in dnat]), tuple([o.probability for o in dnat]))
    last = _LAST_REACHES[0]
    if key == last[0]:  # (the kinds of client of a way in, one after the other: compared, not hashed)
        return last[1]  # type: ignore[no-any-return]
    found = _REACHES.get(key)
    if found is None:
        acc: dict[str, float] = {}
        for destination, probability in zip(*key, strict=True):
            if destination is not None:
                acc[destination] = acc.get(destination, 0.0) + probability
        # Interned: every kind of client and way in reaches the same endpoints, each outcome with its own string.
        found = tuple([_new_reach(Reach, (intern(ep), p)) for ep, p in acc.items()])
        if len(_REACHES) >= REACHES_LIMIT:
            _REACHES.clear()
        _REACHES[key] = found
    _LAST_REACHES[0] = (key, found)
    return found


def _via(outcome: Outcome | None, own: frozenset[str]) -> tuple[str, ...]:
    """The Service port's own chains the outcome's path crossed, in order (dispatch and endpoint chains are
    not listed: the entry names the first, the endpoints the last)."""
    if outcome is None:
        return ()
    return tuple(dict.fromkeys([chain for _table, chain in outcome.chains if chain in own]))


def _source_path(source: str, trace: Trace, own: frozenset[str] | None) -> SourcePath:
    """What `source` gets by `trace`; its `via` left empty when `own` is None (an entry reads the via of the
    kinds of client it lists only: those that fare differently from the external client)."""
    outcomes = trace.outcomes
    dnat = [o for o in outcomes if o.verdict == "DNAT"]
    if dnat:
        masq = False
        for o in dnat:
            if o.masquerade:
                masq = True
                break
        return _new_path(source, "DNAT", _via(dnat[0], own) if own is not None else (), _reaches(dnat), masq, 0)
    if not outcomes:
        return _new_path(source, "CONTINUE", (), (), False, 0)
    best = max(outcomes, key=lambda o: o.probability)
    decided = best.decided_by
    where: int | RuleAt = 0
    if decided is not None and decided.policy is None:
        where = decided.line or (RuleAt(decided.table, decided.chain, decided.handle) if decided.handle is not None
                                 else 0)
    return _new_path(source, best.verdict, _via(outcomes[0], own) if own is not None else (), (), False, where)


def _marked_for_drop(trace: Trace) -> bool:
    """The packet crossed iptables' KUBE-MARK-DROP without being dropped: kubelet's KUBE-FIREWALL drops
    marked packets only in INPUT and OUTPUT, i.e. when the node itself holds the destination."""
    for o in trace.outcomes:  # (a loop, not a generator: DNAT outcomes, nearly all of them, cost one test)
        verdict = o.verdict
        if (verdict == "ACCEPT" or verdict == "CONTINUE") and any(c == "KUBE-MARK-DROP" for _t, c in o.chains):
            return True
    return False


# ------------------------------------------------------------------------------------------------ building


# Packets by (src, dst, port, proto), process-wide (immutable): a view checks ~2×10^4, its shapes the same
# again, an audit's nodes the same ones (shared Service addresses). Starts again when full. Those from or to the node's
# own address or its pod client are the builder's (_Builder.own): other nodes have other such addresses, and kept here
# they were ~14,500 a node of a 5,000-Service fleet, ~6 MB of a worker's caches on average between two clearings.
_PACKETS: dict[tuple[str, str, int, str], Packet] = {}
PACKETS_LIMIT = 50_000


class _Builder:
    def __init__(self, layout: Layout, tracer: Tracer, clients: Clients) -> None:
        self.layout = layout
        self.tracer = tracer
        self.clients = clients
        self.own: dict[tuple[str, str, int, str], Packet] = {}
        self._own_addresses = frozenset((clients.node_address, clients.pod))

    def packet(self, src: str, dst: str, port: int, proto: str) -> Packet:
        key = (src, dst, port, proto)
        own = self._own_addresses
        kept = self.own if src in own or dst in own else _PACKETS
        found = kept.get(key)
        if found is None:
            if len(kept) >= PACKETS_LIMIT:
                kept.clear()
            found = kept[key] = packet_of(src, dst, port, proto)
        return found

    def probe(self, sp: ServicePortLayout) -> Packet:
        """The packet the cluster and local chains are entered with to read their endpoints."""
        probe = next((w for w in sp.ways_in if w.kind != HEALTH_CHECK), None)
        dst = (probe.address if probe is not None and probe.address else self.clients.node_address)
        port = probe.port if probe is not None else 1
        return self.packet(self.clients.external, dst, port, sp.protocol)

    def way_packets(self, sp: ServicePortLayout, way: WayIn) -> list[tuple[str, Packet]]:
        """(kind of client, its packet) for every client a way in is traced for (none for a health check)."""
        if way.kind == HEALTH_CHECK:
            return []
        clients = self.clients
        dst, sources = clients.packets(way, sp.lb_source_ranges, self.layout.family)
        found = [(kind, self.packet(src, dst, way.port, way.protocol)) for kind, src in sources]
        if clients.pod_interface is not None:  # (the rules tell pods by the interface they come in on)
            found = [(kind, replace(p, in_interface=clients.pod_interface) if kind == POD else p) for kind, p in found]
        return found

    def questions(self, sp: ServicePortLayout, kinds: list[tuple[str, ...]] | None = None) -> list[Any]:
        """Every trace `service(sp)` asks for, in its order, as (the chain entered directly or None, packet): what
        iptrace.kube.shapes keys a port's view by, unbuilt. `kinds`: told each way in's kinds of client."""
        packet = self.probe(sp)
        calls: list[Any] = [(chain, packet) for chain in (sp.cluster_chain, sp.local_chain) if chain is not None]
        for way in sp.ways_in:
            packets = self.way_packets(sp, way)
            calls.extend((None, p) for _kind, p in packets)
            if kinds is not None:
                kinds.append(tuple(kind for kind, _p in packets))
        return calls

    def endpoints(self, sp: ServicePortLayout) -> list[EndpointView]:
        """Every endpoint of the cluster and local chains, with its share, by walking each chain."""
        found: dict[str, list[object]] = {}  # destination -> [chain, line, share, local share, in cluster]
        packet = self.probe(sp)
        for chain, local in ((sp.cluster_chain, False), (sp.local_chain, True)):
            if chain is None:
                continue
            for o in self.tracer.trace_chain(chain, packet).outcomes:
                destination, decided = o.destination, o.decided_by
                if o.verdict != "DNAT" or destination is None or decided is None:
                    continue
                e = found.get(destination)
                if e is None:
                    e = found[destination] = [decided.chain, decided.line or 0, None, None, False]
                if local:
                    e[3] = (e[3] or 0.0) + o.probability  # type: ignore[operator]
                else:
                    e[2] = (e[2] or 0.0) + o.probability  # type: ignore[operator]
                    e[4] = True
        out = []
        for destination, (chain, line, share, local_share, in_cluster) in found.items():
            ip, port_ = split_destination(destination)
            ip = intern(ip)  # one string an endpoint (the rules' own when interned, as the nft loader does)
            probability = share if share is not None else local_share
            out.append(_new_endpoint(ip, port_, probability, local_share is not None, chain, local_share,
                                     in_cluster, line))
        return out

    def entry(self, sp: ServicePortLayout, way: WayIn, own: frozenset[str]) -> EntryView:
        if way.kind == HEALTH_CHECK:
            return EntryView(HEALTH_CHECK, None, way.port, "tcp", "", "ACCEPT", (), MASQ_NEVER, (), (),
                             notes=("kube-proxy's health check server for externalTrafficPolicy=Local",),
                             lines=way.lines)
        paths: dict[str, SourcePath] = {}
        traces: dict[str, Trace] = {}
        notes = list(way.notes)
        trace = self.tracer.trace
        for kind, packet in self.way_packets(sp, way):
            found = traces[kind] = trace(packet)
            path = paths[kind] = _source_path(kind, found, own if kind == EXTERNAL else None)
            if path.verdict == "DROP" or path.verdict == "REJECT":  # (by a rule, or by the node's routes: said)
                notes.extend(f"{CLIENT_WORDS[kind]}: {a}" for o in found.outcomes if o.decided_by is None
                             for a in o.assumptions if a.startswith(SENT_NOWHERE))
            if not _marked_for_drop(found):
                continue
            if way.kind == NODE_PORT:  # (its address is the node's, or the stand-in for it)
                notes.append(f"{CLIENT_WORDS[kind]}: marked by KUBE-MARK-DROP, which kubelet's KUBE-FIREWALL "
                             "drops (INPUT/OUTPUT): a nodePort is addressed to the node itself (no rule of this "
                             "dump drops it); it reaches no pod")
            else:
                notes.append(f"{CLIENT_WORDS[kind]}: marked by KUBE-MARK-DROP, which kubelet's KUBE-FIREWALL "
                             f"drops only if this node itself holds {packet.dst} (INPUT/OUTPUT); otherwise the "
                             "packet is forwarded unchanged and reaches no pod")
        main, pod_path, node_path = paths[EXTERNAL], paths[POD], paths[NODE]
        verdict = main.verdict
        # Only the kinds of client that are DNATed count: a pod blocked by source ranges masquerades nothing.
        main_masq, pod_masq, node_masq = [p.masquerade and p.verdict == "DNAT" for p in (main, pod_path, node_path)]
        masq_sources = (EXTERNAL,) * main_masq + (POD,) * pod_masq + (NODE,) * node_masq
        if main_masq:
            if (pod_path.masquerade or pod_path.verdict != "DNAT") and (node_path.masquerade or
                                                                        node_path.verdict != "DNAT"):
                masq = MASQ_ALWAYS
            else:
                masq = MASQ_OFF_POD
        else:
            masq = MASQ_NEVER
        main_reaches = main.reaches
        main_endpoints: set[str] | None = None
        others: list[SourcePath] = []
        for s, p in paths.items():
            if s != EXTERNAL and (p.verdict != verdict or p.reaches is not main_reaches):
                if p.verdict == verdict and main_endpoints is None:
                    main_endpoints = {r.endpoint for r in main_reaches}
                if p.verdict != verdict or {r.endpoint for r in p.reaches} != main_endpoints:
                    others.append(_source_path(s, traces[s], own))  # (now with its via)
        if masq == MASQ_NEVER and node_masq:
            notes.append("connections from the node itself are masqueraded")
        return _new_entry(way.kind, way.address, way.port, way.protocol, way.chain, verdict, main_reaches,
                          masq, masq_sources, main.via, tuple(others),
                          tuple(dict.fromkeys(notes)) if notes else (), way.lines)

    def service(self, sp: ServicePortLayout) -> ServicePortView:
        endpoints = self.endpoints(sp)
        own = frozenset(sp.chains).difference([e.chain for e in endpoints])
        return port_view(sp, endpoints, [self.entry(sp, way, own) for way in sp.ways_in])

    def facts(self, sp: ServicePortLayout) -> PortFacts:
        """The port's PortFacts: its view's values but for the traces of its ways in."""
        return PortFacts(*_port_fields(sp, sp.ways_in), entries=sp.ways_in,
                         external_traffic_policy=sp.external_traffic_policy,
                         no_local_endpoints=sp.no_local_endpoints,
                         session_affinity_timeout=sp.session_affinity_timeout, _endpoints=partial(self.endpoints, sp))


def port_view(sp: ServicePortLayout, endpoints: Sequence[EndpointView], entries: Sequence[Any]) -> ServicePortView:
    return _port(sp, _port_fields(sp, entries), tuple(endpoints), tuple(entries))


def port_shell(sp: ServicePortLayout) -> ServicePortView:
    """The view of `sp` without endpoints and entries: its other fields, as `port_view` writes them from entries
    made of its ways in (each entry's kind, address and port are its way's)."""
    return _port(sp, _port_fields(sp, sp.ways_in), (), ())


def _port(sp: ServicePortLayout, fields: tuple[Any, ...], endpoints: tuple[EndpointView, ...],
          entries: tuple[Any, ...]) -> ServicePortView:
    return _new_service(  # type: ignore[no-any-return]
        *fields, sp.external_traffic_policy, sp.internal_traffic_policy, sp.session_affinity_timeout, endpoints,
        entries, sp.no_endpoints, sp.no_local_endpoints, sp.chains, sp.lines, sp.identity, sp.notes, sp.handles,
        sp.dnat_handles)


def port_layout(sp: ServicePortLayout) -> PortLayout:
    """A Service port's PortLayout (its view's first fields, from its layout alone)."""
    return PortLayout(*_port_fields(sp, sp.ways_in), key=sp.key, chains=sp.chains, entries=sp.ways_in,
                      lines=sp.lines)


def _port_fields(sp: ServicePortLayout, entries: Sequence[Any]) -> tuple[Any, ...]:
    """A port's identity and addresses (PortIdentity's fields, in order), read off its ways in (or entries)."""
    if sp.name is not None:
        ns, svc, port_name = split_service_port_name(sp.name)
    else:
        ns, svc, port_name = "", sp.cluster_chain or (sp.chains[0] if sp.chains else sp.key), ""
    cluster, cluster_ip, port, node_port, external_ips, lb_ips = False, None, None, None, [], []
    for e in entries:  # (the first ClusterIP way gives the port, else the first externalIP or LB IP one)
        kind = e.kind
        if kind == CLUSTER_IP and not cluster:
            cluster, cluster_ip, port = True, e.address, e.port
        elif kind == NODE_PORT and node_port is None:
            node_port = e.port
        elif kind == EXTERNAL_IP or kind == LOAD_BALANCER:
            port = e.port if port is None and not cluster else port
            if e.address:
                (external_ips if kind == EXTERNAL_IP else lb_ips).append(e.address)
    return (ns, svc, port_name, sp.protocol, cluster_ip, port, node_port, tuple(external_ips), tuple(lb_ips),
            sp.lb_source_ranges, sp.health_check_node_port)


class ViewBuilder:
    """Builds the view of one Service port at a time (memoised), or of them all."""

    def __init__(self, layout: Layout, tracer: Tracer, *, source: str = "<dump>", node_ips: Sequence[str] = ()
                 ) -> None:
        self.layout = layout
        self.source = source
        self.clients = Clients.for_layout(layout, node_ips)
        self._builder = _Builder(layout, tracer, self.clients)
        self._shapes = shapes.ShapeMemo(self._builder)  # ports of one shape: the first one's view, their values
        self._ports: dict[str, ServicePortView] = {}
        self._facts: dict[str, PortFacts] = {}
        self._view: KubeView | None = None
        self._claims: dict[tuple[str, int, str], list[str]] | None = None

    def port(self, key: str) -> ServicePortView:
        found = self._ports.get(key)
        if found is None:
            enabled = gc.isenabled()
            gc.disable()
            try:
                found = self._ports[key] = self.claimed(key, self._shapes.service(self.layout.service_port(key)))
            finally:
                if enabled:
                    gc.enable()
        return found

    def questions(self, sp: ServicePortLayout) -> list[Any]:
        """The traces the view of `sp` asks for ((the chain entered directly or None, packet), in order)."""
        return self._builder.questions(sp)

    def way_packets(self, key: str, way: WayIn) -> list[tuple[str, Packet]]:
        """(kind of client, its packet) for every client the view traces a way in of Service port `key` for."""
        return self._builder.way_packets(self.layout.service_port(key), way)

    @property
    def claims(self) -> dict[tuple[str, int, str], list[str]]:
        """(address, port, protocol) -> the Service ports (keys) that claim it, where several do (read once)."""
        if self._claims is None:
            self._claims = shared_claims((k, w.kind, w.address, w.port, w.protocol) for k, w in self.layout.ways)
        return self._claims

    def claimed(self, key: str, view: ServicePortView) -> ServicePortView:
        """`view` with a note on each way in whose address, port and protocol another Service port claims too
        (two Services listing one externalIP, or another's ClusterIP: the API allows it, the first rule wins).
        A fact of the layout, not of a walk: added alike to views built and views made from a shape's."""
        claims = self.claims
        if not claims:
            return view
        entries = list(view.entries)
        for i, e in enumerate(entries):
            keys = claims.get((e.address or "", e.port, e.protocol)) if e.kind in ADDRESS_KINDS else None
            if not keys:
                continue
            others = [self.layout.service_port(k).name or k for k in keys if k != key]
            if e.verdict != "DNAT":
                here = ""
            elif e.via:
                here = " (here this Service port's)"
            else:
                here = f" (here {' or '.join(others)}'s: this way in reaches its pods)"
            entries[i] = replace(e, notes=(*e.notes, (
                f"also claimed by {', '.join(others)}: the first rule for {e.label} wins{here}, and the order can "
                f"differ from node to node (iptrace explain --dst {e.label}/{e.protocol})")))
        return replace(view, entries=tuple(entries)) if entries != list(view.entries) else view

    def port_facts(self, key: str) -> ServicePortView | PortFacts:
        """The port's view when it is built, else its PortFacts (which carry the same values)."""
        found: ServicePortView | PortFacts | None = self._ports.get(key)
        if found is None:
            found = self._facts.get(key)
            if found is None:
                found = self._facts[key] = self._builder.facts(self.layout.service_port(key))
        return found

    def view(self, progress: Callable[[int], None] | None = None) -> KubeView:
        """Every Service port's view (built once). `progress` is told how many ports are built, now and then."""
        if self._view is None:
            layout = self.layout
            enabled = gc.isenabled()
            gc.disable()  # ~10^5 small acyclic objects: the cyclic collector would only rescan the whole ruleset
            self._shapes.every_port()
            try:
                services = []
                for key in layout.keys:
                    services.append(self.port(key))
                    if progress is not None and len(services) % 100 == 0:
                        progress(len(services))
            finally:
                if enabled:
                    gc.enable()
            self._view = self._assemble(services)
        return self._view

    def shaped(self) -> list[ServicePortView | shapes.Shaped]:
        """Every Service port in the view's order, as `view` builds it, but a port whose view would be made from an
        earlier port's of its shape (shapes.ShapeMemo) and whose ways in no other port claims left unmade: what
        its view is made of (a Shaped), for a writer that writes its text from its shape's (`services -o json`:
        render.shaped). The views built are kept as `port` keeps them; the Shaped are not."""
        if self._view is not None:
            return list(self._view.services)
        layout, ports, memo = self.layout, self._ports, self._shapes
        claims = self.claims
        enabled = gc.isenabled()
        gc.disable()
        memo.every_port()
        out: list[ServicePortView | shapes.Shaped] = []
        try:
            for key in layout.keys:
                found: Any = ports.get(key)
                if found is None:
                    sp = layout.service_port(key)
                    found = memo.find(sp)
                    if type(found) is tuple:
                        if not claims or not any(claims.get((w.address or "", w.port, w.protocol))
                                                 for w in sp.ways_in if w.kind in ADDRESS_KINDS):
                            kept, shape = found  # (its values only: the key, ~3 KB, is read)
                            values = PortShape((), shape.addresses, shape.ports, shape.chains, shape.lines)
                            out.append(shapes.Shaped(sp, kept, values, self._builder, port_shell(sp)))
                            continue
                        found = memo.made(found, sp)
                    found = ports[key] = self.claimed(key, found)
                out.append(found)
        finally:
            if enabled:
                gc.enable()
        out.sort(key=lambda s: s.sort_key)
        return out

    def let_go(self, keys: Iterable[str]) -> None:
        """Forget the views built of these ports (a caller that reads each once: an audit's digests); asked again,
        one is built again."""
        for key in keys:
            self._ports.pop(key, None)

    def share_shapes(self, context: Hashable) -> None:
        """Port views by shape kept for and taken from the other nodes of this process of the same `context`
        (shapes.ShapeMemo.share)."""
        self._shapes.share(context)

    def tracing_done(self) -> None:
        """Build every port's view, then let the tracer go (Analysis.tracing_done): the views are kept."""
        self.view()
        del self._builder, self._shapes

    def view_of(self, keys: Iterable[str]) -> KubeView:
        """The view of these Service ports only, each built as `view` builds it, with the node-wide facts of the
        whole view (a question about a few Service ports of a big dump builds those)."""
        return self._assemble([self.port(key) for key in dict.fromkeys(keys)])

    def _assemble(self, services: list[ServicePortView]) -> KubeView:
        layout = self.layout
        services.sort(key=lambda s: s.sort_key)
        labels = {c: label for s in services for label in (s.label,) for c in s.chains}  # one str a port
        return KubeView(layout.proxy, tuple(services), labels, layout.node_port_addresses, layout.pod_cidrs,
                        layout.pod_interfaces, layout.masquerade_mark, layout.random_fully, layout.family,
                        layout.warnings, self.source, self.clients)


def build_view(layout: Layout, tracer: Tracer, *, source: str = "<dump>", node_ips: Sequence[str] = ()
               ) -> KubeView:
    """kube-proxy's view of every Service port of `layout`, each way in traced with `tracer` for every kind of
    client. `node_ips` are the node's own addresses (the tracer must know them too); NodePorts are traced to
    the first (or to a documentation placeholder when none is known: the tracer is then built with it)."""
    return ViewBuilder(layout, tracer, source=source, node_ips=node_ips).view()
