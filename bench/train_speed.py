"""Training samples/s on this CPU: the default configuration against plain float32 eager.

For mbf and r50 at batch 32 (112x112, synthetic faces, ArcFace head over 1,000 classes, SGD), the
default configuration (``train.precision: auto`` = bfloat16 autocast where the CPU has native bf16)
is timed against the baseline, plain float32 eager, in the same run.

Usage: python bench/train_speed.py [--models mbf,r50] [--steps N] [--warmup N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from _common import print_table, save
from arcface.engine.config import config_from_dict
from arcface.engine.trainer import Trainer

VARIANTS = {
    "fp32 eager (baseline)": {"precision": "fp32", "channels_last": False},
    "default (precision auto)": {"precision": "auto", "channels_last": False},
    "auto + channels_last": {"precision": "auto", "channels_last": True},
}


def samples_per_sec(model: str, variant: dict, batch: int, steps: int, warmup: int) -> tuple[float, str]:
    cfg = config_from_dict({
        "model": {"name": model, "num_features": 512},
        "head": {"kind": "arcface"},
        "data": {"kind": "synthetic", "params": {"num_samples": batch * (steps + warmup + 1), "num_classes": 1000},
                 "batch_size": batch},
        "train": {"max_steps": steps + warmup, "tensorboard": False, **variant},
    })
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(cfg, d, progress=False)
        for _ in range(warmup):
            t.run_step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            t.run_step()
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), t.precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mbf,r50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    rows, results = [], []
    for model in args.models.split(","):
        base = None
        for name, variant in VARIANTS.items():
            sps, precision = samples_per_sec(model, variant, args.batch, args.steps, args.warmup)
            base = base or sps
            rows.append([model, name, precision, round(sps, 1), round(sps / base, 2)])
            results.append({"model": model, "variant": name, "precision": precision, "samples_per_sec": sps,
                            "ratio_vs_fp32": sps / base})
    print_table(f"Training samples/s, batch {args.batch}, median of {args.steps} steps",
                ["model", "configuration", "precision", "samples/s", "x fp32"], rows)
    save("train_speed", {"batch": args.batch, "steps": args.steps, "results": results})


if __name__ == "__main__":
    main()
