"""`services` of a big node shows its progress on a terminal while it traces every Service port (several seconds
for thousands), never on a pipe, and its stdout stays the same clean output."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from bench import synth
from iptrace.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _big(tmp_path: Path) -> Path:
    dump = tmp_path / "big.txt"
    dump.write_text(synth.render(synth.scale(1100, 2), node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16"))
    return dump


def _on_a_terminal(args: list[str]) -> tuple[int, bytes, str]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "iptrace", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=follower, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(follower)
    seen, out = b"", b""
    assert proc.stdout is not None
    while proc.poll() is None or select.select([leader], [], [], 0)[0]:
        ready, _, _ = select.select([leader, proc.stdout], [], [], 1)
        if leader in ready:
            try:
                seen += os.read(leader, 65536)
            except OSError:
                break
        if proc.stdout in ready:
            out += os.read(proc.stdout.fileno(), 1 << 20)
    out += proc.stdout.read()
    proc.wait(timeout=120)
    os.close(leader)
    return proc.returncode, out, seen.decode(errors="replace")


def test_progress_on_a_terminal_never_on_a_pipe(tmp_path: Path) -> None:
    dump = _big(tmp_path)
    piped = CliRunner().invoke(main, ["services", str(dump), "-o", "json"])
    assert piped.exit_code == 0 and piped.stderr == ""
    code, out, shown = _on_a_terminal(["services", str(dump), "-o", "json"])
    assert code == 0
    assert json.loads(out) == json.loads(piped.stdout)  # stdout is the same clean JSON
    assert "tracing every way in of every Service port" in shown and "/1" in shown, shown[-500:]
    # A filter answers from a few Service ports: nothing to wait for, no bar.
    code, out, shown = _on_a_terminal(["services", str(dump), "--namespace", "default", "-o", "json"])
    assert code == 0 and "tracing every way in" not in shown
