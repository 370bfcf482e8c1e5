"""What the API double does with pods beyond listing them: validation and PodSecurity admission of a created
pod (as pod-security-admission words its rejections), the stored shape, and the exec stream (the websocket
channel protocol v4.channel.k8s.io: channel 1 stdout, 2 stderr, 3 the command's Status). Standard library only;
no import of tests.apiserver (which imports this)."""

from __future__ import annotations

import copy
import json
import os
import re
import selectors
import subprocess
import uuid
from typing import Any, BinaryIO

try:
    from tests.kubelet import now
    from tests.wsframes import OP_BINARY, OP_CLOSE, accept_key, close_frame, frame, read_frame
except ImportError:  # pytest's rootdir is not on sys.path: tests/ itself is
    from kubelet import now  # type: ignore[no-redef]
    from wsframes import OP_BINARY, OP_CLOSE, accept_key, close_frame, frame, read_frame  # type: ignore[no-redef]

CHANNEL_PROTOCOL = "v4.channel.k8s.io"
ENFORCE = "pod-security.kubernetes.io/enforce"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def validate(pod: Any, namespace: str) -> list[str]:
    """Field errors as the API server words them (a few of them)."""
    if not isinstance(pod, dict) or pod.get("kind") not in (None, "Pod"):
        return ["body: Invalid value: expected a Pod"]
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    errors = []
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors.append(f"metadata.name: Invalid value: {json.dumps(name)}: a lowercase RFC 1123 subdomain")
    if meta.get("namespace") not in (None, namespace):
        errors.append("metadata.namespace: Invalid value: does not match the namespace of the request")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        errors.append("spec.containers: Required value")
    else:
        for i, container in enumerate(containers):
            if not container.get("image"):
                errors.append(f"spec.containers[{i}].image: Required value")
    if spec.get("restartPolicy") not in (None, "Always", "OnFailure", "Never"):
        errors.append("spec.restartPolicy: Unsupported value")
    return errors


def pod_security_violations(pod: dict[str, Any], level: str) -> list[str]:
    """pod-security-admission's reasons, for the checks a collector pod can fail."""
    if level == "privileged":
        return []
    spec = pod.get("spec") or {}
    out = []
    host = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        out.append(f"host namespaces ({', '.join(host)})")
    privileged = [c["name"] for c in spec.get("containers") or [] if (c.get("securityContext") or {}).get(
        "privileged")]
    if privileged:
        names = ", ".join(f'"{n}"' for n in privileged)
        out.append(f"privileged (container {names} must not set securityContext.privileged=true)")
    if level == "restricted":
        names = ", ".join(f'"{c["name"]}"' for c in spec.get("containers") or [])
        out.append(f"allowPrivilegeEscalation != false (container {names} must set "
                   "securityContext.allowPrivilegeEscalation=false)")
        out.append(f"runAsNonRoot != true (pod or container {names} must set securityContext.runAsNonRoot=true)")
    return out


def stored(pod: dict[str, Any], namespace: str, resource_version: int) -> dict[str, Any]:
    """The pod as the API server stores and returns it after a create."""
    meta = {**pod.get("metadata", {}), "namespace": namespace, "uid": str(uuid.uuid4()),
            "resourceVersion": str(resource_version), "creationTimestamp": now()}
    spec = {"schedulerName": "default-scheduler", "dnsPolicy": "ClusterFirst", **pod.get("spec", {})}
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec,
            "status": {"phase": "Pending", "qosClass": "BestEffort"}}


def exec_status(code: int | None, argv: list[str], error: str | None) -> dict[str, Any]:
    """What the kubelet reports on channel 3 when the command ended (or could not start)."""
    if error is not None:
        return {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError",
                "details": {"causes": [{"message": error}]}, "code": 500}
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command {argv}, exit code "
                       f"{code}", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


# A command that prints this line makes the double end the exec there: a close frame and no Status, as when the
# API server or the kubelet goes away in the middle of an exec.
CLOSE_STREAM_MARKER = b"iptrace-test-close-the-exec-stream\n"


def pump(rfile: BinaryIO, wfile: BinaryIO, connection: Any, process: subprocess.Popen[bytes] | str,
         argv: list[str]) -> None:
    """Stream a started exec to the client, then its Status on channel 3 and a close frame. A client that goes
    away (closes the websocket) stops the command."""
    if isinstance(process, str):
        _send(wfile, 3, json.dumps(exec_status(None, argv, process)).encode())
        wfile.write(close_frame())
        return
    assert process.stdout is not None and process.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, 1)
    selector.register(process.stderr, selectors.EVENT_READ, 2)
    selector.register(connection, selectors.EVENT_READ, 0)
    try:
        open_streams = 2
        while open_streams:
            for key, _ in selector.select():
                if key.data == 0:
                    incoming = read_frame(rfile)
                    if incoming is None or incoming[0] == OP_CLOSE:
                        raise ConnectionResetError("the client closed the stream")
                    continue
                data = os.read(key.fileobj.fileno(), 1 << 16)  # type: ignore[union-attr]
                if not data:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                before, marker, _ = data.partition(CLOSE_STREAM_MARKER)
                if marker and key.data == 1:
                    _send(wfile, 1, before)
                    wfile.write(close_frame())
                    raise ConnectionResetError("the double ends the stream")
                _send(wfile, key.data, data)
        code = process.wait()
        _send(wfile, 3, json.dumps(exec_status(code, argv, None)).encode())
        wfile.write(close_frame())
    except OSError:
        process.kill()
        process.wait()
    finally:
        selector.close()
        process.stdout.close()
        process.stderr.close()


def _send(wfile: BinaryIO, channel: int, data: bytes) -> None:
    wfile.write(frame(OP_BINARY, bytes([channel]) + data))
    wfile.flush()


def status_body(code: int, reason: str, message: str, details: dict[str, str] | None = None) -> dict[str, Any]:
    """A metav1.Status exactly as kube-apiserver writes one (empty fields omitted, as Go's omitempty does)."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason}
    if details:
        body["details"] = details
    body["code"] = code
    return body


class PodHandlers:
    """The pod endpoints of the API double's request handler (mixed into it): create, delete, log, exec."""

    api: Any
    pods_resource: Any
    headers: Any
    rfile: BinaryIO
    wfile: BinaryIO
    connection: Any
    close_connection: bool

    # Everything else (_send_json, _forbidden, _route, _authenticate, send_response, …) is the handler's.


    @staticmethod
    def _pod_subresource(path: str) -> tuple[str, str, str] | None:
        parts = path.split("/")
        # /api/v1/namespaces/NS/pods/NAME/SUB
        if len(parts) == 8 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "pods":
            return parts[4], parts[6], parts[7]
        return None

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except json.JSONDecodeError:
            return None

    def do_POST(self) -> None:
        authenticated = self._authenticate("POST")
        if authenticated is None:
            return
        path, query, grant = authenticated
        body = self._body()
        route = self._route(path)
        if route is None or route[0].plural != "pods" or route[1] is None or route[2] is not None:
            self._send_json(405, status_body(405, "MethodNotAllowed", "the server does not allow this method on "
                                             "the requested resource"))
            return
        namespace = route[1]
        if not grant.allows("pods", namespace, "create"):
            self._forbidden(self.pods_resource, "create", namespace, grant, None)
            return
        if self.api.namespaces is not None and namespace not in self.api.namespaces:
            self._send_json(404, status_body(404, "NotFound", f'namespaces "{namespace}" not found',
                                             {"name": namespace, "kind": "namespaces"}))
            return
        errors = validate(body, namespace)
        name = (body.get("metadata") or {}).get("name") if isinstance(body, dict) else None
        if errors:
            self._send_json(422, status_body(422, "Invalid", f'Pod "{name}" is invalid: ' + ", ".join(errors),
                                             {"name": str(name), "kind": "Pod"}))
            return
        level = (self.api.namespaces or {}).get(namespace, {}).get(ENFORCE, "privileged")
        violations = pod_security_violations(body, level)
        if violations:
            self._send_json(403, status_body(403, "Forbidden", f'pods "{name}" is forbidden: violates PodSecurity '
                                             f'"{level}:latest": ' + ", ".join(violations),
                                             {"name": name, "kind": "pods"}))
            return
        quota = (self.api.pod_quota or {}).get(namespace)
        used = sum(1 for p in self.api.objects.get("Pod", []) if p["metadata"].get("namespace") == namespace)
        if quota is not None and used + 1 > quota:
            # (quota admission's own words; a 403 like RBAC's, but no missing permission)
            self._send_json(403, status_body(403, "Forbidden", f'pods "{name}" is forbidden: exceeded quota: '
                                             f"pods, requested: pods=1, used: pods={used}, limited: pods={quota}",
                                             {"name": name, "kind": "pods"}))
            return
        with self.api.lock:
            if self.api.pod(namespace, name) is not None:
                self._send_json(409, status_body(409, "AlreadyExists", f'pods "{name}" already exists',
                                                 {"name": name, "kind": "pods"}))
                return
            self.api.resource_version += 1
            obj = stored(body, namespace, self.api.resource_version)
            if query.get("dryRun") != ["All"]:
                self.api.objects.setdefault("Pod", []).append(obj)
            reply = copy.deepcopy(obj)
        if query.get("dryRun") != ["All"] and self.api.kubelet is not None:
            self.api.kubelet.admit(reply)
        self._send_json(201, reply)

    def do_DELETE(self) -> None:
        authenticated = self._authenticate("DELETE")
        if authenticated is None:
            return
        path, _, grant = authenticated
        self._body()
        route = self._route(path)
        if route is None or route[0].plural != "pods" or route[1] is None or route[2] is None:
            self._send_json(405, status_body(405, "MethodNotAllowed", "the server does not allow this method on "
                                             "the requested resource"))
            return
        _, namespace, name = route
        if not grant.allows("pods", namespace, "delete"):
            self._forbidden(self.pods_resource, "delete", namespace, grant, name)
            return
        with self.api.lock:
            obj = self.api.pod(namespace, name)
            if obj is not None:
                self.api.objects["Pod"].remove(obj)
        if obj is None:
            self._send_json(404, status_body(404, "NotFound", f'pods "{name}" not found', {"name": name,
                                                                                       "kind": "pods"}))
            return
        if self.api.kubelet is not None:
            self.api.kubelet.delete(namespace, name)
        self._send_json(200, obj)

    def _pod_log(self, namespace: str, name: str, grant: Any) -> None:
        if not grant.allows("pods/log", namespace, "get"):
            self._forbidden(self.pods_resource, "get", namespace, grant, name, "log")
            return
        obj = self.api.pod(namespace, name)
        if obj is None:
            self._send_json(404, status_body(404, "NotFound", f'pods "{name}" not found', {"name": name,
                                                                                       "kind": "pods"}))
            return
        log = self.api.kubelet.log(namespace, name) if self.api.kubelet is not None else None
        if log is None:
            container = obj["spec"]["containers"][0]["name"]
            self._send_json(400, status_body(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                                             "waiting to start: ContainerCreating"))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(log)))
        self.end_headers()
        self.wfile.write(log)

    def _pod_exec(self, namespace: str, name: str, query: dict[str, list[str]], grant: Any) -> None:
        # NOTE: since Kubernetes 1.35 a websocket exec needs `create` on pods/exec, like every other exec.
        if not grant.allows("pods/exec", namespace, "create", name):
            self._forbidden(self.pods_resource, "create", namespace, grant, name, "exec")
            return
        obj = self.api.pod(namespace, name)
        if obj is None:
            self._send_json(404, status_body(404, "NotFound", f'pods "{name}" not found', {"name": name,
                                                                                       "kind": "pods"}))
            return
        offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        if (self.headers.get("Upgrade") or "").lower() != "websocket" or CHANNEL_PROTOCOL not in offered:
            self._send_json(400, status_body(400, "BadRequest", "Upgrade request required"))
            return
        if (obj.get("status") or {}).get("phase") != "Running" or self.api.kubelet is None:
            self._send_json(400, status_body(400, "BadRequest", f'pod {name} is not running'))
            return
        container = (query.get("container") or [""])[0]
        state = next((c.get("state") for c in (obj.get("status") or {}).get("containerStatuses") or []
                      if c.get("name") == container), None)
        if state and "running" not in state:  # (a Running pod whose container crash-loops: the kubelet's answer)
            self._send_json(400, status_body(400, "BadRequest", "unable to upgrade connection: container not found "
                                                                f'("{container}")'))
            return
        argv = query.get("command", [])
        process = self.api.kubelet.exec(obj, argv)
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(self.headers.get("Sec-WebSocket-Key") or ""))
        self.send_header("Sec-WebSocket-Protocol", CHANNEL_PROTOCOL)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        pump(self.rfile, self.wfile, self.connection, process, argv)


def fields_match(selector: str, obj: dict[str, Any]) -> bool:
    """The field selectors the API server supports for pods that matter here (spec.nodeName, metadata.name)."""
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, _, value = part.partition("=")
        value = value.lstrip("=")
        if key == "spec.nodeName":
            actual = (obj.get("spec") or {}).get("nodeName")
        elif key == "metadata.name":
            actual = obj["metadata"].get("name")
        elif key == "metadata.namespace":
            actual = obj["metadata"].get("namespace")
        else:
            return False
        if actual != value:
            return False
    return True
