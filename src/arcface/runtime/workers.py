"""Per-item work over local worker processes: the one process pool of the batch jobs and the evaluation.

    >>> for result in process_map(align_one, paths, workers=2):   # results in input order
    ...     ...

Each worker is a fresh interpreter (``spawn``: forking a process that already runs torch's threads can hang),
runs with one intra-op thread (small per-image networks gain little from intra-op threads; parallelism comes
from the processes), ignores Ctrl-C (the parent handles it) and calls ``initializer(*initargs)`` once. With one
worker, or one item, everything runs in this process instead, without touching its thread settings.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import cv2
import torch

__all__ = ["WorkerDied", "process_map", "usable_cpus"]

T = TypeVar("T")
R = TypeVar("R")


class WorkerDied(RuntimeError):
    """A worker process died (killed, out of memory); results received so far were delivered."""


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _init_worker(threads: int, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if initializer is not None:
        initializer(*initargs)


def process_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int = 1,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    chunksize: int | None = None,
    threads_per_worker: int = 1,
) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in input order.

    Args:
        fn: a picklable (module-level) function; it should return failures rather than raise them, so that one bad
            item does not end a long batch.
        items: the work.
        workers: processes; 1 (or a single item) runs in this process.
        initializer: called once per process before its first item (in this process too, when run here).
        initargs: its arguments.
        chunksize: items sent to a worker at a time (default: about four chunks per worker, at most 16 items).
        threads_per_worker: torch / OpenCV / OpenMP threads of each worker.

    Raises:
        WorkerDied: a worker process died; the results yielded so far are complete.
    """
    items = list(items) if not isinstance(items, Sequence) else items
    if not items:
        return
    if workers <= 1 or len(items) == 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return

    workers = min(workers, len(items))
    chunk = chunksize or max(1, min(16, len(items) // (workers * 4)))
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads_per_worker, initializer, initargs),
    )
    try:
        yield from pool.map(fn, items, chunksize=chunk)
    except BrokenProcessPool:
        raise WorkerDied("a worker process died (out of memory, or killed)") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
