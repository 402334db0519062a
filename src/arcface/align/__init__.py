"""Face alignment: detect five landmarks, map them onto the template, warp to the crop the models expect.

Alignment (the embedding contract of DESIGN.md):
    >>> crop = norm_crop(image, landmarks)             # (112, 112, 3) uint8
    >>> M = estimate_norm(landmarks, image_size=112)   # (2, 3) image -> crop
    >>> transform_points(invert_affine(M), crop_points)  # crop -> image coordinates

Detection (``DETECTORS``: mtcnn, scrfd, yunet):
    >>> detector = create_detector("mtcnn")
    >>> faces = detector.detect(image)  # image (H, W, 3) uint8 RGB -> list[Detection], main face first
    >>> crop = norm_crop(image, faces[0].landmarks)
"""

from arcface.align.detection import DETECTORS, Detection, FaceDetector, create_detector, rank_faces
from arcface.align.mtcnn import MTCNN
from arcface.align.nms import nms
from arcface.align.scrfd import SCRFD
from arcface.align.template import ARCFACE_TEMPLATE, TEMPLATE_SIZE, template_for_size
from arcface.align.transform import estimate_norm, estimate_similarity, invert_affine, norm_crop, transform_points
from arcface.align.yunet import YuNet

__all__ = [
    "ARCFACE_TEMPLATE",
    "DETECTORS",
    "MTCNN",
    "SCRFD",
    "TEMPLATE_SIZE",
    "Detection",
    "FaceDetector",
    "YuNet",
    "create_detector",
    "estimate_norm",
    "estimate_similarity",
    "invert_affine",
    "nms",
    "norm_crop",
    "rank_faces",
    "template_for_size",
    "transform_points",
]
