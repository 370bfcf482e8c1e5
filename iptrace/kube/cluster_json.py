"""Services, EndpointSlices and Nodes as the API writes them (list responses, `kubectl get -o json` Lists, single
objects) turned into the cluster model; every shape problem is a one-line ClusterError naming where. Pure: the
files and the live API are read in iptrace.collect.cluster."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from iptrace.errors import ClusterError
from iptrace.kube.cluster import (
    ClusterEndpoint,
    ClusterEndpointSlice,
    ClusterLoadBalancerIngress,
    ClusterNode,
    ClusterService,
    ClusterServicePort,
    ClusterState,
    Labels,
)

_KINDS = ("Service", "EndpointSlice", "Node")
EXPECTED = (
    "expected `kubectl get --raw /api/v1/services` (ServiceList), "
    "`kubectl get --raw /apis/discovery.k8s.io/v1/endpointslices` (EndpointSliceList), "
    "`kubectl get --raw /api/v1/nodes` (NodeList), `kubectl get svc,endpointslices,nodes -A -o json` (List), "
    "or one Service, EndpointSlice or Node"
)
# The defaults the API server writes into objects it stores (pkg/apis/core/v1/defaults.go).
_DEFAULT_AFFINITY_TIMEOUT = 10800


class _ShapeError(Exception):
    """An object lacks a field or has one of the wrong type; `path` is the JSON path inside the object."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"{path}: {why}")


# --- reading fields with a path for the error message ---------------------------------------------------


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _obj(parent: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        if required:
            raise _ShapeError(f"{path}{key}", "missing; expected an object")
        return {}
    if not isinstance(value, dict):
        raise _ShapeError(f"{path}{key}", f"expected an object, got {type_name(value)}")
    return value


def _list(parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _ShapeError(f"{path}{key}", f"expected a list, got {type_name(value)}")
    return value


def _str(parent: Mapping[str, Any], key: str, path: str, *, required: bool = False,
         default: str | None = None) -> str | None:
    value = parent.get(key)
    if value is None or (value == "" and default is not None):
        if required:
            raise _ShapeError(f"{path}{key}", "missing; expected a string")
        return default
    if not isinstance(value, str):
        raise _ShapeError(f"{path}{key}", f"expected a string, got {type_name(value)} {json.dumps(value)}")
    return value


def _int(parent: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> int | None:
    value = parent.get(key)
    if value is None:
        if required:
            raise _ShapeError(f"{path}{key}", "missing; expected an integer")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ShapeError(f"{path}{key}", f"expected an integer, got {type_name(value)} {json.dumps(value)}")
    return value


def _bool(parent: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _ShapeError(f"{path}{key}", f"expected true or false, got {json.dumps(value)}")
    return value


def _strs(parent: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _list(parent, key, path)
    for i, v in enumerate(items):
        if not isinstance(v, str):
            raise _ShapeError(f"{path}{key}[{i}]", f"expected a string, got {type_name(v)}")
    return tuple(items)


def _labels(parent: Mapping[str, Any], key: str, path: str) -> Labels:
    value = _obj(parent, key, path)
    for k, v in value.items():
        if not isinstance(v, str):
            raise _ShapeError(f"{path}{key}.{k}", f"expected a string, got {type_name(v)}")
    return tuple(sorted(value.items()))


# --- API objects to model ------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any], *, namespaced: bool) -> tuple[str, str, dict[str, Any]]:
    meta = _obj(obj, "metadata", "", required=True)
    name = _str(meta, "name", "metadata.", required=True) or ""
    namespace = (_str(meta, "namespace", "metadata.", default="default") or "") if namespaced else ""
    return namespace, name, meta


def _service(obj: Mapping[str, Any]) -> ClusterService:
    namespace, name, meta = _meta(obj, namespaced=True)
    spec = _obj(obj, "spec", "")
    svc_type = _str(spec, "type", "spec.", default="ClusterIP") or "ClusterIP"
    cluster_ips = _strs(spec, "clusterIPs", "spec.")
    single = _str(spec, "clusterIP", "spec.")
    if not cluster_ips and single:
        cluster_ips = (single,)
    headless = single == "None" or cluster_ips[:1] == ("None",)
    if headless or svc_type == "ExternalName":
        cluster_ips = tuple(ip for ip in cluster_ips if ip not in ("None", ""))
    ports = []
    for i, p in enumerate(_list(spec, "ports", "spec.")):
        where = f"spec.ports[{i}]."
        if not isinstance(p, dict):
            raise _ShapeError(where[:-1], f"expected an object, got {type_name(p)}")
        port = _int(p, "port", where, required=True) or 0
        target = p.get("targetPort")
        if target is None:
            target = port
        elif isinstance(target, bool) or not isinstance(target, (int, str)):
            raise _ShapeError(f"{where}targetPort", f"expected a number or a port name, got {type_name(target)}")
        elif isinstance(target, str) and target.isdigit():
            # IntOrString given as text: the API server would have stored it as a number.
            target = int(target)
        ports.append(ClusterServicePort(
            name=_str(p, "name", where, default="") or "",
            port=port,
            protocol=(_str(p, "protocol", where, default="TCP") or "TCP").upper(),
            target_port=target,
            node_port=_int(p, "nodePort", where),
            app_protocol=_str(p, "appProtocol", where),
        ))
    status = _obj(obj, "status", "")
    ingress = []
    lb = _obj(status, "loadBalancer", "status.")
    for i, ing in enumerate(_list(lb, "ingress", "status.loadBalancer.")):
        where = f"status.loadBalancer.ingress[{i}]."
        if not isinstance(ing, dict):
            raise _ShapeError(where[:-1], f"expected an object, got {type_name(ing)}")
        ingress.append(ClusterLoadBalancerIngress(
            ip=_str(ing, "ip", where), hostname=_str(ing, "hostname", where), ip_mode=_str(ing, "ipMode", where)))
    affinity = _str(spec, "sessionAffinity", "spec.", default="None") or "None"
    timeout = None
    if affinity == "ClientIP":
        client_ip = _obj(_obj(spec, "sessionAffinityConfig", "spec."), "clientIP", "spec.sessionAffinityConfig.")
        timeout = _int(client_ip, "timeoutSeconds", "spec.sessionAffinityConfig.clientIP.")
        if timeout is None:
            timeout = _DEFAULT_AFFINITY_TIMEOUT
    selector = spec.get("selector")
    return ClusterService(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        external_ips=_strs(spec, "externalIPs", "spec."),
        lb_ips=tuple(ingress),
        lb_source_ranges=_strs(spec, "loadBalancerSourceRanges", "spec."),
        external_traffic_policy=_str(spec, "externalTrafficPolicy", "spec."),
        internal_traffic_policy=_str(spec, "internalTrafficPolicy", "spec."),
        session_affinity=affinity,
        affinity_timeout=timeout,
        health_check_node_port=_int(spec, "healthCheckNodePort", "spec."),
        selector=None if selector is None else _labels(spec, "selector", "spec."),
        headless=headless,
        external_name=_str(spec, "externalName", "spec."),
        ip_families=_strs(spec, "ipFamilies", "spec."),
        labels=_labels(meta, "labels", "metadata."),
    )


def _endpoint_slice(obj: Mapping[str, Any]) -> ClusterEndpointSlice:
    namespace, name, meta = _meta(obj, namespaced=True)
    labels = dict(_labels(meta, "labels", "metadata."))
    address_type = _str(obj, "addressType", "", default="IPv4") or "IPv4"
    ports: list[tuple[str, int, str]] = []
    for i, p in enumerate(_list(obj, "ports", "")):
        where = f"ports[{i}]."
        if not isinstance(p, dict):
            raise _ShapeError(where[:-1], f"expected an object, got {type_name(p)}")
        number = _int(p, "port", where)
        # kube-proxy skips a port without a number (EndpointSliceCache.addEndpoints: "ignoring invalid
        # endpoint port").
        if not number:
            continue
        ports.append((_str(p, "name", where, default="") or "", number,
                      (_str(p, "protocol", where, default="TCP") or "TCP").upper()))
    endpoints = []
    for i, e in enumerate(_list(obj, "endpoints", "")):
        where = f"endpoints[{i}]."
        if not isinstance(e, dict):
            raise _ShapeError(where[:-1], f"expected an object, got {type_name(e)}")
        addresses = _strs(e, "addresses", where)
        cond = _obj(e, "conditions", where)
        ready = _bool(cond, "ready", f"{where}conditions.")
        serving = _bool(cond, "serving", f"{where}conditions.")
        terminating = _bool(cond, "terminating", f"{where}conditions.")
        # discovery.k8s.io/v1beta1 kept the node and zone in `topology`.
        topology = _labels(e, "topology", where)
        node_name = _str(e, "nodeName", where) or dict(topology).get("kubernetes.io/hostname")
        zone = _str(e, "zone", where) or dict(topology).get("topology.kubernetes.io/zone")
        hints = _obj(e, "hints", where)
        zone_hints = []
        for j, z in enumerate(_list(hints, "forZones", f"{where}hints.")):
            if not isinstance(z, dict):
                raise _ShapeError(f"{where}hints.forZones[{j}]", f"expected an object, got {type_name(z)}")
            zone_hints.append(_str(z, "name", f"{where}hints.forZones[{j}].", required=True) or "")
        node_hints = []
        for j, h in enumerate(_list(hints, "forNodes", f"{where}hints.")):
            if not isinstance(h, dict):
                raise _ShapeError(f"{where}hints.forNodes[{j}]", f"expected an object, got {type_name(h)}")
            node_hints.append(_str(h, "name", f"{where}hints.forNodes[{j}].", required=True) or "")
        if not addresses:
            continue
        for port_name, number, protocol in ports:
            # kube-proxy uses only the first address of an endpoint.
            endpoints.append(ClusterEndpoint(
                ip=addresses[0],
                port=number,
                port_name=port_name,
                protocol=protocol,
                ready=ready is not False,
                serving=serving is not False,
                terminating=terminating is True,
                node_name=node_name,
                zone=zone,
                zone_hints=tuple(zone_hints),
                node_hints=tuple(node_hints),
            ))
    return ClusterEndpointSlice(
        namespace=namespace,
        name=name,
        service=labels.get("kubernetes.io/service-name"),
        address_type=address_type,
        endpoints=tuple(endpoints),
        managed_by=labels.get("endpointslice.kubernetes.io/managed-by"),
    )


def _node(obj: Mapping[str, Any]) -> ClusterNode:
    _, name, meta = _meta(obj, namespaced=False)
    spec = _obj(obj, "spec", "")
    status = _obj(obj, "status", "")
    by_type: dict[str, list[str]] = {}
    for i, a in enumerate(_list(status, "addresses", "status.")):
        where = f"status.addresses[{i}]."
        if not isinstance(a, dict):
            raise _ShapeError(where[:-1], f"expected an object, got {type_name(a)}")
        kind = _str(a, "type", where, required=True) or ""
        by_type.setdefault(kind, []).append(_str(a, "address", where, required=True) or "")
    pod_cidrs = _strs(spec, "podCIDRs", "spec.")
    single = _str(spec, "podCIDR", "spec.")
    if not pod_cidrs and single:
        pod_cidrs = (single,)
    ready = None
    for i, c in enumerate(_list(status, "conditions", "status.")):
        if isinstance(c, dict) and c.get("type") == "Ready":
            value = _str(c, "status", f"status.conditions[{i}].")
            ready = {"True": True, "False": False}.get(value or "")
    return ClusterNode(
        name=name,
        internal_ips=tuple(by_type.get("InternalIP", ())),
        external_ips=tuple(by_type.get("ExternalIP", ())),
        labels=_labels(meta, "labels", "metadata."),
        pod_cidrs=pod_cidrs,
        hostnames=tuple(by_type.get("Hostname", ())),
        ready=ready,
    )


_CONVERTERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "Node": _node,
}


@dataclass(frozen=True, slots=True)
class _Item:
    kind: str
    obj: dict[str, Any]
    where: str  # e.g. "items[3]", for messages


def api_items(doc: Any, where: str) -> Iterator[_Item]:
    """The Services, EndpointSlices and Nodes in one decoded document, with their position."""
    if not isinstance(doc, dict):
        raise ClusterError(f"{where}: the JSON is {type_name(doc)}, not a Kubernetes object; {EXPECTED}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ClusterError(f"{where}: the JSON object has no `kind`; {EXPECTED}")
    if kind in ("Endpoints", "EndpointsList"):
        raise ClusterError(f"{where}: got {kind} (core/v1), which kube-proxy no longer reads; give EndpointSlices "
                           "instead: kubectl get --raw /apis/discovery.k8s.io/v1/endpointslices")
    if kind in _KINDS:
        yield _Item(kind, doc, where)
        return
    if kind != "List" and not (kind.endswith("List") and kind[:-4] in _KINDS):
        raise ClusterError(f"{where}: got kind {kind}; {EXPECTED}")
    items = doc.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ClusterError(f"{where}: `items` of the {kind} is {type_name(items)}, expected a list")
    item_kind = kind[:-4] if kind != "List" else None
    for i, item in enumerate(items):
        at = f"{where}: items[{i}]"
        if not isinstance(item, dict):
            raise ClusterError(f"{at} is {type_name(item)}, expected an object")
        own = item.get("kind")
        if item_kind is None:
            if not isinstance(own, str) or not own:
                raise ClusterError(f"{at} has no `kind`; a List (kubectl get … -o json) names each item's kind")
            # A generic List may hold anything `kubectl get` printed (pods, deployments, …): only these
            # three kinds describe what kube-proxy programs.
            if own in _KINDS:
                yield _Item(own, item, at)
        elif own not in (None, "", item_kind):
            raise ClusterError(f"{at} is a {own} inside a {kind}")
        else:
            yield _Item(item_kind, item, at)


def _describe(item: _Item) -> str:
    meta = item.obj.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        ns = meta.get("namespace")
        name = f"{ns}/{meta['name']}" if isinstance(ns, str) and ns else meta["name"]
        return f"{item.where} ({item.kind} {name})"
    return f"{item.where} ({item.kind})"


def state_from_objects(items: Iterable[tuple[str, Mapping[str, Any], str]], source: str, *,
                       namespace: str | None = None) -> ClusterState:
    """Build a `ClusterState` from (kind, API object, where) triples; `where` names the object in errors;
    `namespace`: the one namespace whose Services and EndpointSlices were read, when only one was.

    A later object with the same namespace and name replaces an earlier one, so overlapping files merge."""
    services: dict[tuple[str, str], ClusterService] = {}
    slices: dict[tuple[str, str], ClusterEndpointSlice] = {}
    nodes: dict[str, ClusterNode] = {}
    for kind, obj, where in items:
        item = _Item(kind, dict(obj), where)
        try:
            value = _CONVERTERS[kind](obj)
        except _ShapeError as e:
            raise ClusterError(f"{_describe(item)}: {e.path}: {e.why}") from None
        if isinstance(value, ClusterService):
            services[(value.namespace, value.name)] = value
        elif isinstance(value, ClusterEndpointSlice):
            slices[(value.namespace, value.name)] = value
        else:
            nodes[value.name] = value
    return ClusterState(
        services=tuple(services[k] for k in sorted(services)),
        slices=tuple(slices[k] for k in sorted(slices)),
        nodes=tuple(nodes[k] for k in sorted(nodes)),
        source=source,
        namespace=namespace,
    )
