"""`audit`'s worker processes (iptrace.collect.nodeprocs): a worker that dies loses the node it had and nothing
else (that node is a load-error naming how its worker ended; a new worker takes the nodes left); Ctrl-C ends the
audit and every worker at once; the load lock between workers is released by its holder's death. A node stuck
in a worker is a dump file that is a FIFO no one writes: reading it blocks until the test acts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import fleet, synth
from iptrace.collect.nodeprocs import LoadLock
from iptrace.collect.stream import analyse_nodes, sources
from iptrace.kube.audit import combine
from iptrace.render.audit import audit_to_json
from tests.signals import default_sigint

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers") / "snap"
    specs = synth.scale(12, 2, seed=3)
    for i in range(4):
        fleet.write_node(root, specs, i)
    return root


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _reader_of(path: Path, parent: int, timeout: float = 60) -> tuple[int, int]:
    """(the child process of `parent` that opened the FIFO `path` to read it, the descriptor of the writing end
    this opens: until it is closed, that reader waits in read()). A reader waits in open() until some writer
    comes, with no descriptor to find it by yet."""
    deadline = time.monotonic() + timeout
    writer = None
    while writer is None:
        try:
            writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # (ENXIO: no reader yet)
            assert time.monotonic() < deadline, f"no one opened {path}"
            time.sleep(0.02)
    while time.monotonic() < deadline:
        for pid in _children(parent):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in fds):
                    return pid, writer
            except OSError:
                continue
        time.sleep(0.02)
    os.close(writer)
    raise AssertionError(f"no child of {parent} opened {path}")


def test_a_worker_that_dies_loses_its_node_only(snap: Path, tmp_path: Path) -> None:
    stuck = tmp_path / "stuck.txt"
    os.mkfifo(stuck)
    nodes = sources([str(snap)])
    nodes = [*nodes[:2], *sources([str(stuck)], ["192.168.0.10"]), *nodes[2:]]
    killed: list[int] = []
    before = set(_children(os.getpid()))

    def kill() -> None:
        try:
            pid, writer = _reader_of(stuck, os.getpid())
        except AssertionError:
            with open(stuck, "wb"):  # (the stuck worker let go: the test fails, it does not hang)
                raise
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)
        os.close(writer)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        results = analyse_nodes(nodes, jobs=2)
    finally:
        killer.join()
    assert len(killed) == 1
    lost = results[2]
    assert lost.name == "stuck" and not lost.families and lost.addresses == ("192.168.0.10",)
    assert lost.error is not None and "worker process analysing it killed by SIGKILL" in lost.error
    # Every other node analysed, as one worker alone does it (the killed worker's earlier results kept).
    serial = analyse_nodes([n for i, n in enumerate(nodes) if i != 2], jobs=1)
    assert [r for i, r in enumerate(results) if i != 2] == serial
    doc = audit_to_json(combine(results))
    assert [(f["node"], f["id"]) for f in doc["findings"] if f["id"] == "load-error"] == [("stuck", "load-error")]
    assert set(_children(os.getpid())) <= before  # (no worker left behind)


_INTERRUPTED = "Error: interrupted; the audit's workers were ended, no report was written\n"


def _interrupted_audit(snap: Path, tmp_path: Path, interrupt: Callable[[subprocess.Popen[str]], None],
                       **popen: Any) -> tuple[subprocess.Popen[str], str, str, list[int]]:
    """An audit with two workers, one of them waiting on a FIFO's bytes, interrupted by `interrupt`: (the process,
    its stdout, its stderr, its workers' PIDs)."""
    stuck = tmp_path / "stuck.txt"
    os.mkfifo(stuck)
    process = subprocess.Popen([sys.executable, "-m", "iptrace", "audit", str(snap), str(stuck), "-j", "2",
                                "-o", "json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **popen)
    writer = None
    try:
        _, writer = _reader_of(stuck, process.pid)  # (kept open: the worker waits for its bytes)
        workers = _children(process.pid)
        assert len(workers) == 2
        interrupt(process)
        out, err = process.communicate(timeout=30)
    finally:
        if writer is not None:
            os.close(writer)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process, out, err, workers


def _left_running(workers: list[int]) -> list[int]:
    """The workers still running 10 s on (each then killed, so that none outlives the test)."""
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [w for w in workers if Path(f"/proc/{w}").exists()]
    for w in left:
        os.kill(w, signal.SIGKILL)
    return left


def test_ctrl_c_ends_the_audit_and_its_workers(snap: Path, tmp_path: Path) -> None:
    process, out, err, workers = _interrupted_audit(  # (SIGINT as a terminal sends it: to every process of the group)
        snap, tmp_path, lambda p: os.killpg(p.pid, signal.SIGINT), preexec_fn=default_sigint)
    assert process.returncode == 130 and out == "" and err == _INTERRUPTED, err
    assert not _left_running(workers)


def test_sigterm_to_the_audit_ends_it_and_its_workers_quietly(snap: Path, tmp_path: Path) -> None:
    """SIGTERM to the audit alone (a Kubernetes Job's pod or a CI job cancelled, README's way to shard a fleet):
    the audit unwinds as on Ctrl-C and ends its workers; none is left analysing nor prints a BrokenPipeError
    traceback when it answers a parent that is gone."""
    process, out, err, workers = _interrupted_audit(snap, tmp_path, lambda p: p.send_signal(signal.SIGTERM))
    assert not _left_running(workers)
    assert process.returncode == 130 and out == "" and err == _INTERRUPTED, err


def test_the_load_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from iptrace.collect.nodeprocs import "
                               "LoadLock; LoadLock(sys.argv[1]).acquire(1); print('held', flush=True); "
                               "time.sleep(60)", str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        lock = LoadLock(str(path))
        assert not lock.acquire(0.05)  # (the holder has it)
        holder.kill()
        holder.wait()
        assert lock.acquire(5)
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_workers_first_load_does_not_wait_for_the_others(tmp_path: Path) -> None:
    """The workers of an audit start at once: a worker's first node is loaded without the load lock (it holds nothing
    between nodes yet, so its peak is below a later node's), its later nodes with it."""
    from iptrace.collect.stream import Worker

    class Counted(LoadLock):
        asked = 0

        def acquire(self, timeout: float) -> bool:
            Counted.asked += 1
            return super().acquire(timeout)

    path = tmp_path / "lock"
    path.write_bytes(b"")
    worker = Worker(None, False, False, True, Counted(str(path)))
    with worker.loading():
        assert Counted.asked == 0
    with worker.loading():
        assert Counted.asked == 1
        assert not LoadLock(str(path)).acquire(0)  # (this worker holds it)
    assert LoadLock(str(path)).acquire(0)


def test_a_bug_in_a_worker_is_raised_in_the_audit(snap: Path) -> None:
    """An exception that is not the input's fault (a node whose text is not text stands for a bug) stops the audit
    with that exception, as in one process, and its workers are ended."""
    from iptrace.collect.stream import Source

    nodes = [*sources([str(snap)])[:2], Source("odd", "<odd>", False, 12345)]  # type: ignore[arg-type]
    before = set(_children(os.getpid()))
    with pytest.raises(TypeError, match="not subscriptable"):
        analyse_nodes(nodes, jobs=1)
    with pytest.raises(TypeError, match="not subscriptable"):
        analyse_nodes(nodes, jobs=2)
    assert set(_children(os.getpid())) <= before
