"""The ArcFace paper's loss comparison (Table 2) at small scale, on LFW, from one command.

``arcface experiment loss-table`` (``make paper-table``) runs, from a clean work folder:

1. **Data.** Every LFW photo is detected and aligned by ``arcface align`` (MTCNN, the 112x112 ArcFace
   template; resumable, so a second run reuses it). The training identities are all LFW people who do not
   appear in View 1's test pairs (``pairsDevTest.txt``); their crops are packed into RecordIO by our writer
   (:func:`arcface.data.pack.pack_list`) at the model's input size and at 112 for the fine-tuning row.
2. **Rows.** ``arcface train`` with one recipe (``configs/lfw_small_r18.yaml``) per loss: the same
   backbone, schedule, seed and number of steps; only ``head.kind`` / ``head.params`` change. Rows:
   softmax, normface, sphereface, cosface (0.35), arcface (0.5), combined (1, 0.3, 0.2), and arcface +
   intra / inter / triplet. The best rows are then repeated with more seeds for the spread.
3. **Evaluation.** LFW View 1: the threshold that maximises accuracy on ``pairsDevTrain.txt`` (1,100
   pairs) is applied to ``pairsDevTest.txt`` (500 + 500 pairs, people disjoint from training); flip-test
   fusion; ROC AUC on the test pairs.
4. **Fine-tuning.** The bundled default model is fine-tuned on the same people with ArcFace
   (``arcface train --init-from``) and evaluated on LFW View 2 (10 official folds) and View 1 before and
   after. View 2 shares people with the training set (only View 1's test people are held out), so its
   "after" figure is optimistic; View 1 test is the clean comparison.
5. **Output.** ``bench/results/loss_comparison.json`` (``results`` rows and ``setup``), the PNGs of the
   loss curves and of the accuracy per loss, a markdown table, and the README section between the
   ``<!-- loss-table:begin -->`` / ``<!-- loss-table:end -->`` markers.

Nothing here trains or evaluates by other means than the project's CLI (``arcface align``, ``arcface
train``) and library (pack writer, model loader, verification protocol).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ROWS", "LossRow", "Setup", "run_loss_table", "held_out_people", "view1_eval"]

REPO = Path(__file__).resolve().parents[3]
BASE_CONFIG = REPO / "configs" / "lfw_small_r18.yaml"
README_BEGIN = "<!-- loss-table:begin -->"
README_END = "<!-- loss-table:end -->"
HEADLINE = ("softmax", "arcface (0.5)")
_REUSED: list[str] = []  # finished runs this invocation reused (so its wall time is not the whole run's)


@dataclass(frozen=True)
class LossRow:
    """One row of the table: a name and the head it trains with."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def head_params(self) -> dict[str, Any]:
        return dict(self.params)


#: The rows, in the paper's order (Table 2): margins first, then the auxiliary variants.
ROWS: tuple[LossRow, ...] = (
    LossRow("softmax", "softmax"),
    LossRow("normface", "normface", {"s": 64.0}),
    LossRow("sphereface", "sphereface", {"m1": 4}),
    LossRow("cosface (0.35)", "cosface", {"s": 64.0, "m": 0.35}),
    LossRow("arcface (0.5)", "arcface", {"s": 64.0, "m": 0.5}),
    LossRow("combined (1, 0.3, 0.2)", "combined", {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}),
    LossRow("arcface + intra", "arcface", {"s": 64.0, "m": 0.5, "aux": {"intra": 1.0}}),
    LossRow("arcface + inter", "arcface", {"s": 64.0, "m": 0.5, "aux": {"inter": 1.0}}),
    LossRow("arcface + triplet (0.35)", "arcface", {"s": 64.0, "m": 0.5, "aux": {"triplet": {"margin": 0.35}}}),
)


@dataclass
class Setup:
    """Everything that defines a run of the experiment (recorded in the JSON)."""

    lfw: Path
    work: Path
    out: Path
    steps: int = 800
    seeds: int = 2
    seed_rows: int = 2
    rows: tuple[str, ...] = ()
    finetune_steps: int = 200
    finetune: bool = True
    config: Path = BASE_CONFIG
    readme: Path | None = None
    workers: int | None = None
    threads: int = 0
    jobs: int = 1
    progress: bool = True

    @property
    def threads_per_job(self) -> int:
        """Torch threads of each training process: ``threads``, else the cores shared by the jobs."""
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, self.jobs))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def held_out_people(lfw: Path) -> set[str]:
    """The people named in View 1's test pairs (``pairsDevTest.txt``)."""
    people: set[str] = set()
    for line in (lfw / "pairsDevTest.txt").read_text(encoding="utf-8").splitlines()[1:]:
        f = line.split()
        if len(f) == 3:
            people.add(f[0])
        elif len(f) == 4:
            people.update((f[0], f[2]))
    return people


def _images_dir(lfw: Path) -> Path:
    for name in ("lfw-deepfunneled", "lfw", "lfw_funneled"):
        if (lfw / name).is_dir():
            return lfw / name
    raise FileNotFoundError(f"{lfw}: no lfw-deepfunneled/ (or lfw/) image folder")


def _cli(argv: list[str]) -> None:
    """Run one of our own subcommands in this process; a non-zero status is an error."""
    from arcface.cli import main

    log.info("arcface %s", " ".join(argv))
    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"`arcface {' '.join(argv)}` failed with exit status {rc}")


def _cli_process(argv: list[str], output: Path, threads: int) -> None:
    """Run ``arcface ARGV`` in a child process with ``threads`` torch/OpenMP threads, its output to a file."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log.info("arcface %s", " ".join(argv))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as out:
        rc = subprocess.call([sys.executable, "-m", "arcface", *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        tail = output.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"`arcface {' '.join(argv)}` failed with exit status {rc}: {' / '.join(tail)}")


# -- 1. data --------------------------------------------------------------------------------------------
def prepare_data(setup: Setup, input_size: int) -> dict[str, Any]:
    """Align all of LFW (cached) and pack the training people at ``input_size`` and at 112."""
    from arcface.data.pack import pack_list

    images = _images_dir(setup.lfw)
    aligned = setup.work / "aligned"
    t0 = time.perf_counter()
    argv = ["align", str(images), str(aligned)]
    if setup.workers:
        argv += ["--workers", str(setup.workers)]
    if not setup.progress:
        argv.append("--no-progress")
    _cli(argv)
    t_align = time.perf_counter() - t0
    held_out = held_out_people(setup.lfw)
    people = sorted(p.name for p in aligned.iterdir() if p.is_dir() and p.name not in held_out)
    lines, n_classes = [], 0
    for person in people:
        crops = sorted((aligned / person).glob("*.png"))
        if not crops:
            continue
        lines += [f"{c.relative_to(aligned)}\t{n_classes}" for c in crops]
        n_classes += 1
    list_file = setup.work / "train.lst"
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    packs = {}
    for size in sorted({input_size, 112}):
        prefix = setup.work / f"lfw_train_{size}"
        meta = prefix.with_suffix(".json")
        want = {"images": len(lines), "classes": n_classes, "size": size}
        if not (meta.is_file() and json.loads(meta.read_text()) == want and prefix.with_suffix(".rec").is_file()):
            n, c = pack_list(list_file, prefix, root=aligned, image_size=size, num_classes=n_classes)
            if (n, c) != (len(lines), n_classes):
                raise RuntimeError(f"packing {prefix}: wrote {n} images of {c} classes, expected {want}")
            meta.write_text(json.dumps(want))
        packs[size] = str(prefix.with_suffix(".rec"))
    report = json.loads((aligned / "align_report.json").read_text())
    return {
        "aligned": str(aligned),
        "train_people": n_classes,
        "train_images": len(lines),
        "held_out_people": len(held_out),
        "packs": packs,
        "align_seconds": t_align,
        "align_report": {k: v for k, v in report.items() if not isinstance(v, (list, dict))},
    }


# -- 3. evaluation ----------------------------------------------------------------------------------------
def _crops(paths: Sequence[Path], aligned: Path, images: Path, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Aligned crops of ``paths`` (files under ``aligned``); a photo ``arcface align`` found no face in is
    centre-cropped from the original instead (counted)."""
    from arcface.eval.cache import centre_crop, decode_aligned
    from arcface.io.images import load_image

    out = np.zeros((len(paths), size[0], size[1], 3), np.uint8)
    have = [i for i, p in enumerate(paths) if Path(p).is_file()]
    if have:
        out[have] = decode_aligned([paths[i] for i in have], size)
    missing = [i for i in range(len(paths)) if i not in set(have)]
    for i in missing:
        rel = Path(paths[i]).relative_to(aligned).with_suffix(".jpg")
        out[i] = centre_crop(load_image(images / rel), size[0])
    return out, len(missing)


def _pair_scores(pairs_file: Path, backend: Any, aligned: Path, images: Path) -> tuple[np.ndarray, Any, int]:
    from arcface.eval.datasets import read_lfw_pairs
    from arcface.eval.verification import pair_scores

    ps = read_lfw_pairs(pairs_file, aligned, suffixes=(".png",), n_folds=2)  # folds unused here
    crops, fallbacks = _crops(ps.images, aligned, images, tuple(backend.contract.input_size))
    emb = backend.embed_crops(crops)
    return pair_scores(emb, ps.pairs), ps, fallbacks


def view1_eval(model: str | os.PathLike, lfw: Path, aligned: Path) -> dict[str, Any]:
    """LFW View 1 with flip-test fusion: threshold on pairsDevTrain, accuracy and AUC on pairsDevTest."""
    from arcface.eval.verification import best_threshold, roc_metrics
    from arcface.inference.zoo import load_backend

    images = _images_dir(lfw)
    backend = load_backend(model, flip=True)
    s_train, train, f1 = _pair_scores(lfw / "pairsDevTrain.txt", backend, aligned, images)
    s_test, test, f2 = _pair_scores(lfw / "pairsDevTest.txt", backend, aligned, images)
    thr = best_threshold(s_train, train.labels)
    roc = roc_metrics(s_test, test.labels)
    return {
        "accuracy": float(np.mean((s_test > thr) == test.labels)),
        "train_accuracy": float(np.mean((s_train > thr) == train.labels)),
        "threshold": float(thr),
        "auc": float(roc["auc"]),
        "eer": float(roc["eer"]),
        "test_pairs": len(test),
        "fallbacks": f1 + f2,
    }


def view2_eval(model: str | os.PathLike, lfw: Path, aligned: Path) -> dict[str, Any]:
    """LFW View 2 (10 official folds) with flip-test fusion on the aligned crops."""
    from arcface.eval.verification import verification_report
    from arcface.inference.zoo import load_backend

    backend = load_backend(model, flip=True)
    scores, ps, fallbacks = _pair_scores(lfw / "pairs.txt", backend, aligned, _images_dir(lfw))
    r = verification_report(scores, ps.labels, ps.folds)
    return {"accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"], "auc": r["auc"], "fallbacks": fallbacks}


# -- 2. training --------------------------------------------------------------------------------------------
def _read_log(run: Path) -> list[dict[str, Any]]:
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
            _REUSED.append(str(run))
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
    return setup.work / "runs" / f"{_slug(row.name)}-seed{seed}"


def _train_rows(jobs: list[tuple[LossRow, int]], setup: Setup, data: dict[str, Any], input_size: int) -> list[float]:
    """Train ``(row, seed)`` runs, ``setup.jobs`` at a time; returns each one's seconds."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job: tuple[LossRow, int]) -> float:
        row, seed = job
        overrides = _row_overrides(row, seed, setup.steps, data["packs"][input_size], input_size)
        return _train(_run_dir(setup, row, seed), overrides, setup)

    with ThreadPoolExecutor(max_workers=max(1, setup.jobs)) as pool:
        return list(pool.map(one, jobs))


def _run_row(
    row: LossRow, seed: int, setup: Setup, data: dict[str, Any], input_size: int, seconds: float
) -> dict[str, Any]:
    """Evaluate a trained row."""
    run = _run_dir(setup, row, seed)
    t0 = time.perf_counter()
    ev = view1_eval(run / "backbone.safetensors", setup.lfw, Path(data["aligned"]))
    steps = _read_log(run)
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


# -- 4. fine-tuning ----------------------------------------------------------------------------------------
def _finetune(setup: Setup, data: dict[str, Any]) -> dict[str, Any]:
    from arcface.inference.zoo import resolve_model_path

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
    curve = [[s["step"], s["loss"]] for s in _read_log(run) if s.get("loss") is not None]
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


# -- 5. output --------------------------------------------------------------------------------------------
def _summary(results: list[dict[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
    """One line per loss: mean accuracy over its seeds and the spread."""
    rows = []
    for name in order:
        rs = [r for r in results if r["loss"] == name]
        if not rs:
            continue
        accs = [r["accuracy"] for r in rs]
        rows.append({
            "loss": name,
            "accuracy": statistics.fmean(accs),
            "accuracy_min": min(accs),
            "accuracy_max": max(accs),
            "auc": statistics.fmean(r["auc"] for r in rs),
            "seeds": [r["seed"] for r in rs],
            "seconds": statistics.fmean(r["seconds"] for r in rs),
        })  # fmt: skip
    return rows


def _run_time(s: dict[str, Any]) -> str:
    if not s.get("runs_reused"):
        return f"whole run from a clean state {s['total_seconds'] / 60:.0f} min"
    clean = s.get("clean_run_seconds")
    first = f"whole run from a clean state {clean / 60:.0f} min; " if clean else ""
    return f"{first}this invocation {s['total_seconds'] / 60:.0f} min, reusing {s['runs_reused']} finished runs"


def markdown(payload: dict[str, Any]) -> str:
    """The README table of a ``loss_comparison.json`` payload."""
    s = payload["setup"]
    lines = [
        "| loss | LFW View 1 test accuracy | spread (seeds) | AUC | train s / row |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(payload["summary"], key=lambda r: -r["accuracy"]):
        spread = (f"{100 * r['accuracy_min']:.2f} to {100 * r['accuracy_max']:.2f} ({len(r['seeds'])})"
                  if len(r["seeds"]) > 1 else "1 seed")  # fmt: skip
        lines.append(f"| {r['loss']} | {100 * r['accuracy']:.2f}% | {spread} | {r['auc']:.4f} | {r['seconds']:.0f} |")
    lines += [
        "",
        f"{s['backbone']}, {s['steps']} steps of {s['batch_size']} ({s['epochs']:.1f} epochs of "
        f"{s['train_images']:,} photos of {s['train_people']:,} people), SGD lr {s['lr']}, seed 0 for every "
        f"row; {s['machine']['cpu']}, {s['machine']['cores']} cores, torch {s['machine']['torch']}; {_run_time(s)} "
        f"({s['date']}).",
    ]
    ft = payload.get("finetune")
    if ft:
        b2, a2, b1, a1 = ft["view2_before"], ft["view2_after"], ft["view1_before"], ft["view1_after"]
        lines += [
            "",
            "| fine-tuning the default model with arcface | before | after |",
            "|---|---|---|",
            f"| LFW View 2 (10 folds, flip) | {100 * b2['accuracy']:.2f}% +- {100 * b2['accuracy_std']:.2f} | "
            f"{100 * a2['accuracy']:.2f}% +- {100 * a2['accuracy_std']:.2f} |",
            f"| LFW View 1 test (held-out people, flip) | {100 * b1['accuracy']:.2f}% | {100 * a1['accuracy']:.2f}% |",
            f"| View 1 test AUC | {b1['auc']:.4f} | {a1['auc']:.4f} |",
            "",
            f"{ft['steps']} steps of {ft['batch_size']}, {ft['lr']}; {ft['seconds'] / 60:.1f} min. {ft['note']}",
        ]
    return "\n".join(lines) + "\n"


def _plots(payload: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in payload["results"]:
        if r["seed"] != 0 or not r["curve"]:
            continue
        c = np.asarray(r["curve"], float)
        ax.plot(c[:, 0], c[:, 1], label=r["loss"], lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale; each loss has its own scale)")
    ax.set_title("Training loss per head (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "loss_comparison_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))

    summary = sorted(payload["summary"], key=lambda r: r["accuracy"])
    fig, ax = plt.subplots(figsize=(8, 5))
    y = np.arange(len(summary))
    acc = np.array([100 * r["accuracy"] for r in summary])
    lo = acc - np.array([100 * r["accuracy_min"] for r in summary])
    hi = np.array([100 * r["accuracy_max"] for r in summary]) - acc
    ax.barh(y, acc, xerr=[lo, hi], color="#4c72b0", capsize=3)
    ax.set_yticks(y, [r["loss"] for r in summary], fontsize=8)
    ax.set_xlim(max(0.0, acc.min() - 10), min(100.0, acc.max() + 3))
    ax.set_xlabel("LFW View 1 test accuracy, % (bars: min..max over seeds)")
    ax.set_title("Accuracy per loss")
    fig.tight_layout()
    p = out / "loss_comparison_accuracy.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    return paths


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between the loss-table markers of ``readme``; False when the markers are absent."""
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{table}{README_END}{tail}", encoding="utf-8")
    return True


def run_loss_table(setup: Setup, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole experiment (see the module docstring) and write its outputs; returns the payload."""
    from arcface.engine.config import load_config

    t_start = time.perf_counter()
    _REUSED.clear()
    if setup.threads > 0:  # evaluation runs in this process (training in child processes)
        import torch

        torch.set_num_threads(setup.threads)
    setup.work.mkdir(parents=True, exist_ok=True)
    setup.out.mkdir(parents=True, exist_ok=True)
    base = load_config(setup.config)
    input_size = int(base.model.options.get("input_size", 112))
    rows = [r for r in ROWS if not setup.rows or r.name in setup.rows or _slug(r.name) in setup.rows]
    if setup.rows and len(rows) != len(setup.rows):
        known = ", ".join(_slug(r.name) for r in ROWS)
        raise ValueError(f"--rows: unknown row in {list(setup.rows)}; known: {known}")

    echo("1/4 aligning LFW with `arcface align` and packing the training people ...")
    data = prepare_data(setup, input_size)
    echo(f"    {data['train_images']:,} photos of {data['train_people']:,} people for training "
         f"({data['held_out_people']} View 1 test people held out)")  # fmt: skip

    echo(f"2/4 training {len(rows)} rows x {setup.steps} steps (seed 0) ...")
    secs = _train_rows([(r, 0) for r in rows], setup, data, input_size)
    results = [_run_row(r, 0, setup, data, input_size, t) for r, t in zip(rows, secs, strict=True)]
    for r in results:
        echo(f"    {r['loss']:<26} {100 * r['accuracy']:6.2f}%  AUC {r['auc']:.4f}  {r['seconds']:.0f} s")
    top = {r["loss"] for r in sorted(results, key=lambda r: -r["accuracy"])[: setup.seed_rows]}
    # the best rows, plus the paper's headline comparison (arcface against softmax), get the extra seeds
    extra = [x for x in rows if x.name in top or x.name in HEADLINE]
    if setup.seeds > 1 and extra:
        echo(f"3/4 more seeds ({setup.seeds - 1} each) for the top rows: {', '.join(r.name for r in extra)} ...")
        jobs = [(r, seed) for seed in range(1, setup.seeds) for r in extra]
        secs = _train_rows(jobs, setup, data, input_size)
        results += [_run_row(r, seed, setup, data, input_size, t) for (r, seed), t in zip(jobs, secs, strict=True)]

    finetune = None
    if setup.finetune:
        echo(f"4/4 fine-tuning the default model with arcface ({setup.finetune_steps} steps) ...")
        finetune = _finetune(setup, data)

    from arcface import __version__

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from _common import machine  # the same machine line as every benchmark
    except ImportError:  # installed without the repository's bench/
        import platform

        def machine() -> dict[str, Any]:
            return {"cpu": platform.processor(), "cores": os.cpu_count(), "torch": ""}

    m = base.model
    payload: dict[str, Any] = {
        "results": results,
        "summary": _summary(results, [r.name for r in rows]),
        "finetune": finetune,
        "setup": {
            "backbone": f"{m.name} x{m.options.get('width_mult', 1)} width, {input_size}x{input_size} input, "
            f"{m.num_features}-D",
            "config": str(setup.config.relative_to(REPO) if setup.config.is_relative_to(REPO) else setup.config),
            "steps": setup.steps,
            "batch_size": base.data.batch_size,
            "epochs": setup.steps * base.data.batch_size / data["train_images"],
            "lr": f"{base.optim.lr} (momentum {base.optim.momentum}, wd {base.optim.weight_decay}), "
            f"warm-up {max(1, setup.steps // 20)} steps, /10 at 60% and 85%, batch {base.data.batch_size}",
            "precision": base.train.precision,
            "jobs": setup.jobs,
            "threads_per_job": setup.threads_per_job,
            "seeds": setup.seeds,
            "seed_rows": setup.seed_rows,
            "evaluation": "LFW View 1: threshold maximising accuracy on pairsDevTrain (1,100 pairs), accuracy on "
            "pairsDevTest (500 same + 500 different, people held out of training); flip-test fusion; ROC AUC "
            "on pairsDevTest",
            "data": {k: v for k, v in data.items() if k != "packs"},
            "train_people": data["train_people"],
            "train_images": data["train_images"],
            "version": __version__,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "total_seconds": 0.0,
        },
    }
    payload["setup"]["total_seconds"] = round(time.perf_counter() - t_start, 1)
    payload["setup"]["runs_reused"] = len(_REUSED)
    previous = setup.out / "loss_comparison.json"
    if _REUSED and previous.is_file():  # keep the figure of the last run that trained everything
        prev = json.loads(previous.read_text()).get("setup", {})
        clean = prev.get("clean_run_seconds") or (prev.get("total_seconds") if not prev.get("runs_reused") else None)
        payload["setup"]["clean_run_seconds"] = clean
    elif not _REUSED:
        payload["setup"]["clean_run_seconds"] = payload["setup"]["total_seconds"]
    payload["plots"] = _plots(payload, setup.out)
    table = markdown(payload)
    (setup.out / "loss_comparison.md").write_text(table, encoding="utf-8")
    tmp = setup.out / "loss_comparison.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, setup.out / "loss_comparison.json")
    if setup.readme is not None and not update_readme(setup.readme, table):
        echo(f"note: {setup.readme} has no {README_BEGIN} / {README_END} markers; table not inserted")
    echo(table)
    return payload


def replace_setup(setup: Setup, **changes: Any) -> Setup:
    """A copy of ``setup`` with ``changes``."""
    return dataclasses.replace(setup, **changes)
