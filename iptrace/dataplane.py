"""What every dataplane (iptables, nftables) shares with the layers above it: the packet a trace follows and
what a trace found.

A dataplane package (iptrace.iptables, iptrace.nftables) turns its own rules into these types; kube, explain
and render read only these, never a dataplane's model. `trace_to_json` is the stable `trace -o json` shape of
SPEC.md. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from iptrace.errors import InputError

# IP protocol numbers for the names iptables accepts after -p (and /etc/protocols spells).
PROTOCOL_NUMBERS: dict[str, int] = {
    "tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "icmp6": 58,
    "udplite": 136, "dccp": 33, "esp": 50, "ah": 51, "gre": 47, "ipip": 4, "mh": 135, "ipv6-mh": 135,
}
PROTOCOL_NAMES: dict[int, str] = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp", 136: "udplite",
                                  33: "dccp", 50: "esp", 51: "ah", 47: "gre", 4: "ipip", 135: "mh"}


def protocol_number(name: str) -> int | None:
    """`-p` value → protocol number; None for `all`/`0` (any protocol). Raises InputError when unknown."""
    text = name.lower()
    if text in ("all", "0"):
        return None
    if text.isdigit():
        return int(text)
    number = PROTOCOL_NUMBERS.get(text)
    if number is None:
        raise InputError(f"unknown protocol {name!r}; expected tcp, udp, sctp, icmp, a number or all")
    return number


@dataclass(frozen=True, slots=True)
class Packet:
    """One new connection's first packet. Addresses are normalised (`ipaddress` compressed form)."""

    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    sport: int = 40000
    in_interface: str | None = None

    def __post_init__(self) -> None:
        try:
            src = ipaddress.ip_address(self.src.strip("[]"))
            dst = ipaddress.ip_address(self.dst.strip("[]"))
        except ValueError as exc:
            raise InputError(f"not an IP address: {exc}; expected e.g. 10.0.0.1 or fd00::1") from None
        if src.version != dst.version:
            raise InputError(f"source {src} and destination {dst} are of different IP versions")
        for name, port in (("destination", self.dport), ("source", self.sport)):
            if not 0 <= port <= 65535:
                raise InputError(f"{name} port {port} is out of range; expected 0-65535")
        proto = self.proto.lower()
        protocol_number(proto)
        object.__setattr__(self, "src", str(src))
        object.__setattr__(self, "dst", str(dst))
        object.__setattr__(self, "proto", proto)

    @property
    def version(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.src).version

    @property
    def proto_number(self) -> int:
        number = protocol_number(self.proto)
        return 0 if number is None else number


def join_host_port(ip: str, port: int) -> str:
    """`ip:port`, IPv6 as `[addr]:port`."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

Verdict = Literal["DNAT", "ACCEPT", "DROP", "REJECT", "CONTINUE"]
VERDICTS: tuple[str, ...] = ("DNAT", "ACCEPT", "DROP", "REJECT", "CONTINUE")
Entry = Literal["hooks", "kube-proxy"]


@dataclass(frozen=True, slots=True)
class Step:
    """One rule that matched, in the order the packet met it. `rule` is the rule as iptables-save prints it
    (without counters): `-A CHAIN args…`."""

    table: str
    chain: str
    line: int
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "chain": self.chain, "line": self.line, "rule": self.rule}


@dataclass(frozen=True, slots=True)
class Decision:
    """Who decided an outcome: a rule (`line` set) or a built-in chain's policy (`policy` set)."""

    table: str
    chain: str
    line: int | None = None
    policy: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.policy is not None:
            return {"policy": self.policy, "table": self.table, "chain": self.chain}
        return {"table": self.table, "chain": self.chain, "line": self.line}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One branch of the trace. `probability` is the float of `exact_probability` (a Fraction)."""

    verdict: Verdict
    destination: str | None
    probability: float
    masquerade: bool
    service: str | None
    decided_by: Decision | None
    path: tuple[Step, ...]
    exact_probability: Fraction = field(default=Fraction(1), compare=False)
    original_destination: str = ""
    final_destination: str = ""
    chains: frozenset[tuple[str, str]] = frozenset()  # (table, chain) of every chain the packet entered
    assumptions: tuple[str, ...] = ()  # those made on this branch

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "destination": self.destination,
            "probability": self.probability,
            "masquerade": self.masquerade,
            "service": self.service,
            "decided_by": self.decided_by.to_json() if self.decided_by is not None else None,
            "path": [step.to_json() for step in self.path],
        }


@dataclass(frozen=True, slots=True)
class Trace:
    packet: Packet
    entry: Entry
    outcomes: tuple[Outcome, ...]
    assumptions: tuple[str, ...]

    @property
    def verdicts(self) -> frozenset[str]:
        return frozenset(o.verdict for o in self.outcomes)


def trace_to_json(trace: Trace) -> dict[str, Any]:
    """The `trace -o json` document (SPEC.md "trace -o json shape")."""
    p = trace.packet
    return {
        "packet": {"src": p.src, "dst": p.dst, "dport": p.dport, "proto": p.proto},
        "entry": trace.entry,
        "outcomes": [o.to_json() for o in trace.outcomes],
        "assumptions": list(trace.assumptions),
    }
