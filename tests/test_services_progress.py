"""`services` of a big node shows its progress on a terminal while it traces every Service port (several seconds
for thousands), never on a pipe, and its stdout stays the same clean output."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench import synth
from iptrace.cli import main
from tests.terminal import on_a_terminal


def _big(tmp_path: Path) -> Path:
    dump = tmp_path / "big.txt"
    dump.write_text(synth.render(synth.scale(1100, 2), node_ips=["192.168.0.10"], pod_cidr="10.244.0.0/16"))
    return dump


def test_progress_on_a_terminal_never_on_a_pipe(tmp_path: Path) -> None:
    dump = _big(tmp_path)
    piped = CliRunner().invoke(main, ["services", str(dump), "-o", "json"])
    assert piped.exit_code == 0 and piped.stderr == ""
    code, out, shown = on_a_terminal(["services", str(dump), "-o", "json"])
    assert code == 0
    assert json.loads(out) == json.loads(piped.stdout)  # stdout is the same clean JSON
    assert "tracing every way in of every Service port" in shown and "/1" in shown, shown[-500:]
    # A filter answers from a few Service ports: nothing to wait for, no bar.
    code, out, shown = on_a_terminal(["services", str(dump), "--namespace", "default", "-o", "json"])
    assert code == 0 and "tracing every way in" not in shown


def test_diff_of_big_nodes_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    dump = _big(tmp_path)
    piped = CliRunner().invoke(main, ["diff", str(dump), str(dump), "-o", "json"])
    assert piped.exit_code == 0 and piped.stderr == ""
    code, out, shown = on_a_terminal(["diff", str(dump), str(dump), "-o", "json"])
    assert code == 0 and json.loads(out) == json.loads(piped.stdout)
    assert "tracing every way in of every Service port" in shown, shown[-500:]
