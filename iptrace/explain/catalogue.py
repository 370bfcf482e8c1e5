"""The diagnoses catalogue (SPEC.md "Diagnoses"): each a small function with a stable id.

A function looks at one trace plus the kube-proxy view and returns a Diagnosis or None. It must say what
happens, why (in the Service's own terms: port, targetPort, nodePort), the dump lines that prove it, and
what to use instead. Everything a function asks of the dump is indexed once in `Facts`, so that one
diagnosis costs dictionary look-ups, never a scan of the rules. Pure: no I/O, no printing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from iptrace.dataplane import Outcome, Step, Trace, join_host_port
from iptrace.explain.diagnosis import Diagnosis, Evidence, Suggestion
from iptrace.iptables import era as eras
from iptrace.iptables.model import Rule, Ruleset

CATALOGUE: tuple[str, ...] = (
    "target-port-on-service-ip", "node-port-on-service-ip", "service-port-on-node-ip", "unknown-port",
    "not-a-service-address", "wrong-protocol", "no-endpoints", "no-local-endpoints", "source-range-blocked",
    "hairpin", "no-kube-proxy-rules", "iptables-backend-split", "stale-endpoints", "missing-service",
    "not-forwarded", "blocked-by-rule", "healthy",
    # With a conntrack table (iptrace.explain.conntrack): entries the rules no longer decide.
    "stale-conntrack", "stale-conntrack-no-dnat", "conntrack-healthy",
)

_NO_LOCAL = re.compile(r"^(?P<n>\S+) has no local endpoints$")
_NO_ENDPOINTS = re.compile(r"^(?P<n>\S+) has no endpoints$")
_FW_DROPPED = re.compile(r"^other traffic to (?P<n>\S+) will be dropped by KUBE-PROXY-FIREWALL$")
_FW_NOT_ACCEPTED = re.compile(r"^(?P<n>\S+) traffic not accepted by KUBE-FW-\S+$")


def label(svc: Any) -> str:
    """kube-proxy's service port name: `ns/name:port`, or `ns/name` for an unnamed port."""
    return str(svc.label)


def _service_name(svc: Any) -> str:
    return f"{svc.namespace}/{svc.name}" if svc.namespace else str(svc.name)


def _host(address: str) -> str:
    return address.split("/", 1)[0] if address.endswith(("/32", "/128")) else address


def _pct(p: float) -> str:
    text = f"{p * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ip_of(destination: str) -> str:
    return destination.rsplit(":", 1)[0].strip("[]")


def _comment_of(text: str) -> str:
    """The --comment of a rule as iptables-save prints it (quoted or a single word)."""
    m = re.search(r'--comment (?:"((?:\\.|[^"\\])*)"|(\S+))', text)
    if m is None:
        return ""
    return (m.group(1) if m.group(1) is not None else m.group(2)).replace('\\"', '"')


def _comment_lines(ruleset: Ruleset) -> dict[str, int]:
    """Dump line of every comment line the loader kept (the legacy-tables warning is one).

    The model keeps comments without positions; in iptables-save text they sit right before a table header
    or right after the last COMMIT, so the positions follow from the table's header line and its size.
    """
    out: dict[str, int] = {}
    end = 0
    for table in ruleset.tables:
        if not table.line:
            return out
        for i, text in enumerate(table.comments):
            out.setdefault(text, table.line - len(table.comments) + i)
        end = table.line + len(table.chains) + table.rule_count + 1  # the COMMIT line
    if end and ruleset.format == "save":
        for i, text in enumerate(ruleset.trailer):
            out.setdefault(text, end + 1 + i)
    return out


@dataclass
class Facts:
    """Indexes over the view and the dump that every diagnosis may ask; built once per Explainer."""

    ruleset: Ruleset
    view: Any
    era: eras.Era
    node_ips: tuple[str, ...]
    node_ips_given: bool = True  # False when the node's addresses were guessed from the rules
    pod_cidrs: tuple[str, ...] = ()
    by_address: dict[str, list[tuple[Any, str]]] = field(default_factory=dict)  # ip -> [(svc, entry kind)]
    by_endpoint_ip: dict[str, list[Any]] = field(default_factory=dict)
    by_label: dict[str, list[Any]] = field(default_factory=dict)
    node_ports: dict[int, list[Any]] = field(default_factory=dict)
    service_ports: dict[int, list[Any]] = field(default_factory=dict)
    rules_by_line: dict[int, Rule] = field(default_factory=dict)
    service_rules: dict[str, list[Rule]] = field(default_factory=dict)  # ip -> KUBE-SERVICES rules naming it
    node_port_rules: dict[int, list[Rule]] = field(default_factory=dict)  # nodePort -> nat KUBE-NODEPORTS rules
    reject_rules: dict[str, list[Rule]] = field(default_factory=dict)  # label -> its "has no endpoints" rules
    service_nets: frozenset[Any] = frozenset()  # the /16 (/112) around every ClusterIP
    pod_nets: tuple[Any, ...] = ()
    comment_lines: dict[str, int] = field(default_factory=dict)
    node_port_listing: str = "none"
    has_cluster: bool = False
    # With cluster data: compare_with_cluster's findings by service port label, and which labels own an
    # address or a nodePort in the API (a Service missing from the rules is known only there).
    findings_by_label: dict[str, list[Diagnosis]] = field(default_factory=dict)
    api_ports_by_address: dict[str, set[tuple[str, int, str]]] = field(default_factory=dict)  # (label, port, proto)
    api_labels_by_node_port: dict[int, set[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, ruleset: Ruleset, view: Any, era: eras.Era, node_ips: Sequence[str], *,
              node_ips_given: bool = True, pod_cidrs: Sequence[str] = ()) -> Facts:
        f = cls(ruleset, view, era, tuple(node_ips), node_ips_given, tuple(pod_cidrs))
        nets = set()
        for svc in view.services:
            for ip, kind in _addresses(svc):
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
        f.service_nets = frozenset(nets)
        pod_nets = []
        for cidr in pod_cidrs:
            try:
                pod_nets.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                continue
        f.pod_nets = tuple(pod_nets)
        f.rules_by_line = {rule.line: rule for _, _, rule in ruleset.rules()}
        for table in ("nat", "filter"):
            for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"):
                c = ruleset.chain(table, chain)
                if c is None:
                    continue
                for rule in c.rules:
                    m = _NO_ENDPOINTS.match(rule.comment or "") if table == "filter" else None
                    if m is not None:
                        f.reject_rules.setdefault(m.group("n"), []).append(rule)
                    d = rule.option("-d")
                    if d is not None and not d.negated:
                        f.service_rules.setdefault(_host(d.value), []).append(rule)
                    elif table == "nat" and chain == "KUBE-NODEPORTS":
                        port = rule.option("--dport")
                        if port is not None and port.value.isdigit():
                            f.node_port_rules.setdefault(int(port.value), []).append(rule)
        f.comment_lines = _comment_lines(ruleset)
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
                        self.api_ports_by_address.setdefault(_canonical(ip), set()).add(
                            (name, port.port, port.protocol.lower()))
                if port.node_port:
                    self.api_labels_by_node_port.setdefault(port.node_port, set()).add(name)

    def evidence(self, rules: Iterable[Rule], limit: int = 4) -> tuple[Evidence, ...]:
        out = []
        for rule in rules:
            out.append(Evidence(rule.line, rule.to_save()))
            if len(out) >= limit:
                break
        return tuple(out)

    def rules_for(self, svc: Any, address: str | None = None) -> list[Rule]:
        """The KUBE-SERVICES rules that belong to this service port (for evidence)."""
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

    def line_of_comment(self, needle: str) -> Evidence | None:
        for text, line in self.comment_lines.items():
            if needle in text:
                return Evidence(line, text)
        return None


def finding_label(namespace: str, name: str, port_name: str, protocol: str) -> str:
    """How compare_with_cluster names a service port: `ns/svc:port`, with `/udp` (`/sctp`) when not TCP."""
    base = f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"
    return base if protocol.lower() == "tcp" else f"{base}/{protocol.lower()}"


def _canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


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

    def decided_rule(self, outcome: Outcome) -> Rule | None:
        if outcome.decided_by is None or outcome.decided_by.line is None:
            return None
        return self.facts.rules_by_line.get(outcome.decided_by.line)


def _step_evidence(steps: Iterable[Step]) -> tuple[Evidence, ...]:
    seen: dict[int, Evidence] = {}
    for s in steps:
        seen.setdefault(s.line, Evidence(s.line, s.rule))
    return tuple(seen.values())


def _use_instead(facts: Facts, svc: Any) -> tuple[str, tuple[Suggestion, ...]]:
    """Every address that does reach this service port, by kind of client."""
    proto = svc.protocol.lower()
    parts: list[str] = []
    out: list[Suggestion] = []
    if svc.cluster_ip and svc.port:
        parts.append(f"{join_host_port(svc.cluster_ip, svc.port)} from inside the cluster")
        out.append(Suggestion(svc.cluster_ip, svc.port, proto, "pod"))
    for ip in (*svc.external_ips, *svc.lb_ips):
        if svc.port:
            parts.append(f"{join_host_port(ip, svc.port)} from outside")
            out.append(Suggestion(ip, svc.port, proto, "external"))
    if svc.node_port:
        parts.append(f"{join_host_port(facts.node_hint(), svc.node_port)} (or any other node's address) "
                     "from outside")
        if facts.node_ips:
            out.append(Suggestion(facts.node_ips[0], svc.node_port, proto, "external"))
    text = "; ".join(parts) if parts else "no address of this node reaches it"
    return text + (f" (all {proto.upper()})" if proto != "tcp" else ""), tuple(out)


def _ports_text(svcs: Iterable[Any]) -> str:
    items = sorted({(s.port, s.protocol.lower(), s.port_name) for s in svcs if s.port})
    return ", ".join(f"{p}/{proto}" + (f" ({name})" if name else "") for p, proto, name in items)


def _wait(proto: str) -> str:
    return "no answer ever comes back" if proto == "udp" else "the connection hangs until it times out"


def _fate(case: Case, kind: str) -> str:
    """What becomes of a packet that kube-proxy left alone, as a sentence."""
    verdicts = case.trace.verdicts
    if verdicts == {"REJECT"}:
        return "A later rule, not kube-proxy's, rejects it (connection refused)."
    if verdicts == {"DROP"}:
        return f"A later rule, not kube-proxy's, drops it: {_wait(case.proto)}."
    if kind == "ClusterIP":
        return f"No machine owns a ClusterIP, so the packet goes nowhere: {_wait(case.proto)}."
    return (f"It goes on to {case.dst} unchanged; unless some machine there serves port {case.dport}, "
            f"{_wait(case.proto)}.")


# -- whole-node diagnoses -----------------------------------------------------------------------------------

def no_kube_proxy_rules(case: Case) -> Diagnosis | None:
    era = case.facts.era
    if era.has_iptables_rules:
        return None
    lost = ("so nothing on this node rewrites a Service address to a pod: every ClusterIP and nodePort "
            "connection fails here")
    warning = case.facts.line_of_comment(eras.LEGACY_WARNING)
    if era.name == eras.IPVS:
        detail = ("kube-proxy runs in IPVS mode: Services are IPVS virtual servers in the kernel, not iptables "
                  "rules, so an iptables dump cannot show where they go.")
        fix = "list the virtual servers with `ipvsadm -Ln` on the node"
    elif era.name == eras.NFTABLES:
        detail = ("The dump has no KUBE-SERVICES chain and says some tables are managed by nftables itself: "
                  "kube-proxy probably runs in nftables mode, which iptables cannot show.")
        fix = "look at `nft list table ip kube-proxy` (and `ip6 kube-proxy`) on the node"
    elif warning is not None:
        detail = ("The dump has no KUBE-SERVICES chain, but it warns that iptables-legacy tables exist: "
                  "kube-proxy most likely wrote its rules through iptables-legacy, which this (nft) dump "
                  "does not show.")
        fix = ("run `iptables-legacy-save` on the node and explain that dump (`iptrace collect` fetches both); "
               "then make kube-proxy, kubelet and the CNI use one backend")
    else:
        detail = (f"The dump has no KUBE-SERVICES chain, {lost}. kube-proxy is not running in iptables mode: "
                  "it is stopped, runs in IPVS or nftables mode, or was replaced (Cilium, kube-router).")
        fix = ("check kube-proxy on this node (`kubectl -n kube-system get pods -o wide | grep kube-proxy`, its "
               "logs and its --proxy-mode)")
    return Diagnosis("no-kube-proxy-rules", "error", "this node has no kube-proxy iptables rules", detail, fix,
                     (warning,) if warning is not None else ())


def iptables_backend_split(case: Case) -> Diagnosis | None:
    if not case.facts.era.legacy_tables_present:
        return None
    warning = case.facts.line_of_comment(eras.LEGACY_WARNING)
    return Diagnosis(
        "iptables-backend-split", "warning", "the node has rules in both iptables backends (nft and legacy)",
        "This dump was read through the nf_tables backend, and it warns that iptables-legacy tables exist too. "
        "The kernel applies both, so rules that matter may be in the other backend, where this dump cannot "
        "see them.",
        "also run `iptables-legacy-save` on the node (`iptrace collect` does) and explain both dumps; make "
        "kube-proxy, kubelet and the CNI use the same backend",
        (warning,) if warning is not None else ())


# -- a rule of kube-proxy's decided -------------------------------------------------------------------------

def _no_endpoints_diagnosis(name: str, detail: str, evidence: tuple[Evidence, ...]) -> Diagnosis:
    ns, _, rest = name.partition("/")
    svc_name = rest.split(":", 1)[0]
    return Diagnosis(
        "no-endpoints", "error", f"{name} has no ready endpoints, so the connection fails", detail,
        f"check that `kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={svc_name}` lists a "
        "ready address; if not, make the Service's selector match the pods' labels, or fix the pods' readiness",
        evidence)


def no_endpoints(case: Case) -> Diagnosis | None:
    for outcome in case.failed:
        rule = case.decided_rule(outcome)
        m = _NO_ENDPOINTS.match(rule.comment or "") if rule is not None and outcome.verdict == "REJECT" else None
        if rule is None or m is None:
            continue
        name = m.group("n")
        return _no_endpoints_diagnosis(
            name, f"No pod of {name} is ready, so kube-proxy answers for the Service with a REJECT rule: the "
            "client gets 'connection refused' at once (an ICMP port-unreachable), not a timeout.",
            case.facts.evidence([rule]))
    if case.dnat:
        return None
    # kube-proxy hooks its REJECT for externalIPs, LB IPs and nodePorts (filter KUBE-EXTERNAL-SERVICES) into
    # INPUT and FORWARD only, so the node's own connections miss it and go on unanswered.
    facts = case.facts
    owners = [svc for svc, _ in facts.by_address.get(case.dst, []) if svc.port == case.dport]
    if facts.is_node_address(case.dst):
        owners += facts.node_ports.get(case.dport, [])
    empty = [svc for svc in owners if svc.protocol.lower() == case.proto and not svc.endpoints]
    if not empty:
        return None
    name = label(empty[0])
    fate = ("it is delivered to the node itself, where nothing listens on that port (connection refused)"
            if facts.is_node_address(case.dst) else f"it goes on to {case.dst} unchanged and {_wait(case.proto)}")
    return _no_endpoints_diagnosis(
        name, f"No pod of {name} is ready. kube-proxy's REJECT rule for it guards only traffic that arrives "
        f"from outside; this packet leaves the node itself, so it is not rewritten and {fate}.",
        facts.evidence(facts.reject_rules.get(name, ())))


def _local_drop_step(case: Case) -> tuple[Outcome, Step, str] | None:
    for outcome in case.failed:
        for step in outcome.path:
            m = _NO_LOCAL.match(_comment_of(step.rule))
            if m is not None:
                return outcome, step, m.group("n")
    return None


def no_local_endpoints(case: Case) -> Diagnosis | None:
    found = _local_drop_step(case)
    if found is None:
        return None
    outcome, step, name = found
    svcs = case.facts.by_label.get(name, [])
    svc = svcs[0] if svcs else None
    internal = step.table == "filter" and step.chain == "KUBE-SERVICES"
    policy = "internalTrafficPolicy" if internal else "externalTrafficPolicy"
    elsewhere = ", ".join(ep.ip for ep in svc.endpoints[:4]) if svc is not None and svc.endpoints else ""
    where = f" (its endpoints {elsewhere} run on other nodes)" if elsewhere else ""
    if outcome.verdict == "DROP":
        fate = f"so kube-proxy drops the packet and {_wait(case.proto)}"
    else:
        fate = ("so kube-proxy marks the packet to be dropped (KUBE-MARK-DROP); kubelet drops marked packets only "
                f"when they are addressed to the node itself, so this one goes on to {case.dst} unchanged and "
                "never reaches a pod")
    detail = (f"{name} has {policy}: Local, which sends traffic only to endpoints on the node that received it "
              f"(to keep the client's source address). This node runs none{where}, {fate}. Only this node "
              "fails; nodes that run a pod of the Service answer.")
    instead: tuple[Suggestion, ...] = ()
    if internal:
        fix = f"run a pod of {name} on this node, or set {policy}: Cluster"
    else:
        hc = f" (a load balancer does this by checking the health-check nodePort {svc.health_check_node_port})" \
            if svc is not None and svc.health_check_node_port else ""
        inside = ""
        if svc is not None and svc.cluster_ip and svc.port:
            inside = f"; from inside the cluster {join_host_port(svc.cluster_ip, svc.port)} works"
            instead = (Suggestion(svc.cluster_ip, svc.port, svc.protocol.lower(), "pod"),)
        fix = (f"send the traffic to a node that runs one of its pods{hc}, or set {policy}: Cluster if the "
               f"client's source address need not be kept{inside}")
    rule = case.decided_rule(outcome)
    steps = [step] + ([s for s in outcome.path if rule is not None and s.line == rule.line and s != step])
    return Diagnosis(
        "no-local-endpoints", "error",
        f"{name} has {policy} Local and no endpoint on this node, so the packet "
        + ("is dropped" if outcome.verdict == "DROP" else "never reaches a pod"),
        detail, fix, _step_evidence(steps), instead)


def source_range_blocked(case: Case) -> Diagnosis | None:
    for outcome in case.failed:
        steps = []
        name = ""
        for step in outcome.path:
            comment = _comment_of(step.rule)
            m = _FW_DROPPED.match(comment) or _FW_NOT_ACCEPTED.match(comment)
            if m is not None:
                steps.append(step)
                name = m.group("n")
            elif step.chain.startswith("KUBE-FW-") and step.rule.endswith("-j KUBE-MARK-DROP"):
                steps.append(step)
                name = case.facts.view.chain_labels.get(step.chain, step.chain)
        if not steps:
            continue
        svcs = case.facts.by_label.get(name, [])
        ranges = ", ".join(svcs[0].lb_source_ranges) if svcs and svcs[0].lb_source_ranges else ""
        allowed = f"only from {ranges}" if ranges else "only from its loadBalancerSourceRanges"
        instead: tuple[Suggestion, ...] = ()
        if svcs and svcs[0].port:
            instead = tuple(Suggestion(case.dst, case.dport, case.proto, r) for r in svcs[0].lb_source_ranges)
        fate = _wait(case.proto) if outcome.verdict == "DROP" else "it never reaches a pod"
        return Diagnosis(
            "source-range-blocked", "error",
            f"{case.src} is outside the loadBalancerSourceRanges of {name}, so the packet is dropped",
            f"{name} accepts traffic to its LoadBalancer IP {allowed}. {case.src} is not in those ranges, so "
            f"the packet falls through the Service's firewall chain and is dropped: {fate}.",
            f"connect from an allowed range, or add the client's range to spec.loadBalancerSourceRanges of "
            f"{_service_name(svcs[0]) if svcs else name}",
            _step_evidence(steps), instead)
    return None


# -- nothing rewrote the packet: what the address and port are, in the Service's terms ---------------------

def _who_can(kind: str) -> str:
    """Which client a Service address is meant for: a ClusterIP from inside, the others from outside."""
    return "pod" if kind == "ClusterIP" else "external"


def _service_address(case: Case) -> tuple[list[Any], str] | None:
    here = case.facts.by_address.get(case.dst, [])
    if not here:
        return None
    kinds = [kind for _, kind in here]
    return [svc for svc, _ in here], kinds[0]


def not_forwarded(case: Case) -> Diagnosis | None:
    """The address and port are a real entry, yet nothing DNATed the packet: say so, never guess a cause."""
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    found = _service_address(case)
    if found is not None:
        svcs, kind = found
        exact = [s for s in svcs if s.port == dport and s.protocol.lower() == proto]
    elif facts.is_node_address(dst):
        kind = "node address"
        exact = [s for s in facts.node_ports.get(dport, []) if s.protocol.lower() == proto]
    else:
        return None
    if not exact:
        return None
    s = exact[0]
    return Diagnosis(
        "not-forwarded", "error", f"{case.target} is {label(s)}, but this packet is not sent to a pod",
        f"kube-proxy has a rule for {case.target}/{proto} (a {kind}), yet from {case.src} the packet leaves "
        "its chains without being rewritten to an endpoint. The path below shows which rules it met.",
        "compare the path with the Service (`iptrace services`); a rule inserted before kube-proxy's (CNI, host "
        "firewall) may divert it",
        facts.evidence(facts.rules_for(s, None if kind == "node address" else dst)))


def wrong_protocol(case: Case) -> Diagnosis | None:
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    found = _service_address(case)
    if found is not None:
        svcs, kind = found
        if any(s.port == dport and s.protocol.lower() == proto for s in svcs):
            return None
        other = [s for s in svcs if s.port == dport and s.protocol.lower() != proto]
        if not other:
            return None
        s = other[0]
        use = s.protocol.lower()
        return Diagnosis(
            "wrong-protocol", "error", f"{case.target} is {label(s)} over {use.upper()}, not {proto.upper()}",
            f"The Service declares port {dport} with protocol {use.upper()}, and kube-proxy only rewrites "
            f"{use.upper()} packets for it. A {proto.upper()} packet to {case.target} matches no rule. "
            f"{_fate(case, kind)}",
            f"use {use.upper()} ({case.target}/{use}), or add a {proto.upper()} port to the Service",
            facts.evidence(facts.rules_for(s, dst)), (Suggestion(dst, dport, use, _who_can(kind)),))
    if facts.is_node_address(dst):
        if any(s.protocol.lower() == proto for s in facts.node_ports.get(dport, [])):
            return None
        other = facts.node_ports.get(dport, [])
        if not other:
            return None
        s = other[0]
        use = s.protocol.lower()
        return Diagnosis(
            "wrong-protocol", "error", f"nodePort {dport} of {label(s)} is {use.upper()}, not {proto.upper()}",
            f"kube-proxy opens nodePort {dport} for {use.upper()} only. A {proto.upper()} packet to {case.target} "
            f"is delivered to the node itself, where nothing of the Service listens.",
            f"use {use.upper()} ({case.target}/{use}), or add a {proto.upper()} port to the Service",
            facts.evidence(facts.node_port_rules.get(dport, ())),
            (Suggestion(dst, dport, use, "external"),))
    return None


def node_port_on_service_ip(case: Case) -> Diagnosis | None:
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    found = _service_address(case)
    if found is None:
        return None
    svcs, kind = found
    if any(s.port == dport for s in svcs):
        return None
    mine = [s for s in svcs if s.node_port == dport and s.protocol.lower() == proto]
    others = [s for s in facts.node_ports.get(dport, []) if s.protocol.lower() == proto]
    candidates = mine or others
    if not candidates:
        return None
    s = candidates[0]
    whose = "its" if mine else f"another Service's ({label(s)}), not of {_service_name(svcs[0])}; on this"
    use, instead = _use_instead(facts, s)
    return Diagnosis(
        "node-port-on-service-ip", "error",
        f"{dport} is the nodePort of {label(s)}, used on {'its' if mine else 'the'} {kind} {dst}",
        f"A nodePort is opened on the nodes' own addresses, not on Service IPs. {dport} is {whose} nodePort; "
        f"{dst} only forwards {_ports_text(svcs)}. A packet to {case.target} matches no rule. "
        f"{_fate(case, kind)}",
        f"use {use}", facts.evidence(facts.rules_for(svcs[0] if not mine else s, dst)), instead)


def target_port_on_service_ip(case: Case) -> Diagnosis | None:
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    found = _service_address(case)
    if found is None:
        return None
    svcs, kind = found
    if any(s.port == dport for s in svcs):
        return None
    target = [s for s in svcs if s.protocol.lower() == proto and any(ep.port == dport for ep in s.endpoints)]
    if not target:
        return None
    s = target[0]
    pods = ", ".join(join_host_port(ep.ip, ep.port) for ep in s.endpoints[:4] if ep.port == dport)
    more = ", …" if len(s.endpoints) > 4 else ""
    use, instead = _use_instead(facts, s)
    return Diagnosis(
        "target-port-on-service-ip", "error",
        f"{dport} is the targetPort of {label(s)}; the Service listens on {s.port}",
        f"{dport} is the port the pods listen on (the Service's targetPort). kube-proxy only rewrites "
        f"{join_host_port(dst, s.port)} to port {dport} of a pod; a packet to {case.target} matches no rule. "
        f"{_fate(case, kind)}",
        f"use {use}. Port {dport} only works on the pod IPs themselves ({pods}{more})",
        facts.evidence(facts.rules_for(s, dst)), instead)


def unknown_port(case: Case) -> Diagnosis | None:
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    found = _service_address(case)
    if found is None:
        return None
    svcs, kind = found
    if any(s.port == dport and s.protocol.lower() == proto for s in svcs):
        return None
    names = ", ".join(sorted({_service_name(s) for s in svcs}))
    ports = _ports_text(svcs)
    first = sorted((s for s in svcs if s.port), key=lambda s: (s.protocol.lower() != proto, s.port))
    instead = tuple(Suggestion(dst, s.port, s.protocol.lower(), _who_can(kind)) for s in first[:1])
    return Diagnosis(
        "unknown-port", "error", f"{dst} is the {kind} of {names}, which has no port {dport}/{proto}",
        f"{dst} forwards only {ports}. {dport}/{proto} is none of the Service's ports (nor a targetPort or "
        f"nodePort of it), so no rule matches. {_fate(case, kind)}",
        f"use one of the ports it has: {ports}",
        facts.evidence(rule for s in svcs for rule in facts.rules_for(s, dst)), instead)


def service_port_on_node_ip(case: Case) -> Diagnosis | None:
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    if not facts.is_node_address(dst) or facts.node_ports.get(dport):
        return None
    svc_port = facts.service_ports.get(dport, [])
    same = [s for s in svc_port if s.protocol.lower() == proto]
    if not (same or svc_port):
        return None
    s = (same or svc_port)[0]
    with_np = [x for x in (same or svc_port) if x.node_port]
    instead: tuple[Suggestion, ...]
    if with_np:
        n = with_np[0]
        fix = (f"use {join_host_port(dst, n.node_port)} (the nodePort of {label(n)}) from outside, or "
               f"{join_host_port(n.cluster_ip, dport)} from inside the cluster")
        instead = (Suggestion(dst, n.node_port, n.protocol.lower(), "external"),
                   Suggestion(n.cluster_ip, dport, n.protocol.lower(), "pod"))
    else:
        fix = (f"use {join_host_port(s.cluster_ip, dport)} from inside the cluster; {label(s)} has no nodePort, "
               "so to reach it from outside make it type NodePort or LoadBalancer")
        instead = (Suggestion(s.cluster_ip, dport, s.protocol.lower(), "pod"),) if s.cluster_ip else ()
    owners = " and ".join(sorted({label(x) for x in (same or svc_port)})[:3])
    return Diagnosis(
        "service-port-on-node-ip", "error", f"{dport} is the service port of {owners}, used on a node address",
        f"{dst} is this node's own address. A Service port is forwarded only on the Service's own IPs (here "
        f"{join_host_port(s.cluster_ip, dport)}); a node address forwards only nodePorts, and no Service has "
        f"nodePort {dport}/{proto}. The packet is delivered to the node itself: a program listening on {dport} "
        "answers, otherwise the connection is refused.",
        fix, facts.evidence(facts.rules_for(s)), instead)


def not_a_service_address(case: Case) -> Diagnosis | None:
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    if _service_address(case) is not None:
        return None
    owners = facts.by_endpoint_ip.get(dst, [])
    node_port = [s for s in facts.node_ports.get(dport, []) if s.protocol.lower() == proto]
    if facts.is_node_address(dst):
        serves = [o for o in owners if any(ep.ip == dst and ep.port == dport for ep in o.endpoints)]
        if serves:
            return Diagnosis(
                "not-a-service-address", "info", f"{case.target} is this node's own address, an endpoint of "
                f"{label(serves[0])}",
                f"The node serves {label(serves[0])} itself on port {dport}; kube-proxy does not rewrite traffic "
                "to it, and none is needed.",
                f"through the Service use {_use_instead(facts, serves[0])[0]}", ())
        return Diagnosis(
            "not-a-service-address", "warning", f"{dst} is a node address, and no Service has nodePort {dport}/{proto}",
            f"kube-proxy forwards only nodePorts on the node's addresses, so the packet is delivered to the node "
            f"itself: a program listening on {dport} answers, otherwise the connection is refused.",
            f"nodePorts on this node: {facts.node_port_listing}", ())
    hint = ""
    if node_port:
        unknown = "" if facts.node_ips_given else " (this node's addresses were not given, so only loopback counts)"
        hint = (f"{dport} is the nodePort of {label(node_port[0])}: if {dst} is a node's address, pass it with "
                f"--node-ip{unknown}. ")
    if owners:
        s = owners[0]
        ports = sorted({ep.port for o in owners for ep in o.endpoints if ep.ip == dst and ep.port})
        ok = dport in ports
        what = "a pod IP" if facts.in_pod_network(dst) or not facts.pod_nets else "a host-network address"
        port_text = ", ".join(map(str, ports)) or "?"
        use, instead = _use_instead(facts, s)
        serves = f"It serves {label(s)} on port{'s' if len(ports) > 1 else ''} {port_text}"
        return Diagnosis(
            "not-a-service-address", "info" if ok else "warning",
            f"{dst} is {what}, an endpoint of {label(s)}, not a Service address",
            hint + f"Traffic to an endpoint's own address needs no kube-proxy rule and is not rewritten. {serves}"
            + ("." if ok else f", not {dport}: {dport} answers only if something else listens there."),
            f"through the Service use {use}" + ("" if ok or not ports else
                                               f"; directly, use {join_host_port(dst, ports[0])}"),
            (), instead)
    nearby = facts.near_service_range(dst)
    if nearby:
        detail = (f"{dst} looks like a ClusterIP (this node's Service IPs are in {nearby}), but no rule names it: "
                  "the Service was deleted or not yet synced to this node, it lives in another cluster, or the "
                  f"address is mistyped. {_fate(case, 'ClusterIP')}")
    else:
        detail = (f"{dst} appears in no kube-proxy rule: it is no ClusterIP, externalIP or LoadBalancer IP this "
                  "node knows, nor an endpoint (another cluster? a stale DNS answer? an address outside "
                  "Kubernetes?). kube-proxy leaves the packet alone.")
    return Diagnosis(
        "not-a-service-address", "error" if nearby else "warning", f"no Service on this node has the address {dst}",
        hint + detail,
        "look the Service up again (`kubectl get svc -A -o wide`) and use its current ClusterIP; "
        "--cluster or --kubeconfig compares the rules with the API", ())


ADDRESS_RULES: tuple[Callable[[Case], Diagnosis | None], ...] = (
    not_forwarded, wrong_protocol, node_port_on_service_ip, target_port_on_service_ip, unknown_port,
    service_port_on_node_ip, not_a_service_address,
)


# -- anything else that stopped it --------------------------------------------------------------------------

def blocked_by_rule(case: Case) -> Diagnosis | None:
    """A DROP/REJECT that is not one of kube-proxy's own answers: a host firewall or the CNI decided."""
    for outcome in case.failed:
        if outcome.verdict not in ("DROP", "REJECT") or outcome.decided_by is None:
            continue
        d = outcome.decided_by
        rule = case.decided_rule(outcome)
        rewritten = outcome.final_destination and outcome.final_destination != outcome.original_destination
        after = f" after it was sent to {outcome.final_destination}" if rewritten else ""
        refused = "the client gets 'connection refused'" if outcome.verdict == "REJECT" else \
            f"{_wait(case.proto)}"
        if d.policy is not None:
            summary = f"the {d.table} {d.chain} chain's policy {d.policy} stops the packet{after}"
            detail = (f"No rule in {d.table} {d.chain} accepts it, so the chain's default policy ({d.policy}) "
                      f"decides, and {refused}. The policy is the host's, not kube-proxy's.")
            evidence: tuple[Evidence, ...] = ()
        else:
            summary = f"a {outcome.verdict} rule in {d.table} {d.chain} (line {d.line}) stops the packet{after}"
            detail = (f"This rule is not kube-proxy's (a host firewall or the CNI wrote it), and {refused}.")
            evidence = case.facts.evidence([rule]) if rule is not None else ()
        return Diagnosis(
            "blocked-by-rule", "error", summary, detail,
            "allow this traffic in the rules that own that chain (the host firewall or the CNI's policy), or "
            "connect from a source they accept", evidence)
    return None


def hairpin(case: Case) -> Diagnosis | None:
    src = case.src
    for outcome in case.dnat:
        if outcome.destination and _ip_of(outcome.destination) == src:
            masq = ("; kube-proxy masquerades it, so the pod sees the node's address as the source (the KUBE-SEP "
                    f"rule `-s {src}` → KUBE-MARK-MASQ)") \
                if outcome.masquerade else ""
            return Diagnosis(
                "hairpin", "info", f"the pod {src} reaches itself through its Service (hairpin)",
                f"With probability {_pct(outcome.probability)} the Service sends this connection back to the pod "
                f"that opened it{masq}. The reply then has to leave the pod's own network port and come back "
                "through it, which works only when that bridge port has hairpin mode on.",
                "if these connections hang, turn on hairpin mode (kubelet --hairpin-mode=hairpin-veth, or "
                "`hairpinMode: true` in the CNI bridge configuration), or let the pod talk to itself on localhost",
                _step_evidence(s for s in outcome.path if s.chain.startswith("KUBE-SEP-"))[:2])
    return None


def healthy(case: Case) -> Diagnosis | None:
    dnat = case.dnat
    if not dnat or len(dnat) != len(case.trace.outcomes):
        return None
    service = dnat[0].service or "the Service"
    parts = [f"{o.destination} {_pct(o.probability)}" for o in dnat]
    masq = {o.masquerade for o in dnat}
    if masq == {True}:
        masq_text = "masqueraded: the pod sees the node's address as the source, not the client's"
    elif masq == {False}:
        masq_text = "not masqueraded: the pod sees the client's own address"
    else:
        masq_dest = ", ".join(str(o.destination) for o in dnat if o.masquerade)
        masq_text = f"masqueraded (the pod sees the node's address) only on the way to {masq_dest}"
    dests = _plural(len(dnat), "endpoint")
    return Diagnosis(
        "healthy", "info", f"reaches {service}: {', '.join(parts)}",
        f"kube-proxy rewrites the destination to {'one of ' if len(dnat) > 1 else ''}{dests}, {masq_text}.",
        "nothing to fix in these rules; if the connection still fails, look at the pods (readiness, the port they "
        "listen on, NetworkPolicies)",
        _step_evidence(s for s in dnat[0].path if s.chain in ("KUBE-SERVICES", "KUBE-NODEPORTS"))[:2])


def cluster_disagreements(case: Case) -> list[Diagnosis]:
    """compare_with_cluster's findings (stale-endpoints, missing-service, …) for the Services this packet
    concerns: those that own its address (in the rules or in the API), the one it reached, the nodePort's."""
    facts = case.facts
    if not facts.findings_by_label:
        return []
    # The Services that own the address, narrowed to the port asked for when one of them has it (a port
    # missing from the rules or renumbered in the API concerns every port of the address).
    ports = {(finding_label(svc.namespace, svc.name, svc.port_name, svc.protocol), svc.port or 0,
              svc.protocol.lower()) for svc, _ in facts.by_address.get(case.dst, [])}
    ports |= facts.api_ports_by_address.get(_canonical(case.dst), set())
    exact = {p for p in ports if p[1] == case.dport and p[2] == case.proto}
    labels = {name for name, _, _ in (exact or ports)}
    if facts.is_node_address(case.dst):
        for svc in facts.node_ports.get(case.dport, []):
            labels.add(finding_label(svc.namespace, svc.name, svc.port_name, svc.protocol))
        labels |= facts.api_labels_by_node_port.get(case.dport, set())
    for svc in facts.by_label.get(str(case.dnat[0].service), []) if case.dnat else []:
        labels.add(finding_label(svc.namespace, svc.name, svc.port_name, svc.protocol))
    out: list[Diagnosis] = []
    for name in sorted(labels):
        out.extend(facts.findings_by_label.get(name, ()))
    return out


# -- putting it together ------------------------------------------------------------------------------------

NODE_RULES: tuple[Callable[[Case], Diagnosis | None], ...] = (no_kube_proxy_rules, iptables_backend_split)
KUBE_ANSWERS: tuple[Callable[[Case], Diagnosis | None], ...] = (no_endpoints, no_local_endpoints,
                                                                 source_range_blocked)


def _first(rules: Iterable[Callable[[Case], Diagnosis | None]], case: Case) -> Diagnosis | None:
    for rule in rules:
        found = rule(case)
        if found is not None:
            return found
    return None


def diagnose(case: Case) -> tuple[Diagnosis, ...]:
    """Every diagnosis that applies: node-wide ones, then at most one cause per failure, then notes."""
    found = [d for d in (rule(case) for rule in NODE_RULES) if d is not None]
    answer = _first(KUBE_ANSWERS, case)
    if answer is not None:
        found.append(answer)
    else:
        if not case.dnat and case.facts.era.has_iptables_rules:
            address = _first(ADDRESS_RULES, case)
            if address is not None:
                found.append(address)
        blocked = blocked_by_rule(case)
        if blocked is not None:
            found.append(blocked)
    found.extend(cluster_disagreements(case))
    extra = hairpin(case)
    if extra is not None:
        found.append(extra)
    if not any(d.severity != "info" for d in found):
        ok = healthy(case)
        if ok is not None:
            found.append(ok)
    return tuple(found)
