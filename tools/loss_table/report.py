"""Step 5: the summary rows, the markdown table, the PNGs and the README section."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

README_BEGIN = "<!-- loss-table:begin -->"
#: Where the figures of the table come from, named under each table (docs/ cite a result file for every figure).
RESULT_FILE = "`bench/results/loss_comparison.json`"
README_END = "<!-- loss-table:end -->"


def summary(results: list[dict[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
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
        f"({s['date']}; {RESULT_FILE}).",
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
            f"{ft['steps']} steps of {ft['batch_size']}, {ft['lr']}; {ft['seconds'] / 60:.1f} min "
            f"({RESULT_FILE}). {ft['note']}",
        ]
    return "\n".join(lines) + "\n"


def plots(payload: dict[str, Any], out: Path) -> list[str]:
    """The loss curves and the accuracy per loss as PNGs in ``out``; returns their paths."""
    import matplotlib  # optional dependency (the [all] extra): only the plots need it

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
