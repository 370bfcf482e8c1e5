"""One short-lived collector pod per node: pinned to the node (`nodeName`), privileged, in the host's network
and PID namespaces, tolerating every taint, with a deadline and a recognisable label. Its command enters PID 1's
namespaces (`nsenter -t 1 -m -u -i -n -p --`) so the node's own tools answer; its output comes back through
`pods/log`. Every pod this module creates is deleted, whatever happens (the ledger lets the caller sweep up
after an interrupt). Verbs: create, get, delete pods; get pods/log.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from iptrace.collect.api_status import ApiFailure, forbidden_text, pod_security_text
from iptrace.errors import CollectError

# busybox: ~2 MB, multi-arch, and it has every tool the pod's own shell needs (sh, nsenter, head, gzip, base64).
# Fully qualified, because CRI-O refuses short names unless the node configures search registries.
DEFAULT_IMAGE = "docker.io/library/busybox:1.36"
LABEL = ("app.kubernetes.io/name", "iptrace-collector")
CONTAINER = "collect"
# Time for the kubelet to pull the image once it took the pod, on top of the commands' own worst case.
PULL_ALLOWANCE = 120
_PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                  "RegistryUnavailable", "SignatureValidationFailed"}
# A container waiting for these has not been made yet (its image, its sandbox, its volumes).
_CREATING = {"ContainerCreating", "PodInitializing"}
_START_FAILURES = {"CreateContainerError", "CreateContainerConfigError", "RunContainerError", "StartError",
                   "ContainerCannotRun", "PreStartHookError"}


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the Node object says about whether it can run a pod."""

    name: str
    ready: str = "True"  # the Ready condition's status: True, False or Unknown
    ready_message: str = ""
    os: str = "linux"
    unschedulable: bool = False  # cordoned: the scheduler skips it, but a pod pinned with nodeName still runs


@dataclass
class PodLedger:
    """Every collector pod that was (or is being) created and not yet confirmed deleted."""

    pods: set[tuple[str, str]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, namespace: str, name: str) -> None:
        with self.lock:
            self.pods.add((namespace, name))

    def discard(self, namespace: str, name: str) -> None:
        with self.lock:
            self.pods.discard((namespace, name))

    def remaining(self) -> list[tuple[str, str]]:
        with self.lock:
            return sorted(self.pods)


def pod_name(node: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", node.lower()).strip("-")[:30].strip("-") or "node"
    return f"iptrace-collector-{slug}-{secrets.token_hex(3)}"


def pod_manifest(name: str, node: str, namespace: str, image: str, command: tuple[str, ...],
                 deadline_seconds: int) -> dict[str, Any]:
    """The collector pod (SPEC.md "Collection through the Kubernetes API")."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL[0]: LABEL[1]},
                     "annotations": {"iptrace/node": node}},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "hostPID": True,
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline_seconds,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            # It never talks to the API server.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [{
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": list(command),
                "securityContext": {"privileged": True},
            }],
        },
    }


def deadline_seconds(run_worst_case: float) -> int:
    return math.ceil(run_worst_case + PULL_ALLOWANCE)


class PodRun:
    """Create one node's collector pod, wait for it, read its log; `close()` deletes it (always call it)."""

    def __init__(self, api: Any, node: NodeInfo, namespace: str, image: str, command: tuple[str, ...],
                 deadline: int, start_timeout: float, request_timeout: float, ledger: PodLedger,
                 cancel: threading.Event, *, offer_exec: bool) -> None:
        self.api = api
        self.offer_exec = offer_exec
        self.node = node
        self.namespace = namespace
        self.image = image
        self.name = pod_name(node.name)
        self.manifest = pod_manifest(self.name, node.name, namespace, image, command, deadline)
        self.deadline = deadline
        self.start_timeout = start_timeout
        self.request_timeout = (request_timeout, request_timeout)
        self.ledger = ledger
        self.cancel = cancel
        # False only once the API server said it did not create the pod; a create that got no answer may
        # have created it.
        self.maybe_created = False

    def _error(self, message: str, kind: str) -> CollectError:
        return CollectError(f"{self.node.name}: {message}", kind=kind, node=self.node.name)

    def _api_error(self, error: Any, doing: str, permission: str) -> CollectError:
        failure = ApiFailure.from_exception(error)
        if failure.pod_security:
            return self._error(pod_security_text(failure, self.namespace, self.offer_exec),
                               "pod-security")
        if failure.forbidden:
            return self._error(forbidden_text(failure, permission), "forbidden")
        if failure.status == 404 and "namespaces" in failure.message:
            return self._error(f"namespace {self.namespace} does not exist (--pod-namespace)", "api")
        if failure.status == 0:
            return self._error(f"{doing} failed: the API server did not answer ({failure.message})", "api")
        detail = f"{failure.status} {failure.reason}".strip()
        return self._error(f"{doing} failed ({detail}: {failure.message})", "api")

    def run(self) -> bytes:
        """The pod's whole log once its container exited 0; raises CollectError naming what went wrong."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        self.ledger.add(self.namespace, self.name)
        self.maybe_created = True
        try:
            self.api.create_namespaced_pod(self.namespace, self.manifest, _preload_content=False,
                                           _request_timeout=self.request_timeout)
        except ApiException as e:
            self.maybe_created = e.status in (None, 0) or e.status >= 500
            raise self._api_error(e, "creating the collector pod",
                                  f"create pods in namespace {self.namespace}") from None
        except HTTPError as e:
            raise self._error(f"creating the collector pod failed: the API server did not answer ({e})",
                              "api") from None
        started = time.monotonic()
        give_up = started + self.start_timeout + self.deadline + 15
        pause = 0.05
        while True:
            if self.cancel.is_set():
                raise self._error("interrupted", "cancelled")
            pod = self._get()
            outcome = self._judge(pod, time.monotonic() - started)
            if outcome is not None:
                return self._log() if outcome == "done" else self._failed_log(pod)
            if time.monotonic() > give_up:
                raise self._error(f"the collector pod {self.namespace}/{self.name} did not finish within "
                                  f"{give_up - started:.0f}s; it was deleted", "timeout")
            self.cancel.wait(pause)
            pause = min(pause * 1.5, 1.0)

    def _get(self) -> dict[str, Any]:
        import json

        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = self.api.read_namespaced_pod(self.name, self.namespace, _preload_content=False,
                                                    _request_timeout=self.request_timeout)
            return json.loads(response.data)
        except ApiException as e:
            if e.status == 404:
                raise self._error(f"the collector pod {self.namespace}/{self.name} disappeared (deleted by "
                                  "someone else, or evicted)", "api") from None
            raise self._api_error(e, "reading the collector pod",
                                  f"get pods in namespace {self.namespace}") from None
        except HTTPError as e:
            raise self._error(f"reading the collector pod failed: the API server did not answer ({e})",
                              "api") from None
        except ValueError as e:
            raise self._error(f"reading the collector pod: the API server did not answer JSON ({e})",
                              "api") from None

    def _judge(self, pod: dict[str, Any], waited: float) -> str | None:
        """None while the pod is on its way; "done" when it succeeded, "failed" when its container exited
        non-zero; raises for every other end."""
        status = pod.get("status") or {}
        phase = status.get("phase")
        containers = status.get("containerStatuses") or []
        state = (containers[0].get("state") or {}) if containers else {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        if waiting.get("reason") in _PULL_FAILURES:
            raise self._error(f"the image {self.image} cannot be pulled on this node ({waiting['reason']}: "
                              f"{waiting.get('message') or 'no detail'}); pass --image with an image the nodes can "
                              "pull that has sh and nsenter (busybox has both)", "image-pull")
        if waiting.get("reason") in _START_FAILURES:
            raise self._error(f"the collector container could not start ({waiting['reason']}: "
                              f"{waiting.get('message') or 'no detail'}); --image needs sh and nsenter", "exit")
        if phase == "Failed" and status.get("reason") == "DeadlineExceeded":
            raise self._error(f"the collector pod ran longer than its deadline ({self.deadline}s) and was "
                              "stopped", "timeout")
        if terminated:
            return "done" if terminated.get("exitCode") == 0 else "failed"
        if phase == "Succeeded":
            return "done"
        if phase == "Failed":
            reason = status.get("reason") or "Failed"
            message = status.get("message") or "no detail"
            raise self._error(f"the node's kubelet rejected the collector pod ({reason}: {message})", "rejected")
        if not containers and not status.get("startTime") and waited > self.start_timeout:
            raise self._error(self._never_started(waited), "not-started")
        if (waiting.get("reason") in _CREATING and phase == "Pending"
                and waited > self.start_timeout + PULL_ALLOWANCE):
            # (pulling the image is ContainerCreating too, hence the pull's allowance; past it, the runtime could not
            # make the pod's sandbox or mount its volumes: only the pod's events say which, and they outlive the
            # pod, which is deleted. The pod's own deadline would end it only minutes later, as 'ran too long'.)
            raise self._error(
                f"the collector pod {self.namespace}/{self.name} was not started within {waited:.0f}s: its "
                f"container is still {waiting['reason']} (the node's container runtime could not pull its image or "
                f"create it; `kubectl get events -n {self.namespace} --field-selector "
                f"involvedObject.name={self.name}` says why, e.g. FailedCreatePodSandBox or FailedMount)",
                "not-started")
        return None

    def _never_started(self, waited: float) -> str:
        pod = f"the collector pod {self.namespace}/{self.name} was not started within {waited:.0f}s"
        cordoned = " and cordoned" if self.node.unschedulable else ""
        if self.node.ready != "True":
            why = f" ({self.node.ready_message})" if self.node.ready_message else ""
            return f"{pod}: the node is NotReady{cordoned} (Ready={self.node.ready}{why}); its kubelet runs no pods"
        return f"{pod}: the node's kubelet did not take it (overloaded, or its kubelet is stuck?)"

    def _failed_log(self, pod: dict[str, Any]) -> bytes:
        terminated = (((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {}).get(
            "terminated") or {}
        code = terminated.get("exitCode")
        try:
            tail = self._log().decode("utf-8", "replace").strip().splitlines()[-5:]
        except CollectError:
            tail = []
        said = " | ".join(line.strip() for line in tail if line.strip())[-600:]
        said = said or terminated.get("message") or terminated.get("reason") or "no output"
        raise self._error(f"the collector pod exited with status {code}: {said}", "exit")

    def _log(self) -> bytes:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = self.api.read_namespaced_pod_log(self.name, self.namespace, container=CONTAINER,
                                                        _preload_content=False,
                                                        _request_timeout=self.request_timeout)
            return bytes(response.data)
        except ApiException as e:
            raise self._api_error(e, "reading the collector pod's log",
                                  f"get pods/log in namespace {self.namespace}") from None
        except HTTPError as e:
            raise self._error(f"reading the collector pod's log failed ({e})", "api") from None

    def close(self) -> str | None:
        """Delete the pod (a pod that is already gone is fine); a warning when it could not be deleted."""
        if not self.maybe_created:
            self.ledger.discard(self.namespace, self.name)
            return None
        return delete_pod(self.api, self.namespace, self.name, self.ledger, self.request_timeout)


def delete_pod(api: Any, namespace: str, name: str, ledger: PodLedger,
               request_timeout: tuple[float, float]) -> str | None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        api.delete_namespaced_pod(name, namespace, grace_period_seconds=0, _preload_content=False,
                                  _request_timeout=request_timeout)
    except ApiException as e:
        if e.status != 404:
            failure = ApiFailure.from_exception(e)
            why = forbidden_text(failure, f"delete pods in namespace {namespace}") if failure.forbidden else \
                f"{failure.status} {failure.message}"
            return (f"the collector pod {namespace}/{name} could not be deleted ({why}); delete it with "
                    f"`kubectl delete pod -n {namespace} {name}`")
    except HTTPError as e:
        return (f"the collector pod {namespace}/{name} could not be deleted ({e}); delete it with "
                f"`kubectl delete pod -n {namespace} {name}`")
    ledger.discard(namespace, name)
    return None
