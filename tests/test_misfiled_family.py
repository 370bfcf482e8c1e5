"""A hand-made node directory whose iptables-save.txt holds IPv6 rules while an ip6tables-save.txt is beside it, or
whose ip6tables-save.txt holds IPv4 rules (the two files swapped), is said: on stderr by the commands that read a
node directory, as a load-error warning by audit. An IPv6-only node's one iptables-save.txt of IPv6 rules, and a
correctly filed dual-stack node, are read without a word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from tests.conftest import SAMPLES

V4 = (SAMPLES / "nodeport-fb-backends.txt").read_bytes()
V6 = (SAMPLES / "ipv6.txt").read_bytes()
NO_ADDRESS_V6 = b"*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n"


def _node(tmp_path: Path, v4: bytes, v6: bytes | None) -> Path:
    node = tmp_path / "node-1"
    dumps = {store.DUMP_FILE: v4} | ({store.IP6_DUMP_FILE: v6} if v6 is not None else {})
    store.write_node_dir(node, dumps, {"node": "node-1", "addresses": ["192.168.49.2"]})
    return node


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("v4", "v6", "said"), [
    (V6, V4, "iptables-save.txt holds IPv6 rules (ip6tables-save's output) and ip6tables-save.txt beside it holds "
             "IPv4 rules and is not read: the two files look swapped"),
    (V4, V4, "ip6tables-save.txt holds IPv4 rules (iptables-save's output), so it answers for no IPv6 Service"),
    (V6, V6, "iptables-save.txt holds IPv6 rules (ip6tables-save's output) and ip6tables-save.txt beside it is "
             "not read"),
])
def test_a_dump_of_the_other_family_is_said(tmp_path: Path, v4: bytes, v6: bytes, said: str) -> None:
    node = _node(tmp_path, v4, v6)
    code, _out, err = _run("services", str(node))
    assert code == 0 and err.count(f"note: node-1: {said}") == 1, err
    code, out, _err = _run("audit", str(node), "-o", "json")
    findings = json.loads(out)["findings"]
    assert code == 0 and [(f["id"], f["severity"], f["summary"]) for f in findings] == [
        ("load-error", "warning", "node-1: a dump holds the other IP family's rules")]
    assert findings[0]["detail"].startswith(said)
    code, out, _err = _run("audit", str(node))
    assert "a dump holds the other IP family's rules" in out


@pytest.mark.parametrize(("v4", "v6"), [(V4, V6), (V6, None), (NO_ADDRESS_V6, V6), (V4, None), (V4, NO_ADDRESS_V6)])
def test_rightly_filed_dumps_are_read_without_a_word(tmp_path: Path, v4: bytes, v6: bytes | None) -> None:
    node = _node(tmp_path, v4, v6)
    code, _out, err = _run("services", str(node))
    assert code == 0 and "holds IPv" not in err, err
    code, out, _err = _run("audit", str(node), "-o", "json")
    assert code == 0 and json.loads(out)["findings"] == []
