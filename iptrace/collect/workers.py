"""Many nodes at a time, and a Ctrl-C that is obeyed at once: the one worker pool of `collect` (SSH and API).

Results come back through a SimpleQueue, not through the workers' Futures: concurrent.futures' wait() and
as_completed() take every Future's lock in turn, and a Ctrl-C between two of those takes leaves one held for
ever — its worker then blocks setting its result, and whatever waits for the workers never returns.
SimpleQueue.get is interrupted without holding anything. Library code: no printing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def run_parallel(items: Sequence[Item], work: Callable[[Item], Result], parallel: int, cancel: threading.Event,
                 progress: Callable[[Result], None] | None = None, name: str = "iptrace") -> list[Result]:
    """`work(item)` for every item, `parallel` at a time; the results in the order of `items`. `progress` is
    called in the calling thread with each result as it comes. When the calling thread is interrupted
    (KeyboardInterrupt, or SIGTERM turned into one), `cancel` is set — `work` must watch it and stop soon —,
    items not started are dropped, the running ones are waited for (a second Ctrl-C does not cut that wait
    short: a worker may be cleaning up after itself), and the interruption goes on."""
    finished: queue.SimpleQueue[tuple[int, Result | None, BaseException | None]] = queue.SimpleQueue()

    def run(k: int, item: Item) -> None:
        try:
            finished.put((k, work(item), None))
        except BaseException as exc:
            finished.put((k, None, exc))  # the calling thread raises it (its Future, which no one reads, too)
            raise

    results: dict[int, Result] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(items))), thread_name_prefix=name)
    try:
        for k, item in enumerate(items):
            pool.submit(run, k, item)
        while len(results) < len(items):
            k, result, error = finished.get()
            if error is not None:
                raise error
            results[k] = result  # type: ignore[assignment]
            if progress is not None:
                progress(result)  # type: ignore[arg-type]
    except BaseException:
        cancel.set()
        while True:
            try:
                pool.shutdown(wait=True, cancel_futures=True)
                break
            except KeyboardInterrupt:
                continue
        raise
    pool.shutdown(wait=True)
    return [results[k] for k in range(len(items))]
