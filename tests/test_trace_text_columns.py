"""trace's text: every step of a path in aligned columns (table, chain, line, rule). nftables' tables ("ip
kube-proxy", "ip flannel-ipv4") and chains ("service-SX2ZK5HK-default/fb-backends/tcp/ka-port") are longer than
iptables' 6 and 28 characters: the lines and rules after them wandered from row to row."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from iptrace.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dumps"


def test_an_nft_path_is_aligned_across_tables_and_chains() -> None:
    result = CliRunner().invoke(main, ["trace", str(SAMPLES / "flannel-and-kube-proxy-nft.nft"), "--dst",
                                       "10.101.234.168:5001", "--src", "pod", "--node-ip", "192.168.49.2"])
    assert result.exit_code == 0, result.output
    steps = [line for line in result.stdout.splitlines() if re.search(r" line \d+ ", line)]
    tables = {line.split()[1] for line in steps if line.lstrip("│ ").startswith("ip ")}
    assert {"kube-proxy", "flannel-ipv4", "nat"} <= tables, steps
    assert len({line.index(" line ") for line in steps}) == 1, "\n".join(steps)


def test_iptables_columns_are_as_they_were() -> None:
    result = CliRunner().invoke(main, ["trace", str(SAMPLES / "nodeport-fb-backends.txt"), "--dst",
                                       "10.101.234.168:5001"])
    assert "    nat    PREROUTING                   line 84     -A PREROUTING" in result.stdout, result.stdout
