"""nft interface-name wildcards (found by kernfuzz2, judged by the kernel): `iifname "eth*"` matches every name
that begins with `eth` (nft compiles it to a compare of those bytes), also inside a set or a verdict map's keys,
and `!= "cni*"` every other name. kube-proxy writes `iifname != "veth*"` itself (--detect-local-mode
InterfaceNamePrefix); firewalls and CNIs write such tests in their forward chains. iptrace compared the name with
the text `eth*` and found no interface of that name: a forward chain with `policy drop` was predicted to drop
what its wildcard rules let through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load
from iptrace.nftables.walk import Tracer
from tests.oracle import NODE_IP, Topology
from tests.oracle.nft import list_ruleset, load_nft, requires_nft

POD, POD_B, CLIENT_POD, OTHER_POD = "198.18.128.10", "198.18.128.11", "198.18.128.4", "198.18.128.5"
BY_NAME, BY_NEGATION, BY_VMAP, NO_RULE = "198.18.64.6", "198.18.64.7", "198.18.64.8", "198.18.64.9"
SERVICE, PORT = "198.19.0.10", 8080
KUBE_PROXY = render_nft(
    [ServiceSpec("shop", "web", SERVICE, [PortSpec("http", 80, target_port=PORT)],
                 endpoints=[EndpointSpec(POD, PORT), EndpointSpec(POD_B, PORT)])],
    node_ips=[NODE_IP], pod_cidr="198.18.128.0/17", service_cidrs=["198.19.0.0/17"], form="transaction")
FIREWALL = f"""table inet firewall {{
	chain allow {{
		ip saddr {BY_VMAP} accept
	}}
	chain forward {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "eth*" ip saddr {BY_NAME} accept
		iifname != "cni*" ip saddr {BY_NEGATION} accept
		iifname {{ "cni*", "veth*" }} ip saddr {CLIENT_POD} accept
		iifname vmap {{ "et*" : jump allow }}
	}}
}}
"""
# (where the probe starts, its source, the interface it arrives on, whether the forward chain lets it through)
CASES = [("client", BY_NAME, "eth0", True), ("client", BY_NEGATION, "eth0", True), ("client", BY_VMAP, "eth0", True),
         ("client", NO_RULE, "eth0", False), ("pod", CLIENT_POD, "cni0", True), ("pod", OTHER_POD, "cni0", False)]


def verdicts(t: Trace) -> set[str]:
    return {o.verdict for o in t.outcomes}


@pytest.mark.parametrize(("kind", "src", "iface", "passes"), CASES)
def test_a_wildcard_matches_every_name_it_begins(kind: str, src: str, iface: str, passes: bool) -> None:
    tracer = Tracer(load(KUBE_PROXY + FIREWALL), node_ips=[NODE_IP])
    direct = tracer.trace(Packet(src, POD, PORT), in_interface=iface)
    assert verdicts(direct) == ({"ACCEPT"} if passes else {"DROP"}), direct.assumptions
    assert verdicts(tracer.trace(Packet(src, SERVICE, 80), in_interface=iface)) == ({"DNAT"} if passes else {"DROP"})


def test_a_wildcard_is_no_literal_name_and_an_unknown_interface_is_assumed() -> None:
    rules = """table inet t {
	chain forward {
		type filter hook forward priority filter; policy drop;
		iifname "eth*" accept
	}
}
"""
    tracer = Tracer(load(rules), node_ips=[NODE_IP])
    assert verdicts(tracer.trace(Packet(BY_NAME, POD, PORT), in_interface="eth*")) == {"ACCEPT"}
    assert verdicts(tracer.trace(Packet(BY_NAME, POD, PORT), in_interface="veth0")) == {"DROP"}
    unknown = tracer.trace(Packet(BY_NAME, POD, PORT))
    assert verdicts(unknown) == {"DROP"}
    assert any("input interface is not known" in a for a in unknown.assumptions)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, Tracer]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD, POD_B, CLIENT_POD, OTHER_POD)
        for src in (BY_NAME, BY_NEGATION, BY_VMAP, NO_RULE):
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, KUBE_PROXY + FIREWALL)
        yield topo, Tracer(load(list_ruleset(topo)), node_ips=topo.node_ips)


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize(("kind", "src", "iface", "passes"), CASES)
def test_the_kernel_agrees(node: tuple[Topology, Tracer], kind: str, src: str, iface: str, passes: bool) -> None:
    topo, tracer = node
    targets = ((POD, PORT), (SERVICE, 80))
    kernel = topo.probe_each(((kind, dst, port) for dst, port in targets), src_ip=src, timeout=0.5)  # type: ignore[arg-type]
    for (dst, port), result in zip(targets, kernel, strict=True):
        predicted = verdicts(tracer.trace(Packet(src, dst, port), in_interface=iface))
        assert result.outcome == ("connected" if passes else "timeout"), (src, dst, result)
        assert predicted == ({"ACCEPT" if dst == POD else "DNAT"} if passes else {"DROP"}), (src, dst, predicted)
