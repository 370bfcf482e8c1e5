"""The program ends by a fast exit after an analysis command (iptrace.cli.run): its output complete and flushed,
its exit status kept, nothing freed one by one — and no atexit handler run, which is how a test sees it. Other
commands, and in-process callers, end the usual way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from iptrace.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = str(ROOT / "sample_dumps" / "nodeport-fb-backends.txt")
# The program as its entry point runs it, with an atexit handler that says whether the interpreter ended the
# usual way.
_PROGRAM = ("import atexit, sys\n"
            "atexit.register(lambda: print('ENDED-USUAL-WAY', file=sys.stderr))\n"
            "from iptrace.cli import run\n"
            "sys.argv = ['iptrace', *sys.argv[1:]]\n"
            "run()\n")


def _program(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _PROGRAM, *args], capture_output=True, text=True, cwd=ROOT,
                          input=stdin, timeout=120, check=False)


def test_an_analysis_ends_fast_with_its_whole_output_and_status() -> None:
    done = _program("services", SAMPLE, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert "ENDED-USUAL-WAY" not in done.stderr
    assert json.loads(done.stdout) == json.loads(CliRunner().invoke(main, ["services", SAMPLE, "-o", "json"]).stdout)
    # explain's status 3 (an error found) and its text survive the fast exit.
    explained = _program("explain", SAMPLE, "--dst", "10.101.234.168:8001")
    assert explained.returncode == 3 and "ENDED-USUAL-WAY" not in explained.stderr
    assert explained.stdout == CliRunner().invoke(main, ["explain", SAMPLE, "--dst", "10.101.234.168:8001"]).stdout


def test_other_ends_are_the_usual_ones() -> None:
    helped = _program("--help")
    assert helped.returncode == 0 and "ENDED-USUAL-WAY" in helped.stderr and "Usage:" in helped.stdout
    missing = _program("services", str(ROOT / "no-such-dump.txt"))
    assert missing.returncode == 1 and "no such file or directory" in missing.stderr
    assert "ENDED-USUAL-WAY" in missing.stderr  # nothing was built: nothing to skip freeing
    bad = _program("services", "-", stdin="*nat\n-A PREROUTING -j\nCOMMIT\n")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: <stdin>:2:")


def test_a_reader_that_goes_away_is_no_error() -> None:
    big = str(ROOT / "sample_dumps" / "large-cluster-no-comments.txt")  # (~800 KB of JSON: more than a pipe holds)
    proc = subprocess.Popen([sys.executable, "-c", _PROGRAM, "services", big, "-o", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # `iptrace services … | head -c 10`
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in proc.stderr.read().decode()


def test_output_that_cannot_be_written_is_one_clear_error() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this machine")
    for args in (["services", SAMPLE], ["services", str(ROOT / "sample_dumps" / "large-cluster-no-comments.txt"),
                                        "-o", "json"]):
        with open("/dev/full", "w") as full:  # every write fails: No space left on device
            done = subprocess.run([sys.executable, "-c", _PROGRAM, *args], stdout=full, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT, timeout=120, check=False)
        assert done.returncode == 1
        assert done.stderr.splitlines()[0] == "Error: cannot write the output: No space left on device"
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr
