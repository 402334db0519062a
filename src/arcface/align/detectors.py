"""Every face detector, registered in ``DETECTORS``, and :func:`create_detector` to build one by name."""

from __future__ import annotations

from typing import Any

from arcface.align import mtcnn, scrfd, yunet  # noqa: F401  (importing them registers the detectors)
from arcface.align.detection import DETECTORS, FaceDetector

__all__ = ["DETECTORS", "create_detector"]


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
