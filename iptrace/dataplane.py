"""What every dataplane (iptables, nftables) shares with the layers above it: the packet a trace follows, what
a trace found, and the protocols a dataplane implements (Ruleset, Tracer, Dataplane) with the records they hand
upward (PortShape, ForeignChain). kube-proxy's layout as a dataplane reports it is iptrace.layout.

A dataplane package (iptrace.iptables, iptrace.nftables) turns its own rules into these types; kube, explain
and render read only these, never a dataplane's model. `trace_to_json` is the stable `trace -o json` shape of
SPEC.md. Pure: no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from socket import AF_INET, inet_pton
from typing import Any, Literal, NamedTuple, Protocol

from iptrace.errors import InputError
from iptrace.layout import KnownServicePort, Layout
from iptrace.records import positional_new
from iptrace.routes import Routes

# IP protocol numbers for the names iptables accepts after -p: its own built-in names plus Debian's
# /etc/protocols (iptables-save prints getprotobynumber's name, e.g. `-p ipencap` for Calico's IP-in-IP).
PROTOCOL_NUMBERS: dict[str, int] = {
    "ip": 0, "hopopt": 0, "icmp": 1, "igmp": 2, "ggp": 3, "ipencap": 4, "st": 5, "tcp": 6, "egp": 8, "igp": 9,
    "pup": 12, "udp": 17, "hmp": 20, "xns-idp": 22, "rdp": 27, "iso-tp4": 29, "dccp": 33, "xtp": 36, "ddp": 37,
    "idpr-cmtp": 38, "ipv6": 41, "ipv6-route": 43, "ipv6-frag": 44, "idrp": 45, "rsvp": 46, "gre": 47,
    "esp": 50, "ah": 51, "skip": 57, "ipv6-icmp": 58, "icmpv6": 58, "icmp6": 58, "ipv6-nonxt": 59,
    "ipv6-opts": 60, "rspf": 73, "vmtp": 81, "eigrp": 88, "ospf": 89, "ax.25": 93, "ipip": 94, "etherip": 97,
    "encap": 98, "pim": 103, "ipcomp": 108, "vrrp": 112, "l2tp": 115, "isis": 124, "sctp": 132, "fc": 133,
    "mobility-header": 135, "mh": 135, "ipv6-mh": 135, "udplite": 136, "mpls-in-ip": 137, "manet": 138,
    "hip": 139, "shim6": 140, "wesp": 141, "rohc": 142, "ethernet": 143,
}
PROTOCOL_NAMES: dict[int, str] = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp", 136: "udplite",
                                  33: "dccp", 50: "esp", 51: "ah", 47: "gre", 4: "ipencap", 94: "ipip",
                                  135: "mh"}


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
        src, src_version = _address(self.src)
        dst, dst_version = _address(self.dst)
        if src_version != dst_version:
            raise InputError(f"source {src} and destination {dst} are of different IP versions")
        for name, port in (("destination", self.dport), ("source", self.sport)):
            if not 0 <= port <= 65535:
                raise InputError(f"{name} port {port} is out of range; expected 0-65535")
        proto = self.proto.lower()
        protocol_number(proto)
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "proto", proto)

    @property
    def version(self) -> int:
        """4 or 6."""
        return _address(self.src)[1]

    @property
    def proto_number(self) -> int:
        number = protocol_number(self.proto)
        return 0 if number is None else number


def packet_of(src: str, dst: str, dport: int, proto: str) -> Packet:
    """`Packet(src, dst, dport, proto)`; without the dataclass's `__init__` when the values are already as it would
    make them (normalised addresses of one version, a port in range, a known lower-case protocol name): the
    Service view builds one a way in and kind of client of every Service port."""
    src_address, dst_address = _address(src), _address(dst)
    if (src_address[0] == src and dst_address[0] == dst and src_address[1] == dst_address[1]
            and proto in PROTOCOL_NUMBERS and 0 <= dport <= 65535):
        return _new_packet(src, dst, dport, proto, 40000, None)  # type: ignore[no-any-return]
    return Packet(src, dst, dport, proto)


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`ipaddress.ip_address` of an address as rules and packets hold it: an IPv6 zone (`fe80::1%eth0`, which
    `ipaddress` accepts) is refused with ValueError, as no rule names one and no packet carries it."""
    if "%" in text:
        raise ValueError(f"{text!r} names an IPv6 zone ({text[text.index('%'):]}); give the address alone")
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> tuple[str, int]:
    """(normalised address, IP version); the Service view builds ~10^5 packets from a few thousand addresses. A
    dotted quad the C library reads (inet_pton: four decimal numbers 0-255 without leading zeros) is one already."""
    try:
        inet_pton(AF_INET, text)
        return text, 4
    except (OSError, ValueError):
        pass
    try:
        addr = ip_address(text.strip("[]"))
    except ValueError as exc:
        raise InputError(f"not an IP address: {exc}; expected e.g. 10.0.0.1 or fd00::1") from None
    return str(addr), addr.version


def join_host_port(ip: str, port: int) -> str:
    """`ip:port`, IPv6 as `[addr]:port`."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

Verdict = Literal["DNAT", "ACCEPT", "DROP", "REJECT", "CONTINUE"]
Entry = Literal["hooks", "kube-proxy"]


class MapAt(NamedTuple):
    """Where a set or map element is in input without lines (nft -j): its set's table (`ip kube-proxy`), name and
    kernel handle (None where the JSON gives none). Handles are unique in a table: `nft -a list ruleset` prints
    the set's as `map service-ips { # handle 6`."""

    table: str
    name: str
    handle: int | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"table": self.table, "name": self.name}
        if self.handle is not None:
            out["handle"] = self.handle
        return out


@dataclass(frozen=True, slots=True)
class Step:
    """One rule that matched, in the order the packet met it. `rule` is the rule as its dataplane prints it
    (iptables-save without counters: `-A CHAIN args…`; an nft rule or set element). `line` is the 1-based input
    line (0 when unknown, e.g. nft JSON input, which gives the rule's kernel `handle` instead, or for a set or map
    element its set, `element_of`; JSON prints an unknown line as null). `kind` says what the rule is to
    kube-proxy, whatever the dataplane: "dispatch" (a way into a Service), "endpoint" (an endpoint's own chain),
    "no-endpoints", "no-local-endpoints", "firewall" (loadBalancerSourceRanges), "invalid-port" (nftables mode: a
    ClusterIP on a port or protocol it does not serve is rejected), "unallocated" (nftables mode: an address of
    the service CIDR no Service has is dropped), or "" (anything else); `service` the Service port ("ns/svc:port")
    it belongs to when the rules say."""

    table: str
    chain: str
    line: int
    rule: str
    kind: str = field(default="", compare=False)
    service: str | None = field(default=None, compare=False)
    handle: int | None = field(default=None, compare=False)
    element_of: MapAt | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"table": self.table, "chain": self.chain, "line": self.line or None,
                               "rule": self.rule}
        if self.handle is not None:
            out["handle"] = self.handle
        if self.element_of is not None:
            out["map"] = self.element_of.to_json()
        return out

    @property
    def where(self) -> str:
        """Where the step is, as text names it: `line N`, or without a line (nft -j) `handle N` (a rule's, or for
        a set or map element its set's), or `line -` where the input says nothing."""
        if self.line:
            return f"line {self.line}"
        handle = self.handle if self.handle is not None else (
            self.element_of.handle if self.element_of is not None else None)
        return f"handle {handle}" if handle is not None else "line -"


class RuleAt(NamedTuple):
    """Where a rule is in input without lines (nft -j): its table (`ip kube-proxy`), chain and kernel handle."""

    table: str
    chain: str
    handle: int


@dataclass(frozen=True, slots=True)
class Decision:
    """Who decided an outcome: a rule (`line` set; 0 when unknown, with the kernel's `handle` for nft JSON
    input, or for a set or map element whose verdict decided, `element_of`) or a built-in chain's policy
    (`policy` set)."""

    table: str
    chain: str
    line: int | None = None
    policy: str | None = None
    handle: int | None = None
    element_of: MapAt | None = None

    def to_json(self) -> dict[str, Any]:
        if self.policy is not None:
            return {"policy": self.policy, "table": self.table, "chain": self.chain}
        out: dict[str, Any] = {"table": self.table, "chain": self.chain, "line": self.line or None}
        if self.handle is not None:
            out["handle"] = self.handle
        if self.element_of is not None:
            out["map"] = self.element_of.to_json()
        return out


_new_packet = positional_new(Packet, ("src", "dst", "dport", "proto", "sport", "in_interface"))


class Outcome:
    """One branch of the trace. `probability` is the float of `exact_probability` (a Fraction).

    Immutable. `path`, `chains` and `service` may be handed over as functions computing them: a dataplane's
    walk then pays for them only when someone reads them (the Service view reads few paths of ~10^5 outcomes).
    """

    __slots__ = ("_chains", "_path", "_service", "assumptions", "decided_by", "destination", "exact_probability",
                 "final_destination", "masquerade", "original_destination", "probability", "verdict")

    verdict: Verdict
    destination: str | None
    probability: float
    masquerade: bool
    decided_by: Decision | None
    exact_probability: Fraction
    original_destination: str
    final_destination: str
    assumptions: tuple[str, ...]

    def __init__(self, verdict: Verdict, destination: str | None, probability: float, masquerade: bool,
                 service: str | Callable[[], str | None] | None, decided_by: Decision | None,
                 path: tuple[Step, ...] | Callable[[], tuple[Step, ...]],
                 exact_probability: Fraction = Fraction(1), original_destination: str = "",
                 final_destination: str = "",
                 chains: tuple[tuple[str, str], ...] | Callable[[], tuple[tuple[str, str], ...]] = (),
                 assumptions: tuple[str, ...] = ()) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "verdict", verdict)
        setattr_(self, "destination", destination)
        setattr_(self, "probability", probability)
        setattr_(self, "masquerade", masquerade)
        setattr_(self, "_service", service)
        setattr_(self, "decided_by", decided_by)
        setattr_(self, "_path", path)
        setattr_(self, "exact_probability", exact_probability)
        setattr_(self, "original_destination", original_destination)
        setattr_(self, "final_destination", final_destination)
        setattr_(self, "_chains", chains)
        setattr_(self, "assumptions", assumptions)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Outcome is immutable (cannot set {name})")

    @property
    def path(self) -> tuple[Step, ...]:
        """Every rule that matched, in the order the packet met it."""
        value = self._path
        if callable(value):
            value = value()
            object.__setattr__(self, "_path", value)
        return value  # type: ignore[no-any-return]

    @property
    def chains(self) -> tuple[tuple[str, str], ...]:
        """(table, chain) of every chain the packet entered, in order."""
        value = self._chains
        if callable(value):
            value = value()
            object.__setattr__(self, "_chains", value)
        return value  # type: ignore[no-any-return]

    @property
    def service(self) -> str | None:
        """The Service ("ns/svc:port") the outcome belongs to, when the rules say."""
        value = self._service
        if callable(value):
            value = value()
            object.__setattr__(self, "_service", value)
        return value  # type: ignore[no-any-return]

    def _key(self) -> tuple[Any, ...]:
        return (self.verdict, self.destination, self.probability, self.masquerade, self.service, self.decided_by,
                self.path, self.original_destination, self.final_destination, self.chains, self.assumptions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Outcome) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Outcome(verdict={self.verdict!r}, destination={self.destination!r}, "
                f"probability={self.probability!r}, masquerade={self.masquerade!r}, service={self.service!r}, "
                f"decided_by={self.decided_by!r})")

    def to_json(self, paths: PathEncoder | None = None) -> dict[str, Any]:
        """The `trace -o json` outcome; with `paths`, its path is what `paths` makes of the steps."""
        return {
            "verdict": self.verdict,
            "destination": self.destination,
            "probability": self.probability,
            "masquerade": self.masquerade,
            "service": self.service,
            "decided_by": self.decided_by.to_json() if self.decided_by is not None else None,
            "path": [step.to_json() for step in self.path] if paths is None else paths(self.path),
        }


# Outcome's slots in the order of its __init__'s parameters (service, path and chains are stored as given).
OUTCOME_SLOTS = ("verdict", "destination", "probability", "masquerade", "_service", "decided_by", "_path",
                 "exact_probability", "original_destination", "final_destination", "_chains", "assumptions")

# `Outcome(…)` with every argument given, without its __init__'s `object.__setattr__` calls (the walks make
# ~10^5 for a Service view; tests/test_trace_properties.py checks it against the real constructor).
new_outcome = positional_new(Outcome, OUTCOME_SLOTS)


@dataclass(frozen=True, slots=True)
class Trace:
    packet: Packet
    entry: Entry
    outcomes: tuple[Outcome, ...]
    assumptions: tuple[str, ...]

    @property
    def verdicts(self) -> frozenset[str]:
        return frozenset(o.verdict for o in self.outcomes)


def is_loopback(ip: str) -> bool:
    """Whether a normalised address is loopback (127.0.0.0/8, ::1)."""
    return ip.startswith("127.") or ip == "::1"


# The unspecified address a socket connects to, and the loopback address Linux connects it to instead
# (ip_route_connect: no destination means this host).
_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def for_this_host(ip: str) -> bool:
    """Whether a normalised destination is the sending host itself: loopback, or the unspecified address."""
    return is_loopback(ip) or ip in _UNSPECIFIED


def from_the_node(packet: Packet) -> tuple[Packet, tuple[str, ...]]:
    """A node's own packet as its socket sends it, and the note that says how: addressed to 0.0.0.0 (::), Linux
    connects it to 127.0.0.1 (::1), which is what the rules see."""
    loop = _UNSPECIFIED.get(packet.dst)
    if loop is None:
        return packet, ()
    return Packet(packet.src, loop, packet.dport, packet.proto, packet.sport, packet.in_interface), (
        f"destination {packet.dst}: Linux connects a socket addressed to it to {loop}, the node itself",)


def as_sent(ip: str, what: str = "destination") -> tuple[str, tuple[str, ...]]:
    """An address as a socket's connection to it leaves the sender, and the note that says how: an IPv4-mapped
    IPv6 address (::ffff:a.b.c.d) is sent as IPv4 to a.b.c.d by a dual-stack socket (Linux: tcp_v6_connect and
    ip6_datagram_connect hand it to the IPv4 stack), so the rules of the IPv4 family are the ones it meets. Any
    other address is unchanged."""
    try:
        mapped = ip_address(ip).ipv4_mapped if ":" in ip else None  # type: ignore[union-attr]
    except ValueError:
        return ip, ()
    if mapped is None:
        return ip, ()
    return str(mapped), (f"{what} {ip} is an IPv4-mapped IPv6 address: Linux sends a dual-stack socket's "
                         f"connection to it as IPv4, to {mapped}, and traced so (an IPV6_V6ONLY socket cannot "
                         "connect to it)",)


def senders_own_loopback(packet: Packet, entry: Entry, notes: Sequence[str]) -> Trace:
    """The trace of a packet for a loopback address from a source that is not the node: every network namespace
    has its own lo, so the sender's kernel delivers it there (a pod to its own containers, another host to
    itself) and it never reaches this node's rules: one CONTINUE outcome with an empty path. Both dataplanes'
    tracers answer it this way (kube-proxy's localhost NodePorts work only from the node itself: iptables mode,
    with route_localnet=1; nftables mode never accepts them)."""
    original = join_host_port(packet.dst, packet.dport)
    what = "the sender itself (Linux connects a socket addressed to it to its own host)" \
        if packet.dst in _UNSPECIFIED else "loopback"
    note = (f"destination {packet.dst} is {what} and source {packet.src} is not this node: the sender's own "
            "network namespace delivers it to its own loopback, so it never reaches this node's rules")
    outcome = new_outcome("CONTINUE", None, 1.0, False, None, None, (), Fraction(1), original, original, (), ())
    return Trace(packet, entry, (outcome,), (*notes, note))


# iptables targets that end a packet's walk by handing it over, and to what (whatever backend shows them: an nft
# listing names iptables-nft's as `xt target "TPROXY"`); a trace assumes the taker lets the connection through.
HANDED_OFF_TARGETS = {"QUEUE": "queued to a userspace program", "NFQUEUE": "queued to a userspace program",
                      "TPROXY": "handed to a transparent proxy socket", "SYNPROXY": "answered by SYNPROXY",
                      "MIRROR": "mirrored back"}

# A node's connection to 127.0.0.1 has source 127.0.0.1; rewritten to another host's address it leaves the node
# with it, which the kernel's routing refuses (a martian source) unless route_localnet is on.
# How a trace learns the interface a packet comes in on, and why it cannot learn the one it leaves by: said where a
# rule tests an interface the trace does not know.
IN_HOW = "pass --in-interface"
OUT_HOW = "it follows the node's routes, which a dump does not hold"

ROUTE_LOCALNET = ("route_localnet=1 on the node: a connection to a loopback address has source 127.0.0.1, which "
                  "the kernel lets out to another host only with net.ipv4.conf.all.route_localnet=1 (kube-proxy "
                  "sets it when it accepts NodePorts on localhost)")


def loopback_notes(packet: Packet, outcomes: Sequence[Outcome], is_local: Callable[[str], bool]) -> tuple[str, ...]:
    """The notes a node's own packet for loopback needs: ROUTE_LOCALNET when an outcome sends it to another host
    (`is_local`: the dataplane's own test of a node address)."""
    if packet.version == 4 and is_loopback(packet.dst):
        for o in outcomes:
            if o.verdict == "DNAT" and o.destination and not is_local(o.destination.rpartition(":")[0]):
                return (ROUTE_LOCALNET,)
    return ()


# Stands in for a path's JSON list: given the steps, what the document holds instead (a batch of answers
# prints each rule's text once: iptrace.render.json.PathTexts).
PathEncoder = Callable[[tuple[Step, ...]], Any]


def trace_to_json(trace: Trace, paths: PathEncoder | None = None) -> dict[str, Any]:
    """The `trace -o json` document (SPEC.md "trace -o json shape"); `paths`: see Outcome.to_json."""
    p = trace.packet
    return {
        "packet": {"src": p.src, "dst": p.dst, "dport": p.dport, "proto": p.proto},
        "entry": trace.entry,
        "outcomes": [o.to_json(paths) for o in trace.outcomes],
        "assumptions": list(trace.assumptions),
    }


# ------------------------------------------------------------------------------------------------ the interface
# What iptrace.kube and iptrace.explain read of a dataplane. A dataplane package exposes one object, `DATAPLANE`,
# satisfying `Dataplane`; the layers above never import a dataplane's own modules.


@dataclass(frozen=True, slots=True)
class ForeignChain:
    """A chain kube-proxy did not write (a CNI's, the host firewall's), for node-to-node diffs: `header` names it
    as its dataplane prints it, `rules` are (text, line) in order."""

    table: str
    name: str
    header: str
    line: int
    rules: tuple[tuple[str, int], ...]


class Ruleset(Protocol):
    """What the layers above may read of any dataplane's parsed rules."""

    @property
    def source(self) -> str: ...

    @property
    def families(self) -> tuple[str, ...]:
        """The IP families the rules can answer for ("ipv4", "ipv6")."""
        ...

    @property
    def skipped(self) -> tuple[Any, ...]:
        """What --lenient left out: records with `line` (int, or None when no line tells) and `message`."""
        ...

    def line_text(self, line: int) -> str | None:
        """The input line `line` (1-based) as evidence, or None."""
        ...

    def line_texts(self, lines: Collection[int]) -> dict[int, str | None]:
        """`line_text` of each of `lines` (a node's evidence, ~10^4 lines: a dataplane may find them at once)."""
        ...

    def evidence_text(self, line: int) -> str | None:
        """Input line `line` as an answer's evidence shows it: in the form a trace's path shows it (a line that
        holds no rule, e.g. one of an nft map's elements, may read otherwise than line_text), or None."""
        ...

    def step_text(self, step: Step) -> str:
        """A step of a trace's path as an answer's evidence shows it, standing alone: evidence_text of its line,
        or with no line (nft JSON input) its rule, named as evidence_text would name it (an nft endpoint's rule
        with its chain, which the path shows beside it)."""
        ...

    def elements_at(self, address: str, port: int, protocol: str) -> tuple[tuple[MapAt, str], ...]:
        """For input without lines (nft -j), whose ways in have none to quote: kube-proxy's set and map elements
        keyed on this address, port and protocol, by their sets, as a trace's path shows them; () for input
        with lines."""
        ...

    def handle_texts(self, family: str, handles: Collection[int]) -> tuple[str, dict[int, str]]:
        """For input without lines (nft -j), whose Service port views name their rules by kernel handle
        (ServicePortView.handles): the table those handles are of (`ip kube-proxy`) and each handle's rule as
        step_text shows one; ("", {}) where there are none."""
        ...


class PortShape:
    """A Service port's shape (the optional `Tracer.port_shape`, read by iptrace.kube.shapes): `key` (equal keys:
    the same traces but for the values below) and the port's values by number: `addresses` (as the walk writes
    them), `ports`, `chains` (its own, in the layout's order) and `lines` (of the rules the key names, in its
    order; for input without lines, nft -j, each rule's RuleAt: table, chain and kernel handle). `portable`: the
    traces read no rule but the key's and the node's context (what `Dataplane.port_keys`' fingerprint digests), so
    that equal keys on nodes of equal fingerprints give the same traces too (iptrace.kube.shapes.ShapeMemo.share)."""

    __slots__ = ("addresses", "chains", "key", "lines", "portable", "ports")

    def __init__(self, key: tuple[Any, ...], addresses: tuple[str, ...], ports: tuple[int, ...],
                 chains: tuple[str, ...], lines: tuple[int | RuleAt, ...], portable: bool = False) -> None:
        self.key = key
        self.addresses = addresses
        self.ports = ports
        self.chains = chains
        self.lines = lines
        self.portable = portable


class Tracer(Protocol):
    entry: str  # "hooks" or "kube-proxy" (see Trace.entry)

    def trace(self, packet: Packet, *, in_interface: str | None = None, assumptions: Sequence[str] = ()) -> Trace:
        """Every outcome of a new connection's first packet, through the hooks in the kernel's order."""
        ...

    def trace_chain(self, chain: str, packet: Packet) -> Trace:
        """The outcomes of `packet` entering `chain` (of kube-proxy's table) directly: the endpoint shares of a
        load-balancing chain, by the same walk."""
        ...

    # Optional: `port_shape(calls, chains)`, the shape of a Service port's questions (`calls`: each (None, packet)
    # for `trace(packet)` or (chain, packet) for `trace_chain(chain, packet)`) whose own chains are `chains`: a
    # PortShape, or None when the dataplane cannot vouch for it. A dataplane without it has every port's view
    # traced.


class Dataplane(Protocol):
    name: str  # "iptables" | "nftables"

    def sniff(self, text: str) -> bool:
        """Whether `text` looks like this dataplane's input (only its first few kilobytes are looked at)."""
        ...

    def load(self, text: str | bytes, *, source: str = "<dump>", lenient: bool = False) -> Ruleset: ...

    def layout(self, ruleset: Any, family: str, *, known: Sequence[KnownServicePort] = ()) -> Layout:
        """kube-proxy's layout for one family; `known` (cluster data) names what the rules leave unnamed."""
        ...

    def tracer(self, ruleset: Any, *, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
               names: Mapping[str, str] | None = None, routes: Routes | None = None) -> Tracer:
        """The tracer of `ruleset`; `routes` (the node's, iptrace.routes) answer the rules that test the interface
        a packet leaves by."""
        ...

    def service_chain(self, role: str, service_port_name: str, protocol: str) -> str:
        """The chain kube-proxy names for a Service port: role cluster | local | external | firewall."""
        ...

    def foreign_chains(self, ruleset: Any) -> list[ForeignChain]:
        """Every chain of `ruleset` that kube-proxy did not write, in dump order."""
        ...

    # Optional: `port_keys(ruleset, layout, node_ips, others, tracer)`, the content keys of its Service ports across
    # the nodes of one audit (iptrace.kube.carried; see iptrace.iptables.carry), `others` being the other addresses
    # its questions take for the node's own, `tracer` the one that traces them (the node's routes it reads are in
    # its keys); or None. Without it, every port is traced. Its `fingerprint` (a digest of the node's context) also
    # names the views of portable shapes shared between nodes (PortShape.portable; iptrace.kube.shapes).

    def summary(self, ruleset: Any) -> str:
        """`iptrace parse`: tables, chains, rule counts, kube-proxy's mode and era, warnings (text)."""
        ...

    def to_json(self, ruleset: Any) -> dict[str, Any]:
        """`iptrace parse -o json`: the whole model."""
        ...

    def save(self, ruleset: Any) -> str:
        """`iptrace parse --save`: the rules back in this dataplane's own syntax."""
        ...
