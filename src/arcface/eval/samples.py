"""Real aligned LFW faces for accuracy checks and benchmarks (not a protocol: a sample of real crops)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from arcface.align.aligner import FaceAligner
from arcface.io.images import load_image

__all__ = ["aligned_lfw_sample"]


def aligned_lfw_sample(images: str | os.PathLike, n: int) -> np.ndarray:
    """Up to ``n`` real aligned faces for accuracy checks and benchmarks: (m, 112, 112, 3) uint8 RGB, m <= n.

    The first photo of ``n`` people spread evenly over the sorted folders of ``images`` (LFW's
    ``lfw-deepfunneled``), MTCNN's main face cropped by ``norm_crop``; photos without a face are skipped.
    """
    aligner = FaceAligner("mtcnn")
    people = sorted(p for p in Path(images).iterdir() if p.is_dir())
    crops = []
    for person in people[:: max(1, len(people) // (2 * n))]:
        faces = aligner.faces(load_image(sorted(person.glob("*.jpg"))[0]), max_faces=1)
        if faces:
            crops.append(faces[0].crop)
        if len(crops) == n:
            break
    return np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
