"""An IPv6 destination with no port it can be told by (`fd00::c4f:80`, where `:80` reads as part of the address;
`[fd00::c4f]`; `fd00::c4f`) says so and how to write it, on --dst and on a --dst-file line (whose neighbours are
still answered); it said only "expected IP:PORT", which `fd00::c4f:80` looks like to a person."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

V6 = str(SAMPLES / "ipv6.txt")
BRACKETS = "an IPv6 address with no port (an IPv6 address's port is written after brackets); write "


@pytest.mark.parametrize(("given", "said"), [
    ("fd00:10:96::c4f:80", BRACKETS + "[fd00:10:96::c4f]:80 if 80 is the port, else [fd00:10:96::c4f:80]:PORT"),
    ("fd00:10:96::c4f", BRACKETS + "[fd00:10:96::c4f]:PORT"),
    ("fd00::", BRACKETS + "[fd00::]:PORT"),
    ("[fd00:10:96::c4f]", "no port after the IPv6 address; write [fd00:10:96::c4f]:PORT"),
])
def test_dst(given: str, said: str) -> None:
    result = CliRunner().invoke(main, ["trace", V6, "--dst", given])
    assert result.exit_code == 2
    assert f"Invalid value for --dst: {given!r}: {said}" in result.output


def test_dst_file_line() -> None:
    lines = "[fd00:10:96::c4f]:80\nfd00:10:96::c4f:80/udp\n10.0.0.1\n"
    result = CliRunner().invoke(main, ["trace", V6, "--dst-file", "-", "-o", "json"], input=lines)
    assert result.exit_code == 1
    answers = json.loads(result.stdout)
    assert "error" not in answers[0]
    assert answers[1]["error"] == ("<stdin>:2:1: found 'fd00:10:96::c4f:80/udp': " + BRACKETS
                                   + "[fd00:10:96::c4f]:80 if 80 is the port, else [fd00:10:96::c4f:80]:PORT")
    # (an IPv4 address is not given the IPv6 advice)
    assert answers[2]["error"].startswith("<stdin>:3:1: found '10.0.0.1'; expected IP:PORT")
