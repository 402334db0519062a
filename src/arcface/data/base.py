"""The dataset registry and the shared base class: bad items are reported and skipped, never fatal.

Every reader returns ``(image, label)`` with ``image`` a float32 tensor (3, H, W), RGB, normalised
``(x - 127.5) / 127.5``, and ``label`` an int in ``[0, num_classes)``. A subclass only says how to
read item ``i`` (:meth:`FaceDataset._read`) and how to name it in a message
(:meth:`FaceDataset._source`); the base class does cropping, resizing, the transform, and the
skip-and-report policy.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from arcface.data.transforms import train_transform
from arcface.registry import Registry

logger = logging.getLogger("arcface.data")

DATASETS: Registry = Registry("dataset")

Transform = Callable[[np.ndarray], Any]

# What reading one item may raise when the item (not the code) is broken: missing or unreadable
# file (OSError), undecodable image or bad label (ValueError, incl. arcface.io.images.ImageError and
# RecordIOError), a short record header (struct.error, EOFError).
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, struct.error)


class BadItem(NamedTuple):
    """One unreadable item: its dataset index, where it lives (path or record), and why it failed."""

    index: int
    source: str
    reason: str


def build_dataset(kind: str, **kwargs: Any) -> Dataset:
    """Build the dataset registered as ``kind`` ("image_folder", "list_file", "recordio", "synthetic")."""
    return DATASETS.build(kind, **kwargs)


class FaceDataset(Dataset):
    """Base class of the file-backed readers (image folder, list file, RecordIO).

    Attributes:
        num_classes: number of identities; labels are in ``[0, num_classes)``.
        bad_items: index -> reason for every item found unreadable so far *in this process*
            (DataLoader workers keep their own copies; call :meth:`scan` for a full report).
        transform: callable uint8 (H, W, 3) RGB -> float32 (3, H, W).
    """

    num_classes: int

    def __init__(
        self,
        image_size: int | None = 112,
        center_crop: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        if image_size is not None and image_size <= 0:
            raise ValueError(f"image_size must be positive or None, got {image_size}")
        if center_crop is not None and center_crop <= 0:
            raise ValueError(f"center_crop must be positive or None, got {center_crop}")
        self.image_size = image_size
        self.center_crop = center_crop
        self.transform: Transform = train_transform() if transform is None else transform
        self.bad_items: dict[int, str] = {}

    # --- what a subclass provides -------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def _read(self, index: int) -> tuple[np.ndarray, int]:
        """Read item ``index`` as ((H, W, 3) uint8 RGB, label); raise one of LOAD_ERRORS when broken."""
        raise NotImplementedError

    def _source(self, index: int) -> str:
        """A human-readable location of item ``index`` (a path, or a record key and offset)."""
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------------
    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Read, crop and resize item ``index`` without the transform and without skipping.

        Returns:
            (uint8 array (H, W, 3) RGB, label).

        Raises:
            One of ``LOAD_ERRORS`` when the item is unreadable.
        """
        img, label = self._read(index)
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        return prepare_image(img, self.image_size, self.center_crop), label

    def _mark_bad(self, index: int, err: BaseException) -> None:
        reason = f"{type(err).__name__}: {err}"
        self.bad_items[index] = reason
        logger.warning("skipping unreadable item %d (%s): %s", index, self._source(index), reason)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return (image float32 (3, H, W), label int) for ``index``.

        An unreadable item is logged (index and path/record), remembered in ``bad_items``, and
        replaced by the next readable one (index + 1, wrapping around).

        Raises:
            IndexError: ``index`` is out of range.
            RuntimeError: no item of the dataset is readable.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for dataset of length {n}")
        index %= n
        for step in range(n):
            j = (index + step) % n
            if j in self.bad_items:
                continue
            try:
                img, label = self.load(j)
            except LOAD_ERRORS as e:
                self._mark_bad(j, e)
                continue
            return self.transform(img), label
        first = sorted(self.bad_items.items())[:3]
        detail = "; ".join(f"{i} ({self._source(i)}): {r}" for i, r in first)
        raise RuntimeError(f"all {n} items of {type(self).__name__} are unreadable, e.g. {detail}")

    def scan(self) -> list[BadItem]:
        """Read every item once and return the unreadable ones (also recorded in ``bad_items``).

        This decodes the whole dataset; it is meant for checking a new data set before training.
        """
        bad: list[BadItem] = []
        for i in range(len(self)):
            try:
                self.load(i)
            except LOAD_ERRORS as e:
                reason = f"{type(e).__name__}: {e}"
                self.bad_items[i] = reason
                bad.append(BadItem(i, self._source(i), reason))
        if bad:
            logger.warning("%s: %d of %d items are unreadable", type(self).__name__, len(bad), len(self))
        return bad


def prepare_image(img: np.ndarray, image_size: int | None, center_crop: int | None) -> np.ndarray:
    """Optionally centre-crop a square, then optionally resize (Pillow bilinear); uint8 (H, W, 3) RGB.

    Args:
        img: (H, W, 3) uint8 RGB, as :func:`arcface.io.images.load_image` gives it.
        image_size: resize to (image_size, image_size) when the image differs; None keeps the size.
        center_crop: side of the central square kept before resizing; None keeps the whole image.

    Raises:
        ValueError: the image is smaller than ``center_crop``.
    """
    if center_crop is not None:
        h, w = img.shape[:2]
        if center_crop > w or center_crop > h:
            raise ValueError(f"image {w}x{h} is smaller than center_crop={center_crop}")
        top, left = (h - center_crop) // 2, (w - center_crop) // 2
        img = img[top : top + center_crop, left : left + center_crop]
    if image_size is not None and img.shape[:2] != (image_size, image_size):
        resized = Image.fromarray(np.ascontiguousarray(img)).resize((image_size, image_size), Image.Resampling.BILINEAR)
        img = np.asarray(resized)
    return np.ascontiguousarray(img)
