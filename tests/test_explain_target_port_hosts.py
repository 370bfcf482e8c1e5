"""target-port-on-service-ip for a Service whose endpoints are no pods (default/kubernetes: the API server's host
address): the diagnosis speaks of its endpoints, not of "the pods" and "the pod IPs", which would send a reader
looking for pods that do not exist. Pods' Services keep their words."""

from __future__ import annotations

import json

from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

DUMP = str(SAMPLES / "nodeport-fb-backends.txt")


def _diagnosis(dst: str) -> dict[str, str]:
    result = CliRunner().invoke(main, ["explain", DUMP, "--dst", dst, "--node-ip", "192.168.49.2", "-o", "json"])
    assert result.exit_code == 3, result.output
    (found,) = [d for d in json.loads(result.stdout)["diagnoses"] if d["id"] == "target-port-on-service-ip"]
    return found  # type: ignore[no-any-return]


def test_the_api_servers_endpoint_is_no_pod() -> None:
    d = _diagnosis("10.96.0.1:6443")
    assert d["detail"].startswith("6443 is the port the endpoints listen on (the Service's targetPort). kube-proxy "
                                  "only rewrites 10.96.0.1:443 to port 6443 of an endpoint;"), d["detail"]
    assert d["fix"].endswith("Port 6443 only works on the endpoint addresses themselves (192.168.49.2:6443)")
    assert "pod" not in d["detail"] + d["fix"]


def test_a_pods_service_keeps_its_words() -> None:
    d = _diagnosis("10.101.234.168:8001")
    assert "the port the pods listen on" in d["detail"] and "of a pod;" in d["detail"]
    assert "only works on the pod IPs themselves (10.244.1.7:8001, 10.244.2.3:8001)" in d["fix"]
