"""The representative client from outside the cluster is a documentation address no Service and no endpoint has:
a cluster may hand out a documentation range as LoadBalancer IPs (the bench's synthesized clusters do), and a
client with a Service's own address is not one from outside (its traces reach that Service's rules, and the view's
ports could not share their shapes' traces: every port was traced whole)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import synth
from bench.synth_nft import render_nft
from iptrace import iptables, nftables
from iptrace.cli import main
from iptrace.kube.analysis import analyse

NODE = "192.168.0.10"
# (pay-1's LoadBalancer IP is 203.0.113.1, the first documentation address a client from outside could have)
SPECS = synth.scale(200, 2, 7)


def _dumps() -> dict[str, tuple[object, object, str]]:
    return {"nft": (nftables.load, nftables.DATAPLANE, render_nft(SPECS, node_ips=[NODE], pod_cidr="10.244.0.0/16",
                                                                  service_cidrs=["10.96.0.0/12"])),
            "iptables": (iptables.load, iptables.DATAPLANE, synth.render(SPECS, node_ips=[NODE],
                                                                        pod_cidr="10.244.0.0/16"))}


def test_the_fixture_gives_a_service_the_first_documentation_address() -> None:
    assert any("203.0.113.1" in s.lb_ips for s in SPECS)


@pytest.mark.parametrize("mode", ["nft", "iptables"])
def test_the_views_external_client_is_no_services_address(mode: str) -> None:
    load, dataplane, text = _dumps()[mode]
    analysis = analyse(dataplane, load(text), "ipv4", node_ips=(NODE,))  # type: ignore[operator]
    assert len(analysis.view.services) == len(analysis.layout.keys)
    assert analysis.views.clients.external == "198.51.100.1"
    # (the ports of one shape share its traces: with the LB IP as the client, 3 of 206 did)
    assert analysis.views._shapes.hits > len(analysis.layout.keys) // 2


@pytest.mark.parametrize("mode", ["nft", "iptables"])
def test_explain_and_trace_take_the_same_client(mode: str, tmp_path: Path) -> None:
    dump = tmp_path / "node.txt"
    dump.write_text(str(_dumps()[mode][2]))
    explained = CliRunner().invoke(main, ["explain", str(dump), "--dst", "203.0.113.1:80", "--node-ip", NODE])
    assert "external 198.51.100.1" in explained.stdout, explained.stdout
    traced = CliRunner().invoke(main, ["trace", str(dump), "--dst", "203.0.113.1:80", "--src", "external",
                                       "--node-ip", NODE])
    assert "source 198.51.100.1: an external client" in traced.stdout, traced.stdout
