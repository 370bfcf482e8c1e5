"""Where a traced packet comes from: a source address for each kind of client (a pod, the node itself, a client
outside the cluster), chosen from what the layout reveals. Dataplane-free and pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Sequence
from typing import Literal

from iptrace.errors import InputError
from iptrace.layout import NODE_PORT, Layout

SourceKind = Literal["pod", "node", "external"]

# Documentation ranges (RFC 5737 / RFC 3849): never a real client, never probed.
EXTERNAL_V4 = ("203.0.113.1", "198.51.100.1", "192.0.2.1", "203.0.113.201")
EXTERNAL_V6 = ("2001:db8::1", "2001:db8:ffff::1", "2001:db8:ff00::1")
# Used only when the dump reveals no pod CIDR (flannel's and kubeadm's defaults).
_FALLBACK_POD_CIDR = {4: "10.244.0.0/16", 6: "fd00:10:244::/56"}


def _version(family: str) -> int:
    return 6 if family == "ipv6" else 4


def of_family(addresses: Sequence[str], family: str) -> list[str]:
    version = _version(family)
    return [a for a in addresses if ipaddress.ip_address(a.strip("[]")).version == version]


def reachable_first(addresses: Sequence[str], revealed: Sequence[str] = (), pod_cidrs: Sequence[str] = ()) -> list[str]:
    """A node's addresses, those another host reaches it at first, each kind in its given order: the ones the
    rules accept NodePorts on (`revealed`), then others outside the pod CIDRs (not a CNI bridge's), then the rest,
    loopback, link-local and unspecified ones last. `ip -o addr show` lists lo first (and /proc/net/fib_trie in
    numeric order), yet the node address NodePorts are traced to, the node's own client and the addresses advised
    must be one a client elsewhere can use."""
    nets = [ipaddress.ip_network(c, strict=False) for c in pod_cidrs]

    def rank(a: str) -> int:
        ip = ipaddress.ip_address(a.strip("[]"))
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            return 3
        if a in revealed:
            return 0
        return 2 if any(ip.version == n.version and ip in n for n in nets) else 1

    return sorted(addresses, key=rank)


def pod_interface(pod_interfaces: Sequence[str]) -> str | None:
    """The interface a pod's packets come in on, when kube-proxy detects pod traffic by interface (layout
    pod_interfaces; --detect-local-mode BridgeInterface: the bridge, `cni0`; InterfaceNamePrefix: a name with the
    prefix, `veth+`/`veth*` -> `veth0`). None when it detects pods by address: then no rule reads it."""
    if not pod_interfaces:
        return None
    name = pod_interfaces[0]
    return name[:-1] + "0" if name.endswith(("+", "*")) else name


def pod_interface_note(name: str) -> str:
    """The assumption a pod client's interface makes (a trace's, explain's)."""
    return f"a pod's packets come in on {name} (kube-proxy tells pods by that interface)"


def pick_source(kind: SourceKind | str, family: str, node_ips: Sequence[str] = (), pod_cidrs: Sequence[str] = (),
                endpoint_ips: Container[str] = (), node_pod_cidrs: Sequence[str] = (),
                claimed: Container[str] = ()) -> tuple[str, str]:
    """A source address of `kind`, and the assumption that choice makes (for the trace).

    pod: an address of a pod on this node — inside the node's own pod subnet when the rules name it, else
    inside the pod CIDR — that is no endpoint (so that no hairpin rule fires by accident); node: a node address
    (loopback when none is known); external: a documentation address outside both that is no endpoint and no
    Service's address (`claimed`, e.g. Claimed: a cluster may hand out a documentation range as LB IPs, and a
    client with a Service's own address is none from outside).
    """
    version = _version(family)
    nodes = of_family(node_ips, family)
    cidrs = [c for c in pod_cidrs if ipaddress.ip_network(c, strict=False).version == version]
    if kind == "pod":
        own = [c for c in node_pod_cidrs if ipaddress.ip_network(c, strict=False).version == version]
        if own:
            return _pod_in(ipaddress.ip_network(own[0], strict=False), nodes, endpoint_ips,
                           "a pod address inside this node's pod subnet {net} (not an endpoint)")
        if not cidrs:
            return _pod_in(ipaddress.ip_network(_FALLBACK_POD_CIDR[version]), nodes, endpoint_ips,
                           "a pod address; the dump reveals no pod CIDR, so {net} was assumed (pass --src IP)")
        return _pod_in(ipaddress.ip_network(cidrs[0], strict=False), nodes, endpoint_ips,
                       "a pod address inside the pod CIDR {net} (not an endpoint)")
    if kind == "node":
        if nodes:
            return nodes[0], f"source {nodes[0]}: the node's own address"
        loop = "::1" if version == 6 else "127.0.0.1"
        return loop, f"source {loop}: the node itself (its addresses are unknown; pass --node-ip)"
    if kind == "external":
        found = outside(family, _Among((nodes, endpoint_ips, claimed)), cidrs)
        if found is None:
            raise InputError("no documentation address is outside the node and pod addresses; pass --src IP")
        return found, f"source {found}: an external client (a documentation address)"
    raise InputError(f"unknown source kind {kind!r}; expected pod, node, external or an IP address")


def destination_note(layout: Layout, node_ips: Sequence[str], host: str, port: int, proto: str) -> str | None:
    """The assumption a trace to host:port makes of `host` when the node's addresses are unknown (none given,
    none in the rules) and `port` is a nodePort of `proto`: an address no Service claims is not taken for the
    node's own (the tracer counts loopback and a placeholder address as the node's), and --node-ip says
    otherwise. None when nothing was assumed of it."""
    if of_family(node_ips, layout.family) or of_family(layout.node_ips, layout.family):
        return None
    if ipaddress.ip_address(host.strip("[]")).is_loopback or layout.ways_at(host):
        return None
    owners = [layout.port_values(key).name for key, way in layout.ways_at(None)
              if way.kind == NODE_PORT and way.port == port and way.protocol == proto]
    if not owners:
        return None
    named = sorted({name for name in owners if name})
    which = f"the nodePort of {named[0]}" if len(named) == 1 else "a nodePort"
    return (f"destination {host}: taken as not the node's own address (its addresses are unknown), though "
            f"{port}/{proto} is {which}: if it is the node's, pass --node-ip {host.strip('[]')}")


def _pod_in(net: ipaddress.IPv4Network | ipaddress.IPv6Network, nodes: Sequence[str], endpoint_ips: Container[str],
            why: str) -> tuple[str, str]:
    """The first address of `net` from its third on that is no node and no endpoint, and its assumption."""
    for offset in range(2, min(net.num_addresses, 4096)):
        candidate = str(net.network_address + offset)
        if candidate not in nodes and candidate not in endpoint_ips:
            break
    else:
        candidate = str(net.network_address)
    return candidate, f"source {candidate}: " + why.format(net=net)


class Claimed:
    """The addresses a way in of the layout's Service ports has (Layout.ways_at): ClusterIPs, external and LB IPs."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, str) and bool(self._layout.ways_at(ip))


class _Among:
    """In any of these."""

    def __init__(self, containers: Sequence[Container[str]]) -> None:
        self._containers = containers

    def __contains__(self, ip: object) -> bool:
        return any(ip in c for c in self._containers)


def outside(family: str, taken: Container[str], ranges: Sequence[str]) -> str | None:
    """A documentation address that is none of `taken` and in none of `ranges` (CIDRs)."""
    nets = [ipaddress.ip_network(c, strict=False) for c in ranges]
    for candidate in (EXTERNAL_V6 if _version(family) == 6 else EXTERNAL_V4):
        addr = ipaddress.ip_address(candidate)
        if candidate not in taken and not any(addr.version == n.version and addr in n for n in nets):
            return candidate
    return None


def inside(cidr: str, taken: Container[str]) -> str | None:
    """An address inside `cidr` (a loadBalancerSourceRange) that is none of `taken`."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    if net.num_addresses == 1:
        return str(net.network_address)
    for offset in range(1, min(net.num_addresses - 1, 256) + 1):
        candidate = str(net.network_address + offset)
        if candidate not in taken:
            return candidate
    return None
