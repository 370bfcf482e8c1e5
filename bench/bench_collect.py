"""Benchmark: `collect` from 20 local sshd nodes with parallel=20 against one node (SPEC budget: <= 3x).

Runs standalone as root or as a user allowed to start sshd on 127.0.0.1:  python bench/bench_collect.py
Every sshd is started here and stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iptrace.collect.ssh import collect  # noqa: E402
from tests.sshd import SshdFarm, default_scripts, have_sshd, keygen  # noqa: E402

BUDGET = 3.0


def _server_cpu(farm: SshdFarm) -> float:
    """CPU seconds used so far by the sshd listeners and every connection they served (reaped children)."""
    total = 0
    for server in farm.servers:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(") ", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def _timed(farm: SshdFarm, targets: list[str], root: Path, key: Path, known_hosts: Path, config: Path,
           parallel: int, run: int) -> tuple[float, float, float]:
    """(wall seconds, client CPU seconds, sshd CPU seconds) of one collect."""
    cpu0, server0 = time.process_time(), _server_cpu(farm)
    started = time.perf_counter()
    results = collect(targets, out_dir=root / f"out-{parallel}-{run}", user="root", identity_files=[key],
                      known_hosts=known_hosts, ssh_config=config, parallel=parallel, allow_agent=False)
    elapsed = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"collect failed: {failed[0].error}")
    time.sleep(0.2)  # let sshd reap the connection's processes so their CPU is counted
    return elapsed, time.process_time() - cpu0, _server_cpu(farm) - server0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5, help="repetitions; the median is reported")
    parser.add_argument("--node-work-ms", type=int, default=0,
                        help="time the simulated node's own iptables-save takes (a sleep: on a real node it runs "
                             "on that node's CPU, not the collector's); 0 = instant")
    args = parser.parse_args()
    if not have_sshd():
        print("skipped: /usr/sbin/sshd is not installed")
        return 0
    os.environ.pop("SSH_AUTH_SOCK", None)
    with tempfile.TemporaryDirectory(prefix="iptrace-bench-collect-") as tmp:
        root = Path(tmp)
        key = keygen(root / "client_key")
        farm = SshdFarm(root, key)
        try:
            servers = []
            for i in range(args.nodes):
                scripts = default_scripts(f"198.18.0.{i + 1}")
                if args.node_work_ms:
                    # The node spends this long producing its dump, as iptables-save does on a busy node.
                    scripts["iptables-save"] = scripts["iptables-save"].replace(
                        "#!/bin/sh\n", f"#!/bin/sh\nsleep {args.node_work_ms / 1000:.3f}\n", 1)
                servers.append(farm.start(f"n{i}", ip=f"198.18.0.{i + 1}", scripts=scripts))
            known_hosts = farm.known_hosts(root / "known_hosts")
            config = root / "ssh_config"
            config.write_text("")
            targets = [f"127.0.0.1:{s.port}" for s in servers]
            _timed(farm, targets[:1], root, key, known_hosts, config, 1, -1)  # warm-up: imports, caches
            ones = [_timed(farm, targets[:1], root, key, known_hosts, config, 1, run) for run in range(args.runs)]
            manys = [_timed(farm, targets, root, key, known_hosts, config, args.nodes, run)
                     for run in range(args.runs)]
        finally:
            farm.stop_all()
    one, many = (statistics.median(r[0] for r in runs) for runs in (ones, manys))
    client, server = (statistics.median(r[i] for r in manys) for i in (1, 2))
    ratio = many / one
    cpus = os.cpu_count() or 1
    verdict = "within" if ratio <= BUDGET else "OVER"
    if args.node_work_ms:
        print(f"each simulated node's iptables-save takes {args.node_work_ms} ms (node-side work)")
    print(f"collect 1 node:                {one * 1000:8.1f} ms (median of {args.runs})")
    print(f"collect {args.nodes} nodes, parallel={args.nodes}: {many * 1000:8.1f} ms (median of {args.runs})")
    print(f"ratio: {ratio:.2f}x  (budget <= {BUDGET:g}x: {verdict} budget)")
    # The 20 sshd share this machine's CPUs with the collector; real nodes bring their own. The floor below
    # is what the CPU work alone costs here, whatever the collector does.
    print(f"CPU for {args.nodes} nodes: collector {client * 1000:.0f} ms, sshd (all sessions) {server * 1000:.0f} ms; "
          f"on {cpus} CPUs that is >= {(client + server) / cpus * 1000:.0f} ms, "
          f"i.e. a floor of {(client + server) / cpus / one:.2f}x the 1-node time on this machine")
    print(f"collector alone: {client / args.nodes * 1000:.1f} ms CPU per node")
    return 0 if ratio <= BUDGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
