"""What every dataplane (iptables, nftables) shares with the layers above it: the packet a trace follows and
what a trace found.

A dataplane package (iptrace.iptables, iptrace.nftables) turns its own rules into these types; kube, explain
and render read only these, never a dataplane's model. `trace_to_json` is the stable `trace -o json` shape of
SPEC.md. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol

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


# ------------------------------------------------------------------------------------------------ the interface
# What iptrace.kube and iptrace.explain read of a dataplane. A dataplane package exposes one object, `DATAPLANE`,
# satisfying `Dataplane`; the layers above never import a dataplane's own modules.

# Kinds of ways into a Service port, in the order they are listed.
CLUSTER_IP = "clusterIP"
NODE_PORT = "nodePort"
EXTERNAL_IP = "externalIP"
LOAD_BALANCER = "loadBalancer"
HEALTH_CHECK = "healthCheck"
ENTRY_KINDS = (CLUSTER_IP, NODE_PORT, EXTERNAL_IP, LOAD_BALANCER, HEALTH_CHECK)


@dataclass(frozen=True, slots=True)
class ProxyMode:
    """Which kube-proxy wrote the rules, and in which layout. `mode` is the proxy mode seen
    (iptables, nftables, ipvs, userspace, none); `name` the layout era as a person says it."""

    dataplane: str  # "iptables" | "nftables"
    mode: str
    name: str
    evidence: tuple[str, ...] = ()
    version_hint: str = ""
    legacy_tables_present: bool = False
    nft_tables_present: bool = False

    @property
    def has_rules(self) -> bool:
        """kube-proxy's Service rules are in this dataplane (so there is a view to build)."""
        return self.mode in ("iptables", "nftables", "userspace")


@dataclass(frozen=True, slots=True)
class WayIn:
    """One way into a Service port as kube-proxy's dispatch writes it. `address` None: the node's own addresses
    (NodePorts, health checks). `chain` is where the dispatch sends it ("" when only a filter rule names it).
    `lines` are the dump lines that write it (evidence)."""

    kind: str
    address: str | None
    port: int
    protocol: str
    chain: str
    lines: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServicePortLayout:
    """One Service port as its chains are laid out. `cluster_chain` load-balances over every usable endpoint
    (KUBE-SVC-…, service-…), `local_chain` over the node-local ones (KUBE-SVL-…/KUBE-XLB-…, local-…); the view
    walks them (and every way in) with the dataplane's own tracer. `name` is "ns/svc:port" when the rules say
    it; `identity` how it was found: comment | hash | address | chain."""

    key: str
    name: str | None
    identity: str
    protocol: str
    ways_in: tuple[WayIn, ...]
    cluster_chain: str | None
    local_chain: str | None
    chains: tuple[str, ...]
    lines: tuple[int, ...]
    external_traffic_policy: str | None
    internal_traffic_policy: str | None
    session_affinity_timeout: int | None
    lb_source_ranges: tuple[str, ...]
    health_check_node_port: int | None
    no_endpoints: bool
    no_local_endpoints: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodePortAddresses:
    """Where the dispatch accepts NodePorts. `mode`: "all-local" (every local address), "addresses" (one rule or
    set element per address: --nodeport-addresses), or "none" (NodePorts closed). `localhost` is True/False when
    the rules say whether 127.0.0.1:<nodePort> works, None when they do not."""

    mode: str
    addresses: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    localhost: bool | None = None
    lines: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.mode == "none":
            return "no rule sends traffic to the NodePorts: NodePorts are not reachable"
        if self.mode == "addresses":
            text = "NodePorts on " + ", ".join(self.addresses)
        else:
            text = "NodePorts on every local address"
            if self.excluded:
                text += " except " + ", ".join(self.excluded)
        if self.localhost is True:
            text += "; localhost (127.0.0.1) allowed"
        elif self.localhost is False:
            text += "; not on localhost"
        return text


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything a dataplane reads of kube-proxy's layout for one IP family of one ruleset."""

    proxy: ProxyMode
    family: str  # "ipv4" | "ipv6"
    service_ports: tuple[ServicePortLayout, ...]
    node_port_addresses: NodePortAddresses
    pod_cidrs: tuple[str, ...]  # from kube-proxy's local-traffic detector
    pod_interfaces: tuple[str, ...]
    node_ips: tuple[str, ...]  # the node addresses the rules reveal
    endpoint_ips: frozenset[str]  # so that a "pod" source is picked that is no endpoint
    masquerade_mark: str | None
    random_fully: bool
    warnings: tuple[str, ...] = ()


class Ruleset(Protocol):
    """What the layers above may read of any dataplane's parsed rules."""

    @property
    def source(self) -> str: ...

    @property
    def families(self) -> tuple[str, ...]:
        """The IP families the rules can answer for ("ipv4", "ipv6")."""
        ...

    def line_text(self, line: int) -> str | None:
        """The input line `line` (1-based) as evidence, or None."""
        ...


class Tracer(Protocol):
    entry: str  # "hooks" or "kube-proxy" (see Trace.entry)

    def trace(self, packet: Packet, *, in_interface: str | None = None, assumptions: Sequence[str] = ()) -> Trace:
        """Every outcome of a new connection's first packet, through the hooks in the kernel's order."""
        ...

    def trace_chain(self, chain: str, packet: Packet) -> Trace:
        """The outcomes of `packet` entering `chain` (of kube-proxy's table) directly: the endpoint shares of a
        load-balancing chain, by the same walk."""
        ...


class Dataplane(Protocol):
    name: str  # "iptables" | "nftables"

    def sniff(self, text: str) -> bool:
        """Whether `text` looks like this dataplane's input (only its first few kilobytes are looked at)."""
        ...

    def load(self, text: str | bytes, *, source: str = "<dump>", lenient: bool = False) -> Ruleset: ...

    def layout(self, ruleset: Any, family: str, *, names: Mapping[str, str] | None = None) -> Layout:
        """kube-proxy's layout for one family; `names` maps chain-name hashes to "ns/svc:port" (cluster data)."""
        ...

    def tracer(self, ruleset: Any, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
               names: Mapping[str, str] | None = None) -> Tracer: ...
