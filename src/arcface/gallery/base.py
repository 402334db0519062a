"""One interface for every gallery backend, the records it returns, and the URI that chooses a backend.

A gallery is named by a path or a URI, everywhere one is named (the API, ``--gallery``, ``arcface serve``, the
settings file)::

    /srv/gallery, sqlite:///srv/gallery       the SQLite store (+ FAISS) in that folder: the embedded default
    postgresql://USER:PASSWORD@HOST:PORT/DB   PostgreSQL with pgvector (any libpq URI; ``postgres://`` too)
    milvus://[USER:PASSWORD@]HOST:PORT[/DB]   a Milvus server or cluster over gRPC (``milvus+https://``: TLS)
    milvus-lite:///path/file.db               an embedded Milvus Lite data folder (one process only)

A server URI may add ``gallery=NAME`` (the gallery's name on that server: a PostgreSQL schema, a prefix of Milvus
collections; default ``arcface``; lower-case letters, digits and ``_``) and ``ef_search=N`` (the HNSW search beam
width) to its query string; they are taken out before the rest reaches the driver. The path after ``sqlite://`` or
``milvus-lite://`` is the text that follows the ``//`` (``sqlite:///srv/g`` is ``/srv/g``).

Credentials never leave the URI: :attr:`GalleryTarget.display` (and ``str()``) shows the password and any
``password``/``token`` parameter as ``***``, and every message of a backend uses that form.

Every backend (:class:`GalleryStore`) keeps the same semantics (see :mod:`arcface.gallery.store` for the SQLite
store's decisions and the docs for what each server backend promises): one bound contract, refused otherwise;
identities and faces CRUD; every write one transaction, durable when the method returns; a removal gone from search
at once; search with ``k`` and the aggregate rules; the limits and errors of :mod:`arcface.gallery.rules`.
"""

from __future__ import annotations

import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import numpy as np

from arcface.gallery.rules import GalleryContractError, GalleryError, check_source
from arcface.inference.contract import ModelContract
from arcface.registry import Registry

__all__ = [
    "AGGREGATES",
    "GALLERY_BACKENDS",
    "DEFAULT_GALLERY_NAME",
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
DEFAULT_GALLERY_NAME = "arcface"
"""The gallery's name on a server when the URI gives none."""
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_OUR_PARAMS = ("gallery", "ef_search")
_SECRET_PARAMS = ("password", "token", "sslpassword")
_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "milvus": "milvus",
    "milvus+https": "milvus",
    "milvus-lite": "milvus-lite",
}

GALLERY_BACKENDS: Registry = Registry("gallery backend")
"""Backend kind (``sqlite``, ``postgresql``, ``milvus``, ``milvus-lite``) -> opener ``(target, contract, **options)
-> GalleryStore``; each backend module registers itself."""


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


# --------------------------------------------------------------------------------------------------
# Where a gallery is


@dataclass(frozen=True)
class GalleryTarget:
    """A parsed gallery location (see the module docstring for the forms).

    Attributes:
        kind: ``"sqlite"``, ``"postgresql"``, ``"milvus"`` or ``"milvus-lite"``.
        uri: what was given (credentials included: never print it; ``str()`` is :attr:`display`).
        display: the location with the password masked, for messages.
        path: the folder (SQLite) or data folder (Milvus Lite); None for a server.
        name: the gallery's name on a server (``gallery=``; default ``arcface``).
        connect: what the driver gets: the libpq URI without our parameters, or Milvus's ``http(s)://host:port``.
        options: our parameters other than the name (``ef_search``), as ints.
        user, password, database: Milvus credentials and database from the URI ("" when absent).
    """

    kind: str
    uri: str = field(repr=False)
    display: str
    path: Path | None = None
    name: str = DEFAULT_GALLERY_NAME
    connect: str = field(default="", repr=False)
    options: Mapping[str, int] = field(default_factory=dict)
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    database: str = ""

    def __str__(self) -> str:
        return self.display

    @classmethod
    def parse(cls, value: str | os.PathLike | GalleryTarget) -> GalleryTarget:
        """A path or a URI as a target.

        Raises:
            GalleryError: an unknown scheme, or a URI that is malformed (the message shows it masked).
        """
        if isinstance(value, GalleryTarget):
            return value
        if isinstance(value, os.PathLike) or "://" not in str(value):
            path = Path(value)
            if not str(path).strip():
                raise GalleryError("a gallery needs a folder or a URI, got an empty string")
            return cls("sqlite", str(path), str(path), path=path)
        text = str(value)
        scheme, rest = text.split("://", 1)
        kind = _SCHEMES.get(scheme.lower())
        display = mask_uri(text)
        if kind is None:
            known = ", ".join(sorted(_SCHEMES))
            raise GalleryError(f"gallery {display}: unknown scheme {scheme!r} (a folder, or one of {known}://)")
        if kind == "sqlite":
            if "?" in rest or not rest.strip():
                raise GalleryError(f"gallery {display}: sqlite:// takes a folder and nothing else (sqlite:///srv/g)")
            return cls("sqlite", text, display, path=Path(rest))
        base, _, query = rest.partition("?")
        params = parse_qsl(query, keep_blank_values=True)
        ours = {k: v for k, v in params if k in _OUR_PARAMS}
        name = ours.get("gallery", DEFAULT_GALLERY_NAME)
        if not _NAME.fullmatch(name):
            raise GalleryError(
                f"gallery {display}: gallery={name!r} must be 1 to 40 lower-case letters, digits or _, "
                "starting with a letter"
            )
        options: dict[str, int] = {}
        if "ef_search" in ours:
            try:
                options["ef_search"] = int(ours["ef_search"])
            except ValueError:
                options["ef_search"] = 0
            if not 1 <= options["ef_search"] <= 32768:
                raise GalleryError(f"gallery {display}: ef_search must be an integer in 1..32768")
        rest_query = urlencode([(k, v) for k, v in params if k not in _OUR_PARAMS], quote_via=quote)
        if kind == "milvus-lite":
            if rest_query:
                raise GalleryError(f"gallery {display}: milvus-lite:// takes gallery= and ef_search= only")
            if not base.endswith(".db") or base.endswith("/.db"):
                raise GalleryError(f"gallery {display}: a Milvus Lite file is named *.db (milvus-lite:///srv/g.db)")
            return cls(kind, text, display, path=Path(base), name=name, options=options)
        if kind == "postgresql":
            connect = f"postgresql://{base}" + (f"?{rest_query}" if rest_query else "")
            return cls(kind, text, display, name=name, connect=connect, options=options)
        # Milvus: [user:password@]host[:port][/database]
        netloc, _, db = base.partition("/")
        user = password = ""
        if "@" in netloc:
            cred, netloc = netloc.rsplit("@", 1)
            user, _, password = cred.partition(":")
        host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
        if not host or (port and not port.isdigit()) or rest_query or "/" in db:
            raise GalleryError(f"gallery {display}: expected milvus://[user:password@]host:port[/database]")
        scheme_http = "https" if scheme.lower() == "milvus+https" else "http"
        connect = f"{scheme_http}://{host}:{port or 19530}"
        return cls(kind, text, display, name=name, connect=connect, options=options, user=user, password=password,
                   database=db)  # fmt: skip


def mask_uri(value: str | os.PathLike) -> str:
    """``value`` with the password of a URI (and ``password``/``token`` parameters) replaced by ``***``."""
    text = str(value)
    if "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    base, sep, query = rest.partition("?")
    netloc, slash, path = base.partition("/")
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        netloc = f"{cred}@{host}"
    if query:
        parts = []
        for item in query.split("&"):
            key = item.split("=", 1)[0]
            parts.append(f"{key}=***" if key.lower() in _SECRET_PARAMS else item)
        query = "&".join(parts)
    return f"{scheme}://{netloc}{slash}{path}{sep}{query}"


def open_gallery(
    target: str | os.PathLike | GalleryTarget,
    contract: ModelContract | None = None,
    *,
    index: str = "exact",
    create: bool = True,
    index_params: Mapping[str, Any] | None = None,
    cache: bool = True,
    busy_timeout: float = 1.5,
) -> GalleryStore:
    """Open (or create) the gallery at a path or URI, with the backend the URI names.

    Args:
        target: a folder, or a URI (see the module docstring).
        contract: the model contract; required to create a gallery, checked against the bound one otherwise.
        index: ``"exact"`` (default) or ``"hnsw"``/``"ivf"``: how searches run (see each backend).
        create: create the gallery when there is none (else :class:`FileNotFoundError`).
        index_params: index options (``m``, ``ef_construction``, ``ef_search``, ``nlist``, ``nprobe``...).
        cache: the SQLite store's index cache file (ignored by the servers).
        busy_timeout: seconds a write waits for a lock another connection holds, then :class:`GalleryBusyError`.

    Raises:
        GalleryError: an unknown scheme or a malformed URI; a location holding something else.
        GalleryContractError: ``contract`` is not the bound one.
        GalleryStorageError: the server cannot be reached.
        FileNotFoundError: no gallery there and ``create=False``.
        ImportError: the backend's extra is not installed (the message names it).
    """
    t = GalleryTarget.parse(target)
    opener = GALLERY_BACKENDS.get(t.kind)
    return opener(t, contract, index=index, create=create, index_params=dict(index_params or {}), cache=cache,
                  busy_timeout=busy_timeout)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The interface


class GalleryStore(ABC):
    """What every gallery backend offers; see the module docstring for the shared semantics.

    Attributes:
        contract: the bound model contract.
        dim: its embedding size.
        index_kind: how searches run (``"exact"``, ``"hnsw"``, ``"ivf"``).
        backend: the backend kind (``"sqlite"``, ``"postgresql"``, ``"milvus"``, ``"milvus-lite"``).
    """

    contract: ModelContract
    dim: int
    index_kind: str
    backend: str = ""

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def contract_id(self) -> str:
        """The id of the bound model contract."""
        return self.contract.id

    @property
    def location(self) -> str:
        """Where the gallery is, fit for a message: the URI with its password masked (a server backend keeps its
        parsed :class:`GalleryTarget` as ``_target``; a folder backend overrides this)."""
        return self._target.display  # type: ignore[attr-defined]

    # Identities
    @abstractmethod
    def add_identity(self, name: str, metadata: Mapping[str, Any] | None = None) -> int:
        """Create an identity; returns its id (ValueError for a name or metadata :mod:`rules` refuses)."""

    @abstractmethod
    def get_identity(self, identity_id: int) -> Identity:
        """The identity with this id (KeyError when there is none, also for an id outside 1 .. 2^63 - 1)."""

    @abstractmethod
    def list_identities(self, limit: int | None = None, after: int = 0) -> list[Identity]:
        """Identities by id with face counts: all, or the page of ``limit`` after id ``after``."""

    @abstractmethod
    def find_identities(self, name: str) -> list[Identity]:
        """The identities with exactly this name, by id."""

    @abstractmethod
    def remove_identity(self, identity_id: int) -> int:
        """Remove an identity and its faces (gone from search at once); returns how many faces went."""

    @abstractmethod
    def count_identities(self) -> int:
        """Number of identities."""

    # Faces
    def add_face(
        self, identity_id: int, embedding: np.ndarray, contract_id: str | ModelContract, source: str | None = None
    ) -> int:
        """Enrol one face of an identity; returns the face id (see :meth:`add_faces`)."""
        e = np.asarray(embedding)
        if e.ndim != 1:
            raise ValueError(f"expected a ({self.dim},) embedding, got shape {e.shape}")
        return self.add_faces(identity_id, e[None], contract_id, [source])[0]

    @abstractmethod
    def add_faces(
        self,
        identity_id: int,
        embeddings: np.ndarray,
        contract_id: str | ModelContract,
        sources: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Enrol several faces of one identity in one write; returns their ids.

        Raises:
            GalleryContractError: another contract. ValueError: a bad shape, a zero or non-finite vector, a bad
            source. KeyError: no such identity. GalleryBusyError, GalleryFullError, GalleryStorageError: nothing
            was written.
        """

    @abstractmethod
    def remove_face(self, face_id: int) -> None:
        """Remove one face (gone from search at once); KeyError when there is none."""

    @abstractmethod
    def list_faces(self, identity_id: int | None = None) -> list[FaceRecord]:
        """The faces of one identity (or all), by id, without embeddings."""

    @abstractmethod
    def get_embedding(self, face_id: int) -> np.ndarray:
        """The stored (D,) float32 unit embedding of a face (KeyError when there is none)."""

    def get_embeddings(self, face_ids: Sequence[int]) -> np.ndarray:
        """(N, D) float32 stored embeddings of these faces, in this order (KeyError naming the first missing one)."""
        out = np.empty((len(face_ids), self.dim), np.float32)
        for i, f in enumerate(face_ids):
            out[i] = self.get_embedding(f)
        return out

    @abstractmethod
    def count(self) -> int:
        """Number of faces."""

    # Search
    @abstractmethod
    def search(self, embedding: np.ndarray, k: int = 5, *, aggregate: str = "max", top: int = 3) -> list[Match]:
        """The ``k`` identities most similar to a query face, best first (ties: lower identity id first)."""

    # Lifecycle
    @abstractmethod
    def close(self) -> None:
        """Release the connections (idempotent); later calls raise :class:`GalleryError` ("closed")."""


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


def checked_faces(
    gallery: GalleryStore,
    embeddings: np.ndarray,
    contract_id: str | ModelContract,
    sources: Sequence[str | None] | None,
) -> tuple[np.ndarray, list[str | None]]:
    """The (N, D) unit rows and N checked sources of an ``add_faces`` call, or the error every backend raises."""
    cid = contract_id.id if isinstance(contract_id, ModelContract) else str(contract_id)
    if cid != gallery.contract.id:
        raise GalleryContractError(
            f"embedding of model contract {cid} refused: the gallery {gallery.location} is bound to contract "
            f"{gallery.contract.id} ({gallery.contract.architecture}); embeddings of different contracts are never "
            "compared"
        )
    x = unit_rows(embeddings, gallery.dim)
    sources = [None] * x.shape[0] if sources is None else list(sources)
    if len(sources) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {len(sources)} sources")
    return x, [check_source(s) for s in sources]


def contract_refused(location: str, bound: ModelContract, given: ModelContract) -> GalleryContractError:
    """The error of opening a gallery bound to ``bound`` with the model contract ``given``."""
    return GalleryContractError(
        f"the gallery {location} is bound to model contract {bound.id} ({bound.architecture}, "
        f"{bound.embedding_size}-D); the model given has contract {given.id} ({given.architecture}, "
        f"{given.embedding_size}-D); embeddings of different contracts are never compared"
    )


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


def first_fetch(k: int, aggregate: str, top: int) -> int:
    """How many nearest faces a search asks for first."""
    return max(32, 4 * k * (top if aggregate == "mean_top" else 1))


def rank_identities(
    nearest: Callable[[int], list[tuple[float, int, int]]],
    size: int,
    k: int,
    aggregate: str,
    top: int,
    mean_top: Callable[[list[int], int], dict[int, float]],
    max_fetch: int | None = None,
) -> list[tuple[float, int, int]]:
    """The identities of a search, best first: ``(score, identity, best face)``.

    Faces are fetched nearest first (``nearest(n)`` -> up to ``n`` ``(similarity, face, identity)``), doubling ``n``
    until no identity that was not seen can beat the ``k``-th (an identity's score is never above its best face), or
    every face was fetched, or ``max_fetch`` (a server's limit on one answer) is reached.

    Args:
        nearest: the ``n`` nearest faces of the query.
        size: faces in the gallery.
        k, aggregate, top: as :meth:`GalleryStore.search` takes them.
        mean_top: identities, top -> each identity's mean of its ``top`` best similarities.
        max_fetch: most faces one ``nearest`` call may ask for.
    """
    cap = size if max_fetch is None else min(size, max_fetch)
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
