"""An iptables target that hands the packet over ends its chain in an nft listing too (found by kernfuzz4, judged
by the kernel): `-j TPROXY` (Cilium's and Istio's transparent proxies, in mangle PREROUTING) is `xt target
"TPROXY"` in `nft list ruleset` and `nft -j list ruleset` (nft cannot translate it). The kernel gives the
connection to the proxy's socket and the chain's later rules never see it; iptrace read the xt target as one that
neither changes nor decides, so a later DROP in the chain was predicted for a connection the proxy took. Read as
the iptables engine reads `-j TPROXY` (dataplane.HANDED_OFF_TARGETS): handed over, assumed let through."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from iptrace.dataplane import HANDED_OFF_TARGETS, Packet, Trace
from iptrace.iptables import load
from iptrace.iptables.walk import Tracer
from iptrace.nftables import load as load_nft_text
from iptrace.nftables.walk import Tracer as NftTracer
from tests.oracle import Topology, oracle_unavailable, run_in_netns
from tests.oracle.nft import json_listing, list_ruleset

pytestmark = [pytest.mark.root]

PROXIED, DROPPED = "198.18.64.9", "198.18.64.8"
SERVICE = "198.19.0.99"
MANGLE = f"""*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -s {PROXIED}/32 -p tcp -j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x1/0x1
-A PREROUTING -s {PROXIED}/32 -j DROP
-A PREROUTING -s {DROPPED}/32 -j DROP
COMMIT
"""


def test_every_handed_off_target_ends_an_nft_chain() -> None:
    for name in HANDED_OFF_TARGETS:
        rules = f"""table ip mangle {{
	chain PREROUTING {{
		type filter hook prerouting priority mangle; policy accept;
		ip saddr {PROXIED} xt target "{name}"
		ip saddr {PROXIED} drop
	}}
}}
"""
        trace = NftTracer(load_nft_text(rules), node_ips=[]).trace(Packet(PROXIED, SERVICE, 80))
        assert [o.verdict for o in trace.outcomes] == ["ACCEPT"], name
        assert any(f'xt target "{name}"' in a and "assumed it lets the connection through" in a
                   for a in trace.assumptions), trace.assumptions


def _transparent_listener() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    sock.bind(("127.0.0.1", 15001))
    sock.listen(16)
    return sock


@pytest.fixture(scope="module", params=["nft", "legacy"])
def node(request: pytest.FixtureRequest) -> Iterator[tuple[Topology, list[Tracer | NftTracer]]]:
    reason = oracle_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    with Topology(request.param) as topo:
        for src in (PROXIED, DROPPED):
            topo.add_client_ip(src)
        # TPROXY's usual routing, inside the node namespace: marked packets are delivered locally
        for args in (["rule", "add", "fwmark", "0x1/0x1", "lookup", "100"],
                     ["route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"]):
            subprocess.run(["ip", "-n", topo.node, *args], check=True, timeout=30)
        listener = run_in_netns(topo.node, _transparent_listener)
        try:
            topo.load(MANGLE)
            tracers: list[Tracer | NftTracer] = [Tracer(load(topo.save()), node_ips=topo.node_ips)]
            if request.param == "nft":
                listed = list_ruleset(topo)
                assert 'xt target "TPROXY"' in listed or "xt target TPROXY" in listed
                from_json = json_listing(topo)
                tracers += [NftTracer(load_nft_text(listed), node_ips=topo.node_ips),
                            NftTracer(from_json, node_ips=topo.node_ips)]
            yield topo, tracers
        finally:
            listener.close()


def _passes(trace: Trace) -> bool:
    return all(o.verdict != "DROP" for o in trace.outcomes)


@pytest.mark.parametrize("src", [PROXIED, DROPPED])
def test_the_kernel_agrees(node: tuple[Topology, list[Tracer | NftTracer]], src: str) -> None:
    topo, tracers = node
    result = topo.probe("client", SERVICE, 80, src_ip=src, timeout=0.5)
    assert result.outcome == ("connected" if src == PROXIED else "timeout"), result
    for tracer in tracers:
        trace = tracer.trace(Packet(src, SERVICE, 80), in_interface="eth0")
        assert _passes(trace) == (src == PROXIED), (type(tracer).__module__, trace.outcomes)
        if src == PROXIED:
            assert any("transparent proxy socket" in a for a in trace.assumptions)
