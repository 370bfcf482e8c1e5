"""Regenerate sample_dumps/: render each scenario with bench.synth, load it into a fresh network namespace with
iptables-nft-restore and save it back with iptables-nft-save, which is what a real node prints.

Run as root from the repository root: `python -m bench.make_samples [--out sample_dumps] [NAME...]`.
Also writes sample_dumps/scenarios.json (the Services each dump was generated from) and README.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import netns
from bench.synth import EndpointSpec, PortSpec, ServiceSpec, expected_service_ports, render, scale

NFACCT = ["localhost_nps_accepted_pkts", "ct_state_invalid_dropped_pkts"]


@dataclass
class Scenario:
    file: str
    description: str
    services: list[ServiceSpec]
    node_ips: list[str]
    pod_cidr: str | None
    options: dict[str, Any] = field(default_factory=dict)  # further render() keywords
    handwritten: str = ""  # a dump that is not kube-proxy's (loaded as is)
    legacy: str = ""  # for the split-backend scenario: the full dump kube-proxy wrote through iptables-legacy
    ipsets: dict[str, list[str]] = field(default_factory=dict)  # ipset type -> names the extra rules match

    @property
    def ipv6(self) -> bool:
        return bool(self.options.get("ipv6"))


# ------------------------------------------------------------------------------------------------ services


def cluster_basics(node_ip: str, dns_endpoints: list[str], *, local_dns: bool = True,
                   service_net: str = "10.96.0.") -> list[ServiceSpec]:
    """What every kubeadm cluster has: the apiserver Service and CoreDNS."""
    v6 = ":" in node_ip
    kubernetes_ip = "fd00:10:96::1" if v6 else f"{service_net}1"
    dns_ip = "fd00:10:96::a" if v6 else f"{service_net}10"
    return [
        ServiceSpec("default", "kubernetes", kubernetes_ip, [PortSpec("https", 443, target_port=6443)],
                    endpoints=[EndpointSpec(node_ip, 6443)]),
        ServiceSpec("kube-system", "kube-dns", dns_ip,
                    [PortSpec("dns", 53, "UDP", target_port=53), PortSpec("dns-tcp", 53, "TCP", target_port=53),
                     PortSpec("metrics", 9153, "TCP", target_port=9153)],
                    endpoints=[EndpointSpec(ip, 53, local=local_dns) for ip in dns_endpoints]),
    ]


MINIKUBE_NODE = "192.168.49.2"
MINIKUBE_PODS = "10.244.0.0/16"
MINIKUBE_DNS = ["10.244.0.2", "10.244.0.3"]


def fb_backends() -> list[ServiceSpec]:
    return [
        *cluster_basics(MINIKUBE_NODE, MINIKUBE_DNS),
        ServiceSpec("default", "fb-backends", "10.101.234.168",
                    [PortSpec("ka-port", 5001, "TCP", node_port=30904, target_port=8001)], type="NodePort",
                    endpoints=[EndpointSpec("10.244.1.7", 8001), EndpointSpec("10.244.2.3", 8001)]),
        ServiceSpec("default", "karma-daemon", "10.106.199.236",
                    [PortSpec("http", 80, "TCP", node_port=32488, target_port=8080),
                     PortSpec("ftp", 2121, "TCP", node_port=32461, target_port=2121)], type="NodePort",
                    endpoints=[EndpointSpec("10.244.1.9", 8080), EndpointSpec("10.244.2.5", 8080)]),
    ]


def ingress(endpoints: list[EndpointSpec]) -> ServiceSpec:
    return ServiceSpec("ingress-nginx", "ingress-nginx-controller", "10.103.45.67",
                       [PortSpec("http", 80, node_port=31080, target_port=80),
                        PortSpec("https", 443, node_port=31443, target_port=443)],
                       type="LoadBalancer", lb_ips=["192.168.49.240"], external_traffic_policy="Local",
                       health_check_node_port=32101, endpoints=endpoints)


def xlb_services() -> list[ServiceSpec]:
    node_ip = "172.31.10.20"
    return [
        *cluster_basics(node_ip, ["10.244.3.2", "10.244.0.5"], local_dns=False),
        ServiceSpec("ingress-nginx", "ingress-nginx-controller", "10.103.45.67",
                    [PortSpec("http", 80, node_port=31080, target_port=80),
                     PortSpec("https", 443, node_port=31443, target_port=443)],
                    type="LoadBalancer", lb_ips=["52.14.88.201"], external_traffic_policy="Local",
                    health_check_node_port=32101,
                    endpoints=[EndpointSpec("10.244.3.11", 80, local=True), EndpointSpec("10.244.1.8", 80)]),
        ServiceSpec("monitoring", "grafana", "10.100.200.7", [PortSpec("service", 3000, node_port=30300,
                                                                       target_port=3000)],
                    type="LoadBalancer", lb_ips=["52.14.88.202"], external_traffic_policy="Local",
                    health_check_node_port=32102, endpoints=[EndpointSpec("10.244.1.30", 3000)]),
        ServiceSpec("default", "admin-api", "10.100.12.34", [PortSpec("https", 443, node_port=30443,
                                                                      target_port=8443)],
                    type="LoadBalancer", lb_ips=["52.14.88.203"], lb_source_ranges=["198.51.100.0/24"],
                    endpoints=[EndpointSpec("10.244.1.20", 8443), EndpointSpec("10.244.2.21", 8443)]),
        ServiceSpec("default", "web", "10.108.3.4", [PortSpec("http", 80, node_port=30080, target_port=8080)],
                    type="NodePort", endpoints=[EndpointSpec(f"10.244.{n}.40", 8080, local=n == 3)
                                                for n in (1, 2, 3)]),
        ServiceSpec("default", "cart", "10.97.3.3", [PortSpec("http", 80, target_port=8080)],
                    session_affinity_timeout=10800,
                    endpoints=[EndpointSpec("10.244.1.50", 8080), EndpointSpec("10.244.2.51", 8080)]),
        ServiceSpec("default", "orders", "10.98.7.10", [PortSpec("http", 8080, target_port=8080)]),
    ]


def ipv6_services() -> list[ServiceSpec]:
    node_ip = "fd00:192:168:49::2"
    return [
        *cluster_basics(node_ip, ["fd00:10:244::2", "fd00:10:244::3"]),
        ServiceSpec("default", "web", "fd00:10:96::5e1", [PortSpec("http", 80, node_port=30080, target_port=8080)],
                    type="LoadBalancer", lb_ips=["2001:db8:49::240"], lb_source_ranges=["2001:db8:100::/48"],
                    endpoints=[EndpointSpec("fd00:10:244:1::7", 8080), EndpointSpec("fd00:10:244:2::3", 8080)]),
        ServiceSpec("default", "cart", "fd00:10:96::c4f", [PortSpec("http", 80, target_port=8080)],
                    session_affinity_timeout=10800,
                    endpoints=[EndpointSpec("fd00:10:244:1::9", 8080), EndpointSpec("fd00:10:244::12", 8080,
                                                                                   local=True)]),
        ServiceSpec("default", "orders", "fd00:10:96::7d", [PortSpec("http", 8080, target_port=8080)]),
    ]


def calico_services() -> list[ServiceSpec]:
    node_ip = "10.0.0.11"
    return [
        ServiceSpec("default", "kubernetes", "10.96.0.1", [PortSpec("https", 443, target_port=6443)],
                    endpoints=[EndpointSpec("10.0.0.10", 6443)]),
        ServiceSpec("kube-system", "kube-dns", "10.96.0.10",
                    [PortSpec("dns", 53, "UDP"), PortSpec("dns-tcp", 53, "TCP"), PortSpec("metrics", 9153, "TCP")],
                    endpoints=[EndpointSpec("192.168.145.129", 53, local=True, ports={"metrics": 9153}),
                               EndpointSpec("192.168.33.66", 53, ports={"metrics": 9153})]),
        ServiceSpec("calico-system", "calico-typha", "10.105.77.2", [PortSpec("calico-typha", 5473,
                                                                              target_port="calico-typha")],
                    endpoints=[EndpointSpec(node_ip, 5473, local=True), EndpointSpec("10.0.0.12", 5473)]),
        ServiceSpec("shop", "storefront", "10.99.41.8", [PortSpec("http", 80, node_port=30180, target_port=8080)],
                    type="NodePort", endpoints=[EndpointSpec("192.168.145.131", 8080, local=True),
                                                EndpointSpec("192.168.33.70", 8080)]),
    ]


def flannel_services() -> list[ServiceSpec]:
    return [
        *cluster_basics("192.168.56.10", ["10.244.0.2", "10.244.0.3"], local_dns=False),
        ServiceSpec("kubernetes-dashboard", "kubernetes-dashboard", "10.102.61.114",
                    [PortSpec("", 443, node_port=30443, target_port=8443)], type="NodePort",
                    endpoints=[EndpointSpec("10.244.1.4", 8443, local=True)]),
        ServiceSpec("default", "nginx", "10.110.15.42", [PortSpec("http", 80, node_port=31880, target_port=80)],
                    type="NodePort", endpoints=[EndpointSpec("10.244.1.5", 80, local=True),
                                                EndpointSpec("10.244.2.6", 80)]),
    ]


# ------------------------------------------------------------------------------------------------ other rules


def _cali(*parts: str) -> str:
    """A stable "cali:<16 chars>" rule id: felix derives its ids from a hash of the rule, so do we."""
    digest = hashlib.sha224("|".join(parts).encode()).digest()
    return "cali:" + base64.urlsafe_b64encode(digest).decode()[:16]


def calico_rules() -> str:
    """What Calico's felix (iptables dataplane, IPIP) installs on a node with one workload: its jumps go in
    front of the built-in chains (ChainInsertMode=insert), everything else lives in cali-* chains."""
    iface = "cali5f1e6d3a2b4"
    lines: list[str] = []

    def table(name: str, chains: list[str], rules: list[tuple[str, str, str]]) -> None:
        lines.append(f"*{name}")
        lines.extend(f":{c} - [0:0]" for c in chains)
        for op, chain, rest in rules:
            spec_head, _, spec_tail = rest.partition("|")
            cid = _cali(name, chain, rest)
            head = f"{spec_head} " if spec_head else ""
            lines.append(f"{op} {chain} {head}-m comment --comment \"{cid}\" {spec_tail}".replace("  ", " "))
        lines.append("COMMIT")

    table("raw", ["cali-OUTPUT", "cali-PREROUTING", "cali-from-host-endpoint", "cali-rpf-skip",
                  "cali-to-host-endpoint"], [
        ("-I", "PREROUTING", "|-j cali-PREROUTING"),
        ("-I", "OUTPUT", "|-j cali-OUTPUT"),
        ("-A", "cali-OUTPUT", "|-j MARK --set-xmark 0x0/0xf0000"),
        ("-A", "cali-OUTPUT", "|-j cali-to-host-endpoint"),
        ("-A", "cali-OUTPUT", "|-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("-A", "cali-PREROUTING", "|-j MARK --set-xmark 0x0/0xf0000"),
        ("-A", "cali-PREROUTING", "-i cali+|-j MARK --set-xmark 0x40000/0x40000"),
        ("-A", "cali-PREROUTING", "|-m mark --mark 0x40000/0x40000 -j cali-rpf-skip"),
        ("-A", "cali-PREROUTING", "|-m mark --mark 0x40000/0x40000 -m rpfilter --validmark --invert -j DROP"),
        ("-A", "cali-PREROUTING", "|-m mark --mark 0x0/0x40000 -j cali-from-host-endpoint"),
        ("-A", "cali-PREROUTING", "|-m mark --mark 0x10000/0x10000 -j ACCEPT"),
    ])
    table("mangle", ["cali-POSTROUTING", "cali-PREROUTING", "cali-from-host-endpoint", "cali-to-host-endpoint"], [
        ("-I", "PREROUTING", "|-j cali-PREROUTING"),
        ("-I", "POSTROUTING", "|-j cali-POSTROUTING"),
        ("-A", "cali-POSTROUTING", "|-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", "cali-POSTROUTING", "|-j MARK --set-xmark 0x0/0xf0000"),
        ("-A", "cali-POSTROUTING", "|-m conntrack --ctstate DNAT -j cali-to-host-endpoint"),
        ("-A", "cali-POSTROUTING", '|-m comment --comment "Host endpoint policy accepted packet." '
                                   "-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", "cali-PREROUTING", "|-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ("-A", "cali-PREROUTING", "|-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("-A", "cali-PREROUTING", "|-j cali-from-host-endpoint"),
        ("-A", "cali-PREROUTING", '|-m comment --comment "Host endpoint policy accepted packet." '
                                  "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
    ])
    table("nat", ["cali-OUTPUT", "cali-POSTROUTING", "cali-PREROUTING", "cali-fip-dnat", "cali-fip-snat",
                  "cali-nat-outgoing"], [
        ("-I", "PREROUTING", "|-j cali-PREROUTING"),
        ("-I", "OUTPUT", "|-j cali-OUTPUT"),
        ("-I", "POSTROUTING", "|-j cali-POSTROUTING"),
        ("-A", "cali-OUTPUT", "|-j cali-fip-dnat"),
        ("-A", "cali-POSTROUTING", "|-j cali-fip-snat"),
        ("-A", "cali-POSTROUTING", "|-j cali-nat-outgoing"),
        ("-A", "cali-POSTROUTING", "-o tunl0|-m addrtype ! --src-type LOCAL --limit-iface-out "
                                   "-m addrtype --src-type LOCAL -j MASQUERADE --random-fully"),
        ("-A", "cali-PREROUTING", "|-j cali-fip-dnat"),
        ("-A", "cali-nat-outgoing", "|-m set --match-set cali40masq-ipam-pools src "
                                    "-m set ! --match-set cali40all-ipam-pools dst -j MASQUERADE --random-fully"),
    ])
    accepted = '-m comment --comment "Policy explicitly accepted packet." -m mark --mark 0x10000/0x10000'
    workload = [
        ("|-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ("|-m conntrack --ctstate INVALID -j DROP"),
        ("|-j MARK --set-xmark 0x0/0x10000"),
    ]
    table("filter", ["cali-FORWARD", "cali-INPUT", "cali-OUTPUT", "cali-cidr-block", "cali-from-hep-forward",
                     "cali-from-host-endpoint", "cali-from-wl-dispatch", f"cali-fw-{iface}", "cali-pri-kns.shop",
                     "cali-pri-ksa.shop.default", "cali-pro-kns.shop", "cali-pro-ksa.shop.default",
                     "cali-to-hep-forward", "cali-to-host-endpoint", "cali-to-wl-dispatch", f"cali-tw-{iface}",
                     "cali-wl-to-host"], [
        ("-I", "INPUT", "|-j cali-INPUT"),
        ("-I", "FORWARD", "|-j cali-FORWARD"),
        ("-I", "OUTPUT", "|-j cali-OUTPUT"),
        ("-A", "FORWARD", f"|{accepted} -j ACCEPT"),
        ("-A", "FORWARD", "|-j MARK --set-xmark 0x10000/0x10000"),
        ("-A", "cali-FORWARD", "|-j MARK --set-xmark 0x0/0xe0000"),
        ("-A", "cali-FORWARD", "|-m mark --mark 0x0/0x10000 -j cali-from-hep-forward"),
        ("-A", "cali-FORWARD", "-i cali+|-j cali-from-wl-dispatch"),
        ("-A", "cali-FORWARD", "-o cali+|-j cali-to-wl-dispatch"),
        ("-A", "cali-FORWARD", "|-j cali-to-hep-forward"),
        ("-A", "cali-FORWARD", "|-j cali-cidr-block"),
        ("-A", "cali-INPUT", '-p ipencap|-m comment --comment "Allow IPIP packets from Calico hosts" '
                             "-m set --match-set cali40all-hosts-net src -m addrtype --dst-type LOCAL -j ACCEPT"),
        ("-A", "cali-INPUT", '-p ipencap|-m comment --comment "Drop IPIP packets from non-Calico hosts" -j DROP'),
        ("-A", "cali-INPUT", "|-j MARK --set-xmark 0x0/0xfff00000"),
        ("-A", "cali-INPUT", "-i cali+|-g cali-wl-to-host"),
        ("-A", "cali-INPUT", "|-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("-A", "cali-INPUT", "|-j MARK --set-xmark 0x0/0xf0000"),
        ("-A", "cali-INPUT", "|-j cali-from-host-endpoint"),
        ("-A", "cali-INPUT", '|-m comment --comment "Host endpoint policy accepted packet." '
                             "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("-A", "cali-OUTPUT", "|-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("-A", "cali-OUTPUT", "-o cali+|-j RETURN"),
        ("-A", "cali-OUTPUT", '-p ipencap|-m comment --comment "Allow IPIP packets to other Calico hosts" '
                              "-m set --match-set cali40all-hosts-net dst -m addrtype --src-type LOCAL -j ACCEPT"),
        ("-A", "cali-OUTPUT", "|-j MARK --set-xmark 0x0/0xf0000"),
        ("-A", "cali-OUTPUT", "|-m conntrack ! --ctstate DNAT -j cali-to-host-endpoint"),
        ("-A", "cali-OUTPUT", '|-m comment --comment "Host endpoint policy accepted packet." '
                              "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("-A", "cali-from-wl-dispatch", f"-i {iface}|-g cali-fw-{iface}"),
        ("-A", "cali-from-wl-dispatch", '|-m comment --comment "Unknown interface" -j DROP'),
        *[("-A", f"cali-fw-{iface}", rest) for rest in workload],
        ("-A", f"cali-fw-{iface}", '-p udp|-m comment --comment "Drop VXLAN encapped packets originating in '
                                   'workloads" -m multiport --dports 4789 -j DROP'),
        ("-A", f"cali-fw-{iface}", '-p ipencap|-m comment --comment "Drop IPinIP encapped packets originating in '
                                   'workloads" -j DROP'),
        ("-A", f"cali-fw-{iface}", "|-j cali-pro-kns.shop"),
        ("-A", f"cali-fw-{iface}", '|-m comment --comment "Return if profile accepted" '
                                   "-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", f"cali-fw-{iface}", "|-j cali-pro-ksa.shop.default"),
        ("-A", f"cali-fw-{iface}", '|-m comment --comment "Return if profile accepted" '
                                   "-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", f"cali-fw-{iface}", '|-m comment --comment "Drop if no profiles matched" -j DROP'),
        ("-A", "cali-pri-kns.shop", "|-j MARK --set-xmark 0x10000/0x10000"),
        ("-A", "cali-pri-kns.shop", "|-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", "cali-pro-kns.shop", "|-j MARK --set-xmark 0x10000/0x10000"),
        ("-A", "cali-pro-kns.shop", "|-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", "cali-to-wl-dispatch", f"-o {iface}|-g cali-tw-{iface}"),
        ("-A", "cali-to-wl-dispatch", '|-m comment --comment "Unknown interface" -j DROP'),
        *[("-A", f"cali-tw-{iface}", rest) for rest in workload],
        ("-A", f"cali-tw-{iface}", "|-j cali-pri-kns.shop"),
        ("-A", f"cali-tw-{iface}", '|-m comment --comment "Return if profile accepted" '
                                   "-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", f"cali-tw-{iface}", "|-j cali-pri-ksa.shop.default"),
        ("-A", f"cali-tw-{iface}", '|-m comment --comment "Return if profile accepted" '
                                   "-m mark --mark 0x10000/0x10000 -j RETURN"),
        ("-A", f"cali-tw-{iface}", '|-m comment --comment "Drop if no profiles matched" -j DROP'),
        ("-A", "cali-wl-to-host", "|-j cali-from-wl-dispatch"),
        ("-A", "cali-wl-to-host", '|-m comment --comment "Configured DefaultEndpointToHostAction" -j ACCEPT'),
    ])
    return "\n".join(lines) + "\n"


CALICO_IPSETS = {"hash:net": ["cali40all-ipam-pools", "cali40masq-ipam-pools", "cali40all-hosts-net"]}


def flannel_rules() -> str:
    """flanneld (vxlan backend, >= 0.20) and the CNI portmap plugin: both append their jumps."""
    pods, node_subnet = "10.244.0.0/16", "10.244.1.0/24"
    masq = '-m comment --comment "flanneld masq"'
    return "\n".join([
        "*nat",
        ":CNI-HOSTPORT-DNAT - [0:0]",
        ":CNI-HOSTPORT-MASQ - [0:0]",
        ":CNI-HOSTPORT-SETMARK - [0:0]",
        ":FLANNEL-POSTRTG - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        '-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ',
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
        '-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark '
        "0x2000/0x2000",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {node_subnet} -d {pods} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {pods} -d {node_subnet} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {pods} -d {node_subnet} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {pods} ! -d 224.0.0.0/4 {masq} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {pods} -d {pods} {masq} -j MASQUERADE --random-fully",
        "COMMIT",
        "*filter",
        ":FLANNEL-FWD - [0:0]",
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        f'-A FLANNEL-FWD -s {pods} -m comment --comment "flanneld forward" -j ACCEPT',
        f'-A FLANNEL-FWD -d {pods} -m comment --comment "flanneld forward" -j ACCEPT',
        "COMMIT",
    ]) + "\n"


KUBELET_ONLY_NFT = """*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" \
-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
"""

DOCKER_HOST = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -s 10.20.0.0/16 -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p tcp -m multiport --dports 80,443 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER -d 172.17.0.3/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 5432 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A POSTROUTING -s 172.17.0.3/32 -d 172.17.0.3/32 -p tcp -m tcp --dport 5432 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 5432 -j DNAT --to-destination 172.17.0.3:5432
COMMIT
"""


# ------------------------------------------------------------------------------------------------ scenarios


def scenarios() -> list[Scenario]:
    node, pods = [MINIKUBE_NODE], MINIKUBE_PODS
    basics = cluster_basics(MINIKUBE_NODE, MINIKUBE_DNS)
    return [
        Scenario("nodeport-fb-backends.txt",
                 "SPEC.md's worked example: NodePort default/fb-backends 5001->8001 (nodePort 30904) and "
                 "karma-daemon 80:32488,2121:32461, with kubernetes and kube-dns (current kube-proxy, minikube).",
                 fb_backends(), node, pods),
        Scenario("etp-local-with-endpoints.txt",
                 "LoadBalancer with externalTrafficPolicy=Local and a local endpoint: KUBE-EXT -> KUBE-SVL, "
                 "health check nodePort ACCEPT.",
                 [*basics, ingress([EndpointSpec("10.244.0.12", 80, local=True), EndpointSpec("10.244.1.14", 80)])],
                 node, pods),
        Scenario("etp-local-no-local-endpoints.txt",
                 "The same LoadBalancer on a node without a local endpoint: 'has no local endpoints' DROP for "
                 "external traffic, pods and the node itself still short-circuit to KUBE-SVC.",
                 [*basics, ingress([EndpointSpec("10.244.1.14", 80), EndpointSpec("10.244.2.9", 80)])], node, pods),
        Scenario("loadbalancer-source-ranges.txt",
                 "LoadBalancer with loadBalancerSourceRanges (one covering the node): KUBE-FW chain and the "
                 "KUBE-PROXY-FIREWALL DROP in filter.",
                 [*basics, ServiceSpec("default", "admin-api", "10.100.12.34",
                                       [PortSpec("https", 443, node_port=30443, target_port=8443)],
                                       type="LoadBalancer", lb_ips=["203.0.113.50"],
                                       lb_source_ranges=["198.51.100.0/24", "192.168.49.0/24"],
                                       endpoints=[EndpointSpec("10.244.1.20", 8443),
                                                  EndpointSpec("10.244.2.21", 8443)])],
                 node, pods),
        Scenario("no-endpoints.txt",
                 "Services without endpoints: REJECT for the ClusterIP (filter KUBE-SERVICES) and for the "
                 "nodePort and externalIP (KUBE-EXTERNAL-SERVICES).",
                 [*basics,
                  ServiceSpec("default", "orders", "10.98.7.10", [PortSpec("http", 8080, target_port=8080)]),
                  ServiceSpec("default", "legacy-web", "10.98.7.11",
                              [PortSpec("http", 80, node_port=30080, target_port=8080)], type="NodePort",
                              external_ips=["192.168.49.50"])],
                 node, pods),
        Scenario("session-affinity.txt",
                 "ClientIP session affinity (10800 s) over three endpoints: -m recent --rcheck in KUBE-SVC and "
                 "--set in each KUBE-SEP.",
                 [*basics, ServiceSpec("default", "cart", "10.97.3.3", [PortSpec("http", 80, target_port=8080)],
                                       session_affinity_timeout=10800,
                                       endpoints=[EndpointSpec(f"10.244.{n}.50", 8080, local=n == 0)
                                                  for n in (0, 1, 2)])],
                 node, pods),
        Scenario("ipv6.txt",
                 "ip6tables-save of an IPv6 single-stack cluster (no localhost NodePorts: '! -d ::1/128'; "
                 "[addr]:port DNAT targets; LB with source ranges; affinity; a Service without endpoints).",
                 ipv6_services(), ["fd00:192:168:49::2"], "fd00:10:244::/56", {"ipv6": True}),
        Scenario("xlb-era.txt",
                 "kube-proxy ~1.21 (KUBE-XLB era): masquerade rules in KUBE-SERVICES/KUBE-SVC/KUBE-FW, "
                 "KUBE-XLB for externalTrafficPolicy=Local (with and without local endpoints), KUBE-MARK-DROP.",
                 xlb_services(), ["172.31.10.20"], "10.244.0.0/16", {"era": "xlb"}),
        Scenario("large-cluster-no-comments.txt",
                 "120 Services x 10 endpoints (>1000 endpoints): kube-proxy's large-cluster mode drops the "
                 "comments of KUBE-SVC->KUBE-SEP jumps and KUBE-SEP rules; only chain hashes identify them.",
                 scale(120, 10, seed=7), ["10.0.0.21"], "10.244.0.0/16", {"comments": False}),
        Scenario("calico-and-kube-proxy.txt",
                 "kube-proxy plus Calico (felix iptables dataplane, IPIP): cali-* chains in raw, mangle, nat "
                 "and filter, inserted in front of kube-proxy's jumps.",
                 calico_services(), ["10.0.0.11"], "192.168.0.0/16", {"extra": calico_rules()},
                 ipsets=CALICO_IPSETS),
        Scenario("flannel-and-kube-proxy.txt",
                 "kube-proxy plus flannel (FLANNEL-POSTRTG, FLANNEL-FWD) and the CNI portmap plugin's chains, "
                 "appended after kube-proxy's jumps.",
                 flannel_services(), ["192.168.56.11"], "10.244.0.0/16", {"extra": flannel_rules()}),
        Scenario("legacy-split-nft.txt",
                 "iptables-nft-save on a node whose kube-proxy wrote through iptables-legacy: only kubelet's "
                 "chains, no KUBE-SERVICES, ending with the 'iptables-legacy tables present' warning (stderr).",
                 fb_backends(), node, pods, handwritten=KUBELET_ONLY_NFT,
                 legacy=render(fb_backends(), node_ips=node, pod_cidr=pods)),
        Scenario("no-kube-proxy.txt",
                 "A Docker host with its own firewall (INPUT/FORWARD DROP, DOCKER chains, a published port): "
                 "no kube-proxy at all.",
                 [], ["10.20.4.7"], None, handwritten=DOCKER_HOST),
    ]


def dump_text(sc: Scenario) -> str:
    if sc.handwritten:
        return sc.handwritten
    return render(sc.services, node_ips=sc.node_ips, pod_cidr=sc.pod_cidr, **sc.options)


def produce(sc: Scenario) -> str:
    """Load the scenario into a fresh namespace and return what iptables-nft-save prints there (stdout, then
    stderr as a terminal shows it)."""
    with netns.netns("samples") as ns:
        netns.ensure_nfacct(ns, NFACCT)
        for typename, names in sc.ipsets.items():
            netns.ensure_ipsets(ns, typename, names, ipv6=sc.ipv6)
        if sc.legacy:
            netns.restore(ns, sc.legacy, backend="legacy")
        netns.restore(ns, dump_text(sc), ipv6=sc.ipv6)
        result = netns.run(ns, ["ip6tables-nft-save" if sc.ipv6 else "iptables-nft-save"])
        if result.returncode:
            raise RuntimeError(result.stderr)
        return result.stdout + result.stderr


def describe(sc: Scenario) -> dict[str, Any]:
    options = {k: v for k, v in sc.options.items() if k != "extra"}
    return {
        "description": sc.description,
        "kube_proxy": not sc.handwritten,
        "era": options.pop("era", "current") if not sc.handwritten else None,
        "family": "IPv6" if sc.ipv6 else "IPv4",
        "node_ips": sc.node_ips,
        "pod_cidr": sc.pod_cidr,
        "render_options": {k: v for k, v in options.items() if k != "ipv6"},
        "other_rules": ("calico" if "calico" in sc.file else "flannel" if "flannel" in sc.file
                        else "kubelet only (kube-proxy's rules are in the legacy backend)" if sc.legacy
                        else "docker and host firewall" if sc.handwritten else None),
        "services": [s.to_dict() for s in sc.services] if not sc.handwritten or sc.legacy else [],
        # The service view this dump must produce (empty when kube-proxy's rules are not in it).
        "service_ports": [] if sc.handwritten else expected_service_ports(
            sc.services, ipv6=sc.ipv6, era=sc.options.get("era", "current")),
    }


_HAND_WRITTEN = "Conntrack tables ("


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("sample_dumps"))
    parser.add_argument("names", nargs="*", help="only these files (default: all)")
    args = parser.parse_args(argv)
    problem = netns.available()
    if problem:
        print(f"cannot make samples: {problem}", file=sys.stderr)
        return 1
    from bench import make_samples_nft

    args.out.mkdir(parents=True, exist_ok=True)
    all_scenarios = scenarios()
    for sc in all_scenarios:
        if args.names and sc.file not in args.names:
            continue
        (args.out / sc.file).write_text(produce(sc))
        print(f"wrote {args.out / sc.file}")
    nft_scenarios = make_samples_nft.scenarios()
    nft_names = {n for sc in nft_scenarios for n in (sc.file, sc.json_twin) if n}
    if not args.names or nft_names & set(args.names):
        for path in make_samples_nft.write(args.out, [n for n in args.names if n in nft_names] or None):
            print(f"wrote {path}")
    described = {sc.file: describe(sc) for sc in all_scenarios}
    described |= {sc.file: make_samples_nft.describe(sc) for sc in nft_scenarios}
    (args.out / "scenarios.json").write_text(json.dumps(described, indent=2) + "\n")
    readme = ["# Sample dumps", "",
              "Complete `iptables-nft-save` output of simulated nodes, one scenario per file. Each was rendered "
              "by `bench/synth.py` (a faithful model of kube-proxy's `syncProxyRules`), loaded into a fresh "
              "network namespace with `iptables-nft-restore` and saved back, so rule order and spelling are the "
              "kernel's. `scenarios.json` lists the Services, endpoints, node addresses and pod CIDR each file "
              "was generated from. Regenerate (as root) with `python -m bench.make_samples`.", ""]
    readme += [f"- `{sc.file}` — {sc.description}" for sc in all_scenarios]
    readme += ["", *make_samples_nft.readme_lines(nft_scenarios)]
    # Sections written by hand (the conntrack tables) follow the generated lists and are kept as they are.
    old = (args.out / "README.md").read_text() if (args.out / "README.md").exists() else ""
    kept = old[old.index(_HAND_WRITTEN):] if _HAND_WRITTEN in old else ""
    (args.out / "README.md").write_text("\n".join(readme) + "\n" + ("\n" + kept if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
