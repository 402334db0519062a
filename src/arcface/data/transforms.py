"""Image transforms for training and evaluation: uint8 RGB (H, W, 3) -> float32 (3, H, W).

The input normalisation is the model contract's (the embedding contract, docs/architecture.md): colour order, then
``(x - mean) / std``. Our own models take RGB ``(x - 127.5) / 127.5`` (the defaults here); a model that is fine-tuned
keeps its own (the bundled default model: ``(x - 127.5) / 128``), and the trainer builds the transforms from the
contract with :meth:`TrainTransform.for_contract` / :meth:`EvalTransform.for_contract`.

The transforms are small picklable classes (not closures) so datasets can be sent to DataLoader workers under any
start method (fork, spawn, forkserver).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

#: Our models' normalisation: ``(x - MEAN) / STD`` maps [0, 255] to [-1, 1].
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


def normalize_(x: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """Normalise a float tensor in place: ``(x - mean) / std``.

    Args:
        x: float tensor of raw pixel values in [0, 255], any shape, e.g. (3, H, W) or (B, 3, H, W).
        mean: subtracted.
        std: divided by.

    Returns:
        ``x`` itself, normalised.
    """
    if not x.is_floating_point():
        raise TypeError(f"normalize_ needs a floating-point tensor, got {x.dtype}")
    return x.sub_(mean).div_(std)


def to_tensor(
    img: np.ndarray | Image.Image, mean: float = MEAN, std: float = STD, color: str = "RGB"
) -> torch.Tensor:
    """Convert an RGB uint8 image to a normalised float32 tensor.

    Args:
        img: uint8 array (H, W, 3) in RGB order (a PIL image is converted to RGB first; a grey
            (H, W) array is repeated over three channels).
        mean: subtracted from the pixel values.
        std: the difference is divided by it.
        color: channel order of the output, "RGB" or "BGR" (the model's).

    Returns:
        float32 tensor (3, H, W), ``(x - mean) / std`` (values in [-1, 1] with the defaults).
    """
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"to_tensor expects an (H, W, 3) RGB image, got shape {tuple(img.shape)}")
    if img.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8 pixels, got {img.dtype}")
    if color == "BGR":
        img = img[:, :, ::-1]
    elif color != "RGB":
        raise ValueError(f"color must be RGB or BGR, got {color!r}")
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, H, W) uint8
    return normalize_(chw.to(torch.float32), mean, std)


class _Normalise:
    """The contract's normalisation: colour order, mean, std."""

    def __init__(self, mean: float = MEAN, std: float = STD, color: str = "RGB") -> None:
        if color not in ("RGB", "BGR"):
            raise ValueError(f"color must be RGB or BGR, got {color!r}")
        if not std:
            raise ValueError("std must not be zero")
        self.mean, self.std, self.color = float(mean), float(std), color

    @classmethod
    def for_contract(cls, contract: Any, **kwargs: Any):
        """The transform a model contract asks for (its ``mean``, ``std`` and ``color``)."""
        return cls(mean=contract.mean, std=contract.std, color=contract.color, **kwargs)

    def _tensor(self, img: np.ndarray | Image.Image) -> torch.Tensor:
        return to_tensor(img, self.mean, self.std, self.color)

    def _norm_repr(self) -> str:
        return f"mean={self.mean:g}, std={self.std:g}, color={self.color}"


class TrainTransform(_Normalise):
    """Random horizontal flip (probability ``p``), then :func:`to_tensor` with the contract's normalisation.

    The coin is drawn from torch's global generator, which DataLoader seeds differently in each
    worker, so flips are not repeated across workers.
    """

    def __init__(
        self, flip: bool = True, p: float = 0.5, *, mean: float = MEAN, std: float = STD, color: str = "RGB"
    ) -> None:
        super().__init__(mean, std, color)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.flip = flip
        self.p = p

    def __call__(self, img: np.ndarray | Image.Image) -> torch.Tensor:
        """Map uint8 (H, W, 3) RGB to float32 (3, H, W), randomly mirrored left-right."""
        x = self._tensor(img)  # (3, H, W)
        if self.flip and self.p > 0 and torch.rand(()).item() < self.p:
            x = x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"TrainTransform(flip={self.flip}, p={self.p}, {self._norm_repr()})"


class EvalTransform(_Normalise):
    """Deterministic :func:`to_tensor` with the contract's normalisation (no augmentation)."""

    def __call__(self, img: np.ndarray | Image.Image) -> torch.Tensor:
        """Map uint8 (H, W, 3) RGB to float32 (3, H, W)."""
        return self._tensor(img)

    def __repr__(self) -> str:
        return f"EvalTransform({self._norm_repr()})"


def train_transform(flip: bool = True, p: float = 0.5) -> TrainTransform:
    """The standard training transform of our models: random horizontal flip (p=0.5), to tensor, normalise."""
    return TrainTransform(flip=flip, p=p)


def eval_transform() -> EvalTransform:
    """The evaluation transform of our models: to tensor, normalise."""
    return EvalTransform()
