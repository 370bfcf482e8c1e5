"""A Service named instead of an address: `explain`/`trace --dst kube-dns.kube-system:53` (or
`kube-dns.kube-system.svc.cluster.local:dns`, `kube-system/kube-dns:53`) asks about the Service's ClusterIP as
this node's rules write it. People think in Service names; the rules name them in their comments (iptables) or
chain names (nftables). A port is a number (the Service's port) or a port name. Pure: reads a Layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from iptrace.errors import InputError

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_SLASHED = re.compile(rf"{_LABEL}/{_LABEL}")


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A Service as a --dst names it: its namespace (None: any), its name, and the port as written."""

    namespace: str | None
    name: str
    port: str  # a number, or a port name

    @property
    def text(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def service_ref(host: str, port: str) -> ServiceRef | None:
    """`name`, `name.namespace`, `name.namespace.svc[.cluster domain]` or `namespace/name` as a ServiceRef;
    None when `host` is none of these (an address, or not a name at all)."""
    if not port or not (port.isdigit() or _DNS.fullmatch(port)):
        return None
    if _SLASHED.fullmatch(host):
        namespace, name = host.split("/")
        return ServiceRef(namespace, name, port)
    if not _DNS.fullmatch(host) or host.replace(".", "").isdigit():
        return None
    labels = host.split(".")
    if len(labels) > 2 and labels[2] != "svc":
        return None  # (a name of another kind: a Service's DNS name is NAME.NAMESPACE.svc.DOMAIN)
    return ServiceRef(labels[1] if len(labels) > 1 else None, labels[0], port)


def resolve(layout: Any, ref: ServiceRef, proto: str, source: str, *, proto_given: bool = False,
            ) -> tuple[str, int, str, str]:
    """(ClusterIP, port, protocol, the Service port's name) that `ref` names in these rules: its port by number
    or name (a number no port of the Service has is kept, so that explain can say what it is); the port's own
    protocol unless one was given (`proto_given`: e.g. /udp), `proto` when it serves that one too. Raises
    InputError naming the closest Services, or the Service's ports, when the rules have none such."""
    from iptrace.kube.select import offer
    from iptrace.kube.view import port_layout

    ports = [p for p in (port_layout(sp) for sp in layout.service_ports) if p.namespace and p.cluster_ip]
    named = [p for p in ports if p.name == ref.name and (ref.namespace is None or p.namespace == ref.namespace)]
    if not named:
        known = sorted({f"{p.namespace}/{p.name}" for p in ports})
        if not known:
            raise InputError(f"{ref.text}: {source} does not name its Services (no rule comments): give the "
                             "Service's ClusterIP instead (`kubectl get svc`)")
        raise InputError(f"no Service {ref.text} in {source}; {offer(ref.text, known, 'Services')}")
    services = sorted({f"{p.namespace}/{p.name}" for p in named})
    if len(services) > 1:
        raise InputError(f"{ref.name} names a Service in several namespaces of {source} ({', '.join(services)}): "
                         f"say which, e.g. {ref.name}.{named[0].namespace}:{ref.port}")
    if ref.port.isdigit():
        number = int(ref.port)
        chosen = [p for p in named if p.port == number]
        same = [p for p in chosen if p.protocol == proto]
        if same or (chosen and not proto_given):
            p = (same or chosen)[0]
            return p.cluster_ip, number, p.protocol, _label(p)
        return named[0].cluster_ip, number, proto, f"{services[0]} (no port {number}/{proto})"
    chosen = [p for p in named if p.port_name == ref.port and p.port is not None]
    if not chosen:
        names = ", ".join(sorted(f"{p.port_name or '(unnamed)'} ({p.port}/{p.protocol})" for p in named))
        raise InputError(f"Service {services[0]} in {source} has no port named {ref.port!r}; its ports: {names}")
    same = [p for p in chosen if p.protocol == proto]
    p = (same or chosen)[0]
    return p.cluster_ip, p.port, p.protocol if not proto_given else proto, _label(p)


def resolve_in_cluster(cluster: Any, ref: ServiceRef, proto: str, family: int, *, proto_given: bool = False,
                       ) -> tuple[str, int, str, str] | None:
    """(ClusterIP of this IP family, port, protocol, the Service port's name) that `ref` names in the cluster data
    (a ClusterState), for a Service this node's rules do not name: asked about its address, explain says the
    node has no rules for it. None when the data has no such Service, port or address (headless, ExternalName,
    another family, a name in several namespaces)."""
    import ipaddress

    found = [s for s in cluster.services
             if s.name == ref.name and (ref.namespace is None or s.namespace == ref.namespace)]
    if len(found) != 1:
        return None
    service = found[0]
    ips = [ip for ip in service.cluster_ips if ip != "None" and ipaddress.ip_address(ip).version == family]
    if not ips or service.headless or service.external_name is not None:
        return None
    ports = [p for p in service.ports if (str(p.port) == ref.port if ref.port.isdigit() else p.name == ref.port)]
    same = [p for p in ports if p.protocol.lower() == proto]
    chosen = (same or ([] if proto_given else ports))[:1]
    if not chosen:
        return None
    p = chosen[0]
    label = f"{service.key}:{p.name}" if p.name else service.key
    return ips[0], p.port, p.protocol.lower() if not same else proto, label


def _label(p: Any) -> str:
    return f"{p.namespace}/{p.name}:{p.port_name}" if p.port_name else f"{p.namespace}/{p.name}"


def split_service_port_name(name: str) -> tuple[str, str, str]:
    """"ns/svc:port" -> (ns, svc, port); "ns/svc" and the 2015 "ns/svc:" -> (ns, svc, "")."""
    ns, _, rest = name.partition("/")
    svc, _, port = rest.partition(":")
    return ns, svc, port


def split_destination(text: str) -> tuple[str, int | None]:
    """"10.0.0.1:80" / "[fd00::1]:80" / "10.0.0.1" -> (ip, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest[1:].isdigit() else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port) if port.isdigit() else None
    return text, None
