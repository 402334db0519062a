"""Detect and crop: the first half of the face pipeline, shared by every caller that makes aligned crops.

    >>> aligner = FaceAligner("mtcnn", CropSpec.square(112))   # or FaceAligner(detector, contract)
    >>> faces = aligner.faces(rgb)                 # list[Face] main face first, each with its aligned .crop
    >>> aligner.faces(rgb, max_faces=1)            # every face, but only the main one cropped

:class:`arcface.FaceRecognizer` adds the embedding; the evaluation pipeline and ``arcface align`` run one aligner
per worker process (:func:`cached_aligner`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from arcface.align.detection import FaceDetector
from arcface.align.detectors import create_detector
from arcface.align.face import Face
from arcface.align.transform import CropSpec, crop

__all__ = ["FaceAligner", "cached_aligner"]


class FaceAligner:
    """A detector and the crop it feeds.

    Args:
        detector: a detector name ("mtcnn", "yunet", "scrfd") or a ``FaceDetector``.
        spec: the crop: a :class:`~arcface.align.transform.CropSpec` or a model contract.
        detector_options: constructor options of a detector given by name (``max_side``, ``model_path``, ...).

    Raises:
        KeyError: an unknown detector name.
        ValueError: a crop the template cannot make.
    """

    def __init__(
        self,
        detector: str | FaceDetector = "mtcnn",
        spec: Any = None,
        detector_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = CropSpec.of(spec) if spec is not None else CropSpec()
        if isinstance(detector, FaceDetector):
            self.detector = detector
        else:
            self.detector = create_detector(detector, **dict(detector_options or {}))

    def faces(self, image: np.ndarray, max_faces: int | None = None) -> list[Face]:
        """Every face of an (H, W, 3) uint8 RGB image, main face first; the first ``max_faces`` (all when None)
        carry their aligned crop."""
        return self._cropped(image, self.detector.detect(image), max_faces)

    def faces_batch(self, images: Sequence[np.ndarray], max_faces: int | None = None) -> list[list[Face]]:
        """:meth:`faces` of several images, detected together (``FaceDetector.detect_batch``: MTCNN shares its
        network passes between images); per image exactly what :meth:`faces` gives."""
        return [self._cropped(image, found, max_faces)
                for image, found in zip(images, self.detector.detect_batch(images), strict=True)]  # fmt: skip

    def _cropped(self, image: np.ndarray, found: list[Face], max_faces: int | None) -> list[Face]:
        n = len(found) if max_faces is None else max(0, int(max_faces))
        return [dataclasses.replace(f, crop=crop(image, f.landmarks, self.spec)) if i < n else f
                for i, f in enumerate(found)]  # fmt: skip

    def __repr__(self) -> str:
        h, w = self.spec.input_size
        return f"FaceAligner({self.detector!r}, {h}x{w} {self.spec.template})"


_CACHE: dict[str, FaceAligner] = {}


def cached_aligner(detector: str, detector_options: Mapping[str, Any], spec: CropSpec) -> FaceAligner:
    """This process's aligner for these settings, built once (a worker process keeps one per job)."""
    key = json.dumps([detector, dict(detector_options), dataclasses.asdict(spec)], sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = FaceAligner(detector, spec, detector_options)
    return _CACHE[key]
