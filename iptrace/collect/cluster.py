"""Read Services, EndpointSlices and Nodes from JSON files or, read-only, from a live API server.

Both ways end in the same converter (iptrace.kube.cluster_json), so a file saved with `kubectl get --raw` and a
live list give the same `ClusterState`. The `kubernetes` client is imported inside `load_cluster_live` only, so
that importing this module (and `iptrace --help`) stays fast. Every failure is a one-line `ClusterError`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iptrace.collect.kubeconfig import connection_reason, open_api, status_message
from iptrace.errors import ClusterError, InputError
from iptrace.kube.cluster import (
    ClusterState,
)
from iptrace.kube.cluster_json import EXPECTED, api_items, state_from_objects, type_name
from iptrace.text import decode_input

__all__ = [
    "load_cluster_files",
    "load_cluster_live",
    "matches_label_selector",
    "node_addresses",
    "state_from_objects",
]

# --- files ---------------------------------------------------------------------------------------------


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    out: list[str] = []
    for p in paths:
        text = os.fspath(p)
        if text != "-" and os.path.isdir(text):
            found = sorted(str(c) for c in Path(text).iterdir() if c.suffix == ".json" and c.is_file())
            if not found:
                raise ClusterError(f"{text}: the directory holds no *.json file; {EXPECTED}")
            out.extend(found)
        else:
            out.append(text)
    return out


def _read(path: str) -> str:
    """A file's text (saved on Windows too: a byte order mark, UTF-16)."""
    try:
        return decode_input(sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes(), "strict")
    except FileNotFoundError:
        raise ClusterError(f"{path}: no such file or directory") from None
    except UnicodeDecodeError as e:
        raise ClusterError(f"{path}: not UTF-8 text (byte {e.start}); {EXPECTED}") from None
    except OSError as e:
        raise ClusterError(f"{path}: cannot read: {e.strerror or e}") from None


def load_cluster_files(paths: Iterable[str | os.PathLike[str]]) -> ClusterState:
    """Read Services, EndpointSlices and Nodes from JSON files (`-` is stdin, a directory means its *.json).

    Each file is a list response of `kubectl get --raw` (ServiceList, EndpointSliceList, NodeList), the
    `List` that `kubectl get svc,endpointslices,nodes -A -o json` prints, or a single object."""
    files = _expand(paths)
    collected: list[tuple[str, Mapping[str, Any], str]] = []
    for path in files:
        name = "<stdin>" if path == "-" else path
        text = _read(path)
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ClusterError(_not_json(name, text, e)) from None
        except RecursionError:
            raise ClusterError(f"invalid JSON at {name}: nested too deeply") from None
        collected.extend((i.kind, i.obj, i.where) for i in api_items(doc, name))
    return state_from_objects(collected, ", ".join("<stdin>" if f == "-" else f for f in files))


# The first line of `kubectl get … -o yaml` (a List, or one object), or a YAML document marker.
_YAML_START = re.compile(r"(?:---|apiVersion:|kind:|items:|metadata:)(?:\s|$)")


def _not_json(name: str, text: str, e: json.JSONDecodeError) -> str:
    """Why a --cluster file is not JSON, at file:line:column: empty, YAML (kubectl's -o yaml) or cut short, each
    said as such; else the decoder's own words."""
    if not text.strip():
        return f"{name}:1:1: the file is empty; {EXPECTED}"
    first = text.lstrip("\ufeff \t\r\n").split("\n", 1)[0]
    if _YAML_START.match(first):
        return (f"{name}:{e.lineno}:{e.colno}: this is YAML (`kubectl get … -o yaml`?); iptrace reads the API's "
                f"JSON: save it with `-o json` instead (`kubectl get svc,endpointslices,nodes -A -o json`)")
    # (the decoder meets the end: after the last value read, or inside a string it never saw closed)
    if not text[e.pos:].strip() or e.msg.startswith("Unterminated string"):
        return (f"invalid JSON at {name}:{e.lineno}:{e.colno}: the file ends before its JSON does ({e.msg}): "
                "it looks cut short; save it again")
    return f"invalid JSON at {name}:{e.lineno}:{e.colno}: {e.msg}; {EXPECTED}"


# --- label selectors -----------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"""^\s*(?:
        (?P<not>!)\s*(?P<nkey>[^\s=!(),]+)
      | (?P<skey>[^\s=!(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)
      | (?P<ekey>[^\s=!(),]+)\s*(?P<eop>==|=|!=)\s*(?P<value>[^\s=!(),]*)
      | (?P<key>[^\s=!(),]+)
    )\s*$""",
    re.VERBOSE,
)


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def matches_label_selector(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy a label selector in kubectl's syntax (`a=b,c!=d,e in (f,g),!h`)."""
    if not selector or not selector.strip():
        return True
    for part in _split_selector(selector):
        m = _REQUIREMENT.match(part)
        if m is None:
            raise InputError(f"label selector {selector!r}: cannot read {part.strip()!r}; "
                             "write key=value, key!=value, key in (a,b), key notin (a,b), key or !key")
        if m["not"]:
            ok = m["nkey"] not in labels
        elif m["skey"]:
            values = {v.strip() for v in m["values"].split(",")}
            ok = (labels.get(m["skey"]) in values) if m["op"] == "in" else (labels.get(m["skey"]) not in values)
        elif m["ekey"]:
            ok = (labels.get(m["ekey"]) == m["value"]) if m["eop"] != "!=" else (
                labels.get(m["ekey"]) != m["value"])
        else:
            ok = m["key"] in labels
        if not ok:
            return False
    return True


def node_addresses(state: ClusterState, label_selector: str | None = None) -> list[tuple[str, str]]:
    """(node name, address to reach it) for every Node matching the selector, sorted by name.

    The address is the node's first InternalIP, else its first ExternalIP, else its Hostname address;
    a node that reports none of them is left out."""
    out = []
    for node in state.nodes:
        if not matches_label_selector(label_selector, node.label_map):
            continue
        for ip in node.internal_ips[:1] or node.external_ips[:1] or node.hostnames[:1]:
            out.append((node.name, ip))
    return out


# --- live, read-only -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resource:
    kind: str
    resource: str  # plural, as RBAC names it
    group: str  # "" for the core group
    version: str

    @property
    def rbac_name(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def path(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/namespaces/{namespace}/{self.resource}" if namespace else f"{base}/{self.resource}"


_SERVICES = _Resource("Service", "services", "", "v1")
_SLICES = _Resource("EndpointSlice", "endpointslices", "discovery.k8s.io", "v1")
_NODES = _Resource("Node", "nodes", "", "v1")


def _api_error(status: int, reason: str | None, body: Any, res: _Resource, namespace: str | None,
               server: str, kubeconfig: str) -> ClusterError:
    scope = f"in namespace {namespace}" if namespace else "at cluster scope"
    message = status_message(body)
    path = res.path(namespace)
    if status == 401:
        return ClusterError(f"unauthorized: the credentials in {kubeconfig} were rejected (expired token?) by "
                            f"{server}; log in again or choose another --context")
    if status == 403:
        user = re.search(r'User "([^"]*)"', message or "")
        who = f" for user {user.group(1)}" if user else ""
        hint = "" if namespace or res is _NODES else "; ask for that permission or limit to one --namespace"
        return ClusterError(f"forbidden: list {res.rbac_name} {scope}{who} at {server}{hint}")
    if status == 404:
        why = message or "not found"
        hint = ""
        if res is _SLICES:
            hint = "; discovery.k8s.io/v1 EndpointSlices need Kubernetes 1.21 or newer"
        return ClusterError(f"not found: GET {path} at {server} answered 404 ({why}){hint}")
    if status == 410:
        return ClusterError(f"the list of {res.rbac_name} changed while it was read page by page (continue token "
                            f"expired) at {server}; run again")
    detail = f": {message}" if message else ""
    return ClusterError(f"API error {status} {reason or ''}".rstrip() + f" for GET {path} at {server}{detail}")


def load_cluster_live(kubeconfig: str | None, context: str | None, namespace: str | None,
                      label_selector: str | None = None, *, node_selector: str | None = None,
                      include_nodes: bool = True, timeout: float = 10.0, page_size: int = 500) -> ClusterState:
    """List Services, EndpointSlices and Nodes through the official client; read-only (list calls only).

    `kubeconfig` None means $KUBECONFIG, then ~/.kube/config; `context` None the current context.
    `namespace` limits Services and EndpointSlices (Nodes are cluster-scoped); `label_selector` filters
    Services and EndpointSlices (the EndpointSlice controller copies a Service's labels onto its slices);
    `node_selector` filters Nodes. Lists are read `page_size` items at a time. Connection attempts are not
    retried, so an unreachable server fails after at most `timeout` seconds."""
    try:
        import urllib3
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
    except ImportError as e:  # pragma: no cover - kubernetes is a declared dependency
        raise ClusterError(f"reading a live cluster needs the kubernetes package ({e}); "
                           "pip install kubernetes") from None

    access = open_api(kubeconfig, context)
    api_client = access.client()
    server, shown, where = access.server, access.shown, access.where
    request_timeout = (timeout, timeout)

    def list_all(res: _Resource, call: Callable[..., Any], ns: str | None,
                 selector: str | None) -> list[tuple[str, Mapping[str, Any], str]]:
        out: list[tuple[str, Mapping[str, Any], str]] = []
        token: str | None = None
        seen_tokens: set[str] = set()
        page = 0
        while True:
            kwargs: dict[str, Any] = {"limit": page_size, "_preload_content": False,
                                      "_request_timeout": request_timeout}
            if selector:
                kwargs["label_selector"] = selector
            if token:
                kwargs["_continue"] = token
            try:
                response = call(ns, **kwargs) if ns else call(**kwargs)
                raw = response.data
            except ApiException as e:
                raise _api_error(e.status or 0, e.reason, e.body, res, ns, server, shown) from None
            except urllib3.exceptions.HTTPError as e:
                raise ClusterError(f"cannot reach the API server at {server}: {connection_reason(e)}") from None
            except OSError as e:
                raise ClusterError(f"cannot reach the API server at {server}: {e}") from None
            try:
                doc = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ClusterError(f"GET {res.path(ns)} at {server} did not answer JSON; is {server} a "
                                   "Kubernetes API server?") from None
            label = f"GET {res.path(ns)} at {server}" + (f" (page {page + 1})" if page else "")
            if not isinstance(doc, dict) or doc.get("kind") not in (f"{res.kind}List", None):
                raise ClusterError(f"{label}: expected a {res.kind}List, got "
                                   f"{doc.get('kind') if isinstance(doc, dict) else type_name(doc)}")
            doc.setdefault("kind", f"{res.kind}List")
            out.extend((i.kind, i.obj, i.where) for i in api_items(doc, label))
            meta = doc.get("metadata")
            token = meta.get("continue") if isinstance(meta, dict) else None
            if not token:
                return out
            if not isinstance(token, str) or token in seen_tokens:
                raise ClusterError(f"{label}: the API server repeated a continue token; the list never ends")
            seen_tokens.add(token)
            page += 1

    try:
        core = client.CoreV1Api(api_client)
        discovery = client.DiscoveryV1Api(api_client)
        items = []
        if namespace:
            items += list_all(_SERVICES, core.list_namespaced_service, namespace, label_selector)
            items += list_all(_SLICES, discovery.list_namespaced_endpoint_slice, namespace, label_selector)
        else:
            items += list_all(_SERVICES, core.list_service_for_all_namespaces, None, label_selector)
            items += list_all(_SLICES, discovery.list_endpoint_slice_for_all_namespaces, None, label_selector)
        if include_nodes:
            items += list_all(_NODES, core.list_node, None, node_selector)
    finally:
        api_client.close()
    return state_from_objects(items, where, namespace=namespace or None)
