"""Trace + diagnosis: what fails for a destination, why, and what to use instead.

`Explainer` is built on an iptrace.kube.analysis.Analysis (the dataplane's layout and tracer and the Service
view, built once: that is the "loading"); each `explain()` then costs one trace per source plus a few
dictionary look-ups. Dataplane-free: iptables and nftables nodes are explained by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from iptrace.dataplane import Packet, Trace, join_host_port
from iptrace.errors import InputError
from iptrace.explain.catalogue import CATALOGUE, diagnose
from iptrace.explain.diagnosis import SEVERITY_ORDER, Diagnosis, Evidence, Explanation, Report
from iptrace.explain.facts import Case, Facts
from iptrace.kube.sources import Claimed, of_family, pick_source, pod_interface, pod_interface_note

__all__ = ["CATALOGUE", "VERDICT_WORDS", "Diagnosis", "Evidence", "Explainer", "Explanation", "Report"]

SOURCE_KINDS = ("pod", "node", "external")
VERDICT_WORDS = {"DNAT": "reaches an endpoint", "DROP": "dropped (times out)", "REJECT": "refused",
                  "ACCEPT": "not sent to any pod", "CONTINUE": "not sent to any pod"}
_SOURCE_WORDS = {"pod": "from a pod", "node": "from the node itself", "external": "from outside the cluster",
                 "given": "from the given source"}


class Explainer:
    def __init__(self, analysis: Any, *, cluster: Any = None, findings: Sequence[Any] | None = None) -> None:
        """`analysis`: iptrace.kube.analysis.Analysis of one node and family. With `cluster` (a ClusterState)
        the API's findings for the asked Services are included (`findings` when already computed)."""
        self.analysis = analysis
        layout = analysis.layout
        family = analysis.family
        self.tracer = analysis.tracer
        self.node_ips = tuple(of_family(analysis.node_ips, family)) or tuple(of_family(layout.node_ips, family))
        self.pod_cidrs = tuple(layout.pod_cidrs)
        self.facts = Facts.build(analysis, self.node_ips, node_ips_given=analysis.node_ips_given,
                                 pod_cidrs=self.pod_cidrs)
        if cluster is not None:
            self.facts.add_cluster(cluster, findings if findings is not None else
                                   _cluster_findings(analysis, cluster, self.node_ips))
        self._sources = {kind: pick_source(kind, family, self.node_ips, self.pod_cidrs, layout.endpoint_ips,
                                           layout.node_pod_cidrs, claimed=Claimed(layout))
                         for kind in SOURCE_KINDS}
        self.pod_interface = pod_interface(layout.pod_interfaces)

    @property
    def view(self) -> Any:
        """The node's whole Service view (built on first use; explain() itself builds only what it asks for)."""
        return self.analysis.view

    def source(self, kind: str) -> tuple[str, str]:
        """(address, the assumption that choice makes) for `pod`, `node` or `external`."""
        found = self._sources.get(kind)
        if found is None:
            raise InputError(f"unknown source kind {kind!r}; expected pod, node, external or an IP address")
        return found

    def explain_one(self, dst: str, dport: int, *, proto: str = "tcp", src: str = "external",
                    in_interface: str | None = None, notes: Sequence[str] = ()) -> Explanation:
        """`notes`: how the caller read the addresses (dataplane.as_sent), listed with the trace's assumptions."""
        kind = src if src in SOURCE_KINDS else "given"
        src_ip, chosen = self.source(src) if kind != "given" else (src, "")
        arrives = ""
        if kind == "pod" and in_interface is None and self.pod_interface is not None:
            in_interface, arrives = self.pod_interface, pod_interface_note(self.pod_interface)
        packet = Packet(src_ip, dst, dport, proto, in_interface=in_interface)
        trace = self.tracer.trace(packet)
        if chosen or notes or arrives:  # (Trace's own fields: dataclasses.replace would read them all again, by name)
            added = tuple(n for n in (*notes, chosen, arrives) if n)
            trace = Trace(trace.packet, trace.entry, trace.outcomes, (*trace.assumptions, *added))
        diagnoses = tuple(sorted(diagnose(Case(self.facts, trace, kind)),
                                 key=lambda d: SEVERITY_ORDER[d.severity]))
        headline = _headline(trace, packet)
        if any(d.id == "client-loopback" for d in diagnoses):  # (the trace met no rule: say why it did not)
            headline = (f"{join_host_port(packet.dst, packet.dport)}/{packet.proto} never reaches this node: "
                        f"{packet.dst} is the sender's own loopback")
        return Explanation(kind, trace, _verdict(trace), headline, diagnoses)

    def explain(self, dst: str, dport: int, *, proto: str = "tcp", src: str | None = None,
                in_interface: str | None = None, notes: Sequence[str] = ()) -> Report:
        if not 0 < dport <= 65535:
            raise InputError(f"port {dport} is out of range; expected 1-65535")
        kinds = (src,) if src is not None else SOURCE_KINDS
        explanations = tuple(self.explain_one(dst, dport, proto=proto, src=k, in_interface=in_interface,
                                              notes=notes) for k in kinds)
        return Report(join_host_port(dst, dport), proto, explanations, _differences(explanations))


def _cluster_findings(analysis: Any, cluster: Any, node_ips: Sequence[str]) -> Callable[[list[str]], list[Any]]:
    """Where this node's rules disagree with the API (stale-endpoints, missing-service, …) about some Service
    ports: a question compares those it concerns, not the whole node (paired with the API once per batch)."""
    from iptrace.kube.compare import ClusterComparison

    node_name = None
    for ip in node_ips:
        node = cluster.node_by_ip(ip)
        if node is not None:
            node_name = node.name
            break
    return ClusterComparison(analysis, cluster, node_name=node_name).findings


def _verdict(trace: Trace) -> str:
    weights: dict[str, float] = {}
    for o in trace.outcomes:
        weights[o.verdict] = weights.get(o.verdict, 0.0) + o.probability
    return max(weights.items(), key=lambda kv: kv[1])[0] if weights else "CONTINUE"


def _headline(trace: Trace, packet: Packet) -> str:
    target = f"{join_host_port(packet.dst, packet.dport)}/{packet.proto}"
    dnat = [o for o in trace.outcomes if o.verdict == "DNAT"]
    if dnat and len(dnat) == len(trace.outcomes):
        service = dnat[0].service or "a Service"
        return f"{target} reaches {service} ({len(dnat)} endpoint{'s' if len(dnat) > 1 else ''})"
    verdicts = {o.verdict for o in trace.outcomes}
    if verdicts <= {"DROP", "REJECT"} and all(o.decided_by is None for o in trace.outcomes):  # (by the routes)
        if verdicts == {"REJECT"}:
            return (f"{target} is not sent: the node's routes have no way out for where it goes, so the client gets "
                    "'unreachable' at once")
        return (f"{target} is dropped: the node's routes send it nowhere (a blackhole route, or none where output's "
                "DNAT sends it), so the client waits until it times out")
    if verdicts == {"REJECT"}:
        return f"{target} is refused: a rule rejects it, so the client gets 'connection refused' at once"
    if verdicts == {"DROP"}:
        return f"{target} is dropped: a rule drops it, so the client waits until it times out"
    if verdicts <= {"CONTINUE", "ACCEPT"}:
        return (f"no kube-proxy rule matches {target}: its destination is not rewritten (no DNAT), so it goes to "
                f"{packet.dst} unchanged")
    parts = [f"{o.verdict} {o.probability * 100:.0f}%" for o in trace.outcomes]
    return f"{target}: " + ", ".join(parts)


def _differences(explanations: Sequence[Explanation]) -> tuple[str, ...]:
    if len(explanations) < 2:
        return ()
    by_verdict: dict[tuple[str, frozenset[str]], list[str]] = {}
    for e in explanations:
        ids = frozenset(d.id for d in e.diagnoses if d.severity != "info")
        by_verdict.setdefault((e.verdict, ids), []).append(e.source_kind)
    if len(by_verdict) == 1:
        out = []
        # (externalTrafficPolicy Local: outside clients reach this node's endpoints only, pods and the node all)
        reached: dict[tuple[str, ...], list[str]] = {}
        for e in explanations:
            dests = tuple(sorted({str(o.destination) for o in e.trace.outcomes if o.verdict == "DNAT"}))
            reached.setdefault(dests, []).append(e.source_kind)
        if len(reached) > 1:
            out.append("endpoints reached differ: " + "; ".join(
                f"{' and '.join(_SOURCE_WORDS[k] for k in kinds)} {', '.join(dests) or 'none'}"
                for dests, kinds in reached.items()))
        masq = {e.source_kind: any(o.masquerade for o in e.trace.outcomes) for e in explanations}
        if len(set(masq.values())) > 1:
            yes = [_SOURCE_WORDS[k] for k, v in masq.items() if v]
            no = [_SOURCE_WORDS[k] for k, v in masq.items() if not v]
            # (no DNAT: no endpoint either; the packet goes on to the address it was sent to, which then sees it)
            dnat = any(o.verdict == "DNAT" for e in explanations for o in e.trace.outcomes)
            seen = "the endpoint sees" if dnat else f"{explanations[0].trace.packet.dst} would see"
            out.append(f"masqueraded {' and '.join(yes)} ({seen} the node's address), not {' or '.join(no)}")
        return tuple(out)
    out = []
    for (verdict, ids), kinds in by_verdict.items():
        words = " and ".join(_SOURCE_WORDS[k] for k in kinds)
        out.append(f"{words}: {VERDICT_WORDS.get(verdict, verdict)}" + (f" ({', '.join(sorted(ids))})" if ids else ""))
    return tuple(out)
