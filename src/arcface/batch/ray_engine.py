"""The Ray engine of the batch jobs: an actor pool on a Ray cluster, streaming shards of the inputs through it.

The driver (the process that runs ``arcface align|embed|gallery enroll --engine ray``):

1. plans the job (:class:`~arcface.batch.shards.Plan`: the inputs cut into shards of ``shard_size``) and opens its
   folder: a shard that an earlier run wrote is complete and is not computed again (a killed job resumes);
2. connects to the cluster (``ray.init(address=...)``) and starts the actors: :class:`ArcfaceBatchActor`, each
   asking for a fraction of a CPU (or a GPU share), each building one :class:`~arcface.batch.jobs.Worker` (the model
   and detector loaded once per actor);
3. hands out the missing shards, at most two per actor at a time (one running, one waiting, so an actor never
   idles on the driver), takes each shard's rows back as an Arrow table, checks them (exactly the shard's inputs,
   once each) and writes the shard atomically: the driver holds one shard's rows at a time, never the whole job;
4. when an actor dies (killed, out of memory, its node lost), its shards are handed out again and the actor is
   replaced; the rows of a shard are written once, when a complete result arrives, so a death loses and duplicates
   nothing. A shard whose actor died three times stops the job (the shards written so far are kept);
5. yields every shard's rows in input order to the caller (who writes the ``.npz``, enrols, or reports).

The photos are read by the actors, so on a cluster they (and ``align``'s output folder, and a model file other than
the bundled ones) must be on storage that every node mounts at the same path. ``ray`` and ``pyarrow`` are optional
(the ``[ray]`` extra) and imported when the engine runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from arcface.batch.jobs import Item, JobError, JobSettings, Row, Worker
from arcface.batch.options import EngineOptions, JobReport
from arcface.batch.shards import JobDir, Plan, Shard, _pa, open_job_dir, rows_to_table
from arcface.runtime import threads as thread_policy
from arcface.runtime.progress import Progress
from arcface.runtime.workers import usable_cpus

__all__ = ["ACTOR_START_TIMEOUT", "MAX_ATTEMPTS", "ArcfaceBatchActor", "check_installed", "run"]

log = logging.getLogger(__name__)

#: Tries of one shard (a first and two more after its actor died) before the job stops.
MAX_ATTEMPTS = 3
#: Seconds to wait for the first actor to answer (a busy or short cluster) before the job stops.
ACTOR_START_TIMEOUT = 600.0
#: Shards handed to one actor at a time.
PER_ACTOR = 2


class ArcfaceBatchActor:
    """One worker slot on the cluster: a :class:`~arcface.batch.jobs.Worker` built once, then shards of inputs in,
    Arrow tables of rows out (``ray.remote`` is applied when the job runs, so this module imports without Ray).

    Args:
        settings: the job.
        device: "cpu", or "cuda" on an actor with a GPU share.
        threads: the actor's CPU budget (its CPUs, rounded up): the torch / OpenCV threads of an ``align`` job, the
            budget of an ``embed`` / ``enroll`` job's face pipeline.
    """

    def __init__(self, settings: JobSettings, device: str, threads: int) -> None:
        t0 = time.perf_counter()
        os.environ.update(thread_policy.worker_environment(threads))
        if settings.kind == "align":  # detection only; an embed / enroll worker's FaceRecognizer applies its own plan
            thread_policy.set_threads(threads)
        self.worker = Worker(dataclasses.replace(settings, threads=threads), device)
        self.load_s = time.perf_counter() - t0

    def ready(self) -> dict[str, Any]:
        """Where the actor runs and how long its worker took to build."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "load_s": self.load_s}

    def run(self, start: int, items: list[tuple[str, str, str]]) -> tuple[Any, float]:
        """The rows of inputs ``start, start + 1, ...`` as a shard table, and the seconds the work took."""
        t0 = time.perf_counter()
        rows = self.worker.run([Item(*it) for it in items])
        return rows_to_table(rows, start), time.perf_counter() - t0


def run(
    settings: JobSettings,
    items: Sequence[Item],
    options: EngineOptions,
    *,
    plan_extra: dict[str, Any] | None,
    report: JobReport,
    progress_bar: bool,
) -> Iterator[Row]:
    """Compute the job's missing shards on the cluster, then yield every row in input order (see the module)."""
    _pa()  # pyarrow before anything else: one line if it is missing
    ray = _ray()
    plan = Plan.of(settings, items, options.shard_size, plan_extra)
    folder = Path(options.job_dir) if options.job_dir else plan.default_dir()
    with open_job_dir(folder, plan, items) as job:
        todo = job.missing()
        report.job_dir, report.shards = folder, len(plan.shards)
        report.shards_reused = len(plan.shards) - len(todo)
        report.shards_redone = job.redone
        report.address = options.address
        if todo:
            owner = _connect(ray, options.address)
            try:
                _compute(ray, job, todo, settings, options, report, progress_bar)
            finally:
                if owner:
                    ray.shutdown()
        computed = {s.index for s in todo}
        for shard in plan.shards:
            yield from job.read(shard, reused=shard.index not in computed)


# --------------------------------------------------------------------------------------------------
# Connecting


def check_installed() -> None:
    """Raise :class:`JobError` (one line) unless Ray and pyarrow can be imported."""
    _pa()
    _ray()


def _ray():
    # optional heavy dependency (the [ray] extra): only --engine ray needs it
    try:
        import ray
    except ImportError:
        raise JobError("--engine ray needs Ray: pip install 'arcface[ray]' (ray and pyarrow)") from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Connect this process to the cluster (or start a Ray instance here when ``address`` is None); True when this
    call connected (and so the caller disconnects), False when the process was already connected."""
    if ray.is_initialized():
        return False  # inside a Ray program: use its connection, leave it open
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        _check_reachable(address)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        kwargs.update(num_cpus=usable_cpus(), include_dashboard=False)
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError...: one line naming the address
        where = f"--address {address}" if address else "a Ray instance on this machine"
        hint = ""
        if address and address not in ("auto", "local"):
            hint = (f"; the port answers, so check that this machine has the cluster's token (RAY_AUTH_TOKEN or "
                    f"~/.ray/auth_token) and runs its Ray version ({ray.__version__} here)")  # fmt: skip
        raise JobError(f"ray: cannot connect to {where}: {_cause(e)}{hint}") from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that nothing answers on fails fast, with one line."""
    if address in ("auto", "local"):
        return
    m = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if m is None:
        raise JobError(f"--address {address}: expected HOST:PORT (the head's GCS port), auto, or ray://HOST:PORT")
    host, port = m.group(1), int(m.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise JobError(f"--address {address}: no Ray cluster answers there ({why}); start one with 'ray start "
                       "--head --port PORT' on the head node, or fix the address") from None  # fmt: skip


def _cause(e: BaseException) -> str:
    """The one line that says why, from a Ray error's text (the last ``SomeError: message`` line of a traceback)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(\(.*\))?: ", line):
            return line
    return lines[0] if lines else type(e).__name__


# --------------------------------------------------------------------------------------------------
# The actor pool


@dataclass
class _Slot:
    handle: Any
    generation: int = 0
    load: int = 0  # shards handed out and not back
    free_at: float = 0.0  # when it finished its last shard (or became ready)
    ready: bool = False


def _compute(ray, job: JobDir, todo: list[Shard], settings: JobSettings, options: EngineOptions,
             report: JobReport, progress_bar: bool) -> None:  # fmt: skip
    from ray.exceptions import RayActorError, RayTaskError  # optional heavy dependency (see _ray)

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    report.cluster_cpus = cpus
    if options.actor_cpus > cpus or options.actor_gpus > gpus:
        raise JobError(f"ray: the cluster has {cpus:g} CPUs and {gpus:g} GPUs; an actor asking for "
                       f"{options.actor_cpus:g} CPUs and {options.actor_gpus:g} GPUs cannot be placed")  # fmt: skip
    if options.actors:
        n = options.actors
    elif options.actor_gpus > 0:
        n = max(1, int(gpus // options.actor_gpus))
    else:
        n = max(1, int(cpus))
    n = min(n, len(todo))
    device = "cuda" if options.actor_gpus > 0 else "cpu"
    threads = max(1, math.ceil(options.actor_cpus))
    actor_class = ray.remote(
        num_cpus=options.actor_cpus, num_gpus=options.actor_gpus, max_restarts=0, scheduling_strategy="SPREAD"
    )(ArcfaceBatchActor)

    t_ask = time.perf_counter()
    slots = [_Slot(actor_class.remote(settings, device, threads)) for _ in range(n)]
    report.actors = n
    queue = collections.deque((shard, 0) for shard in todo)  # (shard, tries so far)
    # ref -> ("ready", slot, generation, asked) or ("task", slot, generation, shard, tries, sent)
    pending: dict[Any, tuple] = {}
    for i, slot in enumerate(slots):
        pending[slot.handle.ready.remote()] = ("ready", i, 0, t_ask)
    any_ready = False

    def hand_out(i: int) -> None:
        slot = slots[i]
        while queue and slot.load < PER_ACTOR:
            shard, tries = queue.popleft()
            ref = slot.handle.run.remote(shard.start, [astuple(it) for it in job.items_of(shard)])
            pending[ref] = ("task", i, slot.generation, shard, tries, time.perf_counter())
            slot.load += 1

    def replace(i: int, generation: int, why: str) -> None:
        slot = slots[i]
        if generation != slot.generation:
            return  # its death was handled already (the other shard it held)
        report.actors_replaced += 1
        if report.actors_replaced > 2 * n + MAX_ATTEMPTS:
            raise JobError(f"ray: actors keep dying ({report.actors_replaced} so far; the last: {why}); the shards "
                           f"written so far are in {job.path}: run the same command again to resume")  # fmt: skip
        log.warning("ray: an actor died (%s); starting another", why)
        with contextlib.suppress(Exception):  # it may be gone already
            ray.kill(slot.handle, no_restart=True)
        t = time.perf_counter()
        slots[i] = _Slot(actor_class.remote(settings, device, threads), generation=slot.generation + 1)
        pending[slots[i].handle.ready.remote()] = ("ready", i, slots[i].generation, t)

    for i in range(n):
        hand_out(i)
    done_rows = sum(len(s) for s in job.plan.shards) - sum(len(s) for s in todo)
    try:
        with Progress(len(job.items), job.plan.kind, enabled=progress_bar, initial=done_rows) as bar:
            while any(kind == "task" for kind, *_ in pending.values()):
                timeout = None if any_ready else max(1.0, ACTOR_START_TIMEOUT - (time.perf_counter() - t_ask))
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
                if not ready:
                    raise JobError(f"ray: no actor started within {ACTOR_START_TIMEOUT:.0f} s ({n} asking for "
                                   f"{options.actor_cpus:g} CPUs, {options.actor_gpus:g} GPUs each): is the "
                                   "cluster busy or short of resources? See 'ray status'")  # fmt: skip
                ref = ready[0]
                what = pending.pop(ref)
                kind, i, generation = what[0], what[1], what[2]
                now = time.perf_counter()
                if kind == "ready":
                    try:
                        info = ray.get(ref)
                    except RayActorError as e:
                        if not any_ready:  # no actor has ever started: the same error will repeat (a bad model)
                            raise JobError(f"ray: the actors could not start: {_cause(e)}") from None
                        replace(i, generation, _cause(e))
                        continue
                    any_ready = True
                    if generation == slots[i].generation:
                        slots[i].ready, slots[i].free_at = True, now
                    if generation == 0:
                        report.actor_start_s.append(now - what[3])
                        report.model_load_s.append(float(info["load_s"]))
                    continue
                shard, tries, t_sent = what[3], what[4], what[5]
                if generation == slots[i].generation:
                    slots[i].load -= 1
                try:
                    table, compute_s = ray.get(ref)
                except RayActorError as e:
                    if tries + 1 >= MAX_ATTEMPTS:
                        raise JobError(
                            f"ray: {shard.name} (inputs {shard.start}..{shard.stop - 1}) was lost {tries + 1} times "
                            f"with its actor ({_cause(e)}); the shards written so far are in {job.path}: run the "
                            "same command again to resume"
                        ) from None
                    report.shard_retries += 1
                    queue.appendleft((shard, tries + 1))
                    replace(i, generation, _cause(e))
                except RayTaskError as e:  # the per-image work records bad photos; this is a broken worker
                    raise JobError(f"ray: {shard.name} failed on its actor: {_cause(e)}") from None
                else:
                    if not job.done(shard):  # a shard is written once
                        job.write(shard, table)
                        report.shards_computed += 1
                        report.task_compute_s.append(float(compute_s))
                        report.task_round_trip_s.append(now - max(t_sent, slots[i].free_at))
                        bar.update(len(shard))
                    slots[i].free_at = now
                hand_out(i)
    finally:
        for slot in slots:
            with contextlib.suppress(Exception):  # an actor that died is gone already
                ray.kill(slot.handle, no_restart=True)
