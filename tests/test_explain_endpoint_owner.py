"""not-a-service-address for a pod IP that is an endpoint of several Service ports (kube-dns: dns/udp 53,
dns-tcp/tcp 53, metrics/tcp 9153; karma-daemon: http 8080, ftp 2121): the diagnosis names the Service port the
asked port and protocol belong to, and its fix that port's ClusterIP:port and nodePort, in both proxy modes. It
named whichever owner the index listed first (kube-dns:dns-tcp for 53/udp, karma-daemon:http for 2121) and said
the pod served that one Service port 'on ports 2121, 8080'."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

DUMPS = ("nodeport-fb-backends.txt", "nodeport-fb-backends-nft.nft")


def _diagnosis(dump: str, dst: str, *more: str) -> dict[str, str]:
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / dump), "--dst", dst, "--src", "pod",
                                       "--node-ip", "192.168.49.2", "-o", "json", *more])
    (found,) = [d for d in json.loads(result.stdout)["diagnoses"] if d["id"] == "not-a-service-address"]
    return found  # type: ignore[no-any-return]


@pytest.mark.parametrize("dump", DUMPS)
def test_the_owner_is_the_service_port_of_the_asked_port(dump: str) -> None:
    d = _diagnosis(dump, "10.244.1.9:2121")
    assert d["severity"] == "info"
    assert d["summary"] == "10.244.1.9 is a pod IP, an endpoint of default/karma-daemon:ftp, not a Service address"
    assert d["fix"].startswith("through the Service use 10.106.199.236:2121 from inside the cluster; "
                               "192.168.49.2:32461 "), d["fix"]
    assert "It serves default/karma-daemon:ftp on port 2121/tcp" in d["detail"], d["detail"]
    assert "It serves default/karma-daemon:ftp on port 2121/tcp and default/karma-daemon:http on port 8080/tcp." \
        in d["detail"]


@pytest.mark.parametrize("dump", DUMPS)
def test_the_owner_is_the_service_port_of_the_asked_protocol(dump: str) -> None:
    d = _diagnosis(dump, "10.244.0.2:53", "--proto", "udp")
    assert d["summary"] == "10.244.0.2 is a pod IP, an endpoint of kube-system/kube-dns:dns, not a Service address"
    assert d["fix"] == "through the Service use 10.96.0.10:53 from inside the cluster (all UDP)"
    tcp = _diagnosis(dump, "10.244.0.2:9153")
    assert tcp["summary"].endswith("an endpoint of kube-system/kube-dns:metrics, not a Service address")
    assert tcp["fix"] == "through the Service use 10.96.0.10:9153 from inside the cluster"


@pytest.mark.parametrize("dump", DUMPS)
def test_a_port_no_owner_serves_lists_each_owner_with_its_own_port(dump: str) -> None:
    d = _diagnosis(dump, "10.244.1.9:80")
    assert d["severity"] == "warning"
    assert ("default/karma-daemon:ftp on port 2121/tcp" in d["detail"]
            and "default/karma-daemon:http on port 8080/tcp" in d["detail"]), d["detail"]
    assert "not 80: 80 answers only if something else listens there." in d["detail"]


def test_a_service_port_of_three_services_on_a_node_address_is_a_list() -> None:
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / "xlb-era.txt"), "--dst", "172.31.10.20:443",
                                       "--src", "external", "--node-ip", "172.31.10.20", "-o", "json"])
    (d,) = json.loads(result.stdout)["diagnoses"]
    assert d["summary"] == ("443 is the service port of default/admin-api:https, default/kubernetes:https and "
                            "ingress-nginx/ingress-nginx-controller:https, used on a node address")
