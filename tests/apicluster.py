"""A whole fake cluster for `collect --via api`: nodes that are network namespaces holding real iptables and
nftables rules, addresses and a conntrack entry; the API double over HTTPS with a FakeKubelet that runs pods and
execs in them; kube-proxy pods; a real kubeconfig. `stop()` tears everything down and reports what was left
(pods the double saw created but never deleted, processes still running)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from tests.apiserver import ApiServer, Grant, write_kubeconfig
    from tests.kubelet import FakeKubelet, FakeNode, kube_proxy_image
    from tests.sshd import SAMPLE_DUMP, SAMPLE_DUMP6, SAMPLE_NFT
except ImportError:  # pytest's rootdir is not on sys.path: tests/ itself is
    from apiserver import ApiServer, Grant, write_kubeconfig  # type: ignore[no-redef]
    from kubelet import FakeKubelet, FakeNode, kube_proxy_image  # type: ignore[no-redef]
    from sshd import SAMPLE_DUMP, SAMPLE_DUMP6, SAMPLE_NFT  # type: ignore[no-redef]

KUBE_PROXY_IMAGE = "registry.k8s.io/kube-proxy:v1.33.1"
ADMIN = Grant("admin")


def can_make_nodes() -> str | None:
    """None when namespaces can be made here, else why not (the skip reason)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nsenter)"
    missing = [t for t in ("ip", "iptables-restore", "nft", "conntrack", "unshare", "nsenter") if not shutil.which(t)]
    return f"needs {', '.join(missing)}" if missing else None


def node_object(name: str, ip: str, ready: bool = True, os_name: str = "linux") -> dict[str, Any]:
    condition = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready "
                 "status"} if ready else {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                          "message": "Kubelet stopped posting node status."}
    # A node that stopped posting status is usually cordoned by its operator too.
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": os_name}},
            "spec": {"podCIDR": "198.18.128.0/24", **({} if ready else {"unschedulable": True})},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                       "conditions": [condition]}}


def kube_proxy_pod(node: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": f"kube-proxy-{node[-5:]}", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-proxy"}, "creationTimestamp": "2025-01-06T10:00:00Z"},
            "spec": {"nodeName": node, "hostNetwork": True,
                     "containers": [{"name": "kube-proxy", "image": KUBE_PROXY_IMAGE,
                                     "securityContext": {"privileged": True}}]},
            "status": {"phase": phase}}


@dataclass
class FakeCluster:
    root: Path
    nodes: list[FakeNode] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    server: ApiServer | None = None
    kubeconfig: Path | None = None

    def add_node(self, name: str, *, netns: bool = True, ready: bool = True, kube_proxy: bool = True,
                 bin_scripts: dict[str, str] | None = None, os_name: str = "linux",
                 stuck_creating: bool = False) -> FakeNode:
        index = len(self.nodes) + 1
        ip = f"198.18.0.{index}"
        ns = None
        if netns:
            ns = f"ipt-{os.getpid()}-{time.monotonic_ns() % 100000}-{index}"
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            # No dummy module here: a veth pair with both ends inside the node stands in for its NIC.
            _run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            rules = (SAMPLE_DUMP % {"ip": ip}).replace(f"# node {ip}\n", "")
            # Each node's own mark, so a test can tell whose rules it got.
            rules = rules.replace("COMMIT", f"-A INPUT -s {ip}/32 -m comment --comment \"node {name}\" -j ACCEPT\n"
                                  "COMMIT", 1)
            _run("ip", "netns", "exec", ns, "iptables-restore", stdin=rules)
            _run("ip", "netns", "exec", ns, "ip6tables-restore", stdin=SAMPLE_DUMP6)
            _run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=SAMPLE_NFT + f"table inet node-{name} {{\n}}\n")
            _run("ip", "netns", "exec", ns, "conntrack", "-I", "-p", "udp", "-s", "198.18.0.200", "-d",
                 "198.19.0.10", "--sport", str(40000 + index), "--dport", "53", "-t", "300")
        bin_dir = None
        if bin_scripts:
            bin_dir = self.root / f"bin-{name}"
            bin_dir.mkdir(parents=True)
            for script, text in bin_scripts.items():
                (bin_dir / script).write_text(text)
                (bin_dir / script).chmod(0o755)
        image_dir = kube_proxy_image(self.root / "kube-proxy-image")
        node = FakeNode(name, ns, ready=ready, bin_dir=bin_dir,
                        kube_proxy_path=f"{bin_dir}:{image_dir}" if bin_dir else str(image_dir),
                        stuck_creating=stuck_creating)
        node.kube_proxy = kube_proxy  # type: ignore[attr-defined]
        node.ip = ip  # type: ignore[attr-defined]
        node.os_name = os_name  # type: ignore[attr-defined]
        self.nodes.append(node)
        return node

    def start(self, tokens: dict[str, Grant] | None = None, namespaces: dict[str, dict[str, str]] | None = None,
              extra_pods: list[dict[str, Any]] | None = None) -> ApiServer:
        tokens = tokens or {"admin-token": ADMIN}
        kubelet = FakeKubelet({n.name: n for n in self.nodes}, self.root)
        objects: dict[str, list[dict[str, Any]]] = {
            "Node": [node_object(n.name, n.ip, n.ready, n.os_name) for n in self.nodes],  # type: ignore[attr-defined]
            "Pod": [kube_proxy_pod(n.name) for n in self.nodes if n.kube_proxy] + (extra_pods or []),  # type: ignore[attr-defined]
        }
        if namespaces is None:
            namespaces = {"default": {}, "kube-system": {}, "iptrace": {}}
        self.server = ApiServer(objects=objects, tokens=tokens, tls=True, kubelet=kubelet, namespaces=namespaces)
        self.server.start()
        users = {grant.user: token for token, grant in tokens.items()}
        self.kubeconfig = write_kubeconfig(self.root / "kubeconfig", self.server.url, users,
                                           ca_pem=self.server.ca_pem)
        return self.server

    def leftovers(self) -> list[str]:
        """What a collection left behind in the cluster (should be nothing)."""
        assert self.server is not None and self.server.kubelet is not None
        kubelet = self.server.kubelet
        problems = [f"pod {ns}/{name} created but never deleted"
                    for ns, name in sorted(set(kubelet.created) - set(kubelet.deleted))]
        problems += [f"pod {p['metadata']['namespace']}/{p['metadata']['name']} still stored"
                     for p in self.server.collector_pods()]
        deadline = time.monotonic() + 5
        while kubelet.running_processes() and time.monotonic() < deadline:
            time.sleep(0.02)
        problems += [f"process {pid} still running" for pid in kubelet.running_processes()]
        return problems

    def stop(self) -> None:
        if self.server is not None:
            if self.server.kubelet is not None:
                self.server.kubelet.stop()
            self.server.stop()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        self.namespaces.clear()


def _run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, input=stdin.encode() if stdin is not None else None)
