"""The face-detector interface: ``Detection``, the ``FaceDetector`` base class, the ``DETECTORS`` registry.

Coordinates: boxes are (x1, y1, x2, y2) with pixel ``i`` covering ``[i, i + 1)``; landmarks are (x, y) in
pixel-index coordinates (pixel ``i``'s centre is ``i``), the convention of ``cv2.warpAffine`` and of the
alignment template. Landmark order: left eye, right eye, nose tip, left mouth corner, right mouth corner,
where "left" is image-left (the subject's right).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from arcface.registry import Registry

__all__ = ["DETECTORS", "Detection", "FaceDetector", "create_detector", "rank_faces"]

DETECTORS: Registry = Registry("detector")

#: Weight of the squared centre offset against the box area in :func:`rank_faces` (insightface's ``max_num``).
CENTRE_WEIGHT = 2.0


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected face.

    Attributes:
        box: (x1, y1, x2, y2) in image pixels.
        score: detector confidence in [0, 1].
        landmarks: (5, 2) float32 read-only array of (x, y): left eye, right eye, nose, left mouth corner,
            right mouth corner (image-left first).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

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
        return f"Detection(box=({box}), score={self.score:.3f})"


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


class FaceDetector(ABC):
    """Base of all detectors: input checks, downscaling of huge images, ranking, ``Detection`` objects.

    Subclasses implement :meth:`_detect` on an image whose longer side is at most ``max_side``.

    Args:
        max_side: longer image side above which the image is downscaled (area interpolation) for detection;
            boxes and landmarks are mapped back to the original coordinates. None never downscales.
        min_score: detections scoring below this are dropped (after the detector's own thresholds).
    """

    def __init__(self, max_side: int | None = 1600, min_score: float = 0.0) -> None:
        if max_side is not None and max_side < 16:
            raise ValueError(f"max_side must be at least 16 (or None), got {max_side}")
        self.max_side = max_side
        self.min_score = float(min_score)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Find the faces in an image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            Detections sorted main face first (see :func:`rank_faces`); an empty list when there is none.
        """
        image, small, scale = self._prepare(image)
        return self._finish(self._detect(small), image.shape, small is not image, scale)

    __call__ = detect

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Find the faces in several images; per image exactly what :meth:`detect` gives.

        Detectors that can share work between images (MTCNN runs their pyramids and crops through its networks
        together) override :meth:`_detect_batch`; the default detects one image after the other.

        Args:
            images: (H, W, 3) uint8 RGB images of any sizes.

        Returns:
            One list of detections per image, in the order of ``images``.
        """
        prepared = [self._prepare(image) for image in images]
        found = self._detect_batch([small for _, small, _ in prepared])
        if len(found) != len(prepared):
            name = type(self).__name__
            raise RuntimeError(f"{name}._detect_batch gave {len(found)} results for {len(prepared)} images")
        return [
            self._finish(result, image.shape, small is not image, scale)
            for result, (image, small, scale) in zip(found, prepared)
        ]

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Check the image and downscale it for detection: (image, detection image, (x scale, y scale))."""
        image = _check_image(image)
        small, sx, sy = _downscale(image, self.max_side)
        return image, small, (sx, sy)

    def _finish(
        self,
        result: tuple[np.ndarray, np.ndarray, np.ndarray],
        shape: tuple[int, ...],
        downscaled: bool,
        scale: tuple[float, float],
    ) -> list[Detection]:
        """Raw detections on the detection image -> ``Detection`` objects in image coordinates, main face first."""
        boxes, scores, landmarks = result
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        if downscaled:
            xy = np.array(scale)
            boxes = boxes / np.tile(xy, 2)
            landmarks = (landmarks + 0.5) / xy - 0.5  # pixel-index coordinates: centres map to centres
        keep = scores >= self.min_score
        boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
        order = rank_faces(boxes, shape)
        return [Detection(tuple(boxes[i]), scores[i], landmarks[i]) for i in order]

    @abstractmethod
    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect on a checked (H, W, 3) uint8 RGB image.

        Returns:
            boxes (N, 4), scores (N,), landmarks (N, 5, 2), in any order, in ``image`` coordinates.
        """

    def _detect_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`_detect` on each checked, downscaled image; detectors that batch override this."""
        return [self._detect(image) for image in images]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_side={self.max_side})"


def create_detector(name: str = "mtcnn", **options: Any) -> FaceDetector:
    """Build the detector registered as ``name`` (``DETECTORS.names()``: mtcnn, scrfd, yunet).

    Args:
        name: detector name; "mtcnn" (the default, as the ArcFace paper) needs no extra files.
        **options: constructor options of the detector, e.g. ``max_side``, ``min_face_size`` (mtcnn),
            ``model_path`` (scrfd, required).

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    return DETECTORS.build(name, **options)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: {image.shape}")
    return np.ascontiguousarray(image)


def _downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float, float]:
    """Shrink so that the longer side is at most ``max_side``; returns (image, x scale, y scale)."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, 1.0, 1.0
    f = max_side / max(h, w)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, nw / w, nh / h
