"""A small but real HTTP server on 127.0.0.1 that answers like kube-apiserver for the calls iptrace makes:
list (and get) Services, EndpointSlices, Nodes and Pods, with bearer-token authentication, per-token RBAC
(verb, resource and subresource, namespace), label and field selectors, `limit`/`continue` paging with
real-shaped continue tokens, `Status` error bodies, and the discovery documents kubectl reads first. With a
FakeKubelet (tests/kubelet.py) it also creates pods (validation, PodSecurity admission, dry runs) and runs them
for real, serves `pods/log`, deletes pods, and streams `pods/exec` over a websocket (tests/apiserver_pods.py).

No real kube-apiserver can run on these machines; the official client and kubectl talk to this one over
HTTP through a real kubeconfig, unmodified.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import ipaddress
import json
import re
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

try:
    from tests import apiserver_pods as pods
    from tests.kubelet import FakeKubelet
except ImportError:  # pytest's rootdir is not on sys.path: tests/ itself is
    import apiserver_pods as pods  # type: ignore[no-redef]
    from kubelet import FakeKubelet  # type: ignore[no-redef]

DATA = Path(__file__).parent / "data" / "cluster"


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    group: str
    version: str
    namespaced: bool

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


SERVICES = Resource("Service", "services", "", "v1", True)
ENDPOINTSLICES = Resource("EndpointSlice", "endpointslices", "discovery.k8s.io", "v1", True)
NODES = Resource("Node", "nodes", "", "v1", False)
PODS = Resource("Pod", "pods", "", "v1", True)
RESOURCES = (SERVICES, ENDPOINTSLICES, NODES, PODS)


@dataclass(frozen=True)
class Grant:
    """What a bearer token may do: `verbs` (None = all) on `resources` (plurals or `pods/exec`-style
    subresources; None = all) in `namespaces` (None = at cluster scope, hence in every namespace). `denied`
    takes some away again: (verb, resource), or (verb, resource, name) like RBAC's resourceNames, e.g.
    ("create", "pods/exec", "kube-proxy-abcde")."""

    user: str
    resources: frozenset[str] | None = None
    namespaces: frozenset[str] | None = None
    verbs: frozenset[str] | None = None
    denied: frozenset[tuple[str, ...]] = frozenset()

    def allows(self, plural: str, namespace: str | None, verb: str = "list", name: str | None = None) -> bool:
        if (verb, plural) in self.denied or (verb, plural, name) in self.denied:
            return False
        if self.verbs is not None and verb not in self.verbs:
            return False
        if self.resources is not None and plural not in self.resources:
            return False
        if self.namespaces is None:
            return True
        return namespace is not None and namespace in self.namespaces


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    accept: str | None


status_body = pods.status_body


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """k8s.io/apimachinery/pkg/labels.Parse, for the operators kubectl accepts."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s*\(([^)]*)\)", part)
        if m:
            values = {v.strip() for v in m[3].split(",")}
            ok = (labels.get(m[1]) in values) == (m[2] == "in")
        elif part.startswith("!"):
            ok = part[1:].strip() not in labels
        elif "!=" in part:
            k, v = (s.strip() for s in part.split("!=", 1))
            ok = labels.get(k) != v
        elif "=" in part:
            k, v = (s.strip() for s in part.replace("==", "=").split("=", 1))
            ok = k in labels and labels[k] == v
        else:
            ok = part in labels
        if not ok:
            return False
    return True


class InvalidSelector(ValueError):
    pass


def _check_selector(selector: str) -> None:
    # A real API server rejects what labels.Parse cannot read; a lone "=" is the simplest such input.
    for part in selector.split(","):
        if part.strip().startswith("=") or part.count("=") > 2:
            raise InvalidSelector(part)


@dataclass
class ApiServer:
    """Serve `objects` (kind → list of stored objects) on 127.0.0.1; `tokens` maps bearer tokens to grants."""

    objects: dict[str, list[dict[str, Any]]]
    tokens: dict[str, Grant]
    resource_version: int = 48211
    missing_groups: set[str] = field(default_factory=set)  # e.g. {"discovery.k8s.io/v1"} for an old cluster
    expire_continue_after_first_page: bool = False
    page_limit: int | None = None  # a server may return fewer items than `limit` asks for
    repeat_continue_token: bool = False  # a broken server (or proxy) that answers every page with the same token
    list_answer: Any = None  # when set: the JSON every list is answered with (a proxy's, not a list at all)
    pod_quota: dict[str, int] | None = None  # namespace → a ResourceQuota's hard `pods` (as its admission refuses)
    anonymous: Grant | None = None  # what a request without a token may do (anonymous auth enabled)
    tls: bool = False  # serve https with a fresh self-signed certificate (`ca_pem`) for 127.0.0.1
    requests: list[Request] = field(default_factory=list)
    ca_pem: bytes = b""
    kubelet: FakeKubelet | None = None  # runs created pods and execs; without one, pods can only be listed
    namespaces: dict[str, dict[str, str]] | None = None  # name → labels (PodSecurity); None: any namespace exists
    lock: threading.RLock = field(default_factory=threading.RLock)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def from_data(cls, tokens: dict[str, Grant], data: Path = DATA, **kwargs: Any) -> ApiServer:
        objects = {}
        for res, file in ((SERVICES, "services.json"), (ENDPOINTSLICES, "endpointslices.json"),
                          (NODES, "nodes.json")):
            objects[res.kind] = json.loads((data / file).read_text())["items"]
        return cls(objects=objects, tokens=tokens, **kwargs)

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        server = self
        if self.kubelet is not None:
            self.kubelet.update = self.set_pod_status

        class Handler(_Handler):
            api = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.tls:
            self.ca_pem, key_pem = _self_signed_certificate()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "cert.pem").write_bytes(self.ca_pem)
                (Path(d) / "key.pem").write_bytes(key_pem)
                context.load_cert_chain(Path(d) / "cert.pem", Path(d) / "key.pem")
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the handler asks ---

    def stored(self, res: Resource, namespace: str | None) -> list[dict[str, Any]]:
        """Objects in etcd key order (/registry/<resource>/<namespace>/<name>), as a list call returns them."""
        with self.lock:
            items = [copy.deepcopy(o) for o in self.objects.get(res.kind, [])
                     if namespace is None or o["metadata"].get("namespace") == namespace]
        return sorted(items, key=self.key)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            for obj in self.objects.get("Pod", []):
                if obj["metadata"]["name"] == name and obj["metadata"].get("namespace") == namespace:
                    return obj
        return None

    def set_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self.lock:
            obj = self.pod(namespace, name)
            if obj is not None:
                obj["status"] = copy.deepcopy(status)
                self.resource_version += 1
                obj["metadata"]["resourceVersion"] = str(self.resource_version)

    def collector_pods(self) -> list[dict[str, Any]]:
        """Pods that carry iptrace's collector label and still exist."""
        return [p for p in self.stored(PODS, None)
                if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == "iptrace-collector"]

    @staticmethod
    def key(obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def _self_signed_certificate() -> tuple[bytes, bytes]:
    """A certificate for IP 127.0.0.1 that is its own CA, and its key, both PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_kubeconfig(path: Path, server: str, users: dict[str, str], current: str | None = None,
                     ca_pem: bytes = b"") -> Path:
    """A kubeconfig with one cluster, one user per token and a context per user (named like the user)."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": "fake", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}} for name, token in users.items()],
        "contexts": [{"name": name, "context": {"cluster": "fake", "user": name, "namespace": "default"}}
                     for name in users],
        "current-context": current or next(iter(users)),
    }
    # JSON is YAML: the client and kubectl read it as it is.
    path.write_text(json.dumps(config, indent=2))
    return path


class _Handler(pods.PodHandlers, BaseHTTPRequestHandler):
    api: ApiServer
    pods_resource = PODS
    protocol_version = "HTTP/1.1"
    # NOTE: without this every response waits for the client's delayed ACK (+40 ms per request).
    disable_nagle_algorithm = True
    server_version = "fake-kube-apiserver"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authenticate(self, method: str) -> tuple[str, dict[str, list[str]], Grant] | None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        self.api.requests.append(Request(method, url.path, query, self.headers.get("Authorization"),
                                         self.headers.get("Accept")))
        # The scheme is case-insensitive (RFC 7235): the client's in-cluster loader sends "bearer".
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        grant = self.api.tokens.get(token.strip()) if scheme.lower() == "bearer" else self.api.anonymous
        if grant is None:
            self._send_json(401, status_body(401, "Unauthorized", "Unauthorized"))
            return None
        return url.path.rstrip("/") or "/", query, grant

    def do_GET(self) -> None:
        authenticated = self._authenticate("GET")
        if authenticated is None:
            return
        path, query, grant = authenticated
        sub = self._pod_subresource(path)
        if sub is not None:
            namespace, name, subresource = sub
            if subresource == "log":
                self._pod_log(namespace, name, grant)
            elif subresource == "exec":
                self._pod_exec(namespace, name, query, grant)
            else:
                self._send_text(404, "404 page not found\n")
            return
        if path == "/version":
            self._send_json(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit":
                                  "7c48c2bd72b9bf5c44d21d7338cc7bea77d0ad2a", "gitTreeState": "clean",
                                  "buildDate": "2024-04-17T17:27:03Z", "goVersion": "go1.22.2",
                                  "compiler": "gc", "platform": "linux/amd64"})
            return
        if self._discovery(path):
            return
        self._resource(path, query, grant)

    def _groups(self) -> list[Resource]:
        return [r for r in RESOURCES if r.group_version not in self.api.missing_groups]

    def _discovery(self, path: str) -> bool:
        """The legacy discovery documents kubectl falls back to when aggregated discovery is not offered."""
        if path == "/api":
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.api.port}"}]})
            return True
        if path == "/apis":
            groups = sorted({r.group_version for r in self._groups() if r.group})
            self._send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in groups]})
            return True
        for gv in sorted({r.group_version for r in self._groups()}):
            prefix = f"/apis/{gv}" if "/" in gv else f"/api/{gv}"
            if path == prefix:
                resources = [{"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                              "kind": r.kind, "verbs": ["get", "list", "watch"],
                              **({"shortNames": ["svc"]} if r is SERVICES else {}),
                              **({"shortNames": ["no"]} if r is NODES else {})}
                             for r in self._groups() if r.group_version == gv]
                self._send_json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                                      "resources": resources})
                return True
        return False

    def _route(self, path: str) -> tuple[Resource, str | None, str | None] | None:
        for res in self._groups():
            base = f"/apis/{res.group_version}" if res.group else f"/api/{res.version}"
            if not path.startswith(base + "/"):
                continue
            rest = path[len(base) + 1:].split("/")
            if rest[0] == res.plural and len(rest) <= 2:
                if res.namespaced and len(rest) == 2:
                    continue
                return res, None, rest[1] if len(rest) == 2 else None
            if res.namespaced and rest[0] == "namespaces" and len(rest) in (3, 4) and rest[2] == res.plural:
                return res, rest[1], rest[3] if len(rest) == 4 else None
        return None

    def _forbidden(self, res: Resource, verb: str, namespace: str | None, grant: Grant, name: str | None,
                   subresource: str = "") -> None:
        # apierrors.NewForbidden: the qualified GroupResource, then the name when there is one.
        qualified = f"{res.plural}.{res.group}" if res.group else res.plural
        what = f'{qualified} "{name}"' if name else qualified
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        resource = f"{res.plural}/{subresource}" if subresource else res.plural
        message = (f'{what} is forbidden: User "{grant.user}" cannot {verb} resource "{resource}" in API group '
                   f'"{res.group}" {scope}')
        details = {"group": res.group, "kind": res.plural} if res.group else {"kind": res.plural}
        if name:
            details = {"name": name, **details}
        self._send_json(403, status_body(403, "Forbidden", message, details))

    def _resource(self, path: str, query: dict[str, list[str]], grant: Grant) -> None:
        route = self._route(path)
        if route is None:
            # kube-apiserver's NotFoundHandler for paths no API group serves.
            self._send_text(404, "404 page not found\n")
            return
        res, namespace, name = route
        if not grant.allows(res.plural, namespace, "get" if name else "list"):
            self._forbidden(res, "get" if name else "list", namespace, grant, name)
            return
        if name is not None:
            for obj in self.api.stored(res, namespace):
                if obj["metadata"]["name"] == name:
                    self._send_json(200, {"kind": res.kind, "apiVersion": res.group_version, **obj})
                    return
            details = {"name": name, "group": res.group, "kind": res.plural} if res.group else {
                "name": name, "kind": res.plural}
            self._send_json(404, status_body(404, "NotFound", f'{res.plural} "{name}" not found', details))
            return
        self._list(res, namespace, query)

    def _list(self, res: Resource, namespace: str | None, query: dict[str, list[str]]) -> None:
        if self.api.list_answer is not None:
            self._send_json(200, self.api.list_answer)
            return
        selector = query.get("labelSelector", [""])[0]
        try:
            _check_selector(selector)
        except InvalidSelector as e:
            self._send_json(400, status_body(400, "BadRequest", f"unable to parse requirement: {e}"))
            return
        field_selector = query.get("fieldSelector", [""])[0]
        items = [o for o in self.api.stored(res, namespace)
                 if _selector_matches(selector, o["metadata"].get("labels") or {})
                 and _fields_match(field_selector, o)]
        rv = self.api.resource_version
        start = 0
        token = query.get("continue", [""])[0]
        if token:
            try:
                decoded = json.loads(base64.b64decode(token, validate=True))
                start_key = decoded["start"]
                token_rv = decoded["rv"]
                if decoded.get("v") != "meta.k8s.io/v1" or not isinstance(start_key, str):
                    raise ValueError(token)
            except (ValueError, KeyError, TypeError, binascii.Error):
                self._send_json(400, status_body(400, "BadRequest", "continue key is not valid: "
                                                 "incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))
                return
            if self.api.expire_continue_after_first_page:
                self._send_json(410, status_body(
                    410, "Expired", "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use the continue token "
                    "in this response to retrieve the remainder of the results. Continuing with the provided token "
                    "results in an inconsistent list - objects that were created, modified, or deleted between the "
                    "time the first chunk was returned and now may show up in the list."))
                return
            rv = token_rv
            # The start key is the last returned key plus "\x00": the next key in etcd order.
            start = sum(1 for o in items if self.api.key(o) < start_key)
        limit_text = query.get("limit", ["0"])[0]
        limit = int(limit_text) if limit_text.isdigit() else 0
        if self.api.page_limit is not None:
            limit = min(limit, self.api.page_limit) if limit else self.api.page_limit
        page = items[start:start + limit] if limit > 0 else items[start:]
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        rest = len(items) - start - len(page)
        if rest > 0:
            last = self.api.key(page[-1])
            metadata["continue"] = base64.b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": rv, "start": last + "\x00"}, separators=(",", ":")).encode()).decode()
            if self.api.repeat_continue_token and token:
                metadata["continue"] = token
            # Like the real server, the count is only known when nothing was filtered out.
            if not selector:
                metadata["remainingItemCount"] = rest
        self._send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.group_version, "metadata": metadata,
                              "items": [copy.deepcopy(o) for o in page]})


_fields_match = pods.fields_match
