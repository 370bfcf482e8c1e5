"""What every diagnosis may ask of one node, indexed once (`Facts`), and one question (`Case`).

Built from an iptrace.kube.analysis.Analysis: the Service view, the layout and the dump's own lines (through
the dataplane interface), so a diagnosis costs dictionary look-ups, never a scan of the rules, and never
knows which dataplane wrote them. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from iptrace.dataplane import MapAt, Outcome, RuleAt, Ruleset, Step, Trace, join_host_port
from iptrace.explain.diagnosis import Diagnosis, Evidence
from iptrace.kube.analysis import ChainLabels
from iptrace.kube.evidence import EvidenceAt
from iptrace.kube.sharing import KIND_NAMES
from iptrace.layout import (
    CLUSTER_IP,
    EXTERNAL_IP,
    HEALTH_CHECK,
    NODE_PORT,
    SAME_RULE_NOTE,
    NodePortAddresses,
    ProxyMode,
)


def label(svc: Any) -> str:
    """kube-proxy's service port name: `ns/name:port`, or `ns/name` for an unnamed port."""
    return str(svc.label)


def finding_label(namespace: str, name: str, port_name: str, protocol: str) -> str:
    """How compare_with_cluster names a service port: `ns/svc:port`, with `/udp` (`/sctp`) when not TCP."""
    base = f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"
    return base if protocol.lower() == "tcp" else f"{base}/{protocol.lower()}"


def canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def addresses(svc: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if svc.cluster_ip:
        out.append((svc.cluster_ip, "ClusterIP"))
    out.extend((ip, "externalIP") for ip in svc.external_ips)
    out.extend((ip, "LoadBalancer IP") for ip in svc.lb_ips)
    return out


class _Lazy:
    """A look-up (`.get(key, default)`) that builds the Service port views it returns only when asked."""

    def __init__(self, find: Callable[[Any], list[Any]]) -> None:
        self._find = find
        self._cache: dict[Any, list[Any]] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._find(key)
        return found or default


# The steps of a way in's dispatch: a map element that sends it to its Service (or answers for it when it has no
# endpoints, or none on this node).
_WAY_KINDS = ("dispatch", "no-endpoints", "no-local-endpoints")


class Facts:
    """What every diagnosis may ask of one node, answered lazily: look-ups by address, nodePort, service port,
    endpoint and chain read the layout's index of ways in and give the Service ports they find as their views,
    or as PortFacts (the same values without tracing their ways in: no diagnosis reads those traces), and only
    those (a question about one address never builds the whole view)."""

    def __init__(self, analysis: Any, node_ips: Sequence[str], *, node_ips_given: bool = True,
                 pod_cidrs: Sequence[str] = ()) -> None:
        self.analysis = analysis
        self.node_ips = tuple(node_ips)
        self.node_ips_given = node_ips_given  # False when the node's addresses were guessed from the rules
        self.pod_cidrs = tuple(pod_cidrs)
        layout = analysis.layout
        self._layout = layout
        self._labels = ChainLabels(layout)
        # ip -> [(svc, "ClusterIP" | "externalIP" | "LoadBalancer IP")]
        self.by_address = _Lazy(self._at_address)
        self.node_ports = _Lazy(self._with_node_port)
        self.service_ports = _Lazy(self._with_service_port)
        self.by_endpoint_ip = _Lazy(lambda ip: [s for s in self._views(layout.endpoint_keys(ip))
                                                if any(ep.ip == ip for ep in s.endpoints)])
        self._service_port_keys: dict[int, dict[str, None]] | None = None
        self._node_port_keys: dict[int, dict[str, None]] | None = None
        self._service_nets: frozenset[Any] | None = None
        pod_nets = []
        for cidr in pod_cidrs:
            try:
                pod_nets.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                continue
        self.pod_nets = tuple(pod_nets)
        self._listing: str | None = None
        self._by_line: dict[int, str] | None = None
        self._by_name: dict[str | None, str] | None = None
        self.has_cluster = False
        # With cluster data: compare_with_cluster's findings by service port label, and which labels own an
        # address or a nodePort in the API (a Service missing from the rules is known only there).
        self.findings_by_label: dict[str, list[Diagnosis]] = {}
        self._compare: Callable[[list[str]], Iterable[Any]] | None = None  # the findings about some labels
        self._compared: set[str] = set()
        self.api_ports_by_address: dict[str, set[tuple[str, int, str]]] = {}  # (label, port, proto)
        self.api_labels_by_node_port: dict[int, set[str]] = {}
        # healthCheckNodePort -> the API Services (iptrace.kube.cluster.ClusterService) with it: nftables mode
        # writes no rule for one, so only the API can say what such a port of the node is
        self.api_health_checks: dict[int, list[Any]] = {}

    @classmethod
    def build(cls, analysis: Any, node_ips: Sequence[str], *, node_ips_given: bool = True,
              pod_cidrs: Sequence[str] = ()) -> Facts:
        return cls(analysis, node_ips, node_ips_given=node_ips_given, pod_cidrs=pod_cidrs)

    @property
    def view(self) -> Any:
        """The whole Service view (builds every Service port: only for questions about them all)."""
        return self.analysis.view

    @property
    def proxy(self) -> ProxyMode:
        return self._layout.proxy  # type: ignore[no-any-return]

    def _views(self, keys: Iterable[str]) -> list[Any]:
        return [self.analysis.port_facts(k) for k in dict.fromkeys(keys)]

    def _at_address(self, ip: str) -> list[tuple[Any, str]]:
        out: dict[str, str] = {}
        for key, way in self._layout.ways_at(ip):
            if way.kind in KIND_NAMES:  # (an address the rules cannot tell an externalIP from an LB IP: either)
                either = way.kind == EXTERNAL_IP and SAME_RULE_NOTE in way.notes
                out.setdefault(key, "externalIP or LoadBalancer IP" if either else KIND_NAMES[way.kind])
        return [(self.analysis.port_facts(k), kind) for k, kind in out.items()]

    def _with_service_port(self, port: int) -> list[Any]:
        if self._service_port_keys is None:  # (indexed once: a question never scans every Service port)
            index: dict[int, dict[str, None]] = {}
            for key, way in self._layout.ways:
                if way.kind in KIND_NAMES:
                    index.setdefault(way.port, {})[key] = None
            self._service_port_keys = index
        return [s for s in self._views(self._service_port_keys.get(port, ())) if s.port == port]

    def _with_node_port(self, port: int) -> list[Any]:
        if self._node_port_keys is None:
            index: dict[int, dict[str, None]] = {}
            for key, way in self._layout.ways_at(None):
                if way.kind == NODE_PORT:
                    index.setdefault(way.port, {})[key] = None
            self._node_port_keys = index
        return self._views(self._node_port_keys.get(port, ()))

    def health_checks(self, port: int) -> list[tuple[Any, tuple[int, ...]]]:
        """The Service ports whose healthCheckNodePort is `port`, each with the lines that accept it."""
        return [(self.analysis.port_facts(key), way.lines) for key, way in self._layout.ways_at(None)
                if way.kind == HEALTH_CHECK and way.port == port]

    def ports_of_chains(self, chains: Iterable[str]) -> list[Any]:
        """The Service ports owning any of `chains` (e.g. the chains an outcome entered)."""
        return self._views(k for c in chains if (k := self._layout.chain_key(c)) is not None)

    def chain_label(self, chain: str) -> str:
        return str(self._labels.get(chain, chain))

    @property
    def node_port_listing(self) -> str:
        if self._listing is None:
            ports = sorted({(w.port, w.protocol, k) for k, w in self._layout.ways_at(None) if w.kind == NODE_PORT})
            named = [(p, pr, self._labels.get(self._layout.service_port(k).cluster_chain or "") or
                      self._layout.service_port(k).name or k) for p, pr, k in ports[:12]]
            listing = ", ".join(f"{p}/{pr} ({name})" for p, pr, name in named)
            if len(ports) > 12:
                listing += f" and {len(ports) - 12} more (`iptrace services`)"
            self._listing = listing or "none"
        return self._listing

    def add_cluster(self, cluster: Any, findings: Iterable[Any] | Callable[[list[str]], Iterable[Any]]) -> None:
        """Index the API's Services and compare_with_cluster's findings (iptrace.kube.compare.Finding): all of
        them, or a function that gives those about some Service ports (asked for as questions need them)."""
        self.has_cluster = True
        if callable(findings):
            self._compare = findings
        else:
            self._index_findings(findings)
        for svc in cluster.services:
            for port in svc.ports:
                name = finding_label(svc.namespace, svc.name, port.name, port.protocol)
                for ip in (*svc.cluster_ips, *svc.external_ips, *(i.ip for i in svc.lb_ips if i.ip)):
                    if ip and ip != "None":
                        self.api_ports_by_address.setdefault(canonical(ip), set()).add(
                            (name, port.port, port.protocol.lower()))
                if port.node_port:
                    self.api_labels_by_node_port.setdefault(port.node_port, set()).add(name)
            if svc.health_check_node_port:
                self.api_health_checks.setdefault(svc.health_check_node_port, []).append(svc)

    def _index_findings(self, findings: Iterable[Any]) -> None:
        for f in findings:
            if f.service is None:
                continue
            # (a finding quotes a line as audit does; an answer shows it as its own evidence and the trace do)
            self.findings_by_label.setdefault(f.service, []).append(Diagnosis(
                f.id, f.severity, f.summary, f.detail, f.fix,
                tuple(self._evidence(at, rule) for at, rule in f.evidence)))

    def _evidence(self, at: EvidenceAt, rule: str) -> Evidence:
        """A finding's piece of evidence as an answer's: a line as the trace shows it, or (nft -j input) a rule by
        its kernel handle, an element by its set."""
        if isinstance(at, RuleAt):
            return Evidence(0, rule, handle=at.handle)
        if isinstance(at, MapAt):
            return Evidence(0, rule, element_of=at)
        return Evidence(at, (self.analysis.ruleset.evidence_text(at) if at else None) or rule)

    def cluster_findings(self, labels: Iterable[str]) -> list[Diagnosis]:
        """compare_with_cluster's findings about these Service ports, by label in order (each compared once)."""
        wanted = sorted(set(labels))
        if self._compare is not None:
            new = [name for name in wanted if name not in self._compared]
            if new:
                self._index_findings(self._compare(new))
                self._compared.update(new)
        return [d for name in wanted for d in self.findings_by_label.get(name, ())]

    def evidence(self, lines: Iterable[int], limit: int = 4) -> tuple[Evidence, ...]:
        """The dump's own text of `lines` (rule lines; others are skipped), in order, at most `limit`, as the
        steps of a trace show them (one form of a line in one answer)."""
        out = []
        for line in sorted(set(lines)):
            text = self.analysis.ruleset.evidence_text(line)
            if text is None:
                continue
            out.append(Evidence(line, text.strip()))  # (a line of an nft listing is indented)
            if len(out) >= limit:
                break
        return tuple(out)

    def way_evidence(self, svcs: Sequence[Any], address: str | None = None) -> tuple[Evidence, ...]:
        """The rules that write these Service ports' ways in at `address` (rules_for), as evidence. Input without
        lines (nft -j) has none to name them by: there each way in is traced (the one engine, for its first kind
        of client) and the map elements it meets that send it on (`element ip kube-proxy service-ips { … }`, or
        in @no-endpoint-services) are its evidence, as listing and transaction input show them."""
        lines = [line for svc in svcs for line in self.rules_for(svc, address)]
        if lines or any(e.lines for svc in svcs for e in svc.entries):
            return self.evidence(lines)
        steps = [s for trace in self._way_traces(svcs, address, 1) for o in trace.outcomes for s in o.path
                 if s.kind in _WAY_KINDS and s.handle is None]
        return step_evidence(steps, self.analysis.ruleset)[:4]

    def claim_evidence(self, svcs: Sequence[Any], address: str) -> tuple[Evidence, ...]:
        """For input without lines (nft -j): the map elements that write these Service ports' ways in at `address`,
        as rules_for's lines are in a listing: each way in traced for every kind of client (the one engine), and
        of the elements met (in the order met) those that name one of these Service ports."""
        names = {label(svc) for svc in svcs}
        steps = [s for trace in self._way_traces(svcs, address, None) for o in trace.outcomes for s in o.path
                 if s.handle is None and s.service in names]
        return step_evidence(steps, self.analysis.ruleset)

    def _way_traces(self, svcs: Sequence[Any], address: str | None, clients: int | None) -> Iterator[Trace]:
        """Traces of these Service ports' ways in at `address` (every address of theirs when None), for their
        first `clients` kinds of client (every kind when None)."""
        for svc in svcs:
            addrs = {address} if address else {ip for ip, _ in addresses(svc)}
            for e in svc.entries:
                if e.kind == HEALTH_CHECK or e.address not in addrs or e.port != svc.port:
                    continue
                for key, way in self._layout.ways_at(e.address):
                    # (`e` is the way in itself, or a built view's entry for it)
                    same = (way.kind, way.port, way.protocol) == (e.kind, e.port, e.protocol)
                    packets = self.analysis.views.way_packets(key, way) if same else ()
                    for _, packet in packets[:clients]:
                        yield self.analysis.tracer.trace(packet)

    def rules_for(self, svc: Any, address: str | None = None) -> list[int]:
        """The lines that write this service port's ways in at `address` (every address of it when None)."""
        addrs = {address} if address else {ip for ip, _ in addresses(svc)}
        return [line for e in svc.entries if e.kind != HEALTH_CHECK and e.address in addrs and e.port == svc.port
                for line in e.lines]

    def node_port_lines(self, port: int) -> list[int]:
        return [line for s in self.node_ports.get(port, []) for e in s.entries
                if e.kind == NODE_PORT and e.port == port for line in e.lines]

    def ports_of_step(self, step: Step) -> list[Any]:
        """The Service ports a rule on a path belongs to: by its chain, else by the way in it writes."""
        found = self.ports_of_chains([step.chain])
        if found:
            return found
        if self._by_line is None:
            self._by_line = {line: key for key, way in self._layout.ways for line in way.lines}
        key = self._by_line.get(step.line) if step.line else None
        if key is None and step.service:  # a map element of nft JSON input: no line, its Service port named
            if self._by_name is None:
                self._by_name = {}
                for k in self._layout.keys:
                    self._by_name.setdefault(self._layout.service_port(k).name, k)
            key = self._by_name.get(step.service)
        return [self.analysis.port_facts(key)] if key is not None else []

    def is_node_address(self, ip: str) -> bool:
        return ip in self.node_ips or ipaddress.ip_address(ip).is_loopback

    @property
    def node_port_addresses(self) -> NodePortAddresses:
        return self._layout.node_port_addresses  # type: ignore[no-any-return]

    def opens_node_ports(self, ip: str) -> bool:
        """Whether the rules accept NodePorts on this node address (False only when they say they do not)."""
        npa = self.node_port_addresses
        addr = ipaddress.ip_address(ip)

        def within(nets: Iterable[str]) -> bool:
            return any(addr in ipaddress.ip_network(n, strict=False) for n in nets
                       if ipaddress.ip_network(n, strict=False).version == addr.version)

        if addr.is_loopback and npa.localhost is not None:
            return npa.localhost
        if npa.mode == "none":
            return False
        if npa.mode == "addresses":
            return within(npa.addresses)
        return not within(npa.excluded)

    def in_pod_network(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr.version == net.version and addr in net for net in self.pod_nets)

    @property
    def service_nets(self) -> frozenset[Any]:
        """The /16 (/112) around every ClusterIP (read when a question needs it)."""
        if self._service_nets is None:
            nets = set()
            for _key, way in self._layout.ways:
                if way.kind == CLUSTER_IP and way.address:
                    addr = ipaddress.ip_address(way.address)
                    nets.add(ipaddress.ip_network(f"{addr}/{16 if addr.version == 4 else 112}", strict=False))
            self._service_nets = frozenset(nets)
        return self._service_nets

    def near_service_range(self, ip: str) -> str | None:
        addr = ipaddress.ip_address(ip)
        net = ipaddress.ip_network(f"{addr}/{16 if addr.version == 4 else 112}", strict=False)
        return str(net) if net in self.service_nets else None

    def node_hint(self) -> str:
        return self.node_ips[0] if self.node_ips else "<node-ip>"

    def warning(self) -> Evidence | None:
        """The dump's own warning line about the other iptables backend, as evidence."""
        found = self.proxy.warning
        return Evidence(found[0], found[1]) if found is not None else None


@dataclass
class Case:
    """One question: a trace from one source, and what the packet was."""

    facts: Facts
    trace: Trace
    source_kind: str

    @property
    def dst(self) -> str:
        return self.trace.packet.dst

    @property
    def src(self) -> str:
        return self.trace.packet.src

    @property
    def dport(self) -> int:
        return self.trace.packet.dport

    @property
    def proto(self) -> str:
        return self.trace.packet.proto

    @property
    def target(self) -> str:
        return join_host_port(self.dst, self.dport)

    @property
    def dnat(self) -> list[Outcome]:
        return [o for o in self.trace.outcomes if o.verdict == "DNAT"]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.trace.outcomes if o.verdict != "DNAT"]

    @property
    def rewritten(self) -> bool:
        """Some outcome's destination was rewritten to an endpoint, whether or not a later rule let it through."""
        return any(o.verdict == "DNAT" or rewritten(o) for o in self.trace.outcomes)

    def decided_step(self, outcome: Outcome) -> Step | None:
        """The step of `outcome`'s path that decided it (None for a policy or no decision)."""
        d = outcome.decided_by
        if d is None or d.policy is not None:
            return None
        if not d.line:  # nft JSON input has no lines: the rule's handle (None for a map element) and chain say
            return next((s for s in reversed(outcome.path) if s.chain == d.chain and s.table == d.table
                         and s.handle == d.handle), None)
        return next((s for s in reversed(outcome.path) if s.line == d.line and s.chain == d.chain), None)


def rewritten(outcome: Outcome) -> bool:
    """`outcome`'s packet was sent on to another destination (DNAT) before its verdict."""
    return bool(outcome.final_destination) and outcome.final_destination != outcome.original_destination


def step_evidence(steps: Iterable[Step], ruleset: Ruleset) -> tuple[Evidence, ...]:
    """Each rule of `steps` once: by its line, or without one (nft JSON input) by where it is and its text; as
    the `ruleset`'s step_text: standing alone, an nft rule names its chain there (the path shows it beside the
    rule), as iptables' `-A CHAIN …` does."""
    seen: dict[object, Evidence] = {}
    for s in steps:
        key = s.line or (s.table, s.chain, s.handle, s.rule)
        if key not in seen:
            seen[key] = Evidence(s.line, ruleset.step_text(s), handle=s.handle, element_of=s.element_of)
    return tuple(seen.values())
