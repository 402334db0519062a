"""The verification protocol of the papers: 10-fold accuracy, ROC, AUC, EER and TAR at FAR.

Given one cosine similarity per pair (``scores``), the truth (``labels``, True = same person) and a fold index
per pair (``folds``), :func:`verification_report` computes:

* **10-fold accuracy** (LFW's "unrestricted" protocol as insightface runs it): for each fold k, the threshold
  that maximises accuracy on the *other* folds is applied to fold k; the figure is the mean and (population,
  ``np.std``) standard deviation of the fold accuracies. The per-fold thresholds are reported as cosines and
  as squared L2 distances of unit embeddings (``2 - 2 cos``).
* **Threshold search** (exact, no grid): a pair is "same" when ``score > threshold``. Candidates are the
  midpoints between consecutive *distinct* sorted scores, plus one just below the lowest score and the
  highest score itself; among equally accurate candidates the **lowest** wins (the rule of
  :func:`arcface.inference.contract.calibrate_threshold`, which does the search).
* **ROC** over all pairs, its **AUC** (trapezoid, ties counted as half), the **EER** (where the false-accept
  rate equals the false-reject rate, linearly interpolated on the ROC) and **TAR at FAR** 1e-1, 1e-2, 1e-3:
  the threshold is the (k+1)-th highest negative score with ``k = floor(FAR * negatives)``, so at most k
  negatives are accepted. A FAR needs at least ``1 / FAR`` negative pairs; with fewer the entry says
  ``"not enough negatives"`` instead of giving a number.

The report is a plain JSON-ready dict that keeps ``scores``, ``labels`` and ``folds``, so anyone can recompute
the figure (:func:`recompute_accuracy`).

    >>> report = verification_report(scores, labels, folds)
    >>> report["accuracy"], report["accuracy_std"]
    >>> recompute_accuracy(report)  # the same two numbers, from the report alone
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from arcface.inference.contract import calibrate_threshold

if TYPE_CHECKING:
    from arcface.eval.cache import EvalCache
    from arcface.eval.datasets import PairSet
    from arcface.inference.backends import Backend

__all__ = [
    "DEFAULT_FARS",
    "best_threshold",
    "contiguous_folds",
    "evaluate_pair_set",
    "fold_accuracies",
    "pair_scores",
    "recompute_accuracy",
    "roc_curve",
    "roc_metrics",
    "tar_at_far",
    "verification_report",
]

#: False-accept rates of the TAR@FAR columns.
DEFAULT_FARS = (1e-1, 1e-2, 1e-3)


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


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The cosine threshold that maximises accuracy of ``score > threshold`` (exact search; lowest on ties).

    Args:
        scores: (N,) similarities.
        labels: (N,) bool, True for same-identity pairs.
    """
    return calibrate_threshold(scores, labels)[0]


def _check(scores, labels, folds=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
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
    s, y, f = _check(scores, labels, folds)
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
    s, y, _ = _check(scores, labels)
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


def tar_at_far(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, far: float
) -> dict[str, float | None | str]:
    """The true-accept rate at a false-accept rate of at most ``far``.

    The threshold is the (k+1)-th highest negative score, ``k = floor(far * negatives)``; pairs with a score
    strictly above it are accepted, so at most k negatives are.

    Returns:
        ``{"far": far, "tar": ..., "threshold": ..., "far_actual": ...}``, or with ``tar`` None and a ``note``
        when there are fewer than ``1 / far`` negative pairs.
    """
    s, y, _ = _check(scores, labels)
    neg = np.sort(s[~y])[::-1]
    pos = s[y]
    need = math.ceil(1.0 / far - 1e-9)
    if neg.size < need or pos.size == 0:
        what = f"{neg.size} negative pairs" if pos.size else "no positive pairs"
        return {"far": far, "tar": None, "threshold": None, "far_actual": None,
                "note": f"not enough negatives: FAR {far:g} needs >= {need} negative pairs, have {what}"}  # fmt: skip
    k = int(math.floor(far * neg.size + 1e-9))
    thr = float(neg[k]) if k < neg.size else float(np.nextafter(neg[-1], -np.inf))
    return {
        "far": far,
        "tar": float(np.mean(pos > thr)),
        "threshold": thr,
        "far_actual": float(np.mean(neg > thr)),
    }


def roc_metrics(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, object]:
    """AUC, EER (with its threshold) and TAR at each FAR of ``fars``.

    Returns:
        ``{"auc", "eer", "eer_threshold", "tar_at_far": [tar_at_far(...) per FAR]}``.
    """
    roc = roc_curve(scores, labels)
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
        "tar_at_far": [tar_at_far(scores, labels, f) for f in fars],
    }


def verification_report(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    folds: Sequence[int] | np.ndarray | None = None,
    *,
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, object]:
    """The whole verification report of one set of pairs (JSON-ready).

    Args:
        scores: (N,) cosine similarity of each pair.
        labels: (N,) True for same-identity pairs.
        folds: (N,) fold of each pair (e.g. LFW View 2's official ones); None for
            :func:`contiguous_folds` ``(N, n_folds)``.
        n_folds: folds when ``folds`` is None.
        fars: false-accept rates for the TAR@FAR entries.

    Returns:
        A dict with ``accuracy`` and ``accuracy_std`` (mean / population std over folds), ``fold_accuracies``,
        ``thresholds`` (cosine, per fold) and ``thresholds_l2`` (``2 - 2 cos``), ``threshold_rule``,
        ``auc``, ``eer``, ``eer_threshold``, ``tar_at_far``, counts (``pairs``, ``same``, ``different``,
        ``folds_n``) and the inputs ``scores``, ``labels``, ``folds`` as lists.
    """
    s, y, f = _check(scores, labels, folds)
    if f is None:
        f = contiguous_folds(s.size, n_folds)
    accs, thrs = fold_accuracies(s, y, f)
    report: dict[str, object] = {
        "pairs": int(s.size),
        "same": int(y.sum()),
        "different": int((~y).sum()),
        "folds_n": int(np.unique(f).size),
        "accuracy": float(accs.mean()),
        "accuracy_std": float(accs.std()),
        "fold_accuracies": accs.tolist(),
        "thresholds": thrs.tolist(),
        "thresholds_l2": (2.0 - 2.0 * thrs).tolist(),
        "threshold_rule": "same when cosine > threshold; threshold maximises accuracy on the other folds "
        "(exact search over midpoints of sorted scores, lowest on ties); std is the population std",
    }
    report.update(roc_metrics(s, y, fars))
    report.update({"scores": s.tolist(), "labels": y.tolist(), "folds": f.tolist()})
    return report


def recompute_accuracy(report: dict[str, object]) -> tuple[float, float]:
    """Recompute ``(accuracy, accuracy_std)`` from a report's ``scores``, ``labels`` and ``folds`` alone."""
    accs, _ = fold_accuracies(report["scores"], report["labels"], report["folds"])
    return float(accs.mean()), float(accs.std())


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair.

    Args:
        embeddings: (M, D) unit rows.
        pairs: (N, 2) indices into ``embeddings``.

    Returns:
        (N,) float64 in [-1, 1].
    """
    e = np.asarray(embeddings, np.float64)
    p = np.asarray(pairs, np.int64)
    return np.clip(np.einsum("nd,nd->n", e[p[:, 0]], e[p[:, 1]]), -1.0, 1.0)


def evaluate_pair_set(
    pairset: PairSet,
    backend: Backend,
    *,
    cache: EvalCache | None = None,
    detector: str = "mtcnn",
    detector_options: dict[str, Any] | None = None,
    workers: int = 1,
    progress: bool = True,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, Any]:
    """Embed a set (detection + alignment unless aligned, with the cache) and run the protocol on its pairs.

    Args:
        pairset: the pairs (see :mod:`arcface.eval.datasets`).
        backend: the model; ``backend.flip`` is the flip-test fusion.
        cache: crops and embeddings cache (:class:`arcface.eval.cache.EvalCache`); None for none.
        detector: detector name for unaligned images.
        detector_options: detector options.
        workers: detection processes.
        progress: progress bars on stderr.
        fars: false-accept rates of the TAR@FAR entries.

    Returns:
        :func:`verification_report` plus ``set``, ``source``, ``model`` (architecture, contract id, embedding
        size), ``flip``, ``detector``, ``aligned``, ``images``, ``fallbacks`` (count and images where no face
        was found), ``cache`` (what was reused) and ``seconds`` (``align``, ``embed``, ``protocol``).
    """
    from arcface.eval.cache import embed_pair_set

    emb, stats = embed_pair_set(
        pairset, backend, cache=cache, detector=detector, detector_options=detector_options,
        workers=workers, progress=progress,
    )  # fmt: skip
    t0 = time.perf_counter()
    scores = pair_scores(emb, pairset.pairs)
    report = verification_report(scores, pairset.labels, pairset.folds, fars=fars)
    t_protocol = time.perf_counter() - t0
    c = backend.contract
    head = {
        "set": pairset.name,
        "source": pairset.source,
        "model": {"architecture": c.architecture, "contract": c.id, "embedding_size": c.embedding_size},
        "flip": bool(backend.flip),
        "detector": None if pairset.aligned else detector,
        "aligned": bool(pairset.aligned),
        "images": stats.images,
        "fallbacks": stats.fallbacks,
        "fallback_images": stats.fallback_images,
        "cache": {"embeddings": stats.embeddings_cached, "crops_cached": stats.crops_cached,
                  "detected": stats.detected},  # fmt: skip
        "seconds": {"align": stats.seconds_align, "embed": stats.seconds_embed, "protocol": t_protocol},
    }
    return {**head, **report}
