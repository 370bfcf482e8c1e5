"""A dump that is another tool's listing (`iptables -L`, `ipvsadm -Ln`) gets one line naming what it is and the
command to run instead, at file:1:1 and with --lenient too; the grammar's "unexpected 'Chain'" said neither."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main

LIST_L = """Chain INPUT (policy ACCEPT 0 packets, 0 bytes)
 pkts bytes target     prot opt in     out     source               destination
 123K   45M KUBE-FIREWALL  all  --  *      *       0.0.0.0/0            0.0.0.0/0

Chain KUBE-SERVICES (2 references)
"""
LIST_L_REFERENCES = "Chain KUBE-SERVICES (2 references)\ntarget     prot opt source               destination\n"
IPVSADM = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.1:443 rr
  -> 192.168.49.2:8443            Masq    1      0          0
"""


@pytest.mark.parametrize("lenient", [[], ["--lenient"]])
@pytest.mark.parametrize(("content", "said"), [
    (LIST_L, "this is an `iptables -L` listing (a table for people, not a save format); expected iptables-save "
             "output: run `iptables-save` (or `iptables -S`) on the node"),
    (LIST_L_REFERENCES, "this is an `iptables -L` listing"),
    (IPVSADM, "this is `ipvsadm -Ln` output (kube-proxy's IPVS mode)"),
])
def test_another_tools_listing_is_named(tmp_path: Path, content: str, said: str, lenient: list[str]) -> None:
    dump = tmp_path / "node1.txt"
    dump.write_text(content)
    result = CliRunner().invoke(main, ["services", *lenient, str(dump)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[0].startswith(f"Error: {dump}:1:1: {said}")
