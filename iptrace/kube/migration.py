"""What one proxy mode cannot show, when a diff compares an iptables dump with an nftables ruleset of the same
cluster (the migration check): which Service-port facts are compared differently, and the notes that say so.

No note here is a difference in how a Service port forwards: nftables mode writes no rule for a health check
nodePort, writes a LoadBalancer IP without source ranges like an externalIP, splits endpoints exactly 1/N where
iptables writes 10-decimal probabilities, and answers packets that no Service claims (a ClusterIP's unserved
port, an unallocated address) where iptables lets them go unanswered. The last is read off traces of the two
rulesets, never assumed. The node addresses only one mode accepts nodePorts on are found here too, and traced
by iptrace.kube.diff as differences. Dataplane-free and pure: both sides are iptrace.kube.analysis.Analysis
objects.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from iptrace.dataplane import Packet, Trace, join_host_port
from iptrace.kube.compare import listing, view_service_label
from iptrace.kube.view import ServicePortView
from iptrace.layout import HEALTH_CHECK
from iptrace.text import counted

# Endpoint shares are compared within this: iptables' statistic match draws against 2^31 steps and kube-proxy
# writes 10 decimals, so over a chain of n rules a share is off by at most ~n × 5e-10 (1e-6: n up to 2,000).
SHARE_TOLERANCE = 1e-6


def modes(a: Any, b: Any) -> tuple[str, str]:
    """The proxy mode each side's rules were written in (iptables, nftables, …)."""
    return a.view.proxy.mode, b.view.proxy.mode


def cross_mode(a: Any, b: Any) -> bool:
    """The two sides were written by kube-proxy in different proxy modes (or read by different dataplanes)."""
    return a.dataplane.name != b.dataplane.name or modes(a, b)[0] != modes(a, b)[1]


def way_key(kind: str, address: str | None, port: int, protocol: str, blind: bool) -> tuple[object, ...]:
    """How ways in are matched between the sides: across modes an LB IP may be read as an externalIP."""
    return (address, port, protocol) if blind else (kind, address, port, protocol)


def ips(sp: ServicePortView) -> tuple[str, ...]:
    return tuple(sorted({*sp.external_ips, *sp.lb_ips}))


class Notes:
    """The notes of one cross-mode diff, collected while the Service ports are compared."""

    def __init__(self, a: Any, b: Any) -> None:
        self.mode_a, self.mode_b = modes(a, b)
        self.health_checks: list[str] = []
        self.lb_as_external: list[str] = []
        self.largest_share_gap = 0.0
        self.shares_compared = False
        self.unanswered_ways: list[str] = []
        self.refused_or_dropped_ways: list[str] = []
        self.unseen_ranges: list[str] = []

    def health_check(self, sp: ServicePortView, port: int) -> None:
        self.health_checks.append(f"{view_service_label(sp)} ({port})")

    def lb_ips(self, a: ServicePortView, b: ServicePortView) -> None:
        moved = sorted(set(a.lb_ips) ^ set(b.lb_ips))
        if moved:
            self.lb_as_external.append(f"{view_service_label(a)} ({', '.join(moved)})")

    def _way(self, service: str, way: str, client: str, before: str, after: str) -> str:
        """A way in and kind of client, with what each mode does with it."""
        return f"{service} {way} from {_CLIENTS.get(client, client)}: {self.mode_a} {before}, {self.mode_b} {after}"

    def unanswered(self, service: str, way: str, client: str, before: str, after: str) -> None:
        self.unanswered_ways.append(self._way(service, way, client, before, after))

    def refused_or_dropped(self, service: str, way: str, client: str, before: str, after: str) -> None:
        """A Service port without endpoints on both sides: one mode refuses a client the other drops."""
        self.refused_or_dropped_ways.append(self._way(service, way, client, before, after))

    def ranges_unseen(self, sp: ServicePortView, ranges: Sequence[str]) -> None:
        """A Service port without endpoints whose loadBalancerSourceRanges only one side's rules show."""
        self.unseen_ranges.append(f"{view_service_label(sp)} ({', '.join(ranges)})")

    def shares(self, gaps: Iterable[float]) -> None:
        for gap in gaps:
            self.shares_compared = True
            self.largest_share_gap = max(self.largest_share_gap, gap)

    def texts(self, a: Any, b: Any) -> tuple[str, ...]:
        nft = "b" if self.mode_b == "nftables" else "a"
        out = []
        if self.health_checks:
            out.append(f"healthCheckNodePort not compared: nftables mode ({nft}) writes no rule for it (kube-proxy's "
                       f"health check server answers on it in both modes): {listing(self.health_checks, 8)}")
        if self.lb_as_external:
            out.append(f"LoadBalancer IPs compared together with externalIPs: nftables mode ({nft}) writes an LB IP "
                       "without loadBalancerSourceRanges exactly like an externalIP, so its rules cannot tell "
                       f"them apart: {listing(self.lb_as_external, 8)}")
        if self.shares_compared:
            gap = self.largest_share_gap
            out.append(f"endpoint shares compared within {SHARE_TOLERANCE:g}: iptables writes each split as a "
                       "10-decimal probability, nftables' numgen splits exactly 1/N ("
                       + (f"largest gap seen: {gap:.2g})" if gap else "here every split came out the same)"))
        if self.unanswered_ways:
            out.append("reaching no endpoint in either mode, refused or dropped in one and left to no rule in the "
                       "other (iptables mode hooks its \"has no endpoints\" rules for externalIPs and nodePorts "
                       f"into INPUT and FORWARD only): {listing(self.unanswered_ways, 8)}")
        if self.unseen_ranges:
            out.append("loadBalancerSourceRanges not compared for Service ports without endpoints: iptables mode "
                       "writes no firewall for them (every client is refused), nftables mode still checks the ranges "
                       f"first: {listing(self.unseen_ranges, 8)}")
        if self.refused_or_dropped_ways:
            ways = listing(self.refused_or_dropped_ways, 8)
            out.append("reaching no endpoint in either mode, refused by one and dropped by the other (a Service "
                       "without endpoints: nftables mode drops clients outside its loadBalancerSourceRanges before "
                       f"it rejects the rest, iptables mode rejects them all): {ways}")
        out.extend(localhost_notes(a, b))
        out.extend(unclaimed_notes(a, b))
        return tuple(out)


def localhost_notes(a: Any, b: Any) -> list[str]:
    """A nodePort on 127.0.0.1 (::1) from the node itself, when one side's rules accept it and the other's do not
    (iptables mode does in IPv4 unless --nodeport-addresses says otherwise; nftables mode never does)."""
    sides = [(side, mode, x.view.node_port_addresses.localhost)
             for side, mode, x in zip("ab", modes(a, b), (a, b), strict=True)]
    if None in (sides[0][2], sides[1][2]) or sides[0][2] == sides[1][2]:
        return []
    ports = [sp for sp in (a if sides[0][2] else b).view.services if sp.node_port]
    if not ports:
        return []
    (yes_side, yes_mode, _), (no_side, no_mode, _) = sorted(sides, key=lambda s: not s[2])
    loop = "::1" if a.family == "ipv6" else "127.0.0.1"
    example = join_host_port(loop, min(sp.node_port for sp in ports))
    which = "the only nodePort" if len(ports) == 1 else f"one of {counted(len(ports), 'nodePort')}"
    return [f"localhost NodePorts: {yes_mode} ({yes_side}) accepts a nodePort on {loop} from the node itself, "
            f"{no_mode} ({no_side}) does not: a process on the node that connects to localhost:NODEPORT (e.g. "
            f"{example}, {which}) reaches the Service in {yes_mode} mode only; the node's own address works in both"]


def nodeport_addresses_apart(a: Any, b: Any) -> list[str]:
    """The node addresses (of the ones given or collected, other than loopback and link-local) one side accepts
    nodePorts on and the other does not: iptables mode accepts them on every local address by default, nftables
    mode on the node's primary addresses (--nodeport-addresses). The Service ports' `<node>` ways are traced to
    one address, which both accept; a client of another address may reach a Service through one mode only, which
    iptrace.kube.diff traces on both sides as a way in of its own: a difference, not a note (that client breaks
    after the migration)."""
    if not any(sp.node_port for sp in a.view.services) or not any(sp.node_port for sp in b.view.services):
        return []
    return [address for address in node_addresses(a, b)
            if a.view.node_port_addresses.accepts(address) != b.view.node_port_addresses.accepts(address)]


def node_addresses(a: Any, b: Any) -> list[str]:
    """The node addresses given or collected for either side, of their family, other than loopback and
    link-local (no client elsewhere reaches those)."""
    version = 6 if a.family == "ipv6" else 4
    out = []
    for address in dict.fromkeys((*a.node_ips, *b.node_ips)):
        ip = ipaddress.ip_address(address)
        if ip.version == version and not ip.is_loopback and not ip.is_link_local:
            out.append(address)
    return out


# ------------------------------------------------------------------------------------------------ unclaimed traffic


def _verdict_words(trace: Trace) -> str:
    verdicts = {o.verdict for o in trace.outcomes}
    if verdicts == {"REJECT"}:
        return "REJECTs it (connection refused)"
    if verdicts == {"DROP"}:
        return "DROPs it (the client times out)"
    if "DNAT" in verdicts:
        return "DNATs it"
    return "leaves it unanswered (no rule decides; the client times out)"


def _decided_by(trace: Trace) -> str:
    for o in trace.outcomes:
        if o.decided_by is not None and o.decided_by.policy is None and o.path:
            return f" by `{o.path[-1].rule}`"
    return ""


def _unserved_port(view: Any) -> tuple[str, int, str] | None:
    """A ClusterIP and a port (same protocol) none of its Service ports serves."""
    served: dict[str, set[tuple[int, str]]] = {}
    for sp in view.services:
        if sp.cluster_ip:
            served.setdefault(sp.cluster_ip, set()).add((sp.port or 0, sp.protocol))
    for ip, ports in served.items():
        port, protocol = min(ports)
        for candidate in range(port + 1, port + 100):
            if (candidate, protocol) not in ports and 0 < candidate < 65536:
                return ip, candidate, protocol
    return None


def _unallocated(view_a: Any, view_b: Any) -> tuple[str, int, str] | None:
    """An address next to a ClusterIP that no Service of either side has (likely inside the service CIDR)."""
    used: set[str] = set()
    for view in (view_a, view_b):
        for sp in view.services:
            used.update(e.address for e in sp.entries if e.address)
            used.update(ep.ip for ep in sp.endpoints)
    for sp in view_a.services:
        if not sp.cluster_ip:
            continue
        base = ipaddress.ip_address(sp.cluster_ip)
        for step in range(1, 64):
            for candidate in (base + step, base - step):
                text = str(candidate)
                if text not in used and candidate.version == base.version:
                    return text, sp.port or 80, sp.protocol
    return None


def unclaimed_notes(a: Any, b: Any) -> list[str]:
    """How each side answers packets no Service claims, when the two traces differ (from an outside client)."""
    out = []
    view_a, view_b = a.view, b.view
    for what, probe in (("a ClusterIP's unserved port", _unserved_port(view_a)),
                        ("an address no Service has", _unallocated(view_a, view_b))):
        if probe is None:
            continue
        ip, port, protocol = probe
        traces = [trace_from_outside(x, ip, port, protocol) for x in (a, b)]
        if any(t is None for t in traces) or _verdict_words(traces[0]) == _verdict_words(traces[1]):
            continue
        where = f"{join_host_port(ip, port)}/{protocol}"
        sides = [f"{mode} ({side}) {_verdict_words(t)}{_decided_by(t)}"
                 for side, mode, t in zip("ab", modes(a, b), traces, strict=True) if t is not None]
        out.append(f"{what} (e.g. {where}): {sides[0]}; {sides[1]}")
    return out


def trace_from_outside(analysis: Any, ip: str, port: int, protocol: str) -> Trace | None:
    """A new connection of an outside client (the view's) to ip:port, traced; None when the client's IP family
    is not `ip`'s."""
    clients = analysis.view.clients
    if clients is None or (":" in ip) != (":" in clients.external):
        return None
    return analysis.tracer.trace(Packet(clients.external, ip, port, protocol))


_UNDECIDED = ("ACCEPT", "CONTINUE (no rule decides)")
_CLIENTS = {"external": "outside", "outside-source-ranges": "outside the source ranges", "pod": "a pod",
            "node": "the node"}


def undecided_versus_refused(before: str, after: str) -> bool:
    """One side leaves the connection to no rule, the other REJECTs or DROPs it (neither reaches an endpoint)."""
    pair = {before, after}
    return len(pair & set(_UNDECIDED)) == 1 and len(pair & {"REJECT", "DROP"}) == 1


def comparable_entries(entries: Sequence[Any]) -> list[Any]:
    return [e for e in entries if e.kind != HEALTH_CHECK]
