"""The nftables-mode samples of sample_dumps/: kube-proxy's transaction for each scenario (bench.synth_nft, the
1.34/1.35 layout), loaded with `nft -f` into a fresh network namespace (beside iptables-nft's tables and a CNI's
table where the scenario has them) and listed back with `nft list ruleset`: the kernel's own listing, as
`nft list ruleset` prints it on such a node. One scenario also keeps `nft -j list ruleset`.

Run as root from the repository root through `python -m bench.make_samples` (which writes these too), or alone:
`python -m bench.make_samples_nft [--out sample_dumps] [NAME...]`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import netns
from bench.make_samples import MINIKUBE_DNS, MINIKUBE_NODE, MINIKUBE_PODS, cluster_basics, fb_backends, ingress
from bench.synth import EndpointSpec, PortSpec, ServiceSpec, expected_service_ports, render
from bench.synth_nft import name_base, render_nft

MINIKUBE_SERVICE_CIDR = "10.96.0.0/12"
DUAL_NODE6 = "fd00:192:168:49::2"
DUAL_PODS6 = "fd00:10:244::/56"
DUAL_SERVICE_CIDR6 = "fd00:10:96::/112"
LAYOUT = "1.34/1.35 (filter-prerouting-pre-dnat, mark-for-masquerade, one endpoint chain per endpoint)"


@dataclass
class NftScenario:
    file: str
    description: str
    services: list[ServiceSpec]
    node_ips: list[str]
    pod_cidrs: list[str]
    service_cidrs: list[str]
    families: tuple[str, ...] = ("ip",)
    iptables: str = ""  # loaded first with iptables-nft-restore: iptables-nft's tables on the node
    other_nft: str = ""  # another component's nft tables (a CNI's), loaded before kube-proxy's
    json_twin: str = ""  # also save `nft -j list ruleset` under this name
    other_rules: str | None = None

    def transaction(self) -> str:
        """kube-proxy's transaction for every family it programs, as `nft -f` loads it."""
        out = []
        for family in self.families:
            ipv6 = family == "ip6"
            pod = next((c for c in self.pod_cidrs if (":" in c) == ipv6), None)
            out.append(render_nft(self.services, node_ips=self.node_ips, pod_cidr=pod,
                                  service_cidrs=self.service_cidrs, ipv6=ipv6, form="transaction"))
        return "".join(out)


# ------------------------------------------------------------------------------------------------ other rules

# What kubelet (1.28+) still writes through iptables-nft on a node whose kube-proxy runs in nftables mode (its
# canaries and the hint chain), plus the CNI portmap plugin's chains for one hostPort (iptables is its default).
KUBELET_AND_PORTMAP = """*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-DN-4a5c2e0f5d3b1b6c8e7f9 - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"cbr0\\" id: \\"6f1d2c\\"" -m multiport \
--dports 8081 -j CNI-DN-4a5c2e0f5d3b1b6c8e7f9
-A CNI-DN-4a5c2e0f5d3b1b6c8e7f9 -s 10.244.0.12/32 -p tcp -m tcp --dport 8081 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-4a5c2e0f5d3b1b6c8e7f9 -s 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-4a5c2e0f5d3b1b6c8e7f9 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.244.0.12:80
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
COMMIT
"""


def flannel_nft(cluster_cidr: str = "10.244.0.0/16", node_subnet: str = "10.244.1.0/24") -> str:
    """flanneld's nftables mode (pkg/trafficmngr/nftables, flannel >= 0.25): one table per family (the IPv6 one
    empty on an IPv4 cluster), a forward chain accepting pod traffic and its masquerading chain, which leaves
    kube-proxy's marked packets (0x4000) to kube-proxy."""
    return "\n".join([
        'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }',
        'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }',
        'add chain ip flannel-ipv4 forward { type filter hook forward priority 0 ; '
        'comment "chain to accept flannel traffic" ; }',
        'add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority 100 ; '
        'comment "chain to manage traffic masquerading by flannel" ; }',
        f"add rule ip flannel-ipv4 forward ip saddr {cluster_cidr} accept",
        f"add rule ip flannel-ipv4 forward ip daddr {cluster_cidr} accept",
        "add rule ip flannel-ipv4 postrtg meta mark 0x4000 return",
        f"add rule ip flannel-ipv4 postrtg ip saddr {node_subnet} ip daddr {cluster_cidr} return",
        f"add rule ip flannel-ipv4 postrtg ip saddr {cluster_cidr} ip daddr {node_subnet} return",
        f"add rule ip flannel-ipv4 postrtg ip saddr != {node_subnet} ip daddr {cluster_cidr} return",
        f"add rule ip flannel-ipv4 postrtg ip saddr {cluster_cidr} ip daddr != 224.0.0.0/4 masquerade fully-random",
        f"add rule ip flannel-ipv4 postrtg ip saddr != {cluster_cidr} ip daddr {cluster_cidr} masquerade "
        "fully-random",
    ]) + "\n"


# ------------------------------------------------------------------------------------------------ services


def no_endpoint_services() -> list[ServiceSpec]:
    return [*cluster_basics(MINIKUBE_NODE, MINIKUBE_DNS),
            ServiceSpec("default", "orders", "10.98.7.10", [PortSpec("http", 8080, target_port=8080)]),
            ServiceSpec("default", "legacy-web", "10.98.7.11",
                        [PortSpec("http", 80, node_port=30080, target_port=8080)], type="NodePort",
                        external_ips=["192.168.49.50"])]


def dual_stack_services() -> list[ServiceSpec]:
    """A dual-stack cluster: one ServiceSpec per ClusterIP family (kube-proxy runs one proxier per family)."""
    dns6 = ["fd00:10:244::2", "fd00:10:244::3"]
    web = dict(type="LoadBalancer", session_affinity_timeout=10800)
    return [
        *cluster_basics(MINIKUBE_NODE, MINIKUBE_DNS),
        ServiceSpec("kube-system", "kube-dns", "fd00:10:96::a",
                    [PortSpec("dns", 53, "UDP", target_port=53), PortSpec("dns-tcp", 53, "TCP", target_port=53),
                     PortSpec("metrics", 9153, "TCP", target_port=9153)],
                    endpoints=[EndpointSpec(ip, 53, local=True) for ip in dns6]),
        ServiceSpec("default", "web", "10.100.12.34", [PortSpec("http", 80, node_port=30080, target_port=8080)],
                    lb_ips=["203.0.113.50"], lb_source_ranges=["198.51.100.0/24"], **web,  # type: ignore[arg-type]
                    endpoints=[EndpointSpec("10.244.1.7", 8080), EndpointSpec("10.244.2.3", 8080)]),
        ServiceSpec("default", "web", "fd00:10:96::5e1", [PortSpec("http", 80, node_port=30080, target_port=8080)],
                    lb_ips=["2001:db8:49::240"], lb_source_ranges=["2001:db8:100::/48"], **web,  # type: ignore[arg-type]
                    endpoints=[EndpointSpec("fd00:10:244:1::7", 8080), EndpointSpec("fd00:10:244:2::3", 8080)]),
    ]


def iptables_mode_leftovers() -> str:
    """What kube-proxy wrote through iptables-nft in iptables mode before the node moved to nftables mode, left
    behind (the new kube-proxy's cleanup never ran): fb-backends' endpoints as they were then (both pods since
    replaced), and default/old-api, a Service deleted after the move."""
    then = [*cluster_basics(MINIKUBE_NODE, MINIKUBE_DNS),
            ServiceSpec("default", "fb-backends", "10.101.234.168",
                        [PortSpec("ka-port", 5001, "TCP", node_port=30904, target_port=8001)], type="NodePort",
                        endpoints=[EndpointSpec("10.244.1.4", 8001), EndpointSpec("10.244.2.6", 8001)]),
            ServiceSpec("default", "old-api", "10.99.41.7", [PortSpec("http", 80, "TCP", target_port=8080)],
                        endpoints=[EndpointSpec("10.244.2.8", 8080)])]
    return render(then, node_ips=[MINIKUBE_NODE], pod_cidr=MINIKUBE_PODS, nfacct=False)


def scenarios() -> list[NftScenario]:
    node, pods, cidrs = [MINIKUBE_NODE], [MINIKUBE_PODS], [MINIKUBE_SERVICE_CIDR]
    basics = cluster_basics(MINIKUBE_NODE, MINIKUBE_DNS)
    return [
        NftScenario("nodeport-fb-backends-nft.nft",
                    "SPEC.md's worked example in nftables mode: NodePort default/fb-backends 5001->8001 (nodePort "
                    "30904) and karma-daemon 80:32488,2121:32461, with kubernetes and kube-dns; `nft list ruleset` "
                    "of the minikube node.",
                    fb_backends(), node, pods, cidrs, json_twin="nodeport-fb-backends-nft.json"),
        NftScenario("etp-local-with-endpoints-nft.nft",
                    "LoadBalancer with externalTrafficPolicy=Local and a local endpoint, nftables mode: external-… "
                    "short-circuits pods and the node to service-…, others go to local-…; the health check "
                    "nodePort has no rule in this mode.",
                    [*basics, ingress([EndpointSpec("10.244.0.12", 80, local=True),
                                       EndpointSpec("10.244.1.14", 80)])], node, pods, cidrs),
        NftScenario("etp-local-no-local-endpoints-nft.nft",
                    "The same LoadBalancer on a node without a local endpoint, nftables mode: @no-endpoint-services "
                    "and @no-endpoint-nodeports map the LB IP and nodePort to drop for outside clients; pods and "
                    "the node itself still short-circuit to service-….",
                    [*basics, ingress([EndpointSpec("10.244.1.14", 80), EndpointSpec("10.244.2.9", 80)])],
                    node, pods, cidrs),
        NftScenario("no-endpoints-nft.nft",
                    "Services without endpoints, nftables mode: the ClusterIP, externalIP and nodePort map to "
                    "`goto reject-chain` (connection refused); no service-… chains.",
                    no_endpoint_services(), node, pods, cidrs),
        NftScenario("dual-stack-nft.nft",
                    "A dual-stack node in nftables mode: `table ip kube-proxy` and `table ip6 kube-proxy`, kube-dns "
                    "in both families, a LoadBalancer with loadBalancerSourceRanges (firewall-… chains) and "
                    "ClientIP session affinity (affinity-… sets) in both.",
                    dual_stack_services(), [MINIKUBE_NODE, DUAL_NODE6], [MINIKUBE_PODS, DUAL_PODS6],
                    [MINIKUBE_SERVICE_CIDR, DUAL_SERVICE_CIDR6], families=("ip", "ip6")),
        NftScenario("flannel-and-kube-proxy-nft.nft",
                    "The fb-backends node in nftables mode beside other tables, in the order a node creates them: "
                    "iptables-nft's `ip mangle`/`ip filter`/`ip nat` (kubelet's canaries and the CNI portmap "
                    "plugin's hostPort DNAT, as nft prints iptables-nft rules), flannel's `ip flannel-ipv4` and "
                    "`ip6 flannel-ipv6` (nftables mode), then `ip kube-proxy`.",
                    fb_backends(), node, pods, cidrs, iptables=KUBELET_AND_PORTMAP, other_nft=flannel_nft(),
                    other_rules="iptables-nft (kubelet, CNI portmap) and flannel (nftables mode)"),
        NftScenario("mode-split-nft.nft",
                    "The fb-backends node after its move from iptables to nftables mode, with the old mode's rules "
                    "left behind: iptables-nft's `ip nat`/`ip filter` still hold kube-proxy's iptables-mode "
                    "chains, written before the move (fb-backends' endpoints then, 10.244.1.4 and 10.244.2.6, and "
                    "default/old-api 10.99.41.7:80, deleted since), then `ip kube-proxy`. Both run in the kernel; "
                    "explain and audit say `kube-proxy-mode-split`.",
                    fb_backends(), node, pods, cidrs, iptables=iptables_mode_leftovers(),
                    other_rules="kube-proxy's iptables-mode rules (iptables-nft), left from before the move"),
    ]


# ------------------------------------------------------------------------------------------------ producing


def produce(sc: NftScenario) -> tuple[str, str | None]:
    """`nft list ruleset` (and `nft -j list ruleset` when the scenario keeps it) of a fresh namespace holding
    the scenario's tables."""
    with netns.netns("samples-nft") as ns:
        if sc.iptables:
            netns.restore(ns, sc.iptables)
        for text in (sc.other_nft, sc.transaction()):
            if text:
                loaded = netns.run(ns, ["nft", "-f", "-"], stdin=text)
                if loaded.returncode:
                    raise RuntimeError(f"nft -f failed for {sc.file}: {loaded.stderr.strip()}")
        listed = netns.run(ns, ["nft", "list", "ruleset"])
        if listed.returncode:
            raise RuntimeError(listed.stderr)
        json_text = None
        if sc.json_twin:
            as_json = netns.run(ns, ["nft", "-j", "list", "ruleset"])
            if as_json.returncode:
                raise RuntimeError(as_json.stderr)
            json_text = as_json.stdout
        return listed.stdout, json_text


_NFT_CHAINS = {"svc": "service", "svl": "local", "ext": "external", "fw": "firewall"}


def expected_ports(sc: NftScenario, family: str) -> list[dict[str, Any]]:
    """The Service ports the listing holds for one family, in kube-proxy's terms (bench.synth's expectations with
    the nft chain names). nftables mode writes no rule for a health check nodePort."""
    out = []
    for exp in expected_service_ports(sc.services, ipv6=family == "ip6"):
        svc, _, port = exp["service_port"].partition(":")
        base = name_base(f"{svc}/{exp['protocol']}/{port}")
        exp["chains"] = {kind: f"{_NFT_CHAINS[kind]}-{base}" for kind in exp["chains"] if kind in _NFT_CHAINS}
        exp["health_check_node_port"] = None
        for ep in exp["endpoints"]:
            host, _, number = ep["endpoint"].rpartition(":")
            ep["chain"] = "endpoint-" + name_base(f"{svc}/{exp['protocol']}/{port}__"
                                                  f"{host.strip('[]').replace(':', '.')}/{number}")
        out.append(exp)
    return out


def describe(sc: NftScenario) -> dict[str, Any]:
    return {
        "description": sc.description,
        "dataplane": "nftables",
        "kube_proxy": True,
        "layout": LAYOUT,
        "families": ["IPv6" if f == "ip6" else "IPv4" for f in sc.families],
        "node_ips": sc.node_ips,
        "pod_cidrs": sc.pod_cidrs,
        "service_cidrs": sc.service_cidrs,
        "other_rules": sc.other_rules,
        "json_twin": sc.json_twin or None,
        "services": [s.to_dict() for s in sc.services],
        "service_ports": {("IPv6" if f == "ip6" else "IPv4"): expected_ports(sc, f) for f in sc.families},
    }


def readme_lines(all_scenarios: list[NftScenario]) -> list[str]:
    out = ["nftables mode (`*.nft`): `nft list ruleset` of simulated nodes whose kube-proxy runs with "
           "`--proxy-mode=nftables`. Each is kube-proxy's transaction for the scenario (`bench/synth_nft.py`, "
           "the 1.34/1.35 layout), loaded with `nft -f` into a fresh network namespace (after the other "
           "components' tables where the scenario has them) and listed back by the kernel, so nesting, element "
           "order and spelling are the kernel's (nftables 1.0.6).", ""]
    for sc in all_scenarios:
        twin = f" `{sc.json_twin}` is `nft -j list ruleset` of the same node." if sc.json_twin else ""
        out.append(f"- `{sc.file}` — {sc.description}{twin}")
    return out


def write(out: Path, names: list[str] | None = None) -> list[Path]:
    """Produce the selected scenarios' files into `out` (as root); returns what was written."""
    written = []
    for sc in scenarios():
        if names and sc.file not in names and sc.json_twin not in names:
            continue
        listing, json_text = produce(sc)
        (out / sc.file).write_text(listing)
        written.append(out / sc.file)
        if json_text is not None:
            (out / sc.json_twin).write_text(json_text)
            written.append(out / sc.json_twin)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("sample_dumps"))
    parser.add_argument("names", nargs="*", help="only these files (default: all)")
    args = parser.parse_args(argv)
    problem = netns.available()
    if problem:
        print(f"cannot make samples: {problem}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write(args.out, args.names):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
