"""Find the cluster the way kubectl does: `--kubeconfig FILE`, else `$KUBECONFIG` (several files joined by
`:` are merged), else `~/.kube/config`, else the service account of the pod iptrace runs in (in-cluster).
`--context` picks a context, else the current one. Every failure is one line (ClusterError). The kubernetes
client is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iptrace.errors import ClusterError

# Where Kubernetes mounts a pod's service account (overridable for tests).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ApiAccess:
    """A cluster to talk to: one client Configuration from which any number of ApiClients are made (the exec
    stream takes over the ApiClient it is given, so every parallel exec needs its own)."""

    configuration: Any
    server: str
    shown: str  # the kubeconfig as the user named it, or "in-cluster service account"
    context: str | None
    namespace: str | None = None  # the context's namespace (the pod's own, in-cluster)

    @property
    def where(self) -> str:
        source = self.shown if self.shown.startswith("in-cluster") else f"kubeconfig {self.shown}"
        return source + (f" context {self.context}" if self.context else "") + f" at {self.server}"

    def client(self) -> Any:
        from kubernetes import client

        return client.ApiClient(configuration=self.configuration)


def kubeconfig_path(kubeconfig: str | None) -> str:
    if kubeconfig:
        return kubeconfig
    return os.environ.get("KUBECONFIG") or os.path.join("~", ".kube", "config")


def open_api(kubeconfig: str | None, context: str | None) -> ApiAccess:
    """The cluster's ApiAccess. Connection attempts are never retried: the API server answers or not."""
    try:
        import urllib3
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError as e:  # pragma: no cover - kubernetes is a declared dependency
        raise ClusterError(f"reading a live cluster needs the kubernetes package ({e}); "
                           "pip install kubernetes") from None
    import yaml  # a dependency of kubernetes; its loader raises YAMLError for a malformed kubeconfig

    configuration = type.__call__(client.Configuration)
    configuration.retries = urllib3.util.Retry(total=0, redirect=0)
    shown = kubeconfig_path(kubeconfig)
    # kubectl skips the files of a $KUBECONFIG list that do not exist; when none does, the client would say
    # only "no configuration found", which reads as a file that exists but is wrong.
    named = [kubeconfig] if kubeconfig else [f for f in os.environ.get("KUBECONFIG", "").split(os.pathsep) if f]
    if named and not any(os.path.exists(os.path.expanduser(f)) for f in named):
        raise ClusterError(f"kubeconfig {shown} does not exist; pass --kubeconfig PATH or set KUBECONFIG")
    if not kubeconfig and not os.environ.get("KUBECONFIG") and not os.path.exists(os.path.expanduser(shown)):
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return _in_cluster(configuration, context)
        raise ClusterError(f"no kubeconfig: {shown} does not exist; pass --kubeconfig PATH or set KUBECONFIG")
    # A list in $KUBECONFIG is merged by the client itself, like kubectl does.
    path = os.path.expanduser(shown) if kubeconfig else shown
    plugin = _PluginFailures()
    try:
        # persist_config=False: never write refreshed credentials back into the user's kubeconfig.
        with plugin.heard():
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                    persist_config=False)
    except ConfigException as e:
        raise ClusterError(_config_error(shown, context, str(e))) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        raise ClusterError(f"kubeconfig {where} is not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError as e:  # (binary data, or a kubeconfig saved in another encoding)
        raise ClusterError(f"kubeconfig {shown} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                           "expected the YAML of a kubeconfig") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        # The loader indexes into the YAML without checking its shape, so a kubeconfig of the wrong shape
        # surfaces as one of these.
        raise ClusterError(f"kubeconfig {shown} cannot be used: {type(e).__name__}: {e}") from None
    if not configuration.verify_ssl:
        # The kubeconfig asks for it (insecure-skip-tls-verify): kubectl says nothing, while urllib3 would print
        # its two-line warning on stderr for every request.
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    if plugin.messages:
        raise ClusterError(f"kubeconfig {shown}: its credential plugin (the user's `exec` command) failed "
                           f"({' '.join(plugin.messages[0].split())[:300]}); run it by hand to see why, or log in "
                           "again")
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
        contexts, active = [], None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return ApiAccess(configuration, configuration.host, shown, context,
                     namespace if isinstance(namespace, str) and namespace else None)


class _PluginFailures(logging.Handler):
    """What the kubernetes client says about its exec credential plugin: it logs a failure on the root logger
    (where Python's logging would print a stray 'ERROR:root:…' line) and goes on without credentials, so that
    the API's 401 would then blame an expired token."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @contextlib.contextmanager
    def heard(self) -> Iterator[None]:
        root = logging.getLogger()
        root.addHandler(self)
        try:
            yield
        finally:
            root.removeHandler(self)


def _in_cluster(configuration: Any, context: str | None) -> ApiAccess:
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    if context:
        raise ClusterError(f"--context {context} needs a kubeconfig; inside a pod only the service account's "
                           "cluster is known")
    loader = InClusterConfigLoader(token_filename=str(SERVICE_ACCOUNT_DIR / "token"),
                                   cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt"), environ=os.environ)
    try:
        loader.load_and_set(configuration)
    except ConfigException as e:
        raise ClusterError(f"in-cluster configuration (KUBERNETES_SERVICE_HOST is set) cannot be used: {e}; "
                           "pass --kubeconfig PATH") from None
    try:
        namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
    except OSError:
        namespace = None
    return ApiAccess(configuration, configuration.host, "in-cluster service account", None, namespace)


def _config_error(shown: str, context: str | None, message: str) -> str:
    text = " ".join(message.split())
    if context and "contexts list" in text:
        return f"kubeconfig {shown} has no context {context!r}; see kubectl config get-contexts"
    if "current-context" in text:
        return f"kubeconfig {shown} sets no current-context; pass --context NAME"
    if "file is empty" in text:
        return f"kubeconfig {shown} is empty; pass --kubeconfig PATH or set KUBECONFIG"
    if "No configuration found" in text:
        return f"kubeconfig {shown} holds no configuration; pass --kubeconfig PATH or set KUBECONFIG"
    return f"kubeconfig {shown} cannot be used: {text}"


def status_message(body: Any) -> str | None:
    """`message` of a metav1.Status body, if the body is one (else its first line)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return None
    try:
        status = json.loads(body)
    except json.JSONDecodeError:
        text = body.strip()
        return text.splitlines()[0] if text else None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return status["message"]
    return None


def connection_reason(error: BaseException) -> str:
    """urllib3's reason without the connection object's repr: "connection refused", "read timed out", …"""
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    # "HTTPConnection(host='…', port=…): Failed to establish a new connection: [Errno 111] Connection refused"
    text = text.rsplit("): ", 1)[-1]
    text = text.replace("Failed to establish a new connection: ", "")
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text).strip()
    return (text[:1].lower() + text[1:]) if text else type(reason).__name__
