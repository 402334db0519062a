"""Verification and identification metrics: pure functions of scores and labels (no models, no files).

* **Threshold search** (:func:`calibrate_threshold`, exact, no grid): a pair is "same" when ``score > threshold``.
  Candidates are the midpoints between consecutive *distinct* sorted scores, plus one just below the lowest score
  and the highest score itself; among equally accurate candidates the **lowest** wins.
* **K-fold accuracy** (:func:`fold_accuracies`): for each fold the threshold that maximises accuracy on the
  *other* folds is applied to it (LFW's "unrestricted" protocol as insightface runs it).
* **ROC** over all pairs (:func:`roc_curve`), its **AUC** (trapezoid, ties counted as half), the **EER** (where the
  false-accept rate equals the false-reject rate, linearly interpolated) (:func:`roc_metrics`).
* **TAR at FAR** (:func:`tar_at_far`, the one rule for verification pairs, IJB 1:1 and 1:N impostors): at FAR f
  the threshold is the ``(k+1)``-th highest impostor score, ``k = floor(f * impostors)``; scores strictly above it
  are accepted, so at most ``k`` impostors pass. Where ``f * impostors < 1`` the FAR cannot be measured and the
  entry says "not enough negatives" instead of giving a number.
* **CMC** (:func:`cmc_from_ranks`): the share of identification trials whose rank is at most r.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_FARS",
    "best_threshold",
    "calibrate_threshold",
    "check_scores",
    "cmc_from_ranks",
    "contiguous_folds",
    "fold_accuracies",
    "roc_curve",
    "roc_metrics",
    "tar_at_far",
    "threshold_at_far",
]

#: The false-accept rates reported by default (verification, IJB 1:1, identification), smallest first. A set with
#: fewer than ``1 / FAR`` impostor pairs reports "not enough negatives" for that FAR.
DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def calibrate_threshold(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray
) -> tuple[float, float]:
    """The cosine threshold that maximises verification accuracy on labelled pairs.

    A pair is predicted "same" when ``score > threshold``. Candidates are the midpoints between
    consecutive distinct sorted scores, plus one just below the lowest score (all "same") and the
    highest score itself (all "different"); among equally accurate candidates the lowest wins.

    Args:
        scores: (N,) similarity of each pair (cosine of L2-normalised embeddings).
        labels: (N,) True for a same-identity pair.

    Returns:
        (threshold, accuracy) with accuracy the fraction of pairs classified correctly.

    Raises:
        ValueError: empty input, lengths that differ, or non-finite scores.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if s.size == 0 or s.size != y.size:
        raise ValueError(f"calibrate_threshold: need as many labels as scores (got {s.size} and {y.size}), N > 0")
    if not np.isfinite(s).all():
        raise ValueError("calibrate_threshold: scores must be finite")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    n = s.size
    # Cut i (0..n) predicts "same" for s[i:], "different" for s[:i]: correct = negatives below + positives above.
    neg_below = np.concatenate([[0], np.cumsum(~y)])  # (n + 1,)
    pos_above = y.sum() - np.concatenate([[0], np.cumsum(y)])  # (n + 1,)
    correct = neg_below + pos_above
    # Only cuts between distinct scores (and the two ends) are realisable by a threshold.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] > s[:-1]
    correct = np.where(valid, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        threshold = float(np.nextafter(s[0], -np.inf))
    elif i == n:
        threshold = float(s[-1])
    else:
        threshold = float((s[i - 1] + s[i]) / 2)
        if not s[i - 1] <= threshold < s[i]:  # adjacent floats: the midpoint rounded up
            threshold = float(s[i - 1])
    return threshold, float(correct[i] / n)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The cosine threshold that maximises accuracy of ``score > threshold`` (exact search; lowest on ties).

    Args:
        scores: (N,) similarities.
        labels: (N,) bool, True for same-identity pairs.
    """
    return calibrate_threshold(scores, labels)[0]


def contiguous_folds(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold index of each of ``n`` pairs in ``n_folds`` contiguous, near-equal blocks.

    The split of insightface's ``KFold(n_splits=10, shuffle=False)``: the first ``n % n_folds`` folds get
    one pair more.

    Returns:
        (n,) int64 in ``0..n_folds-1``, non-decreasing.

    Raises:
        ValueError: fewer pairs than folds, or ``n_folds < 2``.
    """
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if n < n_folds:
        raise ValueError(f"{n} pairs cannot be split into {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def check_scores(scores, labels, folds=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Scores as float64, labels as bool, folds as int64 (or None); ValueError naming what is wrong."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be booleans (or 0/1)")
        y = y.astype(bool)
    if s.size == 0 or s.size != y.size:
        raise ValueError(f"need one label per score and at least one pair (got {s.size} scores, {y.size} labels)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    f = None
    if folds is not None:
        f = np.asarray(folds).reshape(-1)
        if f.size != s.size or not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"folds must be one integer per pair (got {f.size} for {s.size} pairs)")
        if np.unique(f).size < 2:
            raise ValueError("need at least 2 folds")
        f = f.astype(np.int64)
    return s, y, f


def fold_accuracies(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, folds: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """K-fold verification: threshold from the other folds, accuracy on this one.

    Args:
        scores: (N,) cosine similarities.
        labels: (N,) True for same-identity pairs.
        folds: (N,) fold index of each pair (any K >= 2 distinct values, visited in sorted order).

    Returns:
        ``(accuracies, thresholds)``, each (K,) float64: the accuracy on fold k and the cosine threshold
        chosen on the other folds.
    """
    s, y, f = check_scores(scores, labels, folds)
    accs, thrs = [], []
    for k in np.unique(f):
        test = f == k
        thr = best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] > thr) == y[test])))
        thrs.append(thr)
    return np.asarray(accs), np.asarray(thrs)


def roc_curve(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> dict[str, np.ndarray]:
    """The ROC of ``score > threshold`` over every distinct threshold.

    Returns:
        ``{"far": (M,), "tar": (M,), "thresholds": (M,)}``, M = distinct scores + 1, starting at (0, 0) with
        threshold ``+inf`` and ending at (1, 1); ``far`` is the false-accept rate (negatives accepted),
        ``tar`` the true-accept rate (positives accepted), both non-decreasing.

    Raises:
        ValueError: no positive or no negative pair.
    """
    s, y, _ = check_scores(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"an ROC needs both kinds of pairs (got {n_pos} same, {n_neg} different)")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]  # last index of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    thresholds = np.r_[np.inf, s[last]]  # accept score >= threshold (ties accepted together)
    return {"far": np.r_[0.0, fp / n_neg], "tar": np.r_[0.0, tp / n_pos], "thresholds": thresholds}


def threshold_at_far(impostor: Sequence[float] | np.ndarray, far: float) -> float | None:
    """The score threshold that lets at most ``floor(far * N)`` of N impostor scores pass (strictly above it).

    The ``(k+1)``-th highest impostor score, ``k = floor(far * N)``; below the lowest score when every impostor may
    pass. None where ``far * N < 1`` (the FAR cannot be measured with N impostors). The rule of :func:`tar_at_far`,
    and of TPIR at FPIR with the top scores of non-mated searches as the impostors.

    Raises:
        ValueError: a FAR outside (0, 1].
    """
    far = float(far)
    if not 0.0 < far <= 1.0:
        raise ValueError(f"FAR must be in (0, 1], got {far}")
    neg_desc = -np.sort(-np.asarray(impostor, dtype=np.float64).ravel())  # (N,) highest first
    allowed = math.floor(far * neg_desc.size + 1e-9)  # impostors that may pass
    if allowed < 1:
        return None
    return float(neg_desc[allowed]) if allowed < neg_desc.size else float(np.nextafter(neg_desc[-1], -np.inf))


def tar_at_far(
    genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray, fars: Iterable[float] = DEFAULT_FARS
) -> dict[float, dict[str, Any]]:
    """True-accept rate at fixed false-accept rates, from the empirical ROC (the rule of the module docstring).

    Args:
        genuine: (P,) scores of same-identity pairs.
        impostor: (N,) scores of different-identity pairs.
        fars: target false-accept rates in (0, 1].

    Returns:
        ``{far: {"tar", "threshold", "far_actual"}}`` (``far_actual`` the measured FAR, at most ``far``); where
        ``far * N < 1``: ``{"tar": None, "threshold": None, "far_actual": None, "note": "not enough negatives: ..."}``.

    Raises:
        ValueError: empty score sets, non-finite scores, or a FAR outside (0, 1].
    """
    genuine = np.asarray(genuine, dtype=np.float64).ravel()
    impostor = np.asarray(impostor, dtype=np.float64).ravel()
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError(f"need genuine and impostor scores, got {genuine.size} and {impostor.size}")
    if not (np.isfinite(genuine).all() and np.isfinite(impostor).all()):
        raise ValueError("scores must be finite")
    n_neg = impostor.size
    out: dict[float, dict[str, Any]] = {}
    for far in fars:
        far = float(far)
        threshold = threshold_at_far(impostor, far)
        if threshold is None:
            need = math.ceil(1.0 / far - 1e-9)
            note = f"not enough negatives: FAR {far:g} needs >= {need} negative pairs, have {n_neg}"
            out[far] = {"tar": None, "threshold": None, "far_actual": None, "note": note}
            continue
        out[far] = {
            "tar": float(np.mean(genuine > threshold)),
            "threshold": threshold,
            "far_actual": float(np.mean(impostor > threshold)),
        }
    return out


def roc_metrics(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, object]:
    """AUC, EER (with its threshold) and TAR at each FAR of ``fars``.

    Returns:
        ``{"auc", "eer", "eer_threshold", "tar_at_far": [{"far": f, **tar_at_far(...)[f]} per FAR]}``.
    """
    s, y, _ = check_scores(scores, labels)
    roc = roc_curve(s, y)
    far, tar, thr = roc["far"], roc["tar"], roc["thresholds"]
    auc = float(np.trapezoid(tar, far)) if hasattr(np, "trapezoid") else float(np.trapz(tar, far))
    frr = 1.0 - tar
    diff = far - frr  # goes from -1 (far 0, frr 1) to +1
    i = int(np.argmax(diff >= 0))  # first point where far >= frr
    if i == 0 or diff[i] == 0:
        eer, eer_thr = float(far[i]), float(thr[i])
    else:  # interpolate between points i-1 and i
        t = -diff[i - 1] / (diff[i] - diff[i - 1])
        eer = float(far[i - 1] + t * (far[i] - far[i - 1]))
        eer_thr = float(thr[i]) if not np.isfinite(thr[i - 1]) else float(thr[i - 1] + t * (thr[i] - thr[i - 1]))
    return {
        "auc": auc,
        "eer": eer,
        "eer_threshold": eer_thr,
        "tar_at_far": [{"far": f, **t} for f, t in tar_at_far(s[y], s[~y], fars).items()],
    }


def cmc_from_ranks(ranks: np.ndarray, at: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Cumulative match characteristic: the share of trials whose 1-based rank is <= r.

    Args:
        ranks: (T,) 1-based ranks of the correct match (``np.inf`` or any value > max(at) for "not found").
        at: the ranks to report.

    Returns:
        ``{r: share}``.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no trials")
    return {int(r): float(np.mean(ranks <= r)) for r in at}
