"""What every diagnosis may ask of one node, indexed once (`Facts`), and one question (`Case`).

Built from an iptrace.kube.analysis.Analysis: the Service view, the layout and the dump's own lines (through
the dataplane interface), so a diagnosis costs dictionary look-ups, never a scan of the rules, and never
knows which dataplane wrote them. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from iptrace.dataplane import (
    HEALTH_CHECK,
    Outcome,
    ProxyMode,
    Step,
    Trace,
    join_host_port,
)
from iptrace.explain.diagnosis import Diagnosis, Evidence


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


@dataclass
class Facts:
    """Indexes over the view and the dump that every diagnosis may ask; built once per Explainer."""

    analysis: Any  # iptrace.kube.analysis.Analysis
    node_ips: tuple[str, ...]
    node_ips_given: bool = True  # False when the node's addresses were guessed from the rules
    pod_cidrs: tuple[str, ...] = ()
    by_address: dict[str, list[tuple[Any, str]]] = field(default_factory=dict)  # ip -> [(svc, entry kind)]
    by_endpoint_ip: dict[str, list[Any]] = field(default_factory=dict)
    by_label: dict[str, list[Any]] = field(default_factory=dict)
    node_ports: dict[int, list[Any]] = field(default_factory=dict)
    service_ports: dict[int, list[Any]] = field(default_factory=dict)
    way_lines: dict[tuple[str, str | None, int], list[int]] = field(default_factory=dict)  # (label, addr, port)
    service_nets: frozenset[Any] = frozenset()  # the /16 (/112) around every ClusterIP
    pod_nets: tuple[Any, ...] = ()
    node_port_listing: str = "none"
    has_cluster: bool = False
    # With cluster data: compare_with_cluster's findings by service port label, and which labels own an
    # address or a nodePort in the API (a Service missing from the rules is known only there).
    findings_by_label: dict[str, list[Diagnosis]] = field(default_factory=dict)
    api_ports_by_address: dict[str, set[tuple[str, int, str]]] = field(default_factory=dict)  # (label, port, proto)
    api_labels_by_node_port: dict[int, set[str]] = field(default_factory=dict)

    @property
    def view(self) -> Any:
        return self.analysis.view

    @property
    def proxy(self) -> ProxyMode:
        return self.analysis.layout.proxy  # type: ignore[no-any-return]

    @classmethod
    def build(cls, analysis: Any, node_ips: Sequence[str], *, node_ips_given: bool = True,
              pod_cidrs: Sequence[str] = ()) -> Facts:
        f = cls(analysis, tuple(node_ips), node_ips_given, tuple(pod_cidrs))
        nets = set()
        for svc in analysis.view.services:
            for ip, kind in addresses(svc):
                f.by_address.setdefault(ip, []).append((svc, kind))
            for ep in svc.endpoints:
                f.by_endpoint_ip.setdefault(ep.ip, []).append(svc)
            f.by_label.setdefault(label(svc), []).append(svc)
            if svc.node_port:
                f.node_ports.setdefault(svc.node_port, []).append(svc)
            if svc.port:
                f.service_ports.setdefault(svc.port, []).append(svc)
            if svc.cluster_ip:
                addr = ipaddress.ip_address(svc.cluster_ip)
                nets.add(ipaddress.ip_network(f"{addr}/{16 if addr.version == 4 else 112}", strict=False))
            for e in svc.entries:
                if e.kind != HEALTH_CHECK:
                    f.way_lines.setdefault((label(svc), e.address, e.port), []).extend(e.lines)
        f.service_nets = frozenset(nets)
        pod_nets = []
        for cidr in pod_cidrs:
            try:
                pod_nets.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                continue
        f.pod_nets = tuple(pod_nets)
        node_ports = sorted({(s.node_port, s.protocol.lower(), label(s)) for ports in f.node_ports.values()
                             for s in ports})
        listing = ", ".join(f"{p}/{pr} ({name})" for p, pr, name in node_ports[:12])
        if len(node_ports) > 12:
            listing += f" and {len(node_ports) - 12} more (`iptrace services`)"
        f.node_port_listing = listing or "none"
        return f

    def add_cluster(self, cluster: Any, findings: Iterable[Any]) -> None:
        """Index the API's Services and compare_with_cluster's findings (iptrace.kube.compare.Finding)."""
        self.has_cluster = True
        for f in findings:
            if f.service is None:
                continue
            self.findings_by_label.setdefault(f.service, []).append(Diagnosis(
                f.id, f.severity, f.summary, f.detail, f.fix,
                tuple(Evidence(line, rule) for line, rule in f.evidence)))
        for svc in cluster.services:
            for port in svc.ports:
                name = finding_label(svc.namespace, svc.name, port.name, port.protocol)
                for ip in (*svc.cluster_ips, *svc.external_ips, *(i.ip for i in svc.lb_ips if i.ip)):
                    if ip and ip != "None":
                        self.api_ports_by_address.setdefault(canonical(ip), set()).add(
                            (name, port.port, port.protocol.lower()))
                if port.node_port:
                    self.api_labels_by_node_port.setdefault(port.node_port, set()).add(name)

    def evidence(self, lines: Iterable[int], limit: int = 4) -> tuple[Evidence, ...]:
        """The dump's own text of `lines` (rule lines; others are skipped), in order, at most `limit`."""
        out = []
        for line in sorted(set(lines)):
            text = self.analysis.ruleset.line_text(line)
            if text is None:
                continue
            out.append(Evidence(line, text))
            if len(out) >= limit:
                break
        return tuple(out)

    def rules_for(self, svc: Any, address: str | None = None) -> list[int]:
        """The lines that write this service port's ways in at `address` (every address of it when None)."""
        wanted = label(svc)
        addrs = [address] if address else [ip for ip, _ in addresses(svc)]
        out: list[int] = []
        for ip in addrs:
            out.extend(self.way_lines.get((wanted, ip, svc.port), ()))
        return out

    def node_port_lines(self, port: int) -> list[int]:
        return [line for s in self.node_ports.get(port, []) for line in self.way_lines.get((label(s), None, port), ())]

    def service_lines(self, name: str) -> list[int]:
        """Every way-in line of the service port `name` (its REJECT/DROP rules among them)."""
        return [line for (lab, _a, _p), lines in self.way_lines.items() if lab == name for line in lines]

    def is_node_address(self, ip: str) -> bool:
        return ip in self.node_ips or ipaddress.ip_address(ip).is_loopback

    def in_pod_network(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr.version == net.version and addr in net for net in self.pod_nets)

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

    def decided_step(self, outcome: Outcome) -> Step | None:
        """The step of `outcome`'s path that decided it (None for a policy or no decision)."""
        d = outcome.decided_by
        if d is None or not d.line:
            return None
        return next((s for s in reversed(outcome.path) if s.line == d.line and s.chain == d.chain), None)


def step_evidence(steps: Iterable[Step]) -> tuple[Evidence, ...]:
    seen: dict[int, Evidence] = {}
    for s in steps:
        seen.setdefault(s.line, Evidence(s.line, s.rule))
    return tuple(seen.values())
