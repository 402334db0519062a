"""Greedy non-maximum suppression without Python loops over boxes.

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates; a box's area is ``(x2 - x1) * (y2 - y1)``.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["nms"]


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    mode: str = "union",
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy NMS: visit boxes by falling score, drop every box overlapping a kept one by more than ``threshold``.

    Args:
        boxes: (N, 4) boxes (x1, y1, x2, y2).
        scores: (N,) scores; ties keep the lower index first.
        threshold: overlap above which the lower-scored box is dropped.
        mode: ``"union"`` (overlap = IoU) or ``"min"`` (overlap = intersection / smaller area, as MTCNN's final
            stage, which also removes a small box inside a large one).
        groups: optional (N,) integer labels; boxes of different groups never suppress each other.

    Returns:
        (K,) int64 indices of the kept boxes, by falling score.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    n = boxes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    if groups is not None:
        # Shift each group to its own region of the plane so that groups cannot overlap.
        groups = np.asarray(groups).reshape(-1)
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (groups.astype(np.float64) * 2.0 * span)[:, None]
    if mode == "union":
        keep_sorted = _nms_union(boxes[order], threshold)
    else:
        keep_sorted = _nms_matrix(boxes[order], threshold)
    return order[keep_sorted]


def _nms_union(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """IoU NMS of boxes already sorted by falling score, via OpenCV's C++ ``NMSBoxes``; returns sorted positions."""
    n = boxes.shape[0]
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
    # Pass the rank as the score: strictly positive (NMSBoxes drops scores <= its score threshold) and ties broken
    # by position, so the result is exactly the greedy NMS of the given order.
    rank_score = (np.arange(n, 0, -1, dtype=np.float64) / n).astype(np.float32)
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh, rank_score, 0.0, float(threshold)), dtype=np.int64).reshape(-1)
    return np.sort(keep)


def _nms_matrix(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Intersection-over-minimum NMS of sorted boxes via the pairwise overlap matrix; for small N (final stages).

    Greedy NMS is the fixed point of ``keep[j] = not any(keep[i] and overlap[i, j] > t for i < j)``; iterating
    from all-kept settles one more box per pass at worst, usually in a handful of passes.
    """
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    iw = (np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None])).clip(0)
    ih = (np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None])).clip(0)
    inter = iw * ih
    overlap = inter / np.maximum(np.minimum(area[:, None], area[None]), 1e-12)
    suppresses = np.triu(overlap > threshold, k=1)  # (N, N): row i (higher score) suppresses column j
    keep = np.ones(boxes.shape[0], dtype=bool)
    while True:
        new_keep = ~(suppresses & keep[:, None]).any(0)
        if np.array_equal(new_keep, keep):
            return np.nonzero(keep)[0]
        keep = new_keep
