"""Files: which names are images, finding them under a folder, and writing a file atomically.

The one list of image suffixes and the one image finder of the project (the batch commands, the training
readers and the RecordIO packer all use these); the finder walks with the safe walker (:mod:`arcface.io.walk`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from arcface.io.walk import FilePolicy, Walk, check_file, open_regular, walk_files

__all__ = [
    "IMAGE_EXTENSIONS", "LIST_SUFFIXES", "atomic_path", "collect_images", "find_images", "find_images_walk",
    "is_image_name", "write_bytes_atomic",
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
    within: str | os.PathLike | None = None,
) -> Walk:
    """:func:`find_images` with the files skipped and their reasons (a :class:`~arcface.io.walk.Walk`); ``within``:
    the folder links must stay inside when wider than ``root`` (see :func:`~arcface.io.walk.walk_files`)."""
    return walk_files(root, accept=is_image_name, policy=policy, exclude=exclude, within=within)


#: File suffixes of a text file listing image paths (one per line).
LIST_SUFFIXES = (".txt", ".lst", ".list")


def collect_images(src: str | os.PathLike, *, policy: FilePolicy | None = None) -> Walk:
    """The images a command's SRC argument names: an image file, a folder (walked with :func:`find_images_walk`),
    or a text file listing paths (:data:`LIST_SUFFIXES`), with the files the safe walker skipped and why.

    A list file has one path per line; blank lines and lines starting with ``#`` are skipped, and relative paths
    are taken relative to the list file's folder. Each listed path is checked as a walked file is (not a regular
    file, a link leading out of the folder holding it, over the size cap: skipped with its reason); a listed file
    that does not exist is kept, so that its reader reports it as missing. The list file itself is read through
    :func:`~arcface.io.walk.open_regular`.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: a folder without images, a list naming none, or a list that cannot be read (one line).
    """
    policy = policy or FilePolicy()
    path = Path(src)
    if path.is_dir():
        walk = find_images_walk(path, policy=policy)
        if not walk.files and not walk.skipped:
            raise ValueError(f"{path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS[:6])}, ...)")
        return walk
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix.lower() not in LIST_SUFFIXES:
        why = check_file(path, policy=FilePolicy(follow_links=True, max_bytes=policy.max_bytes))
        return Walk([], [why]) if why is not None else Walk([path], [])
    try:
        with open_regular(path, policy=FilePolicy(follow_links=True, max_bytes=policy.max_bytes)) as f:
            lines = f.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the list file: {e}") from None
    entries = [line.strip() for line in lines]
    paths = [Path(e) if os.path.isabs(e) else path.parent / e for e in entries if e and not e.startswith("#")]
    if not paths:
        raise ValueError(f"{path}: the list file names no images")
    walk = Walk()
    for p in paths:
        why = check_file(p, policy=policy)
        if why is None:
            walk.files.append(p)
        else:
            walk.skipped.append(why)
    return walk


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
