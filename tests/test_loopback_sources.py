"""127.0.0.1 (or ::1) is loopback in every network namespace: a pod or an outside client that connects to it
reaches itself, never the node, so neither dataplane's rules see the packet (iptrace.dataplane.
senders_own_loopback). Only the node's own connection to a localhost nodePort meets kube-proxy's rules, and in
iptables mode only with route_localnet (tests/test_oracle_selftest.py probes that in the kernel)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.dataplane import ROUTE_LOCALNET
from tests.conftest import SAMPLES

IPT = str(SAMPLES / "nodeport-fb-backends.txt")
NFT = str(SAMPLES / "nodeport-fb-backends-nft.nft")


def run(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, [*args, "-o", "json"])
    assert result.exit_code in (0, 3), result.output
    return result.exit_code, json.loads(result.output)


@pytest.mark.parametrize("dump", [IPT, NFT])
@pytest.mark.parametrize("src", ["pod", "external", "10.244.2.9"])
def test_loopback_from_elsewhere_never_reaches_the_nodes_rules(dump: str, src: str) -> None:
    _, doc = run("trace", dump, "--dst", "127.0.0.1:30904", "--src", src)
    assert [(o["verdict"], o["destination"], o["path"]) for o in doc["outcomes"]] == [("CONTINUE", None, [])]
    assert any("never reaches this node's rules" in a for a in doc["assumptions"]), doc["assumptions"]


@pytest.mark.parametrize("dump", [IPT, NFT])
def test_explain_says_the_pods_loopback_is_its_own_and_what_to_use(dump: str) -> None:
    code, doc = run("explain", dump, "--dst", "127.0.0.1:30904", "--src", "pod", "--node-ip", "192.168.49.2")
    assert code == 3
    assert [d["id"] for d in doc["diagnoses"]] == ["client-loopback"]
    found = doc["diagnoses"][0]
    assert found["severity"] == "error" and "the pod's own loopback" in found["summary"]
    assert found["fix"] == ("use 192.168.49.2:30904 (the node's address and the nodePort), or 10.101.234.168:5001 "
                            "(the ClusterIP and port) from inside the cluster")
    assert doc["headline"].startswith("127.0.0.1:30904/tcp never reaches this node")


def test_the_node_itself_reaches_a_localhost_node_port_in_iptables_mode_with_route_localnet() -> None:
    _, doc = run("trace", IPT, "--dst", "127.0.0.1:30904", "--src", "node")
    assert {o["verdict"] for o in doc["outcomes"]} == {"DNAT"}
    assert ROUTE_LOCALNET in doc["assumptions"]
    # Near-miss: a node address needs no route_localnet.
    _, doc = run("trace", IPT, "--dst", "192.168.49.2:30904", "--src", "node", "--node-ip", "192.168.49.2")
    assert {o["verdict"] for o in doc["outcomes"]} == {"DNAT"} and ROUTE_LOCALNET not in doc["assumptions"]


def test_the_node_itself_gets_no_localhost_node_port_in_nftables_mode() -> None:
    code, doc = run("explain", NFT, "--dst", "127.0.0.1:30904", "--src", "node", "--node-ip", "192.168.49.2")
    assert code == 3 and [d["id"] for d in doc["diagnoses"]] == ["node-port-not-on-address"]


def test_a_kube_proxy_fragment_is_not_entered_from_elsewhere_either(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # kube-proxy's restore text (no built-in chains): the walk enters KUBE-SERVICES directly, but a pod's packet to
    # its own loopback still never gets there.
    nat = [line for line in open(IPT).read().split("*nat\n", 1)[1].split("COMMIT", 1)[0].splitlines()
           if line.startswith(":KUBE") or line.startswith("-A KUBE")]
    dump = tmp_path / "fragment.txt"
    dump.write_text("*nat\n" + "\n".join(nat) + "\nCOMMIT\n")
    _, doc = run("trace", str(dump), "--dst", "127.0.0.1:30904", "--src", "pod")
    assert doc["entry"] == "kube-proxy"
    assert [(o["verdict"], o["path"]) for o in doc["outcomes"]] == [("CONTINUE", [])]
    _, doc = run("trace", str(dump), "--dst", "127.0.0.1:30904", "--src", "node")
    assert {o["verdict"] for o in doc["outcomes"]} == {"DNAT"}


@pytest.mark.parametrize(("dump", "dst", "use"), [
    (NFT, "127.0.0.1:30904", "use 192.168.49.2:30904/tcp (a node address that accepts NodePorts), or "
                             "10.101.234.168:5001/tcp from inside the cluster"),
    (str(SAMPLES / "ipv6.txt"), "[::1]:30080", "use <node-ip>:30080/tcp (a node address that accepts NodePorts), "
                                               "or [fd00:10:96::5e1]:80/tcp from inside the cluster")])
def test_a_node_port_of_another_protocol_on_localhost_names_the_address_first(dump: str, dst: str, use: str) -> None:
    # The node's own UDP packet to a TCP nodePort on localhost, where kube-proxy opens no NodePort at all: the fix is
    # a node address (and TCP), never "use TCP on localhost", which fails just the same.
    code, doc = run("explain", dump, "--dst", dst, "--proto", "udp", "--src", "node", "--node-ip", "192.168.49.2")
    assert code == 3 and [d["id"] for d in doc["diagnoses"]] == ["node-port-not-on-address"]
    assert doc["diagnoses"][0]["fix"] == use


def test_loopback_on_a_port_no_service_has_says_what_to_address_instead() -> None:
    code, doc = run("explain", IPT, "--dst", "127.0.0.1:9999", "--src", "external")
    assert code == 3
    found = doc["diagnoses"][0]
    assert found["id"] == "client-loopback" and "outside client's own loopback" in found["summary"]
    assert "port 9999. No Service has nodePort 9999/tcp. A localhost" in found["detail"]
    assert found["fix"] == "address a Service by its ClusterIP and port, or a nodePort on a node's address"


@pytest.mark.parametrize("dump", [IPT, NFT])
def test_the_unspecified_address_is_the_senders_own_host(dump: str) -> None:
    # curl 0.0.0.0:30904: Linux connects it to the sender itself: a pod's own, or the node's 127.0.0.1.
    _, doc = run("trace", dump, "--dst", "0.0.0.0:30904", "--src", "pod")
    assert [(o["verdict"], o["path"]) for o in doc["outcomes"]] == [("CONTINUE", [])]
    _, node = run("trace", dump, "--dst", "0.0.0.0:30904", "--src", "node")
    _, localhost = run("trace", dump, "--dst", "127.0.0.1:30904", "--src", "node")
    assert node["packet"] == localhost["packet"] and node["outcomes"] == localhost["outcomes"]
    assert "destination 0.0.0.0: Linux connects a socket addressed to it to 127.0.0.1, the node itself" in \
        node["assumptions"]
    code, doc = run("explain", dump, "--dst", "0.0.0.0:30904", "--src", "external")
    assert code == 3 and [d["id"] for d in doc["diagnoses"]] == ["client-loopback"]


def test_the_unspecified_ipv6_address_too() -> None:
    _, doc = run("trace", str(SAMPLES / "dual-stack-nft.nft"), "--dst", "[::]:30080", "--src", "pod")
    assert [(o["verdict"], o["path"]) for o in doc["outcomes"]] == [("CONTINUE", [])]
    _, doc = run("trace", str(SAMPLES / "dual-stack-nft.nft"), "--dst", "[::]:30080", "--src", "node")
    assert doc["packet"]["dst"] == "::1"


def test_a_given_source_that_may_be_the_node_is_told_about_node_ip() -> None:
    _, doc = run("explain", IPT, "--dst", "127.0.0.1:30904", "--src", "192.168.49.2")
    assert doc["diagnoses"][0]["detail"].endswith(
        "If 192.168.49.2 is this node's own address, pass it with --node-ip (the node's own connections to 127.0.0.1 "
        "do meet its rules).")
    _, doc = run("explain", IPT, "--dst", "127.0.0.1:30904", "--src", "192.168.49.2", "--node-ip", "192.168.49.2")
    assert [d["id"] for d in doc["diagnoses"]] == ["healthy"]
    _, doc = run("explain", IPT, "--dst", "127.0.0.1:30904", "--src", "pod")
    assert "--node-ip" not in doc["diagnoses"][0]["detail"]
