"""The node side of the API double (tests/apiserver.py): runs the pods it is given and the execs into pods, for
real. A node is a network namespace; a pod's container command runs as PID 1 of a fresh PID namespace inside
it (`ip netns exec NODE unshare --pid --fork --mount-proc -- …`), so the collector's `nsenter -t 1 -m -u -i -n
-p -- …` lands in that node's network namespace, with the node's real iptables, nft and conntrack (TESTING.md,
"Pods through the API"). Pod status moves like the kubelet's: Pending (ContainerCreating) → Running →
Succeeded/Failed, DeadlineExceeded at activeDeadlineSeconds, ErrImagePull/ImagePullBackOff for an image whose
name holds `unpullable`, and nothing at all on a node that is not Ready. Every process started here is
stopped by its own process group.
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What kube-proxy's image (registry.k8s.io/kube-proxy, distroless-iptables) holds: a shell and the netfilter
# tools, but no `ip`, no `conntrack`, no `head`.
KUBE_PROXY_IMAGE_TOOLS = ("sh", "cat", "grep", "wc", "iptables", "iptables-save", "ip6tables-save",
                          "iptables-legacy-save", "ip6tables", "nft")
UNPULLABLE = "unpullable"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kube_proxy_image(directory: Path) -> Path:
    """A directory of links to this machine's tools, standing in for kube-proxy's image as its PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in KUBE_PROXY_IMAGE_TOOLS:
        found = shutil.which(tool, path=SYSTEM_PATH)
        if found is not None and not (directory / tool).exists():
            (directory / tool).symlink_to(found)
    return directory


@dataclass
class FakeNode:
    """`netns`: the node's network namespace. `bin_dir`: first on the PATH of everything run on the node (stand-in
    commands, e.g. an nft that fails). `kube_proxy_path`: the PATH of an exec into its kube-proxy pod."""

    name: str
    netns: str | None
    ready: bool = True
    bin_dir: Path | None = None
    kube_proxy_path: str | None = None
    # The container runtime never creates the pod's sandbox (a FailedCreatePodSandBox or FailedMount in the events):
    # its container stays waiting, ContainerCreating.
    stuck_creating: bool = False

    def path(self) -> str:
        return f"{self.bin_dir}:{SYSTEM_PATH}" if self.bin_dir else SYSTEM_PATH

    def enter(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []


@dataclass
class _Running:
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    started: bool = False


@dataclass
class FakeKubelet:
    """Runs pods on `nodes`; `update(namespace, name, status)` writes a pod's status back into the API's store."""

    nodes: dict[str, FakeNode]
    workdir: Path
    update: Any = None  # set by the ApiServer: callable(namespace, name, status dict)
    created: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    admitted: list[dict[str, Any]] = field(default_factory=list)  # every pod as it was created
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _running: dict[tuple[str, str], _Running] = field(default_factory=dict)
    _execs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    # --- pods ---

    def admit(self, pod: dict[str, Any]) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        with self._lock:
            self.created.append(key)
            self.admitted.append(copy.deepcopy(pod))
            self.pods[key] = copy.deepcopy(pod)
            self._running[key] = _Running()
        thread = threading.Thread(target=self._run, args=(key,), name=f"kubelet-{key[1]}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _set(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        if key in self.pods and self.update is not None:
            self.update(key[0], key[1], status)

    def _run(self, key: tuple[str, str]) -> None:
        pod = self.pods[key]
        spec = pod["spec"]
        node = self.nodes.get(spec.get("nodeName", ""))
        if node is None or not node.ready:
            return  # nobody picks it up: it stays Pending, without any status, as on a NotReady node
        container = spec["containers"][0]
        started = now()
        base = {"phase": "Pending", "hostIP": "198.18.0.1", "startTime": started,
                "conditions": [{"type": "PodScheduled", "status": "True"}]}
        self._set(key, {**base, "containerStatuses": [self._container(container, {"waiting": {
            "reason": "ContainerCreating"}})]})
        if node.stuck_creating:
            return
        if UNPULLABLE in container["image"]:
            message = (f'failed to pull and unpack image "{container["image"]}": failed to resolve reference '
                       f'"{container["image"]}": not found')
            self._set(key, {**base, "containerStatuses": [self._container(container, {"waiting": {
                "reason": "ErrImagePull", "message": f"rpc error: code = NotFound desc = {message}"}})]})
            time.sleep(0.05)
            self._set(key, {**base, "containerStatuses": [self._container(container, {"waiting": {
                "reason": "ImagePullBackOff", "message": f'Back-off pulling image "{container["image"]}"'}})]})
            return
        log = self.workdir / f"{key[0]}_{key[1]}.log"
        argv = [*container.get("command", []), *container.get("args", [])]
        command = [*node.enter(), "unshare", "--pid", "--fork", "--mount-proc", "--", "env", "-i",
                   f"PATH={node.path()}", *argv]
        with self._lock:
            running = self._running.get(key)
            if running is None:  # deleted before it started
                return
            with open(log, "wb") as handle:
                running.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
            running.log, running.started = log, True
        self._set(key, {**base, "phase": "Running", "containerStatuses": [self._container(container, {
            "running": {"startedAt": started}}, ready=True)]})
        deadline = spec.get("activeDeadlineSeconds")
        try:
            code = running.process.wait(timeout=deadline)
            reason = None
        except subprocess.TimeoutExpired:
            _kill(running.process)
            code, reason = 137, "DeadlineExceeded"
        if key not in self.pods:
            return
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": started,
                      "finishedAt": now()}
        status = {**base, "phase": "Succeeded" if code == 0 else "Failed",
                  "containerStatuses": [self._container(container, {"terminated": terminated})]}
        if reason:
            status.update(reason=reason, message="Pod was active on the node longer than the specified deadline")
        self._set(key, status)

    @staticmethod
    def _container(container: dict[str, Any], state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": ready,
                "restartCount": 0, "started": "running" in state, "state": state}

    def log(self, namespace: str, name: str) -> bytes | None:
        """The container's output so far (stdout and stderr merged, as the kubelet serves them); None before the
        container started."""
        running = self._running.get((namespace, name))
        if running is None or not running.started or running.log is None:
            return None
        return running.log.read_bytes()

    def delete(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._lock:
            self.deleted.append(key)
            self.pods.pop(key, None)
            running = self._running.pop(key, None)
        if running is not None and running.process is not None:
            _kill(running.process)

    # --- exec ---

    def exec(self, pod: dict[str, Any], argv: list[str]) -> subprocess.Popen[bytes] | str:
        """The started command, or the container runtime's error when it cannot be started."""
        node = self.nodes.get(pod["spec"].get("nodeName", ""))
        if node is None:
            return "pod has no node"
        path = node.kube_proxy_path or node.path()
        if not argv or shutil.which(argv[0], path=path) is None:
            return (f'Internal error occurred: error executing command in container: failed to exec in container: '
                    f'failed to start exec: OCI runtime exec failed: exec failed: unable to start container '
                    f'process: exec: "{argv[0] if argv else ""}": executable file not found in $PATH: unknown')
        process = subprocess.Popen([*node.enter(), "env", "-i", f"PATH={path}", *argv], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        with self._lock:
            self._execs.append(process)
        return process

    # --- teardown ---

    def running_processes(self) -> list[int]:
        with self._lock:
            processes = [r.process for r in self._running.values() if r.process is not None] + self._execs
        return [p.pid for p in processes if p.poll() is None]

    def stop(self) -> None:
        with self._lock:
            processes = [r.process for r in self._running.values() if r.process is not None] + self._execs
        for process in processes:
            _kill(process)
        for thread in self._threads:
            thread.join(timeout=10)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
