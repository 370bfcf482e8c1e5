"""Text read at a terminal: the prose of `explain`, `audit` and `diff` fits the terminal it is printed on (COLUMNS, or
the terminal's own width), so that an 80-column terminal never breaks its lines itself; on a pipe the text is
the documented one (explain's paragraphs at 100 columns, a headline and a finding's summary one line each).
Rules, conntrack entries and commands are never wrapped (they are pasted); the words are the same either way."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SAMPLE = "sample_dumps/nodeport-fb-backends.txt"
# An evidence line (a rule, a conntrack entry) or a command: printed whole, whatever the width.
PASTED = re.compile(r" {4,6}(line \d+: |handle \d+: |\S+:\d+: |conntrack -D )")


def on_a_terminal(args: list[str], columns: int) -> str:
    """What `python -m iptrace ARGS` prints with its stdout on a terminal `columns` wide."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "iptrace", *args], cwd=ROOT, stdout=follower,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": str(columns), "TERM": "xterm"})
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 1)
        if leader in ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    return seen.decode().replace("\r\n", "\n")


def on_a_pipe(args: list[str]) -> str:
    return subprocess.run([sys.executable, "-m", "iptrace", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, env={**os.environ, "COLUMNS": "80"}).stdout


@pytest.mark.parametrize("args", [
    ["explain", SAMPLE, "--dst", "10.101.234.168:8001", "--node-ip", "192.168.49.2"],
    ["explain", "sample_dumps/etp-local-no-local-endpoints.txt", "--dst", "192.168.49.240:80"],
    ["explain", SAMPLE, "--dst", "10.96.0.10:53", "--proto", "udp", "--conntrack",
     "sample_dumps/conntrack/nodeport-fb-backends.txt", "--node-ip", "192.168.49.2"],
    ["audit", SAMPLE, "sample_dumps/xlb-era.txt", "sample_dumps/dual-stack-nft.nft"],
    ["audit", "-v", SAMPLE, "sample_dumps/xlb-era.txt", "sample_dumps/no-kube-proxy.txt"],
    ["diff", SAMPLE, "sample_dumps/mode-split-nft.nft"],
], ids=["explain-target-port", "explain-sources-differ", "explain-conntrack", "audit", "audit-verbose", "diff"])
def test_prose_fits_an_80_column_terminal(args: list[str]) -> None:
    seen = on_a_terminal(args, 80)
    piped = on_a_pipe(args)
    assert seen.split() == piped.split()  # the same words, only wrapped
    # (audit's node table is a table: its rows are as wide as they are)
    seen, piped = seen.split("\nNODE ", 1)[0], piped.split("\nNODE ", 1)[0]
    assert [line for line in piped.splitlines() if len(line) > 80 and not PASTED.match(line)]  # (as the pipe has)
    wide = [line for line in seen.splitlines() if len(line) > 80 and not PASTED.match(line)]
    assert not wide, wide
    assert "\x1b" not in seen
    assert [line for line in seen.splitlines() if PASTED.match(line)] == [
        line for line in piped.splitlines() if PASTED.match(line)]


def test_a_wide_terminal_gets_the_documented_text() -> None:
    args = ["explain", SAMPLE, "--dst", "10.101.234.168:8001", "--node-ip", "192.168.49.2"]
    assert on_a_terminal(args, 200) == on_a_pipe(args)
    args = ["audit", SAMPLE, "sample_dumps/xlb-era.txt"]
    assert on_a_terminal(args, 300) == on_a_pipe(args)


# A line of a `services` flow (a picture: printed whole) draws with these.
_DRAWN = re.compile("[─▶┬┴┼┤├└┘┌┐│]")


@pytest.mark.parametrize(("args", "columns"), [
    (["services", SAMPLE], 80),
    (["services", "sample_dumps/loadbalancer-source-ranges.txt", "--node-ip", "192.168.49.2"], 60),
    (["services", "sample_dumps/etp-local-no-local-endpoints-nft.nft"], 72),
])
def test_services_notes_fit_the_terminal(args: list[str], columns: int) -> None:
    """`services`' header notes ("node addresses unknown (pass --node-ip …)"), the notes under each flow and its
    warnings fit a narrow terminal as the other commands' prose does; its flows are pictures, printed whole."""
    seen = on_a_terminal(args, columns)
    piped = on_a_pipe(args)
    assert seen.split() == piped.split()
    assert [line for line in piped.splitlines() if len(line) > columns and not _DRAWN.search(line)]
    wide = [line for line in seen.splitlines() if len(line) > columns and not _DRAWN.search(line)]
    assert not wide, wide
    assert [line for line in seen.splitlines() if _DRAWN.search(line)] == [
        line for line in piped.splitlines() if _DRAWN.search(line)]
    assert on_a_terminal(args, 300) == piped
