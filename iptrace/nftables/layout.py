"""kube-proxy's nftables layout for one IP family, read statically and lazily: every way into a Service port from
the dispatch maps alone, each Service port's own chains when it is asked for.

Mirrors `syncProxyRules` of kubernetes/kubernetes pkg/proxy/nftables/proxier.go read backwards, for every layout
era.py names. A Service port is the family of chains sharing one name base (`ULMVA6XW-ns1/svc1/tcp/p80`), which
spells the Service port out, so nftables mode needs no cluster data to name anything. Ways in: `service-ips`
(ClusterIP → `goto service-…`/`local-…`; externalIP or LB IP → `goto external-…`), `service-nodeports`,
`firewall-ips` (LB IPs with source ranges), `no-endpoint-services`/`no-endpoint-nodeports` (their element
comments name the Service port). Nothing here decides where a packet goes: the walk does (walk.py). Pure.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from iptrace.layout import (
    CLUSTER_IP,
    EXTERNAL_IP,
    LOAD_BALANCER,
    NODE_PORT,
    SAME_RULE_NOTE,
    KnownServicePort,
    Layout,
    LayoutIndex,
    NodePortAddresses,
    ServicePortLayout,
    WayIn,
    WaySeed,
    WaySeeds,
    node_pod_subnet,
)
from iptrace.nftables.era import kube_table, mode_split_warning, no_rules_warnings, proxy_mode
from iptrace.nftables.model import (
    Fib,
    Match,
    Payload,
    Prefix,
    Ruleset,
    Set,
    SetRef,
    Table,
    Verdict,
)
from iptrace.nftables.names import (
    CLUSTER_IPS,
    FIREWALL_ALLOW_SET,
    FIREWALL_IPS,
    FIREWALL_SET,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    NODEPORT_IPS,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    SERVICES_CHAIN,
    service_port_base,
    split_chain,
)
from iptrace.nftables.ports import PortReader, value_text


@dataclass
class _Group:
    key: str  # the name base: HASH-ns/svc/proto/port
    name: str | None = None
    protocol: str = "tcp"
    identity: str = "comment"  # the name is in the rules (chain names, element comments); "address": cluster data
    seeds: WaySeeds = field(default_factory=WaySeeds)
    no_endpoints: bool = False
    no_local_endpoints: bool = False
    itp_local_drop: bool = False
    etp_local_drop: bool = False
    lines: set[int] = field(default_factory=set)

    def seed(self, kind: str, address: str | None, port: int, protocol: str) -> WaySeed:
        return self.seeds.seed(kind, address, port, protocol)

    def ways(self) -> tuple[WayIn, ...]:
        return self.seeds.ways()


def _elements(table: Table, name: str) -> tuple[Set | None, Iterator[Any]]:
    s = table.set(name)
    return s, iter(s.elements if s is not None else ())


class _Reader:
    def __init__(self, ruleset: Ruleset, table: Table, family: str, known: Sequence[KnownServicePort]) -> None:
        self.ruleset = ruleset
        self.table = table
        self.family = family
        self.known = known
        self.groups: dict[str, _Group] = {}
        self.ports = PortReader(ruleset, table)
        self.warnings: list[str] = []
        cluster_ips = table.set(CLUSTER_IPS)
        self.cluster_ips = {e.key for e in cluster_ips.elements} if cluster_ips is not None else None
        fw = table.set(FIREWALL_IPS)
        self.firewalled = {e.key[0] for e in fw.elements if isinstance(e.key, tuple)} if fw is not None else set()
        alpha = table.set(FIREWALL_SET)
        if alpha is not None:
            self.firewalled |= {e.key[0] for e in alpha.elements if isinstance(e.key, tuple)}

    def group(self, key: str, name: str | None, protocol: str) -> _Group:
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(key, name, protocol)
        elif g.name is None:
            g.name = name
        return g

    def group_of_chain(self, chain: str) -> _Group | None:
        split = split_chain(chain)
        if split is None:
            return None
        return self.group(split[1], split[2], split[3])

    def group_of_name(self, name: str | None, protocol: str, address: str | None, port: int) -> _Group:
        identity = "comment"
        if name is None:
            name, identity = _known(self.known, address, port, protocol), "address"
        if name is None:
            g = self.group(f"{address or '<node>'}:{port}/{protocol}", None, protocol)
            g.identity = "chain"
            return g
        g = self.group(service_port_base(name, protocol), name, protocol)
        if g.identity != "comment" or identity == "comment":
            g.identity = identity
        return g

    def lines(self, s: Set, element: Any) -> tuple[int, ...]:
        """The element's input line as evidence (none for JSON input)."""
        line = self.ports.element_line(s, element)
        return (line,) if line else ()

    def read_ways(self) -> None:
        s, elements = _elements(self.table, SERVICE_IPS)
        for e in elements:
            addr, proto, port = _triple(e.key)
            target = e.data.target if isinstance(e.data, Verdict) else None
            if addr is None or target is None:
                continue
            split = split_chain(target)  # (group_of_chain's, read once: its word says which way in)
            if split is None:
                self.warnings.append(f"@{SERVICE_IPS} element {addr} . {proto} . {port} goes to {target}, which is "
                                     "not named like a kube-proxy Service chain; not read as a way in")
                continue
            g = self.group(split[1], split[2], split[3])
            if split[0] == "external":
                lb = addr in self.firewalled
                seed = g.seed(LOAD_BALANCER if lb else EXTERNAL_IP, addr, port, proto)
                if not lb:
                    seed.notes.append(SAME_RULE_NOTE)
            else:
                seed = g.seed(CLUSTER_IP, addr, port, proto)
            seed.chain = seed.chain or target
            seed.lines.extend(self.lines(s, e))  # type: ignore[arg-type]
        s, elements = _elements(self.table, SERVICE_NODEPORTS)
        for e in elements:
            if not isinstance(e.key, tuple) or len(e.key) != 2 or not isinstance(e.data, Verdict):
                continue
            proto, port = e.key
            g = self.group_of_chain(e.data.target or "")
            if g is None:
                continue
            seed = g.seed(NODE_PORT, None, int(port), str(proto))
            seed.chain = seed.chain or (e.data.target or "")
            seed.lines.extend(self.lines(s, e))  # type: ignore[arg-type]
        s, elements = _elements(self.table, FIREWALL_IPS)
        for e in elements:
            addr, proto, port = _triple(e.key)
            target = e.data.target if isinstance(e.data, Verdict) else None
            g = self.group_of_chain(target) if target else None
            if g is None or addr is None:
                continue
            seed = g.seed(LOAD_BALANCER, addr, port, proto)
            seed.lines.extend(self.lines(s, e))  # type: ignore[arg-type]
        for name in (NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS):
            s, elements = _elements(self.table, name)
            for e in elements:
                self.no_endpoint_element(s, e, node_port=name == NO_ENDPOINT_NODEPORTS)  # type: ignore[arg-type]

    def no_endpoint_element(self, s: Set, e: Any, *, node_port: bool) -> None:
        if node_port:
            if not isinstance(e.key, tuple) or len(e.key) != 2:
                return
            addr, (proto, port) = None, e.key
        else:
            addr, proto, port = _triple(e.key)
            if addr is None:
                return
        verdict = e.data.kind if isinstance(e.data, Verdict) else ""
        g = self.group_of_name(e.comment, str(proto), addr, int(port))
        line = self.lines(s, e)
        g.lines.update(line)
        if self.cluster_ips is not None:
            cluster = not node_port and addr in self.cluster_ips
        else:  # no @cluster-ips (a hand-written or partial ruleset): the first address of the port is the ClusterIP
            cluster = not node_port and not any(k[0] == CLUSTER_IP for k in g.seeds)
        if verdict == "drop":
            g.no_local_endpoints = True
            if cluster:
                g.itp_local_drop = True
            else:
                g.etp_local_drop = True
        else:
            g.no_endpoints = True
        if node_port:
            kind = NODE_PORT
        elif cluster:
            kind = CLUSTER_IP
        else:
            known_kinds = [k for (k, a, p, pr) in g.seeds if a == addr and p == port and pr == proto]
            kind = known_kinds[0] if known_kinds else (LOAD_BALANCER if addr in self.firewalled else EXTERNAL_IP)
        seed = g.seed(kind, addr, int(port), str(proto))
        seed.lines.extend(line)
        if kind == EXTERNAL_IP and not any(SAME_RULE_NOTE == n for n in seed.notes):
            seed.notes.append(SAME_RULE_NOTE)
        if kind == CLUSTER_IP and self.cluster_ips is None:
            seed.notes.append("read as the ClusterIP: the ruleset has no @cluster-ips set to tell")

    def alpha_firewall(self) -> dict[tuple[str, str, int], list[str]]:
        """1.29: @firewall-allow elements (addr . proto . port . source range) → source ranges per LB IP."""
        out: dict[tuple[str, str, int], list[str]] = {}
        s = self.table.set(FIREWALL_ALLOW_SET)
        for e in (s.elements if s is not None else ()):
            if isinstance(e.key, tuple) and len(e.key) == 4:
                addr, proto, port, src = e.key
                out.setdefault((str(addr), str(proto), int(port)), []).append(value_text(src))
        return out

    # -- node-level facts

    def node_port_addresses(self) -> tuple[NodePortAddresses, tuple[str, ...]]:
        """Where NodePorts are accepted, and the node addresses @nodeport-ips reveals."""
        chain = self.table.chain(SERVICES_CHAIN)
        nodeport_ips = self.table.set(NODEPORT_IPS)
        ips = tuple(str(e.key) for e in nodeport_ips.elements if isinstance(e.key, str)) \
            if nodeport_ips is not None else ()
        for rule in (chain.rules if chain is not None else ()):
            if SERVICE_NODEPORTS not in rule.text:
                continue
            items = rule.items
            if any(isinstance(i, Match) and isinstance(i.right, SetRef) and i.right.name == NODEPORT_IPS
                   for i in items):
                return NodePortAddresses("addresses", ips, (), False, (rule.line or 0,)), ips
            if any(isinstance(i, Match) and isinstance(i.left, Fib) for i in items):
                excluded = tuple(value_text(i.right) for i in items if isinstance(i, Match)
                                 and isinstance(i.left, Payload) and i.left.field == "daddr" and i.op == "!=")
                loop = any(x.startswith(("127.", "::1")) for x in excluded)
                return NodePortAddresses("all-local", (), excluded, False if loop else None,
                                         (rule.line or 0,)), ips
        return NodePortAddresses("none"), ips


def _triple(key: Any) -> tuple[str | None, str, int]:
    if isinstance(key, tuple) and len(key) == 3 and isinstance(key[0], str) and isinstance(key[2], int):
        return key[0], str(key[1]), key[2]
    return None, "", 0


def _known(known: Sequence[KnownServicePort], address: str | None, port: int, proto: str) -> str | None:
    for k in known:
        if k.protocol != proto:
            continue
        if address is None:
            if k.node_port == port:
                return k.name
        elif k.port == port and address in k.addresses:
            return k.name
    return None


class _Empty(Container[str]):
    def __contains__(self, item: object) -> bool:
        return False


def read_layout(ruleset: Ruleset, family: str, *, known: Sequence[KnownServicePort] = ()) -> Layout:
    """kube-proxy's layout of `family` in `ruleset`. Never raises for odd rules (they become warnings)."""
    proxy = proxy_mode(ruleset, family)
    table = kube_table(ruleset, family)
    if table is None:
        return Layout(proxy, family, NodePortAddresses("none"), (), (), (), _Empty(), None, False,
                      tuple(no_rules_warnings(proxy, family)))
    r = _Reader(ruleset, table, family, known)
    r.read_ways()
    alpha = r.alpha_firewall()
    node_ports, node_ips = r.node_port_addresses()
    groups = r.groups
    ports = r.ports
    pod_cidrs, pod_ifaces = ports.pod_detection()
    mark, random_fully = ports.masquerade()

    ways = {key: g.ways() for key, g in groups.items()}  # (the index's, and each port's when it is read)

    def build(key: str) -> ServicePortLayout:
        return ports.service_port(groups[key], ways[key], alpha)

    def chain_key(chain: str) -> str | None:
        split = split_chain(chain)
        if split is not None and split[1] in groups:
            return split[1]
        return None

    warnings = list(r.warnings)
    if proxy.other_mode:
        warnings.append(mode_split_warning(proxy, table.label))
    if proxy.name != "kube-proxy table without rules" and not groups:
        warnings.append(f"table {table.label} has no Service port in its dispatch maps (@{SERVICE_IPS}, "
                        f"@{SERVICE_NODEPORTS}, @{NO_ENDPOINT_SERVICES}): no Service, or none synced yet")
    index = LayoutIndex(
        ways=tuple((key, way) for key, of_port in ways.items() for way in of_port),
        keys=tuple(groups),
        build=build,
        endpoint_keys=lambda ip: tuple(k for k in ports.endpoint_keys(ip) if k in groups),
        chain_key=chain_key)
    return Layout(proxy, family, node_ports, pod_cidrs, pod_ifaces, node_ips, ports.endpoint_ips, mark,
                  random_fully, tuple(dict.fromkeys(warnings)), index, ports.orphans,
                  node_pod_cidrs=_node_pod_cidrs(ruleset, table, family, pod_cidrs))


def _node_pod_cidrs(ruleset: Ruleset, kube: Table, family: str, pod_cidrs: Sequence[str]) -> tuple[str, ...]:
    """This node's own pod subnet, when the CNI's rules (a table other than kube-proxy's: flannel's `ip
    flannel-ipv4`, iptables-nft's `ip nat`) test `ip saddr|daddr` against one."""
    if not pod_cidrs:
        return ()
    families = ("ip6", "inet") if family == "ipv6" else ("ip", "inet")
    return node_pod_subnet((f"{i.right.addr}/{i.right.length}" for t in ruleset.tables
                            if t is not kube and t.family in families for c in t.chains for r in c.rules
                            for i in r.items if isinstance(i, Match) and isinstance(i.left, Payload)
                            and i.left.field in ("saddr", "daddr") and isinstance(i.right, Prefix)), pod_cidrs)

