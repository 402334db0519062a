"""The verification protocol of the papers: 10-fold accuracy, ROC, AUC, EER and TAR at FAR.

Given one cosine similarity per pair (``scores``), the truth (``labels``, True = same person) and a fold index
per pair (``folds``), :func:`verification_report` computes:

* **10-fold accuracy** (LFW's "unrestricted" protocol as insightface runs it): for each fold k, the threshold
  that maximises accuracy on the *other* folds is applied to fold k; the figure is the mean and (population,
  ``np.std``) standard deviation of the fold accuracies. The per-fold thresholds are reported as cosines and
  as squared L2 distances of unit embeddings (``2 - 2 cos``).
* the threshold search, ROC, AUC, EER and TAR at each FAR of :data:`~arcface.eval.metrics.DEFAULT_FARS` as
  :mod:`arcface.eval.metrics` defines them (a FAR needs at least ``1 / FAR`` negative pairs; with fewer the
  entry says ``"not enough negatives"`` instead of giving a number).

The report is a plain JSON-ready dict that keeps ``scores``, ``labels`` and ``folds``, so anyone can recompute
the figure (:func:`recompute_accuracy`).

    >>> report = verification_report(scores, labels, folds)
    >>> report["accuracy"], report["accuracy_std"]
    >>> recompute_accuracy(report)  # the same two numbers, from the report alone
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from arcface.eval.datasets import PairSet
from arcface.eval.metrics import DEFAULT_FARS, check_scores, contiguous_folds, fold_accuracies, roc_metrics
from arcface.eval.pipeline import EvalCache, embed_pair_set
from arcface.inference.embedder import Embedder

__all__ = ["evaluate_pair_set", "pair_scores", "recompute_accuracy", "verification_report"]

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
    s, y, f = check_scores(scores, labels, folds)
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
    embedder: Embedder,
    *,
    cache: EvalCache | None = None,
    detector: str = "mtcnn",
    detector_options: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = True,
    fars: Sequence[float] = DEFAULT_FARS,
    threads: int | str | None = None,
) -> dict[str, Any]:
    """Embed a set (detection + alignment unless aligned, with the cache) and run the protocol on its pairs.

    Args:
        pairset: the pairs (see :mod:`arcface.eval.datasets`).
        embedder: the model; ``embedder.flip`` is the flip-test fusion.
        cache: crops and embeddings cache (:class:`arcface.eval.pipeline.EvalCache`); None for none.
        detector: detector name for unaligned images.
        detector_options: detector options.
        workers: detection processes; None: the thread policy's (see :func:`arcface.eval.pipeline.embed_pair_set`).
        progress: progress bars on stderr.
        fars: false-accept rates of the TAR@FAR entries.
        threads: CPUs it may use; None: ``ARCFACE_THREADS``, else the usable CPUs.

    Returns:
        :func:`verification_report` plus ``set``, ``source``, ``model`` (architecture, contract id, embedding
        size), ``flip``, ``precision`` and ``backend`` (the path that ran), ``detector``, ``aligned``,
        ``images``, ``fallbacks`` (count and images where no face was found), ``cache`` (what was reused) and
        ``seconds`` (``align``, ``embed``, ``protocol``).
    """
    emb, stats = embed_pair_set(
        pairset, embedder, cache=cache, detector=detector, detector_options=detector_options,
        workers=workers, progress=progress, threads=threads,
    )  # fmt: skip
    t0 = time.perf_counter()
    scores = pair_scores(emb, pairset.pairs)
    report = verification_report(scores, pairset.labels, pairset.folds, fars=fars)
    t_protocol = time.perf_counter() - t0
    c = embedder.contract
    head = {
        "set": pairset.name,
        "source": pairset.source,
        "model": {"architecture": c.architecture, "contract": c.id, "embedding_size": c.embedding_size},
        "flip": bool(embedder.flip),
        "precision": embedder.precision,
        "backend": embedder.backend,
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
