"""ROC plots (PNG) of verification reports, with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from arcface.eval.metrics import roc_curve

__all__ = ["plot_roc"]


def plot_roc(reports: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, *, title: str = "ROC") -> Path:
    """Draw the ROC (TAR against FAR, log FAR axis) of one or more reports into a PNG.

    Args:
        reports: label -> a :func:`arcface.eval.verification.verification_report` (its ``scores`` and
            ``labels`` are used; ``accuracy`` and ``auc`` go into the legend).
        path: the PNG to write (parent folders are created).
        title: the figure title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    floor = 1.0
    for label, r in reports.items():
        roc = roc_curve(r["scores"], r["labels"])
        n_neg = max(1, int(np.sum(~np.asarray(r["labels"], bool))))
        floor = min(floor, 1.0 / n_neg)
        far = np.maximum(roc["far"], 1.0 / n_neg / 2)  # FAR 0 has no place on a log axis
        legend = f"{label}: acc {100 * r['accuracy']:.2f}% +- {100 * r['accuracy_std']:.2f}, AUC {r['auc']:.4f}"
        ax.step(far, roc["tar"], where="post", label=legend)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1.0)
    ax.set_ylim(0.0, 1.005)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
