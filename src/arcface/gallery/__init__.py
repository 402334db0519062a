"""A persistent face gallery: identities and face embeddings of one model contract, behind one interface.

Backends, chosen by the path or URI that names the gallery (:mod:`arcface.gallery.base`):

- a folder or ``sqlite:///...``: :class:`SqliteGallery`, SQLite + FAISS in one folder (:mod:`arcface.gallery.store`),
  the embedded default;
- ``postgresql://...``: :class:`PgGallery`, PostgreSQL with pgvector (:mod:`arcface.gallery.pgvector`, the
  ``[pgvector]`` extra);
- ``milvus://host:port``, ``milvus-lite:///file.db``: :class:`MilvusGallery` (:mod:`arcface.gallery.milvus`, the
  ``[milvus]`` extra).

:func:`open_gallery` (``GalleryStore.open``, ``SqliteGallery.open``, and ``Gallery.open``, ``Gallery`` being the
former name of :class:`SqliteGallery`) opens any of them. :class:`GalleryStore` states the rules every backend keeps;
:mod:`arcface.gallery.rules` holds what every backend accepts (limits, names, metadata, ids) and its errors;
:mod:`arcface.gallery.target` the URIs. The drivers are imported on first use.
"""

from arcface.gallery.base import (
    FaceRecord,
    GalleryStore,
    GalleryTarget,
    Identity,
    Match,
    mask_uri,
    open_gallery,
)
from arcface.gallery.milvus import MilvusGallery
from arcface.gallery.pgvector import PgGallery
from arcface.gallery.rules import (
    GalleryBusyError,
    GalleryContractError,
    GalleryError,
    GalleryFullError,
    GalleryStorageError,
    check_metadata,
    check_name,
)
from arcface.gallery.store import Gallery, SqliteGallery

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
    "MilvusGallery",
    "PgGallery",
    "SqliteGallery",
    "check_metadata",
    "check_name",
    "mask_uri",
    "open_gallery",
]
