"""Where the per-image work of a batch job runs. Two engines, one contract: one row per input, in input order.

    >>> rows = run_job(settings, items)                                           # local: this process
    >>> rows = run_job(settings, items, EngineOptions("local", workers=2))        # local worker processes
    >>> rows = run_job(settings, items, EngineOptions("ray", address="head:6379"))  # an actor pool on Ray
    >>> for row in rows: ...

* ``local`` (the default): :class:`~arcface.batch.jobs.Worker` s in this process or in local worker processes
  (:func:`arcface.runtime.workers.process_map`). Nothing is written but what the job itself writes; a worker
  process that dies ends the job (:class:`~arcface.runtime.workers.WorkerDied`).
* ``ray``: :mod:`arcface.batch.ray_engine`: one actor per worker slot on a Ray cluster (the model loaded once per
  actor), streaming shards of the inputs through them; each shard's rows are written as a Parquet file in the job
  folder (:mod:`arcface.batch.shards`), so a killed job resumes and every input has exactly one row; a shard whose
  actor died is computed again.

Both record a bad photo as a row with its :class:`~arcface.batch.failures.Failure` and go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from arcface.batch import ray_engine
from arcface.batch.jobs import Item, JobSettings, Row, cached_worker, release_workers
from arcface.batch.options import ENGINES, EngineOptions, JobReport
from arcface.inference.contract import ModelContract
from arcface.runtime import threads as thread_policy
from arcface.runtime.progress import progress
from arcface.runtime.workers import process_map

__all__ = ["ENGINES", "EngineOptions", "JobReport", "check_engine", "model_contract", "run_job"]

def check_engine(options: EngineOptions | None) -> None:
    """Fail early, with one line, when the engine's packages are missing (before a model is loaded).

    Raises:
        JobError: ``ray`` without Ray or pyarrow installed.
    """
    if options is not None and options.engine == "ray":
        ray_engine.check_installed()


def model_contract(settings: JobSettings, options: EngineOptions) -> ModelContract:
    """The model's contract of an ``embed`` / ``enroll`` job, with the engine checked first and the model loaded in
    this process (a bad engine or model fails before any work); for the Ray engine the model is then dropped here,
    since the actors load their own.

    Raises:
        JobError: the engine's packages are missing. FileNotFoundError, ValueError: a bad model.
    """
    check_engine(options)
    contract = cached_worker(settings).contract
    if contract is None:
        raise ValueError(f"a {settings.kind} job has no model")
    if options.engine != "local":
        release_workers()
    return contract


def run_job(
    settings: JobSettings,
    items: Sequence[Item],
    options: EngineOptions | None = None,
    *,
    plan_extra: dict[str, Any] | None = None,
    report: JobReport | None = None,
    progress_bar: bool = True,
) -> Iterator[Row]:
    """The rows of ``items`` under ``settings``, one per item, in input order, computed by ``options.engine``.

    Args:
        settings: the per-image work.
        items: the inputs.
        options: the engine (default: local, in this process).
        plan_extra: ``ray``: more facts that make the shards differ (the model contract's id), for the job's plan.
        report: filled in with what the engine did.
        progress_bar: report progress on stderr.

    Raises:
        JobError: the Ray engine cannot run the job (not installed, no cluster at the address, a job folder that
            holds another job, actors that could not start or kept dying); the shards written so far are kept.
        WorkerDied: a local worker process died.
    """
    options = options or EngineOptions()
    report = report if report is not None else JobReport()
    report.engine, report.items = options.engine, len(items)
    if options.engine == "ray":
        return ray_engine.run(settings, items, options, plan_extra=plan_extra, report=report,
                              progress_bar=progress_bar)  # fmt: skip
    return _local(settings, items, options, progress_bar)


def _local(settings: JobSettings, items: Sequence[Item], options: EngineOptions, progress_bar: bool) -> Iterator[Row]:
    """One "detect" thread plan sizes the pool: ``align`` (detection only) runs one process per usable CPU with one
    thread each (fewer for a short job); ``embed`` / ``enroll`` run in this process, photos side by side on its
    threads and the model's passes on all of them (the worker's ``FaceRecognizer`` decides and applies that plan),
    unless ``options.workers`` asks for processes (each with a budget of one CPU)."""
    if not items:
        return
    n = len(items)
    in_process = settings.kind != "align" and options.workers is None
    plan = thread_policy.decide("detect", threads=options.threads, workers=1 if in_process else options.workers,
                                items=n)  # fmt: skip
    workers = min(plan.processes, n)
    if workers > 1:
        settings = dataclasses.replace(settings, threads=1)  # each process: one photo at a time on one thread
    elif settings.threads is None:
        settings = dataclasses.replace(settings, threads=options.threads)
    size = settings.batch_size if workers <= 1 else max(1, min(settings.batch_size, n // (workers * 4)))
    chunks = [(settings, list(items[i : i + size])) for i in range(0, n, size)]
    if workers <= 1 and settings.kind == "align":
        thread_policy.apply(plan)  # detection here; an embed / enroll worker's FaceRecognizer applies its own plan
    try:
        results = process_map(_run_chunk, chunks, plan=plan, chunksize=1)
        rows = (row for chunk in results for row in chunk)
        yield from progress(rows, total=n, desc=settings.kind, enabled=progress_bar)
    finally:
        release_workers()  # a model that ran in this process is not kept after the job


def _run_chunk(task: tuple[JobSettings, list[Item]]) -> list[Row]:
    """One chunk of items in a worker process (its worker, and so its model, built once per process)."""
    settings, items = task
    return cached_worker(settings).run(items)
