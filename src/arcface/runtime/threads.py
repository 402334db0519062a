"""The one CPU thread policy: how many CPUs this process may use, and how the work of one entry point divides them.

Each entry point (a CLI command, the service, and the Python entry objects: ``load_model`` / ``Embedder``,
``FaceRecognizer``, the evaluation pipeline, the trainer, the batch jobs) calls :func:`decide` once, :func:`apply`
once, and hands the :class:`ThreadPlan` down; code below an entry point reads the plan and never sets a thread count
(one exception, :class:`LoneWork`, widens the OpenMP team of one thread for one photo and restores it).

Why: an OpenMP team of intra-op threads waits at the end of every operator for its slowest member. When another
process shares the cores (a neighbour, a container's CPU quota below the thread count, the service's other
requests), one member is descheduled for a whole scheduler slice while the others wait, and small operators
(MTCNN's P/R/O-Nets) lose many times over. A team never larger than the CPUs the process may use, one intra-op thread
where the operators are small (parallelism across images instead), and processes x item threads x intra-op threads
<= those CPUs avoid it.

**Usable CPUs** (:func:`cpu_budget`): the CPUs of the affinity mask (``os.sched_getaffinity``; a ``taskset`` or a
container's cpuset), capped by the cgroup CPU quota: cgroup v2 ``cpu.max`` (``"150000 100000"`` = 1.5 CPUs,
``"max ..."`` = none), or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = none), read for this process's
cgroup (``/proc/self/cgroup``) and its ancestors under ``/sys/fs/cgroup`` (the smallest limit wins). A fractional
quota is rounded **down** (at least 1): 1.5 CPUs give 1 thread. A team of 2 on a 1.5-CPU quota is throttled for part
of every period at an arbitrary point of its operators, which stalls the team like a neighbour does, and the half
CPU left over goes to what runs beside the model (image decoding, the event loop, the gallery).

**Override**: ``ARCFACE_THREADS=N`` (or ``--threads N`` of every CLI command that computes, or ``threads=N`` of the
library entry points; always the CPU budget, never a per-worker count) replaces the usable CPUs by N: arcface then
uses at most N CPUs, split by the rules below. ``ARCFACE_THREADS=legacy`` turns the policy off (torch, onnxruntime
and OpenCV keep their own defaults; for comparisons such as ``bench/contention.py``). ``ARCFACE_CGROUP_ROOT`` points
at another cgroup mount (tests use a fake one).

**Per workload** (N usable CPUs; the :class:`ThreadPlan` fields in brackets):

===========  =======================================================================================================
workload     decision
===========  =======================================================================================================
detect       detection of many photos (``arcface align``, the evaluation's detection): N worker ``processes`` of
             1 intra-op thread (fewer for a short job: one per ``MIN_ITEMS_PER_PROCESS`` images, since a process
             costs a torch import and a detector; one process means this one)
embed        the backbone over batches of aligned crops: N ``item_threads`` running whole passes side by side, each
             on 1 intra-op thread; onnxruntime N threads (one session runs one pass at a time)
pipeline     detect + embed in one process (``FaceRecognizer``): 1 intra-op thread (the detector's small
             operators), N ``item_threads`` (photos side by side, and the Embedder's passes), onnxruntime N threads;
             a photo alone in the process while no other process runs gets an OpenMP team of min(N, 4)
             (:class:`LoneWork`)
service      W request ``item_threads`` x T intra-op threads <= N: by default W = N, T = 1; ``workers=W`` given:
             T = max(1, N // W). Each request runs within :meth:`ThreadPlan.per_item` (a budget of T CPUs); a
             request alone while no other process runs gets a team of min(N, 4) (:class:`LoneWork`)
train        intra-op threads = max(1, N // P - L) per process, P training ``processes`` on this machine
             (``LOCAL_WORLD_SIZE`` of torchrun), L DataLoader workers (``data.num_workers``; each runs 1 thread)
===========  =======================================================================================================

Torch's inter-op pool is set to 1 thread (arcface runs no inter-op parallel work). Explicit ``workers`` are respected
(a user may want more); the intra-op threads then shrink to ``max(1, N // workers)``.

**OpenMP wait policy**: left at its default. ``OMP_WAIT_POLICY=PASSIVE`` and smaller ``GOMP_SPINCOUNT`` values cost
more on a quiet machine than they saved beside busy neighbours; the thread counts above are the remedy.
(``KMP_BLOCKTIME`` is Intel OpenMP's and does nothing to torch's GNU OpenMP.) Spawned workers get
``OMP_NUM_THREADS`` before torch loads (:func:`worker_environment`). onnxruntime sessions run without spinning
(:func:`arcface.inference.runners.open_session`), so they keep N threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from arcface.runtime.memory import retain_freed_memory

__all__ = [
    "CGROUP_ENV",
    "ENV",
    "LEGACY",
    "MIN_ITEMS_PER_PROCESS",
    "WORKLOADS",
    "CpuBudget",
    "LoneWork",
    "ThreadPlan",
    "ThreadsError",
    "apply",
    "cgroup_cpu_limit",
    "cpu_budget",
    "decide",
    "entry_plan",
    "openmp_team",
    "others_running",
    "parse_threads",
    "positive",
    "quota_cpus",
    "set_threads",
    "worker_environment",
]

log = logging.getLogger(__name__)

#: The override: a positive integer (CPUs arcface may use), ``auto`` (the policy; same as unset) or ``legacy``.
ENV = "ARCFACE_THREADS"
#: Where the cgroup file systems are mounted (default ``/sys/fs/cgroup``); tests point it at a fake tree.
CGROUP_ENV = "ARCFACE_CGROUP_ROOT"
#: ``ARCFACE_THREADS=legacy``: leave every library's thread settings at its own default.
LEGACY = "legacy"
#: The kinds of work the policy knows (see the module docstring).
WORKLOADS = ("detect", "embed", "pipeline", "service", "train")
#: Workloads that run the embedding model in this process: :func:`apply` also sets the process-wide numeric
#: settings that model needs (flush denormals, keep freed activation buffers).
INFERENCE_WORKLOADS = ("embed", "pipeline", "service")
#: A worker process costs a torch import and a detector (seconds): worth it from this many images each.
MIN_ITEMS_PER_PROCESS = 200


class ThreadsError(ValueError):
    """A thread setting that cannot be used (``ARCFACE_THREADS=abc``, ``--threads 0``); the message is one line."""


# ------------------------------------------------------------------------------------------------------------------
# How many CPUs


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use and where that number comes from.

    Attributes:
        cpus: usable CPUs (at least 1): the override, else min(affinity, floor(quota)).
        affinity: CPUs in the affinity mask.
        quota: the cgroup CPU limit in CPUs (1.5 for ``150000 100000``), None without one.
        source: how ``cpus`` was decided, for messages ("affinity 2", "cgroup quota 1.5 CPUs", "ARCFACE_THREADS=3").
        legacy: ``ARCFACE_THREADS=legacy``: the policy is off.
    """

    cpus: int
    affinity: int
    quota: float | None
    source: str
    legacy: bool = False


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is no such call), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def quota_cpus(quota: float) -> int:
    """Threads for a CPU quota of ``quota`` CPUs: rounded down, at least 1 (see the module docstring for why)."""
    return max(1, math.floor(quota + 1e-9))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cpu_max(d: Path) -> float | None:
    """cgroup v2 ``cpu.max`` (``"$QUOTA $PERIOD"`` or ``"max $PERIOD"``) in CPUs, None when absent or unlimited."""
    text = _read(d / "cpu.max")
    if not text:
        return None
    parts = text.split()
    try:
        if parts[0] == "max":
            return None
        period = int(parts[1]) if len(parts) > 1 else 100_000
        quota = int(parts[0])
    except (ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _cfs(d: Path) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in CPUs, None when absent or -1 (unlimited)."""
    quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "100000")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup paths from ``/proc/self/cgroup``: ``{"v2": path, "cpu": path}`` (those present)."""
    out: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out["v2"] = path
        elif "cpu" in controllers.split(","):
            out["cpu"] = path
    return out


def _dirs(base: Path, rel: str | None) -> list[Path]:
    """The cgroup folder ``base/rel`` and its ancestors up to ``base`` (``base`` alone when ``rel`` is not there:
    a container whose cgroup namespace shows its own cgroup at the root)."""
    if not base.is_dir():
        return []
    start = base / (rel or "/").lstrip("/")
    if not start.is_dir():
        return [base]
    out = [start]
    while out[-1] != base and base in out[-1].parents:
        out.append(out[-1].parent)
    return out


def cgroup_cpu_limit(
    root: str | os.PathLike | None = None, proc_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (the smallest over its ancestors and both cgroup versions).

    Args:
        root: where cgroups are mounted (default ``$ARCFACE_CGROUP_ROOT``, else ``/sys/fs/cgroup``): v2 files
            (``cpu.max``) in it, v1 files (``cpu.cfs_quota_us``, ``cpu.cfs_period_us``) under ``cpu/`` or
            ``cpu,cpuacct/``.
        proc_cgroup: the file naming this process's cgroups.

    Returns:
        e.g. 1.5 for ``cpu.max`` = ``150000 100000``; None without a limit (``max``, ``-1``, no files).
    """
    base = Path(root or os.environ.get(CGROUP_ENV) or "/sys/fs/cgroup")
    own = _own_cgroups(Path(proc_cgroup))
    limits = [q for d in _dirs(base, own.get("v2")) if (q := _cpu_max(d)) is not None]
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        limits += [q for d in _dirs(base / name, own.get("cpu")) if (q := _cfs(d)) is not None]
    return min(limits) if limits else None


def parse_threads(value: object, what: str = ENV) -> int | str | None:
    """An override as the policy takes it: a positive int, :data:`LEGACY`, or None (``auto``, empty: the policy).

    Raises:
        ThreadsError: anything else; the message names ``what`` and the accepted values.
    """
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ThreadsError(f"{what} must be a positive integer, 'auto' or '{LEGACY}', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("", "auto"):
            return None
        if text == LEGACY:
            return LEGACY
        try:
            n = int(text)
        except ValueError:
            raise ThreadsError(f"{what} must be a positive integer, 'auto' or '{LEGACY}', got {value!r}") from None
    if n < 1:
        raise ThreadsError(f"{what} must be a positive integer, 'auto' or '{LEGACY}', got {value!r}")
    return n


def cpu_budget(
    threads: int | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    affinity: int | None = None,
    quota: float | None | str = "read",
    cgroup_root: str | os.PathLike | None = None,
    proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
) -> CpuBudget:
    """The CPUs arcface may use here: ``threads`` if given, else ``ARCFACE_THREADS``, else affinity and quota.

    Args:
        threads: an explicit override (``--threads``, ``threads=``): a positive int, "auto" or "legacy".
        env: the environment (default ``os.environ``).
        affinity: CPUs of the affinity mask (default: read).
        quota: the cgroup limit in CPUs, None for none (default "read": from the cgroup files).
        cgroup_root: the cgroup mount (default ``$ARCFACE_CGROUP_ROOT`` else ``/sys/fs/cgroup``).
        proc_cgroup: the file naming this process's cgroups.

    Raises:
        ThreadsError: an override that is not a positive integer, "auto" or "legacy".
    """
    env = os.environ if env is None else env
    aff = affinity_cpus() if affinity is None else max(1, int(affinity))
    if quota == "read":
        quota = cgroup_cpu_limit(cgroup_root or env.get(CGROUP_ENV) or None, proc_cgroup)
    q = None if quota is None else float(quota)  # type: ignore[arg-type]
    override = parse_threads(threads, "--threads") if threads is not None else None
    source = f"threads={threads}"
    if override is None:
        override = parse_threads(env.get(ENV), ENV)
        source = f"{ENV}={env.get(ENV)}"
    if override == LEGACY:
        return CpuBudget(aff, aff, q, source, legacy=True)
    if isinstance(override, int):
        return CpuBudget(override, aff, q, source)
    if q is not None and quota_cpus(q) < aff:
        return CpuBudget(quota_cpus(q), aff, q, f"cgroup CPU quota {q:g}")
    return CpuBudget(aff, aff, q, f"affinity {aff}")


# ------------------------------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class ThreadPlan:
    """What one entry point's work runs with; every field has one meaning for every workload.

    Attributes:
        workload: one of :data:`WORKLOADS`.
        cpus: the CPU budget the plan divides (the usable CPUs, or the override).
        processes: processes the budget is shared by: detection worker processes (detect), training processes on
            this machine (train); 1 otherwise (this process alone).
        item_threads: threads of one process that each run one item at a time side by side: photos (pipeline),
            the Embedder's passes (embed, pipeline), requests (service); 1 for detect and train.
        intra_op: torch's and OpenCV's intra-op threads; None: leave them (legacy).
        onnx_threads: onnxruntime intra-op threads of each session; None: onnxruntime's default (legacy).
        inter_op: torch's inter-op threads; None: leave them (legacy).
        source: where ``cpus`` comes from.
    """

    workload: str
    cpus: int
    processes: int
    item_threads: int
    intra_op: int | None
    onnx_threads: int | None
    inter_op: int | None
    source: str

    @property
    def legacy(self) -> bool:
        """The policy is off (``ARCFACE_THREADS=legacy``): no thread count is set."""
        return self.intra_op is None

    def per_item(self) -> ThreadPlan:
        """The plan one of :attr:`item_threads` runs within: a "pipeline" plan whose budget is :attr:`intra_op` CPUs,
        spent as one intra-op team (its passes one after another). The service gives each request's recognizer this.
        """
        if self.legacy:
            return dataclasses.replace(self, workload="pipeline", processes=1, item_threads=1)
        t = self.intra_op or 1
        return ThreadPlan("pipeline", t, 1, 1, t, t, self.inter_op, f"{self.workload} plan, per item")

    def describe(self) -> str:
        """One line for logs: the workload, the budget and its division."""
        if self.legacy:
            return f"{self.workload}: thread policy off ({self.source}): library defaults"
        return (f"{self.workload}: {self.cpus} CPUs ({self.source}): {self.processes} process(es) x "
                f"{self.item_threads} item thread(s) x {self.intra_op} intra-op, onnxruntime {self.onnx_threads}")


def positive(value: int | None, what: str) -> int | None:
    """``value`` unchanged (None passes); anything but a positive int raises :class:`ThreadsError` naming ``what``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ThreadsError(f"{what} must be a positive integer, got {value!r}")
    return value


def decide(
    workload: str,
    *,
    threads: int | str | None = None,
    workers: int | None = None,
    items: int | None = None,
    loader_workers: int = 0,
    env: Mapping[str, str] | None = None,
    budget: CpuBudget | None = None,
) -> ThreadPlan:
    """The thread plan of one kind of work (the rules are in the module docstring). Pure: it sets nothing.

    Args:
        workload: "detect", "embed", "pipeline", "service" or "train".
        threads: the CPU budget (``--threads``), else ``ARCFACE_THREADS``, else the usable CPUs.
        workers: the parallel units asked for explicitly (``--workers``, ``settings.workers``): detection
            processes (detect), item threads (embed, pipeline, service); None lets the policy choose.
        items: the number of images of a detection job (fewer processes for short jobs).
        loader_workers: DataLoader worker processes beside a training process.
        env: the environment (default ``os.environ``; ``LOCAL_WORLD_SIZE`` counts torchrun's processes).
        budget: the usable CPUs, already decided (default :func:`cpu_budget`).

    Raises:
        ThreadsError: an unknown workload, a bad override or a non-positive ``workers``.
    """
    if workload not in WORKLOADS:
        raise ThreadsError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    env = os.environ if env is None else env
    workers = positive(workers, "workers")
    b = budget or cpu_budget(threads, env=env)
    n = b.cpus
    if b.legacy:  # the parallelism arcface had without the policy: the service's pool of 2, else 1
        if workload == "detect":
            return ThreadPlan(workload, n, workers or 1, 1, None, None, None, b.source)
        if workload == "train":
            return ThreadPlan(workload, n, _local_processes(env), 1, None, None, None, b.source)
        default = 2 if workload == "service" else 1
        return ThreadPlan(workload, n, 1, workers or default, None, None, None, b.source)
    if workload in ("embed", "pipeline"):
        return ThreadPlan(workload, n, 1, workers or n, 1, n, 1, b.source)
    if workload == "detect":
        default = n if items is None else min(n, max(1, items // MIN_ITEMS_PER_PROCESS))
        return ThreadPlan(workload, n, workers or default, 1, 1, 1, 1, b.source)
    if workload == "service":
        w = workers or n
        t = max(1, n // w)
        return ThreadPlan(workload, n, 1, w, t, t, 1, b.source)
    # train
    local = _local_processes(env)
    t = max(1, max(1, n // local) - max(0, int(loader_workers)))
    return ThreadPlan(workload, n, local, 1, t, t, 1, b.source)


def _local_processes(env: Mapping[str, str]) -> int:
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


# ------------------------------------------------------------------------------------------------------------------
# Applying it (entry points only)


_interop_set: dict[str, bool] = {}


def set_threads(threads: int, interop: int | None = 1) -> None:
    """Set torch's intra-op threads and OpenCV's threads to ``threads`` in this process, and torch's inter-op threads
    to ``interop`` (once per process, where torch still allows it). For a process's start (a spawned worker, an
    actor); elsewhere :func:`apply` a plan."""
    import cv2  # heavy: imported on use, so that this module (and a worker's environment) comes before torch
    import torch  # heavy: as above

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if interop is not None and "done" not in _interop_set:
        _interop_set["done"] = True
        try:  # possible once per process, before any inter-op work
            if torch.get_num_interop_threads() != interop:
                torch.set_num_interop_threads(interop)
        except RuntimeError as e:
            log.debug("torch inter-op threads stay at %d (%s)", torch.get_num_interop_threads(), e)


def apply(plan: ThreadPlan) -> ThreadPlan:
    """Set this process's settings for ``plan``, once, at the entry point that decided it. Returns ``plan``.

    * torch's intra-op threads (and inter-op, once) and OpenCV's threads: the plan's (nothing for a legacy plan);
      threads started later (the Embedder's passes, the service's requests) take torch's count when they first run.
    * for the workloads that run the embedding model here (:data:`INFERENCE_WORKLOADS`), also with the policy
      off: denormal floats flushed to zero in this thread (threads started later inherit it; denormal activations
      cost many times a normal operation on x86 and their value is about 0), and glibc kept from returning freed
      activation buffers to the kernel (:func:`arcface.runtime.memory.retain_freed_memory`).
    """
    if plan.workload in INFERENCE_WORKLOADS:
        import torch  # heavy: as above

        torch.set_flush_denormal(True)
        retain_freed_memory()
    if plan.legacy:
        return plan
    assert plan.intra_op is not None
    set_threads(plan.intra_op, plan.inter_op)
    log.debug("thread plan %s", plan.describe())
    return plan


def entry_plan(workload: str, threads: int | str | None = None, plan: ThreadPlan | None = None) -> ThreadPlan:
    """The plan of a Python entry object (``load_model``, ``Embedder.from_module``, ``FaceRecognizer``): ``plan`` as
    an entry point above handed it down (nothing is applied then), or, this being the entry point, the plan of
    ``workload`` for the CPU budget ``threads``, decided and applied here.

    Raises:
        ThreadsError: both ``threads`` and ``plan``, a bad ``threads`` or ``ARCFACE_THREADS``.
    """
    if plan is not None:
        if threads is not None:
            raise ThreadsError("give threads (a CPU budget) or plan (a decided thread plan), not both")
        return plan
    return apply(decide(workload, threads=threads))


def worker_environment(threads: int | None) -> dict[str, str]:
    """The variables a spawned worker needs before it imports torch: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``
    set to ``threads`` (nothing for None), so its OpenMP pool starts at the planned size."""
    if threads is None:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


# ------------------------------------------------------------------------------------------------------------------
# A lone photo on an idle machine


def others_running(proc: str | os.PathLike = "/proc") -> int | None:
    """Threads of other processes runnable right now: ``procs_running`` of ``/proc/stat`` minus this process's threads
    in state R (so its own OpenMP workers, still spinning after a parallel region, do not count). None without /proc.
    """
    root = Path(proc)
    text = _read(root / "stat")
    match = re.search(r"^procs_running\s+(\d+)", text or "", re.MULTILINE)
    if match is None:
        return None
    ours = 0
    try:
        tasks = list((root / "self" / "task").iterdir())
    except OSError:
        tasks = []
    for task in tasks:
        stat = _read(task / "stat") or ""
        ours += stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R"  # the state follows the command's ")"
    return max(0, int(match.group(1)) - ours)


@functools.lru_cache(maxsize=1)
def _libgomp() -> ctypes.CDLL | None:
    """The GNU OpenMP runtime torch's operators run on, else None.

    Other libraries bring their own copy (faiss-cpu's wheel maps a libgomp before torch's), so each mapped libgomp is
    tried: the one whose per-thread setting ``torch.get_num_threads()`` then reports is torch's (set and restored at
    once, in the calling thread).
    """
    import torch  # heavy: imported on use (its libgomp must be loaded to be found)

    if not hasattr(os, "RTLD_NOLOAD"):
        return None
    paths = dict.fromkeys(re.findall(r"(/\S*/libgomp[^/\s]*\.so[.\d]*)$", _read(Path("/proc/self/maps")) or "",
                                     re.MULTILINE))  # fmt: skip
    current = torch.get_num_threads()
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            lib.omp_get_max_threads.restype = ctypes.c_int
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            continue
        before = int(lib.omp_get_max_threads())
        lib.omp_set_num_threads(current + 1)
        drives_torch = torch.get_num_threads() == current + 1
        lib.omp_set_num_threads(before)
        if drives_torch:
            return lib
    return None


@contextlib.contextmanager
def openmp_team(threads: int) -> Iterator[int]:
    """Run the block with an OpenMP team of ``threads`` for torch's operators started in *this* thread (for
    :class:`LoneWork`).

    The team size is a per-thread OpenMP setting (``omp_set_num_threads`` of the calling thread, through ctypes on
    the runtime torch loaded): other threads, MKL and oneDNN's caches are untouched (``torch.set_num_threads`` would
    change process-wide settings and clear oneDNN's primitive cache). Restored on exit. Yields the team size that
    applies: 1 where torch does not run on GNU OpenMP (no change is made then).
    """
    import torch  # heavy: imported on use

    lib = _libgomp() if threads > 1 else None
    if lib is None:
        yield 1
        return
    torch.get_num_threads()  # torch's lazy per-thread setting happens now, not inside the block over ours
    before = int(lib.omp_get_max_threads())
    lib.omp_set_num_threads(int(threads))
    try:
        yield int(threads)
    finally:
        lib.omp_set_num_threads(before)


class LoneWork:
    """Gives one piece of work (a photo) every usable CPU (up to :attr:`MAX_TEAM`) as an OpenMP team when it runs
    alone in this process and no other process is running; otherwise it runs on the intra-op threads of its plan.

    The policy's one intra-op thread per photo is what keeps photos side by side, the service's requests and
    neighbouring processes from stalling a team; but a lone photo on an idle machine then leaves the other cores idle,
    and its detector runs slower than on a team (one photo at a time, ``FaceRecognizer.embed`` in a loop). So: alone
    here (no other :meth:`photo` or :meth:`batch` in flight) and nothing runnable elsewhere (:func:`others_running`
    is 0) -> a team of ``cpus`` for the calling thread only (:func:`openmp_team`, restored on exit); else nothing
    changes. The check costs a read of /proc/stat and of this process's task states (tens of microseconds).

    The team is at most :attr:`MAX_TEAM` threads: the detector's operators are small enough that a team of dozens
    would spend more on waking its threads than it saves.

    Args:
        cpus: the usable CPUs (the plan's).
        probe: how many other threads are runnable (default :func:`others_running`); tests give a fake.
    """

    #: The largest team a lone photo gets.
    MAX_TEAM = 4

    def __init__(self, cpus: int, probe=others_running) -> None:
        self.cpus = max(1, int(cpus))
        self.probe = probe
        self._lock = threading.Lock()
        self._in_flight = 0
        self._local = threading.local()

    def _enter(self, weight: int) -> bool:
        with self._lock:
            self._in_flight += weight
            return self._in_flight == weight

    def _leave(self, weight: int) -> None:
        with self._lock:
            self._in_flight -= weight

    @contextlib.contextmanager
    def photo(self) -> Iterator[int]:
        """One photo's work; yields its team size. Nested in the same thread: the outer one's setting stays."""
        if getattr(self._local, "depth", 0):
            self._local.depth += 1
            try:
                yield 0
            finally:
                self._local.depth -= 1
            return
        alone = self._enter(1)
        self._local.depth = 1
        try:
            team = min(self.cpus, self.MAX_TEAM) if alone and self.cpus > 1 and self.probe() == 0 else 1
            with openmp_team(team) as applied:
                yield applied
        finally:
            self._local.depth = 0
            self._leave(1)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Photos side by side: while it lasts no photo of this process counts as alone."""
        self._enter(2)
        try:
            yield
        finally:
            self._leave(2)
