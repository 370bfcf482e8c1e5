"""--kubeconfig/--context through the CLI: the unmodified kubernetes client over real HTTP to a local
API-shaped server; read-only; errors are one line and exit 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.apiserver import ApiServer, Grant, write_kubeconfig

SAMPLE = Path(__file__).resolve().parent.parent / "sample_dumps" / "nodeport-fb-backends.txt"


@pytest.fixture
def api():
    grants = {"admin-token": Grant("admin"),
              "no-slices-token": Grant("bob", resources=frozenset({"services", "nodes"}))}
    with ApiServer.from_data(grants) as server:
        yield server


@pytest.fixture
def kubeconfig(api: ApiServer, tmp_path: Path) -> str:
    return str(write_kubeconfig(tmp_path / "kubeconfig", api.url, {"admin": "admin-token",
                                                                    "bob": "no-slices-token"}))


def test_services_live_from_the_api(api: ApiServer, kubeconfig: str) -> None:
    result = CliRunner().invoke(main, ["services", str(SAMPLE), "--kubeconfig", kubeconfig, "-o", "json",
                                       "--node-ip", "192.168.49.2"])
    assert result.exit_code == 0, result.output
    items = {i["service"]: i for i in json.loads(result.stdout)}
    assert [f["id"] for f in items["default/karma-daemon:http"]["findings"]] == ["stale-endpoints"]
    assert all(r.method == "GET" for r in api.requests), "iptrace must never write to the cluster"
    assert {r.path.split("?")[0] for r in api.requests} >= {"/api/v1/services",
                                                            "/apis/discovery.k8s.io/v1/endpointslices"}


def test_forbidden_names_the_missing_permission(kubeconfig: str) -> None:
    result = CliRunner().invoke(main, ["services", str(SAMPLE), "--kubeconfig", kubeconfig, "--context", "bob"])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: forbidden: list endpointslices.discovery.k8s.io at cluster scope"), line


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}", {"admin": "x"})
    result = CliRunner().invoke(main, ["explain", str(SAMPLE), "--dst", "10.101.234.168:5001",
                                       "--kubeconfig", str(config)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: cannot reach the API server at http://127.0.0.1:{port}")


def test_namespace_limits_the_comparison_too(api: ApiServer, kubeconfig: str) -> None:
    # Only kube-system was read: default's Service ports on the node are not "unknown" to the API.
    result = CliRunner().invoke(main, ["audit", str(SAMPLE), "--kubeconfig", kubeconfig, "-n", "kube-system",
                                       "-o", "json"])
    report = json.loads(result.stdout)
    assert {f["service"] for f in report["findings"] if f["service"]} <= {
        "kube-system/kube-dns:dns/udp", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics"}, \
        report["findings"]
    assert [r.path.split("?")[0] for r in api.requests if "services" in r.path] == [
        "/api/v1/namespaces/kube-system/services"]


def test_services_without_endpointslices_compare_the_rest_and_say_so() -> None:
    # `kubectl get --raw /api/v1/services` alone: no stale-endpoints about every Service, and a note on stderr.
    data = Path(__file__).resolve().parent / "data" / "cluster"
    result = CliRunner().invoke(main, ["audit", str(SAMPLE), "--cluster", str(data / "services.json"),
                                       "-o", "json"])
    report = json.loads(result.stdout)
    assert "stale-endpoints" not in {f["id"] for f in report["findings"]}, report["findings"]
    assert {f["service"] for f in report["findings"] if f["id"] == "missing-service"} == {
        "default/orphan", "default/shop-lb:http"}
    assert "has Services but no EndpointSlice" in result.stderr


def test_namespace_scopes_cluster_files_as_it_does_a_live_read() -> None:
    # `-n kube-system --cluster all.json`: the files' other namespaces are left out and so is the comparison of
    # the node's Service ports there, as with --kubeconfig (it used to be ignored without a word).
    data = Path(__file__).resolve().parent / "data" / "cluster"
    result = CliRunner().invoke(main, ["audit", str(SAMPLE), "--cluster", str(data), "-n", "kube-system",
                                       "-o", "json"])
    report = json.loads(result.stdout)
    services = {f["service"] for f in report["findings"] if f["service"]}
    assert services and services <= {
        "kube-system/kube-dns:dns/udp", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics"}, \
        report["findings"]


@pytest.mark.parametrize("data", [{"apiVersion": "v1", "kind": "List", "items": []}, "nodes.json"])
def test_cluster_data_without_services_is_said_once_not_as_a_warning_per_port(tmp_path: Path, data: Any) -> None:
    # `kubectl get svc -n wrong-namespace -o json` (an empty List), or a NodeList alone: not one unknown-service
    # per Service port of the node, and no headline claiming the node agrees with the API; one note says why.
    if isinstance(data, dict):
        path = tmp_path / "empty.json"
        path.write_text(json.dumps(data))
    else:
        path = Path(__file__).resolve().parent / "data" / "cluster" / data
    result = CliRunner().invoke(main, ["audit", str(SAMPLE), "--cluster", str(path), "-o", "json"])
    report = json.loads(result.stdout)
    assert report["findings"] == [] and report["cluster"] is None, report
    assert result.stderr.count("holds no Service") == 1, result.stderr
    assert f"the cluster data ({path}) holds no Service (" in result.stderr
    text = CliRunner().invoke(main, ["audit", str(SAMPLE), "--cluster", str(path)])
    assert "the API asks" not in text.stdout and "unknown-service" not in text.stdout, text.stdout
