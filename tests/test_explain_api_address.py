"""explain of a ClusterIP the API has but this node's rules lack (a new Service kube-proxy has not synced), with
cluster data: not-a-service-address said the Service 'was deleted or not yet synced, lives in another cluster, or
the address is mistyped' and told to 'look the Service up again and use its current ClusterIP', beside
missing-service saying the API has it at exactly that address: a reader would look it up, find the same address,
and be no wiser. It now says the API has it there and this node's kube-proxy has not written it, in both modes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.synth import EndpointSpec, PortSpec, ServiceSpec
from bench.synth_nft import render_nft
from iptrace.cli import main
from tests.test_compare import api_objects, base_services, dump_text, with_local


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api-address")
    services = base_services()
    api = copy.deepcopy(services)
    api.append(ServiceSpec("default", "fresh", "10.96.10.99", [PortSpec("http", 80, target_port=8080)],
                           endpoints=[EndpointSpec("10.244.1.9", 8080)]))
    (root / "cluster.json").write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": api_objects(api)}))
    (root / "node.txt").write_text(dump_text(services, "node-a"))
    (root / "node.nft").write_text(render_nft(with_local(services, "node-a"), node_ips=["192.168.49.2"],
                                              pod_cidr="10.244.0.0/16", service_cidrs=["10.96.0.0/12"]))
    return root


@pytest.mark.parametrize("dump", ["node.txt", "node.nft"])
def test_an_address_the_api_has_is_not_said_to_be_stale_or_mistyped(node: Path, dump: str) -> None:
    result = CliRunner().invoke(main, ["explain", str(node / dump), "--dst", "10.96.10.99:80", "--src", "pod",
                                       "--node-ip", "192.168.49.2", "--cluster", str(node / "cluster.json"),
                                       "-o", "json"])
    assert result.exit_code == 3, result.output
    by_id = {d["id"]: d for d in json.loads(result.stdout)["diagnoses"]}
    assert set(by_id) == {"not-a-service-address", "missing-service"}
    d = by_id["not-a-service-address"]
    assert "look the Service up again" not in d["fix"] and "mistyped" not in d["detail"], d
    assert "the API has default/fresh:http at 10.96.10.99:80/tcp" in d["detail"], d["detail"]
    assert "kube-proxy" in d["fix"] and "missing-service" in d["fix"], d["fix"]
