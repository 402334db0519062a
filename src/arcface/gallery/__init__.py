"""A persistent face gallery: identities and face embeddings of one model contract (SQLite + FAISS).

See :mod:`arcface.gallery.store` for the decisions (durability, normalisation, index cache, identity score).
"""

from arcface.gallery.store import FaceRecord, Gallery, GalleryContractError, GalleryError, Identity, Match

__all__ = ["FaceRecord", "Gallery", "GalleryContractError", "GalleryError", "Identity", "Match"]
