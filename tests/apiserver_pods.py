"""What the API double does with pods beyond listing them: validation and PodSecurity admission of a created
pod (as pod-security-admission words its rejections), the stored shape, and the exec stream (the websocket
channel protocol v4.channel.k8s.io: channel 1 stdout, 2 stderr, 3 the command's Status). Standard library only;
no import of tests.apiserver (which imports this)."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import uuid
from typing import Any, BinaryIO

try:
    from tests.kubelet import now
    from tests.wsframes import OP_BINARY, OP_CLOSE, close_frame, frame, read_frame
except ImportError:  # pytest's rootdir is not on sys.path: tests/ itself is
    from kubelet import now  # type: ignore[no-redef]
    from wsframes import OP_BINARY, OP_CLOSE, close_frame, frame, read_frame  # type: ignore[no-redef]

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
