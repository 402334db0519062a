"""Scores of a clustering against true identities: BCubed and pairwise precision, recall and F.

* **BCubed** (Bagga & Baldwin, 1998; Amigo et al., 2009, https://doi.org/10.1007/s10791-008-9066-8): for each face,
  precision is the share of its cluster that is its person, recall the share of its person that is in its cluster;
  both averaged over faces, F their harmonic mean. Every face counts once, so people with one photo weigh as much
  as the rest.
* **Pairwise**: over all pairs of faces, precision is the share of pairs put together that are one person, recall
  the share of one person's pairs put together. Large clusters dominate (pairs grow as size squared).

Both are computed from the contingency counts (cluster, person) -> faces, never from a pair matrix.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bcubed", "pairwise", "scores"]


def _contingency(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (cluster, person) cell: its face count, its cluster's size and its person's size; plus the face's cell."""
    pred = np.unique(np.asarray(pred).ravel(), return_inverse=True)[1]
    true = np.unique(np.asarray(true).ravel(), return_inverse=True)[1]
    if pred.size != true.size:
        raise ValueError(f"{pred.size} predicted labels but {true.size} true labels")
    cell, inverse, count = np.unique(pred * np.int64(true.max() + 1) + true, return_inverse=True, return_counts=True)
    cluster_size = np.bincount(pred)[cell // (true.max() + 1)]
    person_size = np.bincount(true)[cell % (true.max() + 1)]
    return count, cluster_size, person_size, inverse


def bcubed(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """BCubed precision, recall and F of labels ``pred`` against ``true`` (both (N,))."""
    count, cluster_size, person_size, inverse = _contingency(pred, true)
    p = float(np.mean((count / cluster_size)[inverse]))
    r = float(np.mean((count / person_size)[inverse]))
    return {"precision": p, "recall": r, "f": 2 * p * r / (p + r)}


def pairwise(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Pairwise precision, recall and F (1.0 where no pair exists on that side)."""
    count, cluster_size, person_size, inverse = _contingency(pred, true)
    same = float(np.sum(count * (count - 1.0)) / 2)
    pred_sizes = np.bincount(np.unique(np.asarray(pred).ravel(), return_inverse=True)[1]).astype(np.float64)
    true_sizes = np.bincount(np.unique(np.asarray(true).ravel(), return_inverse=True)[1]).astype(np.float64)
    together = float(np.sum(pred_sizes * (pred_sizes - 1)) / 2)
    related = float(np.sum(true_sizes * (true_sizes - 1)) / 2)
    p = same / together if together else 1.0
    r = same / related if related else 1.0
    return {"precision": p, "recall": r, "f": 2 * p * r / (p + r) if p + r else 0.0}


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """BCubed and pairwise scores and the number of clusters, flat: ``bcubed_f``, ``pairwise_precision``, ..."""
    out = {f"bcubed_{k}": v for k, v in bcubed(pred, true).items()}
    out |= {f"pairwise_{k}": v for k, v in pairwise(pred, true).items()}
    out["clusters"] = int(np.unique(np.asarray(pred)).size)
    return out
