"""Benchmark: `iptrace services` end to end on the 5,000 x 10 dump (SPEC budgets: <= 4 s in one process,
peak memory <= 15x the dump's size), with the tokenizer baseline of the same run for a machine-independent
ratio. Not a test: machines are shared and noisy, so budgets are reported, never asserted.

    python bench/bench_services.py [--scale 5000] [--endpoints 10] [--profile]

Each measurement runs in a fresh child process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASELINE_RE = r'"(?:\\.|[^"\\])*"|\S+'


def _child(dump: Path, profile: bool) -> dict[str, float]:
    import re

    from iptrace.iptables import DATAPLANE, load
    from iptrace.kube.analysis import analyse
    from iptrace.render.json import dumps
    from iptrace.render.services import services_to_json

    text = dump.read_text()
    pattern = re.compile(BASELINE_RE)
    t0 = time.perf_counter()
    for line in text.splitlines():
        pattern.findall(line)
    baseline = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    ruleset = load(text, source=str(dump))
    t1 = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    view = analyse(DATAPLANE, ruleset).view
    if profile:
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(20)
    t2 = time.perf_counter()
    out = dumps(services_to_json(view))
    t3 = time.perf_counter()
    return {"baseline_s": baseline, "load_s": t1 - t0, "view_s": t2 - t1, "json_s": t3 - t2,
            "end_to_end_s": t3 - t0, "services": len(view.services), "json_mb": len(out) / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss_before / 1024, "dump_mb": len(text.encode()) / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.profile)))
        return 0
    from bench import synth

    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "dump.txt"
        dump.write_text(synth.render(synth.scale(args.scale, args.endpoints), node_ips=["192.168.0.10"],
                                     pod_cidr="10.244.0.0/16", comments=True))
        cmd = [sys.executable, __file__, "--child", str(dump)] + (["--profile"] if args.profile else [])
        r = json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout)
    ratio = r["end_to_end_s"] / r["baseline_s"]
    rss_x = r["peak_rss_mb"] / r["dump_mb"]
    print(f"dump {r['dump_mb']:.1f} MB, {r['services']} service ports, JSON {r['json_mb']:.1f} MB")
    print(f"tokenizer baseline {r['baseline_s']:.2f} s")
    print(f"load {r['load_s']:.2f} s + view {r['view_s']:.2f} s + json {r['json_s']:.2f} s "
          f"= {r['end_to_end_s']:.2f} s ({ratio:.1f}x baseline)  budget 4 s: "
          f"{'PASS' if r['end_to_end_s'] <= 4 else 'OVER'}")
    verdict = "PASS" if rss_x <= 15 else "OVER"
    print(f"peak RSS {r['peak_rss_mb']:.0f} MB = {rss_x:.1f}x the dump  budget 15x: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
