"""What an engine is asked (:class:`EngineOptions`) and what it reports (:class:`JobReport`): plain data shared by
:mod:`arcface.batch.engines` and the engines themselves."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENGINES", "EngineOptions", "JobReport"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs a job, and how.

    Attributes:
        engine: "local" or "ray".
        workers: ``local``: processes (1 runs in this process); None: the thread policy's (``align``: one per usable
            CPU, fewer for a short job; ``embed`` / ``enroll``: this process, photos side by side on its threads; see
            :mod:`arcface.runtime.threads`).
        threads: ``local``: CPUs the job may use (workers x threads each); None: ``ARCFACE_THREADS``, else the usable
            CPUs (affinity and cgroup quota).
        address: ``ray``: the cluster (``HOST:PORT`` of its head, ``auto`` for the one this machine belongs to, or
            ``ray://HOST:PORT`` for Ray Client); None starts a Ray instance on this machine for the job.
        job_dir: ``ray``: the job folder (default ``.arcface-jobs/KIND-DIGEST`` under the current folder).
        actors: ``ray``: actors (default: one per CPU of the cluster, or per GPU share with ``actor_gpus``).
        actor_cpus: ``ray``: CPUs each actor asks for (a fraction is fine; its threads are this rounded up).
        actor_gpus: ``ray``: GPUs each actor asks for (> 0 runs the model and MTCNN on CUDA).
        shard_size: ``ray``: inputs per shard (the unit of work, of retry and of resume).
    """

    engine: str = "local"
    workers: int | None = None
    threads: int | str | None = None
    address: str | None = None
    job_dir: str | None = None
    actors: int | None = None
    actor_cpus: float = 0.5
    actor_gpus: float = 0.0
    shard_size: int = 256

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
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
        shards_redone: ``ray``: one line for each shard an earlier run wrote that failed its check when read back
            (a changed digest, an unreadable file, values an honest run never writes) and was computed again.
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
    shards_redone: list[str] = field(default_factory=list)
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
        if self.shards_redone:
            text += f"; {len(self.shards_redone)} shard(s) failed their check and were computed again"
        if self.shard_retries or self.actors_replaced:
            text += f"; {self.shard_retries} shard(s) handed out again after {self.actors_replaced} actor(s) died"
        return text + ")"
