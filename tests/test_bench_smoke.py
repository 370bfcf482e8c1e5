"""The benchmark runs: `python3 -m bench.run` at a tiny scale measures every figure it can without an error
(a figure that cannot be measured prints "not measured (…)", which once hid an import that had moved). No
timing is asserted: the figures themselves are for a quiet machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("parse", "services", "trace", "explain", "nft-parse", "nft-services", "nft-trace")


def test_every_figure_is_measured_at_a_small_scale(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "bench.run", "--scale", "30", *(x for f in FIGURES for x in ("--only", f))]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "IPTRACE_BENCH_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not measured" not in done.stdout, done.stdout[-2000:]
    for row in ("parse to model", "services end to end", "one trace after load", "explain after load",
                "nft listing parse", "nft services end to end", "nft one trace after load"):
        assert row in done.stdout, row
