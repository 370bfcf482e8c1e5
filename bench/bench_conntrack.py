"""The conntrack figure: reading a node's 100,000-entry table (~16 MB, `conntrack -L` as conntrack-tools prints
it) at tokenizer speed, and what it adds to an explain on a small node.

The table is synthesized here for the minikube node of sample_dumps/nodeport-fb-backends.txt: DNS to
kube-dns (UDP and TCP), connections to its Services, the kubernetes API, NodePort clients from outside
(masqueraded), pod-to-pod and outbound flows, ICMP; about 1% of the flows still go to endpoints that are gone.
"""

from __future__ import annotations

import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_dumps" / "nodeport-fb-backends.txt"
NODE = "192.168.49.2"
# The installed `iptrace` command, run by this interpreter.
_CLI = "import sys; from iptrace.cli import run; sys.argv[0] = 'iptrace'; run()"
QUESTION = ["--dst", "10.96.0.10:53", "--proto", "udp", "--node-ip", NODE, "-o", "json"]

# (service address, port, protocol, endpoints the sample's rules choose, endpoints that are gone)
_SERVICES = [
    ("10.96.0.10", 53, "udp", ["10.244.0.2:53", "10.244.0.3:53"], ["10.244.0.9:53"]),
    ("10.96.0.10", 53, "tcp", ["10.244.0.2:53", "10.244.0.3:53"], []),
    ("10.101.234.168", 5001, "tcp", ["10.244.1.7:8001", "10.244.2.3:8001"], ["10.244.1.5:8001"]),
    ("10.106.199.236", 80, "tcp", ["10.244.2.5:8080", "10.244.1.9:8080"], []),
    ("10.96.0.1", 443, "tcp", [f"{NODE}:6443"], []),
]


def _pair(proto: str, src: str, dst: str, sport: int, dport: int, rsrc: str, rdst: str, rsport: int,
          rng: random.Random) -> str:
    if proto == "tcp":
        state = rng.choice(["ESTABLISHED"] * 12 + ["TIME_WAIT", "CLOSE_WAIT", "SYN_SENT", "FIN_WAIT"])
        timeout = 431999 - rng.randrange(600) if state == "ESTABLISHED" else rng.randrange(1, 120)
        unreplied = state == "SYN_SENT"
        head = f"tcp      6 {timeout} {state} "
    else:
        unreplied = rng.random() < 0.2
        head = f"udp      17 {rng.randrange(1, 30) if unreplied else rng.randrange(30, 180)} "
    return (f"{head}src={src} dst={dst} sport={sport} dport={dport} {'[UNREPLIED] ' if unreplied else ''}"
            f"src={rsrc} dst={rdst} sport={rsport} dport={sport} {'' if unreplied else '[ASSURED] '}mark=0 use=1")


def synthesize(entries: int, seed: int = 14) -> str:
    """A node's flows: clients of Services are the node's own pods (100: kubelet allows 110 per node) and
    outside clients of its NodePort; pod-to-pod flows reach pods anywhere in the cluster."""
    rng = random.Random(seed)
    local = [f"10.244.1.{i + 10}" for i in range(100)]
    cluster = [f"10.244.{i // 200}.{i % 200 + 10}" for i in range(600)]
    outside = [f"203.0.113.{i}" for i in range(1, 250)]
    lines = []
    for _ in range(entries):
        kind = rng.random()
        sport = rng.randrange(32768, 61000)
        if kind < 0.7:
            dst, dport, proto, live, gone = rng.choice(_SERVICES)
            client = rng.choice(local)
            endpoint = rng.choice(gone) if gone and rng.random() < 0.015 else rng.choice(live)
            ip, port = endpoint.rsplit(":", 1)
            lines.append(_pair(proto, client, dst, sport, dport, ip, client, int(port), rng))
        elif kind < 0.8:  # NodePort from outside the cluster, masqueraded
            client = rng.choice(outside)
            ip = rng.choice(["10.244.1.7", "10.244.2.3"])
            lines.append(_pair("tcp", client, NODE, sport, 30904, ip, NODE, 8001, rng))
        elif kind < 0.9:  # pod to pod
            a, b = rng.choice(local), rng.choice(cluster)
            lines.append(_pair(rng.choice(["tcp", "udp"]), a, b, sport, 8080, b, a, 8080, rng))
        elif kind < 0.98:  # out of the cluster (masqueraded by the CNI)
            server = rng.choice(outside)
            lines.append(_pair("tcp", rng.choice(local), server, sport, 443, server, NODE, 443, rng))
        else:
            peer, ident = rng.choice(cluster), rng.randrange(65536)
            lines.append(f"icmp     1 29 src={NODE} dst={peer} type=8 code=0 id={ident} src={peer} dst={NODE} "
                         f"type=0 code=0 id={ident} mark=0 use=1")
    lines.append(f"conntrack v1.4.7 (conntrack-tools): {entries} flow entries have been shown.")
    return "\n".join(lines) + "\n"


def synth_table(entries: int, path: Path) -> Path:
    from bench.stamp import stamp

    path = path.with_name(f"{path.stem}-{stamp(sys.modules[__name__])}{path.suffix}")
    if not path.exists():
        path.write_text(synthesize(entries))
    return path


def _explain_seconds(extra: list[str], repeat: int = 5) -> float:
    """CPU seconds (user + system) of the best of `repeat` explain processes: on a shared machine the wall
    time mostly measures the other tenants."""
    best = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-c", _CLI, "explain", str(SAMPLE), *QUESTION, *extra],
                              cwd=ROOT, capture_output=True, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode not in (0, 3):
            raise RuntimeError(done.stderr.decode(errors="replace").strip())
    return best


def _cpu_best(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def figure(table: Path) -> dict[str, Any]:
    import gc

    gc.disable()  # as every analysis command of the CLI runs (iptrace.cli.common.batch)
    from bench.run import BASELINE_RE
    from iptrace.conntrack import load

    data = table.read_bytes()
    text = data.decode()
    pattern = re.compile(BASELINE_RE)
    base = _cpu_best(lambda: [pattern.findall(line) for line in text.splitlines()])
    read_s = _cpu_best(lambda: load(data))
    entries = len(load(data))
    plain = _explain_seconds([])
    with_table = _explain_seconds(["--conntrack", str(table)])
    # CPU seconds throughout (see _explain_seconds); the baseline is bench.run's tokenizer over the same text.
    return {"entries": entries, "mb": round(len(data) / 1e6, 1), "read_s": round(read_s, 3),
            "baseline_s": round(base, 3), "read_ratio": round(read_s / base, 2),
            "explain_s": round(plain, 3), "explain_with_table_s": round(with_table, 3),
            "explain_ratio": round(with_table / plain, 2)}
