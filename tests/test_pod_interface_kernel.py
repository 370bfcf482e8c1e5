"""A pod's connections come in on the pod interface when kube-proxy detects local traffic by interface
(--detect-local-mode BridgeInterface: `! -i cni0` / `iifname != "cni0"`; InterfaceNamePrefix: `! -i cni+` /
`iifname != "cni*"`). kube-proxy's rules (bench.synth / bench.synth_nft, with the pod-CIDR tests rewritten as
kube-proxy writes them in those modes) are loaded into the oracle's `node` namespace, whose pod-side veth is
named cni0, and a real pod connects: it is not masqueraded on a ClusterIP, and an externalTrafficPolicy=Local
NodePort short-circuits it to every endpoint. The "pod" client of `explain`, of `trace --src pod` and of the
Service view (`services`) must say the same: the rules name the interface pods come in on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from bench.synth_nft import render_nft
from iptrace import dataplanes
from iptrace.cli import main
from iptrace.dataplane import Packet
from iptrace.explain import Explainer
from iptrace.kube.analysis import Analysis, analyse
from iptrace.kube.view_model import MASQ_OFF_POD, ServicePortView
from iptrace.layout import CLUSTER_IP, NODE_PORT
from tests.oracle import NODE_IP, Topology, oracle_unavailable
from tests.oracle.nft import list_ruleset, load_nft

pytestmark = [pytest.mark.root]

POD_CIDR = "198.18.128.0/17"
CLIENT_POD = "198.18.128.4"
A, B, LOCAL_EP, REMOTE_EP = "198.18.128.10", "198.18.128.11", "198.18.128.13", "198.18.128.14"
PORT = 8080
SERVICES = [
    ServiceSpec("shop", "web", "198.19.0.10", [PortSpec("http", 80, target_port=PORT)],
                endpoints=[EndpointSpec(A, PORT, local=True), EndpointSpec(B, PORT, local=True)]),
    ServiceSpec("shop", "local", "198.19.0.13", [PortSpec("http", 80, node_port=30083, target_port=PORT)],
                type="NodePort", external_traffic_policy="Local",
                endpoints=[EndpointSpec(LOCAL_EP, PORT, local=True), EndpointSpec(REMOTE_EP, PORT, local=False)]),
]
# (mode, --detect-local-mode): how kube-proxy's local detector writes "from a pod" and "not from a pod"
DETECTORS = {
    ("iptables", "BridgeInterface"): ("-i cni0", "! -i cni0"),
    ("iptables", "InterfaceNamePrefix"): ("-i cni+", "! -i cni+"),
    ("nftables", "BridgeInterface"): ('iifname "cni0"', 'iifname != "cni0"'),
    ("nftables", "InterfaceNamePrefix"): ('iifname "cni*"', 'iifname != "cni*"'),
}


def rules(mode: str, detector: str) -> str:
    local, not_local = DETECTORS[(mode, detector)]
    if mode == "iptables":
        text = render(SERVICES, node_ips=[NODE_IP], pod_cidr=POD_CIDR)
        return text.replace(f"! -s {POD_CIDR}", not_local).replace(f"-s {POD_CIDR}", local)
    text = render_nft(SERVICES, node_ips=[NODE_IP], pod_cidr=POD_CIDR, service_cidrs=["198.19.0.0/17"],
                      form="transaction")
    return text.replace(f"ip saddr != {POD_CIDR}", not_local).replace(f"ip saddr {POD_CIDR}", local)


@pytest.fixture(scope="module", params=sorted(DETECTORS), ids=lambda p: "-".join(p))
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Topology, Analysis, Path]]:
    mode, detector = request.param
    reason = oracle_unavailable("nft")
    if reason:
        pytest.skip(reason)
    text = rules(mode, detector)
    assert POD_CIDR not in text  # (no pod CIDR left for iptrace to find pods by)
    with Topology("nft") as topo:
        topo.add_pod_ip(CLIENT_POD, A, B, LOCAL_EP, REMOTE_EP)
        topo.start_server(tcp_ports=[PORT])
        if mode == "iptables":
            topo.load(text)
        else:
            load_nft(topo, text)
            text = list_ruleset(topo)
        dataplane, ruleset = dataplanes.load(text, source="rules")
        analysis = analyse(dataplane, ruleset, "ipv4", node_ips=[NODE_IP])
        assert analysis.layout.pod_interfaces == (DETECTORS[(mode, detector)][0].split()[-1].strip('"'),)
        listed = tmp_path_factory.mktemp("rules") / "rules.txt"
        listed.write_text(text)
        yield topo, analysis, listed


def port(analysis: Analysis, name: str) -> ServicePortView:
    return analysis.port_view(next(sp.key for sp in analysis.layout.service_ports if sp.name == name))


def test_the_pod_interface_is_a_name_the_rules_match() -> None:
    from iptrace.kube.sources import pod_interface

    assert pod_interface(()) is None
    assert pod_interface(("cni0",)) == "cni0"
    assert pod_interface(("veth+",)) == "veth0" and pod_interface(("veth*",)) == "veth0"


def test_a_pod_on_a_cluster_ip_keeps_its_address(node: tuple[Topology, Analysis, Path]) -> None:
    topo, analysis, listed = node
    seen = set()
    for _ in range(6):
        result = topo.probe("pod", "198.19.0.10", 80, src_ip=CLIENT_POD)
        assert result.outcome == "connected" and result.seen_source == CLIENT_POD, result  # the kernel: no SNAT
        assert result.endpoint is not None
        seen.add(f"{result.endpoint[0]}:{result.endpoint[1]}")
    explained = Explainer(analysis).explain_one("198.19.0.10", 80, src="pod")
    outcomes = explained.trace.outcomes
    assert {o.verdict for o in outcomes} == {"DNAT"} and not any(o.masquerade for o in outcomes), outcomes
    assert seen <= {o.destination for o in outcomes}
    entry = next(e for e in port(analysis, "shop/web:http").entries if e.kind == CLUSTER_IP)
    assert "pod" not in entry.masquerade_sources, entry
    assert entry.masquerade == MASQ_OFF_POD, entry
    result = CliRunner().invoke(main, ["trace", str(listed), "--dst", "198.19.0.10:80", "--src", "pod", "-o", "json"])
    assert result.exit_code == 0, result.output
    traced = json.loads(result.output)
    assert {o["verdict"] for o in traced["outcomes"]} == {"DNAT"}
    assert not any(o["masquerade"] for o in traced["outcomes"]), traced
    assert any("come in on cni" in a for a in traced["assumptions"]), traced


def test_a_pod_on_an_external_policy_local_node_port_reaches_every_endpoint(
        node: tuple[Topology, Analysis, Path]) -> None:
    topo, analysis, _ = node
    seen = set()
    for _ in range(12):
        result = topo.probe("pod", NODE_IP, 30083, src_ip=CLIENT_POD)
        assert result.outcome == "connected" and result.seen_source == CLIENT_POD, result
        assert result.endpoint is not None
        seen.add(result.endpoint[0])
    assert seen == {LOCAL_EP, REMOTE_EP}  # short-circuited to the Service's every endpoint (p = 2^-12 to miss one)
    explained = Explainer(analysis).explain_one(NODE_IP, 30083, src="pod")
    assert sorted(o.destination for o in explained.trace.outcomes) == [f"{LOCAL_EP}:{PORT}", f"{REMOTE_EP}:{PORT}"]
    assert not any(o.masquerade for o in explained.trace.outcomes)
    entry = next(e for e in port(analysis, "shop/local:http").entries if e.kind == NODE_PORT)
    pod = next(p for p in entry.paths if p.source == "pod")
    assert sorted(r.endpoint for r in pod.reaches) == [f"{LOCAL_EP}:{PORT}", f"{REMOTE_EP}:{PORT}"]
    assert not pod.masquerade
    # ... and an outside client, which comes in elsewhere, only the local one.
    outside = analysis.tracer.trace(Packet("198.18.0.2", NODE_IP, 30083, in_interface="eth0"))
    assert [o.destination for o in outside.outcomes] == [f"{LOCAL_EP}:{PORT}"]
