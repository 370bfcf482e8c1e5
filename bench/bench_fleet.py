"""Benchmark: `audit` of a synthesized fleet (bench/fleet.py: N nodes of a 5,000 x 10 cluster, each node unique in
a few rules) against one `services` of one node's dump, and many questions of `trace`/`explain` against one.

SPEC budgets: audit of 100 nodes <= 25x one node's `services`, peak memory of all its processes together
(summed: forked copies count) <= 2x a one-node audit; 1,000 questions via --dst-file: trace <= 2x, explain
<= 2.5x the time of one question. Every command runs as the CLI in a fresh process; CPU seconds (of the
process and all its children) are reported next to wall seconds because the machine is shared.

    python -m bench.bench_fleet [--nodes 100] [--services 5000] [--only audit|questions]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def fleet_dir(nodes: int, services: int, endpoints: int = 10, jobs: int = 2) -> Path:
    """A cached collection directory of `nodes` nodes (built in `jobs` processes, ~5 s a node)."""
    from bench import fleet, synth
    from bench.stamp import stamp

    cache = Path(os.environ.get("IPTRACE_BENCH_CACHE", tempfile.gettempdir()))
    root = cache / f"iptrace-bench-fleet-{nodes}x{services}x{endpoints}-{stamp(synth, fleet)}"
    if (root / ".complete").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(nodes) if not (root / fleet.node_name(i) / "meta.json").exists()]
    workers = [subprocess.Popen([sys.executable, "-m", "bench.bench_fleet", "--write", str(root),
                                 "--services", str(services), "--endpoints", str(endpoints),
                                 "--indexes", ",".join(map(str, todo[k::jobs]))], cwd=ROOT)
               for k in range(jobs) if todo[k::jobs]]
    for w in workers:
        if w.wait() != 0:
            raise SystemExit("building the fleet failed")
    (root / ".complete").write_text("")
    return root


def _write(root: Path, services: int, endpoints: int, indexes: list[int]) -> None:
    from bench import fleet, synth

    specs = synth.scale(services, endpoints, 0)
    for i in indexes:
        fleet.write_node(root, specs, i)


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, summed."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        except OSError:
            pass
        todo += children.get(p, [])
    return total


def run(args: list[str], stdin: str | None = None) -> dict[str, float]:
    """One CLI run: wall seconds, CPU seconds (it and its children), peak RSS of its process tree (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "iptrace", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin is not None else None)
    peak = 0
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    err = proc.stderr.read().decode() if proc.stderr is not None else ""
    if proc.returncode not in (0, 3):
        raise SystemExit(f"iptrace {' '.join(args)} failed ({proc.returncode}): {err.strip()[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_mb": round(peak / 1e6)}


def figure_audit(nodes: int = 100, services: int = 5000) -> dict[str, Any]:
    root = fleet_dir(nodes, services)
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    one_services = run(["services", str(first / "iptables-save.txt"), "--node-ip", "192.168.0.10", "-o", "json"])
    one_audit = run(["audit", str(first), "-o", "json"])
    fleet_audit = run(["audit", str(root), "-o", "json"])
    return {"nodes": nodes, "services": one_services, "one_node_audit": one_audit, "fleet_audit": fleet_audit,
            "wall_ratio": round(fleet_audit["wall_s"] / one_services["wall_s"], 1),
            "cpu_ratio": round(fleet_audit["cpu_s"] / one_services["cpu_s"], 1),
            "memory_ratio": round(fleet_audit["peak_mb"] / one_audit["peak_mb"], 2)}


def questions(dump: Path, count: int = 1000) -> list[str]:
    """`count` destinations of the dump: its ClusterIPs on their ports, off by one, and NodePorts."""
    found = re.findall(r"-d (\d+\.\d+\.\d+\.\d+)/32 -p (tcp|udp|sctp)[^\n]*--dport (\d+)", dump.read_text())
    rng = random.Random(1)
    out = []
    for _ in range(count):
        ip, proto, port = rng.choice(found)
        roll = rng.random()
        if roll < 0.6:
            out.append(f"{ip}:{port}/{proto}")
        elif roll < 0.8:
            out.append(f"{ip}:{int(port) + 1}/{proto}")
        else:
            out.append(f"192.168.0.10:{rng.randint(30000, 32767)}")
    return out


def figure_questions(dump: Path, count: int = 1000) -> dict[str, Any]:
    asked = questions(dump, count)
    out: dict[str, Any] = {"questions": count}
    for command in ("trace", "explain"):
        base = [command, str(dump), "--node-ip", "192.168.0.10", "-o", "json"]
        one = run([*base, "--dst", asked[0]])
        many = run([*base, "--dst-file", "-"], stdin="\n".join(asked) + "\n")
        out[command] = {"one": one, "many": many, "wall_ratio": round(many["wall_s"] / one["wall_s"], 2),
                        "cpu_ratio": round(many["cpu_s"] / one["cpu_s"], 2),
                        "ms_per_extra_answer": round((many["cpu_s"] - one["cpu_s"]) / (count - 1) * 1000, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--only", choices=["audit", "questions"])
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--indexes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        _write(args.write, args.services, args.endpoints, [int(x) for x in args.indexes.split(",") if x])
        return
    from bench.run import compiled

    compiled()
    report: dict[str, Any] = {}
    if args.only in (None, "audit"):
        report["audit"] = figure_audit(args.nodes, args.services)
    if args.only in (None, "questions"):
        from bench.run import synth_dump

        cache = Path(os.environ.get("IPTRACE_BENCH_CACHE", tempfile.gettempdir()))
        report["questions"] = figure_questions(synth_dump(args.services, 10, cache /
                                                          f"iptrace-bench-{args.services}x10.txt"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
