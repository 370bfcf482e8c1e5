"""An IPv4-mapped IPv6 destination (`[::ffff:10.96.0.10]:53`): a dual-stack socket's connection to it leaves the
sender as IPv4 to 10.96.0.10 (Linux: ip6_datagram_connect/tcp_v6_connect hand it to the IPv4 stack), so it is
traced as that IPv4 address, with an assumption saying so, by both dataplanes alike."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from iptrace.cli import main
from tests.conftest import SAMPLES

DUMPS = ["nodeport-fb-backends.txt", "nodeport-fb-backends-nft.nft", "nodeport-fb-backends-nft.json"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout


@pytest.mark.parametrize("dump", DUMPS)
@pytest.mark.parametrize("src", ["pod", "node", "external", "::ffff:10.244.0.5"])
def test_trace_is_the_ipv4_one_with_a_note(dump: str, src: str) -> None:
    path = str(SAMPLES / dump)
    code, mapped = run("trace", path, "--dst", "[::ffff:10.96.0.10]:53", "--proto", "udp", "--src", src,
                       "-o", "json")
    assert code == 0, mapped
    plain_src = src.removeprefix("::ffff:")
    code, plain = run("trace", path, "--dst", "10.96.0.10:53", "--proto", "udp", "--src", plain_src, "-o", "json")
    got, want = json.loads(mapped), json.loads(plain)
    notes = [a for a in got["assumptions"] if a not in want["assumptions"]]
    assert any("::ffff:10.96.0.10" in n and "IPv4" in n for n in notes), got["assumptions"]
    got["assumptions"] = want["assumptions"]
    assert got == want
    assert got["outcomes"][0]["verdict"] == "DNAT"


@pytest.mark.parametrize("dump", DUMPS)
def test_explain_and_dst_file_agree(dump: str, tmp_path: object) -> None:
    path = str(SAMPLES / dump)
    code, out = run("explain", path, "--dst", "[::ffff:10.101.234.168]:5001", "--src", "pod", "-o", "json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["trace"]["packet"]["dst"] == "10.101.234.168"
    assert any("::ffff:10.101.234.168" in a for a in doc["trace"]["assumptions"])
    code, both = run("trace", path, "--dst", "[::ffff:10.101.234.168]:5001", "--dst", "10.101.234.168:5001",
                     "-o", "json")
    assert code == 0, both
    first, second = json.loads(both)
    assert any("::ffff:" in a for a in first["assumptions"]) and not any("::ffff:" in a for a in second["assumptions"])


@pytest.mark.parametrize("dump", DUMPS)
def test_services_address_filter_reads_it_as_ipv4(dump: str) -> None:
    path = str(SAMPLES / dump)
    mapped = CliRunner().invoke(main, ["services", path, "--address", "::ffff:10.101.234.168", "-o", "json"])
    assert mapped.exit_code == 0, mapped.output
    assert "IPv4-mapped" in mapped.stderr
    assert mapped.stdout == run("services", path, "--address", "10.101.234.168", "-o", "json")[1]


@pytest.mark.parametrize("command", ["trace", "explain"])
def test_a_mapped_source_to_an_ipv6_destination_is_named_as_given(command: str) -> None:
    """A socket bound to an IPv4-mapped address sends IPv4 only: it cannot reach a native IPv6 destination. The
    error names the source as the user gave it (it named the IPv4 address it became, as if the user had typed that)."""
    result = CliRunner().invoke(main, [command, str(SAMPLES / "dual-stack-nft.nft"), "--dst", "[fd00:10:96::a]:53",
                                       "--src", "::ffff:10.244.0.5"])
    assert result.exit_code == 1, result.output
    assert result.stderr == ("Error: source ::ffff:10.244.0.5 is an IPv4-mapped IPv6 address, which a socket uses as "
                             "IPv4 (10.244.0.5): it cannot reach the IPv6 destination fd00:10:96::a; give an IPv6 "
                             "--src, or the IPv4 destination\n")
