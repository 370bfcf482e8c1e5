"""What a node prints reaches the person's terminal only as text: terminal escapes in a node's error output
(a compromised or broken node, a binary written to stderr) never reach it through collect's errors, warnings or
summary table, over a real sshd (tests/sshd.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from iptrace.collect.ssh import collect
from tests.sshd import SshdFarm, default_scripts, have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="OpenSSH server (/usr/sbin/sshd) is not installed")
ROOT = Path(__file__).resolve().parents[1]
# Sets the terminal's title, then clears the screen: what a hostile node would send.
ESCAPES = r"\033]0;owned\007\033[2J"


def test_terminal_escapes_in_a_nodes_errors_never_reach_the_terminal(farm: SshdFarm, tmp_path: Path):
    failing = {**default_scripts("198.18.0.1"),
               "iptables-save": f"#!/bin/sh\nprintf '{ESCAPES}iptables-save: no\\r\\n' >&2\nexit 1\n"}
    misreading = {**default_scripts("198.18.0.2"),
                  "nft": ("#!/bin/sh\n[ \"$1\" = --version ] && echo 'nftables v1.0.6' && exit 0\n"
                          f"echo 'table ip x {{'\necho '}}'\nprintf 'netlink: Error: {ESCAPES}unknown\\n' >&2\n"),
                  "ip6tables-save": f"#!/bin/sh\nprintf '{ESCAPES}ip6tables-save: denied\\n' >&2\nexit 1\n"}
    servers = [farm.start("a", scripts=failing), farm.start("b", ip="198.18.0.2", scripts=misreading)]
    (tmp_path / "ssh_config").write_text("")
    known_hosts = farm.known_hosts(tmp_path / "known_hosts")
    targets = [f"127.0.0.1:{s.port}" for s in servers]
    a, b = collect(targets, out_dir=tmp_path / "out", identity_files=[farm.client_key], user="root",
                   ssh_config=tmp_path / "ssh_config", known_hosts=known_hosts, connect_timeout=5, command_timeout=10)
    assert not a.ok and b.ok, (a.error, b.error)
    said = [a.error or "", *b.warnings, *b.notes]
    assert "iptables-save: no" in said[0] and any("ip6tables-save: denied" in w for w in b.warnings), said
    assert not [s for s in said if "\x1b" in s or "\x07" in s or "\r" in s], said
    process = subprocess.run(
        [sys.executable, "-m", "iptrace", "collect", *targets, "--out", str(tmp_path / "out2"), "--user", "root",
         "-i", str(farm.client_key), "--known-hosts", str(known_hosts), "--ssh-config", str(tmp_path / "ssh_config"),
         "--timeout", "10"], cwd=ROOT, capture_output=True, env={**os.environ, "COLUMNS": "200"})
    assert process.returncode == 1, process.stderr
    for stream in (process.stdout, process.stderr):
        assert b"\x1b" not in stream and b"\x07" not in stream, stream


def test_a_listener_that_speaks_no_ssh_is_one_error_line_and_no_traceback(tmp_path: Path):
    """paramiko logs a failed handshake with its traceback ('Exception (client): Error reading SSH protocol
    banner', 'Traceback (most recent call last):' …); with no logging configured Python printed all of it on
    stderr. Only the one-line errors may reach the person."""
    silent, talker = socket.socket(), socket.socket()
    with silent, talker:
        for listener in (silent, talker):
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)

        def answer_http() -> None:
            connection, _ = talker.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 5000)
                time.sleep(0.3)

        thread = threading.Thread(target=answer_http, daemon=True)
        thread.start()
        (tmp_path / "cfg").write_text("")
        targets = [f"127.0.0.1:{s.getsockname()[1]}" for s in (silent, talker)]
        process = subprocess.run(
            [sys.executable, "-m", "iptrace", "collect", *targets, "--out", str(tmp_path / "out"), "--timeout", "1",
             "--ssh-config", str(tmp_path / "cfg"), "--known-hosts", str(tmp_path / "kh")],
            cwd=ROOT, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"})
        thread.join(5)
    assert process.returncode == 1
    lines = process.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"Error: {t}: ") for line, t in zip(lines, targets, strict=True)), \
        process.stderr
