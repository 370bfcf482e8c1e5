"""A set with timeouts that no rule fills (found by kernfuzz2, judged by the kernel): a firewall's block list
(`flags timeout`, elements added from user space, as fail2ban, crowdsec or firewalld's timed ipsets write them)
holds its listed elements until they expire, and the kernel looks a packet up in it like in any set. iptrace took
every set with a timeout for one the packet path fills (kube-proxy's session-affinity sets, which a rule
`update`s) and assumed a first packet finds nothing in it: a blocked client was predicted to reach the Service the
kernel dropped it for. A set some rule updates is still read as empty for a first connection (the assumption
said)."""

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

POD, POD_B = "198.18.128.10", "198.18.128.11"
BLOCKED, ALSO_BLOCKED, FREE = "198.18.64.6", "198.18.64.7", "198.18.64.8"
SERVICE, STICKY, PORT = "198.19.0.10", "198.19.0.11", 8080
KUBE_PROXY = render_nft(
    [ServiceSpec("shop", "web", SERVICE, [PortSpec("http", 80, target_port=PORT)],
                 endpoints=[EndpointSpec(POD, PORT), EndpointSpec(POD_B, PORT)]),
     ServiceSpec("shop", "sticky", STICKY, [PortSpec("http", 80, target_port=PORT)], session_affinity_timeout=10800,
                 endpoints=[EndpointSpec(POD, PORT), EndpointSpec(POD_B, PORT)])],
    node_ips=[NODE_IP], pod_cidr="198.18.128.0/17", service_cidrs=["198.19.0.0/17"], form="transaction")
BLOCKLIST = f"""table inet blocklist {{
	set blocked {{
		type ipv4_addr
		flags timeout
		timeout 1h
		elements = {{ {BLOCKED}, {ALSO_BLOCKED} timeout 2h }}
	}}
	chain prerouting {{
		type filter hook prerouting priority raw; policy accept;
		ip saddr @blocked drop
	}}
}}
"""


def verdicts(t: Trace) -> set[str]:
    return {o.verdict for o in t.outcomes}


def tracer(text: str) -> Tracer:
    return Tracer(load(text), node_ips=[NODE_IP])


@pytest.mark.parametrize("src", [BLOCKED, ALSO_BLOCKED])
def test_a_listed_element_of_a_set_no_rule_fills_is_found(src: str) -> None:
    t = tracer(KUBE_PROXY + BLOCKLIST).trace(Packet(src, SERVICE, 80))
    assert verdicts(t) == {"DROP"}
    assert not any("filled by the packet path" in a for a in t.assumptions), t.assumptions
    assert verdicts(tracer(KUBE_PROXY + BLOCKLIST).trace(Packet(FREE, SERVICE, 80))) == {"DNAT"}


def test_a_set_a_rule_updates_is_still_empty_for_a_first_connection() -> None:
    """kube-proxy's affinity set, holding an entry an earlier connection of this client made: the trace is of a
    first connection (it goes to either endpoint), and says so — also when the set is declared without the
    `dynamic` flag (the rule that updates it is what tells)."""
    listed = KUBE_PROXY.replace("flags dynamic,timeout", "flags timeout")
    name = next(w for w in listed.split() if w.startswith("@affinity-"))[1:]
    listed += f"add element ip kube-proxy {name} {{ {FREE} }}\n"
    t = tracer(listed).trace(Packet(FREE, STICKY, 80))
    assert {o.destination for o in t.outcomes} == {f"{POD}:{PORT}", f"{POD_B}:{PORT}"}
    assert any(f"@{name} is filled by the packet path" in a and "earlier connection" in a for a in t.assumptions)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Topology, Tracer]]:
    with Topology("nft") as topo:
        topo.add_pod_ip(POD, POD_B)
        for src in (BLOCKED, ALSO_BLOCKED, FREE):
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        load_nft(topo, KUBE_PROXY + BLOCKLIST)
        yield topo, tracer(list_ruleset(topo))


@pytest.mark.root
@requires_nft()
@pytest.mark.parametrize("src", [BLOCKED, ALSO_BLOCKED, FREE])
@pytest.mark.parametrize("dst", [SERVICE, STICKY, POD])
def test_the_kernel_agrees(node: tuple[Topology, Tracer], src: str, dst: str) -> None:
    topo, trace = node
    port = PORT if dst == POD else 80
    result = topo.probe("client", dst, port, src_ip=src, timeout=0.5)
    predicted = verdicts(trace.trace(Packet(src, dst, port), in_interface="eth0"))
    if src == FREE:
        assert result.outcome == "connected" and predicted == {"ACCEPT" if dst == POD else "DNAT"}, (result, predicted)
    else:
        assert result.outcome == "timeout" and predicted == {"DROP"}, (result, predicted)
