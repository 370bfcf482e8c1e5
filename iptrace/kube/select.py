"""Narrowing a Service view to what was asked for (`--namespace`, `--service`, `--address`), and refusing to
answer about something the dump does not hold: after a typo, an empty view would read as "this node forwards
nothing". `select` takes a whole view; `select_ports` builds only the Service ports that may match (a Service
of a 5,000-Service dump is answered in about the time of reading it), and gives the same answer. Both raise
InputError naming the closest things the dump has."""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from iptrace.errors import InputError
from iptrace.kube.view import KubeView, port_layout, split_destination

_SHOWN = 5  # names listed when none is close


def select(view: KubeView, *, namespace: str | None = None, service: str | None = None,
           address: str | None = None, source: str = "<dump>") -> KubeView:
    """`filter_view(view, namespace, service, address)`, or InputError when it leaves nothing: the filter that
    matches nothing on its own is named, with the closest namespaces, Service ports or addresses the dump has."""
    narrowed = filter_view(view, namespace=namespace, service=service, address=address)
    if narrowed.services or (namespace is None and service is None and address is None):
        return narrowed
    raise InputError(_refusal(view.services, namespace, service, address, source))


def select_ports(analysis: Any, *, namespace: str | None = None, service: str | None = None,
                 address: str | None = None, source: str = "<dump>") -> KubeView:
    """`select(analysis.view, …)` building the views of the Service ports that may match only: their layouts
    say who they are and where they are reached, the layout's endpoint index which have an endpoint at an
    address; the filters then run on their views as `select` runs them on the whole view."""
    if namespace is None and service is None and address is None:
        return analysis.view  # type: ignore[no-any-return]
    layout = analysis.layout
    # Every port's layout (also what the view's full warnings need), in the view's order.
    ports = sorted((port_layout(sp) for sp in layout.service_ports),
                   key=lambda p: (p.namespace, p.name, p.port_name, p.protocol))
    keys = {p.key for p in _matching(ports, namespace, service, address)}
    if address is not None:
        ip, _port_number = _split_address_filter(address)
        named = {p.key for p in _matching(ports, namespace, service, None)}
        keys |= {k for k in layout.endpoint_keys(_normalised(ip)) if k in named}
    narrowed = filter_view(analysis.views.view_of(k for k in layout.keys if k in keys), namespace=namespace,
                           service=service, address=address)
    if narrowed.services:
        return narrowed
    if address is not None:  # (what a refusal offers for an address includes every endpoint)
        ports = [replace(p, endpoints=analysis.port_facts(p.key).endpoints) for p in ports]
    raise InputError(_refusal(ports, namespace, service, address, source))


def _refusal(services: Sequence[Any], namespace: str | None, service: str | None, address: str | None,
             source: str) -> str:
    """Why no Service port matches: the filter that matches nothing on its own, with the closest names or
    addresses `services` has; else the filters that match only apart."""
    if namespace is not None and not _matching(services, namespace, None, None):
        return _no_namespace(namespace, services, source)
    if service is not None and not _matching(services, None, service, None):
        return _no_service(service, services, source)
    if address is not None and not _matching(services, None, None, address):
        return _no_address(address, services, source)
    asked = " ".join(f"{flag} {value}" for flag, value in (("--namespace", namespace), ("--service", service),
                                                            ("--address", address)) if value is not None)
    alone = []
    for flag, value, one in (("--service", service, (None, service, None)),
                             ("--address", address, (None, None, address))):
        if value is not None:
            labels = sorted({s.label for s in _matching(services, *one)})
            more = f" (and {len(labels) - _SHOWN} more)" if len(labels) > _SHOWN else ""
            alone.append(f"{flag} {value} alone matches {', '.join(labels[:_SHOWN])}{more}")
    return f"{asked}: no Service port in {source} matches all of these together; {'; '.join(alone)}"


def _no_namespace(namespace: str, services: Sequence[Any], source: str) -> str:
    known = sorted({s.namespace for s in services if s.namespace})
    closest = offer(namespace, known, "namespaces")
    return f"--namespace {namespace}: no Service in namespace {namespace!r} in {source}; {closest}"


def _no_service(service: str, services: Sequence[Any], source: str) -> str:
    base, _, port = service.partition(":")
    ports = sorted(s.port_name or "(unnamed)" for s in services if f"{s.namespace}/{s.name}" == base)
    if port and ports:
        return (f"--service {service}: Service {base} in {source} has no port named {port!r}; its ports: "
                f"{', '.join(ports)}")
    if not port:
        known = sorted({f"{s.namespace}/{s.name}" for s in services if s.namespace})
        return f"--service {service}: no Service {service} in {source}; {offer(service, known, 'Services')}"
    known = sorted({s.label for s in services if s.namespace})
    return f"--service {service}: no Service port {service} in {source}; {offer(service, known, 'Service ports')}"


def _no_address(address: str, services: Sequence[Any], source: str) -> str:
    ip, port = _split(address)
    owners: dict[str, str] = {}
    for s in services:
        for ip_of in [e.address for e in s.entries if e.address] + [ep.ip for ep in s.endpoints]:
            owners.setdefault(ip_of, s.label)
    if port is not None and ip in owners:
        ports = sorted({e.port for s in services for e in s.entries if e.address == ip}
                       | {ep.port for s in services for ep in s.endpoints if ep.ip == ip and ep.port is not None})
        return (f"--address {address}: {ip} has no Service port {port} in {source}; its ports: "
                f"{', '.join(map(str, ports))}")
    closest = _closest_addresses(ip, owners)
    if closest:
        offer = "closest addresses: " + ", ".join(f"{a} ({owners[a]})" for a in closest)
    elif owners:
        offer = f"its Service addresses are all of the other IP family (e.g. {min(owners)})"
    else:
        offer = "it has no Service addresses"
    return (f"--address {address}: no Service port reachable at {ip} in {source} (no ClusterIP, external or "
            f"load-balancer IP, or endpoint); {offer}")


def offer(wanted: str, known: list[str], what: str) -> str:
    if not known:
        return f"it has no {what}"
    close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.6)
    if close:
        return f"closest: {', '.join(close)}"
    more = f" (and {len(known) - _SHOWN} more)" if len(known) > _SHOWN else ""
    return f"it has {what}: {', '.join(known[:_SHOWN])}{more}"


def _closest_addresses(ip: str, known: Iterable[str]) -> list[str]:
    """The three known addresses most like `ip`: by spelling (a typo), then by numeric distance."""
    try:
        wanted = ipaddress.ip_address(ip)
    except ValueError:
        return difflib.get_close_matches(ip, list(known), n=3, cutoff=0.0)

    def rank(candidate: str) -> tuple[float, int]:
        other = ipaddress.ip_address(candidate)
        spelling = difflib.SequenceMatcher(None, ip, candidate).ratio()
        return (-round(spelling, 2), abs(int(other) - int(wanted)))

    same_family = [a for a in known if ipaddress.ip_address(a).version == wanted.version]
    return sorted(same_family, key=rank)[:3]


def _split(address: str) -> tuple[str, int | None]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT`, as filter_view reads it; the IP normalised."""
    ip, port = address, None
    if address.startswith("[") and "]:" in address:
        ip, _, rest = address[1:].partition("]:")
        port = int(rest) if rest.isdigit() else None
    elif address.count(":") == 1:
        ip, _, rest = address.partition(":")
        port = int(rest) if rest.isdigit() else None
    try:
        return str(ipaddress.ip_address(ip)), port
    except ValueError:
        return ip, port


def filter_view(view: KubeView, namespace: str | None = None, service: str | None = None,
                address: str | None = None) -> KubeView:
    """The view restricted to one namespace, one Service ("NS/NAME", every port of it, or a chain name for
    an unnamed one) and/or one address (IP or IP:PORT: a ClusterIP, external/LB IP, endpoint or nodePort)."""
    services = _matching(view.services, namespace, service, address)
    if services == view.services:
        return view
    kept = {c for s in services for c in s.chains}
    return replace(view, services=services, chain_labels={c: lab for c, lab in view.chain_labels.items() if c in kept})


def _matching(services: Sequence[Any], namespace: str | None, service: str | None,
              address: str | None) -> tuple[Any, ...]:
    """The Service ports (views, or anything with their names, chains, entries and endpoints) the filters
    match, in their order."""
    out = tuple(services)
    if namespace is not None:
        out = tuple(s for s in out if s.namespace == namespace)
    if service is not None:
        want_ns, _, want_name = service.partition("/")
        if not want_name:
            out = tuple(s for s in out if s.name == service or service in s.chains)
        else:
            want_name, _, want_port = want_name.partition(":")
            out = tuple(s for s in out if s.namespace == want_ns and s.name == want_name
                        and (not want_port or s.port_name == want_port))
    if address is not None:
        ip, port = _split_address_filter(address)
        ip = _normalised(ip)
        out = tuple(s for s in out if _touches(s, ip, port))
    return out


def _normalised(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _split_address_filter(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        return split_destination(text)
    if text.count(":") == 1:
        ip, _, port = text.partition(":")
        return ip, int(port) if port.isdigit() else None
    return text, None


def _touches(s: Any, ip: str, port: int | None) -> bool:
    for e in s.entries:
        if e.address == ip and (port is None or e.port == port):
            return True
    for ep in s.endpoints:
        if ep.ip == ip and (port is None or ep.port == port):
            return True
    return False
