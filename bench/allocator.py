"""CPU memory behaviour: the allocator setting on against off, and crops per forward pass, same machine, one run.

The allocator setting (``arcface.runtime.memory.retain_freed_memory``) on two workloads, each in fresh processes
(the setting is process-wide), alternating off / on ``--reps`` times:

* embed: the default model through ``Embedder``, ``--crops`` crops with flip-test fusion, one thread, on the
  auto path (the frozen bf16 graph, ``jit``) and on eager bf16 autocast (``torch``): ms per face (median of
  5 passes after a warm-up) and the process's peak RSS;
* train: mbf + ArcFace over 1,000 synthetic classes at batch 32 with the trainer's defaults, two threads:
  samples/s (median step after 2 warm-up steps).

Then crops per forward pass (``Embedder.pass_size``; ``CPU_PASS_SIZE``, 16, by default) against 32 and 64: the embed
workload with the setting on, both paths, the three sizes interleaved 4 times in one process, median ms per
face.

    python bench/allocator.py [--reps 2] [--crops 512] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save  # noqa: E402


def _embedder(backend: str):
    from arcface.inference.loader import load_model

    return load_model("default", precision="auto" if backend == "jit" else "bf16", backend=backend, flip=True)


def child_embed(crops: int, backend: str) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    torch.set_num_threads(1)
    x = np.random.default_rng(0).integers(0, 256, (crops, 112, 112, 3), dtype=np.uint8)
    emb = _embedder(backend)
    emb.embed(x[:64])
    times = []
    for _ in range(5):
        t = time.perf_counter()
        emb.embed(x)
        times.append((time.perf_counter() - t) / crops * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms_per_face": statistics.median(times), "peak_rss_mib": peak}


def child_train(steps: int) -> dict:
    import tempfile
    import time

    import torch

    from arcface.engine.config import config_from_dict
    from arcface.engine.trainer import Trainer

    torch.set_num_threads(2)
    cfg = config_from_dict({
        "seed": 0, "model": {"name": "mbf", "num_features": 512}, "head": {"kind": "arcface"},
        "data": {"kind": "synthetic", "params": {"num_samples": 32 * (steps + 1), "num_classes": 1000},
                 "batch_size": 32},
        "schedule": {"name": "constant"}, "train": {"max_steps": steps, "tensorboard": False},
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, d, progress=False)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            trainer.run_step()
            times.append(time.perf_counter() - t)
    return {"samples_per_s": 32 / statistics.median(times[2:])}


def child_micro(crops: int) -> dict:
    import time

    import numpy as np
    import torch

    torch.set_num_threads(1)
    x = np.random.default_rng(0).integers(0, 256, (crops, 112, 112, 3), dtype=np.uint8)
    out = {}
    for backend in ("jit", "torch"):
        emb = _embedder(backend)
        emb.embed(x[:64])
        times: dict[int, list[float]] = {16: [], 32: [], 64: []}
        for _ in range(4):
            for size, ts in times.items():
                emb.pass_size = size
                t = time.perf_counter()
                emb.embed(x)
                ts.append((time.perf_counter() - t) / crops * 1000)
        out[backend] = {str(size): statistics.median(ts) for size, ts in times.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--crops", type=int, default=512)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--child", choices=["embed_jit", "embed_torch", "train", "micro"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {"embed_jit": lambda: child_embed(args.crops, "jit"),
              "embed_torch": lambda: child_embed(args.crops, "torch"), "train": lambda: child_train(args.steps),
              "micro": lambda: child_micro(args.crops)}[args.child]  # fmt: skip
        r = fn()
        print(json.dumps(r))
        return
    runs: dict[str, dict[str, list[dict]]] = {w: {"off": [], "on": []} for w in ("embed_jit", "embed_torch", "train")}
    for work in runs:
        for _ in range(args.reps):
            for setting in ("off", "on"):
                env = {**os.environ, "ARCFACE_MALLOC_TUNING": "1" if setting == "on" else "0"}
                cmd = [sys.executable, __file__, "--child", work, "--crops", str(args.crops)]
                cmd += ["--steps", str(args.steps)]
                out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
                runs[work][setting].append(json.loads(out.strip().splitlines()[-1]))
    med = {w: {s: {k: statistics.median(r[k] for r in v) for k in v[0]} for s, v in d.items()} for w, d in runs.items()}
    out = subprocess.run([sys.executable, __file__, "--child", "micro", "--crops", str(args.crops)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout  # fmt: skip
    micro = json.loads(out.strip().splitlines()[-1])
    t = med["train"]
    rows = []
    for work, label in (("embed_jit", "frozen bf16 graph (auto)"), ("embed_torch", "eager bf16 autocast")):
        e = med[work]
        rows += [
            [f"embed default model, {label}, {args.crops} crops, flip, 1 thread: ms/face",
             f"{e['on']['ms_per_face']:.2f}", f"{e['off']['ms_per_face']:.2f}",
             f"{e['off']['ms_per_face'] / e['on']['ms_per_face']:.2f}x faster"],
            [f"embed, {label}: peak RSS MiB", f"{e['on']['peak_rss_mib']:.0f}", f"{e['off']['peak_rss_mib']:.0f}",
             f"{e['on']['peak_rss_mib'] - e['off']['peak_rss_mib']:+.0f} MiB"],
        ]  # fmt: skip
    ratio = t["on"]["samples_per_s"] / t["off"]["samples_per_s"]
    rows.append(["train mbf, batch 32, 2 threads: samples/s", f"{t['on']['samples_per_s']:.1f}",
                 f"{t['off']['samples_per_s']:.1f}", f"{ratio:.2f}x faster"])  # fmt: skip
    for backend, m in micro.items():
        rows += [[f"embed, {backend}, {size} crops per forward pass (setting on): ms/face", f"{m[size]:.2f}",
                  f"{m['16']:.2f} (16)", f"{m[size] / m['16']:.2f}x slower"] for size in ("32", "64")]  # fmt: skip
    table = print_table(f"CPU allocator setting on vs off (medians of {args.reps} fresh processes each), and crops "
                        "per forward pass", ["figure", "value", "baseline (setting off / 16 crops)", "ratio"],
                        rows)  # fmt: skip
    print("saved", save("allocator", {"args": vars(args), "medians": med, "runs": runs, "micro_batch": micro,
                                      "table": table}))  # fmt: skip


if __name__ == "__main__":
    main()
