"""Image transforms for training and evaluation: uint8 RGB (H, W, 3) -> float32 (3, H, W).

Our models take RGB, float, ``(x - 127.5) / 127.5``, NCHW (see DESIGN.md, the embedding contract).
The transforms are small picklable classes (not closures) so datasets can be sent to DataLoader
workers under any start method (fork, spawn, forkserver).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = 127.5
STD = 127.5

__all__ = [
    "MEAN",
    "STD",
    "EvalTransform",
    "TrainTransform",
    "eval_transform",
    "normalize_",
    "to_tensor",
    "train_transform",
]


def normalize_(x: torch.Tensor) -> torch.Tensor:
    """Normalise a float tensor in place: ``(x - 127.5) / 127.5`` maps [0, 255] to [-1, 1].

    Args:
        x: float tensor of raw pixel values in [0, 255], any shape, e.g. (3, H, W) or (B, 3, H, W).

    Returns:
        ``x`` itself, normalised.
    """
    if not x.is_floating_point():
        raise TypeError(f"normalize_ needs a floating-point tensor, got {x.dtype}")
    return x.sub_(MEAN).div_(STD)


def to_tensor(img: np.ndarray | Image.Image) -> torch.Tensor:
    """Convert an RGB uint8 image to a normalised float32 tensor.

    Args:
        img: uint8 array (H, W, 3) in RGB order (a PIL image is converted to RGB first; a grey
            (H, W) array is repeated over three channels).

    Returns:
        float32 tensor (3, H, W) with values in [-1, 1].
    """
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"to_tensor expects an (H, W, 3) RGB image, got shape {tuple(img.shape)}")
    if img.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8 pixels, got {img.dtype}")
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, H, W) uint8
    return normalize_(chw.to(torch.float32))


class TrainTransform:
    """Random horizontal flip (probability ``p``), then :func:`to_tensor`.

    The coin is drawn from torch's global generator, which DataLoader seeds differently in each
    worker, so flips are not repeated across workers.
    """

    def __init__(self, flip: bool = True, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.flip = flip
        self.p = p

    def __call__(self, img: np.ndarray | Image.Image) -> torch.Tensor:
        """Map uint8 (H, W, 3) RGB to float32 (3, H, W), randomly mirrored left-right."""
        x = to_tensor(img)  # (3, H, W)
        if self.flip and self.p > 0 and torch.rand(()).item() < self.p:
            x = x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"TrainTransform(flip={self.flip}, p={self.p})"


class EvalTransform:
    """Deterministic :func:`to_tensor` (no augmentation)."""

    def __call__(self, img: np.ndarray | Image.Image) -> torch.Tensor:
        """Map uint8 (H, W, 3) RGB to float32 (3, H, W)."""
        return to_tensor(img)

    def __repr__(self) -> str:
        return "EvalTransform()"


def train_transform(flip: bool = True, p: float = 0.5) -> TrainTransform:
    """The standard training transform: random horizontal flip (p=0.5), to tensor, normalise."""
    return TrainTransform(flip=flip, p=p)


def eval_transform() -> EvalTransform:
    """The evaluation transform: to tensor, normalise."""
    return EvalTransform()
