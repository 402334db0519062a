"""The one face type of the pipeline, and which face of a photo is the main one.

A :class:`Face` is what a detector finds (box, score, five landmarks); the face pipeline
(:class:`arcface.FaceRecognizer`) fills in its aligned ``crop`` and its ``embedding`` once they are computed.

Coordinates: boxes are (x1, y1, x2, y2) with pixel ``i`` covering ``[i, i + 1)``; landmarks are (x, y) in
pixel-index coordinates (pixel ``i``'s centre is ``i``), the convention of ``cv2.warpAffine`` and of the
alignment template. Landmark order: left eye, right eye, nose tip, left mouth corner, right mouth corner,
where "left" is image-left (the subject's right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CENTRE_WEIGHT", "Face", "rank_faces"]

#: Weight of the squared centre offset against the box area in :func:`rank_faces` (insightface's ``max_num``).
CENTRE_WEIGHT = 2.0


@dataclass(frozen=True, eq=False)
class Face:
    """One face found in an image.

    Attributes:
        box: (x1, y1, x2, y2) in image pixels.
        score: detector confidence in [0, 1].
        landmarks: (5, 2) float32 read-only array of (x, y): left eye, right eye, nose tip, left and right mouth
            corners (image-left first), in pixel-index coordinates.
        crop: the aligned crop the model's contract asks for, (H, W, 3) uint8 RGB, once computed (else None).
        embedding: the crop's (D,) float32 unit embedding, once computed (else None).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    crop: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4:
            raise ValueError(f"box must have 4 values, got {len(box)}")
        lms = np.array(self.landmarks, dtype=np.float32).reshape(5, 2)
        lms.setflags(write=False)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "landmarks", lms)

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)

    def __repr__(self) -> str:
        box = ", ".join(f"{v:.1f}" for v in self.box)
        extra = "".join(f", {k}" for k in ("crop", "embedding") if getattr(self, k) is not None)
        return f"Face(box=({box}), score={self.score:.3f}{extra})"


def rank_faces(boxes: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Order faces so that the main face comes first: large and near the image centre.

    The rule is insightface's ``max_num`` selection: sort by ``area - 2 * d^2`` descending, where ``area`` is
    the box area and ``d`` the distance (pixels) from the box centre to the image centre (W / 2, H / 2).
    Ties keep the input order.

    Args:
        boxes: (N, 4) boxes (x1, y1, x2, y2).
        image_shape: (H, W, ...) of the image.

    Returns:
        (N,) int64 permutation, main face first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = image_shape[:2]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dx = (boxes[:, 0] + boxes[:, 2]) / 2 - w / 2
    dy = (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2
    value = area - CENTRE_WEIGHT * (dx**2 + dy**2)
    return np.argsort(-value, kind="stable")
