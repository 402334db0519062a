"""Face alignment: detect five landmarks, map them onto the template, warp to the crop the models expect.

Alignment (the embedding contract, docs/architecture.md):
    >>> crop(image, landmarks, contract)              # the aligned crop a contract (or CropSpec) asks for
    >>> norm_crop(image, landmarks)                   # (112, 112, 3) uint8 on the arcface template
    >>> M = estimate_norm(landmarks, image_size=112)  # (2, 3) image -> crop
    >>> transform_points(invert_affine(M), crop_points)  # crop -> image coordinates

Detection (``DETECTORS``: mtcnn, scrfd, yunet):
    >>> detector = create_detector("mtcnn")
    >>> faces = detector.detect(image)  # image (H, W, 3) uint8 RGB -> list[Face], main face first
    >>> FaceAligner(detector, CropSpec.square(112)).faces(image)   # the same faces with their crops
"""

from __future__ import annotations

from arcface.align.nms import nms as nms  # eager: the submodule of the same name would shadow a lazy export
from arcface.registry import lazy_exports

#: public name -> its module (imported on first use: ``arcface.align.face`` and ``.template`` stay free of OpenCV)
_EXPORTS = {
    "FaceAligner": ".aligner", "cached_aligner": ".aligner",
    "DETECTORS": ".detectors", "FaceDetector": ".detection", "create_detector": ".detectors",
    "Face": ".face", "rank_faces": ".face",
    "MTCNN": ".mtcnn", "SCRFD": ".scrfd", "YuNet": ".yunet",
    "ARCFACE_TEMPLATE": ".template", "TEMPLATE_NAME": ".template", "TEMPLATE_SIZE": ".template",
    "template_for_size": ".template",
    "CropSpec": ".transform", "check_crop": ".transform", "crop": ".transform", "estimate_norm": ".transform",
    "estimate_similarity": ".transform", "invert_affine": ".transform", "norm_crop": ".transform",
    "transform_points": ".transform",
}  # fmt: skip

__all__ = sorted([*_EXPORTS, "nms"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
