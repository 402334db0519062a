"""The face-detector interface: the ``FaceDetector`` base class and the ``DETECTORS`` registry (filled by the
detector modules; :mod:`arcface.align.detectors` imports them all and builds one by name).

Coordinates: boxes are (x1, y1, x2, y2) with pixel ``i`` covering ``[i, i + 1)``; landmarks are (x, y) in
pixel-index coordinates (pixel ``i``'s centre is ``i``), the convention of ``cv2.warpAffine`` and of the
alignment template. Landmark order: left eye, right eye, nose tip, left mouth corner, right mouth corner,
where "left" is image-left (the subject's right).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import cv2
import numpy as np

from arcface.align.face import Face, rank_faces
from arcface.registry import Registry

__all__ = ["DETECTORS", "FaceDetector"]

DETECTORS: Registry = Registry("detector")


class FaceDetector(ABC):
    """Base of all detectors: input checks, downscaling of huge images, ranking, :class:`~arcface.align.Face` objects.

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

    def detect(self, image: np.ndarray) -> list[Face]:
        """Find the faces in an image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            Faces sorted main face first (see :func:`~arcface.align.face.rank_faces`); an empty list when there is none.
        """
        image, small, scale = self._prepare(image)
        return self._finish(self._detect(small), image.shape, small is not image, scale)

    __call__ = detect

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
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
    ) -> list[Face]:
        """Raw detections on the detection image -> ``Face`` objects in image coordinates, main face first."""
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
        return [Face(tuple(boxes[i]), scores[i], landmarks[i]) for i in order]

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
