"""The diagnoses catalogue (SPEC.md "Diagnoses"): each a small function with a stable id.

A function looks at one trace plus the Service view (through `Facts`) and returns a Diagnosis or None. It
must say what happens, why (in the Service's own terms: port, targetPort, nodePort), the dump lines that
prove it, and what to use instead. Dataplane-free: what a rule is to kube-proxy comes from the trace's own
steps (Step.kind), never from a dataplane's rule syntax. Pure: no I/O, no printing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from iptrace.dataplane import Outcome, Step, join_host_port
from iptrace.explain.addresses import ADDRESS_RULES, client_loopback
from iptrace.explain.conflicts import address_conflict
from iptrace.explain.diagnosis import Diagnosis, Evidence, Suggestion
from iptrace.explain.facts import Case, canonical, finding_label, label, rewritten, step_evidence
from iptrace.explain.phrases import ip_of, pct, plural, service_name, wait
from iptrace.layout import ONE_MODE_FIX, PARTIAL_DUMP
from iptrace.text import listed

CATALOGUE: tuple[str, ...] = (
    "target-port-on-service-ip", "node-port-on-service-ip", "service-port-on-node-ip", "unknown-port",
    "not-a-service-address", "wrong-protocol", "no-endpoints", "no-local-endpoints", "source-range-blocked",
    "hairpin", "no-kube-proxy-rules", "iptables-backend-split", "stale-endpoints", "missing-service",
    "not-forwarded", "node-port-not-on-address", "blocked-by-rule", "address-conflict", "healthy",
    "client-loopback", "kube-proxy-mode-split", "no-route",
    # With a conntrack table (iptrace.explain.conntrack): entries the rules no longer decide.
    "stale-conntrack", "stale-conntrack-no-dnat", "conntrack-healthy",
)


# -- whole-node diagnoses -----------------------------------------------------------------------------------

def no_kube_proxy_rules(case: Case) -> Diagnosis | None:
    proxy = case.facts.proxy
    if proxy.has_rules:
        return None
    lost = ("so nothing on this node rewrites a Service address to a pod: every ClusterIP and nodePort "
            "connection fails here")
    warning = case.facts.warning()
    if proxy.dataplane == "nftables" and proxy.other_mode:
        # (an iptables-mode node's `nft list ruleset`: its Services work, through rules of the other form)
        return Diagnosis(
            "no-kube-proxy-rules", "warning", "this ruleset shows kube-proxy in iptables mode, not in nftables mode",
            f"The ruleset has no `kube-proxy` table, but {proxy.other_mode}. The trace follows those rules as nft "
            "lists them; what kube-proxy meant by them (which Service a port is, its endpoints and policies) is "
            "read from the iptables form of the same rules.",
            "give iptrace the node's `iptables-save` output (`iptrace collect` saves it as iptables-save.txt)")
    if proxy.name == PARTIAL_DUMP:
        # (the node's Services may well work: what they do is in the part of the dump that is missing)
        return Diagnosis(
            "no-kube-proxy-rules", "warning", "this dump does not hold kube-proxy's Service rules",
            f"The dump has {proxy.evidence[-1]}. So kube-proxy runs in iptables mode on this node, and where a "
            "Service address goes is in the part the dump lacks: nothing here tells whether a ClusterIP or "
            "nodePort connection works.",
            "give iptrace the node's whole `iptables-save` output (every table, not cut: `iptrace collect` saves "
            "it as iptables-save.txt)")
    if proxy.dataplane == "nftables":
        summary = "this node has no kube-proxy nftables table"
        detail = (f"The ruleset has no `kube-proxy` table, {lost}. kube-proxy is not running in nftables mode: it "
                  "is stopped, runs in iptables or IPVS mode, or was replaced (Cilium, kube-router).")
        fix = ("check kube-proxy's --proxy-mode on this node, and its pod's logs; for iptables mode give "
               "`iptables-save` to iptrace instead")
    elif proxy.mode == "ipvs":  # (kube-proxy's KUBE-SERVICES is there: its ipset matches mark and accept)
        summary = "kube-proxy runs in IPVS mode: its Services are not in these iptables rules"
        detail = ("kube-proxy runs in IPVS mode: Services are IPVS virtual servers in the kernel, not iptables "
                  "rules, so an iptables dump cannot show where they go.")
        fix = "list the virtual servers with `ipvsadm -Ln` on the node"
    elif proxy.mode == "nftables":
        summary = "this node has no kube-proxy iptables rules"
        detail = ("The dump has no KUBE-SERVICES chain and says some tables are managed by nftables itself: "
                  "kube-proxy probably runs in nftables mode.")
        fix = "give iptrace the node's `nft list ruleset` (`iptrace collect` saves it as nft-ruleset.txt)"
    elif warning is not None:
        summary = "this node has no kube-proxy iptables rules"
        detail = ("The dump has no KUBE-SERVICES chain, but it warns that iptables-legacy tables exist: "
                  "kube-proxy most likely wrote its rules through iptables-legacy, which this (nft) dump "
                  "does not show.")
        fix = ("run `iptables-legacy-save` on the node and explain that dump (`iptrace collect` fetches both); "
               "then make kube-proxy, kubelet and the CNI use one backend")
    else:
        summary = "this node has no kube-proxy iptables rules"
        detail = (f"The dump has no KUBE-SERVICES chain, {lost}. kube-proxy is not running in iptables mode: "
                  "it is stopped, runs in IPVS or nftables mode, or was replaced (Cilium, kube-router).")
        fix = ("check kube-proxy on this node (`kubectl -n kube-system get pods -o wide | grep kube-proxy`, its "
               "logs and its --proxy-mode)")
    return Diagnosis("no-kube-proxy-rules", "error", summary, detail, fix,
                     (warning,) if warning is not None else ())


def iptables_backend_split(case: Case) -> Diagnosis | None:
    if not case.facts.proxy.legacy_tables_present:
        return None
    warning = case.facts.warning()
    return Diagnosis(
        "iptables-backend-split", "warning", "the node has rules in both iptables backends (nft and legacy)",
        "This dump was read through the nf_tables backend, and it warns that iptables-legacy tables exist too. "
        "The kernel applies both, so rules that matter may be in the other backend, where this dump cannot "
        "see them.",
        "also run `iptables-legacy-save` on the node (`iptrace collect` does) and explain both dumps; make "
        "kube-proxy, kubelet and the CNI use the same backend",
        (warning,) if warning is not None else ())


def proxy_mode_split(case: Case) -> Diagnosis | None:
    proxy = case.facts.proxy
    if not proxy.has_rules or not proxy.other_mode:
        return None
    return Diagnosis(
        "kube-proxy-mode-split", "warning", "kube-proxy's rules are on this node in both proxy modes",
        f"Besides kube-proxy's {proxy.mode}-mode table, {proxy.other_mode}. The kernel runs both: a packet passes "
        "the chains of both, and the first DNAT decides. The trace follows the kernel's order (by priority; of "
        "equal priorities, the chain created later runs first), so a Service the two modes send to different "
        "endpoints goes where the trace says, until either is rewritten.", ONE_MODE_FIX)


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
        step = case.decided_step(outcome) if outcome.verdict == "REJECT" else None
        if step is None or step.kind != "no-endpoints" or step.service is None:
            continue
        name = step.service
        # (nftables mode: the Service's own element of @no-endpoint-services, then the shared reject-chain)
        return _no_endpoints_diagnosis(
            name, f"No pod of {name} is ready, so kube-proxy answers for the Service with a REJECT rule: the "
            "client gets 'connection refused' at once (an ICMP port-unreachable), not a timeout.",
            step_evidence((s for s in outcome.path if s.kind == "no-endpoints" and s.service == name),
                          case.facts.analysis.ruleset))
    if case.dnat or _local_drop_step(case) is not None:  # (a Local policy's drop: no_local_endpoints says it)
        return None
    # kube-proxy hooks its REJECT for externalIPs, LB IPs and nodePorts (filter KUBE-EXTERNAL-SERVICES) into
    # INPUT and FORWARD only, so the node's own connections miss it and go on unanswered. A packet another rule
    # dropped or rejected first did not go on (nftables mode: a loadBalancerSourceRanges firewall-… chain drops a
    # client outside the ranges before @no-endpoint-services): the rules after this one say what did.
    if any(o.verdict in ("DROP", "REJECT") for o in case.failed):
        return None
    facts = case.facts
    owners = [svc for svc, _ in facts.by_address.get(case.dst, []) if svc.port == case.dport]
    if facts.is_node_address(case.dst):
        owners += facts.node_ports.get(case.dport, [])
    empty = [svc for svc in owners if svc.protocol.lower() == case.proto and not svc.endpoints]
    if not empty:
        return None
    name = label(empty[0])
    fate = ("it is delivered to the node itself, where nothing listens on that port (connection refused)"
            if facts.is_node_address(case.dst) else f"it goes on to {case.dst} unchanged and {wait(case.proto)}")
    return _no_endpoints_diagnosis(
        name, f"No pod of {name} is ready. kube-proxy's REJECT rule for it guards only traffic that arrives "
        f"from outside; this packet leaves the node itself, so it is not rewritten and {fate}.",
        facts.evidence(line for e in empty[0].entries for line in e.lines))


def _local_drop_step(case: Case) -> tuple[Outcome, Step, str] | None:
    for outcome in case.failed:
        for step in outcome.path:
            if step.kind == "no-local-endpoints" and step.service is not None:
                return outcome, step, step.service
    return None


def _mark_drop_fate(case: Case) -> str:
    """What becomes of a packet kube-proxy marked with KUBE-MARK-DROP (the KUBE-XLB era) that no rule dropped."""
    if case.facts.is_node_address(case.dst):  # (INPUT: a dump without kubelet's KUBE-FIREWALL, e.g. nat alone)
        return ("kubelet's KUBE-FIREWALL drops marked packets addressed to the node itself, as this one is (no "
                "rule of this dump does), so it never reaches a pod")
    return ("kubelet drops marked packets only when they are addressed to the node itself, so this one goes on to "
            f"{case.dst} unchanged and never reaches a pod")


def no_local_endpoints(case: Case) -> Diagnosis | None:
    found = _local_drop_step(case)
    if found is None:
        return None
    outcome, step, name = found
    svcs = case.facts.ports_of_step(step)
    svc = svcs[0] if svcs else None
    # A ClusterIP is governed by internalTrafficPolicy; externalIPs, LB IPs and nodePorts by the external one.
    internal = any(kind == "ClusterIP" for s, kind in case.facts.by_address.get(case.dst, []) if label(s) == name)
    policy = "internalTrafficPolicy" if internal else "externalTrafficPolicy"
    elsewhere = ", ".join(ep.ip for ep in svc.endpoints[:4]) if svc is not None and svc.endpoints else ""
    where = f" (its endpoints {elsewhere} run on other nodes)" if elsewhere else ""
    if outcome.verdict == "DROP":
        fate = f"so kube-proxy drops the packet and {wait(case.proto)}"
    else:
        fate = f"so kube-proxy marks the packet to be dropped (KUBE-MARK-DROP); {_mark_drop_fate(case)}"
    if internal:
        detail = (f"{name} has {policy}: Local, which sends connections to its ClusterIP only to endpoints on "
                  f"the node they are made on (the node's own pods and processes). This node runs none{where}, "
                  f"{fate}. Only this node drops them; on nodes that run a pod of the Service they are answered.")
    else:
        detail = (f"{name} has {policy}: Local, which sends traffic only to endpoints on the node that received "
                  f"it (to keep the client's source address). This node runs none{where}, {fate}. Only this node "
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
    decided = case.decided_step(outcome)
    steps = [step] + ([decided] if decided is not None and decided != step else [])
    return Diagnosis(
        "no-local-endpoints", "error",
        f"{name} has {policy} Local and no endpoint on this node, so the packet "
        + ("is dropped" if outcome.verdict == "DROP" else "never reaches a pod"),
        detail, fix, step_evidence(steps, case.facts.analysis.ruleset), instead)


def source_range_blocked(case: Case) -> Diagnosis | None:
    for outcome in case.failed:
        steps = []
        name = ""
        for step in outcome.path:
            if step.kind == "firewall":
                steps.append(step)
                name = step.service or case.facts.chain_label(step.chain)
        if not steps:
            continue
        svcs = case.facts.ports_of_step(steps[0])
        ranges = ", ".join(svcs[0].lb_source_ranges) if svcs and svcs[0].lb_source_ranges else ""
        allowed = f"only from {ranges}" if ranges else "only from its loadBalancerSourceRanges"
        instead: tuple[Suggestion, ...] = ()
        # (nftables mode filters a Service without endpoints too: from an allowed range it is then refused)
        empty = bool(svcs) and not svcs[0].endpoints
        if svcs and svcs[0].port and not empty:
            instead = tuple(Suggestion(case.dst, case.dport, case.proto, r) for r in svcs[0].lb_source_ranges)
        if outcome.verdict == "DROP":
            fate, end = f" and is dropped: {wait(case.proto)}", "is dropped"
        else:  # the KUBE-XLB era's KUBE-MARK-DROP: kubelet drops the mark only on the node's own addresses
            fate = f", which marks it to be dropped (KUBE-MARK-DROP); {_mark_drop_fate(case)}"
            end = "never reaches a pod"
        return Diagnosis(
            "source-range-blocked", "error",
            f"{case.src} is outside the loadBalancerSourceRanges of {name}, so the packet {end}",
            f"{name} accepts traffic to its LoadBalancer IP {allowed}. {case.src} is not in those ranges, so "
            + (f"the Service's firewall chain {steps[-1].chain} drops it: {wait(case.proto)}."
               if case.facts.proxy.dataplane == "nftables" and outcome.verdict == "DROP" else
               # (iptables: it falls through the nat KUBE-FW chain, whose jumps take only the ranges, and
               # KUBE-PROXY-FIREWALL (KUBE-MARK-DROP before it) drops it; nftables: a rule of its own)
               f"the packet falls through the Service's firewall chain{fate}."),
            f"connect from an allowed range, or add the client's range to spec.loadBalancerSourceRanges of "
            f"{service_name(svcs[0]) if svcs else name}"
            + ("; from there it is refused as long as the Service has no ready endpoints" if empty else "")
            + (f": check `kubectl -n {svcs[0].namespace} get endpointslices -l "
               f"kubernetes.io/service-name={svcs[0].name}`" if empty and svcs[0].namespace else ""),
            step_evidence(steps, case.facts.analysis.ruleset), instead)
    return None


# -- anything else that stopped it --------------------------------------------------------------------------

def blocked_by_rule(case: Case) -> Diagnosis | None:
    """A DROP/REJECT that is not one of kube-proxy's own answers: a host firewall or the CNI decided."""
    for outcome in case.failed:
        if outcome.verdict not in ("DROP", "REJECT") or outcome.decided_by is None:
            continue
        d = outcome.decided_by
        step = case.decided_step(outcome)
        if step is not None and step.kind in ("invalid-port", "unallocated"):
            continue  # kube-proxy's own answer for the address (nftables mode): the address diagnoses say it
        # (every endpoint the same rule or policy stops the packet after: each failed outcome is one endpoint)
        sent = [o.final_destination for o in case.failed if o.verdict == outcome.verdict and rewritten(o)
                and o.decided_by == d] if rewritten(outcome) else []
        after = f" after it was sent to {listed(list(dict.fromkeys(sent)), 'or')}" if sent else ""
        refused = "the client gets 'connection refused'" if outcome.verdict == "REJECT" else \
            f"{wait(case.proto)}"
        if d.policy is not None:
            summary = f"the {d.table} {d.chain} chain's policy {d.policy} stops the packet{after}"
            detail = (f"No rule in {d.table} {d.chain} accepts it, so the chain's default policy ({d.policy}) "
                      f"decides, and {refused}. The policy is the host's, not kube-proxy's.")
            evidence: tuple[Evidence, ...] = ()
        else:
            summary = f"a {outcome.verdict} rule in {d.table} {d.chain} (line {d.line}) stops the packet{after}"
            detail = (f"This rule is not kube-proxy's (a host firewall or the CNI wrote it), and {refused}.")
            evidence = step_evidence([step], case.facts.analysis.ruleset) if step is not None else ()
        detail += _maybe_local(case, sent)
        return Diagnosis(
            "blocked-by-rule", "error", summary, detail,
            "allow this traffic in the rules that own that chain (the host firewall or the CNI's policy), or "
            "connect from a source they accept", evidence)
    return None


def no_route(case: Case) -> Diagnosis | None:
    """A DROP/REJECT no rule decided: the node's routes (--routes) have no way out for where the packet goes, and the
    kernel sends it nowhere (iptrace.routes.no_route_note)."""
    stopped = [o for o in case.failed if o.decided_by is None and o.verdict in ("DROP", "REJECT")]
    if not stopped:
        return None
    where = listed(list(dict.fromkeys(ip_of(o.final_destination) for o in stopped)), "or")
    refused = "the client gets 'unreachable' at once (ICMP destination unreachable; the node's own connect() " \
        "fails)" if any(o.verdict == "REJECT" for o in stopped) else f"{wait(case.proto)}"
    return Diagnosis(
        "no-route", "error", f"the node's routes have no way out for {where}: the kernel sends the packet nowhere",
        f"No rule stops it: the routing decision does. The node's routes have no route for {where} (and no default "
        f"route), or an unreachable, prohibit, blackhole or throw route, so {refused}. Policy routing (ip rule) is "
        "not in the routes file.",
        f"give the node a route for {where} (a default route, or the CNI's route to the pods there); "
        f"`ip route get {ip_of(stopped[0].final_destination)}` on the node shows what the kernel does", ())


def _maybe_local(case: Case, sent: list[str]) -> str:
    """When the node's addresses were not given, an endpoint outside the pod network may be the node itself (a
    host-network endpoint: the API server of a single-node k3s): the trace forwarded the packet to it as to another
    machine, where the kernel would deliver it locally, through other chains."""
    facts = case.facts
    if facts.node_ips_given or not facts.pod_nets:  # (with no pod network known, any endpoint could be a pod)
        return ""
    hosts = [ip for ip in dict.fromkeys(ip_of(d) for d in sent)
             if not facts.is_node_address(ip) and not facts.in_pod_network(ip)]
    if not hosts:
        return ""
    ip = hosts[0]
    return (f" The node's addresses were not given, so {ip} was taken for another machine; if it is this node's "
            f"own address (a host-network endpoint, as the API server of a single-node cluster), the kernel "
            f"delivers the packet locally, past other chains: pass --node-ip {ip} for that answer.")


def hairpin(case: Case) -> Diagnosis | None:
    src = case.src
    if case.facts.is_node_address(src):
        return None  # (the node, or a host-network pod, reaching itself: delivered locally, no bridge port)
    for outcome in case.dnat:
        if outcome.destination and ip_of(outcome.destination) == src:
            marking = next((st.rule for st in outcome.path if st.kind == "endpoint" and "dnat" not in st.rule), None)
            why = (f"the KUBE-SEP rule `-s {src}` → KUBE-MARK-MASQ" if case.facts.proxy.dataplane != "nftables" else
                   f"its endpoint chain's rule `{marking}`" if marking else "its endpoint chain")
            masq = f"; kube-proxy masquerades it, so the pod sees the node's address as the source ({why})" \
                if outcome.masquerade else ""
            return Diagnosis(
                "hairpin", "info", f"the pod {src} reaches itself through its Service (hairpin)",
                f"With probability {pct(outcome.probability)} the Service sends this connection back to the pod "
                f"that opened it{masq}. The reply then has to leave the pod's own network port and come back "
                "through it, which works only when that bridge port has hairpin mode on.",
                "if these connections hang, turn on hairpin mode (kubelet --hairpin-mode=hairpin-veth, or "
                "`hairpinMode: true` in the CNI bridge configuration), or let the pod talk to itself on localhost",
                step_evidence((s for s in outcome.path if s.kind == "endpoint"), case.facts.analysis.ruleset)[:2])
    return None


_CLIENT = {"pod": "For a client pod ({src})", "node": "From the node itself ({src})",
           "external": "For a client outside the cluster ({src})"}


def healthy(case: Case) -> Diagnosis | None:
    dnat = case.dnat
    if not dnat or len(dnat) != len(case.trace.outcomes):
        return None
    service = dnat[0].service or "the Service"
    parts = [f"{o.destination} {pct(o.probability)}" for o in dnat]
    masq = {o.masquerade for o in dnat}
    if masq == {True}:
        masq_text = "masqueraded: the endpoint sees the node's address as the source, not the client's"
    elif masq == {False}:
        masq_text = "not masqueraded: the endpoint sees the client's own address"
    else:
        masq_dest = ", ".join(str(o.destination) for o in dnat if o.masquerade)
        masq_text = f"masqueraded (the endpoint sees the node's address) only on the way to {masq_dest}"
    dests = plural(len(dnat), "endpoint")
    # (whether it is masqueraded depends on the client: said for this one, as the answer may be shown for all)
    who = _CLIENT.get(case.source_kind, "From {src}").format(src=case.src)
    decided = case.decided_step(dnat[0])
    ports = case.facts.ports_of_step(decided) if decided is not None else []
    timeout = ports[0].session_affinity_timeout if ports else None
    sticky = (f" With sessionAffinity ClientIP these shares are a client's first connection's; its later ones go "
              f"to the same endpoint as long as each comes within {timeout}s of the one before.") if timeout else ""
    return Diagnosis(
        "healthy", "info", f"reaches {service}: {', '.join(parts)}",
        f"kube-proxy rewrites the destination to {'one of ' if len(dnat) > 1 else ''}{dests}. {who} it is "
        f"{masq_text}.{sticky}",
        "nothing to fix in these rules; if the connection still fails, look at the pods (readiness, the port they "
        "listen on, NetworkPolicies)",
        step_evidence((s for s in dnat[0].path if s.kind == "dispatch"), case.facts.analysis.ruleset)[:2])


def cluster_disagreements(case: Case) -> list[Diagnosis]:
    """compare_with_cluster's findings (stale-endpoints, missing-service, …) for the Services this packet
    concerns: those that own its address (in the rules or in the API), the one it reached, the nodePort's."""
    facts = case.facts
    if not facts.has_cluster:
        return []
    # The Services that own the address, narrowed to the port asked for when one of them has it (a port
    # missing from the rules or renumbered in the API concerns every port of the address).
    ports = {(finding_label(svc.namespace, svc.name, svc.port_name, svc.protocol), svc.port or 0,
              svc.protocol.lower()) for svc, _ in facts.by_address.get(case.dst, [])}
    ports |= facts.api_ports_by_address.get(canonical(case.dst), set())
    exact = {p for p in ports if p[1] == case.dport and p[2] == case.proto}
    labels = {name for name, _, _ in (exact or ports)}
    if facts.is_node_address(case.dst):
        for svc in facts.node_ports.get(case.dport, []):
            labels.add(finding_label(svc.namespace, svc.name, svc.port_name, svc.protocol))
        labels |= facts.api_labels_by_node_port.get(case.dport, set())
    for svc in facts.ports_of_chains(c for _table, c in case.dnat[0].chains) if case.dnat else []:
        labels.add(finding_label(svc.namespace, svc.name, svc.port_name, svc.protocol))
    return facts.cluster_findings(labels)


# -- putting it together ------------------------------------------------------------------------------------

NODE_RULES: tuple[Callable[[Case], Diagnosis | None], ...] = (no_kube_proxy_rules, iptables_backend_split,
                                                               proxy_mode_split)
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
    elsewhere = client_loopback(case)
    if elsewhere is not None:  # (no rule of this node saw the packet: nothing else to say about it)
        return (*found, elsewhere)
    answer = _first(KUBE_ANSWERS, case)
    if answer is not None:
        found.append(answer)
    else:
        if not case.rewritten and case.facts.proxy.has_rules:  # (for a packet nothing rewrote)
            address = _first(ADDRESS_RULES, case)
            if address is not None:
                found.append(address)
        blocked = blocked_by_rule(case) or no_route(case)
        if blocked is not None:
            found.append(blocked)
    conflict = address_conflict(case)
    if conflict is not None:
        found.append(conflict)
    found.extend(cluster_disagreements(case))
    extra = hairpin(case)
    if extra is not None:
        found.append(extra)
    if not any(d.severity != "info" for d in found):
        ok = healthy(case)
        if ok is not None:
            found.append(ok)
    return tuple(found)
