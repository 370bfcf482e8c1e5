"""Phrases every diagnosis shares: percentages, what to use instead, what becomes of a packet nothing
rewrote. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from iptrace.dataplane import Step, join_host_port
from iptrace.explain.diagnosis import Suggestion
from iptrace.explain.facts import Case, Facts


def service_name(svc: Any) -> str:
    return f"{svc.namespace}/{svc.name}" if svc.namespace else str(svc.name)


def pct(p: float) -> str:
    text = f"{p * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def ip_of(destination: str) -> str:
    return destination.rsplit(":", 1)[0].strip("[]")


def use_instead(facts: Facts, svc: Any) -> tuple[str, tuple[Suggestion, ...]]:
    """Every address that does reach this service port, by kind of client."""
    proto = svc.protocol.lower()
    parts: list[str] = []
    out: list[Suggestion] = []
    if svc.cluster_ip and svc.port:
        parts.append(f"{join_host_port(svc.cluster_ip, svc.port)} from inside the cluster")
        out.append(Suggestion(svc.cluster_ip, svc.port, proto, "pod"))
    for ip in svc.external_ips:
        if svc.port:
            parts.append(f"{join_host_port(ip, svc.port)} from outside")
            out.append(Suggestion(ip, svc.port, proto, "external"))
    for ip in svc.lb_ips:
        if svc.port and svc.lb_source_ranges:
            # (kube-proxy drops a load-balancer IP's clients outside loadBalancerSourceRanges)
            parts.append(f"{join_host_port(ip, svc.port)} from {', '.join(svc.lb_source_ranges)} "
                         "(its loadBalancerSourceRanges)")
            out += [Suggestion(ip, svc.port, proto, r) for r in svc.lb_source_ranges]
        elif svc.port:
            parts.append(f"{join_host_port(ip, svc.port)} from outside")
            out.append(Suggestion(ip, svc.port, proto, "external"))
    if svc.node_port and svc.no_local_endpoints:
        # externalTrafficPolicy Local: a node without one of the Service's endpoints drops outside clients.
        parts.append(f"<a node that runs one of its endpoints>:{svc.node_port} from outside "
                     "(externalTrafficPolicy Local: this node has none)")
    elif svc.node_port:
        local = svc.external_traffic_policy == "Local"
        parts.append(f"{join_host_port(facts.node_hint(), svc.node_port)} "
                     + ("from outside (externalTrafficPolicy Local: only nodes that run one of its endpoints "
                        "answer)" if local else "(or any other node's address) from outside"))
        if facts.node_ips:
            out.append(Suggestion(facts.node_ips[0], svc.node_port, proto, "external"))
    text = "; ".join(parts) if parts else "no address of this node reaches it"
    return text + (f" (all {proto.upper()})" if proto != "tcp" else ""), tuple(out)


def ports_text(svcs: Iterable[Any]) -> str:
    items = sorted({(s.port, s.protocol.lower(), s.port_name) for s in svcs if s.port})
    return ", ".join(f"{p}/{proto}" + (f" ({name})" if name else "") for p, proto, name in items)


def wait(proto: str) -> str:
    return "no answer ever comes back" if proto == "udp" else "the connection hangs until it times out"


def kube_refusal(case: Case) -> str | None:
    """"invalid-port" or "unallocated" when kube-proxy's own rules refused the packet for its address (nftables
    mode's cluster-ips-check), else None."""
    for outcome in case.failed:
        step = case.decided_step(outcome)
        if step is not None and step.kind in ("invalid-port", "unallocated"):
            return step.kind
    return None


def fate_steps(case: Case) -> list[Step]:
    """The steps of the rules that rejected or dropped the packet (kube-proxy's own refusal in nftables mode, or a
    later rule): the evidence for what `fate` says."""
    steps = (case.decided_step(o) for o in case.failed if o.verdict in ("REJECT", "DROP"))
    return [s for s in steps if s is not None]


def fate(case: Case, kind: str) -> str:
    """What becomes of a packet that kube-proxy did not send to a Service, as a sentence."""
    verdicts = case.trace.verdicts
    refusal = kube_refusal(case)
    if refusal == "invalid-port":
        return ("In nftables mode kube-proxy rejects it itself (cluster-ips-check: a ClusterIP answers only on "
                "its Service's ports and protocols), so the client gets 'connection refused' at once, not a hang.")
    if refusal == "unallocated":
        return (f"In nftables mode kube-proxy drops it itself (cluster-ips-check: no Service has this address of "
                f"the service CIDR), so {wait(case.proto)}.")
    if verdicts == {"REJECT"}:
        return "A later rule, not kube-proxy's, rejects it (connection refused)."
    if verdicts == {"DROP"}:
        return f"A later rule, not kube-proxy's, drops it: {wait(case.proto)}."
    if kind == "ClusterIP":
        return f"No machine owns a ClusterIP, so the packet goes nowhere: {wait(case.proto)}."
    return (f"It goes on to {case.dst} unchanged; unless some machine there serves port {case.dport}, "
            f"{wait(case.proto)}.")
