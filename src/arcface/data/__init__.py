"""Training data: readers, transforms, a resumable distributed sampler, and a RecordIO packer.

Readers (all registered in ``DATASETS``; build one with ``build_dataset(kind, **kwargs)``):

- ``"image_folder"``: :class:`ImageFolderDataset`, one sub-folder per identity;
- ``"list_file"``: :class:`ListFileDataset`, ``path label`` lines;
- ``"recordio"``: :class:`RecordIODataset`, insightface ``train.rec``/``train.idx`` without mxnet;
- ``"synthetic"``: :class:`SyntheticDataset`, learnable random images for tests and speed runs.

Each returns ``(image, label)``: a float32 tensor (3, H, W), RGB, ``(x - 127.5) / 127.5``, and an
int. An unreadable item is logged with its index and path/record, recorded in ``bad_items``, and
replaced by the next readable one. :func:`pack_folder` / :func:`pack_list` write ``.rec``/``.idx``.
"""

from arcface.data.base import DATASETS, LOAD_ERRORS, BadItem, FaceDataset, build_dataset
from arcface.data.folder import ImageFolderDataset, ListFileDataset, list_identities, read_list_file
from arcface.data.loader import build_loader
from arcface.data.pack import pack_folder, pack_list, pack_samples
from arcface.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIODataset,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    pack,
    unpack,
)
from arcface.data.sampler import ResumableDistributedSampler
from arcface.data.synthetic import SyntheticDataset
from arcface.data.transforms import (
    MEAN,
    STD,
    eval_transform,
    normalize_,
    to_tensor,
    train_transform,
)

__all__ = [
    "DATASETS",
    "LOAD_ERRORS",
    "MAGIC",
    "MEAN",
    "STD",
    "BadItem",
    "FaceDataset",
    "IRHeader",
    "ImageFolderDataset",
    "ListFileDataset",
    "RecordIODataset",
    "RecordIOError",
    "RecordIOReader",
    "RecordIOWriter",
    "ResumableDistributedSampler",
    "SyntheticDataset",
    "build_dataset",
    "build_loader",
    "list_identities",
    "eval_transform",
    "normalize_",
    "pack",
    "pack_folder",
    "pack_list",
    "pack_samples",
    "read_list_file",
    "to_tensor",
    "train_transform",
    "unpack",
]
