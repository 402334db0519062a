"""Files: which names are images, finding them under a folder, and writing a file atomically.

The one list of image suffixes and the one image finder of the project (the batch commands, the training
readers and the RecordIO packer all use these); the finder walks with the safe walker (:mod:`arcface.io.walk`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from arcface.io.walk import FilePolicy, Walk, walk_files

__all__ = [
    "IMAGE_EXTENSIONS", "atomic_path", "find_images", "find_images_walk", "is_image_name", "write_bytes_atomic",
]  # fmt: skip

#: File suffixes taken as images when a folder is walked (compared in lower case).
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".avif",
)  # fmt: skip


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether a file name has an image suffix (:data:`IMAGE_EXTENSIONS`)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(
    root: str | os.PathLike,
    *,
    exclude: str | os.PathLike | None = None,
    policy: FilePolicy | None = None,
) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are skipped, and so is every file
    the safe walker refuses (not a regular file, a link leaving ``root``, over the size cap; see
    :func:`arcface.io.walk.walk_files`, which also says why each was skipped: use it where the reasons are reported).

    Args:
        root: the folder to walk.
        exclude: a folder inside ``root`` that is not walked (e.g. an output folder nested in the input).
        policy: links and size cap (default :class:`~arcface.io.walk.FilePolicy`).
    """
    return find_images_walk(root, exclude=exclude, policy=policy).files


def find_images_walk(
    root: str | os.PathLike,
    *,
    exclude: str | os.PathLike | None = None,
    policy: FilePolicy | None = None,
) -> Walk:
    """:func:`find_images` with the files skipped and their reasons (a :class:`~arcface.io.walk.Walk`)."""
    return walk_files(root, accept=is_image_name, policy=policy, exclude=exclude)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; on success it is renamed onto ``path``, on failure removed.

    Readers never see a half-written file, and a file that exists is complete (which makes batch runs
    resumable: an output that exists is done).
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
