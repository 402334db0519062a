"""A persistent face gallery: identities and face embeddings of one model contract (SQLite + FAISS).

See :mod:`arcface.gallery.store` for the decisions (durability, erasure, normalisation, index cache, identity score)
and :mod:`arcface.gallery.rules` for what every backend accepts (limits, names, metadata, ids) and its errors.
"""

from arcface.gallery.rules import (
    GalleryBusyError,
    GalleryContractError,
    GalleryError,
    GalleryFullError,
    GalleryStorageError,
    check_metadata,
    check_name,
)
from arcface.gallery.store import FaceRecord, Gallery, Identity, Match

__all__ = [
    "FaceRecord",
    "Gallery",
    "GalleryBusyError",
    "GalleryContractError",
    "GalleryError",
    "GalleryFullError",
    "GalleryStorageError",
    "Identity",
    "Match",
    "check_metadata",
    "check_name",
]
