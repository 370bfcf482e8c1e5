"""The conntrack model: one frozen value per flow entry. Positions (line, text) are kept for evidence but stay
out of equality, so a round trip compares meaning."""

from __future__ import annotations

from dataclasses import dataclass, field

from iptrace.dataplane import join_host_port


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """One direction of a flow. `sport`/`dport` for port protocols (tcp, udp, sctp, dccp, udplite); the other
    protocol fields (icmp type/code/id, gre keys) verbatim in `fields`; accounting and directional zones that
    follow the tuple in `counters`. Addresses are normalised (`ipaddress` compressed form)."""

    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    fields: tuple[tuple[str, str], ...] = ()
    counters: tuple[tuple[str, str], ...] = ()

    @property
    def source(self) -> str:
        """`ip:port` (IPv6 as `[ip]:port`), or the bare address without ports."""
        return self.src if self.sport is None else join_host_port(self.src, self.sport)

    @property
    def destination(self) -> str:
        return self.dst if self.dport is None else join_host_port(self.dst, self.dport)


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One line of `conntrack -L` / /proc/net/nf_conntrack. `original` is the tuple the client sent; `reply` the
    one the kernel expects back, so `reply.src` is where the flow really goes (the endpoint a DNAT chose).
    `timeout` is None for offloaded flows, `state` None for stateless protocols, `mark` None when not printed.
    Entry fields other than mark and zone (use, id, secmark, secctx, labels, helper, delta-time) are kept
    verbatim in `fields`, timestamps (`[start=…]`) in `flags`."""

    family: str  # "ipv4" | "ipv6"
    proto: str  # "tcp", "udp", … or "unknown"
    proto_number: int
    state: str | None
    timeout: int | None
    original: FlowTuple
    reply: FlowTuple
    flags: tuple[str, ...] = ()
    mark: int | None = None
    zone: int | None = None
    fields: tuple[tuple[str, str], ...] = ()
    line: int = field(default=0, compare=False)
    text: str = field(default="", compare=False)

    @property
    def dnated(self) -> bool:
        """The reply comes from somewhere else than the original destination: a DNAT rewrote it."""
        return (self.reply.src, self.reply.sport) != (self.original.dst, self.original.dport)

    @property
    def replied(self) -> bool:
        return "UNREPLIED" not in self.flags
