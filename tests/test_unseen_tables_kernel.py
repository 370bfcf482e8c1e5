"""Rules the kernel runs that an iptables-nft-save dump only mentions (found by kernfuzz4, judged by the kernel):
with tables in the legacy backend too, iptables-nft-save warns `# Warning: iptables-legacy tables present` and
with a base chain nft added to its table, `# Table `filter' contains incompatible base-chains, use 'nft' tool to
list them.` (a whole table iptables cannot show: `# Table `filter' is incompatible, use 'nft' tool.`). The kernel
runs those rules as well: a legacy (or nft) FORWARD rule dropped a client's connection to a ClusterIP while the
trace of the dump said DNAT and named no assumption (`explain` said iptables-backend-split; `trace` nothing).
Every trace of such a dump now names what it cannot see."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from iptrace.dataplane import Packet, Trace
from iptrace.iptables import load
from iptrace.iptables.walk import Tracer
from tests.oracle import NODE_IP, Topology
from tests.oracle.nft import load_nft, requires_nft

pytestmark = [pytest.mark.root]

POD, SERVICE, PORT = "198.18.128.10", "198.19.0.10", 8080
BLOCKED, ALLOWED = "198.18.64.9", "198.18.64.8"
DUMP = render([ServiceSpec("shop", "web", SERVICE, [PortSpec("http", 80, target_port=PORT)],
                           endpoints=[EndpointSpec(POD, PORT)])],
              node_ips=[NODE_IP], pod_cidr="198.18.128.0/17")
LEGACY = f"*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -s {BLOCKED}/32 -j DROP\nCOMMIT\n"
# (a base chain of nft's own in iptables-nft's table: iptables-nft-save leaves it out and says so)
NFT = f"""table ip filter {{
	chain firewall {{
		type filter hook forward priority 5; policy accept;
		ip saddr {BLOCKED} drop
	}}
}}
"""

def unseen(trace: Trace) -> list[str]:
    return [a for a in trace.assumptions if "this dump does not hold them" in a]


def test_a_dump_without_warnings_names_nothing_unseen() -> None:
    assert unseen(Tracer(load(DUMP), node_ips=[NODE_IP]).trace(Packet(BLOCKED, SERVICE, 80))) == []


@pytest.fixture(scope="module", params=["legacy", "nft"])
def node(request: pytest.FixtureRequest) -> Iterator[tuple[Topology, str, str]]:
    beside = request.param
    with Topology("nft") as topo:
        topo.add_pod_ip(POD)
        for src in (BLOCKED, ALLOWED):
            topo.add_client_ip(src)
        topo.start_server(tcp_ports=[PORT])
        topo.load(DUMP)
        if beside == "legacy":
            subprocess.run(["ip", "netns", "exec", topo.node, "iptables-legacy-restore"], input=LEGACY, text=True,
                           check=True, timeout=30)
        else:
            load_nft(topo, NFT)
        # (the warning goes to stderr: a collector that keeps it, as `iptrace collect` does, puts it first)
        saved = subprocess.run(["ip", "netns", "exec", topo.node, "iptables-nft-save"], capture_output=True,
                               text=True, check=True, timeout=30)
        yield topo, beside, saved.stderr + saved.stdout


@requires_nft()
@pytest.mark.parametrize("src", [BLOCKED, ALLOWED])
def test_the_kernel_runs_what_the_dump_does_not_hold(node: tuple[Topology, str, str], src: str) -> None:
    topo, beside, text = node
    assert ("iptables-legacy tables present" if beside == "legacy" else "incompatible base-chains") in text
    result = topo.probe("client", SERVICE, 80, src_ip=src, timeout=0.5)
    assert result.outcome == ("timeout" if src == BLOCKED else "connected"), result
    trace = Tracer(load(text), node_ips=topo.node_ips).trace(Packet(src, SERVICE, 80), in_interface="eth0")
    assert {o.verdict for o in trace.outcomes} == {"DNAT"}  # (what the dump's own rules do)
    (note,) = unseen(trace)
    assert ("iptables-legacy-save does" if beside == "legacy" else "nft list ruleset does") in note
