"""kube-proxy's view of every Service port, rebuilt from the rules it wrote: every way in, every endpoint.

Mirrors `syncProxyRules` in kubernetes/kubernetes pkg/proxy/iptables/proxier.go, read backwards, for every
layout in KUBE-PROXY-LAYOUT.md (KUBE-XLB era, KUBE-EXT/KUBE-SVL era, current, the 2015 iptables proxier).
A service port is the family of chains sharing one hash (KUBE-SVC/SVL/EXT/FW/XLB-<H>) plus the filter rules
naming it. Each way in is walked through those chains for three kinds of client (outside the cluster, a pod,
the node itself), so policies, masquerading and reachable endpoints come from what the rules do, not from
what their comments say. Pure: no I/O, no printing.
"""

from __future__ import annotations

import gc
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

from iptrace.iptables import era as era_mod
from iptrace.iptables.era import Era
from iptrace.iptables.facts import RuleFacts, read
from iptrace.iptables.hashes import SERVICE_PORT_CHAIN_PREFIXES, service_port_chain
from iptrace.iptables.model import Chain, Ruleset

if TYPE_CHECKING:  # only cluster data passed in: `services` without --cluster need not import the model
    from iptrace.kube.cluster import ClusterState

# Kinds of ways in, in the order they are listed.
CLUSTER_IP = "clusterIP"
NODE_PORT = "nodePort"
EXTERNAL_IP = "externalIP"
LOAD_BALANCER = "loadBalancer"
HEALTH_CHECK = "healthCheck"
ENTRY_KINDS = (CLUSTER_IP, NODE_PORT, EXTERNAL_IP, LOAD_BALANCER, HEALTH_CHECK)

# Masquerade behaviour of a way in (for its DNATed traffic).
MASQ_ALWAYS = "always"
MASQ_OFF_POD = "off-node/off-pod only"
MASQ_NEVER = "never"

# Kinds of client an entry is walked for.
EXTERNAL = "external"  # outside the cluster (for a firewalled LB IP: inside loadBalancerSourceRanges)
OUTSIDE_RANGES = "outside-source-ranges"  # outside loadBalancerSourceRanges (firewalled LB IPs only)
POD = "pod"  # a pod on this node (source in the pod CIDR / from a pod interface)
NODE = "node"  # a process on the node itself (--src-type LOCAL)
SOURCES = (EXTERNAL, OUTSIDE_RANGES, POD, NODE)

_MASQ_CHAIN = "KUBE-MARK-MASQ"
_DROP_CHAIN = "KUBE-MARK-DROP"
_NODEPORTS = "KUBE-NODEPORTS"
_SERVICES = "KUBE-SERVICES"
_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
_SEP = "KUBE-SEP-"
_LOCAL_CHAIN_PREFIXES = ("KUBE-SVL-", "KUBE-XLB-")
_LB_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")
_DEFAULT_MASQ_MARK = 0x4000
_MAX_DEPTH = 16

# ------------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One endpoint (a KUBE-SEP chain): `port` is the targetPort. `probability` is its share of the new
    connections entering the chain that lists it — KUBE-SVC when it is there, else KUBE-SVL/KUBE-XLB — as
    the statistic rules are written (p_i = prob_i × Π(1 − prob_j) over the earlier rules j).
    `local_probability` is its share within KUBE-SVL/KUBE-XLB when it is local."""

    ip: str
    port: int | None
    probability: float
    local: bool
    chain: str
    local_probability: float | None = None
    in_cluster_chain: bool = True
    line: int = 0

    @property
    def address(self) -> str:
        """`ip:port`, `[ip]:port` for IPv6, as kube-proxy writes it."""
        if self.port is None:
            return self.ip
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class Reach(NamedTuple):
    """An endpoint one kind of client reaches through an entry, with its probability."""

    endpoint: str  # ip:port
    probability: float


@dataclass(frozen=True, slots=True)
class SourcePath:
    """What one kind of client gets through an entry: `verdict` DNAT|DROP|REJECT|ACCEPT|CONTINUE."""

    source: str
    verdict: str
    via: tuple[str, ...]
    reaches: tuple[Reach, ...]
    masquerade: bool
    decided_by: int = 0  # dump line of the rule that dropped/rejected, 0 when none did


@dataclass(frozen=True, slots=True)
class EntryView:
    """One way in. `address` None means "the node's own addresses" (NodePorts, see
    KubeView.node_port_addresses). `verdict`, `reaches`, `via` are for a client outside the cluster (inside
    the source ranges for a firewalled LB IP); `paths` lists the kinds of client that fare differently."""

    kind: str
    address: str | None
    port: int
    protocol: str
    chain: str
    verdict: str
    reaches: tuple[Reach, ...]
    masquerade: str
    masquerade_sources: tuple[str, ...]
    via: tuple[str, ...]
    paths: tuple[SourcePath, ...] = ()
    notes: tuple[str, ...] = ()
    lines: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        host = "<node>" if self.address is None else (f"[{self.address}]" if ":" in self.address
                                                        else self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServicePortView:
    """One Service port as kube-proxy programmed it on this node. Identity from the rule comments, else from
    the chain-name hash and `cluster` data, else the chain name (namespace "" and name "KUBE-SVC-…")."""

    namespace: str
    name: str
    port_name: str
    protocol: str
    cluster_ip: str | None
    port: int | None
    node_port: int | None
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    lb_source_ranges: tuple[str, ...]
    health_check_node_port: int | None
    external_traffic_policy: str | None
    internal_traffic_policy: str | None
    session_affinity_timeout: int | None
    endpoints: tuple[EndpointView, ...]
    entries: tuple[EntryView, ...]
    no_endpoints: bool
    no_local_endpoints: bool
    chains: tuple[str, ...]
    lines: tuple[int, ...]
    identity: str  # "comment" | "hash" (chain name + cluster data) | "address" (cluster data) | "chain"
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """`ns/svc:port` (or `ns/svc` for an unnamed port), kube-proxy's ServicePortName; the chain name
        when the rules do not say."""
        if not self.namespace:
            return self.name
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def type(self) -> str:
        """The Service type the rules imply: LoadBalancer, NodePort or ClusterIP."""
        if self.lb_ips or self.lb_source_ranges or self.health_check_node_port is not None:
            return "LoadBalancer"
        if self.node_port is not None:
            return "NodePort"
        return "ClusterIP"

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.namespace, self.name, self.port_name, self.protocol)


@dataclass(frozen=True, slots=True)
class NodePortAddresses:
    """Where KUBE-SERVICES sends traffic to KUBE-NODEPORTS. `mode`: "all-local" (--dst-type LOCAL),
    "addresses" (one `-d` rule per address: --nodeport-addresses), or "none" (no jump: NodePorts closed).
    `localhost` is True/False when the rules say whether 127.0.0.1:<nodePort> works, None when they do not."""

    mode: str
    addresses: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    localhost: bool | None = None
    lines: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.mode == "none":
            return "no KUBE-SERVICES jump to KUBE-NODEPORTS: NodePorts are not reachable"
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
class KubeView:
    """Everything kube-proxy programmed on one node, per Service port, sorted by (namespace, name, port
    name, protocol). `chain_labels` names the service of every per-service chain (KUBE-SVC/SVL/EXT/FW/XLB/SEP)
    so that the trace engine can say which Service an outcome belongs to."""

    era: Era
    services: tuple[ServicePortView, ...]
    chain_labels: dict[str, str]
    node_port_addresses: NodePortAddresses
    pod_cidrs: tuple[str, ...]
    pod_interfaces: tuple[str, ...]
    masquerade_mark: str | None
    random_fully: bool
    family: str
    warnings: tuple[str, ...] = ()
    source: str = field(default="<dump>", compare=False)


def _positional_new(cls: type) -> Callable[..., object]:
    """`cls(*values)` for a frozen slots dataclass, every field given, without its generated `__init__`.

    A frozen dataclass sets each field through `object.__setattr__`; a big dump builds ~80,000 of these
    views, and storing through the slots' own descriptors makes the same object three times faster."""
    names = [f.name for f in fields(cls)]
    namespace: dict[str, object] = {"_new": object.__new__, "cls": cls}
    lines = [f"def new({', '.join(names)}):", "    self = _new(cls)"]
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(self, {name})")
    lines.append("    return self")
    exec("\n".join(lines), namespace)
    return namespace["new"]  # type: ignore[return-value]


_new_endpoint = _positional_new(EndpointView)
_new_path = _positional_new(SourcePath)
_new_entry = _positional_new(EntryView)
_new_service = _positional_new(ServicePortView)

# ------------------------------------------------------------------------------------------------ comments

_PORT_NAME = r"[^\s/]+/[^\s/:]+(?::\S*)?"
_COMMENT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), kind) for p, kind in (
        (rf"(?P<n>{_PORT_NAME}) cluster IP", CLUSTER_IP),
        (rf"(?P<n>{_PORT_NAME}) external IP", EXTERNAL_IP),
        (rf"(?P<n>{_PORT_NAME}) loadbalancer IP", LOAD_BALANCER),
        (rf"(?P<n>{_PORT_NAME}) has no endpoints", "no-endpoints"),
        (rf"(?P<n>{_PORT_NAME}) has no local endpoints", "no-local-endpoints"),
        (rf"(?P<n>{_PORT_NAME}) health check node port", HEALTH_CHECK),
        (rf"(?P<n>{_PORT_NAME}) traffic not accepted by \S+", "firewall"),
        (rf"(?P<n>{_PORT_NAME}) -> \S+", "endpoint"),
        (rf"(?:masquerade|pod|route) (?:LOCAL )?traffic for (?P<n>{_PORT_NAME}) (?:external destinations|LB IP"
         r"(?: to service chain)?)", "ext"),
        (rf"other traffic to (?P<n>{_PORT_NAME}) will be dropped by KUBE-PROXY-FIREWALL", "firewall"),
        (rf"Balancing rule \d+ for (?P<n>{_PORT_NAME})", "endpoint"),
        (rf"portal for (?P<n>{_PORT_NAME})", "portal"),
        (rf"(?P<n>{_PORT_NAME})", "plain"),
    ))


@lru_cache(maxsize=65536)
def parse_comment(comment: str) -> tuple[str, str] | None:
    """(service port name, kind) from one of kube-proxy's comments, or None."""
    patterns = _COMMENT_PATTERNS if " " in comment else _COMMENT_PATTERNS[-1:]
    for pattern, kind in patterns:
        m = pattern.fullmatch(comment)
        if m is not None:
            name = m.group("n")
            # "10.0.0.0/8" would read as a name: a namespace never starts with a digit-dot address.
            if _looks_like_cidr(name):
                return None
            return name, kind
    return None


def _looks_like_cidr(text: str) -> bool:
    head = text.split("/", 1)[0]
    return head.replace(".", "").isdigit() or ":" in head


def split_service_port_name(name: str) -> tuple[str, str, str]:
    """"ns/svc:port" -> (ns, svc, port); "ns/svc" and the 2015 "ns/svc:" -> (ns, svc, "")."""
    ns, _, rest = name.partition("/")
    svc, _, port = rest.partition(":")
    return ns, svc, port


# ------------------------------------------------------------------------------------------------ reading


def _chain_key(name: str) -> tuple[str, str] | None:
    """("KUBE-SVC-", "<H>") for a per-service-port chain, else None."""
    for prefix in SERVICE_PORT_CHAIN_PREFIXES:
        if name.startswith(prefix):
            return prefix, name[len(prefix):]
    return None


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _split_destination(text: str) -> tuple[str, int | None]:
    """"10.0.0.1:80" / "[fd00::1]:80" / "10.0.0.1" -> (ip, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, _port(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port)
    return text, None


def _mark_value(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text.split("/", 1)[0], 0)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _in_network(address: str, cidr: str) -> bool:
    if "/" not in cidr:
        return address == cidr
    net = _network(cidr)
    if net is None:
        return False
    try:
        return ipaddress.ip_address(address) in net
    except ValueError:
        return False


def _overlaps(a: str, b: str) -> bool:
    na, nb = _network(a), _network(b)
    if na is None or nb is None or na.version != nb.version:
        return a == b
    return na.overlaps(nb)


class _Tables:
    """Every rule of the chains kube-proxy owns, read once, indexed for the walks."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.nat: dict[str, list[RuleFacts]] = {}
        self.filter: dict[str, list[RuleFacts]] = {}
        self.nat_chains: dict[str, Chain] = {}
        self.sep_chains: dict[str, Chain] = {}
        # KUBE-SEP chain -> the lines of its rules, and (ip:port, line) of its DNAT rule when the rule's end
        # says it plainly (else None: dnat_of reads the rule). Collected in one pass in dump order: looked up
        # later in service order, the rules of 50,000 endpoint chains would be fetched from all over memory.
        self.sep_info: dict[str, tuple[tuple[int, ...], tuple[str, int] | None]] = {}
        # KUBE-SEP chain -> (ip:port, line) of its DNAT rule, for every chain whose DNAT rule was read.
        self.dnat: dict[str, tuple[str, int]] = {}
        self._sep_facts: dict[str, list[RuleFacts]] = {}
        nat = ruleset.table("nat")
        filt = ruleset.table("filter")
        if nat is not None:
            sep_info, sep_dnat = self.sep_info, self.dnat
            for chain in nat.chains:
                self.nat_chains[chain.name] = chain
                name = chain.name
                if name.startswith(_SEP):
                    # Not read into RuleFacts: half of a big dump, mostly one DNAT each.
                    self.sep_chains[name] = chain
                    dnat: tuple[str, int] | None = None
                    for rule in chain.rules:
                        text = rule[1]
                        if "DNAT" not in text:
                            continue
                        parts = text.rsplit(None, 3)
                        if len(parts) == 4 and parts[1] == "DNAT" and parts[2] == "--to-destination":
                            dnat = sep_dnat[name] = (parts[3], rule[3])
                            break
                    sep_info[name] = (tuple(map(_RULE_LINE, chain.rules)), dnat)
                elif name.startswith("KUBE-") or name in ("POSTROUTING",):
                    self.nat[name] = [read(r) for r in chain.rules]
        if filt is not None:
            for name in (_SERVICES, _EXTERNAL_SERVICES, _NODEPORTS, _PROXY_FIREWALL):
                chain = filt.chain(name)
                if chain is not None:
                    self.filter[name] = [read(r) for r in chain.rules]
        self._by_dst: dict[tuple[str, str], tuple[dict[str, list[int]], list[int]]] = {}
        self._by_port: dict[tuple[str, str], tuple[dict[str, list[int]], list[int]]] = {}
        self._picked: dict[tuple[str, str, str, str | int | None], list[RuleFacts]] = {}

    def sep_facts(self, name: str) -> list[RuleFacts]:
        """The rules of a KUBE-SEP chain except the hairpin masquerade rule."""
        facts = self._sep_facts.get(name)
        if facts is None:
            chain = self.sep_chains.get(name)
            facts = [read(r) for r in chain.rules if not _is_hairpin(r.text)] if chain is not None else []
            self._sep_facts[name] = facts
        return facts

    def dnat_of(self, name: str) -> tuple[str, int] | None:
        """(ip:port, line) of a KUBE-SEP chain's DNAT rule, read from the end of the rule when it can be."""
        found = self.dnat.get(name)
        if found is not None:
            return found
        if name not in self.sep_chains:
            return None
        for f in self.sep_facts(name):
            if f.target == "DNAT" and f.to_destination:
                self.dnat[name] = (f.to_destination, f.line)
                return f.to_destination, f.line
        return None

    def _table(self, table: str) -> dict[str, list[RuleFacts]]:
        return self.nat if table == "nat" else self.filter

    def by_destination(self, table: str, chain: str, address: str | None) -> list[RuleFacts]:
        """The rules of a long chain that can match a packet to `address`, in order: those with that `-d`
        host and those without a host `-d` (the KUBE-NODEPORTS jump, foreign rules)."""
        # Every entry is walked for up to four kinds of client: the pick is made once per address.
        key = ("-d", table, chain, address)
        picked_rules = self._picked.get(key)
        if picked_rules is not None:
            return picked_rules
        rules = self._table(table).get(chain, [])
        index = self._by_dst.get((table, chain))
        if index is None:
            exact: dict[str, list[int]] = {}
            other: list[int] = []
            for i, f in enumerate(rules):
                if f.dst is not None and not f.dst_neg and "/" not in f.dst:
                    exact.setdefault(f.dst, []).append(i)
                else:
                    other.append(i)
            index = self._by_dst[(table, chain)] = (exact, other)
        exact, other = index
        picked = exact.get(address, []) if address is not None else []
        picked_rules = [rules[i] for i in sorted((*picked, *other))] if picked else [rules[i] for i in other]
        self._picked[key] = picked_rules
        return picked_rules

    def by_port(self, table: str, chain: str, port: int) -> list[RuleFacts]:
        """Like by_destination, keyed by `--dport` (for KUBE-NODEPORTS)."""
        key = ("--dport", table, chain, port)
        picked_rules = self._picked.get(key)
        if picked_rules is not None:
            return picked_rules
        rules = self._table(table).get(chain, [])
        index = self._by_port.get((table, chain))
        if index is None:
            exact: dict[str, list[int]] = {}
            other: list[int] = []
            for i, f in enumerate(rules):
                if f.dport is not None and not f.dport_neg and ":" not in f.dport:
                    exact.setdefault(f.dport, []).append(i)
                else:
                    other.append(i)
            index = self._by_port[(table, chain)] = (exact, other)
        exact, other = index
        picked = exact.get(str(port), [])
        picked_rules = [rules[i] for i in sorted((*picked, *other))] if picked else [rules[i] for i in other]
        self._picked[key] = picked_rules
        return picked_rules


_RULE_LINE = itemgetter(3)  # Rule.line, read straight from the tuple
_EXTERNAL_KINDS = frozenset({NODE_PORT, EXTERNAL_IP, LOAD_BALANCER})


def _is_hairpin(text: str) -> bool:
    # A KUBE-SEP chain's `-s <endpoint> -j KUBE-MARK-MASQ` only matters for a pod reaching itself.
    return text.endswith("-j KUBE-MARK-MASQ")


# ------------------------------------------------------------------------------------------------ the walk


class _Context(NamedTuple):
    source: str
    address: str | None  # None: a node address
    port: int
    protocol: str
    node_local: bool  # the destination is a local address (--dst-type LOCAL)
    port_text: str  # str(port), as a `--dport` value is written


@dataclass(slots=True)
class _Outcome:
    verdict: str
    endpoint: str | None
    probability: float
    masquerade: bool
    via: tuple[str, ...]
    line: int = 0
    # A whole endpoint split (endpoint, share, DNAT line) reached with `probability`: built once per
    # load-balancing chain and shared, instead of one outcome per endpoint per walk.
    split: list[tuple[str, float, int]] | None = None


_Branch = tuple[float, bool, tuple[str, ...]]  # (probability mass, masquerade mark set, chains crossed)


class _Walker:
    """Walks kube-proxy's nat chains for one kind of client and one destination, enumerating every branch
    of the statistic rules with its exact probability (a first packet: no affinity entry, ctstate NEW)."""

    def __init__(self, tables: _Tables, pod_cidrs: tuple[str, ...], pod_interfaces: tuple[str, ...],
                 masq_mark: int, notes: set[str]) -> None:
        self.tables = tables
        self.pod_cidrs = pod_cidrs
        self.pod_interfaces = pod_interfaces
        self.masq_mark = masq_mark
        self.notes = notes
        self.endpoints = tables.dnat  # SEP chain -> (ip:port, DNAT line), as far as read
        self.tails: dict[str, tuple[int, list[tuple[str, float, int]], float]] = {}
        self.pod_ranges: dict[str, bool] = {}
        # Set when a rule looked at what tells a client outside the cluster from the node itself / a pod.
        self.source_sensitive = False
        self.pod_sensitive = False

    def endpoint_of(self, sep: str) -> tuple[str, int] | None:
        cached = self.endpoints.get(sep)
        if cached is not None:
            return cached
        return self.tables.dnat_of(sep)

    # -- conditions

    def matches(self, f: RuleFacts, ctx: _Context) -> float:
        """Probability that a first packet of `ctx` matches `f` (0 or 1 except for -m statistic)."""
        if f.unknown is not None:
            self.notes.add(f"line {f.line}: {f.unknown} is not modelled by the service view; taken as not "
                           "matching")
            return 0.0
        proto = f.proto
        if proto is not None and (proto.lower() == ctx.protocol) == f.proto_neg:
            return 0.0
        dst = f.dst
        if dst is not None:
            address = ctx.address
            # _in_network, with its common case (a host address) first
            hit = address is not None and (address == dst if "/" not in dst else _in_network(address, dst))
            if hit == f.dst_neg:
                return 0.0
        dport = f.dport
        if dport is not None:
            hit = dport == ctx.port_text if ":" not in dport else _port_in(ctx.port, dport)
            if hit == f.dport_neg:
                return 0.0
        if f.src is not None:
            self.pod_sensitive = True
            hit = self._source_in(f.src, ctx)
            if (not self.pod_ranges[f.src] and not _is_loopback(f.src)) or f.src == ctx.address:
                self.source_sensitive = True
            if hit == f.src_neg:
                return 0.0
        if f.in_iface is not None:
            self.pod_sensitive = True
            hit = ctx.source == POD and any(_iface_match(p, f.in_iface) for p in self.pod_interfaces or
                                            (f.in_iface,))
            if hit == f.in_iface_neg:
                return 0.0
        if f.src_type is not None:
            self.source_sensitive = True
        if f.src_type is not None and ("LOCAL" in f.src_type.split(",") and ctx.source == NODE) == f.src_type_neg:
            return 0.0
        if f.dst_type is not None and ("LOCAL" in f.dst_type.split(",") and ctx.node_local) == f.dst_type_neg:
            return 0.0
        if f.ctstate is not None and ("NEW" in f.ctstate.split(",")) == f.ctstate_neg:
            return 0.0
        if f.mark is not None:
            value, _, mask = f.mark.partition("/")
            try:
                hit = int(value, 0) == 0 if not mask else (0 & int(mask, 0)) == int(value, 0)
            except ValueError:
                hit = False
            if hit == f.mark_neg:
                return 0.0
        if f.recent_check:
            return 0.0  # no affinity entry yet for a first packet
        if f.mode == "random" and f.probability is not None:
            try:
                return float(f.probability)
            except ValueError:
                return 0.0
        if f.mode == "nth" and f.every is not None:
            self.notes.add(f"line {f.line}: -m statistic --mode nth counted as its long-run share 1/{f.every}")
            try:
                return 1.0 / int(f.every)
            except (ValueError, ZeroDivisionError):
                return 0.0
        return 1.0

    def _source_in(self, cidr: str, ctx: _Context) -> bool:
        pod_range = self.pod_ranges.get(cidr)
        if pod_range is None:
            pod_range = self.pod_ranges[cidr] = any(_overlaps(cidr, p) for p in self.pod_cidrs)
        if ctx.source == POD:
            return pod_range
        if ctx.source == EXTERNAL:
            # A source range that is not the pod CIDR (loadBalancerSourceRanges): the client we walk is
            # inside it; the OUTSIDE_RANGES client is the one that is not.
            return not pod_range and not _is_loopback(cidr)
        # The node reaching a VIP it holds itself sends from that VIP: kube-proxy's `-s <LB IP>` rule.
        return ctx.source == NODE and cidr == ctx.address

    def is_masquerade(self, f: RuleFacts) -> bool:
        if f.target == _MASQ_CHAIN:
            return True
        if f.target == "MARK":
            value = _mark_value(f.set_mark)
            return value is not None and value & self.masq_mark == self.masq_mark
        return False

    # -- chains

    def tail_of(self, chain: str) -> tuple[int, list[tuple[str, float, int]], float]:
        """Where a load-balancing chain's client-independent endpoint jumps start, their (endpoint, share,
        DNAT line), and the share that falls through; (-1, [], 0) for other chains."""
        cached = self.tails.get(chain)
        if cached is not None:
            return cached
        result: tuple[int, list[tuple[str, float, int]], float] = (-1, [], 0.0)
        if chain.startswith(_LB_CHAIN_PREFIXES):
            rules = self.tables.nat.get(chain, [])
            start = len(rules)
            while start > 0 and _client_independent(rules[start - 1]):
                start -= 1
            if start < len(rules):
                split: list[tuple[str, float, int]] = []
                remaining = 1.0
                endpoints = self.endpoints
                for f in rules[start:]:
                    p = _share(f) if f.mode is not None or f.recent_check else 1.0
                    if p <= 0.0:
                        continue
                    ep = endpoints.get(f.target) or self.endpoint_of(f.target)
                    if ep is None:
                        self.notes.add(f"line {f.line}: {f.target} has no DNAT rule")
                        continue
                    split.append((ep[0], remaining * p, ep[1]))
                    remaining -= remaining * p
                result = (start, split, max(remaining, 0.0))
        self.tails[chain] = result
        return result

    def run(self, chain: str, branches: list[_Branch], ctx: _Context, depth: int = 0
            ) -> tuple[list[_Outcome], list[_Branch]]:
        """Returns the branches that ended (DNAT, DROP, …) and those that came back out of `chain`."""
        outcomes: list[_Outcome] = []
        if depth > _MAX_DEPTH:
            self.notes.add(f"{chain}: jumps nest deeper than {_MAX_DEPTH} (a loop?); walk stopped")
            return outcomes, []
        live = [(m, q, (*path, chain)) for m, q, path in branches]
        returned: list[_Branch] = []
        cached = self.tails.get(chain)
        tail_start, tail, rest = cached if cached is not None else self.tail_of(chain)
        # The long chains are indexed by destination (KUBE-SERVICES) and port (KUBE-NODEPORTS).
        if chain == _SERVICES:
            rules = self.tables.by_destination("nat", chain, ctx.address)
        elif chain == _NODEPORTS:
            rules = self.tables.by_port("nat", chain, ctx.port)
        else:
            rules = self.tables.nat.get(chain, [])
        matches = self.matches
        for i, f in enumerate(rules):
            if not live:
                break
            if i == tail_start:
                # The endpoint split does not depend on the client: computed once per chain.
                outcomes += [_Outcome("DNAT", None, m, q, path, 0, tail) for m, q, path in live if tail]
                live = [(m * rest, q, path) for m, q, path in live] if rest > 0.0 else []
                break
            p = matches(f, ctx)
            if p <= 0.0:
                continue
            if p < 1.0:
                matched = [(m * p, q, path) for m, q, path in live]
                live = [(m * (1.0 - p), q, path) for m, q, path in live]
            else:
                matched, live = live, []  # m * 1.0 is m
            target = f.target
            if target == _MASQ_CHAIN or (target == "MARK" and self.is_masquerade(f)):
                live = _merge(live + [(m, True, path) for m, _q, path in matched])
            elif target == _DROP_CHAIN:
                outcomes += [_Outcome("DROP", None, m, q, path, f.line) for m, q, path in matched]
            elif target.startswith(_SEP):
                ep = self.endpoint_of(target)
                if ep is None:
                    self.notes.add(f"line {f.line}: {target} has no DNAT rule")
                    live = _merge(live + matched)
                    continue
                outcomes += [_Outcome("DNAT", ep[0], m, q, path, ep[1]) for m, q, path in matched]
            elif target == "DNAT" and f.to_destination:
                outcomes += [_Outcome("DNAT", f.to_destination, m, q, path, f.line) for m, q, path in matched]
            elif target in ("DROP", "REJECT", "ACCEPT"):
                outcomes += [_Outcome(target, None, m, q, path, f.line) for m, q, path in matched]
            elif target == "RETURN":
                returned += matched
            elif target in self.tables.nat:
                sub_out, back = self.run(target, matched, ctx, depth + 1)
                outcomes += sub_out
                if f.goto:
                    returned += back
                elif live:
                    live = _merge(live + back)
                else:
                    live = back  # run() merged it already
            elif target == "":
                live = _merge(live + matched)
            else:
                if target.startswith("KUBE-"):
                    self.notes.add(f"line {f.line}: jump to {target}, which this dump does not define")
                live = _merge(live + matched)
        return outcomes, _merge(live + returned)

    def filter_verdict(self, ctx: _Context, chains: Iterable[str]) -> tuple[str, int]:
        """What kube-proxy's filter chains do with a packet nat left alone: (verdict, line) or ("", 0)."""
        for chain in chains:
            rules = (self.tables.by_port("filter", chain, ctx.port) if chain == _NODEPORTS
                     else self.tables.by_destination("filter", chain, ctx.address))
            for f in rules:
                if f.target not in ("DROP", "REJECT", "ACCEPT", _DROP_CHAIN):
                    continue
                if self.matches(f, ctx) >= 1.0:
                    return ("DROP" if f.target == _DROP_CHAIN else f.target), f.line
        return "", 0

    def walk(self, start: str, ctx: _Context) -> list[_Outcome]:
        outcomes, back = self.run(start, [(1.0, False, ())], ctx)
        if back:
            chains = [_PROXY_FIREWALL, _SERVICES, _EXTERNAL_SERVICES]
            if ctx.address is None:
                chains.insert(1, _NODEPORTS)
            verdict, line = self.filter_verdict(ctx, chains)
            for m, q, path in back:
                outcomes.append(_Outcome(verdict or "CONTINUE", None, m, q, path, line))
        return outcomes


def _share(f: RuleFacts) -> float:
    """The share of first packets a client-independent rule takes: its statistic, 0 for affinity checks."""
    if f.recent_check:
        return 0.0
    try:
        if f.mode == "random" and f.probability is not None:
            return float(f.probability)
        if f.mode == "nth" and f.every is not None:
            return 1.0 / int(f.every)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return 1.0


# RuleFacts attributes that make a rule depend on the packet or its client (statistic and affinity do not).
_CLIENT_CONDITIONS = frozenset({"unknown", "src", "dst", "dport", "proto", "in_iface", "src_type", "dst_type",
                                "mark", "ctstate"})


def _client_independent(f: RuleFacts) -> bool:
    """A jump to an endpoint whose only conditions are statistic/affinity: same for every client."""
    # RuleFacts stores only the attributes a rule has (the rest are the class's None defaults).
    return f.target.startswith(_SEP) and _CLIENT_CONDITIONS.isdisjoint(f.__dict__)


def _merge(branches: list[_Branch]) -> list[_Branch]:
    if len(branches) < 2:
        return branches
    out: dict[tuple[bool, tuple[str, ...]], float] = {}
    for m, q, path in branches:
        out[(q, path)] = out.get((q, path), 0.0) + m
    return [(m, q, path) for (q, path), m in out.items() if m > 0.0]


def _port_in(port: int, spec: str) -> bool:
    if ":" in spec:
        lo, _, hi = spec.partition(":")
        try:
            return int(lo or 0) <= port <= int(hi or 65535)
        except ValueError:
            return False
    return spec == str(port)


def _iface_match(pattern: str, iface: str) -> bool:
    if pattern.endswith("+") and iface.endswith("+"):
        return pattern[:-1].startswith(iface[:-1]) or iface[:-1].startswith(pattern[:-1])
    if iface.endswith("+"):
        return pattern.startswith(iface[:-1])
    return pattern == iface


# ------------------------------------------------------------------------------------------------ building


@dataclass
class _EntrySeed:
    kind: str
    address: str | None
    port: int
    protocol: str
    chain: str = ""
    start: str = ""  # the chain the walk starts in (KUBE-SERVICES, KUBE-NODEPORTS) or "" (filter only)
    lines: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ambiguous_ip: bool = False  # a filter rule for "an external or LB IP": the comment does not say which


@dataclass
class _Group:
    key: str
    name: str | None = None
    identity: str = "chain"
    protocol: str | None = None
    chains: dict[str, str] = field(default_factory=dict)  # prefix -> chain name
    entries: dict[tuple[str, str | None, int, str], _EntrySeed] = field(default_factory=dict)
    lines: set[int] = field(default_factory=set)
    no_endpoints: bool = False
    no_local_endpoints: bool = False
    itp_local_drop: bool = False
    etp_local_drop: bool = False
    firewall_lines: list[int] = field(default_factory=list)
    health_check: int | None = None

    def entry(self, kind: str, address: str | None, port: int, protocol: str) -> _EntrySeed:
        k = (kind, address, port, protocol)
        seed = self.entries.get(k)
        if seed is None:
            seed = self.entries[k] = _EntrySeed(kind, address, port, protocol)
        return seed

    def has_kind(self, kind: str) -> bool:
        return any(k[0] == kind for k in self.entries)


class _Builder:
    def __init__(self, ruleset: Ruleset, cluster: ClusterState | None) -> None:
        self.ruleset = ruleset
        self.cluster = cluster
        self.tables = _Tables(ruleset)
        self.groups: dict[str, _Group] = {}
        self.by_name: dict[str, str] = {}  # "ns/svc:port" + protocol -> group key
        self.warnings: list[str] = []
        self.notes: set[str] = set()

    # -- grouping

    def group(self, key: str) -> _Group:
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(key)
        return g

    def name_group(self, g: _Group, name: str) -> None:
        if g.name is None:
            g.name, g.identity = name, "comment"

    def group_for_name(self, name: str, protocol: str | None) -> _Group:
        proto = (protocol or "tcp").lower()
        key = self.by_name.get(f"{name}|{proto}")
        if key is None:
            key = service_port_chain("", name, proto)
            self.by_name[f"{name}|{proto}"] = key
        g = self.group(key)
        self.name_group(g, name)
        if g.protocol is None:
            g.protocol = proto
        return g

    def collect_chains(self) -> None:
        for chain, facts in self.tables.nat.items():
            split = _chain_key(chain)
            if split is None:
                continue
            prefix, key = split
            g = self.group(key)
            g.chains[prefix] = chain
            for f in facts:
                if f.comment:
                    if g.name is None:
                        parsed = parse_comment(f.comment)
                        if parsed is not None:
                            self.name_group(g, parsed[0])
                    if f.target == _DROP_CHAIN and "has no local endpoints" in f.comment:
                        g.no_local_endpoints = True
                if f.proto and g.protocol is None:
                    g.protocol = f.proto.lower()
            if g.name is not None and g.protocol is not None:
                continue
            for f in facts:  # the endpoint chains still carry the name and protocol (2015, XLB era)
                if f.target.startswith(_SEP):
                    for sf in self.tables.sep_facts(f.target):
                        if sf.proto and g.protocol is None:
                            g.protocol = sf.proto.lower()
                        if sf.comment and g.name is None:
                            parsed = parse_comment(sf.comment)
                            if parsed is not None:
                                self.name_group(g, parsed[0])
        for g in self.groups.values():
            if g.name is not None:
                self.by_name.setdefault(f"{g.name}|{g.protocol or 'tcp'}", g.key)

    def collect_entries(self) -> None:
        # nat KUBE-SERVICES: the ClusterIP, external IP and LB IP jumps.
        for f in self.tables.nat.get(_SERVICES, ()):
            split = _chain_key(f.target)
            if split is None:
                continue
            prefix, key = split
            g = self.group(key)
            parsed = parse_comment(f.comment) if f.comment else None
            if parsed is not None:
                self.name_group(g, parsed[0])
            kind = parsed[1] if parsed is not None and parsed[1] in (CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER) \
                else None
            if kind is None:
                if prefix in ("KUBE-SVC-", "KUBE-SVL-"):
                    kind = EXTERNAL_IP if g.has_kind(CLUSTER_IP) else CLUSTER_IP
                elif prefix == "KUBE-FW-":
                    kind = LOAD_BALANCER
                else:
                    kind = EXTERNAL_IP
            port = _port(f.dport)
            if f.dst is None or f.dst_neg or port is None:
                self.warnings.append(f"line {f.line}: KUBE-SERVICES jump to {f.target} without a destination "
                                     "address and port; not read as a way in")
                continue
            proto = (f.proto or g.protocol or "tcp").lower()
            if g.protocol is None:
                g.protocol = proto
            seed = g.entry(kind, f.dst, port, proto)
            seed.chain = seed.chain or f.target
            seed.start = _SERVICES
            seed.lines.append(f.line)
        # nat KUBE-NODEPORTS: nodePorts (and the localhost copy of each, ~1.29+).
        for f in self.tables.nat.get(_NODEPORTS, ()):
            split = _chain_key(f.target)
            if split is None:
                continue
            g = self.group(split[1])
            parsed = parse_comment(f.comment) if f.comment else None
            if parsed is not None:
                self.name_group(g, parsed[0])
            port = _port(f.dport)
            if port is None:
                continue
            proto = (f.proto or g.protocol or "tcp").lower()
            seed = g.entry(NODE_PORT, None, port, proto)
            seed.start = _NODEPORTS
            seed.lines.append(f.line)
            if f.dst is not None and not f.dst_neg and _is_loopback(f.dst):
                counted = f" (counted by nfacct {f.nfacct})" if f.nfacct else ""
                seed.notes.append(f"also reachable on localhost {f.dst}{counted}")
            else:
                seed.chain = seed.chain or f.target
        # filter: REJECT/DROP for services without (local) endpoints, health checks, the LB firewall.
        for chain in (_SERVICES, _EXTERNAL_SERVICES, _NODEPORTS, _PROXY_FIREWALL):
            for f in self.tables.filter.get(chain, ()):
                self.filter_rule(chain, f)

    def filter_rule(self, chain: str, f: RuleFacts) -> None:
        parsed = parse_comment(f.comment) if f.comment else None
        port = _port(f.dport)
        proto = (f.proto or "tcp").lower()
        g: _Group | None = None
        if chain == _PROXY_FIREWALL and f.comment:
            m = re.search(r"traffic not accepted by KUBE-FW-(\S+)", f.comment)
            if m is not None:
                g = self.group(m.group(1))
        if g is None and parsed is not None and parsed[1] == HEALTH_CHECK:
            # Health checks are TCP whatever the service port's protocol.
            g = next((self.groups[k] for p in ("tcp", "udp", "sctp")
                      if (k := self.by_name.get(f"{parsed[0]}|{p}")) is not None), None)
        if g is None and parsed is not None:
            g = self.group_for_name(parsed[0], proto)
        if g is None:
            g = self._group_by_address(f.dst, port, proto)
        if g is None and self.cluster is not None and port is not None:
            name = _cluster_name_by_address(self.cluster, f.dst, port, proto)
            if name is not None:
                g = self.group_for_name(name, proto)
                g.identity = "address"
        if g is None:
            if f.target not in ("REJECT", "DROP", "ACCEPT") or port is None:
                return
            # No comment and no cluster data: still a Service port, named by where it is.
            g = self.group(f"{f.dst or '<node>'}:{port}/{proto}")
        if parsed is not None:
            self.name_group(g, parsed[0])
        if g.protocol is None:
            g.protocol = proto
        kind = parsed[1] if parsed is not None else ""
        g.lines.add(f.line)
        if chain == _PROXY_FIREWALL:
            g.firewall_lines.append(f.line)
            if f.dst is not None and port is not None:
                g.entry(LOAD_BALANCER, f.dst, port, proto).lines.append(f.line)
            return
        if chain == _NODEPORTS:
            if f.target == "ACCEPT" and port is not None:
                g.health_check = port
                seed = g.entry(HEALTH_CHECK, None, port, proto)
                seed.lines.append(f.line)
            return
        if kind == "no-endpoints" or (f.target == "REJECT" and kind != "no-local-endpoints"):
            g.no_endpoints = True
        elif kind == "no-local-endpoints" or f.target == "DROP":
            g.no_local_endpoints = True
            if chain == _SERVICES:
                g.itp_local_drop = True
            else:
                g.etp_local_drop = True
        if port is None:
            return
        if f.dst is None and f.dst_type is not None and "LOCAL" in f.dst_type:
            seed = g.entry(NODE_PORT, None, port, proto)
            seed.start = seed.start or _NODEPORTS
        elif f.dst is not None and not f.dst_neg:
            cluster_ips = [k[1] for k in g.entries if k[0] == CLUSTER_IP]
            known = [k for k in g.entries if k[1] == f.dst and k[0] != HEALTH_CHECK]
            if known:
                seed = g.entries[known[0]]
            elif chain == _SERVICES and (not cluster_ips):
                seed = g.entry(CLUSTER_IP, f.dst, port, proto)
            else:
                seed = g.entry(EXTERNAL_IP, f.dst, port, proto)
                seed.ambiguous_ip = True
            seed.start = seed.start or _SERVICES
        else:
            return
        seed.lines.append(f.line)

    def _group_by_address(self, address: str | None, port: int | None, proto: str) -> _Group | None:
        for g in self.groups.values():
            for kind, addr, p, pr in g.entries:
                if addr == address and p == port and pr == proto and kind != HEALTH_CHECK:
                    return g
        return None

    # -- node-level facts

    def node_port_addresses(self) -> NodePortAddresses:
        jumps = [f for f in self.tables.nat.get(_SERVICES, ()) if f.target == _NODEPORTS]
        if not jumps:
            return NodePortAddresses("none")
        lines = tuple(f.line for f in jumps)
        addresses = tuple(f.dst for f in jumps if f.dst is not None and not f.dst_neg)
        excluded = tuple(f.dst for f in jumps if f.dst is not None and f.dst_neg)
        localhost_rules = any(f.dst is not None and not f.dst_neg and _is_loopback(f.dst)
                              for f in self.tables.nat.get(_NODEPORTS, ()))
        localhost: bool | None
        if addresses:
            mode = "addresses"
            localhost = any(_is_loopback(a) for a in addresses)
        else:
            mode = "all-local"
            if any(_is_loopback(x) for x in excluded):
                localhost = False
            elif localhost_rules or self.ruleset.family == "ipv4":
                # --dst-type LOCAL includes 127.0.0.1; kube-proxy sets route_localnet to make it work.
                localhost = True
            else:
                localhost = None
        return NodePortAddresses(mode, addresses, excluded, localhost, lines)

    def pod_detection(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The pod CIDRs and pod interfaces kube-proxy's local-traffic detector wrote into its rules."""
        cidrs: list[str] = []
        ifaces: list[str] = []
        for chain, facts in self.tables.nat.items():
            if not (chain == _SERVICES or _chain_key(chain) is not None):
                continue
            short_circuit = chain.startswith(("KUBE-EXT-", "KUBE-XLB-"))
            for f in facts:
                masq = f.target == _MASQ_CHAIN
                # "! -s <podCIDR> -j KUBE-MARK-MASQ" (cluster IP) or "-s <podCIDR> -j KUBE-SVC-…" (pods
                # short-circuited past externalTrafficPolicy=Local); the same with -i for interface detection.
                to_service = short_circuit and f.target.startswith("KUBE-SVC-")
                if f.src is not None and "/" in f.src and ((masq and f.src_neg) or (to_service and not f.src_neg)):
                    if f.src not in cidrs and not _is_loopback(f.src):
                        cidrs.append(f.src)
                if f.in_iface is not None and ((masq and f.in_iface_neg) or (to_service and not f.in_iface_neg)):
                    if f.in_iface not in ifaces:
                        ifaces.append(f.in_iface)
        return tuple(cidrs), tuple(ifaces)

    def masquerade(self) -> tuple[str | None, bool]:
        mark: str | None = None
        for f in self.tables.nat.get(_MASQ_CHAIN, ()):
            if f.target == "MARK" and f.set_mark:
                mark = f.set_mark.split("/", 1)[0]
                break
        random_fully = False
        for chain in ("KUBE-POSTROUTING", "POSTROUTING"):
            for f in self.tables.nat.get(chain, ()):
                if f.target == "MASQUERADE" and (chain == "KUBE-POSTROUTING" or
                                                 (f.comment or "").startswith("kubernetes")):
                    random_fully = random_fully or f.random_fully
                    if mark is None and f.mark is not None and not f.mark_neg:
                        mark = f.mark.split("/", 1)[0]  # 2015: POSTROUTING -m mark --mark 0x4d415351
        return mark, random_fully


def _is_loopback(cidr: str) -> bool:
    return cidr.startswith("127.") or cidr in ("::1", "::1/128")


# ------------------------------------------------------------------------------------------------ analysis


def _reaches(outcomes: list[_Outcome]) -> tuple[Reach, ...]:
    acc: dict[str, float] = {}
    for o in outcomes:
        if o.verdict != "DNAT":
            continue
        if o.split is not None:
            if len(outcomes) == 1 and o.probability == 1.0:
                return _split_reaches(o.split)
            for ep, p, _line in o.split:
                acc[ep] = acc.get(ep, 0.0) + o.probability * p
        elif o.endpoint is not None:
            acc[o.endpoint] = acc.get(o.endpoint, 0.0) + o.probability
    return tuple(Reach(ep, p) for ep, p in acc.items())


_SPLIT_REACHES: dict[int, tuple[list[tuple[str, float, int]], tuple[Reach, ...]]] = {}


def _split_reaches(split: list[tuple[str, float, int]]) -> tuple[Reach, ...]:
    # Splits are shared per chain, so their Reach tuples are too (thousands of walks end in the same split).
    cached = _SPLIT_REACHES.get(id(split))
    if cached is not None and cached[0] is split:
        return cached[1]
    new = tuple.__new__  # Reach(ep, p) without the NamedTuple's Python-level __new__ (50,000 of them)
    reaches = tuple([new(Reach, (ep, p)) for ep, p, _line in split])
    _SPLIT_REACHES[id(split)] = (split, reaches)
    return reaches


def _verdict(outcomes: list[_Outcome]) -> tuple[str, int]:
    if any(o.verdict == "DNAT" for o in outcomes):
        return "DNAT", 0
    if not outcomes:
        return "CONTINUE", 0
    best = max(outcomes, key=lambda o: o.probability)
    return best.verdict, best.line


def _via(outcomes: list[_Outcome]) -> tuple[str, ...]:
    pick = next((o for o in outcomes if o.verdict == "DNAT"), outcomes[0] if outcomes else None)
    if pick is None:
        return ()
    return tuple(c for c in pick.via if c not in (_SERVICES, _NODEPORTS))


def _path(source: str, outcomes: list[_Outcome]) -> SourcePath:
    if len(outcomes) == 1 and outcomes[0].verdict == "DNAT":
        # The usual walk: one branch, DNATed (_verdict, _via and the masquerade test in one step).
        o = outcomes[0]
        via = tuple([c for c in o.via if c != _SERVICES and c != _NODEPORTS])
        return _new_path(source, "DNAT", via, _reaches(outcomes), o.masquerade, 0)
    verdict, line = _verdict(outcomes)
    masq = any(o.masquerade for o in outcomes if o.verdict == "DNAT")
    return _new_path(source, verdict, _via(outcomes), _reaches(outcomes), masq, line)


def _analyse_entry(seed: _EntrySeed, walker: _Walker, node_local: bool, firewalled: bool) -> EntryView:
    sources = (EXTERNAL, OUTSIDE_RANGES, POD, NODE) if firewalled else (EXTERNAL, POD, NODE)
    paths: dict[str, SourcePath] = {}
    node_sensitive = pod_sensitive = True
    start = seed.start
    for source in sources:
        walker.source_sensitive = walker.pod_sensitive = False
        if not start:
            outcomes: list[_Outcome] = []
        elif (source == NODE and not node_sensitive) or (source == POD and not pod_sensitive):
            # No rule on the way told this client from an outside one.
            p = paths[EXTERNAL]
            paths[source] = _new_path(source, p.verdict, p.via, p.reaches, p.masquerade, p.decided_by)
            continue
        else:
            ctx = _Context(source, seed.address, seed.port, seed.protocol, node_local, str(seed.port))
            outcomes = walker.walk(start, ctx)
        if source == EXTERNAL:
            node_sensitive, pod_sensitive = walker.source_sensitive, walker.pod_sensitive
        paths[source] = _path(source, outcomes)
    main = paths[EXTERNAL]
    ext_path, pod_path, node_path = main, paths[POD], paths[NODE]
    masq_sources = tuple(s for s, p in ((EXTERNAL, ext_path), (POD, pod_path), (NODE, node_path))
                         if p.masquerade and p.verdict == "DNAT")
    # Only the kinds of client that are DNATed count: a pod blocked by source ranges masquerades nothing.
    if main.verdict == "DNAT" and main.masquerade:
        if (pod_path.masquerade or pod_path.verdict != "DNAT") and (node_path.masquerade or
                                                                    node_path.verdict != "DNAT"):
            masq = MASQ_ALWAYS
        else:
            masq = MASQ_OFF_POD
    else:
        masq = MASQ_NEVER
    others_list: list[SourcePath] = []
    main_endpoints: set[str] | None = None
    for s, p in paths.items():
        if s == EXTERNAL:
            continue
        if p.verdict != main.verdict:
            others_list.append(p)
        elif p.reaches is not main.reaches:  # the same (shared) tuple reaches the same endpoints
            if main_endpoints is None:
                main_endpoints = {r.endpoint for r in main.reaches}
            if {r.endpoint for r in p.reaches} != main_endpoints:
                others_list.append(p)
    others = tuple(others_list)
    notes = list(dict.fromkeys(seed.notes)) if seed.notes else []
    if seed.ambiguous_ip:
        notes.append("an externalIP or a LoadBalancer IP: kube-proxy writes the same rule for both")
    if masq == MASQ_NEVER and NODE in masq_sources:
        notes.append("connections from the node itself are masqueraded")
    return _new_entry(seed.kind, seed.address, seed.port, seed.protocol, seed.chain, main.verdict, main.reaches,
                      masq, masq_sources, main.via, others, tuple(notes), tuple(sorted(set(seed.lines))))


def _chain_split(chain: str, walker: _Walker) -> list[tuple[str, float, int]]:
    """(SEP chain, probability, jump line) for every endpoint jump of a load-balancing chain, as written."""
    remaining = 1.0
    out: list[tuple[str, float, int]] = []
    seen: set[str] = set()
    for f in walker.tables.nat.get(chain, ()):
        target = f.target
        if not target.startswith(_SEP) or f.recent_check:
            continue
        mode = f.mode
        if mode is None:
            p = 1.0
        elif mode == "random" and f.probability is not None:
            try:
                p = float(f.probability)
            except ValueError:
                p = 0.0
        elif mode == "nth" and f.every is not None:
            try:
                p = 1.0 / int(f.every)
            except (ValueError, ZeroDivisionError):
                p = 0.0
        else:
            p = 1.0
        share = remaining * p
        remaining -= share
        if target in seen:
            out = [(c, s + share if c == target else s, ln) for c, s, ln in out]
        else:
            seen.add(target)
            out.append((target, share, f.line))
        if remaining <= 0.0:
            break
    return out


def _affinity(g: _Group, tables: _Tables) -> int | None:
    for prefix in _LB_CHAIN_PREFIXES:
        chain = g.chains.get(prefix)
        if chain is None:
            continue
        for f in tables.nat.get(chain, ()):
            if f.recent_check and f.seconds is not None:
                return _port(f.seconds)
    return None


def _build_service(g: _Group, b: _Builder, walker: _Walker, node_local_addresses: set[str]) -> ServicePortView:
    tables = b.tables
    proto = g.protocol or "tcp"
    # Endpoints: KUBE-SVC first (all usable endpoints), then KUBE-SVL/KUBE-XLB (local ones).
    # sep -> [probability, local, local_probability, in_cluster_chain]
    found: dict[str, list[object]] = {}
    for prefix in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-"):
        chain = g.chains.get(prefix)
        if chain is None:
            continue
        local = prefix != "KUBE-SVC-"
        for sep, share, _line in _chain_split(chain, walker):
            e = found.get(sep)
            if e is None:
                e = found[sep] = [None, False, None, False]
            if local:
                e[1], e[2] = True, share
                if e[0] is None:
                    e[0] = share
            else:
                e[0], e[3] = share, True
    endpoint_views: list[EndpointView] = []
    nat_chains = tables.nat_chains
    g_lines = g.lines
    sep_info = tables.sep_info
    for sep, (probability, local, local_probability, in_cluster) in found.items():
        info = sep_info.get(sep)  # every chain _chain_split names is a KUBE-SEP chain
        if info is not None:
            g_lines.update(info[0])
            ep = info[1] or walker.endpoint_of(sep)
        else:
            ep = walker.endpoint_of(sep)
        if ep is None:
            b.warnings.append(f"{sep}: no DNAT rule; endpoint unknown")
            continue
        ip, port = _split_destination(ep[0])
        endpoint_views.append(_new_endpoint(ip, port, probability, local, sep,  # type: ignore[arg-type]
                                            local_probability, in_cluster, ep[1]))
    chains = list(found)

    firewalled = "KUBE-FW-" in g.chains
    entries: list[EntryView] = []
    seeds = list(g.entries.values())
    if len(seeds) > 1:
        seeds.sort(key=lambda s: (ENTRY_KINDS.index(s.kind), s.address or "", s.port))
    for seed in seeds:
        if seed.kind == HEALTH_CHECK:
            entries.append(EntryView(HEALTH_CHECK, None, seed.port, "tcp", "", "ACCEPT", (), MASQ_NEVER, (), (),
                                     notes=("kube-proxy's health check server for externalTrafficPolicy=Local",),
                                     lines=tuple(sorted(set(seed.lines)))))
            continue
        node_local = seed.address is None or seed.address in node_local_addresses
        entries.append(_analyse_entry(seed, walker, node_local, firewalled and seed.kind == LOAD_BALANCER))

    cluster_entry: EntryView | None = None
    node_port: int | None = None
    external_list: list[str] = []
    lb_list: list[str] = []
    for e in entries:
        kind = e.kind
        if kind == CLUSTER_IP:
            if cluster_entry is None:
                cluster_entry = e
        elif kind == NODE_PORT:
            if node_port is None:
                node_port = e.port
        elif kind == EXTERNAL_IP:
            if e.address:
                external_list.append(e.address)
        elif kind == LOAD_BALANCER and e.address:
            lb_list.append(e.address)
    external_ips = tuple(external_list)
    lb_ips = tuple(lb_list)
    ranges: list[str] = []
    fw = g.chains.get("KUBE-FW-")
    if fw is not None:
        for f in tables.nat.get(fw, ()):
            if f.src is not None and not f.src_neg and f.target.startswith(("KUBE-EXT-", "KUBE-SVC-", "KUBE-XLB-")):
                if f.src in lb_ips and "/" not in f.src:
                    continue  # kube-proxy's "allow the node itself" rule for a VIP-style LB
                if f.src not in ranges:
                    ranges.append(f.src)

    etp: str | None = None
    if node_port is not None or external_list or lb_list or any(e.kind in _EXTERNAL_KINDS for e in entries):
        ext_chain = g.chains.get("KUBE-EXT-")
        ext_local = False
        if "KUBE-XLB-" in g.chains or g.etp_local_drop:
            ext_local = True
        elif ext_chain is not None:
            ext_local = any(f.target.startswith("KUBE-SVL-") or f.src_type is not None
                            for f in tables.nat.get(ext_chain, ()))
        if ext_local:
            etp = "Local"
        elif g.chains or not g.no_endpoints:
            etp = "Cluster"
    itp: str | None = None
    if cluster_entry is not None:
        if cluster_entry.chain.startswith("KUBE-SVL-") or g.itp_local_drop:
            itp = "Local"
        elif cluster_entry.chain.startswith("KUBE-SVC-"):
            itp = "Cluster"

    lines: set[int] = set(g_lines)
    for e in entries:
        lines.update(e.lines)
    lines.update(g.firewall_lines)
    for chain in g.chains.values():
        if chain in nat_chains:
            lines.update(map(_RULE_LINE, nat_chains[chain].rules))
    lines.discard(0)
    all_chains = [*sorted(g.chains.values()), *chains]

    name = g.name
    identity = g.identity
    if name is None and b.cluster is not None:
        name = _hash_names(b.cluster).get(g.key)
        if name is not None:
            identity = "hash"
    notes: list[str] = []
    if name is not None:
        ns, svc, port_name = split_service_port_name(name)
    else:
        first = g.chains.get("KUBE-SVC-") or (sorted(g.chains.values())[0] if g.chains else g.key)
        ns, svc, port_name = "", first, ""
        notes.append("no comment names this Service port (kube-proxy drops comments in large clusters); "
                     "pass cluster data to name it from the chain hash")
    if not g.chains and not g.no_endpoints and not g.no_local_endpoints and not entries:
        notes.append("only filter rules mention this Service port")
    return _new_service(  # type: ignore[no-any-return]
        namespace=ns, name=svc, port_name=port_name, protocol=proto,
        cluster_ip=cluster_entry.address if cluster_entry else None,
        port=cluster_entry.port if cluster_entry else next((e.port for e in entries
                                                            if e.kind in (EXTERNAL_IP, LOAD_BALANCER)), None),
        node_port=node_port, external_ips=external_ips, lb_ips=lb_ips, lb_source_ranges=tuple(ranges),
        health_check_node_port=g.health_check, external_traffic_policy=etp, internal_traffic_policy=itp,
        session_affinity_timeout=_affinity(g, tables), endpoints=tuple(endpoint_views), entries=tuple(entries),
        no_endpoints=g.no_endpoints, no_local_endpoints=g.no_local_endpoints, chains=tuple(all_chains),
        lines=tuple(sorted(lines)), identity=identity, notes=tuple(notes))


def _cluster_name_by_address(cluster: ClusterState, address: str | None, port: int, proto: str) -> str | None:
    """The service port a comment-less filter rule is about, from the cluster data: by address and port, or
    by nodePort when the rule has no address."""
    for svc, sp in cluster.service_ports():
        if sp.protocol.lower() != proto:
            continue
        if address is None:
            if sp.node_port == port:
                return svc.service_port_name(sp)
        elif sp.port == port and address in svc.addresses:
            return svc.service_port_name(sp)
    return None


_HASH_CACHE: dict[int, tuple[ClusterState, dict[str, str]]] = {}


def _hash_names(cluster: ClusterState) -> dict[str, str]:
    """chain hash -> "ns/svc:port" for every service port the cluster data knows (kube-proxy's naming)."""
    cached = _HASH_CACHE.get(id(cluster))
    if cached is not None and cached[0] is cluster:
        return cached[1]
    names: dict[str, str] = {}
    for svc, port in cluster.service_ports():
        spn = svc.service_port_name(port)
        names[service_port_chain("", spn, port.protocol)] = spn
    _HASH_CACHE.clear()
    _HASH_CACHE[id(cluster)] = (cluster, names)
    return names


def build_view(ruleset: Ruleset, *, cluster: ClusterState | None = None) -> KubeView:
    """kube-proxy's view of every Service port in `ruleset`. Pure; never raises for odd rules (they become
    warnings). `cluster` names hash-only chains (comment-less large-cluster dumps)."""
    detected = era_mod.detect(ruleset)
    warnings: list[str] = []
    if not detected.has_iptables_rules or detected.name == era_mod.USERSPACE:
        warnings.extend(_no_rules_warnings(detected))
        return KubeView(detected, (), {}, NodePortAddresses("none"), (), (), None, False, ruleset.family,
                        tuple(warnings), ruleset.source)
    enabled = gc.isenabled()
    gc.disable()  # ~10^5 small acyclic objects: the cyclic collector would only rescan the whole ruleset
    try:
        return _build(ruleset, cluster, detected, warnings)
    finally:
        if enabled:
            gc.enable()


def _build(ruleset: Ruleset, cluster: ClusterState | None, detected: Era, warnings: list[str]) -> KubeView:
    b = _Builder(ruleset, cluster)
    b.collect_chains()
    b.collect_entries()
    pod_cidrs, pod_ifaces = b.pod_detection()
    mark_text, random_fully = b.masquerade()
    mark = _mark_value(mark_text) or _DEFAULT_MASQ_MARK
    walker = _Walker(b.tables, pod_cidrs, pod_ifaces, mark, b.notes)
    _SPLIT_REACHES.clear()
    npa = b.node_port_addresses()
    local_addresses = set(npa.addresses)
    services = [_build_service(g, b, walker, local_addresses) for g in b.groups.values()]
    services.sort(key=lambda s: s.sort_key)
    labels: dict[str, str] = {}
    for s in services:
        label = s.label
        for c in s.chains:
            labels[c] = label
    orphans = sorted(c for c in b.tables.sep_chains if c not in labels)
    if orphans:
        shown = ", ".join(orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        warnings.append(f"{len(orphans)} KUBE-SEP chain(s) no service chain jumps to: {shown}")
    if detected.legacy_tables_present:
        warnings.append("the dump warns that iptables-legacy tables are present: the rules that matter may be "
                        "in the other backend (iptables-legacy-save)")
    warnings.extend(b.warnings)
    warnings.extend(sorted(b.notes))
    return KubeView(detected, tuple(services), labels, npa, pod_cidrs, pod_ifaces, mark_text, random_fully,
                    ruleset.family, tuple(dict.fromkeys(warnings)), ruleset.source)


def _no_rules_warnings(detected: Era) -> list[str]:
    what = {
        era_mod.IPVS: "kube-proxy runs in IPVS mode: Services live in IPVS virtual servers (ipvsadm -Ln) and ipsets, "
                      "not in iptables chains",
        era_mod.NFTABLES: "no kube-proxy iptables rules; the dump says some tables are managed by nftables "
                          "(kube-proxy nftables mode? see `nft list table ip kube-proxy`)",
        era_mod.USERSPACE: "kube-proxy runs in userspace mode: it picks endpoints itself; iptables only redirect "
                           "Service traffic to its local proxy ports",
        era_mod.NONE: "no kube-proxy iptables rules (no KUBE-SERVICES chain): kube-proxy is not running in iptables "
                      "mode on this node, or a replacement (Cilium, kube-router IPVS, …) handles Services",
    }
    out = [what.get(detected.name, f"kube-proxy mode {detected.name}: no iptables service rules"),
           *detected.evidence]
    if detected.legacy_tables_present:
        out.append("kube-proxy may have written its rules through the other backend: look at "
                   "`iptables-legacy-save` from this node")
    return out


# ------------------------------------------------------------------------------------------------ filtering


def filter_view(view: KubeView, namespace: str | None = None, service: str | None = None,
                address: str | None = None) -> KubeView:
    """The view restricted to one namespace, one Service ("NS/NAME", every port of it, or a chain name for
    an unnamed one) and/or one address (IP or IP:PORT: a ClusterIP, external/LB IP, endpoint or nodePort)."""
    services = view.services
    if namespace is not None:
        services = tuple(s for s in services if s.namespace == namespace)
    if service is not None:
        want_ns, _, want_name = service.partition("/")
        if not want_name:
            services = tuple(s for s in services if s.name == service or service in s.chains)
        else:
            want_name, _, want_port = want_name.partition(":")
            services = tuple(s for s in services if s.namespace == want_ns and s.name == want_name
                             and (not want_port or s.port_name == want_port))
    if address is not None:
        ip, port = _split_address_filter(address)
        services = tuple(s for s in services if _touches(s, ip, port))
    labels = {c: lab for c, lab in view.chain_labels.items() if any(c in s.chains for s in services)} \
        if services != view.services else view.chain_labels
    return replace(view, services=services, chain_labels=labels)


def _split_address_filter(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        ip, port = _split_destination(text)
        return ip, port
    if text.count(":") == 1:
        ip, _, port = text.partition(":")
        return ip, _port(port)
    return text, None


def _touches(s: ServicePortView, ip: str, port: int | None) -> bool:
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        pass
    for e in s.entries:
        if e.address == ip and (port is None or e.port == port):
            return True
    for ep in s.endpoints:
        if ep.ip == ip and (port is None or ep.port == port):
            return True
    return False
