"""Run the node-side script inside the node's own kube-proxy pod through the exec stream (the websocket channel
protocol: 1 stdout, 2 stderr, 3 the Status of the command). kube-proxy runs with the host's network and its
image carries the iptables/nft binaries of the very version that wrote the rules. Verb: create pods/exec.
"""

from __future__ import annotations

import json
import select
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from iptrace.collect.api_status import ApiFailure, forbidden_text
from iptrace.collect.commands import StepClock

KUBE_PROXY_NAMESPACE = "kube-system"
# The v4.channel.k8s.io protocol: the first byte of every message names its stream.
STDOUT, STDERR, STATUS = 1, 2, 3
KUBE_PROXY_SELECTOR = "k8s-app=kube-proxy"
KUBE_PROXY_DOWN = "kube-proxy's container is not running"


class ExecRefused(Exception):
    """The exec could not run the script at all (refused, no shell in the image, pod gone): `auto` falls back to
    a collector pod. `kind` is the error kind when there is no fallback."""

    def __init__(self, message: str, kind: str = "exec") -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class KubeProxyPod:
    """`down`: why its kube-proxy container is not running (a pod stays Running while its container crash-loops),
    None when it runs or its status does not say."""

    name: str
    container: str
    image: str
    down: str | None = None


def kube_proxy_pods(items: list[dict[str, Any]]) -> dict[str, KubeProxyPod]:
    """node name → its running kube-proxy pod (the newest whose container runs, if a rollout left two)."""
    found: dict[str, tuple[tuple[bool, str], KubeProxyPod]] = {}
    for pod in items:
        spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, pod.get("metadata") or {}
        node = spec.get("nodeName")
        if not node or status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        containers = spec.get("containers") or []
        if not containers:
            continue
        chosen = next((c for c in containers if c.get("name") == "kube-proxy"), containers[0])
        down = _not_running(status, str(chosen.get("name")))
        rank = (down is None, str(meta.get("creationTimestamp") or ""))
        candidate = KubeProxyPod(str(meta.get("name")), str(chosen.get("name")), str(chosen.get("image", "")), down)
        if node not in found or rank > found[node][0]:
            found[node] = (rank, candidate)
    return {node: pod for node, (_, pod) in found.items()}


def _not_running(status: dict[str, Any], container: str) -> str | None:
    """Why `container` of a Running pod is not running, from its containerStatuses (the kubelet's words: waiting
    in CrashLoopBackOff, its restarts and how its last run ended), or None."""
    entry = next((c for c in status.get("containerStatuses") or [] if isinstance(c, dict)
                  and c.get("name") == container), None)
    state = entry.get("state") if entry is not None else None
    if not isinstance(state, dict) or not state or "running" in state:
        return None
    now = next(iter(state))
    said = [str((state[now] or {}).get("reason") or now)]
    restarts = entry.get("restartCount") if entry is not None else None
    if isinstance(restarts, int) and restarts > 0:
        said.append(f"restarted {restarts} time{'s' if restarts != 1 else ''}")
    last = ((entry or {}).get("lastState") or {}).get("terminated") or (state.get("terminated") or {})
    if isinstance(last, dict) and last.get("exitCode") is not None:
        said.append(f"its last run exited {last.get('exitCode')}" + (f" ({last['reason']})" if last.get("reason")
                                                                      else ""))
    return ", ".join(said)


def run_exec(api: Any, pod: KubeProxyPod, argv: tuple[str, ...], clock: StepClock,
             cancel: threading.Event) -> tuple[bytes, bytes, str | None]:
    """(stdout, stderr, None) of `argv` run in the pod. Raises ExecRefused when it could not run at all. A step
    that runs out of time is stopped (the exec is closed): then the output so far and why it stopped."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream
    from websocket import ABNF, WebSocketConnectionClosedException, WebSocketException

    try:
        ws = stream(api.connect_get_namespaced_pod_exec, pod.name, KUBE_PROXY_NAMESPACE, command=list(argv),
                    container=pod.container, stderr=True, stdin=False, stdout=True, tty=False,
                    _preload_content=False, binary=True)
    except ApiException as e:
        raise _refused(e, pod) from None
    channels: dict[int, list[bytes]] = {STDOUT: [], STDERR: [], STATUS: []}
    # NOTE: frames are read one at a time from the client's websocket rather than through WSClient.update(),
    # which joins every frame already waiting into one bytes object (quadratic on a 25 MB dump).
    sock = ws.sock
    try:
        while True:
            if cancel.is_set():
                raise ExecRefused("interrupted", "cancelled")
            remaining = clock.deadline() - time.monotonic()
            if remaining <= 0:
                return b"".join(channels[STDOUT]), b"".join(channels[STDERR]), (
                    f"did not finish within {clock.allowance():g}s in {KUBE_PROXY_NAMESPACE}/{pod.name}; the exec "
                    "was closed")
            if not _readable(sock.sock, min(remaining, 0.25)):
                continue
            opcode, frame = sock.recv_data_frame(True)
            if opcode == ABNF.OPCODE_CLOSE:
                break
            if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) or not frame.data:
                continue
            data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
            if data[0] in channels and len(data) > 1:
                channels[data[0]].append(data[1:])
                if data[0] == STDOUT:
                    clock.feed(data[1:], time.monotonic())
    except WebSocketConnectionClosedException as e:
        # A server that hangs up without a close frame after the command's Status has said everything.
        if not channels[STATUS]:
            raise ExecRefused(f"the exec stream into {KUBE_PROXY_NAMESPACE}/{pod.name} broke ({e})") from None
    except (WebSocketException, OSError) as e:
        raise ExecRefused(f"the exec stream into {KUBE_PROXY_NAMESPACE}/{pod.name} broke ({e})") from None
    finally:
        ws.close()
    _check_status(b"".join(channels[STATUS]), pod)
    return b"".join(channels[STDOUT]), b"".join(channels[STDERR]), None


def _readable(sock: Any, timeout: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True  # already decrypted, invisible to poll()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _refused(error: Any, pod: KubeProxyPod) -> ExecRefused:
    text = str(getattr(error, "reason", "") or error)
    failure = ApiFailure.from_handshake(text) or ApiFailure.from_exception(error)
    where = f"{KUBE_PROXY_NAMESPACE}/{pod.name}"
    if failure.status == 403:
        return ExecRefused(forbidden_text(failure, f"create pods/exec in namespace {KUBE_PROXY_NAMESPACE}"),
                           "forbidden")
    if failure.status == 0:
        return ExecRefused(f"exec into {where} failed: {failure.message}", "api")
    return ExecRefused(f"exec into {where} was refused ({failure.status}: {failure.message})", "exec")


def _check_status(raw: bytes, pod: KubeProxyPod) -> None:
    """Channel 3 carries a metav1.Status: Success, NonZeroExitCode (the shell ran; the batch tells the rest),
    or a failure to start the command at all (no `sh` in kube-proxy's image)."""
    if not raw.strip():
        return
    try:
        status = json.loads(raw)
    except ValueError:
        return
    if not isinstance(status, dict) or status.get("status") == "Success":
        return
    if status.get("reason") == "NonZeroExitCode":
        return
    message = status.get("message") or "no detail"
    raise ExecRefused(f"kube-proxy's container in {KUBE_PROXY_NAMESPACE}/{pod.name} cannot run the commands "
                      f"({message})")
