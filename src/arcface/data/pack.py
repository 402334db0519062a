"""Pack images into an insightface-layout RecordIO pair (``prefix.rec`` + ``prefix.idx``).

Layout written (what insightface's ``face2rec2.py`` writes and its ``MXFaceDataset`` reads):

- keys 1..N: one image each, ``IRHeader(flag=0, label=float(class), id=key, id2=0)`` + encoded image,
  grouped by class in ascending label order;
- key 0: the header, labels ``[N + 1, N + 1 + C]``;
- keys N+1..N+C: one record per class ``c`` with labels ``[first_key, end_key)`` of its images
  (an empty range for a label without images).

Record 0 comes first in the file (written as a same-size placeholder and filled in at the end), then
the images, then the identity records; the ``.idx`` lists keys in ascending order.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from arcface.data.base import LOAD_ERRORS, prepare_image
from arcface.data.folder import list_identities, read_list_file
from arcface.data.recordio import IRHeader, RecordIOWriter, pack
from arcface.io.images import load_image

__all__ = ["pack_folder", "pack_list", "pack_samples"]

logger = logging.getLogger("arcface.data")

_ENCODINGS = ("jpeg", "png", "copy")


def _header_payload(first_id: int, end_id: int) -> bytes:
    return pack(IRHeader(0, [first_id, end_id], 0, 0), b"")


def pack_samples(
    samples: Sequence[tuple[str, int]],
    prefix: str | os.PathLike[str],
    num_classes: int | None = None,
    quality: int = 95,
    image_size: int | None = None,
    encoding: str = "jpeg",
    center_crop: int | None = None,
) -> tuple[int, int]:
    """Pack (path, label) pairs into ``prefix.rec`` / ``prefix.idx``.

    Args:
        samples: (image path, label) pairs; labels in ``[0, num_classes)``.
        prefix: output path without suffix (``.../train`` writes ``train.rec`` and ``train.idx``).
        num_classes: number of identity records; default ``max(label) + 1``.
        quality: JPEG quality when ``encoding == "jpeg"``.
        image_size: resize to (image_size, image_size) before encoding; None keeps the size.
        encoding: "jpeg" (re-encode), "png" (lossless) or "copy" (store the file bytes unchanged,
            as insightface's face2rec does; needs ``image_size`` and ``center_crop`` None).
        center_crop: side of the central square cut before resizing; None keeps the whole image.

    Returns:
        (number of images written, number of classes). Unreadable images are logged and skipped.

    Raises:
        ValueError: bad arguments, a label outside ``[0, num_classes)``, or no readable image.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {_ENCODINGS}")
    if encoding == "copy" and (image_size is not None or center_crop is not None):
        raise ValueError("encoding='copy' stores files unchanged; it cannot resize or crop")
    if not samples:
        raise ValueError("nothing to pack: no samples")
    top = max(label for _, label in samples)
    num_classes = top + 1 if num_classes is None else int(num_classes)
    if top >= num_classes or min(label for _, label in samples) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes}), found up to {top}")

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(samples, key=lambda s: s[1])  # stable: file order kept within a class
    ranges: list[list[int]] = [[0, 0] for _ in range(num_classes)]
    key = 1
    with RecordIOWriter(f"{prefix}.rec", f"{prefix}.idx") as writer:
        # record 0 first, as a placeholder of the same size, filled in once the counts are known
        writer.write_idx(0, _header_payload(0, 0))
        for path, label in ordered:
            try:
                img = load_image(path)
                if encoding == "copy":
                    with open(path, "rb") as f:
                        data = f.read()
                else:
                    data = _encode(prepare_image(img, image_size, center_crop), encoding, quality)
            except LOAD_ERRORS as e:
                logger.warning("pack: skipping unreadable image %s: %s: %s", path, type(e).__name__, e)
                continue
            if ranges[label][1] == 0:
                ranges[label][0] = key
            ranges[label][1] = key + 1
            writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), data))
            key += 1
        num_images = key - 1
        if num_images == 0:
            raise ValueError(f"no readable image among the {len(samples)} samples")
        first_id = num_images + 1
        start = 1
        for c, (lo, hi) in enumerate(ranges):
            if hi == 0:  # a label without images: an empty range where its images would be
                lo = hi = start
            start = hi
            writer.write_idx(first_id + c, pack(IRHeader(0, [lo, hi], first_id + c, 0), b""))
        writer.overwrite(0, _header_payload(first_id, first_id + num_classes))
    logger.info("packed %d images of %d classes into %s.rec", num_images, num_classes, prefix)
    return num_images, num_classes


def pack_folder(
    src_dir: str | os.PathLike[str],
    prefix: str | os.PathLike[str],
    quality: int = 95,
    image_size: int | None = None,
    encoding: str = "jpeg",
    center_crop: int | None = None,
    min_images_per_class: int = 1,
) -> tuple[int, int]:
    """Pack an identity folder (``src_dir/<identity>/<image>``) into ``prefix.rec`` / ``prefix.idx``.

    Labels follow sorted folder names, exactly as :class:`~arcface.data.ImageFolderDataset` assigns
    them. See :func:`pack_samples` for the arguments and the layout.

    Returns:
        (number of images written, number of classes).
    """
    classes, samples = list_identities(src_dir, min_images_per_class)
    return pack_samples(samples, prefix, len(classes), quality, image_size, encoding, center_crop)


def pack_list(
    list_file: str | os.PathLike[str],
    prefix: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    quality: int = 95,
    image_size: int | None = None,
    encoding: str = "jpeg",
    center_crop: int | None = None,
    num_classes: int | None = None,
) -> tuple[int, int]:
    """Pack the images of a ``path label`` list file (see :func:`~arcface.data.read_list_file`).

    Returns:
        (number of images written, number of classes).
    """
    samples = read_list_file(list_file, root)
    return pack_samples(samples, prefix, num_classes, quality, image_size, encoding, center_crop)


def _encode(img: np.ndarray, encoding: str, quality: int) -> bytes:
    """An (H, W, 3) uint8 RGB image as JPEG (lossy, ``quality``) or PNG (lossless) bytes, with Pillow."""
    out = io.BytesIO()
    pil = Image.fromarray(img)
    if encoding == "jpeg":
        pil.save(out, format="JPEG", quality=int(quality))
    else:
        pil.save(out, format="PNG")
    return out.getvalue()
