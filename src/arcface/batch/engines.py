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

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcface.batch import ray_engine
from arcface.batch.jobs import Item, JobSettings, Row, cached_worker, release_workers
from arcface.runtime.progress import progress
from arcface.runtime.workers import process_map

__all__ = ["ENGINES", "EngineOptions", "JobReport", "check_engine", "run_job"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs a job, and how.

    Attributes:
        engine: "local" or "ray".
        workers: ``local``: processes (1 runs in this process).
        address: ``ray``: the cluster (``HOST:PORT`` of its head, ``auto`` for the one this machine belongs to, or
            ``ray://HOST:PORT`` for Ray Client); None starts a Ray instance on this machine for the job.
        job_dir: ``ray``: the job folder (default ``.arcface-jobs/KIND-DIGEST`` under the current folder).
        actors: ``ray``: actors (default: one per CPU of the cluster, or per GPU share with ``actor_gpus``).
        actor_cpus: ``ray``: CPUs each actor asks for (a fraction is fine; its threads are this rounded up).
        actor_gpus: ``ray``: GPUs each actor asks for (> 0 runs the model and MTCNN on CUDA).
        shard_size: ``ray``: inputs per shard (the unit of work, of retry and of resume).
    """

    engine: str = "local"
    workers: int = 1
    address: str | None = None
    job_dir: str | None = None
    actors: int | None = None
    actor_cpus: float = 0.5
    actor_gpus: float = 0.0
    shard_size: int = 256

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"--actors must be at least 1, got {self.actors}")
        if not (self.actor_cpus > 0 and math.isfinite(self.actor_cpus)):
            raise ValueError(f"--actor-cpus must be positive, got {self.actor_cpus}")
        if not (self.actor_gpus >= 0 and math.isfinite(self.actor_gpus)):
            raise ValueError(f"--actor-gpus must be 0 or more, got {self.actor_gpus}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be positive, got {self.shard_size}")
        if self.engine == "local":
            ray_only = {"--address": self.address, "--job-dir": self.job_dir, "--actors": self.actors}
            given = [name for name, value in ray_only.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to --engine ray")


@dataclass
class JobReport:
    """What an engine did (filled in while the rows are produced).

    Attributes:
        engine: "local" or "ray".
        items: inputs.
        job_dir: ``ray``: the job folder.
        shards: ``ray``: shards of the plan.
        shards_reused: ``ray``: shards an earlier run had written.
        shards_computed: ``ray``: shards written by this run.
        address: ``ray``: the cluster connected to.
        cluster_cpus: ``ray``: CPUs of the cluster.
        actors: ``ray``: actors started (without replacements).
        actors_replaced: ``ray``: actors started again after one died.
        shard_retries: ``ray``: shards handed out again because their actor died.
        actor_start_s: ``ray``: per first actor, seconds from asking for it to its first answer (process, imports,
            model load).
        model_load_s: ``ray``: per first actor, seconds its worker took to build (model and detector).
        task_compute_s: ``ray``: per shard computed, seconds of work inside the actor.
        task_round_trip_s: ``ray``: per shard computed, seconds from handing it out to its rows in the driver,
            less the time it waited behind the actor's previous shard.
    """

    engine: str = "local"
    items: int = 0
    job_dir: Path | None = None
    shards: int = 0
    shards_reused: int = 0
    shards_computed: int = 0
    address: str | None = None
    cluster_cpus: float = 0.0
    actors: int = 0
    actors_replaced: int = 0
    shard_retries: int = 0
    actor_start_s: list[float] = field(default_factory=list)
    model_load_s: list[float] = field(default_factory=list)
    task_compute_s: list[float] = field(default_factory=list)
    task_round_trip_s: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One line for a person ("" for the local engine)."""
        if self.engine != "ray":
            return ""
        where = self.address or "a Ray instance started for the job"
        if not self.shards_computed and not self.actors:
            return f"ray: {self.shards} shards in {self.job_dir} (all done earlier: nothing computed)"
        text = (f"ray ({where}): {self.shards} shards in {self.job_dir} ({self.shards_reused} done earlier, "
                f"{self.shards_computed} computed by {self.actors} actor(s)")  # fmt: skip
        if self.actor_start_s:
            text += f", actor start {statistics.median(self.actor_start_s):.1f} s"
        if self.shard_retries or self.actors_replaced:
            text += f"; {self.shard_retries} shard(s) handed out again after {self.actors_replaced} actor(s) died"
        return text + ")"


def check_engine(options: EngineOptions | None) -> None:
    """Fail early, with one line, when the engine's packages are missing (before a model is loaded).

    Raises:
        JobError: ``ray`` without Ray or pyarrow installed.
    """
    if options is not None and options.engine == "ray":
        ray_engine.check_installed()


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
    return _local(settings, items, options.workers, progress_bar)


def _local(settings: JobSettings, items: Sequence[Item], workers: int, progress_bar: bool) -> Iterator[Row]:
    if not items:
        return
    n = len(items)
    size = settings.batch_size if workers <= 1 else max(1, min(settings.batch_size, n // (workers * 4)))
    chunks = [(settings, list(items[i : i + size])) for i in range(0, n, size)]
    try:
        results = process_map(_run_chunk, chunks, workers=workers, chunksize=1)
        rows = (row for chunk in results for row in chunk)
        yield from progress(rows, total=n, desc=settings.kind, enabled=progress_bar)
    finally:
        release_workers()  # a model that ran in this process is not kept after the job


def _run_chunk(task: tuple[JobSettings, list[Item]]) -> list[Row]:
    """One chunk of items in a worker process (its worker, and so its model, built once per process)."""
    settings, items = task
    return cached_worker(settings).run(items)
