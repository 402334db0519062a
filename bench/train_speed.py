"""Training samples/s on this CPU, and the loss curve: the default configuration against plain float32 eager.

For mbf and r50 at batch 32 (112x112, synthetic faces, ArcFace head over 1,000 classes, SGD lr 0.1), three
configurations run from the same initial weights on the same batches:

* ``fp32 eager`` (the baseline): plain PyTorch: ``train.precision: fp32``, ``train.channels_last: false``,
  and the C library's default allocator (``ARCFACE_MALLOC_TUNING=0``);
* ``fp32 eager + allocator setting``: the same with :func:`arcface.runtime.memory.retain_freed_memory`, which
  the trainer turns on for CPU runs (process-wide; it speeds up float32 too);
* ``bf16 autocast``: ``precision: auto`` (bf16 where the CPU has native bf16), NCHW;
* ``default``: ``precision: auto`` + ``channels_last: true`` (the trainer's defaults).

Every configuration runs in a fresh process of its own (the allocator setting is process-wide).

The baseline and the default run ``--curve-steps`` (50) steps each: samples/s is the median step after
``--warmup`` steps, and both loss curves are kept (JSON and ``train_loss_curves.png``) with their largest
relative gap. The middle configurations run ``--steps`` steps for their speed only.

Usage: python bench/train_speed.py [--models mbf,r50] [--curve-steps 50] [--steps 6] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import RESULTS, print_table, save
from arcface.engine.config import config_from_dict
from arcface.engine.trainer import Trainer

BASELINE = "fp32 eager (baseline)"
DEFAULT = "default (auto + channels_last)"
VARIANTS = {
    BASELINE: {"precision": "fp32", "channels_last": False},
    "fp32 eager + allocator setting": {"precision": "fp32", "channels_last": False},
    "bf16 autocast, NCHW": {"precision": "auto", "channels_last": False},
    DEFAULT: {},
}
PLAIN_ALLOCATOR = {BASELINE}  # run with ARCFACE_MALLOC_TUNING=0


def run_child(model: str, name: str, batch: int, steps: int, warmup: int) -> tuple[float, str, list[float]]:
    """:func:`run` of one configuration in a fresh process (the allocator setting is per process)."""
    env = {**os.environ, "ARCFACE_MALLOC_TUNING": "0" if name in PLAIN_ALLOCATOR else "1"}
    cmd = [sys.executable, __file__, "--child", name, "--models", model, "--batch", str(batch), "--steps", str(steps),
           "--warmup", str(warmup)]  # fmt: skip
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["sps"], r["precision"], r["losses"]


def run(model: str, variant: dict, batch: int, steps: int, warmup: int) -> tuple[float, str, list[float]]:
    """(samples/s, precision, per-step losses) of ``steps`` steps, the first ``warmup`` untimed."""
    cfg = config_from_dict({
        "seed": 0,
        "model": {"name": model, "num_features": 512},
        "head": {"kind": "arcface"},
        "data": {"kind": "synthetic", "params": {"num_samples": batch * (steps + 1), "num_classes": 1000},
                 "batch_size": batch},
        "schedule": {"name": "constant"},
        "train": {"max_steps": steps, "tensorboard": False, **variant},
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(cfg, d, progress=False)
        times, losses = [], []
        for i in range(steps):
            t0 = time.perf_counter()
            losses.append(t.run_step()["loss"])
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), t.precision, losses


def plot(curves: dict[str, dict[str, list[float]]]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (model, c) in zip(axes[0], curves.items(), strict=True):
        for name, losses in c.items():
            ax.plot(range(1, len(losses) + 1), losses, label=name, lw=1.3)
        ax.set_title(f"{model}: training loss, batch 32")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / "train_loss_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mbf,r50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--curve-steps", type=int, default=50)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--child", default=None, choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sps, precision, losses = run(args.models, VARIANTS[args.child], args.batch, args.steps, args.warmup)
        print(json.dumps({"sps": sps, "precision": precision, "losses": losses}))
        return
    rows, results, curves = [], [], {}
    for model in args.models.split(","):
        base = None
        curves[model] = {}
        for name in VARIANTS:
            n = args.curve_steps if name in (BASELINE, DEFAULT) else args.steps
            sps, precision, losses = run_child(model, name, args.batch, n, args.warmup)
            base = base or sps
            if n == args.curve_steps:
                curves[model][f"{name}, {precision}"] = losses
            rows.append([model, name, precision, round(sps, 1), f"{sps / base:.2f}x"])
            results.append({"model": model, "variant": name, "precision": precision, "samples_per_sec": sps,
                            "ratio_vs_fp32": sps / base, "steps": n, "losses": losses})  # fmt: skip
        a, b = (r["losses"] for r in results if r["model"] == model and r["steps"] == args.curve_steps)
        gap = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
        rows.append([model, f"loss curves over {args.curve_steps} steps", "", "",
                     f"max relative gap {100 * gap:.2f}%, final {a[-1]:.3f} vs {b[-1]:.3f}"])  # fmt: skip
        results.append({"model": model, "curve_max_relative_gap": gap, "final_loss_fp32": a[-1],
                        "final_loss_default": b[-1]})  # fmt: skip
    print_table(f"Training samples/s, batch {args.batch}, median step after {args.warmup} warm-up steps",
                ["model", "configuration", "precision", "samples/s", "x fp32 eager"], rows)  # fmt: skip
    save("train_speed", {"batch": args.batch, "curve_steps": args.curve_steps, "results": results,
                         "plot": plot(curves)})  # fmt: skip


if __name__ == "__main__":
    main()
