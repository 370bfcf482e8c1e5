"""Running the CLI with its stderr on a terminal (a pty) and its stdout on a pipe, as a person at a shell who
pipes the answer into jq: what the terminal was shown, and the clean stdout."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def on_a_terminal(args: list[str], timeout: float = 120) -> tuple[int, bytes, str]:
    """(exit status, stdout, what stderr's terminal showed) of `python -m iptrace ARGS`."""
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
    proc.wait(timeout=timeout)
    os.close(leader)
    return proc.returncode, out, seen.decode(errors="replace")
