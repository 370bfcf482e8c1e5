"""Which conntrack entries the current rules no longer decide.

The kernel runs the nat rules only for a flow's first packet; every later packet follows the flow's conntrack
entry, whose reply tuple says where the flow really goes. So entries are judged by tracing *their own* first
packet (source, destination, port, protocol) through today's rules with the dataplane's Tracer, and comparing
where the rules send that packet now with where the entry sends it:

- `current`: DNATed to an endpoint the rules still choose for that packet;
- `stale`: DNATed to an endpoint the rules no longer choose (or the rules now reject or drop the packet);
- `not-dnated`: a UDP flow that was never DNATed (its reply comes from the address it was sent to) while the
  rules now DNAT that packet: it was created before the rules existed, and never reaches an endpoint;
- `unchanged`: not DNATed, and the rules do not DNAT it either (or a non-UDP flow the rules would now DNAT:
  its retries are new flows);
- `finished`: a closed connection (TIME_WAIT, CLOSE) whose entry only waits to expire: a new connection on the
  same ports makes the kernel drop it and ask the rules again.

Entries are judged a FlowGroup at a time (they differ only by the client's source port, which kube-proxy's
rules never match on; the trace uses the Packet's default source port). Reads only the dataplane interface
(Packet, Trace, Outcome); the same code serves iptables and nftables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from iptrace.conntrack.table import ConntrackTable, FlowGroup
from iptrace.dataplane import Packet, Trace, Tracer

CURRENT, STALE, NOT_DNATED, UNCHANGED, FINISHED = "current", "stale", "not-dnated", "unchanged", "finished"
# States of a connection that is over (tcp, sctp): its entry decides no packet any more.
CLOSED_STATES = frozenset({"TIME_WAIT", "CLOSE", "CLOSED"})
# Protocols a trace can follow (ports in the tuple).
TRACEABLE = frozenset({"tcp", "udp", "sctp"})


class Judgement:
    """(A plain slots class: a frozen dataclass costs ~0.4 ms to create at import, and judgements are read,
    never compared nor copied.)"""

    __slots__ = ("chosen", "flows", "status", "trace")

    def __init__(self, flows: FlowGroup, status: str, chosen: tuple[str, ...], trace: Trace) -> None:
        self.flows = flows
        self.status = status  # CURRENT | STALE | NOT_DNATED | UNCHANGED | FINISHED
        self.chosen = chosen  # where the rules send these flows' first packet today (DNAT destinations)
        self.trace = trace

    @property
    def reaches(self) -> str:
        """Where the entries send the flows' packets: the reply tuple's source, ip:port."""
        return self.flows.reaches

    @property
    def count(self) -> int:
        return len(self.flows.lines)

    @property
    def service(self) -> str | None:
        """The Service port the rules file this packet under (from the trace), if any."""
        return next((o.service for o in self.trace.outcomes if o.service), None)


class Judge:
    """Traces each distinct first packet once (a client's flows to one Service port share it)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.traces: dict[tuple[str, str, int, str], tuple[Trace, tuple[str, ...]]] = {}

    def judge(self, g: FlowGroup) -> Judgement | None:
        """None for flows a trace cannot follow (icmp, gre, …)."""
        if g.proto not in TRACEABLE or g.dport is None or g.reply_sport is None:
            return None
        key = (g.src, g.dst, g.dport, g.proto)
        found = self.traces.get(key)
        if found is None:
            trace = self.tracer.trace(Packet(g.src, g.dst, g.dport, g.proto))
            chosen = tuple(dict.fromkeys(o.destination for o in trace.outcomes
                                         if o.verdict == "DNAT" and o.destination))
            found = self.traces[key] = (trace, chosen)
        trace, chosen = found
        if g.dnated:
            status = CURRENT if g.reaches in chosen else FINISHED if g.state in CLOSED_STATES else STALE
        elif chosen and g.proto == "udp":
            status = NOT_DNATED
        else:
            status = UNCHANGED
        return Judgement(g, status, chosen, trace)

    def judge_all(self, groups: Iterable[FlowGroup]) -> list[Judgement]:
        return [j for g in groups if (j := self.judge(g)) is not None]


def flows_to(table: ConntrackTable, dst: str, dport: int, proto: str, src: str | None = None) -> list[FlowGroup]:
    """The flows whose original tuple goes to dst:dport/proto (and comes from `src` when given)."""
    return [g for g in table.flows_to(dst, dport, proto) if src is None or g.src == src]


def judge_table(table: ConntrackTable, tracer: Tracer, family: str) -> list[Judgement]:
    """Every flow of `family` ("ipv4", "ipv6": the rules' family) that the rules might decide differently:
    DNATed flows, and UDP flows to an address and port the rules DNAT today (one trace per destination tells).
    Unrelated flows (to pods directly, out of the cluster) cost one trace per destination port."""
    judge = Judge(tracer)
    out: list[Judgement] = []
    for address in table.destinations():
        if (":" in address) != (family == "ipv6"):
            continue
        by_port: dict[tuple[str, int], list[FlowGroup]] = {}
        for g in table.flows_to(address):
            if g.proto in TRACEABLE and g.dport is not None:
                by_port.setdefault((g.proto, g.dport), []).append(g)
        for (proto, _), groups in by_port.items():
            if not any(g.dnated for g in groups):
                if proto != "udp":
                    continue
                probe = judge.judge(groups[0])
                if probe is None or not probe.chosen:
                    continue
            out += judge.judge_all(groups)
    return out


def endpoints_chosen(judgements: Sequence[Judgement]) -> frozenset[str]:
    """Every destination the rules chose for any of these flows' first packets."""
    return frozenset(d for j in judgements for d in j.chosen)
