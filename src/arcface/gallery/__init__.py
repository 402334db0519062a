"""A persistent face gallery: identities and face embeddings of one model contract, behind one interface.

Backends, chosen by the path or URI that names the gallery (:mod:`arcface.gallery.base`):

- a folder or ``sqlite:///...``: SQLite + FAISS in one folder (:mod:`arcface.gallery.store`), the embedded default;
- ``postgresql://...``: PostgreSQL with pgvector (:mod:`arcface.gallery.pgvector`, the ``[pgvector]`` extra);
- ``milvus://host:port``, ``milvus-lite:///file.db``: Milvus (:mod:`arcface.gallery.milvus`, the ``[milvus]`` extra).

``Gallery.open(location, contract)`` (or :func:`open_gallery`) opens any of them. :mod:`arcface.gallery.rules` holds
what every backend accepts (limits, names, metadata, ids) and its errors. The drivers are imported on first use.
"""

from arcface.gallery import milvus as _milvus  # noqa: F401  (registers milvus://, milvus-lite://)
from arcface.gallery import pgvector as _pgvector  # noqa: F401  (registers postgresql://)
from arcface.gallery.base import (
    FaceRecord,
    GalleryStore,
    GalleryTarget,
    Identity,
    Match,
    mask_uri,
    open_gallery,
)
from arcface.gallery.rules import (
    GalleryBusyError,
    GalleryContractError,
    GalleryError,
    GalleryFullError,
    GalleryStorageError,
    check_metadata,
    check_name,
)
from arcface.gallery.store import Gallery

__all__ = [
    "FaceRecord",
    "Gallery",
    "GalleryBusyError",
    "GalleryContractError",
    "GalleryError",
    "GalleryFullError",
    "GalleryStorageError",
    "GalleryStore",
    "GalleryTarget",
    "Identity",
    "Match",
    "check_metadata",
    "check_name",
    "mask_uri",
    "open_gallery",
]
