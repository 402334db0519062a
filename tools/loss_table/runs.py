"""Step 2 and 4: the training runs, each ``arcface train`` in a child process (rows side by side with ``--jobs``),
reused when a finished run with the same arguments is there; the evaluation of each trained row; the fine-tuning
of the default model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from arcface.inference.zoo import resolve_model_path
from tools.loss_table.evaluate import view1_eval, view2_eval
from tools.loss_table.setup import LossRow, Setup, slug

log = logging.getLogger(__name__)

#: finished runs this invocation reused (so its wall time is not the whole run's)
REUSED: list[str] = []


def _cli_process(argv: list[str], output: Path, threads: int) -> None:
    """Run ``arcface ARGV`` in a child process with ``threads`` torch/OpenMP threads, its output to a file."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log.info("arcface %s", " ".join(argv))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as out:
        rc = subprocess.call([sys.executable, "-m", "arcface", *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        tail = output.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"`arcface {' '.join(argv)}` failed with exit status {rc}: {' / '.join(tail)}")


def read_log(run: Path) -> list[dict[str, Any]]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train(
    run: Path, overrides: list[str], setup: Setup, init_from: str | None = None, threads: int | None = None
) -> float:
    """``arcface train`` into ``run``; reused when a finished run with the same arguments is there."""
    record = {"config": str(setup.config), "overrides": overrides, "init_from": init_from}
    stamp = run / "experiment_run.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("args") == record and (run / "backbone.safetensors").is_file():
            log.info("reusing %s", run)
            REUSED.append(str(run))
            return float(old["seconds"])
        shutil.rmtree(run)  # finished with other arguments: its checkpoints must not be resumed
    elif run.exists() and not any(run.glob("ckpt-*.pt")):
        shutil.rmtree(run)
    argv = ["train", str(setup.config), "--out", str(run)]
    for o in overrides:
        argv += ["--set", o]
    if init_from:
        argv += ["--init-from", init_from]
    if any(run.glob("ckpt-*.pt")):
        argv.append("--resume")
    argv.append("--no-progress")  # rows may run side by side: their bars would interleave
    t0 = time.perf_counter()
    _cli_process(argv, run / "train.out", threads or setup.threads_per_job)
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"args": record, "seconds": seconds}))
    return seconds


def _row_overrides(row: LossRow, seed: int, steps: int, data: str, input_size: int) -> list[str]:
    warm = max(1, steps // 20)
    milestones = [int(steps * 0.6), int(steps * 0.85)]
    return [
        f"seed={seed}",
        f"head.kind={row.kind}",
        f"head.params={json.dumps(row.head_params())}",
        f"data.params.path_rec={data}",
        f"data.params.image_size={input_size}",
        f"train.max_steps={steps}",
        f"train.ckpt_every={steps}",
        f"schedule.warmup_steps={warm}",
        f"schedule.milestones={json.dumps(milestones)}",
    ]


def _run_dir(setup: Setup, row: LossRow, seed: int) -> Path:
    return setup.work / "runs" / f"{slug(row.name)}-seed{seed}"


def train_rows(jobs: list[tuple[LossRow, int]], setup: Setup, data: dict[str, Any], input_size: int) -> list[float]:
    """Train ``(row, seed)`` runs, ``setup.jobs`` at a time; returns each one's seconds."""
    def one(job: tuple[LossRow, int]) -> float:
        row, seed = job
        overrides = _row_overrides(row, seed, setup.steps, data["packs"][input_size], input_size)
        return _train(_run_dir(setup, row, seed), overrides, setup)

    with ThreadPoolExecutor(max_workers=max(1, setup.jobs)) as pool:
        return list(pool.map(one, jobs))


def run_row(
    row: LossRow, seed: int, setup: Setup, data: dict[str, Any], input_size: int, seconds: float
) -> dict[str, Any]:
    """Evaluate a trained row."""
    run = _run_dir(setup, row, seed)
    t0 = time.perf_counter()
    ev = view1_eval(run / "backbone.safetensors", setup.lfw, Path(data["aligned"]))
    steps = read_log(run)
    losses = [s["loss"] for s in steps if s.get("loss") is not None]
    result = {
        "loss": row.name,
        "head": row.kind,
        "params": row.head_params(),
        "seed": seed,
        "accuracy": ev["accuracy"],
        "auc": ev["auc"],
        "steps": setup.steps,
        "seconds": round(seconds, 1),
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "threshold": ev["threshold"],
        "train_accuracy": ev["train_accuracy"],
        "eer": ev["eer"],
        "final_loss": float(np.mean(losses[-5:])) if losses else None,
        "curve": [[s["step"], s["loss"]] for s in steps if s.get("loss") is not None],
        "run": str(run),
    }
    log.info("%-26s seed %d: View 1 test accuracy %.2f%%, AUC %.4f (%.0f s)", row.name, seed,
             100 * result["accuracy"], result["auc"], seconds)  # fmt: skip
    return result


def finetune(setup: Setup, data: dict[str, Any]) -> dict[str, Any]:
    default = str(resolve_model_path("default"))
    aligned = Path(data["aligned"])
    run = setup.work / "runs" / "finetune_default_arcface"
    steps = setup.finetune_steps
    overrides = [
        "model.name=mbf_tflite", "model.num_features=192", "model.options={}",
        "head.kind=arcface", 'head.params={"s": 64.0, "m": 0.5}', "head.init=class_means",
        f"data.params.path_rec={data['packs'][112]}", "data.params.image_size=112", "data.batch_size=32",
        "optim.lr=0.001", "optim.head_lr_mult=10.0", "train.clip_grad_norm=5.0",
        f"train.max_steps={steps}", f"train.ckpt_every={steps}",
        f"schedule.warmup_steps={max(1, steps // 10)}", f"schedule.milestones={json.dumps([int(steps * 0.8)])}",
    ]  # fmt: skip
    before2, before1 = view2_eval("default", setup.lfw, aligned), view1_eval("default", setup.lfw, aligned)
    seconds = _train(run, overrides, setup, init_from=default, threads=setup.threads or os.cpu_count() or 1)
    after = run / "backbone.safetensors"
    after2, after1 = view2_eval(after, setup.lfw, aligned), view1_eval(after, setup.lfw, aligned)
    curve = [[s["step"], s["loss"]] for s in read_log(run) if s.get("loss") is not None]
    return {
        "model": "default (bundled MobileFaceNet, 192-D)",
        "head": "arcface (s=64, m=0.5)",
        "steps": steps,
        "batch_size": 32,
        "lr": "backbone 0.001, head 0.01, gradient norm clipped at 5, warm-up then /10 at 80%; centres "
        "initialised to each person's mean embedding (head.init: class_means)",
        "seconds": round(seconds, 1),
        "view2_before": before2,
        "view2_after": after2,
        "view1_before": before1,
        "view1_after": after1,
        "curve": curve,
        "note": "View 2 pairs include training people (only View 1 test people are held out): its 'after' "
        "figure is optimistic; View 1 test (people disjoint from training) is the clean comparison.",
    }
