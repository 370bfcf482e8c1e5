"""A Service named in --dst that this node's rules do not name, but the cluster data has (`explain --dst
orphan.default:ka-port --cluster …`): asked at the API's ClusterIP, so explain says the node has no rules for it
(missing-service). It was an error naming the dump's closest Services, which hid the very finding asked for."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

DUMP = str(SAMPLES / "nodeport-fb-backends.txt")


def _cluster(tmp_path: Path, **spec: object) -> str:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "orphan"},
               "spec": {"type": "ClusterIP", "clusterIP": "10.96.55.55", "clusterIPs": ["10.96.55.55"],
                        "ports": [{"name": "ka-port", "port": 5001, "protocol": "TCP", "targetPort": 8001}],
                        **spec}}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [service]}))
    return str(path)


def test_a_service_only_the_api_has_is_explained_at_its_cluster_ip(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    for dst in ("orphan.default:ka-port", "default/orphan:5001", "orphan:5001"):
        result = CliRunner().invoke(main, ["explain", DUMP, "--dst", dst, "--cluster", cluster, "-o", "json"])
        assert result.exit_code == 3, result.output
        report = json.loads(result.stdout)
        assert (report["destination"], report["proto"]) == ("10.96.55.55:5001", "tcp")
        assert "missing-service" in [d["id"] for d in report["diagnoses"]], report["diagnoses"]
        assert (f"note: {dst} is default/orphan:ka-port at 10.96.55.55:5001/tcp in {cluster}; {DUMP} has no rules "
                "naming it") in result.stderr
    trace = CliRunner().invoke(main, ["trace", DUMP, "--dst", "orphan.default:5001", "--cluster", cluster])
    assert trace.exit_code == 0 and "10.96.55.55:5001" in trace.stdout, trace.output


def test_without_the_service_in_the_cluster_data_the_error_stays(tmp_path: Path) -> None:
    """No cluster data, a headless Service, or a port it does not have: still the error naming the closest."""
    for args in ([], ["--cluster", _cluster(tmp_path, clusterIP="None", clusterIPs=["None"])]):
        result = CliRunner().invoke(main, ["explain", DUMP, "--dst", "orphan.default:5001", *args])
        assert result.exit_code == 1, result.output
        assert "Error: no Service default/orphan in " in result.stderr
    result = CliRunner().invoke(main, ["explain", DUMP, "--dst", "orphan.default:9", "--cluster", _cluster(tmp_path)])
    assert result.exit_code == 1 and "Error: no Service default/orphan in " in result.stderr
