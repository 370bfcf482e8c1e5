"""Which loopback addresses a localhost NodePort answers on, as the kernel says. kube-proxy (iptables mode, 1.29+)
writes each nodePort's localhost rule for 127.0.0.0/8 in KUBE-NODEPORTS, but KUBE-SERVICES sends there only what
its dispatch takes: every local address by default (all of 127.0.0.0/8, lo's), only `-d 127.0.0.1` with
--nodeport-addresses 127.0.0.0/8 (the address lo holds), no loopback address with `! -d 127.0.0.0/8`. The
Service view's note must name what the kernel answers on (it named the localhost rule's 127.0.0.0/8 whatever the
dispatch). Loaded into the oracle's `node` namespace (route_localnet on, as kube-proxy sets it); probes from the
node itself to 127.0.0.x.
"""

from __future__ import annotations

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace import dataplanes
from iptrace.dataplane import Packet
from iptrace.kube.analysis import analyse
from iptrace.layout import NODE_PORT
from tests.oracle import NODE_IP, Topology, oracle_unavailable

pytestmark = [pytest.mark.root]

POD_CIDR, EP, PORT, NODE_PORT_NUMBER = "198.18.128.0/17", "198.18.128.10", 8080, 30080
SERVICES = [ServiceSpec("shop", "web", "198.19.0.10", [PortSpec("http", 80, node_port=NODE_PORT_NUMBER,
                                                                target_port=PORT)],
                        type="NodePort", endpoints=[EndpointSpec(EP, PORT, local=True)])]


@pytest.mark.parametrize(("addresses", "note"), [
    (None, "also reachable on localhost 127.0.0.0/8"),
    (["127.0.0.0/8"], "also reachable on localhost 127.0.0.1 "),
    (["127.0.0.0/8", "198.18.0.0/24"], "also reachable on localhost 127.0.0.1 "),
])
def test_the_localhost_note_names_the_addresses_the_kernel_answers_on(addresses: list[str] | None, note: str) -> None:
    reason = oracle_unavailable("nft")
    if reason:
        pytest.skip(reason)
    text = render(SERVICES, node_ips=[NODE_IP], pod_cidr=POD_CIDR, nodeport_addresses=addresses)
    dataplane, ruleset = dataplanes.load(text, source="rules")
    analysis = analyse(dataplane, ruleset, "ipv4", node_ips=[NODE_IP])
    view = analysis.port_view(analysis.layout.service_ports[0].key)
    notes = [n for e in view.entries if e.kind == NODE_PORT for n in e.notes if "localhost" in n]
    assert len(notes) == 1 and notes[0].startswith(note), notes
    with Topology("nft") as topo:
        topo.add_pod_ip(EP)
        topo.start_server(tcp_ports=[PORT])
        topo.load(text)
        for dst in ("127.0.0.1", "127.0.0.2", "127.1.2.3"):
            result = topo.probe("node", dst, NODE_PORT_NUMBER, timeout=0.5)
            reached = result.outcome == "connected"
            assert reached == (note.endswith("/8") or dst == "127.0.0.1"), (dst, result, notes)
            assert reached == (result.endpoint == (EP, PORT)), result
            trace = analysis.tracer.trace(Packet(dst, dst, NODE_PORT_NUMBER))
            assert reached == ("DNAT" in trace.verdicts), (dst, trace)
