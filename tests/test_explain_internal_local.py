"""explain of a ClusterIP whose Service has internalTrafficPolicy: Local and no endpoint on this node (its one
endpoint runs elsewhere): kube-proxy DROPs the pods' and the node's connections ('has no local endpoints'), in
both proxy modes. explain said no-endpoints ('has no ready endpoints'; 'kube-proxy's REJECT rule … guards only
traffic that arrives from outside; this packet leaves the node itself, so it is not rewritten') with a fix to
look for ready pods, all wrong: the endpoint is ready, a rule drops the packet, and the policy is why."""

from __future__ import annotations

import json
from functools import cache

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec, render
from bench.synth_nft import render_nft
from iptrace.cli import main

SERVICES = [
    ServiceSpec("app", "itp-local", "10.100.0.10", [PortSpec("http", 80, target_port=8080)],
                internal_traffic_policy="Local", endpoints=[EndpointSpec("10.244.2.5", 8080, local=False)]),
    ServiceSpec("app", "other", "10.100.0.11", [PortSpec("http", 80, target_port=8080)],
                endpoints=[EndpointSpec("10.244.2.6", 8080)]),
]


@cache
def _dump(mode: str) -> str:
    if mode == "iptables":
        return render(SERVICES, node_ips=["192.168.49.2"], pod_cidr="10.244.0.0/16")
    return render_nft(SERVICES, node_ips=["192.168.49.2"], pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"])


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("src", ["pod", "node"])
def test_internal_policy_local_without_a_local_endpoint(mode: str, src: str, tmp_path) -> None:
    path = tmp_path / ("node.txt" if mode == "iptables" else "node.nft")
    path.write_text(_dump(mode))
    result = CliRunner().invoke(main, ["explain", str(path), "--dst", "10.100.0.10:80", "--src", src,
                                       "--node-ip", "192.168.49.2", "-o", "json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "DROP"
    assert [d["id"] for d in doc["diagnoses"]] == ["no-local-endpoints"], doc["diagnoses"]
    (d,) = doc["diagnoses"]
    assert d["summary"] == ("app/itp-local:http has internalTrafficPolicy Local and no endpoint on this node, so the "
                            "packet is dropped")
    assert "REJECT" not in d["detail"] and "ready" not in d["detail"]
    assert d["fix"] == "run a pod of app/itp-local:http on this node, or set internalTrafficPolicy: Cluster"
    assert "keep the client's source address" not in d["detail"]
