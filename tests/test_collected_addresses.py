"""A collected node's addresses come in `ip -o addr show`'s order: loopback (lo is interface 1) first, link-local
ones among the rest. The node address NodePorts are traced to, the node's own client and the addresses explain
advises must be one a client elsewhere can reach: `services snap/NODE` showed every nodePort 'not DNATed' (traced
to 127.0.0.1, which another host's packet never reaches) and explain's fix said 'use 127.0.0.1:30904 … from
outside'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from iptrace.kube.sources import reachable_first

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"
# As collect writes them for a minikube node: lo, then eth0, then the CNI bridge; IPv6 loopback and link-local.
ADDRESSES = ["127.0.0.1", "::1", "192.168.49.2", "10.244.0.1", "fe80::42:c0ff:fea8:3102"]
# As collect --via api writes them from kube-proxy's pod (no `ip`): /proc/net/fib_trie's numeric order.
FIB_TRIE = ["10.244.0.1", "127.0.0.1", "192.168.49.2"]


def node_dir(tmp_path: Path, sample: str, file: str, addresses: list[str]) -> Path:
    store.write_node_dir(tmp_path / "node-1", {file: (SAMPLES / sample).read_bytes()},
                         {"node": "node-1", "addresses": addresses})
    return tmp_path / "node-1"


@pytest.mark.parametrize("addresses", [ADDRESSES, FIB_TRIE])
@pytest.mark.parametrize(("sample", "file"), [("nodeport-fb-backends.txt", store.DUMP_FILE),
                                              ("nodeport-fb-backends-nft.nft", store.NFT_FILE)])
def test_a_collected_nodes_nodeports_are_traced_to_its_own_address(tmp_path: Path, sample: str, file: str,
                                                                   addresses: list[str]) -> None:
    node = node_dir(tmp_path, sample, file, addresses)
    result = CliRunner().invoke(main, ["services", str(node), "--service", "default/fb-backends", "-o", "json"])
    assert result.exit_code == 0, result.output
    (port,) = json.loads(result.stdout)
    (node_port,) = [e for e in port["entries"] if e["kind"] == "nodePort"]
    assert node_port["verdict"] == "DNAT" and len(node_port["endpoints"]) == 2, node_port
    explained = CliRunner().invoke(main, ["explain", str(node), "--dst", "10.101.234.168:8001", "-o", "json"])
    fixes = " ".join(d["fix"] for d in json.loads(explained.stdout)["diagnoses"])
    assert "192.168.49.2:30904" in fixes and "127.0.0.1:30904" not in fixes, fixes


def test_reachable_first_keeps_the_order_of_each_kind() -> None:
    assert reachable_first(ADDRESSES) == ["192.168.49.2", "10.244.0.1", "127.0.0.1", "::1",
                                          "fe80::42:c0ff:fea8:3102"]
    assert reachable_first(FIB_TRIE, pod_cidrs=["10.244.0.0/16"]) == ["192.168.49.2", "10.244.0.1", "127.0.0.1"]
    assert reachable_first(["192.168.49.3", "192.168.49.2"], revealed=["192.168.49.2"]) == [
        "192.168.49.2", "192.168.49.3"]
    assert reachable_first(["127.0.0.1"]) == ["127.0.0.1"]
    assert reachable_first(["[fd00::2]", "::1"]) == ["[fd00::2]", "::1"]


def test_services_says_when_the_nodes_address_is_not_one_nodeports_are_accepted_on(tmp_path: Path) -> None:
    """A node whose kube-proxy accepts NodePorts on other addresses than its own (nftables mode's @nodeport-ips,
    --nodeport-addresses): the view's '<node>:30904 ──▶ ACCEPT' said nothing of why; the header now names the
    address traced and that NodePorts are not accepted there."""
    node = node_dir(tmp_path, "nodeport-fb-backends-nft.nft", store.NFT_FILE, ["127.0.0.1", "192.168.49.3"])
    result = CliRunner().invoke(main, ["services", str(node), "--service", "default/fb-backends"])
    assert result.exit_code == 0, result.output
    header = result.stdout.split("\n\n")[0]
    assert "NodePorts on 192.168.49.2" in header and "<node> is 192.168.49.3, where the rules accept no NodePort" in header, header
    accepted = CliRunner().invoke(main, ["services", str(node_dir(tmp_path / "ok", "nodeport-fb-backends-nft.nft",
                                                                  store.NFT_FILE, ADDRESSES))])
    assert "<node> is" not in accepted.stdout and "NodePorts on 192.168.49.2" in accepted.stdout


def test_accepts_reads_addresses_prefixes_and_exclusions() -> None:
    from iptrace.layout import NodePortAddresses

    assert not NodePortAddresses("addresses", ("192.168.49.2",)).accepts("192.168.49.3")
    assert NodePortAddresses("addresses", ("192.168.0.0/16",)).accepts("192.168.49.3")
    assert not NodePortAddresses("all-local", (), ("127.0.0.0/8",)).accepts("127.0.0.1")
    assert NodePortAddresses("all-local", (), ("127.0.0.0/8",)).accepts("192.168.49.3")
    assert not NodePortAddresses("addresses", ("fd00::1",)).accepts("192.168.49.2")
    assert NodePortAddresses("all-local", (), ("{ 127.0.0.0/8, ::1 }",)).accepts("1.2.3.4")  # (unread: no claim)
    assert not NodePortAddresses("none").accepts("192.168.49.2")
