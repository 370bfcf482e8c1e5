"""A bug met while auditing one node (an exception that is not the input's fault) never prints a traceback,
whatever --jobs: the node is a load-error naming the internal error (the CLI's words for one), every other node's
result is kept as without it, and IPTRACE_DEBUG=1 stops there with the traceback. The bug is planted in every
process of the audit (its workers are fresh interpreters) by a sitecustomize module on PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLES

PLANT = '''
import os
if os.environ.get("IPTRACE_TEST_BUG_NODE"):
    from iptrace.collect import stream
    _run = stream.Worker._run
    def _buggy(self, source):
        if source.name == os.environ["IPTRACE_TEST_BUG_NODE"]:
            raise ZeroDivisionError("a bug planted by the test")
        return _run(self, source)
    stream.Worker._run = _buggy
'''


@pytest.fixture
def dumps(tmp_path: Path) -> list[str]:
    (tmp_path / "plant").mkdir()
    (tmp_path / "plant" / "sitecustomize.py").write_text(PLANT)
    out = []
    for name, sample in (("a", "nodeport-fb-backends.txt"), ("boom", "session-affinity.txt"),
                         ("c", "nodeport-fb-backends-nft.nft")):
        path = tmp_path / f"{name}.txt"
        path.write_bytes((SAMPLES / sample).read_bytes())
        out.append(str(path))
    return out


def audit(dumps: list[str], *args: str, debug: bool = False) -> subprocess.CompletedProcess[str]:
    # (this checkout's iptrace, which the planting module imports before `-m` puts the working directory first)
    path = os.pathsep.join([str(Path(dumps[0]).parent / "plant"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "IPTRACE_TEST_BUG_NODE": "boom"}
    env.pop("IPTRACE_DEBUG", None)
    if debug:
        env["IPTRACE_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "iptrace", "audit", *dumps, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=False)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_bug_on_one_node_is_its_load_error_without_a_traceback(dumps: list[str], jobs: str) -> None:
    done = audit(dumps, "-j", jobs, "-o", "json")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert [(n["name"], n["status"]) for n in doc["nodes"]] == [("a", "ok"), ("boom", "load-error"), ("c", "ok")]
    error = next(f for f in doc["findings"] if f["node"] == "boom")
    assert error["detail"] == ("internal error while analysing this node (ZeroDivisionError: a bug planted by the "
                               "test); please report it with the input that caused it (IPTRACE_DEBUG=1 shows the "
                               "traceback)")
    alone = json.loads(audit([dumps[0], dumps[2]], "-j", jobs, "-o", "json").stdout)
    assert [n for n in doc["nodes"] if n["name"] != "boom"] == alone["nodes"]
    assert [f for f in doc["findings"] if f["node"] != "boom"] == alone["findings"]


def test_iptrace_debug_stops_at_the_bug_with_its_traceback(dumps: list[str]) -> None:
    done = audit(dumps, "-j", "2", debug=True)
    assert done.returncode != 0 and "ZeroDivisionError: a bug planted by the test" in done.stderr
    assert "Traceback" in done.stderr and "_buggy" in done.stderr  # (the worker's own, naming where it failed)
