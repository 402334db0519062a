"""Per-item work over local worker processes: the one process pool of the batch jobs and the evaluation.

    >>> for result in process_map(align_one, paths, workers=2):   # results in input order
    ...     ...

The pool follows a "detect" thread plan (:mod:`arcface.runtime.threads`), handed in by the entry point that decided
it (``plan=``) or decided here: by default as many worker processes as usable CPUs (affinity and cgroup quota, or
``ARCFACE_THREADS``), fewer for a short job, each with one intra-op thread (small per-image networks gain little
from intra-op threads; parallelism comes from the processes), and never more threads per worker than
``usable CPUs // workers``.

Each worker is a fresh interpreter (``spawn``: forking a process that already runs torch's threads can hang) that
starts with ``OMP_NUM_THREADS`` in its environment (read when torch loads), sets its threads once, ignores Ctrl-C
(the parent handles it) and calls ``initializer(*initargs)`` once. With one worker, or one item, everything runs in
this process instead: on the threads its entry point applied, or, without a ``plan``, with the per-worker thread
count set here (unless the policy is off, ``ARCFACE_THREADS=legacy``).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from arcface.runtime import threads as thread_policy

__all__ = ["WorkerDied", "process_map", "thread_map", "usable_cpus"]

T = TypeVar("T")
R = TypeVar("R")


class WorkerDied(RuntimeError):
    """A worker process died (killed, out of memory); results received so far were delivered."""


def usable_cpus() -> int:
    """The CPUs this process may use (affinity mask and cgroup CPU quota, or ``ARCFACE_THREADS``), at least 1.

    Raises:
        ThreadsError: an invalid ``ARCFACE_THREADS``.
    """
    return thread_policy.cpu_budget().cpus


def _init_worker(threads: int | None, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads is not None:
        thread_policy.set_threads(threads)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def _environment(extra: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` while the pool's processes are spawned (they copy it), then as it was."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def process_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    plan: thread_policy.ThreadPlan | None = None,
    workers: int | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    chunksize: int | None = None,
    threads_per_worker: int | None = None,
    threads: int | str | None = None,
) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in input order.

    Args:
        fn: a picklable (module-level) function; it should return failures rather than raise them, so that one bad
            item does not end a long batch.
        items: the work.
        plan: the "detect" plan of the entry point that applied it (its ``processes`` and ``cpus``); None: decided
            here from ``workers``, ``threads`` and the number of items.
        workers: processes (without ``plan``); None lets the thread policy choose (usable CPUs, fewer for a short
            job); 1 (or a single item) runs in this process.
        initializer: called once per process before its first item (in this process too, when run here).
        initargs: its arguments.
        chunksize: items sent to a worker at a time (default: about four chunks per worker, at most 16 items).
        threads_per_worker: torch / OpenCV / OpenMP threads of each worker (default 1); at most
            ``usable CPUs // workers`` (at least 1).
        threads: the CPU budget of the whole pool (without ``plan``); None: ``ARCFACE_THREADS``, else the usable
            CPUs.

    Raises:
        WorkerDied: a worker process died; the results yielded so far are complete.
        ThreadsError: an invalid ``ARCFACE_THREADS``, ``workers`` / ``threads_per_worker`` below 1, or ``plan``
            with ``workers`` or ``threads``.
    """
    items = list(items) if not isinstance(items, Sequence) else items
    if not items:
        return
    entry = plan is None  # no entry point above applied a plan: this call sets the threads it runs on here
    if plan is None:
        plan = thread_policy.decide("detect", threads=threads, workers=workers, items=len(items))
    elif workers is not None or threads is not None:
        raise thread_policy.ThreadsError("give plan, or workers and threads, not both")
    workers = min(plan.processes, len(items))
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool) or threads_per_worker < 1):
        raise thread_policy.ThreadsError(f"threads_per_worker must be a positive integer, got {threads_per_worker!r}")
    threads = None
    if not plan.legacy:
        threads = min(threads_per_worker or 1, max(1, plan.cpus // workers))
    elif workers > 1:
        threads = threads_per_worker or 1  # before the policy, workers always ran with these threads
    if workers <= 1:
        if entry and threads is not None:
            thread_policy.set_threads(threads)
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return

    chunk = chunksize or max(1, min(16, len(items) // (workers * 4)))
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads, initializer, initargs),
    )
    try:
        with _environment(thread_policy.worker_environment(threads)):
            results = pool.map(fn, items, chunksize=chunk)  # submits everything: the processes start here
        yield from results
    except BrokenProcessPool:
        raise WorkerDied("a worker process died (out of memory, or killed)") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def thread_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int) -> Iterator[R]:
    """``fn(item)`` for every item on ``workers`` threads of this process, yielded in input order.

    For work that releases the GIL in its heavy parts (torch operators, OpenCV, numpy), each item on the process's
    intra-op threads (the thread policy's "pipeline": photos side by side on one intra-op thread each instead of one
    photo's small operators on a team of threads). At most ``2 * workers`` items are in flight, so ``items`` may be
    a long iterator. An exception of ``fn`` is raised when its item's turn comes. One worker, or a single item, runs
    in the calling thread.
    """
    if workers <= 1 or (isinstance(items, Sized) and len(items) <= 1):
        for item in items:
            yield fn(item)
        return
    pending: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="arcface-map") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
