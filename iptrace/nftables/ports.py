"""What one Service port's own chains say (read when the port is asked for), and the node-wide facts read from a
few rules: the local-traffic detector's pod CIDR or interface, the masquerade mark, the endpoints' addresses.
Helpers of layout.py; pure."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Container, Iterable, Iterator
from dataclasses import is_dataclass
from itertools import chain as chain_together
from sys import intern
from typing import Any

from iptrace.layout import CLUSTER_IP, EXTERNAL_IP, LOAD_BALANCER, NODE_PORT, ServicePortLayout, WayIn
from iptrace.nftables.lines import ElementLines
from iptrace.nftables.model import (
    AnonSet,
    Binop,
    Chain,
    Element,
    Mangle,
    MapLookup,
    Match,
    Meta,
    Nat,
    Payload,
    Prefix,
    Range,
    Rule,
    Ruleset,
    Set,
    Table,
)
from iptrace.nftables.names import (
    HAIRPIN_CONNECTIONS,
    MARK_FOR_MASQUERADE,
    MASQUERADING,
    SERVICES_CHAIN,
    chain_parts,
    split_chain,
)
from iptrace.nftables.portrules import calls_only, chain_reads
from iptrace.nftables.shapes import Slot, fast_constructor
from iptrace.text import counted

# ServicePortLayout by position, without the frozen dataclass __init__ (one per Service port).
_new_layout = fast_constructor(ServicePortLayout)
_OUTER_KINDS = frozenset({NODE_PORT, EXTERNAL_IP, LOAD_BALANCER})  # ways in that make externalTrafficPolicy apply
_DETECTOR_SCAN = 200  # service chains read for the local-traffic detector (it is the same in all of them)


def value_text(v: Any) -> str:
    """A value as kube-proxy wrote it: `10.0.0.0/8`, `1.2.3.4`, `1000-2000`."""
    if isinstance(v, Prefix):
        return f"{v.addr}/{v.length}"
    if isinstance(v, Range):
        return f"{v.low}-{v.high}"
    return str(v)


def _dnat_targets(rule: Rule) -> Iterator[tuple[str, int | None]]:
    """The (address, port) a DNAT in the rule may send to (1.37: `dnat ip to numgen … map { … }`)."""
    for item in rule.items:
        if not isinstance(item, Nat) or item.kind != "dnat":
            continue
        addr = item.addr
        if isinstance(addr, MapLookup) and isinstance(addr.map, AnonSet):
            for e in addr.map.elements:
                if isinstance(e.data, tuple) and len(e.data) == 2:
                    yield str(e.data[0]), int(e.data[1])
                elif isinstance(e.data, str):
                    yield e.data, item.port if isinstance(item.port, int) else None
        elif isinstance(addr, str):
            yield addr, item.port if isinstance(item.port, int) else None


_ENDPOINT_NAME = re.compile(r"endpoint-[A-Z2-7]{8}-(.+)")  # (names.chain_parts' pattern, of its endpoint word)
# kube-proxy's own names of IPv4 endpoints (namespace, name and port name hold no `_` or `/`): the address group is
# what endpoint_name_address reads of such a name (the only `__` the address follows, the last `/` ends it).
_IPV4_ENDPOINT_NAME = re.compile(r"endpoint-[A-Z2-7]{8}-[^/_\n]+/[^/_\n]+/[^/_\n]+/[^/_\n]*__([0-9.]+)/[0-9]+")


def endpoint_name_address(name: str, v6: bool) -> str | bool | None:
    """An endpoint chain's name (`endpoint-HASH-ns/svc/tcp/p80__10.180.0.1/80`) → False when it names no Service
    port (names.chain_parts reads none in it), else its endpoint IP, or None for a name kube-proxy cut short
    (`…...`: the chain's DNAT says) or one without an endpoint part. One reading of the name
    (_endpoint_sources reads 50,000 at 5,000 Services); tests/test_nft_endpoint_set.py holds it to chain_parts."""
    if not v6:
        m = _IPV4_ENDPOINT_NAME.fullmatch(name)
        if m is not None:
            return m.group(1)
    m = _ENDPOINT_NAME.fullmatch(name)
    if m is None:
        return False
    rest = m.group(1)
    port_part, cut, _ = rest.partition("__")
    parts = port_part.split("/")
    if len(parts) != 4 or not parts[0] or not parts[1] or not parts[2]:
        return False
    if not cut or name.endswith("..."):
        return None
    host, _, port = rest.rpartition("__")[2].rpartition("/")  # (after the last `__`: `___` ends one later)
    if not port.isdigit():
        return None
    return host.replace(".", ":") if v6 else host


def _build_may_dnat(build: Any) -> bool:
    """Whether rules a shape's builder makes may hold a DNAT: a template without a Nat or a function of a value
    (which could make one) makes none (kept on the builder)."""
    try:
        return build.may_dnat  # type: ignore[no-any-return]
    except AttributeError:
        template = getattr(build, "template", None)
        may = build.may_dnat = template is None or not calls_only(template[0], None) or any(
            type(item) in (Nat, Slot) or not is_dataclass(item) for item in template[0])
        return may  # type: ignore[no-any-return]


def _may_dnat(rule: Rule) -> bool:
    """Whether a rule may hold a DNAT (_endpoint_sources reads the DNATs of a service chain that has one): its text
    says `dnat`; a rule a builder that makes none made (_build_may_dnat) holds none, and its text is not read (a
    listing's 10,000 service chain rules at 5,000 Services, each read back from the listing)."""
    lazy = rule._lazy
    if lazy is not None and not _build_may_dnat(lazy[0]):
        return False
    return "dnat" in rule.text


def _chain_may_dnat(chain: Chain) -> bool:
    """`any(_may_dnat(r) for r in chain.rules)`; for a chain read by a template (model.Chain._lazy) whose rules'
    builders make no DNAT, False without making its rules (each rule's builder is its maker's in that order)."""
    record = chain._lazy
    if record is not None:
        maker = record[0]
        try:
            may = maker.may_dnat
        except AttributeError:  # (kept on the maker: ~5,000 service chains of a few templates at 5,000 Services)
            may = maker.may_dnat = any(_build_may_dnat(build) for build, _, _ in maker.builds)
        if not may:
            return False
    return any(_may_dnat(r) for r in chain.rules)


def _endpoint_sources(table: Table, v6: bool, chains: Iterable[Chain] | None = None
                      ) -> Iterator[tuple[str, str | None]]:
    """(endpoint IP, the chain whose name gives the Service port's name base; None for no port) for every endpoint:
    the endpoint chains' names (a cut name: its DNAT), the service chains' own DNATs (1.37) and
    @hairpin-connections. The one walk both PortReader.endpoint_ips and endpoint_index read, so they agree.
    `chains`: those of the table's chains to read (default: all of them, in order)."""
    direct = False
    for chain in table.chains if chains is None else chains:
        name = chain.name
        if name.startswith("endpoint-"):
            ip = endpoint_name_address(name, v6)
            if ip is False:
                continue
            if ip is not None:
                yield ip, name
            else:
                for rule in chain.rules:
                    for ip, _ in _dnat_targets(rule):
                        yield ip, name
        elif name.startswith(("service-", "local-", "svc-")) and chain.rule_count and (
                direct or _chain_may_dnat(chain)):
            direct = True
            if chain_parts(name) is not None:
                for rule in chain.rules:
                    for ip, _ in _dnat_targets(rule):
                        yield ip, name
    hairpin = table.set(HAIRPIN_CONNECTIONS)
    for e in (hairpin.elements if hairpin is not None else ()):
        if isinstance(e.key, tuple) and e.key:
            yield str(e.key[0]), None


def _endpoint_ip_set(table: Table, v6: bool) -> frozenset[str]:
    """The IPs of `_endpoint_sources(table, v6)`. In an IPv4 table, a chain that _IPV4_ENDPOINT_NAME matches (most
    of 50,000 endpoint chains at 5,000 Services) gives its address group, as endpoint_name_address reads it first,
    in one match a chain instead of a walk of the generator; every other chain is read by _endpoint_sources."""
    if v6:
        return frozenset([ip for ip, _ in _endpoint_sources(table, v6)])
    fast = _IPV4_ENDPOINT_NAME.fullmatch
    found: set[str] = set()
    rest: list[Chain] = []
    for chain in table.chains:
        m = fast(chain.name)
        if m is None:
            rest.append(chain)
        else:
            found.add(m.group(1))
    found.update([ip for ip, _ in _endpoint_sources(table, v6, rest)])
    return frozenset(found)


def _add_base(index: dict[str, str | set[str] | tuple[()]], ip: str, base: str) -> None:
    """Adds a name base to an endpoint IP's (PortReader.endpoint_index: one kept as itself, more as a set)."""
    found = index.get(ip)
    if found is None or found == ():
        index[intern(ip)] = intern(base)  # the rules' own strings (the loader interns them)
    elif type(found) is str:
        if found != base:
            index[ip] = {found, base}
    else:
        found.add(base)  # type: ignore[union-attr]


class _LazyIps(Container[str]):
    def __init__(self, reader: PortReader) -> None:
        self._reader = reader

    def __contains__(self, ip: object) -> bool:
        return ip in self._reader.endpoint_set()


class PortReader:
    def __init__(self, ruleset: Ruleset, table: Table) -> None:
        self.ruleset = ruleset
        self.table = table
        self.v6 = table.family == "ip6"
        self.lines = ElementLines(ruleset)
        self._endpoints: dict[str, str | set[str] | tuple[()]] | None = None
        self._endpoint_set: frozenset[str] | None = None

    @property
    def endpoint_ips(self) -> Container[str]:
        """The endpoints' addresses, read when first asked (not kept here: a reader holding it would be in a
        reference cycle, and an audit's node would wait for the cyclic collector to be freed)."""
        return _LazyIps(self)

    def element_line(self, s: Set, e: Element) -> int:
        return self.lines.line(self.table.family, self.table.name, s, e)

    # -- node-wide

    def pod_detection(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The pod CIDRs and interfaces of kube-proxy's local-traffic detector: `ip saddr != <podCIDR>` before the
        mark for masquerading (service chains; 1.36+: the services chain), `ip saddr <podCIDR> goto service-…`
        (eTP=Local short-circuit), or `iifname` tests in their place."""
        cidrs: list[str] = []
        ifaces: list[str] = []
        services = self.table.chain(SERVICES_CHAIN)
        # (found as read: the loop stops a few chains after the detector's, of ~55,000 at 5,000 Services)
        candidates: Iterator[Chain] = chain_together([services] if services is not None else [], (
            chain for chain in self.table.chains
            if chain.name.startswith(("service-", "local-", "external-", "svc-")) and chain.rule_count))
        read = 0
        for chain in candidates:
            if chain.name != SERVICES_CHAIN:
                read += 1
                if read > _DETECTOR_SCAN or ((cidrs or ifaces) and read > 4):
                    break
            for rule in chain.rules:
                text = rule.text
                if "saddr" not in text and "iifname" not in text:
                    continue
                masq = MARK_FOR_MASQUERADE in text or "mark set" in text
                short_circuit = "goto service-" in text or "goto svc-" in text
                if not (masq or short_circuit):
                    continue
                for item in rule.items:
                    if not isinstance(item, Match):
                        continue
                    left = item.left
                    if isinstance(left, Payload) and left.field == "saddr" and isinstance(item.right, Prefix) \
                            and ((masq and item.op == "!=") or (short_circuit and item.op == "==")):
                        text_ = value_text(item.right)
                        if text_ not in cidrs:
                            cidrs.append(text_)
                    elif isinstance(left, Meta) and left.key == "iifname" and isinstance(item.right, str) \
                            and ((masq and item.op == "!=") or (short_circuit and item.op == "==")):
                        if item.right not in ifaces:
                            ifaces.append(item.right)
        return tuple(cidrs), tuple(ifaces)

    def masquerade(self) -> tuple[str | None, bool]:
        mark: int | None = None
        for name in (MARK_FOR_MASQUERADE, MASQUERADING, SERVICES_CHAIN):
            chain = self.table.chain(name)
            for rule in (chain.rules if chain is not None and mark is None else ()):
                for item in rule.items:
                    binop = item.value if isinstance(item, Mangle) else item.left if isinstance(item, Match) else None
                    if isinstance(binop, Binop) and isinstance(binop.left, Meta) and binop.left.key == "mark" \
                            and isinstance(binop.right, int) and binop.op in ("|", "&"):
                        mark = binop.right
                        break
                if mark is not None:
                    break
        chain = self.table.chain(MASQUERADING)
        random_fully = chain is not None and any(
            isinstance(i, Nat) and i.kind == "masquerade" and "fully-random" in i.flags
            for r in chain.rules for i in r.items)
        return (f"{mark:#x}" if mark is not None else None), random_fully

    def endpoint_set(self) -> frozenset[str]:
        """The endpoints' addresses without their Service ports' name bases (membership, as `services` asks, costs
        no hashing: endpoint_index's keys, taken from it when it was built first)."""
        if self._endpoint_set is None:
            self._endpoint_set = (frozenset(self._endpoints) if self._endpoints is not None else
                                  _endpoint_ip_set(self.table, self.v6))
        return self._endpoint_set

    def endpoint_index(self) -> dict[str, str | set[str] | tuple[()]]:
        """endpoint IP → the name bases of the Service ports with an endpoint there (_endpoint_sources). One base
        is kept as itself, more as a set, none as (): most endpoints serve one Service port, and a set each would
        be ~8 MB at 5,000 Services (endpoint_keys reads them)."""
        if self._endpoints is None:
            index: dict[str, str | set[str] | tuple[()]] = {}
            for ip, name in _endpoint_sources(self.table, self.v6):
                if name is None:
                    index.setdefault(ip, ())
                else:
                    _add_base(index, ip, split_chain(name)[1])  # type: ignore[index]  # (chain_parts read it)
            self._endpoints = index
        return self._endpoints

    def endpoint_keys(self, ip: str) -> tuple[str, ...]:
        found = self.endpoint_index().get(ip, ())
        return (found,) if type(found) is str else tuple(sorted(found))

    def orphans(self, ports: tuple[ServicePortLayout, ...]) -> tuple[str, ...]:
        """Endpoint chains with rules that no Service port's chain sends to (empty ones are kube-proxy's stale
        chains, deleted a moment later)."""
        used = {c for p in ports for c in p.chains}
        left = sorted(c.name for c in self.table.chains
                      if c.name not in used and c.name.startswith("endpoint-") and c.rule_count)
        if not left:
            return ()
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        return (f"{counted(len(left), 'endpoint chain')} with rules that no service chain sends to: {shown}",)

    # -- one Service port

    def service_port(self, g: Any, ways: tuple[WayIn, ...], alpha: dict[tuple[str, str, int], list[str]]
                     ) -> ServicePortLayout:
        table = self.table
        key = g.key
        service, svc, local, external, fw = table.chains_named(
            (f"service-{key}", f"svc-{key}", f"local-{key}", f"external-{key}", f"firewall-{key}"))
        cluster = service or svc
        targeted: dict[str, None] = {}  # (the endpoint chains in order of first mention, as a dict: ~10 a port)
        affinity: int | None = None
        for chain in (cluster, local):
            for targets, names, _fib in (chain_reads(chain) if chain is not None else ()):
                for target in targets:
                    if target.startswith("endpoint-"):
                        targeted[target] = None
                for name in names:
                    if affinity is None and name.startswith("affinity-"):
                        s = table.set(name)
                        if s is not None and s.timeout_ms is not None:
                            affinity = s.timeout_ms // 1000
        endpoint_chains = list(targeted)
        own_chains = [c for c in (service, svc, local, external, fw) if c is not None]
        chains = [c.name for c in own_chains]
        lines: set[int] = set(g.lines)
        lb_ips: set[str | None] = set()
        outer = False  # (a NodePort, externalIP or LB IP way in)
        cluster_way: WayIn | None = None  # (the first ClusterIP way in)
        for w in ways:  # (one pass over the ways in for all that is read of them below)
            lines.update(w.lines)
            kind = w.kind
            if kind == CLUSTER_IP:
                if cluster_way is None:
                    cluster_way = w
            elif kind in _OUTER_KINDS:
                outer = True
                if kind == LOAD_BALANCER:
                    lb_ips.add(w.address)
        for chain in (*own_chains, *table.chains_named(endpoint_chains)):
            if chain is None:
                continue
            record = chain._lazy
            if record is not None:  # (a chain read by a template: its rules' lines from its record)
                lines.update(range(record[2] + 1, record[2] + 1 + record[0].count))
                continue
            for rule in chain.rules:
                if rule.line:
                    lines.add(rule.line)
        lines.discard(0)
        handles: list[int] = []
        dnat: list[tuple[str, int]] = []
        if self.ruleset.format == "nft-json":  # (no lines: the rules' kernel handles say which they are)
            for chain in own_chains + [c for c in table.chains_named(endpoint_chains) if c is not None]:
                for rule in chain.rules:
                    if rule.handle is not None:
                        handles.append(rule.handle)
                        if any(isinstance(item, Nat) and item.kind == "dnat" for item in rule.items):
                            dnat.append((chain.name, rule.handle))
        ranges: list[str] = []
        for rule in (fw.rules if fw is not None else ()):
            for item in rule.items:
                if isinstance(item, Match) and isinstance(item.left, Payload) and item.left.field == "saddr" \
                        and item.op == "!=":
                    values = [e.key for e in item.right.elements] if isinstance(item.right, AnonSet) \
                        else [item.right]
                    for v in values:
                        text = value_text(v)
                        if text not in ranges and not (text in lb_ips and "/" not in text):
                            ranges.append(text)  # (an LB IP itself: kube-proxy's "allow the node" element)
        for w in ways:
            if w.kind == LOAD_BALANCER and w.address is not None:
                for text in alpha.get((w.address, w.protocol, w.port), []):
                    if text not in ranges:
                        ranges.append(text)
        etp: str | None = None
        if outer:
            if external is not None:
                reads = chain_reads(external)
                local_ext = any(fib for _, _, fib in reads) or any(t.startswith("local-") for targets, _, _ in reads
                                                                   for t in targets)
                etp = "Local" if local_ext or g.etp_local_drop else "Cluster"
            elif g.etp_local_drop:
                etp = "Local"
            elif not g.no_endpoints:
                etp = "Cluster"
        itp: str | None = None
        if cluster_way is not None:
            if cluster_way.chain.startswith("local-") or g.itp_local_drop:
                itp = "Local"
            elif cluster_way.chain:
                itp = "Cluster"
        return _new_layout(  # (ServicePortLayout's fields in order)
            g.key, g.name, g.identity, g.protocol, ways, cluster.name if cluster is not None else None,
            local.name if local is not None else None, (*sorted(chains), *endpoint_chains), tuple(sorted(lines)),
            etp, itp, affinity, tuple(sorted(ranges, key=_range_order)), None, g.no_endpoints, g.no_local_endpoints,
            () if g.name else ("no chain name or element comment names this Service port; pass cluster data to name "
                               "it by its address",), tuple(handles), tuple(dnat))


def _range_order(text: str) -> tuple[int, int, int, str]:
    """loadBalancerSourceRanges as the kernel lists them (an nft set has no order of its own: the transaction's
    and the listing's orders differ), so both forms of one ruleset read alike."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return (9, 0, 0, text)
    return (net.version, int(net.network_address), net.prefixlen, text)
