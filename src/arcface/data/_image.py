"""Private image helpers shared by the readers and the RecordIO packer (Pillow only; OpenCV optional).

Pillow is the one decoder: it is a core dependency and, unlike ``cv2.imdecode``, it refuses a
truncated JPEG instead of silently filling the missing rows with grey, so a damaged file is caught
and reported rather than trained on.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")


class ImageDecodeError(ValueError):
    """Bytes that are not a readable image."""


def decode_image(buf: bytes) -> Image.Image:
    """Decode encoded image bytes (JPEG, PNG, ...) into a fully loaded RGB PIL image.

    Raises:
        ImageDecodeError: the bytes are empty, truncated or not an image.
    """
    if not buf:
        raise ImageDecodeError("empty image bytes")
    try:
        with Image.open(io.BytesIO(buf)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageDecodeError(f"cannot decode image ({len(buf)} bytes): {type(e).__name__}: {e}") from e


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read and decode an image file into an RGB PIL image.

    Raises:
        OSError: the file cannot be read.
        ImageDecodeError: the file is not a readable image.
    """
    with open(path, "rb") as f:
        return decode_image(f.read())


def prepare_image(img: Image.Image, image_size: int | None, center_crop: int | None) -> np.ndarray:
    """Optionally centre-crop a square, then optionally resize; return uint8 (H, W, 3) RGB.

    Args:
        img: RGB PIL image.
        image_size: resize to (image_size, image_size) when the image differs; None keeps the size.
        center_crop: side of the central square kept before resizing; None keeps the whole image.

    Raises:
        ValueError: the image is smaller than ``center_crop``.
    """
    if center_crop is not None:
        w, h = img.size
        if center_crop > w or center_crop > h:
            raise ValueError(f"image {w}x{h} is smaller than center_crop={center_crop}")
        left, top = (w - center_crop) // 2, (h - center_crop) // 2
        img = img.crop((left, top, left + center_crop, top + center_crop))
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img)  # (H, W, 3) uint8
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got array of shape {arr.shape}")
    return arr


def encode_image(img: np.ndarray | Image.Image, encoding: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an RGB image as JPEG (lossy, ``quality``) or PNG (lossless).

    Args:
        img: uint8 (H, W, 3) RGB array or PIL image.
        encoding: "jpeg" or "png".
        quality: JPEG quality 1..100 (ignored for PNG).
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img = img.convert("RGB")
    out = io.BytesIO()
    if encoding == "jpeg":
        img.save(out, format="JPEG", quality=int(quality))
    elif encoding == "png":
        img.save(out, format="PNG")
    else:
        raise ValueError(f"unknown image encoding {encoding!r}; use 'jpeg' or 'png'")
    return out.getvalue()
