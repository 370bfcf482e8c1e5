"""A synthesized fleet: every node of one cluster as kube-proxy (bench.synth) and a flannel-like CNI program it.

The nodes share the Services but never the whole file, as real nodes do: each node has its own address, its
own pod CIDR (10.244.N.0/24, which its CNI rules name), its own local endpoints (those in its pod CIDR: the
KUBE-SVL chains and "has no local endpoints" rules of Local traffic policies differ), and its own order of
KUBE-SERVICES (kube-proxy writes it in Go map order). kube-proxy's local-traffic detector uses the cluster
CIDR (--detect-local-mode=ClusterCIDR, the default), the same on every node. Test and benchmark tooling: no
iptrace errors, no I/O except `write_fleet`.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from pathlib import Path

from bench import synth

CLUSTER_CIDR = "10.244.0.0/16"
_NODEPORTS_JUMP = "-j KUBE-NODEPORTS"


def node_name(i: int) -> str:
    return f"node-{i:03d}"


def node_ip(i: int) -> str:
    return f"192.168.{i // 200}.{i % 200 + 10}"


def pod_cidr(i: int) -> str:
    return f"10.244.{i}.0/24"


def cni_rules(i: int) -> str:
    """flannel's masquerade and forward rules (flannel's iptables.go MasqRules/ForwardRules) for node `i`."""
    node, cluster = pod_cidr(i), CLUSTER_CIDR
    masq = '-m comment --comment "flanneld masq"'
    fwd = '-m comment --comment "flanneld forward"'
    return "\n".join([
        "*nat", ":FLANNEL-POSTRTG - [0:0]",
        f"-A POSTROUTING {masq} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {node} -d {cluster} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {cluster} -d {node} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {cluster} -d {node} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {cluster} ! -d 224.0.0.0/4 {masq} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} {masq} -j MASQUERADE --random-fully",
        "COMMIT", "*filter", ":FLANNEL-FWD - [0:0]",
        f"-A FORWARD {fwd} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s {cluster} {fwd} -j ACCEPT",
        f"-A FLANNEL-FWD -d {cluster} {fwd} -j ACCEPT",
        "COMMIT", "",
    ])


def shuffle_services(text: str, seed: int) -> str:
    """The nat table's KUBE-SERVICES rules in another order (the NodePorts jump stays last, as kube-proxy
    writes it)."""
    lines = text.split("\n")
    in_nat = False
    positions: list[int] = []
    for i, line in enumerate(lines):
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif in_nat and line.startswith("-A KUBE-SERVICES ") and not line.endswith(_NODEPORTS_JUMP):
            positions.append(i)
    rules = [lines[i] for i in positions]
    random.Random(seed).shuffle(rules)
    for i, rule in zip(positions, rules, strict=True):
        lines[i] = rule
    return "\n".join(lines)


def node_dump(services: Sequence[synth.ServiceSpec], i: int, *, seed: int = 0, comments: bool | None = True,
              era: str = "current", extra: str = "") -> str:
    """Node `i`'s iptables-save: its local endpoints are those in its pod CIDR (or its own address); `extra`
    is more iptables-save text for it (synth.render's `extra`)."""
    net = ipaddress.ip_network(pod_cidr(i))
    for svc in services:
        for ep in svc.endpoints:
            ep.local = ipaddress.ip_address(ep.ip) in net or ep.ip == node_ip(i)
    text = synth.render(services, node_ips=[node_ip(i)], pod_cidr=CLUSTER_CIDR, comments=comments, era=era,
                        extra=cni_rules(i) + extra)
    return shuffle_services(text, seed * 1_000_003 + i)


def write_node(root: Path, services: Sequence[synth.ServiceSpec], i: int, *, seed: int = 0,
               comments: bool | None = True) -> Path:
    """DIR/NODE as `iptrace collect` writes it (iptables-save.txt + meta.json)."""
    from iptrace.collect import store

    path = root / node_name(i)
    store.write_node_dir(path, {store.DUMP_FILE: node_dump(services, i, seed=seed, comments=comments).encode()},
                         {"node": node_name(i), "host": node_ip(i), "addresses": [node_ip(i)]})
    return path


def write_fleet(root: Path, nodes: int, services: int, endpoints: int = 10, *, seed: int = 0) -> Path:
    """A collection directory of `nodes` nodes of a synth.scale(services, endpoints) cluster."""
    specs = synth.scale(services, endpoints, seed)
    for i in range(nodes):
        write_node(root, specs, i, seed=seed)
    return root
