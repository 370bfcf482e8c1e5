"""Which conntrack entries the current rules no longer decide.

The kernel runs the nat rules only for a flow's first packet; every later packet follows the flow's conntrack
entry, whose reply tuple says where the flow really goes. So an entry is judged by tracing *its own* first
packet (source, destination, ports, protocol) through today's rules with the dataplane's Tracer, and comparing
where the rules send that packet now with where the entry sends it:

- `current`: DNATed to an endpoint the rules still choose for that packet;
- `stale`: DNATed to an endpoint the rules no longer choose (or the rules now reject or drop the packet);
- `not-dnated`: a UDP flow that was never DNATed (its reply comes from the address it was sent to) while the
  rules now DNAT that packet: it was created before the rules existed, and never reaches an endpoint;
- `unchanged`: not DNATed, and the rules do not DNAT it either (or a non-UDP flow the rules would now DNAT:
  its retries are new flows);
- `finished`: a closed connection (TIME_WAIT, CLOSE) whose entry only waits to expire: a new connection on the
  same ports makes the kernel drop it and ask the rules again.

Reads only the dataplane interface (Packet, Trace, Outcome); the same code serves iptables and nftables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from iptrace.conntrack.model import ConntrackEntry
from iptrace.conntrack.table import ConntrackTable
from iptrace.dataplane import Packet, Trace, Tracer, join_host_port

CURRENT, STALE, NOT_DNATED, UNCHANGED, FINISHED = "current", "stale", "not-dnated", "unchanged", "finished"
# States of a connection that is over (tcp, sctp): its entry decides no packet any more.
CLOSED_STATES = frozenset({"TIME_WAIT", "CLOSE", "CLOSED"})
# Protocols a trace can follow (ports in the tuple).
TRACEABLE = frozenset({"tcp", "udp", "sctp"})


@dataclass(frozen=True, slots=True)
class Judgement:
    entry: ConntrackEntry
    status: str  # CURRENT | STALE | NOT_DNATED | UNCHANGED | FINISHED
    reaches: str  # where the entry sends the flow's packets: the reply tuple's source, ip:port
    chosen: tuple[str, ...]  # where the rules send the entry's first packet today (DNAT destinations)
    trace: Trace

    @property
    def service(self) -> str | None:
        """The Service port the rules file this packet under (from the trace), if any."""
        return next((o.service for o in self.trace.outcomes if o.service), None)


class Judge:
    """Traces each distinct first packet once (a client's flows to one Service port share it)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.traces: dict[tuple[str, str, int, str], Trace] = {}

    def trace(self, entry: ConntrackEntry) -> Trace:
        o = entry.original
        assert o.dport is not None
        key = (o.src, o.dst, o.dport, entry.proto)
        found = self.traces.get(key)
        if found is None:
            packet = Packet(o.src, o.dst, o.dport, entry.proto, sport=o.sport or 0)
            found = self.traces[key] = self.tracer.trace(packet)
        return found

    def judge(self, entry: ConntrackEntry) -> Judgement | None:
        """None for flows a trace cannot follow (icmp, gre, …)."""
        if entry.proto not in TRACEABLE or entry.original.dport is None or entry.reply.sport is None:
            return None
        trace = self.trace(entry)
        chosen = tuple(dict.fromkeys(o.destination for o in trace.outcomes
                                     if o.verdict == "DNAT" and o.destination))
        reaches = join_host_port(entry.reply.src, entry.reply.sport)
        if entry.dnated:
            status = CURRENT if reaches in chosen else FINISHED if entry.state in CLOSED_STATES else STALE
        elif chosen and entry.proto == "udp":
            status = NOT_DNATED
        else:
            status = UNCHANGED
        return Judgement(entry, status, reaches, chosen, trace)

    def judge_all(self, entries: Iterable[ConntrackEntry]) -> list[Judgement]:
        return [j for e in entries if (j := self.judge(e)) is not None]


def entries_to(table: ConntrackTable, dst: str, dport: int, proto: str, src: str | None = None
               ) -> list[ConntrackEntry]:
    """The entries whose original tuple goes to dst:dport/proto (and comes from `src` when given)."""
    return [e for e in table.to_address(dst) if e.proto == proto and e.original.dport == dport
            and (src is None or e.original.src == src)]


def judge_table(table: ConntrackTable, tracer: Tracer, family: str) -> list[Judgement]:
    """Every entry of `family` ("ipv4", "ipv6": the rules' family) that the rules might decide differently:
    DNATed flows, and UDP flows to an address and port the rules DNAT today (one trace per destination tells).
    Unrelated flows (to pods directly, out of the cluster) cost one trace per destination port, not one per
    flow."""
    judge = Judge(tracer)
    out: list[Judgement] = []
    for address in table.destinations():
        if (":" in address) != (family == "ipv6"):
            continue
        groups: dict[tuple[str, int], list[ConntrackEntry]] = {}
        for e in table.to_address(address):
            if e.proto in TRACEABLE and e.original.dport is not None:
                groups.setdefault((e.proto, e.original.dport), []).append(e)
        for (proto, _), entries in groups.items():
            if not any(e.dnated for e in entries):
                if proto != "udp":
                    continue
                probe = judge.judge(entries[0])
                if probe is None or not probe.chosen:
                    continue
            out += judge.judge_all(entries)
    return out


def endpoints_chosen(judgements: Sequence[Judgement]) -> frozenset[str]:
    """Every destination the rules chose for any of these flows' first packets."""
    return frozenset(d for j in judgements for d in j.chosen)
