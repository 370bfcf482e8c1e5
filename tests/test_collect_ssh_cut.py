"""collect over SSH when a node's run stops half-way (tests/sshd.py): the connection closes while a command runs,
or a slow listing runs out of time. What was complete is kept, the step that was cut and the steps never reached
are named as such (not as missing commands), and a cut in iptables-save itself is said as what it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iptrace.collect.ssh import collect
from tests.sshd import SAMPLE_DUMP, SshdFarm, default_scripts, gone_within, have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")

# Kills the nearest sshd above it (the session's own process): the client sees the connection close mid-run,
# as when a node reboots or a middlebox drops the flow. It first lets sshd send what the earlier commands printed:
# killed with -9, sshd drops what it read from them and had not sent yet (on a busy machine, the whole
# iptables-save before it, which the test expects kept).
CLOSE_CONNECTION = """sleep 1
p=$PPID
while [ "$p" -gt 1 ]; do
  case $(cat /proc/$p/comm) in sshd*) kill -9 "$p"; exit 0;; esac
  p=$(cut -d' ' -f4 /proc/$p/stat)
done
"""
CONNTRACK_LINE = ("udp      17 29 src=198.18.0.9 dst=198.19.0.10 sport=1000 dport=53 [UNREPLIED] src=198.19.0.10 "
                  "dst=198.18.0.9 sport=53 dport=1000 mark=0 use=1")
NFT_VERSION = '[ "$1" = --version ] && echo "nftables v1.0.6 (Lester Gooch #5)" && exit 0\n'


def _collect(farm: SshdFarm, servers: list, tmp_path: Path, **kwargs) -> list:
    (tmp_path / "ssh_config").write_text("")
    return collect([f"127.0.0.1:{s.port}" for s in servers], out_dir=tmp_path / "out",
                   identity_files=[farm.client_key], user="root", ssh_config=tmp_path / "ssh_config",
                   known_hosts=farm.known_hosts(tmp_path / "known_hosts"), connect_timeout=5, **kwargs)


def _meta(tmp_path: Path, result) -> dict:
    return json.loads((tmp_path / "out" / result.node / "meta.json").read_text())


def test_a_connection_closed_during_a_listing_keeps_the_dumps_and_names_what_was_cut(farm: SshdFarm,
                                                                                      tmp_path: Path):
    during_nft = {**default_scripts("198.18.0.1"),
                  "nft": "#!/bin/sh\n" + NFT_VERSION + "echo 'table ip kube-proxy {'\n" + CLOSE_CONNECTION,
                  "conntrack": f"#!/bin/sh\necho '{CONNTRACK_LINE}'\n"}
    during_conntrack = {**default_scripts("198.18.0.2"),
                        "conntrack": f"#!/bin/sh\necho '{CONNTRACK_LINE}'\n" + CLOSE_CONNECTION}
    servers = [farm.start("nft", scripts=during_nft), farm.start("ct", ip="198.18.0.2", scripts=during_conntrack)]
    nft, conntrack = _collect(farm, servers, tmp_path, command_timeout=10)
    for result, ip in ((nft, "198.18.0.1"), (conntrack, "198.18.0.2")):
        assert result.ok, result.error
        assert (tmp_path / "out" / result.node / "iptables-save.txt").read_text() == SAMPLE_DUMP % {"ip": ip}
        assert _meta(tmp_path, result)["addresses"]
        # conntrack is there: what stopped it was the connection, and no note may say otherwise.
        assert not [n for n in result.notes if "no `conntrack`" in n], result.notes
        assert not (tmp_path / "out" / result.node / "conntrack.txt").exists()
    assert not [n for n in nft.notes if "no `nft`" in n], nft.notes
    meta = _meta(tmp_path, nft)
    assert meta["nft"]["status"] == "failed" and "the connection closed while it ran" in meta["nft"]["error"]
    assert not (tmp_path / "out" / nft.node / "nft-ruleset.txt").exists()
    assert meta["conntrack"]["status"] == "failed" and "not run" in meta["conntrack"]["error"]
    meta = _meta(tmp_path, conntrack)
    assert meta["conntrack"]["status"] == "failed"
    assert any(w.startswith("conntrack -L -f ipv4: ") and "the connection closed while it ran" in w
               for w in conntrack.warnings), conntrack.warnings
    assert meta["errors"] == list(conntrack.warnings)


def test_a_connection_closed_during_iptables_save_is_said_as_such(farm: SshdFarm, tmp_path: Path):
    scripts = {**default_scripts("198.18.0.1"),
               "iptables-save": "#!/bin/sh\necho '*filter'\necho ':INPUT ACCEPT [0:0]'\n" + CLOSE_CONNECTION}
    [result] = _collect(farm, [farm.start("a", scripts=scripts)], tmp_path, command_timeout=10)
    assert (result.ok, result.error_kind) == (False, "ssh")
    assert result.error == f"{result.node}: `iptables-save` stopped: the connection closed while it ran"
    assert not (tmp_path / "out" / result.node).exists()


def test_a_listing_past_its_time_is_stopped_and_the_dumps_are_kept(farm: SshdFarm, tmp_path: Path):
    pid_file = tmp_path / "conntrack.pid"
    # Blocks reading stdin for ever (as the hung commands of test_collect_ssh do).
    scripts = {**default_scripts("198.18.0.1"),
               "conntrack": f"#!/bin/sh\necho $$ > {pid_file}\necho '{CONNTRACK_LINE}'\nexec cat\n"}
    server = farm.start("a", scripts=scripts)
    [result] = _collect(farm, [server], tmp_path, command_timeout=2, listing_timeout=1)
    assert result.ok, result.error
    assert (tmp_path / "out" / result.node / "iptables-save.txt").read_text() == SAMPLE_DUMP % {"ip": "198.18.0.1"}
    meta = _meta(tmp_path, result)
    assert meta["conntrack"]["status"] == "failed"
    assert "conntrack -L -f ipv4: `conntrack -L -f ipv4` failed (did not finish within 2s; it was stopped)" \
        in result.warnings, result.warnings
    assert not (tmp_path / "out" / result.node / "conntrack.txt").exists()
    pid = int(pid_file.read_text())
    assert gone_within(pid, 10), "the hung listing was left running on the node"



def test_a_shell_killed_while_the_connection_stays_up_is_not_called_a_closed_connection(farm: SshdFarm,
                                                                                     tmp_path: Path):
    """The node's shell killed by a signal (the OOM killer, a watchdog): sshd sends exit-signal, which paramiko
    does not keep, so the exit status is -1 as when the connection drops; but the connection is still there."""
    # Kills the batch shell (the child of the session's sshd) from inside the conntrack step.
    kill_shell = ("p=$PPID\nwhile [ \"$p\" -gt 1 ]; do pp=$(cut -d' ' -f4 /proc/$p/stat)\n"
                  "  case $(cat /proc/$pp/comm) in sshd*) kill -9 \"$p\"; exit 0;; esac; p=$pp\ndone\n")
    scripts = {**default_scripts("198.18.0.1"),
               "conntrack": f"#!/bin/sh\necho '{CONNTRACK_LINE}'\n" + kill_shell}
    [result] = _collect(farm, [farm.start("a", scripts=scripts)], tmp_path, command_timeout=10)
    assert result.ok, result.error
    assert ("conntrack -L -f ipv4: `conntrack -L -f ipv4` failed (stopped: the node's shell was killed while it "
            "ran)") in result.warnings, result.warnings
