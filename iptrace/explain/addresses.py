"""Diagnoses for a packet nothing rewrote: what its address and port are, in the Service's terms (a targetPort
or nodePort on a Service IP, a service port on a node address, an unknown port or protocol, an address no
Service has). Each a small function with a stable id (see catalogue.py). Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from iptrace.dataplane import for_this_host, join_host_port
from iptrace.explain.diagnosis import Diagnosis, Evidence, Suggestion
from iptrace.explain.facts import Case, canonical, label, step_evidence
from iptrace.explain.phrases import fate, fate_steps, kube_refusal, ports_text, service_name, use_instead
from iptrace.text import counted, listed


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
        facts.way_evidence([s], None if kind == "node address" else dst))


def _open_node_addresses(case: Case) -> list[str]:
    """This node's addresses of the question's IP family that accept NodePorts (none of them loopback)."""
    facts = case.facts
    fam = ipaddress.ip_address(case.dst).version
    candidates = [(ip, ipaddress.ip_address(ip)) for ip in (*facts.node_ips, *facts.node_port_addresses.addresses)
                  if "/" not in ip]
    found = [ip for ip, addr in candidates
             if addr.version == fam and not addr.is_loopback and facts.opens_node_ports(ip)]
    return list(dict.fromkeys(found))


_SENDERS = {"pod": "the pod's own", "external": "the outside client's own"}


def client_loopback(case: Case) -> Diagnosis | None:
    """A loopback address from a pod or another host: its sender's own loopback, so the packet never reaches this
    node (the tracer stops it before any hook: iptrace.dataplane.senders_own_loopback)."""
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    if (not for_this_host(dst) or facts.is_node_address(case.src)
            or any(o.verdict != "CONTINUE" or o.path for o in case.trace.outcomes)):
        return None
    sender = _SENDERS.get(case.source_kind, "its sender's own")
    node_port = [s for s in facts.node_ports.get(dport, []) if s.protocol.lower() == proto]
    service_port = [s for s in facts.service_ports.get(dport, []) if s.protocol.lower() == proto]
    instead: list[Suggestion] = []
    if node_port:
        s = node_port[0]
        nodes = _open_node_addresses(case)
        at = join_host_port(nodes[0] if nodes else "<node-ip>", dport)
        what = f"{case.target} is nodePort {dport} of {label(s)}, which kube-proxy opens on the node's own addresses"
        fix = f"use {at} (the node's address and the nodePort)"
        instead.extend(Suggestion(ip, dport, proto, case.source_kind) for ip in nodes[:1])
        if s.cluster_ip and s.port:
            fix += f", or {join_host_port(s.cluster_ip, s.port)} (the ClusterIP and port) from inside the cluster"
            instead.append(Suggestion(s.cluster_ip, s.port, proto, "pod"))
    elif service_port:
        s = service_port[0]
        what = f"{dport} is the port of {label(s)}, which is forwarded on the Service's own IPs only"
        use, suggested = use_instead(facts, s)
        fix = f"use {use}"
        instead.extend(suggested)
    else:
        what = f"No Service has nodePort {dport}/{proto}"
        fix = "address a Service by its ClusterIP and port, or a nodePort on a node's address"
    localhost = ("A localhost nodePort works only from the node itself (in iptables mode, with the route_localnet "
                 "kube-proxy sets; never in nftables mode).")
    if case.source_kind == "given":
        localhost += (f" If {case.src} is this node's own address, pass it with --node-ip (the node's own connections "
                      f"to {dst} do meet its rules).")
    return Diagnosis(
        "client-loopback", "error", f"{dst} is {sender} loopback: the packet never reaches this node's rules",
        f"Every network namespace has its own loopback: {case.src} sending to {case.target} reaches itself, not "
        f"this node, so no kube-proxy rule sees the packet, and the connection is refused unless something in "
        f"that sender listens on port {dport}. {what}. {localhost}",
        fix, facts.evidence(facts.node_port_lines(dport)) if node_port else (), tuple(instead))


def node_port_not_on_address(case: Case) -> Diagnosis | None:
    """A nodePort on a node address where the rules accept no NodePorts (localhost, or an address outside
    --nodeport-addresses): nothing diverts the packet, it was never a NodePort there."""
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    if _service_address(case) is not None or not facts.is_node_address(dst) or facts.opens_node_ports(dst):
        return None
    ports = facts.node_ports.get(dport, [])
    # (of another protocol too: where no NodePort is open, the address is what fails first; the protocol is said)
    exact = [s for s in ports if s.protocol.lower() == proto] or ports
    if not exact:
        return None
    s = exact[0]
    npa = facts.node_port_addresses
    its = s.protocol.lower()
    suffix = "" if its == proto else f"/{its}"
    instead = tuple(Suggestion(ip, dport, its, "external") for ip in _open_node_addresses(case))
    where = " or ".join(join_host_port(x.address, dport) + suffix for x in instead[:2]) or f"<node-ip>:{dport}{suffix}"
    return Diagnosis(
        "node-port-not-on-address", "error", f"nodePort {dport} of {label(s)} is not open on {dst}",
        f"kube-proxy accepts NodePorts only where its rules send them ({npa.describe()}), and {dst} is not one of "
        f"those addresses, so no rule forwards {case.target}: the packet is delivered to the node itself, where "
        "nothing of the Service listens." + ("" if its == proto else f" Besides, nodePort {dport} is {its.upper()}, "
                                             f"not {proto.upper()}."),
        f"use {where} (a node address that accepts NodePorts), or {join_host_port(s.cluster_ip, s.port)}{suffix} "
        "from inside the cluster",
        facts.evidence((*npa.lines, *facts.node_port_lines(dport))), instead)


def _evidence(case: Case, svcs: Sequence[Any]) -> tuple[Evidence, ...]:
    """The rules of the Services' ways in at the asked address (at most four), then the rules that rejected or
    dropped the packet, if any."""
    return (*case.facts.way_evidence(svcs, case.dst), *step_evidence(fate_steps(case), case.facts.analysis.ruleset))


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
        # (every protocol the port has: kube-dns's 53 is UDP and TCP, so an SCTP question names both)
        uses = [s.protocol.lower() for s in other]
        said = " and ".join(f"{label(s)} over {s.protocol.upper()}" for s in other)
        words = " and ".join(u.upper() for u in uses)
        return Diagnosis(
            "wrong-protocol", "error", f"{case.target} is {said}, not {proto.upper()}",
            f"The Service declares port {dport} with protocol{'s' if len(uses) > 1 else ''} {words}, and kube-proxy "
            f"only rewrites {words} "
            f"packets for it. No rule forwards a {proto.upper()} packet to {case.target}. {fate(case, kind)}",
            f"use {_either([f'{u.upper()} ({case.target}/{u})' for u in uses])}, or add a {proto.upper()} port to "
            f"the Service",
            _evidence(case, other),
            tuple(Suggestion(dst, dport, u, _who_can(kind)) for u in uses))
    if facts.is_node_address(dst):
        if any(s.protocol.lower() == proto for s in facts.node_ports.get(dport, [])):
            return None
        other = facts.node_ports.get(dport, [])
        if not other:
            return None
        uses = [s.protocol.lower() for s in other]
        words = " and ".join(u.upper() for u in uses)
        return Diagnosis(
            "wrong-protocol", "error", f"nodePort {dport} of {' and '.join(label(s) for s in other)} is {words}, "
            f"not {proto.upper()}",
            f"kube-proxy opens nodePort {dport} for {words} only. A {proto.upper()} packet to {case.target} "
            f"is delivered to the node itself, where nothing of the Service listens.",
            f"use {_either([f'{u.upper()} ({case.target}/{u})' for u in uses])}, or add a {proto.upper()} port to "
            f"the Service",
            facts.evidence(facts.node_port_lines(dport)),
            tuple(Suggestion(dst, dport, u, "external") for u in uses))
    return None


def _either(words: list[str]) -> str:
    """`A`, `A or B`, `A, B or C`."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


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
    whose = "its" if mine else f"another Service's ({label(s)}), not of {service_name(svcs[0])}; on this"
    use, instead = use_instead(facts, s)
    return Diagnosis(
        "node-port-on-service-ip", "error",
        f"{dport} is the nodePort of {label(s)}, used on {'its' if mine else 'the'} {kind} {dst}",
        f"A nodePort is opened on the nodes' own addresses, not on Service IPs. {dport} is {whose} nodePort; "
        f"{dst} only forwards {ports_text(svcs)}. No rule forwards a packet to {case.target}. "
        f"{fate(case, kind)}",
        f"use {use}", _evidence(case, [svcs[0] if not mine else s]), instead)


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
    use, instead = use_instead(facts, s)
    # (endpoints outside the pod network are no pods: default/kubernetes's is the API server's host address)
    hosts = bool(facts.pod_nets) and not any(facts.in_pod_network(ep.ip) for ep in s.endpoints)
    who, one, where = ("the endpoints", "an endpoint", "the endpoint addresses") if hosts else (
        "the pods", "a pod", "the pod IPs")
    return Diagnosis(
        "target-port-on-service-ip", "error",
        f"{dport} is the targetPort of {label(s)}; the Service listens on {s.port}",
        f"{dport} is the port {who} listen on (the Service's targetPort). kube-proxy only rewrites "
        f"{join_host_port(dst, s.port)} to port {dport} of {one}; no rule forwards a packet to {case.target}. "
        f"{fate(case, kind)}",
        f"use {use}. Port {dport} only works on {where} themselves ({pods}{more})",
        _evidence(case, [s]), instead)


def unknown_port(case: Case) -> Diagnosis | None:
    dst, dport, proto = case.dst, case.dport, case.proto
    found = _service_address(case)
    if found is None:
        return None
    svcs, kind = found
    if any(s.port == dport and s.protocol.lower() == proto for s in svcs):
        return None
    names = ", ".join(sorted({service_name(s) for s in svcs}))
    ports = ports_text(svcs)
    first = sorted((s for s in svcs if s.port), key=lambda s: (s.protocol.lower() != proto, s.port))
    instead = tuple(Suggestion(dst, s.port, s.protocol.lower(), _who_can(kind)) for s in first[:1])
    return Diagnosis(
        "unknown-port", "error", f"{dst} is the {kind} of {names}, which has no port {dport}/{proto}",
        f"{dst} forwards only {ports}. {dport}/{proto} is none of the Service's ports (nor a targetPort or "
        f"nodePort of it), so no rule forwards it. {fate(case, kind)}",
        f"use one of the ports it has: {ports}",
        _evidence(case, svcs), instead)


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
    names = sorted({label(x) for x in (same or svc_port)})
    owners = listed(names if len(names) <= 3 else [*names[:3], counted(len(names) - 3, "other Service port")])
    return Diagnosis(
        "service-port-on-node-ip", "error", f"{dport} is the service port of {owners}, used on a node address",
        f"{dst} is this node's own address. A Service port is forwarded only on the Service's own IPs (here "
        f"{join_host_port(s.cluster_ip, dport)}); a node address forwards only nodePorts, and no Service has "
        f"nodePort {dport}/{proto}. The packet is delivered to the node itself: a program listening on {dport} "
        "answers, otherwise the connection is refused.",
        fix, facts.way_evidence([s]), instead)


def _health_check(case: Case, names: str, local: int | None, node_port: int | None, rules: str,
                  evidence: tuple[Evidence, ...]) -> Diagnosis:
    """A load balancer's health check of this node: kube-proxy's own health server answers it, not a pod.
    `local`: how many endpoints of the Service run on this node (None: its rules show none of the Service's);
    `rules`: what the rules do with the port."""
    if local is None:
        answer = "200 if it runs a ready endpoint, 503 if not (this node's rules show no endpoint of it)"
    else:
        answer = (f"200 (this node runs {counted(local, 'local endpoint')})" if local else
                  "503 (this node runs no endpoint of it, so a load balancer sends it no traffic)")
    use = f" To reach the Service itself use its nodePort {node_port}." if node_port else ""
    return Diagnosis(
        "not-a-service-address", "info",
        f"{case.dport} is the health-check nodePort of {names}: kube-proxy's health server answers it, not a pod",
        f"For a Service with externalTrafficPolicy: Local, kube-proxy itself listens on {case.dport}/tcp and "
        f"answers a load balancer's HTTP health check with whether this node has a ready endpoint of it: here "
        f"{answer}. Nothing is rewritten; {rules}.{use}",
        f"nothing to fix in these rules; if the load balancer marks this node down, look at the pods of {names} "
        "on it" if local or local is None else f"nothing to fix in these rules: 503 is meant, as this node runs "
        f"no pod of {names}; run one here if it should take the load balancer's traffic",
        evidence)


def _rules_health_check(case: Case, checked: list[tuple[Any, tuple[int, ...]]]) -> Diagnosis:
    """The health check of the rules' own (iptables mode accepts it in KUBE-NODEPORTS)."""
    names = listed(list(dict.fromkeys(service_name(s) for s, _ in checked)))  # (one health server a Service)
    local = len({ep.ip for s, _ in checked for ep in s.endpoints if ep.local})
    return _health_check(case, names, local, checked[0][0].node_port, "the rules only accept the port",
                         case.facts.evidence([line for _, lines in checked for line in lines]))


def _api_health_check(case: Case, services: list[Any]) -> Diagnosis:
    """A health check only the API names (iptrace.kube.cluster.ClusterService objects): nftables mode writes no
    rule for it; whether this node has local endpoints is read off the rules of the Service's ClusterIPs."""
    facts = case.facts
    keys = {(s.namespace, s.name) for s in services}
    views = [v for s in services for ip in s.cluster_ips if ip and ip != "None"
             for v, _ in facts.by_address.get(canonical(ip), []) if (v.namespace, v.name) in keys]
    local = len({ep.ip for v in views for ep in v.endpoints if ep.local}) if views else None
    node_port = next((p.node_port for s in services for p in s.ports if p.node_port), None)
    rules = ("nftables mode writes no rule for it (the cluster data names it)" if facts.proxy.mode == "nftables"
             else f"no rule of this node names it, though kube-proxy in {facts.proxy.mode} mode writes one: the "
             "rules may be older than the Service")
    return _health_check(case, listed(sorted(f"{ns}/{name}" for ns, name in keys)), local, node_port, rules, ())


def not_a_service_address(case: Case) -> Diagnosis | None:
    facts, dst, dport, proto = case.facts, case.dst, case.dport, case.proto
    if _service_address(case) is not None:
        return None
    owners = facts.by_endpoint_ip.get(dst, [])
    node_port = [s for s in facts.node_ports.get(dport, []) if s.protocol.lower() == proto]
    if facts.is_node_address(dst):
        checked = facts.health_checks(dport) if proto == "tcp" else []
        if checked:
            return _rules_health_check(case, checked)
        named = facts.api_health_checks.get(dport, []) if proto == "tcp" else []
        if named:
            return _api_health_check(case, named)
        serves = sorted((o for o in owners if any(ep.ip == dst and ep.port == dport for ep in o.endpoints)),
                        key=lambda o: o.protocol.lower() != proto)
        if serves:
            return Diagnosis(
                "not-a-service-address", "info", f"{case.target} is this node's own address, an endpoint of "
                f"{label(serves[0])}",
                f"The node serves {label(serves[0])} itself on port {dport}; kube-proxy does not rewrite traffic "
                "to it, and none is needed.",
                f"through the Service use {use_instead(facts, serves[0])[0]}", ())
        return Diagnosis(
            "not-a-service-address", "warning", f"{dst} is a node address, and no Service has nodePort {dport}/{proto}",
            f"kube-proxy forwards only nodePorts on the node's addresses, so the packet is delivered to the node "
            f"itself: a program listening on {dport} answers, otherwise the connection is refused."
            + (" nftables mode writes no rule for a healthCheckNodePort, so it may be one (kube-proxy's health "
               "server answers those): --cluster or --kubeconfig tells"
               if proto == "tcp" and facts.proxy.mode == "nftables" and not facts.has_cluster else ""),
            f"nodePorts on this node: {facts.node_port_listing}", ())
    hint = ""
    if node_port:
        unknown = "" if facts.node_ips_given else " (this node's addresses were not given, so only loopback counts)"
        hint = (f"{dport} is the nodePort of {label(node_port[0])}: if {dst} is a node's address, pass it with "
                f"--node-ip{unknown}. ")
    if owners:
        # each Service port this address is an endpoint of, with the port it serves it on: the one the asked
        # port and protocol belong to is the Service the reader meant
        served = sorted({(ep.port, o.protocol.lower(), label(o)): o for o in owners for ep in o.endpoints
                         if ep.ip == dst and ep.port}.items(), key=lambda item: item[0])
        ports = sorted({port for (port, _, _), _ in served})
        ok = dport in ports
        s = next((o for (port, p, _), o in served if port == dport and p == proto),
                 next((o for (port, _, _), o in served if port == dport), served[0][1] if served else owners[0]))
        what = "a pod IP" if facts.in_pod_network(dst) or not facts.pod_nets else "a host-network address"
        use, instead = use_instead(facts, s)
        named = [f"{name} on port {port}/{p}" for (port, p, name), _ in served] or [f"{label(s)} on port ?"]
        if len(named) > 3:
            named = [*named[:3], counted(len(named) - 3, "other Service port")]
        serves = "It serves " + listed(named)
        return Diagnosis(
            "not-a-service-address", "info" if ok else "warning",
            f"{dst} is {what}, an endpoint of {label(s)}, not a Service address",
            hint + f"Traffic to an endpoint's own address needs no kube-proxy rule and is not rewritten. {serves}"
            + ("." if ok else f", not {dport}: {dport} answers only if something else listens there."),
            f"through the Service use {use}" + ("" if ok or not ports else
                                               f"; directly, use {join_host_port(dst, ports[0])}"),
            (), instead)
    api = sorted(facts.api_ports_by_address.get(canonical(dst), ()))
    if api:  # the API has a Service there: this node's kube-proxy has not written it (missing-service says so)
        asked = [a for a in api if a[1] == dport and a[2] == proto] or api
        kind = "ClusterIP" if facts.near_service_range(dst) or kube_refusal(case) else "address"
        has = listed([f"{name} at {join_host_port(dst, port)}/{p}" for name, port, p in asked[:3]])
        return Diagnosis(
            "not-a-service-address", "error",
            f"no Service on this node has the address {dst}"
            + (", so kube-proxy drops the packet" if kube_refusal(case) == "unallocated" else ""),
            hint + f"No rule of this node names {dst}, but the API has {has}: the Service is new or changed and "
            f"this node's kube-proxy has not written it yet. {fate(case, kind)}",
            "restart kube-proxy on this node once it can sync (see missing-service); until it has written the "
            "Service, connections to it through this node fail",
            _evidence(case, []))
    nearby = facts.near_service_range(dst)
    # (with cluster data given, its comparison is said beside: missing-service when the API has the address)
    compare = "" if facts.has_cluster else "; --cluster or --kubeconfig compares the rules with the API"
    if kube_refusal(case) == "unallocated":
        return Diagnosis(
            "not-a-service-address", "error",
            f"no Service on this node has the address {dst}, so kube-proxy drops the packet",
            hint + f"{dst} is inside the service CIDR but no Service has it: the Service was deleted or not yet "
            "synced to this node, it lives in another cluster, or the address is mistyped. " + fate(case, "ClusterIP"),
            "look the Service up again (`kubectl get svc -A -o wide`) and use its current ClusterIP" + compare,
            _evidence(case, []))
    if nearby:
        detail = (f"{dst} looks like a ClusterIP (other ClusterIPs of this node are in {nearby}), but no rule names "
                  "it: the Service was deleted or not yet synced to this node, it lives in another cluster, or the "
                  f"address is mistyped. {fate(case, 'ClusterIP')}")
    else:
        detail = (f"{dst} appears in no kube-proxy rule: it is no ClusterIP, externalIP or LoadBalancer IP this "
                  "node knows, nor an endpoint (another cluster? a stale DNS answer? an address outside "
                  "Kubernetes?). kube-proxy leaves the packet alone.")
    return Diagnosis(
        "not-a-service-address", "error" if nearby else "warning", f"no Service on this node has the address {dst}",
        hint + detail,
        "look the Service up again (`kubectl get svc -A -o wide`) and use its current ClusterIP" + compare, ())


ADDRESS_RULES: tuple[Callable[[Case], Diagnosis | None], ...] = (
    node_port_not_on_address, not_forwarded, wrong_protocol, node_port_on_service_ip, target_port_on_service_ip,
    unknown_port, service_port_on_node_ip, not_a_service_address,
)
