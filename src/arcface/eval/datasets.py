"""Verification sets: LFW pair files over an image folder, insightface ``.bin`` files, CSV pair lists.

All readers return a :class:`PairSet`: the distinct images once each, pairs as indices into them, the truth,
and a fold per pair.

* **LFW pair files** (format in ``../shared/README.md``): a same pair is ``name<TAB>i<TAB>j``, a different
  pair ``name1<TAB>i<TAB>name2<TAB>j``, the image ``ROOT/name/name_%04d.jpg``. View 2 (``pairs.txt``, first line
  ``10 300``) is 10 consecutive blocks of 300 same + 300 different pairs: those blocks are the 10 official
  folds. View 1 (``pairsDevTrain.txt`` / ``pairsDevTest.txt``, first line a count) lists all same pairs, then
  all different pairs: each class is split into 10 contiguous parts, part k of both classes being fold k.
* **insightface .bin** (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``): a pickle of ``(list of encoded images,
  list of is-same flags)``, image ``2i`` and ``2i+1`` forming pair ``i``, images already aligned. It is read
  with a restricted unpickler that builds only bytes, str, lists, tuples, bools and ints and refuses every
  global (``find_class`` raises), so no code in the file can run. This also refuses ``.bin`` files whose flags
  are a numpy bool array (some conversion scripts write them): re-save those with ``list(map(bool, flags))``.
  Folds are contiguous, as insightface's ``KFold(shuffle=False)``.
* **CSV pairs**: ``a,b,same`` per row (a header row is optional; ``same`` is 1/0, true/false, yes/no);
  relative paths are taken from ``root`` (default: the CSV's folder). Contiguous folds, unless a fourth
  column ``fold`` gives them.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arcface.eval.metrics import contiguous_folds
from arcface.runtime.untrusted import BadFileError, reads

__all__ = [
    "BinFormatError",
    "PairSet",
    "crop_path",
    "read_bin",
    "read_csv_pairs",
    "read_lfw_pairs",
    "restricted_loads",
]


@dataclass
class PairSet:
    """A verification set.

    Attributes:
        name: a short name for tables ("lfw", "cfp_fp", ...).
        images: the distinct images: paths (pair files) or encoded bytes (``.bin``), each once.
        pairs: (N, 2) int64 indices into ``images``.
        labels: (N,) bool, True for same-identity pairs.
        folds: (N,) int64 fold of each pair.
        aligned: the images are aligned crops (no detection).
        source: the file the set was read from.
    """

    name: str
    images: list = field(repr=False)
    pairs: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    folds: np.ndarray = field(repr=False)
    aligned: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def image_pairs(self) -> list[tuple[Any, Any, bool]]:
        """Each pair as (image A, image B, same person)."""
        return [(self.images[a], self.images[b], bool(y)) for (a, b), y in zip(self.pairs.tolist(), self.labels)]


class BinFormatError(BadFileError):
    """A ``.bin`` file that is not a plain (images, flags) pickle; the message names the file."""


# --------------------------------------------------------------------------------------------------
# LFW pair files


def crop_path(root: str | os.PathLike, name: str, index: int, suffixes: tuple[str, ...] = (".jpg",)) -> Path:
    """``root/name/name_%04d<suffix>``: the first of ``suffixes`` that exists (else the first suffix)."""
    base = Path(root) / name / f"{name}_{int(index):04d}"
    for suffix in suffixes:
        if base.with_suffix(suffix).exists():
            return base.with_suffix(suffix)
    return base.with_suffix(suffixes[0])


@reads("not an LFW pair file")
def read_lfw_pairs(
    pairs_file: str | os.PathLike,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    suffixes: tuple[str, ...] = (".jpg",),
    n_folds: int = 10,
) -> PairSet:
    """Read an LFW pair file (View 1 or View 2) over an image folder.

    Args:
        pairs_file: ``pairs.txt`` (View 2), ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (View 1), or a file in
            the same format.
        root: the image folder (``lfw-deepfunneled``), holding ``name/name_%04d.jpg``.
        name: set name (default: the pair file's stem).
        suffixes: image suffixes tried in order (aligned-crop folders may hold ``.png``).
        n_folds: folds for a View 1 style file (View 2 files give their own).

    Returns:
        A :class:`PairSet` of image paths; files are not checked here.

    Raises:
        ValueError: a malformed line (the message gives file and line number) or a header that disagrees
            with the number of pairs.
    """
    path = Path(pairs_file)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty pair file")
    try:
        header = [int(v) for v in lines[0].split()]
    except ValueError:
        raise ValueError(f"{path}:1: the first line must be a count ('500') or 'sets pairs' ('10 300')") from None
    index: dict[Path, int] = {}
    images: list[Path] = []
    pairs, labels = [], []

    def image(person: str, i: str, lineno: int) -> int:
        try:
            p = crop_path(root, person, int(i), suffixes)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: image number {i!r} is not an integer") from None
        if p not in index:
            index[p] = len(images)
            images.append(p)
        return index[p]

    for lineno, line in enumerate(lines[1:], start=2):
        f = line.strip().split()
        if not f:
            continue
        if len(f) == 3:
            pairs.append((image(f[0], f[1], lineno), image(f[0], f[2], lineno)))
            labels.append(True)
        elif len(f) == 4:
            pairs.append((image(f[0], f[1], lineno), image(f[2], f[3], lineno)))
            labels.append(False)
        else:
            raise ValueError(f"{path}:{lineno}: expected 3 (same) or 4 (different) fields, got {len(f)}")
    y = np.asarray(labels, dtype=bool)
    n = len(y)
    if len(header) == 2:  # View 2: `sets per_class`, consecutive blocks of per_class same + per_class different
        sets, per = header
        if sets * 2 * per != n:
            raise ValueError(f"{path}: header says {sets} x 2 x {per} pairs, the file has {n}")
        folds = np.repeat(np.arange(sets), 2 * per)
    elif len(header) == 1:  # View 1: `count`, all same pairs then all different ones
        if int(y.sum()) != header[0] or n - int(y.sum()) != header[0]:
            raise ValueError(f"{path}: header says {header[0]} pairs of each kind, the file has {int(y.sum())} "
                             f"same and {n - int(y.sum())} different")  # fmt: skip
        folds = np.empty(n, np.int64)
        for cls in (True, False):
            folds[y == cls] = contiguous_folds(int((y == cls).sum()), n_folds)
    else:
        raise ValueError(f"{path}:1: the first line must be a count ('500') or 'sets pairs' ('10 300')")
    return PairSet(
        name=name or path.stem,
        images=images,
        pairs=np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        labels=y,
        folds=np.asarray(folds, dtype=np.int64),
        aligned=False,
        source=str(path),
    )


# --------------------------------------------------------------------------------------------------
# insightface .bin


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """The one global a .bin may name: how Python 3 writes ``bytes`` at pickle protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only built-in containers and scalars; any class or function reference raises.

    The single exception is ``_codecs.encode``, through which Python 3 pickles ``bytes`` at protocol 2; it is
    replaced by a function that only turns a str into latin-1 bytes.
    """

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"refused to load the global {module}.{name}")


def restricted_loads(data: bytes) -> object:
    """Unpickle ``data`` without ever importing or calling anything (no globals, no reduce of classes).

    Python 2 ``str`` objects come back as ``bytes`` (``encoding="bytes"``); Python 3 ``bytes`` pickled at
    protocol 2 (as ``_codecs.encode(str, "latin1")``) too, through a stand-in that does only that.

    Raises:
        pickle.UnpicklingError: the pickle references a global (a class, a function such as ``os.system``,
            a numpy array).
    """
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


@reads("not a plain insightface .bin (a pickle of (list of image bytes, list of bools))", BinFormatError)
def read_bin(path: str | os.PathLike, *, name: str | None = None, n_folds: int = 10) -> PairSet:
    """Read an insightface verification ``.bin`` (images already aligned: no detection).

    Args:
        path: the ``.bin`` file.
        name: set name (default: the file's stem, e.g. "lfw", "cfp_fp").
        n_folds: contiguous folds.

    Returns:
        A :class:`PairSet` whose ``images`` are the encoded images (bytes), pair i = images (2i, 2i+1).

    Raises:
        BinFormatError: anything but a 2-tuple/list of (list of bytes, list of bools) with two images per flag;
            the message names the file and says what was found.
    """
    path = Path(path)
    data = path.read_bytes()
    obj = restricted_loads(data)  # any failure is the file's fault: one line naming it (the decorator)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(f"{path}: expected a pickled (images, flags) pair, got {type(obj).__name__}")
    bins, flags = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise BinFormatError(f"{path}: the first item must be a list of encoded images (bytes)")
    if not isinstance(flags, (list, tuple)) or not all(isinstance(f, bool) for f in flags):
        raise BinFormatError(f"{path}: the second item must be a list of bools (is-same flags)")
    if not flags or len(bins) != 2 * len(flags):
        raise BinFormatError(f"{path}: {len(bins)} images for {len(flags)} flags; need two images per flag")
    n = len(flags)
    return PairSet(
        name=name or path.stem,
        images=[bytes(b) for b in bins],
        pairs=np.arange(2 * n, dtype=np.int64).reshape(n, 2),
        labels=np.asarray(flags, dtype=bool),
        folds=contiguous_folds(n, n_folds),
        aligned=True,
        source=str(path),
    )


# --------------------------------------------------------------------------------------------------
# CSV pairs

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@reads("not a CSV pair file")
def read_csv_pairs(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    aligned: bool = False,
    n_folds: int = 10,
) -> PairSet:
    """Read ``a,b,same[,fold]`` rows (optional header) as a :class:`PairSet` of image paths.

    Args:
        path: the CSV file.
        root: folder that relative image paths start from (default: the CSV's folder).
        name: set name (default: the file's stem).
        aligned: the images are aligned crops.
        n_folds: contiguous folds when the file has no ``fold`` column.

    Raises:
        ValueError: a malformed row (file and line named).
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    index: dict[Path, int] = {}
    images: list[Path] = []
    pairs, labels, folds = [], [], []
    for lineno, row in enumerate(rows, start=1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        if lineno == 1 and row[2:3] and row[2].lower() not in _TRUE | _FALSE:
            continue  # a header
        if len(row) not in (3, 4):
            raise ValueError(f"{path}:{lineno}: expected a,b,same[,fold], got {len(row)} columns")
        ids = []
        for p in row[:2]:
            q = Path(p) if os.path.isabs(p) else base / p
            if q not in index:
                index[q] = len(images)
                images.append(q)
            ids.append(index[q])
        flag = row[2].lower()
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"{path}:{lineno}: 'same' must be 1/0, true/false or yes/no, got {row[2]!r}")
        pairs.append(ids)
        labels.append(flag in _TRUE)
        if len(row) == 4:
            try:
                folds.append(int(row[3]))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: fold must be an integer, got {row[3]!r}") from None
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    if folds and len(folds) != len(pairs):
        raise ValueError(f"{path}: give a fold on every row or on none")
    return PairSet(
        name=name or path.stem,
        images=images,
        pairs=np.asarray(pairs, dtype=np.int64),
        labels=np.asarray(labels, dtype=bool),
        folds=np.asarray(folds, np.int64) if folds else contiguous_folds(len(pairs), n_folds),
        aligned=aligned,
        source=str(path),
    )
