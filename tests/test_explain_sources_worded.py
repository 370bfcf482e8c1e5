"""explain without --src when every source gets the same diagnosis but its words name the source
(source-range-blocked: '<client> is outside the loadBalancerSourceRanges'): each source's own words are shown.
The text printed the pod's alone ('fd00:10:244::4 is outside …') under 'The same from every source', so an SRE
asking about an outside client read of a pod address it never used. Words that name no source are still said once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES


def _text(dump: str, dst: str, *node_ips: str) -> str:
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / dump), "--dst", dst,
                                       *(x for ip in node_ips for x in ("--node-ip", ip))])
    assert result.exit_code == 3, result.output
    return result.stdout


@pytest.mark.parametrize(("dump", "node_ips"), [("ipv6.txt", ("fd00:192:168:49::2",)),
                                                ("dual-stack-nft.nft", ("192.168.49.2", "fd00:192:168:49::2"))])
def test_each_source_is_named_in_its_own_diagnosis(dump: str, node_ips: tuple[str, ...]) -> None:
    text = _text(dump, "[2001:db8:49::240]:80", *node_ips)
    assert text.startswith("[2001:db8:49::240]:80/tcp: dropped (times out) from every source, as each says below.")
    for src in ("fd00:10:244::4", "fd00:192:168:49::2", "2001:db8::1"):
        assert f"✗ {src} is outside the loadBalancerSourceRanges of default/web:http" in text, text
    assert "The same from every source" not in text
    assert "depends on where the client is" not in text


def test_words_that_name_no_source_are_said_once() -> None:
    text = _text("nodeport-fb-backends.txt", "10.101.234.168:8001", "192.168.49.2")
    assert text.count("[target-port-on-service-ip, error]") == 1
    assert "The same from every source (pod 10.244.0.4, node 192.168.49.2, external 203.0.113.1)." in text


@pytest.mark.parametrize("dump", ["etp-local-with-endpoints.txt", "etp-local-with-endpoints-nft.nft"])
def test_each_source_reaching_other_endpoints_is_shown(dump: str) -> None:
    """externalTrafficPolicy Local: pods and the node reach both endpoints, an outside client only this node's.
    The text printed the pod's '10.244.0.12:80 50%, 10.244.1.14:80 50%' under 'The same from every source'."""
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / dump), "--dst", "192.168.49.2:31080",
                                       "--node-ip", "192.168.49.2"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "The same from every source" not in text
    assert text.startswith("192.168.49.2:31080/tcp: reaches an endpoint from every source, as each says below.")
    outside = text.split("From outside the cluster (203.0.113.1): ")[1]
    assert "reaches ingress-nginx/ingress-nginx-controller:http: 10.244.0.12:80 100%" in outside, outside
    pod = text.split("From a pod (10.244.0.4): ")[1].split("From the node itself")[0]
    assert "10.244.0.12:80 50%, 10.244.1.14:80 50%" in pod, pod


def test_the_differences_name_the_endpoints_each_source_reaches() -> None:
    result = CliRunner().invoke(main, ["explain", str(SAMPLES / "etp-local-with-endpoints-nft.nft"), "--dst",
                                       "192.168.49.2:31080", "--node-ip", "192.168.49.2", "-o", "json"])
    differences = json.loads(result.stdout)["differences"]
    assert ("endpoints reached differ: from a pod and from the node itself 10.244.0.12:80, 10.244.1.14:80; "
            "from outside the cluster 10.244.0.12:80") in differences, differences


def test_a_masquerade_with_no_dnat_names_no_endpoint(corpus) -> None:
    # kubeadm+flannel (corpus 017): flannel masquerades pods' packets to non-pod addresses, so a pod's packet to
    # the dashboard's targetPort on its ClusterIP is masqueraded; no rule DNATs it, so there is no endpoint to
    # see the node's address (the note said "the endpoint sees the node's address").
    dump = corpus / "realworld" / "017-kubeadm-flannel-kube-ext-master.txt"
    if not dump.exists():
        pytest.skip(f"{dump} absent")
    result = CliRunner().invoke(main, ["explain", str(dump), "--dst", "10.96.223.136:8443"])
    assert "[target-port-on-service-ip, error]" in result.stdout
    assert ("Note: masqueraded from a pod (10.96.223.136 would see the node's address), not from the node itself "
            "or from outside the cluster") in result.stdout, result.stdout
    result = CliRunner().invoke(main, ["explain", str(dump), "--dst", "10.97.121.82:8080"])
    assert "masqueraded from the node itself and from outside the cluster (the endpoint sees" in result.stdout


def test_a_host_network_endpoint_blocked_in_forward_may_be_the_node_itself(corpus) -> None:
    # k3s single node (corpus 012, host VM-20-5): the API server endpoint 10.0.20.5:6443 is the node's own
    # address. Without --node-ip the trace forwards a pod's packet to it and FORWARD's policy DROP stops it; the
    # kernel delivers it locally (INPUT) instead. The diagnosis says so, and with --node-ip the answer is healthy.
    dump = corpus / "realworld" / "012-k3s-counters-no-endpoints.txt"
    if not dump.exists():
        pytest.skip(f"{dump} absent")
    args = ["explain", str(dump), "--dst", "10.43.0.1:443", "--src", "pod", "-o", "json"]
    (diagnosis,) = json.loads(CliRunner().invoke(main, args).stdout)["diagnoses"]
    assert diagnosis["id"] == "blocked-by-rule"
    assert "if it is this node's own address" in diagnosis["detail"] and "--node-ip 10.0.20.5" in diagnosis["detail"]
    doc = json.loads(CliRunner().invoke(main, [*args, "--node-ip", "10.0.20.5"]).stdout)
    assert [d["id"] for d in doc["diagnoses"]] == ["healthy"]
    # the node's addresses given (not 10.0.20.5): another machine indeed, and nothing to add
    doc = json.loads(CliRunner().invoke(main, [*args, "--node-ip", "10.0.20.6"]).stdout)
    (diagnosis,) = doc["diagnoses"]
    assert diagnosis["id"] == "blocked-by-rule" and "own address" not in diagnosis["detail"]
