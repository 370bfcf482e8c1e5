"""An IPv6 address with a zone (`fe80::1%eth0`: Python's ipaddress accepts it) is refused where an address is
given, never an internal error of the tracer: no rule names a zone and no packet carries one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from iptrace.collect import store
from iptrace.dataplane import Packet, ip_address
from iptrace.errors import InputError
from tests.conftest import SAMPLES

NFT = str(SAMPLES / "dual-stack-nft.nft")


@pytest.mark.parametrize("args", [
    ["trace", NFT, "--dst", "[fe80::1%eth0]:80"],
    ["explain", NFT, "--dst", "[fd00:10:96::5e1]:80", "--src", "fe80::1%eth0"],
    ["services", NFT, "--node-ip", "fe80::1%eth0"]])
def test_a_zone_is_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output and "fe80::1%eth0" in result.output


def test_a_zone_in_a_question_file_is_that_line_s_error() -> None:
    result = CliRunner().invoke(main, ["trace", NFT, "--dst-file", "-"], input="[fe80::1%eth0]:80\n")
    assert result.exit_code == 1 and result.output.startswith("Error: <stdin>:1:1: found '[fe80::1%eth0]:80'")


def test_a_zone_in_meta_json_is_the_nodes_load_error(tmp_path: Path) -> None:
    store.write_node_dir(tmp_path / "snap" / "n", {store.NFT_FILE: Path(NFT).read_bytes()},
                         {"node": "n", "addresses": ["fe80::1%eth0"]})
    doc = json.loads(CliRunner().invoke(main, ["audit", str(tmp_path / "snap"), "-o", "json"]).stdout)
    assert [(n["name"], n["status"]) for n in doc["nodes"]] == [("n", "load-error")]


def test_the_library_refuses_it_too() -> None:
    with pytest.raises(ValueError, match="names an IPv6 zone"):
        ip_address("fe80::1%eth0")
    assert str(ip_address("fe80::1")) == "fe80::1"
    with pytest.raises(InputError):
        Packet("fd00::1", "fe80::1%eth0", 80)
