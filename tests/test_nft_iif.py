"""nft `iif`/`oif` (found by kernfuzz2, judged by the kernel): they compare the interface's index, and a listing
names the interface that holds it (`iif "lo" accept`, the first rule of nftables' own sample input chain). iptrace
knew no value of them and assumed no packet has one, even for the node's own packet, which it knows arrives on lo,
or with --in-interface given: an input chain with `policy drop` was predicted to drop the node's connections to
itself, which the kernel let through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.dataplane import Packet, Trace
from iptrace.nftables import load
from iptrace.nftables.walk import Tracer
from tests.oracle import CLIENT_IP, NODE_IP, Topology
from tests.oracle.nft import list_ruleset, load_nft, requires_nft

POD = "198.18.128.10"
TRUSTED = "198.18.64.6"
PORT, NODE_PORT, CLOSED, BLOCKED = 8080, 30080, 30081, 30099
KUBE_PROXY = render_nft(
    [ServiceSpec("shop", "web", "198.19.0.10", [PortSpec("http", 80, node_port=NODE_PORT, target_port=PORT)],
                 type="NodePort", endpoints=[EndpointSpec(POD, PORT)])],
    node_ips=[NODE_IP], pod_cidr="198.18.128.0/17", service_cidrs=["198.19.0.0/17"], form="transaction")
FIREWALL = f"""table inet filter {{
	chain input {{
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif "lo" accept
		iif "eth0" ip saddr {TRUSTED} accept
	}}
	chain output {{
		type filter hook output priority filter; policy accept;
		oif "lo" tcp dport {BLOCKED} drop
	}}
}}
"""
# (where the probe starts, its source, destination, port, the kernel's answer, the predicted verdicts)
CASES = [
    ("node", NODE_IP, NODE_IP, CLOSED, "refused", {"ACCEPT"}),  # through lo: accepted, nothing listens
    ("node", NODE_IP, "127.0.0.1", CLOSED, "refused", {"ACCEPT"}),
    ("node", NODE_IP, NODE_IP, BLOCKED, "timeout", {"DROP"}),  # oif lo
    ("client", TRUSTED, NODE_IP, CLOSED, "refused", {"ACCEPT"}),  # iif eth0
    ("client", CLIENT_IP, NODE_IP, CLOSED, "timeout", {"DROP"}),  # the policy
    ("client", CLIENT_IP, NODE_IP, NODE_PORT, "connected", {"DNAT"}),  # forwarded: no input chain
]


def trace(tracer: Tracer, kind: str, src: str, dst: str, port: int) -> Trace:
    return tracer.trace(Packet(src, dst, port), in_interface="eth0" if kind == "client" else None)


@pytest.mark.parametrize(("kind", "src", "dst", "port", "kernel", "predicted"), CASES)
def test_iif_and_oif_name_the_interface(kind: str, src: str, dst: str, port: int, kernel: str,
                                        predicted: set[str]) -> None:
    t = trace(Tracer(load(KUBE_PROXY + FIREWALL), node_ips=[NODE_IP]), kind, src, dst, port)
    assert {o.verdict for o in t.outcomes} == predicted
    assert not any("iif" in a or "oif" in a for a in t.assumptions), t.assumptions


def test_what_a_shared_walk_answers_is_the_plain_walks() -> None:
    """Walks after a split are shared by the fields the rules read: iif/oif read the interfaces (mutation: a
    `reads` that says they read nothing fails the first assertion)."""
    from iptrace.nftables.model import Match, Meta
    from iptrace.nftables.reads import reads

    assert reads(Match(Meta("iif"), "==", "lo")) == {"in_iface"}
    assert reads(Match(Meta("oif"), "==", "lo")) == {"out_iface"}
    split = f"""table ip nat {{
	chain pre {{
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 80 dnat to numgen random mod 2 map {{ 0 : {POD}, 1 : {NODE_IP} }}
	}}
}}
"""
    ruleset = load(split + FIREWALL)
    shared, plain = Tracer(ruleset, node_ips=[NODE_IP]), Tracer(ruleset, node_ips=[NODE_IP], share=False)
    for _ in range(2):
        for iface in ("eth0", "lo", "eth1", None):
            for src in (TRUSTED, CLIENT_IP):
                a, b = shared.trace(Packet(src, NODE_IP, 80), in_interface=iface), plain.trace(
                    Packet(src, NODE_IP, 80), in_interface=iface)
                assert [(o.verdict, o.destination) for o in a.outcomes] == [
                    (o.verdict, o.destination) for o in b.outcomes], (src, iface)
    for src, verdicts in ((TRUSTED, {"DNAT"}), (CLIENT_IP, {"DNAT", "DROP"})):  # the node's branch: its input
        assert {o.verdict for o in shared.trace(Packet(src, NODE_IP, 80), in_interface="eth0").outcomes} == verdicts


def test_an_unknown_interface_is_still_assumed() -> None:
    t = Tracer(load(FIREWALL), node_ips=[NODE_IP]).trace(Packet(TRUSTED, NODE_IP, CLOSED))
    assert {o.verdict for o in t.outcomes} == {"DROP"}
    assert any("input interface is not known" in a for a in t.assumptions)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, Tracer]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD)
        topo.add_client_ip(TRUSTED)
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, KUBE_PROXY + FIREWALL)
        yield topo, Tracer(load(list_ruleset(topo)), node_ips=topo.node_ips)


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize(("kind", "src", "dst", "port", "kernel", "predicted"), CASES)
def test_the_kernel_agrees(node: tuple[Topology, Tracer], kind: str, src: str, dst: str, port: int, kernel: str,
                           predicted: set[str]) -> None:
    topo, tracer = node
    result = topo.probe(kind, dst, port, src_ip=None if kind == "node" else src, timeout=0.5)  # type: ignore[arg-type]
    assert result.outcome == kernel, result
    assert {o.verdict for o in trace(tracer, kind, src, dst, port).outcomes} == predicted
