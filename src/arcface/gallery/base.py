"""One interface for every gallery backend: the records it returns, the rules every backend keeps, and the one opener.

:func:`open_gallery` (also ``SqliteGallery.open`` and its alias ``Gallery.open``) opens the gallery a path or URI
names (:mod:`arcface.gallery.target`) with the backend its scheme chooses (:data:`GALLERY_BACKENDS`). Every backend is
a :class:`GalleryStore`: the public methods (their argument checks, the errors, the search and its identity ranking,
the stored contract) are written here once, over a few primitives each backend implements (insert, delete and fetch
records; the nearest faces of a query; the faces of some identities).
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from arcface.gallery.rules import (
    INT64_MAX,
    GalleryContractError,
    GalleryError,
    check_metadata,
    check_name,
    check_source,
    valid_id,
)
from arcface.gallery.target import DEFAULT_GALLERY_NAME, GalleryTarget, mask_uri
from arcface.index import INDEX_KINDS
from arcface.inference.contract import ModelContract
from arcface.registry import Registry

__all__ = [
    "AGGREGATES",
    "DEFAULT_GALLERY_NAME",
    "GALLERY_BACKENDS",
    "FaceRecord",
    "GalleryStore",
    "GalleryTarget",
    "Identity",
    "Match",
    "mask_uri",
    "open_gallery",
    "rank_identities",
    "unit_rows",
]

AGGREGATES = ("max", "mean_top")

GALLERY_BACKENDS: Registry = Registry("gallery backend")
"""Backend kind (``sqlite``, ``postgresql``, ``milvus``, ``milvus-lite``) -> its :class:`GalleryStore` class; each
backend module registers itself."""


@dataclass(frozen=True)
class Identity:
    """A person of the gallery.

    Attributes:
        id: database id.
        name: display name (not unique: two people may share a name).
        metadata: JSON object given at creation.
        created: creation time, seconds since the epoch (UTC).
        faces: number of faces enrolled.
    """

    id: int
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    faces: int = 0


@dataclass(frozen=True)
class FaceRecord:
    """One enrolled face (without its embedding).

    Attributes:
        id: database id (also its id in the search index).
        identity_id: the person it belongs to.
        contract_id: the model contract id it was embedded under.
        created: enrolment time, seconds since the epoch (UTC).
        source: where it came from (e.g. a file name), or None.
    """

    id: int
    identity_id: int
    contract_id: str
    created: float
    source: str | None = None


@dataclass(frozen=True)
class Match:
    """One identity found by a search.

    Attributes:
        identity_id: the identity.
        name: its name.
        similarity: its score (cosine): best face, or mean of the top faces with ``aggregate="mean_top"``.
        face_id: its most similar face.
    """

    identity_id: int
    name: str
    similarity: float
    face_id: int


def identity_from_row(row: Sequence[Any]) -> Identity:
    """An :class:`Identity` from ``(id, name, metadata JSON, created, faces)``."""
    ident, name, meta, created, faces = row
    return Identity(int(ident), name, json.loads(meta), float(created), int(faces))


# --------------------------------------------------------------------------------------------------
# Opening


def open_gallery(
    target: str | os.PathLike | GalleryTarget,
    contract: ModelContract | None = None,
    *,
    index: str = "exact",
    create: bool = True,
    index_params: Mapping[str, Any] | None = None,
    cache: bool | None = None,
    busy_timeout: float | None = None,
) -> GalleryStore:
    """Open (or create) the gallery at a path or URI, with the backend the URI names: the one opener of every backend.

    Args:
        target: a folder, or a URI (see :mod:`arcface.gallery.target`).
        contract: the model contract; required to create a gallery, checked against the bound one otherwise.
        index: ``"exact"`` (default), ``"hnsw"`` or ``"ivf"``: how searches run (see each backend).
        create: create the gallery when there is none (else :class:`FileNotFoundError`).
        index_params: index options (``m``, ``ef_construction``, ``ef_search``, ``nlist``, ``nprobe``...).
        cache: keep the SQLite store's index cache file (default on). Only the SQLite store has one: a server backend
            refuses the argument.
        busy_timeout: seconds a write waits for the storage to accept it while another client holds it (a lock; on
            Milvus, its rate limiter), then :class:`GalleryBusyError`; default 1.5.

    Raises:
        GalleryError: an unknown scheme or a malformed URI; a location holding something else; an argument the
            backend has no use for (the message names it).
        GalleryContractError: ``contract`` is not the bound one.
        GalleryStorageError: the server cannot be reached.
        FileNotFoundError: no gallery there and ``create=False``.
    """
    t = GalleryTarget.parse(target)
    cls = GALLERY_BACKENDS.get(t.kind)
    options = {k: v for k, v in (("cache", cache), ("busy_timeout", busy_timeout)) if v is not None}
    for name in options:
        if name not in cls.OPTIONS:
            takes = ", ".join(("index", "create", "index_params", *cls.OPTIONS))
            raise GalleryError(f"gallery {t.display}: {name}= has no meaning for a {t.kind} gallery (it takes {takes});"
                               " leave it out")  # fmt: skip
    return cls.from_target(t, contract, index=index, create=create, index_params=dict(index_params or {}), **options)


# --------------------------------------------------------------------------------------------------
# The interface


class GalleryStore(ABC):
    """What every gallery backend offers, and the rules every backend keeps.

    The rules (the conformance tests, ``tests/test_gallery*.py`` with the ``gallery_uri`` fixture, check each one on
    every backend):

    - **One contract per gallery.** The contract given when the gallery is created is stored with it; opening it with
      another one, or adding a face made under another contract id, raises :class:`GalleryContractError` naming
      both. Embeddings of different contracts are never compared.
    - **A write is one transaction.** Each write method (``add_identity``, ``add_faces``, ``remove_identity``,
      ``remove_face``) takes effect whole or not at all: a refused or failed ``add_faces`` leaves none of its faces;
      ``remove_identity`` removes the identity with every face it has, faces enrolled to it concurrently included.
      A method that raises :class:`GalleryStorageError` (busy, full, unreachable) has written nothing.
    - **Durable and visible when it returns.** A write is durable once its method returns (survives the process), and
      from then on every call through any connection to the same gallery, another process's included, sees it: an
      added face is searchable, a removed identity or face is never answered again (by ``search``, ``get_*``,
      ``list_*``, ``find_identities``). A search reads one consistent state: it never names an identity that was
      removed before it began.
    - **What deletion erases.** After ``remove_identity``/``remove_face`` the name, metadata and embeddings removed
      are out of every answer of every connection. What stays in storage until it is overwritten is the backend's to
      say (the SQLite store: nothing, in no file of its folder; a server: until its vacuum or compaction).
    - **What is accepted.** Names, metadata and sources as :mod:`arcface.gallery.rules` checks them (ValueError
      otherwise; ``find_identities`` refuses a name no identity could have in the same way); embeddings of
      ``dim`` finite values, not all zero, L2-normalised on the way in; ids are 1 .. 2^63 - 1 and any other value is
      simply not found (KeyError, or an empty answer).
    - **Search** returns at most ``k`` identities, best first (ties: lower identity id first). ``aggregate="max"``:
      an identity scores its best face; ``"mean_top"``: the mean of its ``top`` best faces (fewer when it has
      fewer). Exact with an exact index: faces are fetched until no identity not seen can beat the ``k``-th.
    - **Paging** by id (``list_identities(limit, after)``) neither skips nor repeats identities when others are
      added or removed between pages.
    - **Threads**: every method may be called from any thread. **Closed**: after :meth:`close`, every call raises
      :class:`GalleryError` ("closed"); ``close`` itself is idempotent.

    Attributes:
        contract: the bound model contract.
        dim: its embedding size.
        index_kind: how searches run (``"exact"``, ``"hnsw"``, ``"ivf"``).
        backend: the backend kind (``"sqlite"``, ``"postgresql"``, ``"milvus"``, ``"milvus-lite"``).
        OPTIONS: the arguments of :func:`open_gallery` beyond index/create/index_params this backend has a use for.
        MAX_FETCH: most faces one nearest-faces request may ask for (None: no limit).
    """

    contract: ModelContract
    dim: int
    index_kind: str
    backend: str = ""
    OPTIONS: ClassVar[tuple[str, ...]] = ()
    MAX_FETCH: ClassVar[int | None] = None

    def __init__(self, location: str, index: str) -> None:
        if index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {index!r}; expected one of {INDEX_KINDS}")
        self._location = location
        self._closed = False

    @classmethod
    def from_target(cls, target: GalleryTarget, contract: ModelContract | None, **options: Any) -> GalleryStore:
        """Open the gallery at a parsed location (what :func:`open_gallery` calls): the constructor's
        ``(target, contract, **options)``; a backend whose constructor takes something else overrides it."""
        return cls(target, contract, **options)  # type: ignore[call-arg]

    @classmethod
    def open(
        cls,
        target: str | os.PathLike | GalleryTarget,
        contract: ModelContract | None = None,
        **options: Any,
    ) -> GalleryStore:
        """Open (or create) the gallery at any path or URI, whatever its backend: :func:`open_gallery`."""
        return open_gallery(target, contract, **options)

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, contract={self.contract.id}, index={self.index_kind!r})"

    @property
    def contract_id(self) -> str:
        """The id of the bound model contract."""
        return self.contract.id

    @property
    def location(self) -> str:
        """Where the gallery is, fit for a message (a URI with its password masked)."""
        return self._location

    # ----------------------------------------------------------------------------------------------
    # Identities

    def add_identity(self, name: str, metadata: Mapping[str, Any] | None = None) -> int:
        """Create an identity; returns its id.

        Args:
            name: display name (see :func:`~arcface.gallery.rules.check_name`; need not be unique).
            metadata: a JSON object stored with it (see :func:`~arcface.gallery.rules.check_metadata`).

        Raises:
            ValueError: a name or metadata the gallery refuses.
            GalleryStorageError: (busy, full, unreachable) nothing was written.
        """
        name, meta = check_name(name), check_metadata(metadata)
        self._check_open()
        return self._insert_identity(name, meta)

    def get_identity(self, identity_id: int) -> Identity:
        """The identity with this id, with its face count (KeyError when there is none)."""
        self._check_open()
        found = self._identity(int(identity_id)) if valid_id(identity_id) else None
        if found is None:
            raise self._no_identity(identity_id)
        return found

    def list_identities(self, limit: int | None = None, after: int = 0) -> list[Identity]:
        """Identities by id, with their face counts: all of them, or one page.

        Args:
            limit: at most this many (None: all).
            after: only ids greater than this (the last id of the previous page; 0 for the first page).
        """
        if limit is not None and int(limit) < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self._check_open()
        return self._identity_page(max(0, min(int(after), INT64_MAX)), None if limit is None else int(limit))

    def find_identities(self, name: str) -> list[Identity]:
        """The identities with exactly this name, by id (ValueError for a name :func:`check_name` refuses)."""
        if not isinstance(name, str):
            return []
        name = check_name(name)
        self._check_open()
        return self._identities_named(name)

    def remove_identity(self, identity_id: int) -> int:
        """Remove an identity and all its faces (see the class's deletion rule); returns how many faces went.

        Raises:
            KeyError: no such identity.
            GalleryStorageError: (busy, full, unreachable) nothing was removed.
        """
        if not valid_id(identity_id):
            raise self._no_identity(identity_id)
        self._check_open()
        removed = self._delete_identity(int(identity_id))
        if removed is None:
            raise self._no_identity(identity_id)
        return removed

    @abstractmethod
    def count_identities(self) -> int:
        """Number of identities."""

    # ----------------------------------------------------------------------------------------------
    # Faces

    def add_face(
        self, identity_id: int, embedding: np.ndarray, contract_id: str | ModelContract, source: str | None = None
    ) -> int:
        """Enrol one face of an identity; returns the face id (see :meth:`add_faces`)."""
        e = np.asarray(embedding)
        if e.ndim != 1:
            raise ValueError(f"expected a ({self.dim},) embedding, got shape {e.shape}")
        return self.add_faces(identity_id, e[None], contract_id, [source])[0]

    def add_faces(
        self,
        identity_id: int,
        embeddings: np.ndarray,
        contract_id: str | ModelContract,
        sources: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Enrol several faces of one identity in one write; returns their ids.

        Args:
            identity_id: an existing identity.
            embeddings: (N, D) embeddings under ``contract_id`` (each row L2-normalised here).
            contract_id: the id (or the contract) of the model that made them.
            sources: N source names (or None).

        Raises:
            GalleryContractError: another contract. ValueError: a bad shape, a zero or non-finite vector, a bad
            source. KeyError: no such identity. GalleryStorageError: (busy, full, unreachable) nothing was written.
        """
        self._check_open()
        cid = contract_id.id if isinstance(contract_id, ModelContract) else str(contract_id)
        if cid != self.contract.id:
            raise GalleryContractError(
                f"embedding of model contract {cid} refused: the gallery {self.location} is bound to contract "
                f"{self.contract.id} ({self.contract.architecture}); embeddings of different contracts are never "
                "compared"
            )
        x = unit_rows(embeddings, self.dim)  # (N, D)
        srcs = [None] * x.shape[0] if sources is None else list(sources)
        if len(srcs) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} embeddings but {len(srcs)} sources")
        srcs = [check_source(s) for s in srcs]
        ids = self._insert_faces(int(identity_id), x, srcs) if valid_id(identity_id) else None
        if ids is None:
            raise self._no_identity(identity_id)
        return ids

    def remove_face(self, face_id: int) -> None:
        """Remove one face (see the class's deletion rule); KeyError when there is none."""
        self._check_open()
        if not valid_id(face_id) or not self._delete_face(int(face_id)):
            raise self._no_face(face_id)

    def list_faces(self, identity_id: int | None = None) -> list[FaceRecord]:
        """The faces of one identity (or all), by id, without embeddings."""
        self._check_open()
        if identity_id is not None and not valid_id(identity_id):
            return []
        return self._face_records(None if identity_id is None else int(identity_id))

    def get_embedding(self, face_id: int) -> np.ndarray:
        """The stored (D,) float32 unit embedding of a face (KeyError when there is none)."""
        return self.get_embeddings([face_id])[0]

    def get_embeddings(self, face_ids: Sequence[int]) -> np.ndarray:
        """(N, D) float32 stored embeddings of these faces, in this order (KeyError naming the first missing one)."""
        self._check_open()
        found = self._embeddings([int(f) for f in face_ids if valid_id(f)])
        missing = [f for f in face_ids if not valid_id(f) or int(f) not in found]
        if missing:
            raise self._no_face(missing[0])
        out = np.empty((len(face_ids), self.dim), np.float32)
        for i, f in enumerate(face_ids):
            out[i] = found[int(f)]
        return out

    @abstractmethod
    def count(self) -> int:
        """Number of faces."""

    # ----------------------------------------------------------------------------------------------
    # Search

    def search(self, embedding: np.ndarray, k: int = 5, *, aggregate: str = "max", top: int = 3) -> list[Match]:
        """The ``k`` identities most similar to a query face, best first.

        Args:
            embedding: (D,) query embedding under the gallery's contract (L2-normalised here).
            k: identities to return (fewer when the gallery has fewer).
            aggregate: ``"max"`` (identity score = its best face) or ``"mean_top"`` (mean of its ``top`` best faces).
            top: faces averaged by ``"mean_top"``.

        Returns:
            Up to ``k`` :class:`Match` records sorted by similarity, highest first (ties: lower identity id first).
        """
        q, k, top = checked_query(embedding, self.dim, k, aggregate, top)
        self._check_open()
        with self._search_view() as view:

            def mean_top(identities: list[int], top: int) -> dict[int, float]:
                owners, vectors = self._faces_of(view, identities)  # (M,), (M, D)
                return mean_of_top(owners, vectors @ q, top)

            ranked = rank_identities(lambda n: self._nearest(view, q, n), k, aggregate, top, mean_top,
                                     self.MAX_FETCH)  # fmt: skip
            names = self._names(view, [ident for _, ident, _ in ranked[: 2 * k]])
        # A face whose identity is gone (removed meanwhile) is not an answer.
        chosen = [(s, ident, f) for s, ident, f in ranked if ident in names][:k]
        return [Match(ident, names[ident], float(s), int(f)) for s, ident, f in chosen]

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    @abstractmethod
    def close(self) -> None:
        """Release the connections (idempotent); later calls raise :class:`GalleryError` ("closed")."""

    # ----------------------------------------------------------------------------------------------
    # What each backend implements (called on an open gallery with checked arguments)

    @abstractmethod
    def _insert_identity(self, name: str, metadata: str) -> int:
        """Store a new identity (``metadata`` is compact JSON); its id."""

    @abstractmethod
    def _identity(self, identity_id: int) -> Identity | None:
        """The identity with its face count, or None."""

    @abstractmethod
    def _identity_page(self, after: int, limit: int | None) -> list[Identity]:
        """Identities with ids above ``after``, by id, at most ``limit``."""

    @abstractmethod
    def _identities_named(self, name: str) -> list[Identity]:
        """Identities with exactly this name, by id."""

    @abstractmethod
    def _delete_identity(self, identity_id: int) -> int | None:
        """Remove an identity and its faces in one write; the number of faces removed. None (or the KeyError of
        :meth:`_no_identity`) when there was none."""

    @abstractmethod
    def _insert_faces(self, identity_id: int, x: np.ndarray, sources: list[str | None]) -> list[int] | None:
        """Store (N, D) unit rows of an identity in one write; their ids. None (or the KeyError of
        :meth:`_no_identity`), with nothing written, when the identity does not exist."""

    @abstractmethod
    def _delete_face(self, face_id: int) -> bool:
        """Remove one face; False (or the KeyError of :meth:`_no_face`) when there was none."""

    @abstractmethod
    def _face_records(self, identity_id: int | None) -> list[FaceRecord]:
        """The faces of one identity (or all), by id."""

    @abstractmethod
    def _embeddings(self, face_ids: list[int]) -> dict[int, np.ndarray]:
        """Face id -> (D,) stored embedding, for those of ``face_ids`` that exist."""

    @abstractmethod
    def _search_view(self) -> AbstractContextManager[Any]:
        """One consistent state to search (a snapshot, a connection): handed to the three primitives below."""

    @abstractmethod
    def _nearest(self, view: Any, q: np.ndarray, n: int) -> list[tuple[float, int, int]]:
        """The ``n`` faces nearest the (D,) unit query, nearest first: ``(cosine similarity, face, identity)``;
        fewer only when the gallery has no more."""

    @abstractmethod
    def _faces_of(self, view: Any, identities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Every face of these identities: their identity ids (M,) and their stored embeddings (M, D)."""

    @abstractmethod
    def _names(self, view: Any, identities: list[int]) -> dict[int, str]:
        """Identity id -> name, for those of ``identities`` that exist."""

    # ----------------------------------------------------------------------------------------------
    # Shared by the backends

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"the gallery {self.location} is closed")

    def _no_identity(self, identity_id: object) -> KeyError:
        return KeyError(f"no identity {identity_id} in the gallery {self.location}")

    def _no_face(self, face_id: object) -> KeyError:
        return KeyError(f"no face {face_id} in the gallery {self.location}")

    def _new_meta(self, contract: ModelContract | None, schema: str) -> dict[str, str]:
        """What a new gallery stores about itself: the schema version, the contract (JSON) and its id."""
        if contract is None:
            raise GalleryError(f"{self.location}: creating a gallery needs a model contract")
        return {"schema": schema, "contract": contract.to_json(), "contract_id": contract.id}

    def _bound_contract(self, meta: Mapping[str, str], given: ModelContract | None, schema: str) -> ModelContract:
        """The contract a gallery's stored ``meta`` binds it to, checked against the schema and the contract
        ``given`` to open it."""
        if meta.get("schema") != schema or "contract" not in meta:
            raise GalleryError(f"{self.location}: gallery schema {meta.get('schema')} (this code reads {schema})")
        try:
            bound = ModelContract.from_json(meta["contract"])
        except (ValueError, TypeError, KeyError) as e:
            raise GalleryError(f"{self.location}: the stored model contract is unreadable ({e})") from None
        if given is not None and given.id != bound.id:
            raise GalleryContractError(
                f"the gallery {self.location} is bound to model contract {bound.id} ({bound.architecture}, "
                f"{bound.embedding_size}-D); the model given has contract {given.id} ({given.architecture}, "
                f"{given.embedding_size}-D); embeddings of different contracts are never compared"
            )
        return bound


# --------------------------------------------------------------------------------------------------
# Shared checks and the search's identity ranking


def unit_rows(x: np.ndarray, dim: int) -> np.ndarray:
    """(N, D) float32 rows L2-normalised; refuses another D, zero rows and non-finite values."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected ({dim},) embeddings (the gallery's contract is {dim}-D), got shape {x.shape[1:]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embedding has non-finite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    if np.any(norms < 1e-12):
        raise ValueError("embedding is a zero vector")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def checked_query(embedding: np.ndarray, dim: int, k: int, aggregate: str, top: int) -> tuple[np.ndarray, int, int]:
    """A search's (D,) unit query, ``k`` and ``top``, or the ValueError every backend raises."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {AGGREGATES}")
    k, top = int(k), int(top)
    if k < 1 or top < 1:
        raise ValueError(f"k and top must be >= 1, got k={k}, top={top}")
    e = np.asarray(embedding)
    if e.ndim != 1:
        raise ValueError(f"expected a ({dim},) query embedding, got shape {e.shape}")
    return unit_rows(e[None], dim)[0], k, top


def mean_of_top(owners: np.ndarray, similarities: np.ndarray, top: int) -> dict[int, float]:
    """Identity -> the mean of its ``top`` best similarities (fewer when it has fewer), from each face's
    ``owners[i]`` and ``similarities[i]``."""
    sims: dict[int, list[float]] = {}
    for ident, s in zip(np.asarray(owners).tolist(), np.asarray(similarities, np.float64).tolist(), strict=True):
        sims.setdefault(int(ident), []).append(float(s))
    return {ident: float(np.mean(sorted(s, reverse=True)[:top])) for ident, s in sims.items()}


def first_fetch(k: int, aggregate: str, top: int) -> int:
    """How many nearest faces a search asks for first."""
    return max(32, 4 * k * (top if aggregate == "mean_top" else 1))


def rank_identities(
    nearest: Callable[[int], list[tuple[float, int, int]]],
    k: int,
    aggregate: str,
    top: int,
    mean_top: Callable[[list[int], int], dict[int, float]],
    max_fetch: int | None = None,
) -> list[tuple[float, int, int]]:
    """The identities of a search, best first: ``(score, identity, best face)``.

    Faces are fetched nearest first (``nearest(n)`` -> up to ``n`` ``(similarity, face, identity)``, fewer only when
    there are no more), doubling ``n`` until no identity that was not seen can beat the ``k``-th (an identity's score
    is never above its best face), or every face was fetched, or ``max_fetch`` (a server's limit on one answer) is
    reached.

    Args:
        nearest: the ``n`` nearest faces of the query.
        k, aggregate, top: as :meth:`GalleryStore.search` takes them.
        mean_top: identities, top -> each identity's mean of its ``top`` best similarities.
        max_fetch: most faces one ``nearest`` call may ask for.
    """
    cap = INT64_MAX if max_fetch is None else max_fetch
    n = min(cap, first_fetch(k, aggregate, top))
    while True:
        hits = nearest(n)
        best: dict[int, tuple[float, int]] = {}
        last = math.inf
        for s, f, ident in hits:
            last = s
            best.setdefault(ident, (s, f))
        if aggregate == "max":
            ranked = [(s, ident, f) for ident, (s, f) in best.items()]
        else:
            means = mean_top(list(best), top)
            ranked = [(means[ident], ident, f) for ident, (_, f) in best.items() if ident in means]
        ranked.sort(key=lambda t: (-t[0], t[1]))
        if len(hits) < n or n >= cap or (len(ranked) >= k and ranked[k - 1][0] >= last):
            return ranked
        n = min(cap, 2 * n)
