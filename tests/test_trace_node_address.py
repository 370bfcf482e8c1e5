"""`trace --dst ADDR:NODEPORT` when the node's addresses are unknown (no --node-ip, none in the rules): the
tracer takes ADDR for another host's, so kube-proxy's nodePort rules do not apply. The answer stays; the trace
says what it assumed and how to change it (--node-ip), in text and in JSON `assumptions`, on both dataplanes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

ASSUMED = ("destination 192.168.49.2: taken as not the node's own address (its addresses are unknown), though "
           "30904/tcp is the nodePort of default/fb-backends:ka-port: if it is the node's, pass --node-ip "
           "192.168.49.2")
NOT_NODE = "taken as not the node's own address"


def _fib_local(tmp_path: Path) -> str:
    """The nft sample with kube-proxy's NodePorts on every local address (`fib daddr type local`, as with
    --nodeport-addresses unset) instead of on its nodeport-ips set: the ruleset names no node address."""
    text = (SAMPLES / "nodeport-fb-backends-nft.nft").read_text()
    element = "\t\telements = { 192.168.49.2 }\n"
    assert element in text
    text = text.replace(element, "", 1).replace(
        "ip daddr @nodeport-ips meta l4proto", "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto")
    path = tmp_path / "fib-local.nft"
    path.write_text(text)
    return str(path)


def _dumps(tmp_path: Path) -> list[str]:
    return [str(SAMPLES / "nodeport-fb-backends.txt"), _fib_local(tmp_path)]


def _trace(*args: str) -> dict:
    result = CliRunner().invoke(main, ["trace", *args, "-o", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("which", [0, 1], ids=["iptables", "nftables"])
def test_a_nodeport_on_an_address_not_known_as_the_nodes_says_what_it_assumed(tmp_path: Path, which: int) -> None:
    dump = _dumps(tmp_path)[which]
    doc = _trace(dump, "--dst", "192.168.49.2:30904")
    assert ASSUMED in doc["assumptions"]
    assert [o["verdict"] for o in doc["outcomes"]] == ["ACCEPT"]  # (the answer it always gave)
    text = CliRunner().invoke(main, ["trace", dump, "--dst", "192.168.49.2:30904"]).stdout
    assert f"  - {ASSUMED}\n" in text
    # The way out it names: given as the node's, the address's nodePort is forwarded, and nothing is assumed.
    told = _trace(dump, "--dst", "192.168.49.2:30904", "--node-ip", "192.168.49.2")
    assert {o["verdict"] for o in told["outcomes"]} == {"DNAT"}
    assert not [a for a in told["assumptions"] if NOT_NODE in a]


@pytest.mark.parametrize("dst", ["10.101.234.168:5001", "192.168.49.2:31999", "127.0.0.1:30904"])
def test_no_word_where_nothing_was_assumed_of_the_destination(tmp_path: Path, dst: str) -> None:
    """A Service's own address, a port no Service has as nodePort, loopback (always the node's): no assumption."""
    for dump in _dumps(tmp_path):
        doc = _trace(dump, "--dst", dst)
        assert not [a for a in doc["assumptions"] if NOT_NODE in a], (dump, doc["assumptions"])


def test_no_word_where_the_rules_name_the_nodes_addresses() -> None:
    """The nft sample lists the node's address in nodeport-ips: another address is known not to be it."""
    doc = _trace(str(SAMPLES / "nodeport-fb-backends-nft.nft"), "--dst", "192.168.49.9:30904")
    assert not [a for a in doc["assumptions"] if NOT_NODE in a], doc["assumptions"]
