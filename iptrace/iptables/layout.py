"""kube-proxy's iptables layout, read statically: which chains make up each Service port and its ways in.

Mirrors `syncProxyRules` in kubernetes/kubernetes pkg/proxy/iptables/proxier.go, read backwards, for every
layout in KUBE-PROXY-LAYOUT.md (KUBE-XLB era, KUBE-EXT/KUBE-SVL era, current, the 2015 iptables proxier). A
service port is the family of chains sharing one hash (KUBE-SVC/SVL/EXT/FW/XLB-<H>) plus the filter rules
naming it. Nothing here decides where a packet goes: verdicts, endpoints, shares and masquerading come from
the walk (walk.py) that `trace` runs, which iptrace.kube.view asks for every way in. Pure: no I/O (what a
Service port reads of each of its chains is kept per process by the chain's rule texts: an audit's nodes share
almost all of them).
"""

from __future__ import annotations

import gc
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from itertools import chain as chain_items
from operator import attrgetter, itemgetter

from iptrace.iptables.comments import chain_key, parse_comment
from iptrace.iptables.era import cut_warnings, no_rules_warnings, proxy_mode
from iptrace.iptables.facts import RuleFacts, read
from iptrace.iptables.hashes import service_port_chain
from iptrace.iptables.kube_chains import (
    FILTER_CHAINS,
    MASQ_CHAIN,
    NO_RULES,
    NODEPORTS,
    PROXY_FIREWALL,
    SEP,
    SERVICES,
    ChainSummary,
    KubeChains,
    chain_summary,
)
from iptrace.iptables.model import Chain, Ruleset
from iptrace.iptables.sources import infer_node_ips
from iptrace.layout import (
    CLUSTER_IP,
    EXTERNAL_IP,
    HEALTH_CHECK,
    LOAD_BALANCER,
    NODE_PORT,
    KnownServicePort,
    Layout,
    LayoutIndex,
    NodePortAddresses,
    ProxyMode,
    ServicePortLayout,
    WayIn,
    WaySeed,
    WaySeeds,
    node_pod_subnet,
)
from iptrace.records import positional_new
from iptrace.text import counted

_LOCAL_PREFIXES = ("KUBE-SVL-", "KUBE-XLB-")
_RULE_LINE = itemgetter(3)  # Rule.line, read straight from the tuple
_RULES = attrgetter("rules")  # (a Chain's)

def _port(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _known_source(text: str, cidrs: list[str]) -> bool:
    """A rule whose only source or interface test is `[!] -s CIDR` with a CIDR already found: the detector's rule
    of one more Service, which cannot add to what pod_detection found (so it is not read)."""
    start = 5 if text.startswith("! -s ") else 3 if text.startswith("-s ") else 0
    end = text.find(" ", start) if start else -1
    return (end > start and text[start:end] in cidrs and text.count("-s ") == 1 and "-i " not in text
            and "--in-interface" not in text and "--source" not in text)


def is_loopback(cidr: str) -> bool:
    return cidr.startswith("127.") or cidr in ("::1", "::1/128")


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class _Group:
    key: str
    name: str | None = None
    identity: str = "chain"
    protocol: str | None = None
    chains: dict[str, str] = field(default_factory=dict)  # prefix -> chain name
    seeds: WaySeeds = field(default_factory=WaySeeds)
    lines: set[int] = field(default_factory=set)
    no_endpoints: bool = False
    no_local_endpoints: bool = False
    itp_local_drop: bool = False
    etp_local_drop: bool = False
    firewall_lines: list[int] = field(default_factory=list)
    health_check: int | None = None

    def seed(self, kind: str, address: str | None, port: int, protocol: str) -> WaySeed:
        return self.seeds.seed(kind, address, port, protocol)

    def has_kind(self, kind: str) -> bool:
        return self.seeds.has_kind(kind)


def _localhost_reached(rule_dst: str, dispatch: NodePortAddresses) -> str:
    """The loopback addresses a localhost NodePort rule (`-A KUBE-NODEPORTS -d 127.0.0.0/8 …`) gets packets for:
    its range where KUBE-SERVICES sends every local address there, else only the loopback addresses it names
    (--nodeport-addresses 127.0.0.0/8 writes `-d 127.0.0.1`: the address lo holds), none where it excludes them."""
    if dispatch.mode == "all-local":
        return "" if dispatch.localhost is False else rule_dst
    net = ipaddress.ip_network(rule_dst, strict=False)
    named = [(a, ipaddress.ip_network(a, strict=False)) for a in dispatch.addresses if is_loopback(a)]
    return ", ".join(a for a, n in named if n.version == net.version and n.subnet_of(net))  # type: ignore[arg-type]


class _Reader:
    def __init__(self, ruleset: Ruleset, known: Sequence[KnownServicePort]) -> None:
        self.ruleset = ruleset
        self.known = known
        self.tables = KubeChains(ruleset)
        self.groups: dict[str, _Group] = {}
        self.by_name: dict[str, str] = {}  # "ns/svc:port|proto" -> group key
        self.by_address: dict[tuple[str | None, int, str], str] = {}  # (address, port, proto) -> group key
        self.warnings: list[str] = []
        self._ways: dict[str, tuple[WayIn, ...]] = {}  # (ways_in's, by group key)

    # -- grouping

    def group(self, key: str) -> _Group:
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(key)
        return g

    @staticmethod
    def name_group(g: _Group, name: str) -> None:
        if g.name is None:
            g.name, g.identity = name, "comment"

    def group_for_name(self, name: str, protocol: str | None) -> _Group:
        proto = (protocol or "tcp").lower()
        key = self.by_name.get(f"{name}|{proto}")
        if key is None:
            key = self.by_name[f"{name}|{proto}"] = service_port_chain("", name, proto)
        g = self.group(key)
        self.name_group(g, name)
        if g.protocol is None:
            g.protocol = proto
        return g

    def add_seed(self, g: _Group, kind: str, address: str | None, port: int, proto: str) -> WaySeed:
        if kind != HEALTH_CHECK:
            self.by_address.setdefault((address, port, proto), g.key)
        return g.seed(kind, address, port, proto)

    def collect_groups(self) -> None:
        """A group per chain-name hash, from the chain names alone (their rules are read per group)."""
        for chain, (prefix, key) in self.tables.service_chains.items():
            self.group(key).chains[prefix] = chain

    def complete(self, g: _Group, summaries: Sequence[ChainSummary]) -> None:
        """What a group's own chains say (`summaries`, in the order of `g.chains`): its name and protocol when the
        dispatch did not, and the "has no local endpoints" drop (read when the group's Service port is asked for)."""
        for chain, s in zip(g.chains.values(), summaries, strict=True):
            if g.name is None and s.name is not None:
                self.name_group(g, s.name)
            if s.no_local_drop:
                g.no_local_endpoints = True
            if s.proto is not None and g.protocol is None:
                g.protocol = s.proto
            if g.name is not None and g.protocol is not None:
                continue
            for f in self.tables.facts(chain):  # the endpoint chains still carry the name and protocol (2015, XLB)
                if f.target.startswith(SEP):
                    for sf in self.tables.facts(f.target):
                        if sf.proto and g.protocol is None:
                            g.protocol = sf.proto.lower()
                        if sf.comment and g.name is None:
                            parsed = parse_comment(sf.comment)
                            if parsed is not None:
                                self.name_group(g, parsed[0])

    def collect_ways_in(self) -> None:
        # nat KUBE-SERVICES: the ClusterIP, external IP and LB IP jumps.
        for f in self.tables.facts(SERVICES):
            split = chain_key(f.target)
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
            if g.name is not None:
                self.by_name.setdefault(f"{g.name}|{g.protocol}", g.key)
            seed = self.add_seed(g, kind, f.dst, port, proto)
            seed.chain = seed.chain or f.target
            seed.lines.append(f.line)
        # nat KUBE-NODEPORTS: nodePorts (and the localhost copy of each, ~1.29+).
        dispatch: NodePortAddresses | None = None
        for f in self.tables.facts(NODEPORTS):
            split = chain_key(f.target)
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
            seed = self.add_seed(g, NODE_PORT, None, port, proto)
            seed.lines.append(f.line)
            if f.dst is not None and not f.dst_neg and is_loopback(f.dst):
                counted = f" (counted by nfacct {f.nfacct})" if f.nfacct else ""
                dispatch = dispatch or self.node_port_addresses()
                reached = _localhost_reached(f.dst, dispatch)
                seed.notes.append(f"also reachable on localhost {reached}{counted}" if reached else
                                  f"its localhost rule ({f.dst}) is never reached: KUBE-SERVICES sends it no "
                                  "loopback address")
            else:
                seed.chain = seed.chain or f.target
        # filter: REJECT/DROP for services without (local) endpoints, health checks, the LB firewall.
        for chain in FILTER_CHAINS:
            for f in self.tables.filter.get(chain, ()):
                self.filter_rule(chain, f)

    def filter_rule(self, chain: str, f: RuleFacts) -> None:
        parsed = parse_comment(f.comment) if f.comment else None
        port = _port(f.dport)
        proto = (f.proto or "tcp").lower()
        g: _Group | None = None
        if chain == PROXY_FIREWALL and f.comment:
            m = re.search(r"traffic not accepted by KUBE-FW-(\S+)", f.comment)
            if m is not None:
                g = self.group(m.group(1))
        if g is None and parsed is not None and parsed[1] == HEALTH_CHECK:
            # Health checks are TCP whatever the service port's protocol.
            g = next((self.groups[k] for p in ("tcp", "udp", "sctp")
                      if (k := self.by_name.get(f"{parsed[0]}|{p}")) is not None), None)
        if g is None and parsed is not None:
            g = self.group_for_name(parsed[0], proto)
        if g is None and port is not None:
            key = self.by_address.get((f.dst, port, proto))
            g = self.groups[key] if key is not None else None
        if g is None and port is not None:
            name = _known_by_address(self.known, f.dst, port, proto)
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
        if chain == PROXY_FIREWALL:
            g.firewall_lines.append(f.line)
            if f.dst is not None and port is not None:
                self.add_seed(g, LOAD_BALANCER, f.dst, port, proto).lines.append(f.line)
            return
        if chain == NODEPORTS:
            if f.target == "ACCEPT" and port is not None:
                g.health_check = port
                g.seed(HEALTH_CHECK, None, port, proto).lines.append(f.line)
            return
        if kind == "no-endpoints" or (f.target == "REJECT" and kind != "no-local-endpoints"):
            g.no_endpoints = True
        elif kind == "no-local-endpoints" or f.target == "DROP":
            g.no_local_endpoints = True
            if chain == SERVICES:
                g.itp_local_drop = True
            else:
                g.etp_local_drop = True
        if port is None:
            return
        if f.dst is None and f.dst_type is not None and "LOCAL" in f.dst_type:
            seed = self.add_seed(g, NODE_PORT, None, port, proto)
        elif f.dst is not None and not f.dst_neg:
            known = [k for k in g.seeds if k[1] == f.dst and k[0] != HEALTH_CHECK]
            if known:
                seed = g.seeds[known[0]]
            elif chain == SERVICES and not g.has_kind(CLUSTER_IP):
                seed = self.add_seed(g, CLUSTER_IP, f.dst, port, proto)
            else:
                seed = self.add_seed(g, EXTERNAL_IP, f.dst, port, proto)
                seed.notes.append("an externalIP or a LoadBalancer IP: kube-proxy writes the same rule for both")
        else:
            return
        seed.lines.append(f.line)

    # -- node-level facts

    def node_port_addresses(self) -> NodePortAddresses:
        jumps = [f for f in self.tables.facts(SERVICES) if f.target == NODEPORTS]
        if not jumps:
            return NodePortAddresses("none")
        lines = tuple(f.line for f in jumps)
        addresses = tuple(f.dst for f in jumps if f.dst is not None and not f.dst_neg)
        excluded = tuple(f.dst for f in jumps if f.dst is not None and f.dst_neg)
        localhost_rules = any(f.dst is not None and not f.dst_neg and is_loopback(f.dst)
                              for f in self.tables.facts(NODEPORTS))
        localhost: bool | None
        if addresses:
            mode = "addresses"
            localhost = any(is_loopback(a) for a in addresses)
        else:
            mode = "all-local"
            if any(is_loopback(x) for x in excluded):
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
        for chain in (SERVICES, *self.tables.service_chains):
            found = self.tables.nat_chains.get(chain)
            if found is None:
                continue
            short_circuit = chain.startswith(("KUBE-EXT-", "KUBE-XLB-"))
            # Only rules with a source or an input interface can be the detector's, and syncProxyRules writes
            # them before the endpoint jumps: read just those (this runs over every service chain of the dump).
            candidates = []
            for r in found.rules:
                text = r[1]
                if "-j KUBE-SEP-" in text or "-g KUBE-SEP-" in text:
                    break
                if ("-s " in text or "-i " in text) and not _known_source(text, cidrs):
                    candidates.append(r)
            for f in map(read, candidates):
                masq = f.target == MASQ_CHAIN
                # "! -s <podCIDR> -j KUBE-MARK-MASQ" (cluster IP) or "-s <podCIDR> -j KUBE-SVC-…" (pods
                # short-circuited past externalTrafficPolicy=Local); the same with -i for interface detection.
                to_service = short_circuit and f.target.startswith("KUBE-SVC-")
                if f.src is not None and "/" in f.src and ((masq and f.src_neg) or (to_service and not f.src_neg)):
                    if f.src not in cidrs and not is_loopback(f.src):
                        cidrs.append(f.src)
                if f.in_iface is not None and ((masq and f.in_iface_neg) or (to_service and not f.in_iface_neg)):
                    if f.in_iface not in ifaces:
                        ifaces.append(f.in_iface)
        return tuple(cidrs), tuple(ifaces)

    def node_pod_cidrs(self, pod_cidrs: Sequence[str]) -> tuple[str, ...]:
        """This node's own pod subnet, when the CNI's nat rules (outside kube-proxy's chains) name one."""
        if not pod_cidrs:
            return ()
        return node_pod_subnet((text for name, chain in self.tables.nat_chains.items() if not name.startswith("KUBE-")
                                for f in map(read, chain.rules) for text in (f.src, f.dst)
                                if text is not None and "/" in text), pod_cidrs)

    def masquerade(self) -> tuple[str | None, bool]:
        mark: str | None = None
        for f in self.tables.facts(MASQ_CHAIN):
            if f.target == "MARK" and f.set_mark:
                mark = f.set_mark.split("/", 1)[0]
                break
        random_fully = False
        for chain in ("KUBE-POSTROUTING", "POSTROUTING"):
            for f in self.tables.facts(chain):
                if f.target == "MASQUERADE" and (chain == "KUBE-POSTROUTING" or
                                                 (f.comment or "").startswith("kubernetes")):
                    random_fully = random_fully or f.random_fully
                    if mark is None and f.mark is not None and not f.mark_neg:
                        mark = f.mark.split("/", 1)[0]  # 2015: POSTROUTING -m mark --mark 0x4d415351
        return mark, random_fully

    # -- one service port

    def endpoint_chains(self, chain: str | None) -> list[str]:
        """The KUBE-SEP chains a load-balancing chain jumps to, in rule order."""
        if chain is None:
            return []
        return list(dict.fromkeys(f.target for f in self.tables.facts(chain) if f.target.startswith(SEP)))

    def ways_in(self, g: _Group) -> tuple[WayIn, ...]:
        """A group's ways in, made once (the layout's index lists them, its Service port holds them): its seeds are
        all gathered by then (collect_ways_in)."""
        found = self._ways.get(g.key)
        if found is None:
            found = self._ways[g.key] = g.seeds.ways()
        return found

    def endpoint_keys(self, ip: str) -> tuple[str, ...]:
        """The groups whose load-balancing chains jump to an endpoint chain that DNATs to `ip`."""
        needle = f"--to-destination [{ip}]:" if ":" in ip else f"--to-destination {ip}:"
        seps = {name for name, chain in self.tables.sep_chains.items()
                if any(needle in r[1] or r[1].endswith(f"--to-destination {ip}") for r in chain.rules)}
        if not seps:
            return ()
        nat = self.tables.nat_chains

        def jumps(chain: str | None) -> bool:
            # A jump's text names its endpoint chain: only the chains whose text does are read (not every
            # Service's).
            found = nat.get(chain) if chain is not None else None
            if found is None or not any(sep in r[1] for r in found.rules for sep in seps):
                return False
            return any(sep in seps for sep in self.endpoint_chains(chain))

        return tuple(g.key for g in self.groups.values()
                     if any(jumps(g.chains.get(p)) for p in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")))

    def service_port(self, g: _Group, hash_names: dict[str, str], lines: bool = True) -> ServicePortLayout:
        """`lines` False: the layout with no lines (LayoutIndex.values)."""
        mark = self.tables.mark()
        try:
            return self._service_port(g, hash_names, lines)
        finally:
            self.tables.forget_since(mark)

    def _service_port(self, g: _Group, hash_names: dict[str, str], with_lines: bool) -> ServicePortLayout:
        nat = self.tables.nat_chains
        # Each of the group's chains read once, for its summary; their lines and the endpoint chains' are taken
        # below in one pass over their rules.
        summaries: dict[str, ChainSummary] = {}
        found: list[Chain] = []
        for prefix, name in g.chains.items():
            chain = nat.get(name)
            if chain is None:
                summaries[prefix] = NO_RULES
                continue
            summaries[prefix] = chain_summary(chain.rules)
            found.append(chain)
        self.complete(g, list(summaries.values()))
        ways_in = self.ways_in(g)
        cluster_chain = g.chains.get("KUBE-SVC-")
        local_chain = g.chains.get("KUBE-SVL-") or g.chains.get("KUBE-XLB-")
        cluster = summaries.get("KUBE-SVC-", NO_RULES)
        local = summaries.get("KUBE-SVL-") or summaries.get("KUBE-XLB-") or NO_RULES
        endpoint_chains = list(dict.fromkeys([*cluster.endpoint_chains, *local.endpoint_chains]))
        # The ways in read once: the LB IPs, whether one is from outside the cluster, the first ClusterIP one.
        lines: set[int] = set(g.lines)
        lb_ips: list[str] = []
        external = False
        cluster_way: WayIn | None = None
        for w in ways_in:
            kind = w.kind
            if kind == LOAD_BALANCER and w.address:
                lb_ips.append(w.address)
            if kind in (NODE_PORT, EXTERNAL_IP, LOAD_BALANCER):
                external = True
            elif kind == CLUSTER_IP and cluster_way is None:
                cluster_way = w
            if with_lines:
                lines.update(w.lines)
        ranges: list[str] = []
        fw = summaries.get("KUBE-FW-")
        if fw is not None:
            for src in fw.ranges:
                if src in lb_ips and "/" not in src:
                    continue  # kube-proxy's "allow the node itself" rule for a VIP-style LB
                if src not in ranges:
                    ranges.append(src)
        etp: str | None = None
        if external:
            ext = summaries.get("KUBE-EXT-")
            ext_local = "KUBE-XLB-" in g.chains or g.etp_local_drop
            if not ext_local and ext is not None:
                ext_local = ext.ext_local
            if ext_local:
                etp = "Local"
            elif g.chains or not g.no_endpoints:
                etp = "Cluster"
        itp: str | None = None
        if cluster_way is not None:
            if cluster_way.chain.startswith("KUBE-SVL-") or g.itp_local_drop:
                itp = "Local"
            elif cluster_way.chain.startswith("KUBE-SVC-"):
                itp = "Cluster"
        affinity = cluster.affinity if cluster.affinity is not None else local.affinity
        if with_lines:
            lines.update(g.firewall_lines)
            found.extend(filter(None, map(nat.get, endpoint_chains)))  # (a Chain is always true)
            lines.update(map(_RULE_LINE, chain_items.from_iterable(map(_RULES, found))))
            lines.discard(0)
        name, identity = g.name, g.identity
        if name is None and g.key in hash_names:
            name, identity = hash_names[g.key], "hash"
        notes: list[str] = []
        if name is None:
            notes.append("no comment names this Service port (kube-proxy drops comments in large clusters); "
                         "pass cluster data to name it from the chain hash")
        if not g.chains and not g.no_endpoints and not g.no_local_endpoints and not ways_in:
            notes.append("only filter rules mention this Service port")
        return _new_layout(
            g.key, name, identity, g.protocol or "tcp", ways_in, cluster_chain, local_chain,
            (*sorted(g.chains.values()), *endpoint_chains), tuple(sorted(lines)) if with_lines else (), etp, itp,
            affinity, tuple(ranges),
            g.health_check, g.no_endpoints, g.no_local_endpoints, tuple(notes), (), ())


# ServicePortLayout(…) with every field given in order, without the frozen dataclass's __init__ (one a Service
# port of every node an audit reads).
_new_layout = positional_new(ServicePortLayout, [f.name for f in fields(ServicePortLayout)])


def _known_by_address(known: Sequence[KnownServicePort], address: str | None, port: int, proto: str) -> str | None:
    """The service port a comment-less filter rule is about: by address and port, or by nodePort when the rule
    has no address."""
    for k in known:
        if k.protocol != proto:
            continue
        if address is None:
            if k.node_port == port:
                return k.name
        elif k.port == port and address in k.addresses:
            return k.name
    return None


def read_layout(ruleset: Ruleset, family: str | None = None, *,
                known: Sequence[KnownServicePort] = ()) -> Layout:
    """kube-proxy's layout in `ruleset`. Never raises for odd rules (they become warnings)."""
    family = family or ruleset.family
    proxy = proxy_mode(ruleset)
    if proxy.mode not in ("iptables",) or family != ruleset.family:
        return Layout(proxy, family, NodePortAddresses("none"), (), (), (), frozenset(), None, False,
                      tuple(no_rules_warnings(proxy)) if family == ruleset.family else ())
    enabled = gc.isenabled()
    gc.disable()  # ~10^5 small acyclic objects: the cyclic collector would only rescan the whole ruleset
    try:
        return _read(ruleset, proxy, known)
    finally:
        if enabled:
            gc.enable()


def _read(ruleset: Ruleset, proxy: ProxyMode, known: Sequence[KnownServicePort]) -> Layout:
    r = _Reader(ruleset, known)
    r.collect_groups()
    r.collect_ways_in()
    pod_cidrs, pod_ifaces = r.pod_detection()
    mark, random_fully = r.masquerade()
    hash_names = {service_port_chain("", k.name, k.protocol): k.name for k in known}
    groups = r.groups
    warnings: list[str] = []
    if proxy.legacy_tables_present:
        warnings.append("the dump warns that iptables-legacy tables are present: the rules that matter may be "
                        "in the other backend (iptables-legacy-save)")
    warnings += [*r.warnings, *cut_warnings(ruleset)]

    def orphans(ports: tuple[ServicePortLayout, ...]) -> tuple[str, ...]:
        used = set().union(*[p.chains for p in ports])
        left = sorted(r.tables.sep_chains.keys() - used)
        if not left:
            return ()
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        return (f"{counted(len(left), 'KUBE-SEP chain')} no service chain jumps to: {shown}",)

    def key_of(chain: str) -> str | None:
        split = chain_key(chain)
        return split[1] if split is not None and split[1] in groups else None

    index = LayoutIndex(
        ways=tuple((g.key, way) for g in groups.values() for way in r.ways_in(g)),
        keys=tuple(groups),
        build=lambda key: r.service_port(groups[key], hash_names),
        values=lambda key: r.service_port(groups[key], hash_names, False),
        endpoint_keys=r.endpoint_keys,
        chain_key=key_of)
    return Layout(proxy, ruleset.family, r.node_port_addresses(), pod_cidrs, pod_ifaces,
                  tuple(infer_node_ips(ruleset)), r.tables.endpoint_ips, mark, random_fully,
                  tuple(dict.fromkeys(warnings)), index, orphans, node_pod_cidrs=r.node_pod_cidrs(pod_cidrs))
