"""Batch embedding on Ray (``--engine ray``) against the single process, on this machine, in one run.

The same job (detect, align and embed the main face of N LFW photos with the default model, rows to Parquet shards
for Ray) three ways, one after another:

* the single process (the local engine, ``arcface embed``'s default) with one thread, like each actor: the baseline;
* Ray with 1 actor and with 2 actors (0.5 CPU each, 1 thread each) on a Ray instance this script starts on the
  machine (loopback only), each run from a fresh job folder;
* the single process again with torch's default threads (what ``arcface embed`` runs with: on a loaded machine
  its OpenMP threads wait on each other, so this row shows how much the load hurts more than anything Ray does).

Per run: wall seconds from the call to the last row, images/s over the wall, and the overheads that Ray adds: actor
start-up (asking for the actor to its first answer: a worker process, imports, model and detector load), the model
load inside it, and per task (shard) the round trip less the work inside the actor (scheduling, the Arrow table
through the object store, the driver's check and Parquet write). Expect no gain on 2 cores: the single process
already keeps both cores busy (torch threads plus the detector), and Ray adds its own processes (GCS, raylet) and
the start-up. ``cat /proc/loadavg`` is recorded before and after: other jobs on the cores move these figures.

    python bench/ray_batch.py [--limit 300] [--shard-size 25]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a one-machine Ray: the node's address is loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if "RAY_AUTH_MODE" not in os.environ:  # token authentication with a token of its own (no ~/.ray/auth_token written)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, save  # noqa: E402
from arcface.batch.engines import EngineOptions, JobReport, run_job  # noqa: E402
from arcface.batch.jobs import Item, JobSettings, cached_worker  # noqa: E402
from arcface.data.locations import LFW_HINT, find_lfw  # noqa: E402
from arcface.runtime.workers import usable_cpus  # noqa: E402


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _local(settings: JobSettings, items: list[Item], threads: int | None) -> dict:
    """The single process (the local engine in this process) with ``threads`` torch/OpenCV threads (None: the
    default, what ``arcface embed`` runs with)."""
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    if threads is not None:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    try:
        t0 = time.perf_counter()
        cached_worker(settings)  # the model and detector, once (the local engine reuses this worker)
        load = time.perf_counter() - t0
        rows = sum(1 for r in run_job(settings, items, progress_bar=False) if r.ok)
        wall = time.perf_counter() - t0
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
    return {"engine": "single process", "actors": 0, "threads": used, "default_threads": threads is None,
            "wall_s": wall, "embedded": rows, "img_per_s": len(items) / wall, "start_s": load, "model_load_s": load,
            "steady_img_per_s": len(items) / (wall - load)}  # fmt: skip


def _ray(settings: JobSettings, items: list[Item], actors: int, shard_size: int, folder: Path) -> dict:
    report = JobReport()
    options = EngineOptions("ray", job_dir=str(folder / f"ray{actors}"), actors=actors, actor_cpus=0.5,
                            shard_size=shard_size)  # fmt: skip
    t0 = time.perf_counter()
    rows = sum(1 for r in run_job(settings, items, options, plan_extra={"bench": "ray_batch"}, report=report,
                                  progress_bar=False) if r.ok)  # fmt: skip
    wall = time.perf_counter() - t0
    start = max(report.actor_start_s)  # the actors start together: the pool is up after the slowest
    overhead = [rt - c for rt, c in zip(report.task_round_trip_s, report.task_compute_s)]
    return {
        "engine": "ray", "actors": actors, "threads": 1, "wall_s": wall, "embedded": rows,
        "img_per_s": len(items) / wall, "start_s": start, "model_load_s": statistics.median(report.model_load_s),
        "steady_img_per_s": len(items) / (wall - start),
        "task_overhead_ms": 1000 * statistics.median(overhead),
        "task_compute_s": statistics.median(report.task_compute_s),
        "actor_img_per_s": shard_size / statistics.median(report.task_compute_s), "shards": report.shards_computed,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=300, help="LFW photos (the first N files, sorted)")
    ap.add_argument("--shard-size", type=int, default=25, help="photos per shard (the unit of work)")
    ap.add_argument("--skip-default-threads", action="store_true",
                    help="no run of the single process with torch's default threads")  # fmt: skip
    args = ap.parse_args()
    lfw = find_lfw()
    if lfw is None:
        raise SystemExit(LFW_HINT)
    import ray

    paths = sorted((lfw / "lfw-deepfunneled").glob("*/*.jpg"))[: args.limit]
    items = [Item(str(p)) for p in paths]
    settings = JobSettings("embed")
    load_before = _loadavg()
    results = [_local(settings, items, threads=1)]
    t0 = time.perf_counter()
    ray.init(num_cpus=usable_cpus(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory(prefix="ray_batch") as tmp:
            for actors in (1, 2):
                results.append(_ray(settings, items, actors, args.shard_size, Path(tmp)))
    finally:
        ray.shutdown()
    if not args.skip_default_threads:
        results.append(_local(settings, items, threads=None))
    load_after = _loadavg()

    base = results[0]
    rows = []
    for r in results:
        if r["engine"] == "ray":
            label = f"ray, {r['actors']} actor(s) x 0.5 CPU"
        else:
            label = "single process" + (" (default threads)" if r["default_threads"] else " (baseline)")
        rows.append([label, r["threads"], f"{r['wall_s']:.1f}", f"{r['img_per_s']:.1f}",
                     f"{r['img_per_s'] / base['img_per_s']:.2f}x", f"{r['steady_img_per_s']:.1f}",
                     f"{r['start_s']:.1f}", f"{r['model_load_s']:.1f}",
                     f"{r['task_overhead_ms']:.0f}" if "task_overhead_ms" in r else "-",
                     f"{r['actor_img_per_s']:.1f}" if "actor_img_per_s" in r else "-"])  # fmt: skip
    print_table(
        f"Batch embedding, {len(items)} LFW photos (detect + align + embed, default model): Ray against the single "
        f"process, shard {args.shard_size}; load average {load_before} before, {load_after} after",
        ["run", "threads", "wall s", "img/s", "vs single", "img/s after start-up", "start-up s", "model load s",
         "per-task overhead ms", "img/s per actor (in task)"],
        rows,
    )  # fmt: skip
    print(f"Ray instance start (ray.init on this machine): {ray_start:.1f} s, not in the figures above.")
    save("ray_batch", {"images": len(items), "shard_size": args.shard_size, "ray_init_s": ray_start,
                       "loadavg_before": load_before, "loadavg_after": load_after, "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
