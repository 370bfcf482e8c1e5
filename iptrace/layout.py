"""kube-proxy's layout as any dataplane reports it: which proxy wrote the rules (ProxyMode), every way into each
Service port (WayIn) and its chains (ServicePortLayout), where NodePorts are open, and the node-wide facts a view
needs (Layout). A dataplane's layout reader (iptrace.iptables.layout, iptrace.nftables.layout) builds these from
its own rules; iptrace.kube reads only these. Also what the API knows of a Service port (KnownServicePort), which
a dataplane uses to name comment-less chains. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field

# Kinds of ways into a Service port, in the order they are listed.
CLUSTER_IP = "clusterIP"
NODE_PORT = "nodePort"
EXTERNAL_IP = "externalIP"
LOAD_BALANCER = "loadBalancer"
HEALTH_CHECK = "healthCheck"
ENTRY_KINDS = (CLUSTER_IP, NODE_PORT, EXTERNAL_IP, LOAD_BALANCER, HEALTH_CHECK)
# The note of an externalIP way in whose rules cannot tell it from a LoadBalancer IP (nftables mode writes an LB
# IP without source ranges exactly as an externalIP): explain then names it as either.
SAME_RULE_NOTE = "an externalIP or a LoadBalancer IP: kube-proxy writes the same element for both"
# The era of a dump that holds pieces only kube-proxy's iptables mode writes but not KUBE-SERVICES, its way into
# every Service: the dump was cut (a paste cut short, one table only), so it cannot tell where a Service goes.
PARTIAL_DUMP = "partial dump"
# What to do about kube-proxy's rules in both proxy modes on one node (services, explain and audit say it alike).
ONE_MODE_FIX = ("run one kube-proxy, in one mode: a kube-proxy of 1.29 or later deletes the other mode's rules when it "
                "starts (or run `kube-proxy --cleanup` in the mode no longer used)")


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
    warning: tuple[int, str] | None = None  # (line, text) of the dump's own warning about the other backend
    # Before KEP-3178 (iptables' KUBE-XLB layout) internalTrafficPolicy=Local filtered the cluster chain itself.
    itp_filters_cluster_chain: bool = False
    # kube-proxy's rules of the other proxy mode beside these, in a few words (an nft ruleset whose `ip nat` holds
    # iptables mode's KUBE-SERVICES, written through iptables-nft); "" when there are none.
    other_mode: str = ""

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


@dataclass
class WaySeed:
    """A way in as a dataplane's layout reader gathers it (rule by rule), before it becomes a WayIn."""

    kind: str
    address: str | None
    port: int
    protocol: str
    chain: str = ""
    lines: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class WaySeeds(dict[tuple[str, str | None, int, str], WaySeed]):
    """One Service port's ways in being gathered, keyed by (kind, address, port, protocol)."""

    def seed(self, kind: str, address: str | None, port: int, protocol: str) -> WaySeed:
        k = (kind, address, port, protocol)
        found = self.get(k)
        if found is None:
            found = self[k] = WaySeed(kind, address, port, protocol)
        return found

    def has_kind(self, kind: str) -> bool:
        return any(k[0] == kind for k in self)

    def ways(self) -> tuple[WayIn, ...]:
        """In ENTRY_KINDS order, then by address and port; a health check nodePort is TCP whatever the port's."""
        seeds = sorted(self.values(), key=lambda s: (ENTRY_KINDS.index(s.kind), s.address or "", s.port))
        return tuple(WayIn(s.kind, s.address, s.port, s.protocol if s.kind != HEALTH_CHECK else "tcp", s.chain,
                           tuple(sorted(set(s.lines))), tuple(dict.fromkeys(s.notes))) for s in seeds)


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
    # Input without lines (nft -j): the kernel handles of its chains' rules, in order, and per chain the handle of
    # the rule that DNATs (an endpoint's evidence); empty when `lines` can say it.
    handles: tuple[int, ...] = ()
    dnat_handles: tuple[tuple[str, int], ...] = ()


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

    def accepts(self, address: str) -> bool:
        """Whether the dispatch sends a nodePort on `address` (a node address) to its Service; True where the
        rules name addresses in a form this does not read (an anonymous set, a range)."""
        if self.mode == "none":
            return False
        ip = ipaddress.ip_address(address)
        try:
            listed = [ipaddress.ip_network(a, strict=False)
                      for a in (self.addresses if self.mode == "addresses" else self.excluded)]
        except ValueError:
            return True
        within = any(ip.version == net.version and ip in net for net in listed)
        return within if self.mode == "addresses" else not within


@dataclass(frozen=True, slots=True)
class LayoutIndex:
    """What a question about one address needs before any Service port is read: every way in the dispatch
    writes (with the key of its Service port), read from the dispatch rules alone, and how to find the rest."""

    ways: tuple[tuple[str, WayIn], ...]  # (service port key, way in), in dump order
    keys: tuple[str, ...]  # every service port key, in the order the ports are listed
    build: Callable[[str], ServicePortLayout]  # the whole layout of one service port
    endpoint_keys: Callable[[str], tuple[str, ...]]  # the keys with an endpoint at this IP
    chain_key: Callable[[str], str | None]  # the key of the service port a chain belongs to
    # the layout of one service port but its `lines` (what a content key reads: iptrace.iptables.carry), when
    # that costs less than the whole
    values: Callable[[str], ServicePortLayout] | None = None


class Layout:
    """Everything a dataplane reads of kube-proxy's layout for one IP family of one ruleset. The node-wide
    facts are read at once; each Service port's own chains only when it is asked for (`service_port`), so a
    question about one address reads the dispatch rules and the ports at that address, not the whole dump."""

    def __init__(self, proxy: ProxyMode, family: str, node_port_addresses: NodePortAddresses,
                 pod_cidrs: Sequence[str], pod_interfaces: Sequence[str], node_ips: Sequence[str],
                 endpoint_ips: Container[str], masquerade_mark: str | None, random_fully: bool,
                 warnings: Sequence[str] = (), index: LayoutIndex | None = None,
                 full_warnings: Callable[[tuple[ServicePortLayout, ...]], tuple[str, ...]] | None = None, *,
                 node_pod_cidrs: Sequence[str] = ()) -> None:
        self.proxy = proxy
        self.family = family  # "ipv4" | "ipv6"
        self.node_port_addresses = node_port_addresses
        self.pod_cidrs = tuple(pod_cidrs)  # from kube-proxy's local-traffic detector
        self.node_pod_cidrs = tuple(node_pod_cidrs)  # this node's own pod subnet, when the rules name it
        self.pod_interfaces = tuple(pod_interfaces)
        self.node_ips = tuple(node_ips)  # the node addresses the rules reveal
        self.endpoint_ips = endpoint_ips  # (membership only) so that a "pod" source is no endpoint
        self.masquerade_mark = masquerade_mark
        self.random_fully = random_fully
        self._warnings = tuple(warnings)
        self._index = index or LayoutIndex((), (), _no_port, lambda ip: (), lambda chain: None)
        self._full_warnings = full_warnings
        self._ports: dict[str, ServicePortLayout] = {}
        self._values: dict[str, ServicePortLayout] = {}  # (port_values' that are not in _ports)
        self._by_address: dict[str | None, list[tuple[str, WayIn]]] | None = None

    @property
    def ways(self) -> tuple[tuple[str, WayIn], ...]:
        return self._index.ways

    @property
    def keys(self) -> tuple[str, ...]:
        return self._index.keys

    def service_port(self, key: str) -> ServicePortLayout:
        found = self._ports.get(key)
        if found is None:
            found = self._ports[key] = self._index.build(key)
        return found

    def port_values(self, key: str) -> ServicePortLayout:
        """The Service port's layout, with no `lines` unless it was read whole (service_port) before."""
        found = self._ports.get(key) or self._values.get(key)
        if found is None:
            values = self._index.values
            if values is None:
                return self.service_port(key)
            found = self._values[key] = values(key)
        return found

    @property
    def service_ports(self) -> tuple[ServicePortLayout, ...]:
        """Every Service port (reads them all)."""
        return tuple(self.service_port(k) for k in self._index.keys)

    @property
    def warnings(self) -> tuple[str, ...]:
        """The layout's warnings; those that need every Service port read (orphaned chains: their lines are not
        read) once they were."""
        if self._full_warnings is not None and all(k in self._ports or k in self._values for k in self._index.keys):
            ports = tuple(self._ports.get(k) or self._values[k] for k in self._index.keys)
            return tuple(dict.fromkeys((*self._warnings, *self._full_warnings(ports))))
        return self._warnings

    def ways_at(self, address: str | None) -> list[tuple[str, WayIn]]:
        """The ways in at `address` (None: the node's own addresses: NodePorts, health checks)."""
        if self._by_address is None:
            index: dict[str | None, list[tuple[str, WayIn]]] = {}
            for key, way in self._index.ways:
                index.setdefault(way.address, []).append((key, way))
            self._by_address = index
        return self._by_address.get(address, [])

    def endpoint_keys(self, ip: str) -> tuple[str, ...]:
        return self._index.endpoint_keys(ip) if ip in self.endpoint_ips else ()

    def chain_key(self, chain: str) -> str | None:
        return self._index.chain_key(chain)


def _no_port(key: str) -> ServicePortLayout:
    raise KeyError(key)


def node_pod_subnet(networks: Iterable[str], pod_cidrs: Sequence[str]) -> tuple[str, ...]:
    """This node's own pod subnet among the networks the CNI's rules test (flannel: `-s 10.244.1.0/24 -d
    10.244.0.0/16 -j RETURN`): the one network strictly inside a pod CIDR; () when none or several are."""
    clusters = [ipaddress.ip_network(c, strict=False) for c in pod_cidrs]
    found = set()
    for text in networks:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if any(net.version == c.version and net.prefixlen > c.prefixlen and net.subnet_of(c)  # type: ignore[arg-type]
               for c in clusters):
            found.add(str(net))
    return tuple(found) if len(found) == 1 else ()


@dataclass(frozen=True, slots=True)
class KnownServicePort:
    """A Service port as the API knows it, given to a dataplane so that it can name comment-less chains (by
    kube-proxy's chain-name hash) and filter rules (by address and port)."""

    name: str  # kube-proxy's ServicePortName: "ns/svc:port", or "ns/svc" for an unnamed port
    protocol: str  # lower case
    port: int
    addresses: tuple[str, ...]  # ClusterIPs, externalIPs, LB IPs
    node_port: int | None = None
