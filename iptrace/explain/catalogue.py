"""The diagnoses catalogue (SPEC.md "Diagnoses"): each a small function with a stable id.

A function looks at one trace plus the kube-proxy view and returns a Diagnosis or None. It must say what
happens, why (in the Service's own terms: port, targetPort, nodePort), the dump lines that prove it, and
what to use instead. Pure: no I/O, no printing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from iptrace.explain.diagnosis import Diagnosis, Evidence
from iptrace.kube import era as eras
from iptrace.model.rules import Rule, Ruleset
from iptrace.trace.packet import join_host_port
from iptrace.trace.result import Outcome, Trace

CATALOGUE: tuple[str, ...] = (
    "target-port-on-service-ip", "node-port-on-service-ip", "service-port-on-node-ip", "unknown-port",
    "not-a-service-address", "wrong-protocol", "no-endpoints", "no-local-endpoints", "source-range-blocked",
    "hairpin", "no-kube-proxy-rules", "iptables-backend-split", "stale-endpoints", "missing-service", "healthy",
)


def label(svc: Any) -> str:
    """kube-proxy's service port name: `ns/name:port`, or `ns/name` for an unnamed port."""
    base = f"{svc.namespace}/{svc.name}"
    return f"{base}:{svc.port_name}" if svc.port_name else base


def _host(address: str) -> str:
    return address.split("/", 1)[0] if address.endswith(("/32", "/128")) else address


def _pct(p: float) -> str:
    text = f"{p * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


@dataclass
class Facts:
    """Indexes over the view and the dump that every diagnosis may ask; built once per Explainer."""

    ruleset: Ruleset
    view: Any
    era: eras.Era
    node_ips: tuple[str, ...]
    by_address: dict[str, list[tuple[Any, str]]] = field(default_factory=dict)  # ip -> [(svc, entry kind)]
    by_endpoint_ip: dict[str, list[Any]] = field(default_factory=dict)
    node_ports: dict[int, list[Any]] = field(default_factory=dict)
    service_ports: dict[int, list[Any]] = field(default_factory=dict)
    rules_by_line: dict[int, Rule] = field(default_factory=dict)
    service_rules: dict[str, list[Rule]] = field(default_factory=dict)  # ip -> KUBE-SERVICES rules naming it

    @classmethod
    def build(cls, ruleset: Ruleset, view: Any, era: eras.Era, node_ips: Sequence[str]) -> Facts:
        f = cls(ruleset, view, era, tuple(node_ips))
        for svc in view.services:
            for ip, kind in _addresses(svc):
                f.by_address.setdefault(ip, []).append((svc, kind))
            for ep in svc.endpoints:
                f.by_endpoint_ip.setdefault(ep.ip, []).append(svc)
            if svc.node_port:
                f.node_ports.setdefault(svc.node_port, []).append(svc)
            if svc.port:
                f.service_ports.setdefault(svc.port, []).append(svc)
        f.rules_by_line = {rule.line: rule for _, _, rule in ruleset.rules()}
        for table in ("nat", "filter"):
            for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"):
                c = ruleset.chain(table, chain)
                if c is None:
                    continue
                for rule in c.rules:
                    d = rule.option("-d")
                    if d is not None and not d.negated:
                        f.service_rules.setdefault(_host(d.value), []).append(rule)
        return f

    def evidence(self, rules: Iterable[Rule], limit: int = 4) -> tuple[Evidence, ...]:
        out = []
        for rule in rules:
            out.append(Evidence(rule.line, rule.to_save()))
            if len(out) >= limit:
                break
        return tuple(out)

    def rules_for(self, svc: Any, address: str | None = None) -> list[Rule]:
        """The KUBE-SERVICES/NODEPORTS rules that belong to this service port (for evidence)."""
        wanted = label(svc)
        addresses = [address] if address else [ip for ip, _ in _addresses(svc)]
        out: list[Rule] = []
        for ip in addresses:
            for rule in self.service_rules.get(ip, ()):
                comment = rule.comment or ""
                if comment.startswith(wanted + " ") or comment == wanted or not comment:
                    port = rule.option("--dport")
                    if port is None or port.value == str(svc.port):
                        out.append(rule)
        return out

    def is_node_address(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return ip in self.node_ips or addr.is_loopback

    def node_hint(self) -> str:
        return self.node_ips[0] if self.node_ips else "<node-ip>"


def _addresses(svc: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if svc.cluster_ip:
        out.append((svc.cluster_ip, "ClusterIP"))
    out.extend((ip, "externalIP") for ip in svc.external_ips)
    out.extend((ip, "LoadBalancer IP") for ip in svc.lb_ips)
    return out


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
    def dport(self) -> int:
        return self.trace.packet.dport

    @property
    def proto(self) -> str:
        return self.trace.packet.proto

    @property
    def dnat(self) -> list[Outcome]:
        return [o for o in self.trace.outcomes if o.verdict == "DNAT"]

    def decided(self, verdict: str) -> list[tuple[Outcome, Rule | None]]:
        out = []
        for o in self.trace.outcomes:
            if o.verdict == verdict and o.decided_by is not None:
                line = o.decided_by.line
                out.append((o, self.facts.rules_by_line.get(line) if line is not None else None))
        return out


def _use_instead(facts: Facts, svc: Any) -> str:
    """Every address that does reach this service port, by kind of client."""
    proto = svc.protocol.lower()
    parts = []
    if svc.cluster_ip:
        parts.append(f"{join_host_port(svc.cluster_ip, svc.port)} from inside the cluster")
    for ip in (*svc.external_ips, *svc.lb_ips):
        parts.append(f"{join_host_port(ip, svc.port)} from outside")
    if svc.node_port:
        parts.append(f"{join_host_port(facts.node_hint(), svc.node_port)} (any node's address) from outside")
    text = "; ".join(parts) if parts else "no address of this node reaches it"
    return text + (f" ({proto})" if proto != "tcp" else "")


# -- the diagnoses ------------------------------------------------------------------------------------------

def no_kube_proxy_rules(case: Case) -> Diagnosis | None:
    era = case.facts.era
    if era.has_iptables_rules:
        return None
    instead = {
        eras.IPVS: ("kube-proxy runs in IPVS mode: Services are IPVS virtual servers, not iptables DNAT rules",
                    "inspect them with `ipvsadm -Ln` on the node; iptables only holds IPVS-mode helpers here"),
        eras.NFTABLES: ("the dump says some tables are managed by nftables directly: kube-proxy probably runs in "
                        "nftables mode",
                        "inspect `nft list table ip kube-proxy` (and `ip6 kube-proxy`) on the node"),
    }.get(era.name, ("no KUBE-SERVICES chain at all: kube-proxy is not running in iptables mode on this node "
                     "(stopped? IPVS or nftables mode? replaced by Cilium or kube-router?)",
                     "check the kube-proxy pod/logs on this node (`kubectl -n kube-system logs ds/kube-proxy`) "
                     "and its --proxy-mode; if the nft dump warns about legacy tables, run iptables-legacy-save"))
    return Diagnosis("no-kube-proxy-rules", "error", "this node has no kube-proxy iptables rules",
                     instead[0] + ". " + " ".join(era.evidence), instead[1])


def iptables_backend_split(case: Case) -> Diagnosis | None:
    if not case.facts.era.legacy_tables_present:
        return None
    warning = next((c for c in case.facts.ruleset.comments if eras.LEGACY_WARNING in c), "")
    return Diagnosis(
        "iptables-backend-split", "warning", "the node has rules in both iptables backends (nft and legacy)",
        "This dump came from the nf_tables backend, and it warns that iptables-legacy tables exist too. The kernel "
        "runs both; kube-proxy may have written its rules to the other backend, so what you see here may not be "
        "what forwards the traffic.",
        "also collect `iptables-legacy-save` from the node (iptrace collect does it automatically) and analyze "
        "both; make kube-proxy, kubelet and the CNI use the same backend",
        (Evidence(0, warning),) if warning else ())


def no_endpoints(case: Case) -> Diagnosis | None:
    for _, rule in case.decided("REJECT"):
        if rule is not None and "has no endpoints" in (rule.comment or ""):
            name = (rule.comment or "").replace(" has no endpoints", "")
            return Diagnosis(
                "no-endpoints", "error", f"{name} has no ready endpoints: the connection is refused",
                f"kube-proxy installs a REJECT rule for {name} because no endpoint of the Service is ready, so "
                "the client gets 'connection refused' at once (ICMP port unreachable).",
                "check the Service's selector matches the pods' labels and that the pods are Ready "
                f"(`kubectl get endpointslices -l kubernetes.io/service-name={name.split('/')[1].split(':')[0]} "
                f"-n {name.split('/')[0]}`, readiness probes)",
                case.facts.evidence([rule]))
    return None


def no_local_endpoints(case: Case) -> Diagnosis | None:
    for outcome, rule in case.decided("DROP"):
        comment = (rule.comment or "") if rule is not None else ""
        crossed_local_drop = any("has no local endpoints" in (s.rule or "") for s in outcome.path)
        if "has no local endpoints" in comment or crossed_local_drop:
            steps = [s for s in outcome.path if "has no local endpoints" in s.rule]
            name = comment.replace(" has no local endpoints", "") if comment else ""
            if not name and steps:
                name = steps[0].rule.split('"')[1].replace(" has no local endpoints", "") if '"' in steps[0].rule \
                    else steps[0].rule
            evidence = tuple(Evidence(s.line, s.rule) for s in steps) or case.facts.evidence([rule] if rule else [])
            return Diagnosis(
                "no-local-endpoints", "error",
                f"{name}: traffic policy Local and no endpoint on this node: the packet is dropped (timeout)",
                f"{name} has externalTrafficPolicy (or internalTrafficPolicy) Local, which keeps the client's "
                "source address by only using endpoints on the node that received the traffic. This node runs "
                "none, so kube-proxy drops the packet and the client waits until it times out — on this node "
                "only; nodes that run a pod of the Service answer.",
                "send the traffic to a node that runs one of the Service's pods (load balancers do this by "
                "checking the health-check nodePort), or set the traffic policy to Cluster if the client source "
                "address need not be preserved",
                evidence)
    return None


def source_range_blocked(case: Case) -> Diagnosis | None:
    for outcome, _ in case.decided("DROP"):
        firewall = [s for s in outcome.path if s.chain.startswith(("KUBE-FW-", "KUBE-PROXY-FIREWALL"))]
        if not firewall:
            continue
        svcs = [svc for svc, _ in case.facts.by_address.get(case.dst, []) if svc.lb_source_ranges]
        ranges = ", ".join(svcs[0].lb_source_ranges) if svcs else "the allowed ranges"
        name = label(svcs[0]) if svcs else "the Service"
        return Diagnosis(
            "source-range-blocked", "error",
            f"{case.trace.packet.src} is not in loadBalancerSourceRanges of {name}: the packet is dropped",
            f"{name} only accepts LoadBalancer traffic from {ranges}. A packet from {case.trace.packet.src} falls "
            "through its KUBE-FW chain and is dropped, so the client times out.",
            f"connect from an allowed range, or add the client's range to spec.loadBalancerSourceRanges of {name}",
            tuple(Evidence(s.line, s.rule) for s in firewall))
    return None


def hairpin(case: Case) -> Diagnosis | None:
    src = case.trace.packet.src
    for outcome in case.dnat:
        if outcome.destination and outcome.destination.rsplit(":", 1)[0].strip("[]") == src:
            return Diagnosis(
                "hairpin", "info", f"the pod {src} reaches itself through its Service (hairpin)",
                f"With probability {_pct(outcome.probability)} the Service sends this connection back to the pod "
                f"that opened it. kube-proxy marks such traffic for masquerade (the KUBE-SEP rule `-s {src}` → "
                "KUBE-MARK-MASQ) so the reply comes back through the node; this only works when the pod's bridge "
                "port has hairpin mode on (kubelet --hairpin-mode, CNI `hairpinMode: true`).",
                "if these connections hang, enable hairpin mode in the CNI configuration, or have the pod talk to "
                "itself on localhost",
                tuple(Evidence(s.line, s.rule) for s in outcome.path if "KUBE-SEP-" in s.chain)[:2])
    return None


def _ports_text(svcs: Iterable[Any]) -> str:
    items = sorted({(s.port, s.protocol.lower(), s.port_name) for s in svcs})
    return ", ".join(f"{p}/{proto}" + (f" ({name})" if name else "") for p, proto, name in items)


def address_diagnosis(case: Case) -> Diagnosis | None:
    """Nothing DNATed the packet: say what the address and port are, in the Service's terms."""
    if case.dnat or not case.facts.era.has_iptables_rules:
        return None
    if any(o.verdict in ("REJECT", "DROP") and o.decided_by is not None and o.decided_by.line for o in
           case.trace.outcomes):
        return None  # a rule decided; the rule-specific diagnoses speak for it
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    hang = "it matches no rule, is never DNATed, and goes to an address no host owns: the connection hangs"
    here = facts.by_address.get(dst, [])
    if here:
        svcs = [svc for svc, _ in here]
        kinds = sorted({kind for _, kind in here})
        same_port_other_proto = [s for s in svcs if s.port == dport and s.protocol.lower() != proto]
        if same_port_other_proto:
            s = same_port_other_proto[0]
            return Diagnosis(
                "wrong-protocol", "error",
                f"{dst}:{dport} is {label(s)} over {s.protocol.upper()}, not {proto.upper()}",
                f"The Service port {s.port} is declared with protocol {s.protocol.upper()}; kube-proxy only "
                f"DNATs {s.protocol.upper()} to it, so a {proto.upper()} packet to {dst}:{dport} is not rewritten: "
                f"{'it hangs' if proto == 'tcp' else 'no answer comes back'}.",
                f"use {s.protocol.lower()} ({join_host_port(dst, dport)}/{s.protocol.lower()}), or add a "
                f"{proto.upper()} port to the Service",
                facts.evidence(facts.rules_for(s, dst)))
        node_port = [s for s in facts.node_ports.get(dport, []) if s.protocol.lower() == proto]
        if node_port:
            s = node_port[0]
            return Diagnosis(
                "node-port-on-service-ip", "error",
                f"{dport} is the nodePort of {label(s)}, used on its {kinds[0]} {dst}",
                f"A nodePort is opened on the node's own addresses, not on Service IPs. {dst} only forwards its "
                f"service port{'s' if len(svcs) > 1 else ''} ({_ports_text(svcs)}); a packet to {dst}:{dport} "
                f"is left alone: {hang}.",
                f"use {_use_instead(facts, s)}",
                facts.evidence(facts.rules_for(s, dst)))
        target = [s for s in svcs if s.protocol.lower() == proto and any(ep.port == dport for ep in s.endpoints)]
        if target:
            s = target[0]
            pods = ", ".join(join_host_port(ep.ip, ep.port) for ep in s.endpoints[:4])
            return Diagnosis(
                "target-port-on-service-ip", "error",
                f"{dport} is the targetPort of {label(s)}; the Service listens on {s.port}",
                f"{dport} is the port the pods listen on (the Service's targetPort). kube-proxy only rewrites "
                f"traffic for {join_host_port(dst, s.port)} into {dport} on a pod; a packet to "
                f"{join_host_port(dst, dport)} is left alone: {hang}.",
                f"use {_use_instead(facts, s)}; {dport} only works on the pod IPs ({pods})",
                facts.evidence(facts.rules_for(s, dst)))
        return Diagnosis(
            "unknown-port", "error",
            f"{dst} is the {kinds[0]} of {', '.join(sorted({f'{s.namespace}/{s.name}' for s in svcs}))}, which "
            f"has no port {dport}/{proto}",
            f"{dst} forwards only {_ports_text(svcs)}. {dport}/{proto} is neither a port of the Service nor of "
            f"its pods, so {hang}.",
            f"use one of the ports it has: {_ports_text(svcs)}",
            facts.evidence(rule for s in svcs for rule in facts.rules_for(s, dst)))
    if facts.is_node_address(dst) or dst in facts.node_ips:
        other_proto = [s for s in facts.node_ports.get(dport, []) if s.protocol.lower() != proto]
        if other_proto:
            s = other_proto[0]
            return Diagnosis(
                "wrong-protocol", "error",
                f"nodePort {dport} of {label(s)} is {s.protocol.upper()}, not {proto.upper()}",
                f"kube-proxy only forwards {s.protocol.upper()} on nodePort {dport}.",
                f"use {s.protocol.lower()}, or add a {proto.upper()} port to the Service", ())
        svc_port = [s for s in facts.service_ports.get(dport, []) if s.protocol.lower() == proto]
        if svc_port:
            s = svc_port[0]
            with_np = [x for x in svc_port if x.node_port]
            fix = (f"use {join_host_port(dst, with_np[0].node_port)} (the nodePort of {label(with_np[0])}), or "
                   f"{join_host_port(with_np[0].cluster_ip, dport)} from inside the cluster") if with_np else \
                f"use {join_host_port(s.cluster_ip, dport)} from inside the cluster; {label(s)} has no nodePort, " \
                "so make it type NodePort or LoadBalancer to reach it from outside"
            return Diagnosis(
                "service-port-on-node-ip", "error",
                f"{dport} is the service port of {label(s)}, used on a node address",
                f"{dst} is this node's own address. A Service port ({dport}) is only forwarded on the Service's "
                f"ClusterIP ({s.cluster_ip}); on a node address only nodePorts are, and no Service has nodePort "
                f"{dport}/{proto}. The packet goes to the node's own sockets (refused, or some other program).",
                fix, facts.evidence(facts.rules_for(s)))
        node_ports = sorted({(s.node_port, s.protocol.lower(), label(s)) for ports in facts.node_ports.values()
                             for s in ports})
        listing = ", ".join(f"{p}/{pr} ({name})" for p, pr, name in node_ports[:12]) or "none"
        return Diagnosis(
            "not-a-service-address", "warning",
            f"{dst}:{dport} is a node address with no nodePort {dport}/{proto}",
            f"kube-proxy has no rule for port {dport} on the node's addresses, so the packet is delivered to the node "
            "itself: whatever listens there answers (or the connection is refused).",
            f"nodePorts on this node: {listing}", ())
    owners = facts.by_endpoint_ip.get(dst, [])
    if owners:
        s = owners[0]
        ports = sorted({ep.port for o in owners for ep in o.endpoints if ep.ip == dst})
        ok = dport in ports
        return Diagnosis(
            "not-a-service-address", "info" if ok else "warning",
            f"{dst} is a pod IP (an endpoint of {label(s)}), not a Service address",
            f"Pod IPs are reached directly, without kube-proxy: nothing here rewrites the packet. The pod serves "
            f"{label(s)} on port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))}"
            + ("." if ok else f", not {dport}."),
            f"to go through the Service use {_use_instead(facts, s)}"
            + ("" if ok else f"; directly, use {join_host_port(dst, ports[0])}"), ())
    nearby = _same_service_range(facts, dst)
    return Diagnosis(
        "not-a-service-address", "error" if nearby else "warning",
        f"no Service on this node has the address {dst}",
        (f"{dst} looks like a ClusterIP (the Service IPs here are in {nearby}), but no rule names it: the "
         "Service was deleted or not yet synced, it lives in another cluster, or the address is mistyped. "
         if nearby else f"{dst} appears in no kube-proxy rule: it is not a ClusterIP, externalIP or "
         "LoadBalancer IP known to this node (a pod IP? another cluster? a stale DNS answer?). ")
        + "The packet is routed unchanged.",
        "look the Service up again (`kubectl get svc -A -o wide | grep <name>`) and use its current ClusterIP; "
        "compare with the cluster using --cluster/--kubeconfig", ())


def _same_service_range(facts: Facts, dst: str) -> str | None:
    addr = ipaddress.ip_address(dst)
    cluster_ips = [ipaddress.ip_address(s.cluster_ip) for s in facts.view.services if s.cluster_ip]
    same = [ip for ip in cluster_ips if ip.version == addr.version]
    if not same:
        return None
    prefix = 16 if addr.version == 4 else 112
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    if any(ip in net for ip in same):
        return str(net)
    return None


def healthy(case: Case) -> Diagnosis | None:
    dnat = case.dnat
    if not dnat or len(dnat) != len(case.trace.outcomes):
        return None
    service = dnat[0].service or "the Service"
    parts = [f"{o.destination} {_pct(o.probability)}" for o in dnat]
    masq = {o.masquerade for o in dnat}
    masq_text = ("masqueraded (the pod sees the node's address as source)" if masq == {True} else
                 "not masqueraded (the pod sees the client's own address)" if masq == {False} else
                 "masqueraded on some branches")
    return Diagnosis(
        "healthy", "info", f"reaches {service}: {', '.join(parts)}",
        f"The connection is DNATed to {'one of ' if len(dnat) > 1 else ''}{len(dnat)} endpoint"
        f"{'s' if len(dnat) > 1 else ''}, {masq_text}.",
        "nothing to fix here; if it still fails, look at the pods themselves (readiness, the port they listen on, "
        "NetworkPolicies)",
        tuple(Evidence(s.line, s.rule) for s in dnat[0].path if s.chain in ("KUBE-SERVICES", "KUBE-NODEPORTS"))[:2])


RULES: tuple[Callable[[Case], Diagnosis | None], ...] = (
    no_kube_proxy_rules, iptables_backend_split, no_endpoints, no_local_endpoints, source_range_blocked,
    address_diagnosis, hairpin, healthy,
)


def diagnose(case: Case) -> tuple[Diagnosis, ...]:
    found = [d for d in (rule(case) for rule in RULES) if d is not None]
    if any(d.id != "healthy" and d.severity != "info" for d in found):
        found = [d for d in found if d.id != "healthy"]
    return tuple(found)
