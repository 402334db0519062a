"""Readers over image files: a folder with one sub-folder per identity, and a ``path label`` list."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from arcface.data.base import DATASETS, FaceDataset, Transform
from arcface.io.files import IMAGE_EXTENSIONS, find_images_walk
from arcface.io.images import load_image
from arcface.io.walk import FilePolicy, open_regular, summarise_skipped

__all__ = ["ImageFolderDataset", "ListFileDataset", "list_identities", "read_list_file"]

log = logging.getLogger(__name__)


def list_identities(
    root: str | os.PathLike[str], min_images_per_class: int = 1, *, follow_links: bool = False
) -> tuple[list[str], list[tuple[str, int]]]:
    """List an identity folder: ``root/<identity>/**/<image>`` (image names as :func:`arcface.io.files.find_images`).

    Identities are the immediate sub-folders of ``root`` (hidden ones, and links to folders outside ``root``,
    skipped), sorted by name; files are kept as the safe walker keeps them (:mod:`arcface.io.walk`: regular files,
    links staying inside ``root`` unless ``follow_links``, the default size cap), and what it skipped is logged as
    one warning;
    a folder with fewer than ``min_images_per_class`` images gets no label. Labels are the positions
    in the sorted list of kept folders. Images are found recursively and sorted by path.

    Returns:
        (classes, samples): the kept folder names, and (path, label) pairs grouped by label.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no image was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    classes: list[str] = []
    samples: list[tuple[str, int]] = []
    base = os.path.realpath(root)
    skipped = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        leads_out = os.path.commonpath([base, os.path.realpath(entry.path)]) != base
        if entry.is_symlink() and leads_out and not follow_links:
            continue  # a link leading out of the dataset's folder
        walk = find_images_walk(entry.path, policy=FilePolicy(follow_links=follow_links), within=root)
        skipped += walk.skipped
        files = sorted(str(p) for p in walk.files)
        if len(files) < max(1, min_images_per_class):
            continue
        label = len(classes)
        classes.append(entry.name)
        samples.extend((p, label) for p in files)
    if skipped:
        log.warning("%s: %s, e.g. %s", root, summarise_skipped(skipped), skipped[0].message)
    if not samples:
        raise ValueError(
            f"no images ({', '.join(IMAGE_EXTENSIONS[:6])}, ...) found in the identity sub-folders of {root}"
            + (f" with at least {min_images_per_class} images each" if min_images_per_class > 1 else "")
        )
    return classes, samples

def read_list_file(
    list_file: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> list[tuple[str, int]]:
    """Parse a list file of ``path label`` lines.

    Fields are separated by a tab when the line has one (so paths may contain spaces), otherwise by
    whitespace. Blank lines and lines starting with ``#`` are skipped. Relative paths are resolved
    against ``root``, or the list file's folder when ``root`` is None.

    Returns:
        (absolute path, label) pairs in file order.

    Raises:
        ValueError: a line is not ``path label`` with a non-negative integer label; the message
            names the file and the line number.
    """
    list_file = Path(list_file)
    base = Path(root) if root is not None else list_file.parent
    samples: list[tuple[str, int]] = []
    # the safe opener: a list file that is a FIFO or a device is refused rather than read forever
    with open_regular(list_file, policy=FilePolicy(follow_links=True)) as fb:
        text = fb.read().decode("utf-8")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if len(parts) != 2:
            raise ValueError(f"{list_file}:{lineno}: expected 'path label', got {line!r}")
        path, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(f"{list_file}:{lineno}: label {label_text!r} is not an integer in {line!r}") from None
        if label < 0:
            raise ValueError(f"{list_file}:{lineno}: negative label {label} in {line!r}")
        p = Path(path)
        samples.append((str(p if p.is_absolute() else base / p), label))
    if not samples:
        raise ValueError(f"list file {list_file} holds no 'path label' lines")
    return samples


class _FileDataset(FaceDataset):
    """A dataset over (path, label) pairs."""

    samples: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        return load_image(path), label

    def _source(self, index: int) -> str:
        return self.samples[index][0]

    @property
    def labels(self) -> list[int]:
        """The label of every item, in index order."""
        return [label for _, label in self.samples]


@DATASETS.register("image_folder")
class ImageFolderDataset(_FileDataset):
    """One sub-folder per identity: ``root/<identity>/<image>``; labels follow sorted folder names.

    Args:
        root: the folder of identity folders (e.g. ``lfw-deepfunneled``).
        image_size: resize to (image_size, image_size) when an image differs; None keeps its size.
        center_crop: side of the central square cut before resizing (e.g. 150 for 250x250 LFW
            deep-funneled images, before alignment exists); None keeps the whole image.
        transform: uint8 (H, W, 3) RGB -> tensor; default :func:`~arcface.data.transforms.train_transform`.
        min_images_per_class: identity folders with fewer images are left out (and get no label).
        follow_links: read images (and identity folders) that are links leading outside ``root`` (a folder of
            links into a shared store); by default they are skipped, as every walk of a user's folder does.

    Attributes:
        classes: identity folder names; ``classes[label]`` names a label.
        class_to_idx: the inverse mapping.
        samples: (path, label) pairs.
        num_classes: ``len(classes)``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int | None = 112,
        center_crop: int | None = None,
        transform: Transform | None = None,
        min_images_per_class: int = 1,
        follow_links: bool = False,
    ) -> None:
        super().__init__(image_size=image_size, center_crop=center_crop, transform=transform)
        self.root = str(root)
        self.classes, self.samples = list_identities(root, min_images_per_class, follow_links=follow_links)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={self.root!r}, images={len(self)}, classes={self.num_classes}, "
            f"image_size={self.image_size}, center_crop={self.center_crop})"
        )


@DATASETS.register("list_file")
class ListFileDataset(_FileDataset):
    """Images named in a list file of ``path label`` lines (see :func:`read_list_file`).

    Args:
        list_file: the list file.
        root: folder that relative paths are resolved against; default the list file's folder.
        image_size: resize to (image_size, image_size) when an image differs; None keeps its size.
        center_crop: side of the central square cut before resizing; None keeps the whole image.
        transform: uint8 (H, W, 3) RGB -> tensor; default the standard train transform.
        num_classes: number of identities; default ``max(label) + 1``.

    Raises:
        ValueError: a malformed line (file and line number named), or a label >= ``num_classes``.
    """

    def __init__(
        self,
        list_file: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        image_size: int | None = 112,
        center_crop: int | None = None,
        transform: Transform | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(image_size=image_size, center_crop=center_crop, transform=transform)
        self.list_file = str(list_file)
        self.samples = read_list_file(list_file, root)
        top = max(label for _, label in self.samples)
        if num_classes is None:
            num_classes = top + 1
        elif top >= num_classes:
            raise ValueError(f"{list_file}: label {top} does not fit num_classes={num_classes}")
        self.num_classes = int(num_classes)

    def __repr__(self) -> str:
        return (
            f"ListFileDataset(list_file={self.list_file!r}, images={len(self)}, "
            f"classes={self.num_classes}, image_size={self.image_size}, center_crop={self.center_crop})"
        )
