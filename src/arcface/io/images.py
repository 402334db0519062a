"""The one image loader of the project: detection, embedding, the REST service and the batch CLIs.

Every way an image enters the project goes through :func:`load_image` (or :func:`image_from_upload`
for uploads) and comes out as one thing: a C-contiguous ``(H, W, 3)`` uint8 RGB array, upright as a
photo viewer shows it. Anything that cannot become such an array raises :class:`ImageError`, a
``ValueError`` whose message is one line naming the input (``photo.jpg: file is empty``) and whose
``reason`` says what kind of problem it is, so that

* the CLI prints ``str(error)`` on stderr and exits non-zero, without a traceback;
* batch commands record ``(item, error.reason, str(error))`` and go on with the next item;
* the REST service maps ``reason`` to an HTTP status (suggested: ``too_large`` -> 413,
  ``corrupt`` -> 422, ``not_image`` / ``unsupported`` -> 415, ``empty`` -> 400; ``missing`` and
  ``unreadable`` only come from paths, which the service never takes).

Decisions (the contract other modules rely on):

* **Transparency** (RGBA, LA, PA, palette or greyscale/RGB with a transparency key) is composited on
  **white** (``background=(255, 255, 255)``): cut-out portraits, stickers and logos are made to be
  seen on a white page, and dark hair on black would lose the head outline the detector needs.
* **16-bit data** (16-bit PNG/TIFF, PIL mode ``I;16``/``I``, ``uint16`` arrays) is scaled by
  ``>> 8``, which maps 0..65535 onto 0..255 the way Pillow itself reduces 16-bit RGB PNGs; it is
  never clipped at 255. A ``uint16`` array always means 16-bit data, even when its values are small.
* **Float arrays are rejected** (reason ``unsupported``): ``0..1`` and ``0..255`` are both common and
  a dark 0..255 image looks like a bright 0..1 one, so guessing would silently ruin embeddings.
  Other integer arrays are accepted when every value lies in 0..255; ``bool`` arrays are rejected.
* **Arrays are taken as RGB.** An OpenCV ``cv2.imread`` result is BGR: flip it (``img[..., ::-1]``)
  before passing it in, or better, pass the path.
* **Pixel limit**: ``max_pixels`` (default 40 MP, ample for any camera photo) is checked from the
  header, before a single pixel is decoded, so a 30000x30000 PNG of a few hundred bytes costs
  nothing. Pillow's own decompression-bomb guard (a warning past ``PIL.Image.MAX_IMAGE_PIXELS``,
  an error past twice that) is left untouched globally; its warning is silenced only inside this
  module's calls and its error is reported as ``too_large``. The limit applies to arrays and PIL images too.
* **Truncated files are errors** (reason ``corrupt``): ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
  never set here (if other code sets it globally, Pillow will pad truncated JPEGs with grey).
* **Formats**: JPEG (and MPO, what many phones write), PNG, WebP, BMP, GIF, TIFF, PPM/PGM and AVIF
  (when Pillow has it). Other formats Pillow knows (EPS, which runs Ghostscript, PSD, ICO, ...)
  are refused with reason ``unsupported`` rather than parsed, since uploads are untrusted. Animated
  GIF/WebP and multi-page TIFF give their first frame.
* **EXIF orientation** is applied (``PIL.ImageOps.exif_transpose``); a broken EXIF block is logged
  and ignored, since the pixels themselves are fine. Colour profiles (ICC) are not applied; CMYK is
  converted with Pillow's formula (Adobe's inverted CMYK JPEGs are recognised by Pillow).

Threads: silencing Pillow's warning uses ``warnings.catch_warnings``, which before Python 3.14 swaps
the process-wide warning filters for the duration of a decode; the loader itself keeps no state.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from typing import IO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from arcface.io.walk import FilePolicy, FileRefused, open_regular

__all__ = [
    "DEFAULT_BACKGROUND",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "ImageError",
    "ImageSource",
    "Reason",
    "image_from_upload",
    "load_image",
]

logger = logging.getLogger(__name__)

Reason = Literal["missing", "unreadable", "empty", "not_image", "corrupt", "too_large", "unsupported"]
"""Why an image was refused; a stable code for programs (HTTP mapping, batch reports)."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
"""Everything :func:`load_image` accepts."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Default pixel limit (width x height): above any phone or DSLR photo, far below a memory problem."""

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
"""Default size limit of an encoded upload, in bytes (20 MiB)."""

DEFAULT_BACKGROUND = (255, 255, 255)
"""RGB colour that transparent pixels are composited on (white; see the module docstring)."""

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "AVIF")
"""Pillow format names that are decoded; anything else is refused (AVIF only when Pillow has it)."""

# Magic numbers of the supported formats: data that starts like one but that Pillow cannot open is
# a damaged file ("corrupt"), not a wrong kind of file ("not_image").
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")
_AVIF_BRANDS = (b"avif", b"avis")
_SNIFF_BYTES = 512

# A path given to the loader names one file explicitly: links are followed and no size cap applies (the pixel limit
# does); only files that are not regular (FIFOs, sockets, devices) are refused.
_ANY_REGULAR_FILE = FilePolicy(follow_links=True, max_bytes=None)


class ImageError(ValueError):
    """An input that cannot be turned into an RGB image.

    ``str(error)`` is one line, ``"<source>: <problem>"``, e.g.
    ``"big.png: 20000x20000 = 400 MP exceeds the pixel limit of 40 MP (max_pixels)"``.

    Attributes:
        source: the file name, or ``"<bytes>"``, ``"<array>"``, ``"<PIL image>"``, ``"<upload>"``, or
            the ``name`` given to the loader.
        reason: the kind of problem, one of :data:`Reason`: ``missing`` (no such file),
            ``unreadable`` (a directory, no permission, I/O error), ``empty`` (0 bytes or 0 pixels),
            ``not_image`` (text, HTML, PDF, ... ), ``corrupt`` (truncated or damaged image data),
            ``too_large`` (over the pixel or byte limit), ``unsupported`` (a real image in a format,
            mode or dtype this loader refuses).
        problem: the message without the source.
    """

    def __init__(self, source: str, reason: Reason, problem: str) -> None:
        self.source = source
        self.reason = reason
        self.problem = problem
        super().__init__(f"{source}: {problem}")

    def __reduce__(self):  # picklable across DataLoader / multiprocessing workers
        return (type(self), (self.source, self.reason, self.problem))


# --------------------------------------------------------------------------------------------------
# Public API


def load_image(
    src: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Load an image from a path, encoded bytes, a PIL image or a numpy array as upright RGB.

    Args:
        src: a file path (``str`` or ``os.PathLike``); encoded image bytes (``bytes``, ``bytearray``,
            ``memoryview``, e.g. an upload); a ``PIL.Image.Image`` (any mode; its current frame); or a
            numpy array ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, of
            dtype uint8, uint16 (16-bit data, scaled by ``>> 8``) or another integer type with values
            in 0..255. Float and bool arrays are refused.
        max_pixels: largest allowed ``width * height``, checked before decoding; ``None`` disables
            this check (Pillow's own decompression-bomb limit still applies to encoded input).
        name: how to call the input in error messages (default: the path, ``"<bytes>"``,
            ``"<array>"``, or the PIL image's filename / ``"<PIL image>"``).
        background: RGB colour transparent pixels are composited on.

    Returns:
        A new, writeable, C-contiguous ``(H, W, 3)`` uint8 RGB array with EXIF orientation applied.

    Raises:
        ImageError: the input is missing, empty, not an image, corrupt, too large or unsupported;
            the message is one line naming the input, ``.reason`` says which.
        TypeError: ``src`` is none of the accepted types (a programming error, not bad data).
        ValueError: ``max_pixels`` or ``background`` is invalid.
    """
    _check_max_pixels(max_pixels)
    background = _check_background(background)
    if isinstance(src, np.ndarray):
        return _from_array(src, _label(name, "<array>"), max_pixels, background)
    if isinstance(src, Image.Image):
        default = getattr(src, "filename", None) or "<PIL image>"
        return _from_pil(src, _label(name, os.fsdecode(default)), max_pixels, background, owned=False)
    if isinstance(src, (bytes, bytearray, memoryview)):
        label = _label(name, "<bytes>")
        if memoryview(src).nbytes == 0:
            raise ImageError(label, "empty", "no data (0 bytes)")
        return _decode(io.BytesIO(src), label, max_pixels, background)
    if isinstance(src, (str, os.PathLike)):
        return _from_path(src, name, max_pixels, background)
    raise TypeError(f"load_image() takes a path, bytes, a PIL image or a numpy array, not {type(src).__name__}")


def image_from_upload(
    data: bytes | bytearray | memoryview,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    name: str = "<upload>",
) -> np.ndarray:
    """Decode an uploaded file, checking its byte size before anything else.

    Args:
        data: the encoded image as received.
        max_bytes: largest accepted upload, in bytes.
        max_pixels: largest accepted ``width * height`` (see :func:`load_image`).
        name: how to call the upload in error messages (e.g. the client's file name).

    Returns:
        ``(H, W, 3)`` uint8 RGB, as :func:`load_image`.

    Raises:
        ImageError: ``too_large`` when ``data`` exceeds ``max_bytes``; otherwise as :func:`load_image`.
        TypeError: ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image_from_upload() takes bytes, not {type(data).__name__}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    label = _label(name, "<upload>")
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise ImageError(
            label,
            "too_large",
            f"upload of {_fmt_bytes(size)} exceeds the limit of {_fmt_bytes(max_bytes)} (max_bytes)",
        )
    return load_image(data, max_pixels=max_pixels, name=label)


# --------------------------------------------------------------------------------------------------
# Sources


def _from_path(src: str | os.PathLike[str], name: str | None, max_pixels: int | None, background) -> np.ndarray:
    path = os.fspath(src)
    label = _label(name, os.fsdecode(path) or "<empty path>")
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        raise ImageError(label, "missing", "URLs are not downloaded; save the image to a file first")
    if os.path.isdir(path):
        raise ImageError(label, "unreadable", "is a directory, not an image file")
    try:
        # the one safe opener: never blocks on a FIFO, refuses anything but a regular file on the opened descriptor
        f = open_regular(path, policy=_ANY_REGULAR_FILE)
    except FileRefused as e:
        reason: Reason = "too_large" if e.skipped.reason == "too_large" else "unreadable"
        raise ImageError(label, reason, e.skipped.message.removeprefix(f"{os.fsdecode(path)}: ")) from None
    except FileNotFoundError:
        raise ImageError(label, "missing", "no such file") from None
    except IsADirectoryError:
        raise ImageError(label, "unreadable", "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(label, "unreadable", "permission denied") from None
    except OSError as e:
        raise ImageError(label, "unreadable", f"cannot read file: {_one_line(e.strerror or str(e))}") from e
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageError(label, "empty", "file is empty (0 bytes)")
        return _decode(f, label, max_pixels, background)


def _decode(fp: IO[bytes], label: str, max_pixels: int | None, background) -> np.ndarray:
    """Open lazily, check the header size, then decode (fp stays open until the pixels are copied)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_open_formats())
    except Image.DecompressionBombError as e:
        raise _bomb_error(label, e, max_pixels) from None
    except UnidentifiedImageError:
        fp.seek(0)
        reason, problem = _sniff(fp.read(_SNIFF_BYTES))
        raise ImageError(label, reason, problem) from None
    except MemoryError:
        raise
    except Exception as e:  # a plugin accepted the magic, then choked on the header
        fp.seek(0)
        fmt = _magic_format(fp.read(_SNIFF_BYTES)) or "image"
        raise ImageError(label, "corrupt", f"truncated or corrupt {fmt}: {_detail(e)}") from e
    with im:
        return _from_pil(im, label, max_pixels, background, owned=True)


def _from_pil(im: Image.Image, label: str, max_pixels: int | None, background, *, owned: bool) -> np.ndarray:
    w, h = im.size
    if w == 0 or h == 0:
        raise ImageError(label, "empty", f"image has no pixels ({w}x{h})")
    _check_pixels(label, w, h, max_pixels)
    fmt = im.format or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombError as e:
        raise _bomb_error(label, e, max_pixels) from None
    except MemoryError:
        raise
    except Exception as e:  # OSError "image file is truncated", SyntaxError "broken PNG file", ...
        raise ImageError(label, "corrupt", f"truncated or corrupt {fmt}: {_detail(e)}") from e
    try:
        rotated = ImageOps.exif_transpose(im, in_place=owned)
        if rotated is not None:
            im = rotated
    except Exception as e:  # the photo decodes; only its orientation tag is unreadable
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", label, _detail(e))
    return _pil_to_rgb(im, label, background)


def _pil_to_rgb(im: Image.Image, label: str, background) -> np.ndarray:
    mode = im.mode
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit grey (PNG/TIFF); converting with Pillow would clip at 255 instead of scaling.
        # A transparency key on such an image is ignored.
        grey = _to_uint8(np.asarray(im), label, what=f"mode {mode} image", sixteen_bit=True)
        return _grey_to_rgb(grey)
    if mode == "F":
        raise ImageError(label, "unsupported", "32-bit float images (mode F) are not supported")
    if im.has_transparency_data:
        try:
            rgba = np.asarray(im.convert("RGBA"))
        except (ValueError, OSError) as e:
            raise ImageError(label, "unsupported", f"cannot convert mode {mode} to RGB: {_detail(e)}") from e
        return _composite(rgba, background)
    if mode != "RGB":
        try:
            im = im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX, ...
        except (ValueError, OSError) as e:
            raise ImageError(label, "unsupported", f"cannot convert mode {mode} to RGB: {_detail(e)}") from e
    return np.array(im, dtype=np.uint8, order="C")  # copy: never a view of the PIL buffer


def _from_array(arr: np.ndarray, label: str, max_pixels: int | None, background) -> np.ndarray:
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise ImageError(
            label,
            "unsupported",
            f"array of shape {arr.shape}; expected (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA",
        )
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(label, "empty", f"array has no pixels (shape {arr.shape})")
    _check_pixels(label, w, h, max_pixels)
    arr = _to_uint8(arr, label, what=f"{arr.dtype} array", sixteen_bit=arr.dtype == np.uint16)
    if arr.ndim == 2 or arr.shape[2] == 1:
        return _grey_to_rgb(arr.reshape(h, w))
    if arr.shape[2] == 4:
        return _composite(arr, background)
    return np.array(arr, dtype=np.uint8, order="C")  # copy, so callers never alias the input


# --------------------------------------------------------------------------------------------------
# Pixel helpers


def _to_uint8(arr: np.ndarray, label: str, *, what: str, sixteen_bit: bool) -> np.ndarray:
    """Integer pixels to uint8: 16-bit data by ``>> 8``, other integers only when already 0..255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        raise ImageError(label, "unsupported", f"{what}: convert boolean masks to uint8 (0 / 255) first")
    if arr.dtype.kind == "f":
        raise ImageError(
            label,
            "unsupported",
            f"{what}: float pixels are ambiguous (0..1 or 0..255); convert to uint8 first, "
            "e.g. (x * 255).round().astype(np.uint8) for 0..1 data",
        )
    if arr.dtype.kind not in "iu":
        raise ImageError(label, "unsupported", f"{what}: pixel dtype {arr.dtype} is not supported")
    lo, hi = int(arr.min()), int(arr.max())
    if sixteen_bit:
        if lo < 0 or hi > 65535:
            raise ImageError(label, "unsupported", f"{what}: values {lo}..{hi} do not fit 16 bits (0..65535)")
        return (arr.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
    if lo < 0 or hi > 255:
        raise ImageError(
            label, "unsupported", f"{what}: values {lo}..{hi} outside 0..255 (pass uint16 for 16-bit data)"
        )
    return arr.astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    out = np.empty((*grey.shape, 3), dtype=np.uint8)
    out[...] = grey[..., None]
    return out


def _composite(rgba: np.ndarray, background) -> np.ndarray:
    """Alpha-composite ``(H, W, 4)`` uint8 RGBA over a solid RGB colour, rounding to nearest."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.array(rgb, dtype=np.uint8, order="C")
    a = alpha.astype(np.uint16)
    bg = np.asarray(background, dtype=np.uint16)
    out = (rgb.astype(np.uint16) * a + bg * (255 - a) + 127) // 255
    return np.ascontiguousarray(out, dtype=np.uint8)


def _open_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in SUPPORTED_FORMATS if f in Image.OPEN)


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or int(max_pixels) <= 0):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")


def _check_background(background) -> tuple[int, int, int]:
    bg = tuple(int(v) for v in background)
    if len(bg) != 3 or not all(0 <= v <= 255 for v in bg):
        raise ValueError(f"background must be an RGB triple in 0..255, got {background!r}")
    return bg


def _check_pixels(label: str, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            label,
            "too_large",
            f"{w}x{h} = {_fmt_mp(w * h)} MP exceeds the pixel limit of {_fmt_mp(max_pixels)} MP (max_pixels)",
        )


def _bomb_error(label: str, e: Exception, max_pixels: int | None) -> ImageError:
    """Pillow's DecompressionBombError (raised past 2 x MAX_IMAGE_PIXELS) as a too_large ImageError."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{_fmt_mp(int(m.group(1)))} MP" if m else "the image"
    pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels is not None and max_pixels < pil_limit:
        limit = f"the pixel limit of {_fmt_mp(max_pixels)} MP (max_pixels)"
    else:
        limit = f"Pillow's decompression-bomb limit of {_fmt_mp(pil_limit)} MP (2 x PIL.Image.MAX_IMAGE_PIXELS)"
    return ImageError(label, "too_large", f"{size} exceeds {limit}")


def _magic_format(head: bytes) -> str | None:
    for magic, fmt in _IMAGE_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp" and head[8:12] in _AVIF_BRANDS:
        return "AVIF"
    return None


def _sniff(head: bytes) -> tuple[Reason, str]:
    """Say what data that Pillow could not open looks like, for a message a person can act on."""
    if not head:  # a pipe or device that gave nothing (regular empty files are caught earlier)
        return "empty", "no data (0 bytes)"
    fmt = _magic_format(head)
    if fmt == "AVIF" and "AVIF" not in _open_formats():
        return "unsupported", "AVIF images need a Pillow built with AVIF support"
    if fmt is not None:
        return "corrupt", f"truncated or corrupt {fmt} (header unreadable)"
    if head.startswith(b"%PDF-"):
        return "not_image", "not an image (looks like a PDF document)"
    if head.startswith(b"%!PS") or head.startswith(b"\xc5\xd0\xd3\xc6"):
        return "unsupported", "PostScript/EPS is not supported; export it as PNG or JPEG"
    if head[4:8] == b"ftyp":
        if head[8:12] in _HEIF_BRANDS:
            return "unsupported", "HEIC/HEIF photos are not supported; convert to JPEG or PNG"
        return "not_image", "not an image (looks like a video, MP4/MOV)"
    if head.startswith(b"PK\x03\x04"):
        return "not_image", "not an image (looks like a ZIP archive or an Office document)"
    if head.startswith(b"\x1f\x8b"):
        return "not_image", "not an image (looks like gzip-compressed data)"
    text = _as_text(head)
    if text is not None:
        t = text.lstrip().lower()
        if t.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in t:
            return "not_image", "not an image (looks like HTML, e.g. an error page saved under an image name)"
        if t.startswith("<svg") or (t.startswith("<?xml") and "<svg" in t):
            return "unsupported", "SVG vector images are not supported; export it as PNG"
        if t.startswith("<?xml"):
            return "not_image", "not an image (looks like XML)"
        if t.startswith(("{", "[")):
            return "not_image", "not an image (looks like JSON or other text)"
        return "not_image", "not an image (looks like text)"
    other = _pillow_format(head)
    if other is not None:
        supported = ", ".join(_open_formats())
        return "unsupported", f"{other} images are not supported (supported: {supported})"
    shown = " ".join(f"{b:02x}" for b in head[:8])
    return "not_image", f"not an image or an unknown format (starts with {shown})"


def _as_text(head: bytes) -> str | None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head[2:].decode("utf-16", errors="replace")
    text = head.decode("utf-8", errors="replace")
    if not text:
        return None
    bad = sum(ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f") for ch in text)
    return text if bad <= max(1, len(text) // 50) else None


def _pillow_format(head: bytes) -> str | None:
    """Name of a format Pillow could read but we refuse (EPS, PSD, ICO, ...), by its magic test."""
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in SUPPORTED_FORMATS or accept is None:
            continue
        try:
            result = accept(head)
        except Exception:  # accept() of a plugin on arbitrary bytes; a failure just means "no"
            continue
        if result and not isinstance(result, str):  # a str is Pillow's "looks like it, but" warning
            return fmt
    return None


def _label(name: str | None, default: str) -> str:
    return _one_line(name if name is not None else default, escape=True)


def _one_line(text: str, *, escape: bool = False) -> str:
    if escape:  # file names keep their spaces but never break the line
        return text.replace("\r", "\\r").replace("\n", "\\n")
    return " ".join(text.split())


def _detail(e: BaseException) -> str:
    msg = _one_line(str(e))
    return msg or type(e).__name__


def _fmt_mp(pixels: int) -> str:
    return f"{pixels / 1e6:.4g}"


def _fmt_bytes(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n:,} bytes"
    return f"{n / (1024 * 1024):.1f} MiB ({n:,} bytes)"
