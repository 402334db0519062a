"""Similarity transforms (Umeyama) and the aligned crop of the embedding contract.

All matrices are 2x3 affine matrices ``M = [A | t]`` acting on (x, y) column vectors in pixel
coordinates, the convention of ``cv2.warpAffine``: ``p' = A @ p + t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from arcface.align.template import TEMPLATE_NAME, TEMPLATE_SIZE, template_for_size

__all__ = [
    "CropSpec",
    "check_crop",
    "crop",
    "estimate_norm",
    "estimate_similarity",
    "invert_affine",
    "norm_crop",
    "transform_points",
]


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` onto ``dst`` (Umeyama 1991).

    Rotation, uniform scale and translation; a reflection is never returned (for mirrored input the best
    proper rotation is chosen). Minimises ``sum ||s * R @ src_i + t - dst_i||^2``.

    Args:
        src: (N, 2) source points, N >= 2, not all equal.
        dst: (N, 2) target points.

    Returns:
        (2, 3) float64 matrix ``[s * R | t]``.

    Raises:
        ValueError: on mismatched shapes, fewer than two points, non-finite values or coincident source points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"src and dst must both be (N, 2), got {src.shape} and {dst.shape}")
    if src.shape[0] < 2:
        raise ValueError("at least two point pairs are needed")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    xs, xd = src - mu_src, dst - mu_dst
    var_src = (xs**2).sum(1).mean()
    if var_src <= 1e-12:
        raise ValueError("source points coincide; the transform is undefined")
    cov = xd.T @ xs / src.shape[0]  # (2, 2)
    u, sing, vt = np.linalg.svd(cov)
    # Force det(R) = +1: flip the weakest axis when U @ Vt would be a reflection.
    d = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rot = u @ np.diag(d) @ vt
    scale = float(sing @ d) / var_src
    t = mu_dst - scale * rot @ mu_src
    return np.hstack([scale * rot, t[:, None]])


def estimate_norm(landmarks: np.ndarray, image_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The transform that maps five landmarks onto the template for an ``image_size`` crop.

    Args:
        landmarks: (5, 2) (x, y) points in image coordinates, ordered left eye, right eye, nose, left mouth
            corner, right mouth corner (image-left first).
        image_size: crop side; divisible by 112 or 128 (see :func:`~arcface.align.template.template_for_size`).

    Returns:
        (2, 3) float64 matrix from image to crop coordinates.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2), got {landmarks.shape}")
    return estimate_similarity(landmarks, template_for_size(image_size))


def norm_crop(image: np.ndarray, landmarks: np.ndarray, image_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The aligned face crop of the embedding contract: similarity warp, bilinear, border value 0.

    Args:
        image: (H, W, C) or (H, W) image (uint8 RGB for the models of this package).
        landmarks: (5, 2) landmarks in ``image`` coordinates (see :func:`estimate_norm`).
        image_size: crop side, divisible by 112 or 128.

    Returns:
        (image_size, image_size, C) array of the input dtype.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be (H, W) or (H, W, C), got {image.shape}")
    matrix = estimate_norm(landmarks, image_size)
    size = int(image_size)
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix: maps crop coordinates back to image coordinates.

    Args:
        matrix: (2, 3) affine matrix ``[A | t]`` with invertible ``A``.

    Returns:
        (2, 3) float64 matrix ``[A^-1 | -A^-1 t]``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f"matrix must be (2, 3), got {matrix.shape}")
    a_inv = np.linalg.inv(matrix[:, :2])
    return np.hstack([a_inv, -a_inv @ matrix[:, 2:]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points.

    Args:
        matrix: (2, 3) affine matrix.
        points: (..., 2) (x, y) points.

    Returns:
        (..., 2) float64 transformed points.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    if matrix.shape != (2, 3) or points.shape[-1] != 2:
        raise ValueError(f"need a (2, 3) matrix and (..., 2) points, got {matrix.shape} and {points.shape}")
    return points @ matrix[:, :2].T + matrix[:, 2]


class _HasCrop(Protocol):
    """What :func:`crop` reads: a :class:`CropSpec` or a model contract (the same three fields)."""

    input_size: tuple[int, int]
    template: str
    template_points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class CropSpec:
    """What an aligned crop is: its (H, W) and the template its five landmarks go to.

    The same fields as a :class:`~arcface.inference.contract.ModelContract`, so :func:`crop` takes either.

    Attributes:
        input_size: (H, W) of the crop.
        template: ``"arcface_112"`` (the one template, scaled to the size by :func:`template_for_size`) or the name
            of a foreign template whose points are ``template_points``, in the crop's own pixels.
        template_points: five (x, y) points (used for foreign templates only).
    """

    input_size: tuple[int, int] = (TEMPLATE_SIZE, TEMPLATE_SIZE)
    template: str = TEMPLATE_NAME
    template_points: tuple[tuple[float, float], ...] = ()

    @classmethod
    def square(cls, size: int) -> CropSpec:
        """The arcface template on a ``size`` x ``size`` crop (divisible by 112 or 128)."""
        spec = cls((int(size), int(size)))
        check_crop(spec)
        return spec

    @classmethod
    def of(cls, spec: _HasCrop) -> CropSpec:
        """The crop a model contract (or any object with the three fields) asks for, checked."""
        out = cls(tuple(spec.input_size), spec.template, tuple(map(tuple, spec.template_points)))
        check_crop(out)
        return out


def check_crop(spec: _HasCrop) -> None:
    """Raise ValueError when this crop cannot be made (a non-square arcface crop, a size the template cannot take)."""
    h, w = spec.input_size
    if spec.template == TEMPLATE_NAME:
        if h != w:
            raise ValueError(f"the {TEMPLATE_NAME} template needs a square crop, got {h}x{w}")
        template_for_size(h)  # raises for sizes the template does not scale to
    elif len(spec.template_points) != 5:
        raise ValueError(f"template {spec.template!r} needs five points, got {len(spec.template_points)}")


def crop(image: np.ndarray, landmarks: np.ndarray, spec: _HasCrop) -> np.ndarray:
    """The aligned crop a model contract (or a :class:`CropSpec`) asks for: its template, its input size.

    The one crop function of the project: the face pipeline, the evaluation, IJB templates and ``arcface align``
    all cut their crops here.

    Args:
        image: (H, W, 3) uint8 RGB.
        landmarks: (5, 2) landmarks in ``image`` coordinates.
        spec: a contract or a :class:`CropSpec`.

    Returns:
        (h, w, 3) uint8 crop, (h, w) = ``spec.input_size``.
    """
    h, w = spec.input_size
    if spec.template == TEMPLATE_NAME:
        return norm_crop(image, landmarks, image_size=h)
    # A foreign template: its points are given in the crop's own pixels.
    matrix = estimate_similarity(np.asarray(landmarks, np.float64), np.asarray(spec.template_points, np.float64))
    return cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )  # fmt: skip
