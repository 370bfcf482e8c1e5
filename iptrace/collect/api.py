"""Collect through the Kubernetes API, for clusters without SSH to their nodes. Per node, `auto` first runs the
shared node-side script (commands) inside the node's own kube-proxy pod (api_exec), and falls back to a
short-lived privileged collector pod (api_pod) when the node has no kube-proxy pod or the exec is refused.
The output is stored exactly like an SSH collection (gather, store; meta.json says `"via": "api"`).

Bad input (no such context, node or namespace) is an InputError/ClusterError before anything is created or
written; a node's failure is in its result, never raised. Every collector pod is deleted, also when the caller
is interrupted (KeyboardInterrupt, or SIGTERM turned into one by the CLI). Library code: no printing.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iptrace.collect import store
from iptrace.collect.api_exec import (
    KUBE_PROXY_DOWN,
    KUBE_PROXY_NAMESPACE,
    KUBE_PROXY_SELECTOR,
    ExecRefused,
    KubeProxyPod,
    kube_proxy_pods,
    run_exec,
)
from iptrace.collect.api_pod import DEFAULT_IMAGE, NodeInfo, PodLedger, PodRun, deadline_seconds, delete_pod
from iptrace.collect.api_status import ApiFailure, forbidden_text
from iptrace.collect.commands import (
    DEFAULT_CONNTRACK_MAX_ENTRIES,
    DEFAULT_LISTING_TIMEOUT,
    NSENTER_HOST,
    Invocation,
    StepClock,
    parse_batch,
    worst_case_seconds,
)
from iptrace.collect.gather import NodeResult, Runner, gather, stopped_early
from iptrace.collect.kubeconfig import ApiAccess, connection_reason, open_api
from iptrace.collect.workers import run_parallel
from iptrace.errors import ClusterError, CollectError, InputError

__all__ = ["DEFAULT_IMAGE", "ERROR_KINDS", "METHODS", "collect_api"]

METHODS = ("auto", "exec", "pod")
ERROR_KINDS = ("forbidden", "pod-security", "image-pull", "not-started", "rejected", "exit", "timeout", "exec",
               "api", "unsupported", "command", "command-missing", "permission")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A Node's name as the API server validates it (a DNS-1123 subdomain, at most 253 characters).
_NODE_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")


@dataclass(frozen=True)
class _Plan:
    access: ApiAccess
    out_dir: Path
    method: str
    namespace: str
    image: str
    timeout: float
    listing_timeout: float
    conntrack_cap: int
    kube_proxy: dict[str, KubeProxyPod]
    exec_unavailable: tuple[str, str] | None  # (why, error kind) when kube-proxy's pods cannot be listed
    ledger: PodLedger
    cancel: threading.Event


def collect_api(nodes: Sequence[str], *, out_dir: Path, kubeconfig: str | None = None, context: str | None = None,
                selector: str | None = None, pod_namespace: str | None = None, image: str = DEFAULT_IMAGE,
                method: str = "auto", parallel: int = 10, timeout: float = 30.0,
                listing_timeout: float = DEFAULT_LISTING_TIMEOUT,
                conntrack_max_entries: int = DEFAULT_CONNTRACK_MAX_ENTRIES,
                progress: Callable[[NodeResult], None] | None = None,
                cancel: threading.Event | None = None) -> list[NodeResult]:
    """Collect `nodes` (Kubernetes node names; none: every node, or those matching `selector`) into
    `out_dir/NODE/`, `parallel` at a time. `pod_namespace` None means the context's namespace. Returns one
    NodeResult per node in order. `timeout` bounds each API request, each command, and the wait for a node to
    start its pod; the listings get at least `listing_timeout`."""
    if method not in METHODS:
        raise InputError(f"--api-method must be one of {', '.join(METHODS)}, not {method!r}")
    if parallel < 1:
        raise InputError(f"--parallel must be at least 1, not {parallel}")
    # (nan passes `<= 0` and inf overflows the request timeouts)
    if not all(0 < t < math.inf for t in (timeout, listing_timeout)):
        raise InputError("timeouts must be positive numbers of seconds")
    if conntrack_max_entries < 0:
        raise InputError(f"--conntrack-max-entries must be 0 (no cap) or more, not {conntrack_max_entries}")
    if not _IMAGE.fullmatch(image):
        raise InputError(f"bad --image {image!r}; expected an image reference like {DEFAULT_IMAGE}")
    if pod_namespace is not None and not _DNS_LABEL.fullmatch(pod_namespace):
        raise InputError(f"bad --pod-namespace {pod_namespace!r}; a namespace is a DNS label (a-z, 0-9, -)")
    duplicates = sorted({n for n in nodes if list(nodes).count(n) > 1})
    if duplicates:
        raise InputError(f"node {duplicates[0]!r} is given twice")
    access = open_api(kubeconfig, context)
    namespace = pod_namespace or access.namespace or "default"
    api_client = access.client()
    try:
        from kubernetes import client

        api = client.CoreV1Api(api_client)
        targets = _choose_nodes(api, access, nodes, selector, timeout)
        kube_proxy: dict[str, KubeProxyPod] = {}
        exec_unavailable = None
        if method != "pod":
            kube_proxy, exec_unavailable = _kube_proxy_pods(api, access, timeout)
        if method != "exec":
            _check_namespace(api, access, namespace, image, timeout)
    finally:
        api_client.close()
    out_dir = Path(out_dir)
    try:
        store.ensure_private_dir(out_dir, tighten=False)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output directory ({exc.strerror})") from exc
    plan = _Plan(access, out_dir, method, namespace, image, float(timeout), float(listing_timeout),
                 conntrack_max_entries, kube_proxy, exec_unavailable, PodLedger(), cancel or threading.Event())
    return _run_all(plan, targets, parallel, progress)


# ----------------------------------------------------------------------------------------- before anything

def _list(api_call: Callable[..., Any], access: ApiAccess, what: str, permission: str, timeout: float,
          **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a list call, page by page; failures are one-line ClusterErrors."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    items: list[dict[str, Any]] = []
    token: str | None = None
    seen: set[str] = set()
    while True:
        try:
            response = api_call(limit=500, _continue=token, _preload_content=False,
                                _request_timeout=(timeout, timeout), **kwargs)
            doc = json.loads(response.data)
        except ApiException as e:
            failure = ApiFailure.from_exception(e)
            if failure.status == 401:
                raise ClusterError(f"unauthorized: the credentials of {access.where} were rejected (expired "
                                   "token?); log in again or choose another --context") from None
            if failure.forbidden:
                raise ClusterError(f"listing {what} at {access.server}: "
                                   f"{forbidden_text(failure, permission)}") from None
            raise ClusterError(f"listing {what} at {access.server} failed ({failure.status} {failure.reason}: "
                               f"{failure.message})") from None
        except HTTPError as e:
            raise ClusterError(f"cannot reach the API server at {access.server}: {connection_reason(e)}") from None
        except ValueError:
            raise ClusterError(f"listing {what} at {access.server}: the answer is not JSON; is it a Kubernetes "
                               "API server?") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("items") or [], list):
            raise ClusterError(f"listing {what} at {access.server}: the answer is JSON but no list (a "
                               f"{type(doc).__name__}, not an object with items); is it a Kubernetes API server?")
        items += [i for i in doc.get("items") or [] if isinstance(i, dict)]
        meta = doc.get("metadata")
        token = (meta.get("continue") if isinstance(meta, dict) else None) or None
        if not token:
            return items
        # A server (or proxy) that answers with a token it gave before would have this loop list for ever.
        if not isinstance(token, str) or token in seen:
            raise ClusterError(f"listing {what} at {access.server}: the API server repeated a continue token (page "
                               f"{len(seen) + 1}); the list never ends")
        seen.add(token)


def _choose_nodes(api: Any, access: ApiAccess, names: Sequence[str], selector: str | None,
                  timeout: float) -> list[NodeInfo]:
    kwargs = {"label_selector": selector} if selector else {}
    listed = _list(api.list_node, access, "nodes", "list nodes at cluster scope", timeout, **kwargs)
    known = {info.name: info for info in map(_node_info, listed)}
    matching = f" matching -l {selector}" if selector else ""
    for name in names:
        if name not in known:
            some = ", ".join(sorted(known)[:5]) + (", …" if len(known) > 5 else "")
            raise InputError(f"node {name!r} is not a node{matching} of the cluster at {access.server} "
                             f"({'its nodes: ' + some if known else 'it lists no nodes'}); see kubectl get nodes")
    if not names and not known:
        raise InputError(f"no node{matching} in the cluster at {access.server}")
    return [known[n] for n in names] if names else [known[n] for n in sorted(known)]


def _node_info(node: dict[str, Any]) -> NodeInfo:
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return NodeInfo(name=str(meta.get("name")), ready=str(ready.get("status") or "Unknown"),
                    ready_message=str(ready.get("message") or ""),
                    os=str((meta.get("labels") or {}).get("kubernetes.io/os") or "linux"),
                    unschedulable=bool((node.get("spec") or {}).get("unschedulable")))


def _kube_proxy_pods(api: Any, access: ApiAccess,
                     timeout: float) -> tuple[dict[str, KubeProxyPod], tuple[str, str] | None]:
    try:
        items = _list(api.list_namespaced_pod, access, f"kube-proxy's pods in {KUBE_PROXY_NAMESPACE}",
                      f"list pods in namespace {KUBE_PROXY_NAMESPACE}", timeout, namespace=KUBE_PROXY_NAMESPACE,
                      label_selector=KUBE_PROXY_SELECTOR)
    except ClusterError as e:
        return {}, (str(e), "forbidden" if "forbidden" in str(e) else "api")
    return kube_proxy_pods(items), None


def _check_namespace(api: Any, access: ApiAccess, namespace: str, image: str, timeout: float) -> None:
    """A dry-run create of a collector pod: a namespace that does not exist is bad input, said once, before
    anything is created. Other refusals (RBAC, PodSecurity) are per node and are said there."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from iptrace.collect.api_pod import pod_manifest

    manifest = pod_manifest("iptrace-collector-dry-run", "dry-run", namespace, image, ("true",), 60)
    del manifest["spec"]["nodeName"]
    try:
        api.create_namespaced_pod(namespace, manifest, dry_run="All", _preload_content=False,
                                  _request_timeout=(timeout, timeout))
    except ApiException as e:
        failure = ApiFailure.from_exception(e)
        if failure.status == 404 and "namespace" in failure.message:
            raise InputError(f"namespace {namespace!r} does not exist in the cluster at {access.server} "
                             "(--pod-namespace); create it or pass another") from None
    except HTTPError as e:
        raise ClusterError(f"cannot reach the API server at {access.server}: {connection_reason(e)}") from None


# ----------------------------------------------------------------------------------------------- the nodes

def _run_all(plan: _Plan, targets: list[NodeInfo], parallel: int,
             progress: Callable[[NodeResult], None] | None) -> list[NodeResult]:
    try:
        return run_parallel(targets, lambda node: _collect_node(plan, node), parallel, plan.cancel, progress,
                            "iptrace-api")
    except BaseException:
        _clean_up(plan)
        raise


def _clean_up(plan: _Plan) -> None:
    """Interrupted (every node's work has stopped and deleted its own pod): delete whatever is left."""
    api_client = plan.access.client()
    try:
        from kubernetes import client

        api = client.CoreV1Api(api_client)
        for namespace, name in plan.ledger.remaining():
            while True:
                try:
                    delete_pod(api, namespace, name, plan.ledger, (plan.timeout, plan.timeout))
                    break
                except KeyboardInterrupt:
                    continue
    finally:
        api_client.close()


def _collect_node(plan: _Plan, node: NodeInfo) -> NodeResult:
    started = time.monotonic()
    collected_at = datetime.now(UTC).isoformat(timespec="seconds")
    warnings: list[str] = []
    notes: list[str] = []
    no_exec = ""  # why auto's exec could not run, when it falls back to a pod
    try:
        if not _NODE_NAME.fullmatch(node.name):
            # The name becomes a directory under --out: only a name the API server could have stored is one.
            raise CollectError(f"{node.name!r}: the API server lists a node of this name, which is no Kubernetes "
                               "node name (a DNS subdomain); not collected", kind="unsupported", node=node.name)
        if node.os != "linux":
            raise CollectError(f"{node.name}: a {node.os} node has no iptables rules of kube-proxy to collect",
                               kind="unsupported", node=node.name)
        boundary = f"iptrace-{secrets.token_hex(16)}"
        output: bytes | None = None
        said, used, where = b"", "", ""
        timed_out: str | None = None
        if plan.method != "pod":
            output, said, where, problem = _try_exec(plan, node, boundary)
            if output is not None:
                used = "exec"
                timed_out = problem[0] or None
            elif plan.method == "exec":
                raise CollectError(f"{node.name}: {problem[0]}", kind=problem[1], node=node.name)
            else:
                no_exec = problem[0]
                notes.append(f"collected with a collector pod: {no_exec}")
        if output is None:
            output, where = _run_pod(plan, node, boundary, warnings)
            used = "pod"
        gathered = _gather(output, said, boundary, node.name, used, plan.conntrack_cap, timed_out)
        meta = {**gathered.meta, "via": "api", "method": used, "pod": where,
                "image": plan.image if used == "pod" else plan.kube_proxy[node.name].image,
                "server": plan.access.server, "context": plan.access.context, "collected_at": collected_at,
                "duration_s": round(time.monotonic() - started, 3)}
        meta["notes"] = notes + meta["notes"]
        kube_proxy = plan.kube_proxy.get(node.name)
        if kube_proxy is not None and kube_proxy.down is not None:  # (for audit: its rules are as it left them)
            meta["kube_proxy_down"] = f"{KUBE_PROXY_NAMESPACE}/{kube_proxy.name}: {kube_proxy.down}"
        meta["errors"] = meta["errors"] + warnings
        files = store.write_node_dir(plan.out_dir / node.name, gathered.dumps, meta)
    except CollectError as exc:
        # (a collector pod that fails says why it was the way tried: exec into kube-proxy's pod was none)
        fallback = f" (a collector pod, as exec could not run: {no_exec})" if no_exec and exc.kind != "cancelled" \
            else ""
        message = str(exc) + fallback + "".join(f"; {w}" for w in warnings)
        if exc.kind not in ("cancelled", "unsupported"):
            store.mark_failed(plan.out_dir, node.name, message)
        return NodeResult(node.name, False, exc.kind, message, (), time.monotonic() - started, target=node)
    except OSError as exc:
        message = f"{node.name}: cannot write {exc.filename or plan.out_dir}: {exc.strerror}"
        return NodeResult(node.name, False, "api", message, (), time.monotonic() - started, target=node)
    return NodeResult(node.name, True, None, None, tuple(files), time.monotonic() - started,
                      tuple(meta["errors"]), tuple(meta["notes"]), target=node)


def _try_exec(plan: _Plan, node: NodeInfo,
              boundary: str) -> tuple[bytes | None, bytes, str, tuple[str, str]]:
    """(stdout, stderr, pod, ("", "")) when the exec ran, (stdout so far, stderr, pod, (why, "timeout")) when a
    listing was stopped at its time; (None, b"", "", (why not, error kind)) when it could not run."""
    if plan.exec_unavailable is not None:
        return None, b"", "", plan.exec_unavailable
    pod = plan.kube_proxy.get(node.name)
    if pod is None:
        return None, b"", "", (f"no running kube-proxy pod ({KUBE_PROXY_SELECTOR} in {KUBE_PROXY_NAMESPACE}) on "
                               "the node", "exec")
    if pod.down is not None:
        # (no exec into a container that is not running; and its rules are as it last wrote them)
        return None, b"", "", (f"{KUBE_PROXY_DOWN} ({KUBE_PROXY_NAMESPACE}/{pod.name}: {pod.down}); `kubectl logs "
                               f"-n {KUBE_PROXY_NAMESPACE} {pod.name} --previous` says why", "exec")
    from kubernetes import client

    invocation = Invocation(conntrack_cap=plan.conntrack_cap)
    clock = StepClock(boundary, plan.timeout, plan.listing_timeout, time.monotonic())
    # NOTE: the exec stream takes over the ApiClient it is given: one per exec.
    api_client = plan.access.client()
    try:
        stdout, stderr, timed_out = run_exec(client.CoreV1Api(api_client), pod, invocation.argv(boundary), clock,
                                             plan.cancel)
    except ExecRefused as e:
        if e.kind == "cancelled":
            raise CollectError(f"{node.name}: interrupted", kind="cancelled", node=node.name) from None
        return None, b"", "", (str(e), e.kind)
    finally:
        api_client.close()
    if timed_out is not None and parse_batch(stdout, boundary).running is None:
        raise CollectError(f"{node.name}: {clock.describe()} {timed_out}", kind="timeout", node=node.name)
    return stdout, stderr, f"{KUBE_PROXY_NAMESPACE}/{pod.name}", (timed_out or "", "timeout" if timed_out else "")


def _run_pod(plan: _Plan, node: NodeInfo, boundary: str, warnings: list[str]) -> tuple[bytes, str]:
    from kubernetes import client

    invocation = Invocation(host=NSENTER_HOST, conntrack_cap=plan.conntrack_cap, compress=True)
    deadline = deadline_seconds(worst_case_seconds(plan.timeout, plan.listing_timeout))
    api_client = plan.access.client()
    run = PodRun(client.CoreV1Api(api_client), node, plan.namespace, plan.image, invocation.argv(boundary),
                 deadline, plan.timeout, plan.timeout, plan.ledger, plan.cancel, offer_exec=plan.method == "pod")
    try:
        return run.run(), f"{plan.namespace}/{run.name}"
    finally:
        problem = run.close()
        if problem is not None:
            warnings.append(problem)
        api_client.close()


def _gather(output: bytes, said: bytes, boundary: str, node: str, used: str, cap: int,
            timed_out: str | None = None) -> Any:
    """`said`: the exec's stderr (a pod's log holds both streams already); `timed_out`: why the exec was stopped
    before its end."""
    batch = parse_batch(output, boundary)
    kind = "exit"
    if batch.encoding is None:
        text = (output + b"\n" + said).decode("utf-8", "replace")
        tail = " | ".join(text.strip().splitlines()[-3:])[-300:]
        raise CollectError(f"{node}: the collector's shell did not run the commands "
                           f"({tail or 'it printed nothing'})", kind=kind, node=node)
    if batch.cut:
        raise CollectError(f"{node}: the collector pod's log is cut short (the kubelet rotates container logs at "
                           "its containerLogMaxSize, 10 MiB by default; the compressed output was larger)",
                           kind=kind, node=node)
    if batch.running is not None:
        ended = "the exec stream closed" if used == "exec" else "the collector pod's log ends"
        batch = stopped_early(batch, node, timed_out or f"stopped: {ended} while it ran",
                              "timeout" if timed_out else kind)
    return gather(batch, node, Runner(used), conntrack_cap=cap)
