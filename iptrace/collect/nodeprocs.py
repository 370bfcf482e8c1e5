"""`audit`'s worker processes (iptrace.collect.stream): child processes of this interpreter, each given one node at
a time over a pipe and sending its result back over another.

Not multiprocessing's Pool: its spawned workers import the parent's __main__ (the whole command line), its locks
start a resource-tracker process (13 MB, counted in an audit's memory like every process of it), and it waits for
ever for the result of a worker that died (killed for want of memory, say). Here a worker that dies loses the node
it had only: that node's result says so, and a new worker takes the nodes left. Ctrl-C is the parent's: workers
ignore SIGINT and are ended when the parent stops waiting for them, whatever the reason.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

# What a worker runs: the parent's module search path, then serve() with the two pipes' descriptors.
_BOOT = ("import sys; sys.path[:] = sys.argv[3:]; from iptrace.collect.nodeprocs import serve; "
         "serve(int(sys.argv[1]), int(sys.argv[2]))")
POLL = 0.005  # seconds between two tries of a LoadLock another worker holds


class LoadLock:
    """A lock between processes that a process's death releases (flock(2) on a file each of them opens itself):
    a worker killed while it holds it does not make the others wait for it. Pickled as the file's path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def __getstate__(self) -> str:
        return self.path

    def __setstate__(self, path: str) -> None:
        self.path = path
        self._fd = None

    def acquire(self, timeout: float) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(POLL)

    def release(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def serve(tasks_fd: int, results_fd: int) -> None:
    """A worker's life: stream._init with the first message's arguments, then stream._run of each item until the
    pipe is closed (or None comes). Each answer is (what _run returned, None), or (None, the exception it raised)
    before this process ends with it, silently: the parent reports it the CLI's way (IPTRACE_DEBUG=1: with this
    process's traceback too)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (a terminal's Ctrl-C reaches every process of the group)
    from iptrace.collect import stream

    tasks = Connection(tasks_fd, writable=False)
    results = Connection(results_fd, readable=False)
    stream._init(*pickle.loads(tasks.recv_bytes()))
    while True:
        try:
            item = pickle.loads(tasks.recv_bytes())
        except EOFError:
            item = None
        if item is None:
            _exit()
        try:
            answer = stream._run(item)
        except Exception as exc:  # (a bug: the parent decides what becomes of it, as in the audit's own process)
            results.send_bytes(pickle.dumps((None, _portable(exc)), protocol=pickle.HIGHEST_PROTOCOL))
            if not os.environ.get("IPTRACE_DEBUG"):
                sys.excepthook = _untold  # (this process's stderr is the audit's: no traceback there)
            raise
        try:
            results.send_bytes(pickle.dumps((answer, None), protocol=pickle.HIGHEST_PROTOCOL))
        except BrokenPipeError:  # (the parent is gone, killed: no one to answer)
            return


def _exit() -> None:
    """A worker's end once no item is left: at once, as the CLI's fast exit (iptrace.cli.run) ends the parent.
    Finalizing the interpreter would free the ~10^6 objects its load memo and caches hold one by one (~0.2 s a
    worker, measured at the end of a 5,000-Service fleet's audit, which the parent waits for); nothing of them is
    anyone's after this process (its answers are sent, its stderr is the parent's and written through)."""
    sys.stderr.flush()
    os._exit(0)


def _untold(*_: Any) -> None:
    """A worker's excepthook once its exception has gone to the parent: nothing more to say."""


def _portable(exc: Exception) -> Exception:
    """`exc` if it pickles and unpickles, else a RuntimeError that names it (as multiprocessing's Pool does)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except (pickle.PickleError, TypeError, AttributeError):
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    tasks: Connection
    results: Connection
    doing: int | None = None  # the index of the item it was given and has not answered

    def end(self, kill: bool) -> None:
        for conn in (self.tasks, self.results):
            conn.close()  # (closed tasks: a worker between two items returns)
        if kill and self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _start(init: bytes) -> _Child:
    tasks_r, tasks_w = os.pipe()
    results_r, results_w = os.pipe()
    try:
        # (its stdout is not the audit's document; its stderr is the audit's, for what Python says on the way)
        process = subprocess.Popen([sys.executable, "-c", _BOOT, str(tasks_r), str(results_w), *sys.path],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(tasks_r, results_w))
    except BaseException:
        for fd in (tasks_r, tasks_w, results_r, results_w):
            os.close(fd)
        raise
    os.close(tasks_r)
    os.close(results_w)
    child = _Child(process, Connection(tasks_w, readable=False), Connection(results_r, writable=False))
    try:
        child.tasks.send_bytes(init)
    except OSError:
        pass  # (it died already: its first item says so)
    return child


def _ended(process: subprocess.Popen[bytes]) -> str:
    """How a worker ended, in words."""
    code = process.wait()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (the system may have run out of memory)" if -code == signal.SIGKILL else "")
    return f"exited with status {code}"


def answers(items: Sequence[Any], init: tuple[Any, ...], jobs: int
            ) -> Iterator[tuple[int, Any, str | Exception | None]]:
    """(index, what stream._run answered for items[index], None) as each is done, in `jobs` workers made with
    stream._init(*init, LoadLock) — or (index, None, how its worker ended) for an item whose worker died before
    answering it, or (index, None, the exception) for an item whose _run raised one (its worker ends with it); a new
    worker takes the items left."""
    fd, lock_path = tempfile.mkstemp(prefix="iptrace-audit-")
    os.close(fd)
    todo = deque(range(len(items)))
    children: list[_Child] = []
    done = False
    try:
        init_bytes = pickle.dumps((*init, LoadLock(lock_path)), protocol=pickle.HIGHEST_PROTOCOL)
        children = [_start(init_bytes) for _ in range(max(1, min(jobs, len(items))))]
        for child in children:
            _give(child, todo, items)

        def replace(child: _Child, *, kill: bool) -> None:
            """`child` ended, and a new worker for the items left."""
            child.end(kill=kill)
            children.remove(child)
            if todo:
                children.append(replacement := _start(init_bytes))
                _give(replacement, todo, items)

        while True:
            busy = {c.results: c for c in children if c.doing is not None}
            if not busy:
                break
            for conn in wait(list(busy)):
                child = busy[conn]  # type: ignore[index]
                index = child.doing
                assert index is not None
                try:
                    data = conn.recv_bytes()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    replace(child, kill=True)
                    yield index, None, _ended(child.process)
                    continue
                child.doing = None
                _give(child, todo, items)  # (before this answer is read: the worker does not wait for it)
                answer, error = pickle.loads(data)
                del data
                if error is not None:
                    # (the worker ends with it, serve: the item it was given meanwhile goes to a new one)
                    if child.doing is not None:
                        todo.appendleft(child.doing)
                    replace(child, kill=False)
                    yield index, None, error
                    continue
                yield index, answer, None
        done = True
    finally:
        for child in children:
            if done:
                try:
                    child.tasks.send_bytes(pickle.dumps(None))
                except OSError:
                    pass
            child.end(kill=not done)
        os.unlink(lock_path)


def _give(child: _Child, todo: deque[int], items: Sequence[Any]) -> None:
    """The next item to `child` (a worker that died meanwhile is found by its results' end, the item with it)."""
    if not todo:
        return
    index = todo.popleft()
    child.doing = index
    try:
        child.tasks.send_bytes(pickle.dumps(items[index], protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:
        pass
