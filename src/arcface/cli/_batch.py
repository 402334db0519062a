"""Helpers shared by the image subcommands (detect, align, embed, verify): exit codes, detector options,
finding images, per-item failure records, progress bars and atomic writes.

Exit codes of the image subcommands:

====  ==========================================================================================
0     success; batch commands also when some items failed (they are listed in the report)
1     an error: unreadable or bad image, missing file, bad option, nothing could be processed
2     usage error (argparse)
3     no face found (``detect``, ``verify``)
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arcface.io.files import IMAGE_EXTENSIONS, find_images

if TYPE_CHECKING:
    from arcface.align.detection import FaceDetector

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_FACE = 3

#: File suffixes of a text file listing image paths (one per line).
LIST_SUFFIXES = (".txt", ".lst", ".list")

DETECTOR_NAMES = ("mtcnn", "yunet", "scrfd")

# --------------------------------------------------------------------------------------------------
# Detector options


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """Add ``--detector``, ``--scrfd-model`` and ``--max-side`` to a subcommand."""
    p.add_argument("--detector", choices=DETECTOR_NAMES, default="mtcnn", help="face detector (default mtcnn)")
    p.add_argument("--scrfd-model", default=None, metavar="PATH", help="the SCRFD .onnx file (with --detector scrfd)")
    p.add_argument(
        "--max-side", type=int, default=1600, metavar="PX",
        help="photos with a longer side are downscaled for detection; landmarks map back (default 1600)",
    )  # fmt: skip


def detector_options(args: argparse.Namespace, *, threads: int | None = None) -> tuple[str, dict[str, Any]]:
    """The detector name and constructor options from the parsed ``add_detector_args`` options.

    Args:
        args: parsed arguments.
        threads: intra-op threads of an onnxruntime detector (SCRFD); None lets it choose.

    Raises:
        CliError: SCRFD without ``--scrfd-model``, a missing model file, or ``--max-side`` below 16.
    """
    from arcface.cli import CliError

    name = args.detector
    if args.max_side is not None and args.max_side < 16:
        raise CliError(f"--max-side must be at least 16, got {args.max_side}")
    options: dict[str, Any] = {"max_side": args.max_side}
    if name == "scrfd":
        if not args.scrfd_model:
            raise CliError("--detector scrfd needs --scrfd-model PATH (the SCRFD .onnx file is not bundled)")
        if not Path(args.scrfd_model).is_file():
            raise CliError(f"SCRFD model {args.scrfd_model} does not exist")
        options["model_path"] = args.scrfd_model
        if threads is not None:
            options["num_threads"] = threads
    elif args.scrfd_model:
        raise CliError(f"--scrfd-model only applies to --detector scrfd (got --detector {name})")
    return name, options


def make_detector(args: argparse.Namespace) -> FaceDetector:
    """The detector the options of ``add_detector_args`` ask for."""
    from arcface.align.detection import create_detector

    name, options = detector_options(args)
    return create_detector(name, **options)


# --------------------------------------------------------------------------------------------------
# Finding images


def collect_sources(src: str | os.PathLike) -> list[Path]:
    """The images named by ``src``: an image file, a folder (recursive), or a text file listing paths.

    A list file (``.txt``, ``.lst``, ``.list``) has one path per line; blank lines and lines starting with ``#``
    are skipped, and relative paths are taken relative to the list file's folder. Listed files are not
    checked here: a missing one becomes a per-item error of the batch.

    Raises:
        CliError: ``src`` does not exist, or a folder holds no images.
    """
    from arcface.cli import CliError

    path = Path(src)
    if path.is_dir():
        images = find_images(path)
        if not images:
            raise CliError(f"{path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS[:6])}, ...)")
        return images
    if not path.exists():
        raise CliError(f"{path}: no such file or folder")
    if path.suffix.lower() in LIST_SUFFIXES:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"{path}: cannot read the list file: {e}") from None
        entries = [line.strip() for line in lines]
        paths = [Path(e) if os.path.isabs(e) else path.parent / e for e in entries if e and not e.startswith("#")]
        if not paths:
            raise CliError(f"{path}: the list file names no images")
        return paths
    return [path]


# --------------------------------------------------------------------------------------------------
# Failures


@dataclass(frozen=True)
class Failure:
    """One item of a batch that could not be processed.

    Attributes:
        path: the item as the batch names it.
        reason: a stable code: an ``ImageError.reason`` (``missing``, ``corrupt``, ...), ``no_face``, or
            ``error`` for anything else.
        message: one line for a person.
    """

    path: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The failure as a JSON-ready dict."""
        return asdict(self)


def reason_of(error: BaseException) -> str:
    """The failure code of an exception (see :class:`Failure`)."""
    from arcface.inference.recognizer import NoFaceError
    from arcface.io.images import ImageError

    if isinstance(error, ImageError):
        return str(error.reason)
    if isinstance(error, NoFaceError):
        return "no_face"
    return "error"


def failure_of(path: str, error: BaseException) -> Failure:
    """The :class:`Failure` record of ``error`` raised for ``path``, with a one-line message."""
    message = " ".join(str(error).split()) or type(error).__name__
    if reason_of(error) == "error" and type(error).__name__ not in message:
        message = f"{type(error).__name__}: {message}"
    return Failure(path, reason_of(error), message)


def print_failures(failures: Sequence[Failure], *, limit: int = 10, file=None) -> None:
    """List the first ``limit`` failures on stderr, one line each, then how many more."""
    out = sys.stderr if file is None else file
    for f in failures[:limit]:
        print(f"  failed: {f.message}" if f.path in f.message else f"  failed: {f.path}: {f.message}", file=out)
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more", file=out)


# --------------------------------------------------------------------------------------------------
# Progress and output files


def check_image_suffix(path: str | os.PathLike) -> None:
    """Fail early when ``path``'s suffix is not an image format OpenCV can write.

    Raises:
        CliError: e.g. ``out.foo`` or a name without a suffix.
    """
    import cv2

    from arcface.cli import CliError

    suffix = Path(path).suffix.lower()
    if not suffix or not cv2.haveImageWriter(f"x{suffix}"):
        raise CliError(f"{path}: cannot write an image of type {suffix or '(no suffix)'}; use .png or .jpg")


def encode_image(rgb, path: str | os.PathLike, *, quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB image in the format of ``path``'s suffix (.png, .jpg, ...) with OpenCV.

    Raises:
        CliError: the suffix is not an image format OpenCV can write.
    """
    import cv2

    from arcface.cli import CliError

    check_image_suffix(path)
    suffix = Path(path).suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise CliError(f"{path}: OpenCV could not encode the image as {suffix}")
    return buf.tobytes()
