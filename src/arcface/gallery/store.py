"""A persistent face gallery: identities and their face embeddings in SQLite, searched through FAISS.

Layout of a gallery folder::

    DIR/gallery.sqlite3        the truth: meta (contract, schema, generation), identities, faces
    DIR/index.<kind>.faiss     optional cache of the search index (written on close)

Decisions:

- **One contract per gallery.** The first :meth:`Gallery.open` binds the model contract (stored as JSON with its
  id); opening it later with another contract, or adding a face made under another contract id, raises
  :class:`GalleryContractError` naming both ids. Embeddings of different contracts are never compared.
- **Durability.** WAL journal with ``synchronous=FULL``; every write is one transaction committed before the
  method returns, so an acknowledged write survives a crash of the process (and of the machine).
- **Embeddings are L2-normalised on the way in** (faces and queries): cosine similarity is scale-invariant,
  so normalising never changes a comparison; zero, non-finite or wrongly shaped vectors are refused. They are
  stored as little-endian float32 BLOBs of exactly ``4 * D`` bytes.
- **The index is derived data.** On open it is loaded from the cache file when that file is intact and
  belongs to the database's current generation (a counter bumped by every change to faces), else rebuilt from the
  database; a missing, stale or corrupted cache is only slower, never wrong. Writes update it incrementally.
  Removal masks the face ids (no FAISS kind needs to support ``remove_ids``; HNSW cannot); the index is
  rebuilt from the database once masked ids exceed a quarter of it. An IVF index is retrained when the
  gallery has doubled since it was trained (until it has enough points for all its cells).
- **Identity score.** ``aggregate="max"`` (default): the best similarity over the identity's faces; one good
  enrolment photo is enough, and more photos never lower the score. ``aggregate="mean_top"``: the mean of
  the identity's ``top`` best face similarities (fewer when it has fewer faces), which damps a single
  lucky face. Both are exact for the exact index: faces are fetched until no unseen identity can beat the
  k-th result (an identity's score is never above its best face).
- **Threads and processes.** One SQLite connection guarded by a re-entrant lock: every method may be called
  from any thread. Writes from another process are noticed (``PRAGMA data_version``) before the next call,
  which then rebuilds the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arcface.index import INDEX_KINDS, VectorIndex
from arcface.inference.contract import ModelContract

__all__ = ["DB_NAME", "FaceRecord", "Gallery", "GalleryContractError", "GalleryError", "Identity", "Match"]

logger = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite3"
SCHEMA_VERSION = 1
AGGREGATES = ("max", "mean_top")
_CACHE_MAGIC = b"ARCFACE-GALLERY-INDEX 1\n"
_MASK_REBUILD_SHARE = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    contract_id TEXT NOT NULL,
    created REAL NOT NULL,
    source TEXT
);
CREATE INDEX IF NOT EXISTS faces_identity ON faces(identity_id);
CREATE INDEX IF NOT EXISTS identities_name ON identities(name);
"""


class GalleryError(ValueError):
    """A folder that is not a usable gallery (not SQLite, another schema, no contract)."""


class GalleryContractError(GalleryError):
    """An embedding or model contract other than the one the gallery is bound to."""


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
    """One identity found by :meth:`Gallery.search`.

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


class Gallery:
    """Identities and face embeddings of one model contract, persisted in SQLite and searched with FAISS.

    Use :meth:`open`; the object is a context manager (``with Gallery.open(d, contract) as g:``).

    Args:
        directory: the gallery folder.
        contract: the model contract; required to create a gallery, checked against the bound one otherwise.
        index: ``"exact"`` (default, ``IndexFlatIP``), ``"hnsw"`` or ``"ivf"`` (approximate, for large galleries;
            see :class:`~arcface.index.VectorIndex`).
        create: create the gallery when the folder has none (else :class:`FileNotFoundError`).
        index_params: extra :class:`~arcface.index.VectorIndex` arguments (``m``, ``ef_search``, ``nlist``...).
        cache: keep the index cache file (read on open, written on close).

    Raises:
        FileNotFoundError: no gallery there and ``create=False``.
        GalleryContractError: ``contract`` is not the bound one.
        GalleryError: the folder holds something that is not a gallery, or a new gallery without a contract.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        contract: ModelContract | None = None,
        *,
        index: str = "exact",
        create: bool = True,
        index_params: Mapping[str, Any] | None = None,
        cache: bool = True,
    ) -> None:
        if index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {index!r}; expected one of {INDEX_KINDS}")
        self.directory = Path(directory)
        self.index_kind = index
        self._index_params = dict(index_params or {})
        self._cache = bool(cache)
        self._lock = threading.RLock()
        db = self.directory / DB_NAME
        if not db.is_file():
            if not create:
                raise FileNotFoundError(f"no gallery at {self.directory} (no {DB_NAME}); enroll faces first")
            if contract is None:
                raise GalleryError(f"{self.directory}: creating a gallery needs a model contract")
            self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30.0)
        except sqlite3.Error as e:
            raise GalleryError(f"{db}: cannot open the gallery database ({e})") from None
        self._closed = False
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.contract = self._bind(contract)
            self.dim = self.contract.embedding_size
            self._load_index()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise GalleryError(f"{db}: not a usable gallery database ({e})") from None
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike,
        contract: ModelContract | None = None,
        *,
        index: str = "exact",
        create: bool = True,
        index_params: Mapping[str, Any] | None = None,
        cache: bool = True,
    ) -> Gallery:
        """Open (or create) the gallery in ``directory``; the arguments are those of :class:`Gallery`."""
        return cls(directory, contract, index=index, create=create, index_params=index_params, cache=cache)

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({str(self.directory)!r}, contract={self.contract.id}, index={self.index_kind!r})"

    @property
    def contract_id(self) -> str:
        """The id of the bound model contract."""
        return self.contract.id

    # ----------------------------------------------------------------------------------------------
    # Identities

    def add_identity(self, name: str, metadata: Mapping[str, Any] | None = None) -> int:
        """Create an identity; returns its id.

        Args:
            name: display name (non-empty; need not be unique).
            metadata: a JSON object stored with it.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError("an identity needs a non-empty name")
        meta = _json_object(metadata)
        with self._lock:
            self._check_open()
            with _Transaction(self._db, bump=False) as cur:
                cur.execute(
                    "INSERT INTO identities (name, metadata, created) VALUES (?, ?, ?)", (name, meta, time.time())
                )
                return int(cur.lastrowid)

    def get_identity(self, identity_id: int) -> Identity:
        """The identity with this id.

        Raises:
            KeyError: no such identity.
        """
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT i.id, i.name, i.metadata, i.created, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id)"
                " FROM identities i WHERE i.id = ?",
                (int(identity_id),),
            ).fetchone()
        if row is None:
            raise KeyError(f"no identity {identity_id} in the gallery {self.directory}")
        return _identity(row)

    def list_identities(self) -> list[Identity]:
        """Every identity, by id, with its face count."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT i.id, i.name, i.metadata, i.created, COUNT(f.id) FROM identities i"
                " LEFT JOIN faces f ON f.identity_id = i.id GROUP BY i.id ORDER BY i.id"
            ).fetchall()
        return [_identity(r) for r in rows]

    def find_identities(self, name: str) -> list[Identity]:
        """The identities with exactly this name, by id."""
        with self._lock:
            self._check_open()
            ids = [r[0] for r in self._db.execute("SELECT id FROM identities WHERE name = ? ORDER BY id", (name,))]
            return [self.get_identity(i) for i in ids]

    def remove_identity(self, identity_id: int) -> int:
        """Remove an identity and all its faces; returns how many faces went.

        Raises:
            KeyError: no such identity.
        """
        with self._lock:
            self._check_open()
            self._sync()
            with (tx := self._tx()) as cur:
                if cur.execute("SELECT 1 FROM identities WHERE id = ?", (int(identity_id),)).fetchone() is None:
                    raise KeyError(f"no identity {identity_id} in the gallery {self.directory}")
                rows = cur.execute("SELECT id FROM faces WHERE identity_id = ?", (int(identity_id),)).fetchall()
                face_ids = [int(r[0]) for r in rows]
                cur.execute("DELETE FROM faces WHERE identity_id = ?", (int(identity_id),))
                cur.execute("DELETE FROM identities WHERE id = ?", (int(identity_id),))
            self._gen = tx.generation
            self._forget(face_ids)
            return len(face_ids)

    def count_identities(self) -> int:
        """Number of identities."""
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT COUNT(*) FROM identities").fetchone()[0])

    # ----------------------------------------------------------------------------------------------
    # Faces

    def add_face(
        self, identity_id: int, embedding: np.ndarray, contract_id: str | ModelContract, source: str | None = None
    ) -> int:
        """Enrol one face of an identity; returns the face id.

        Args:
            identity_id: an existing identity.
            embedding: (D,) the face's embedding under ``contract_id`` (L2-normalised here).
            contract_id: the id (or the contract) of the model that made it; must be the gallery's.
            source: where it came from (a file name, ...), or None.

        Raises:
            GalleryContractError: another contract.
            ValueError: a shape other than (D,), or a zero or non-finite vector.
            KeyError: no such identity.
        """
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
        """Enrol several faces of one identity in one transaction; returns their ids.

        Args:
            identity_id: an existing identity.
            embeddings: (N, D) embeddings under ``contract_id`` (each row L2-normalised here).
            contract_id: the id (or the contract) of the model that made them.
            sources: N source names (or None).

        Raises:
            see :meth:`add_face`.
        """
        cid = contract_id.id if isinstance(contract_id, ModelContract) else str(contract_id)
        if cid != self.contract.id:
            raise GalleryContractError(
                f"embedding of model contract {cid} refused: the gallery {self.directory} is bound to contract "
                f"{self.contract.id} ({self.contract.architecture}); embeddings of different contracts are never "
                "compared"
            )
        x = _unit_rows(embeddings, self.dim)  # (N, D)
        sources = [None] * x.shape[0] if sources is None else list(sources)
        if len(sources) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} embeddings but {len(sources)} sources")
        now = time.time()
        with self._lock:
            self._check_open()
            self._sync()
            with (tx := self._tx()) as cur:
                if cur.execute("SELECT 1 FROM identities WHERE id = ?", (int(identity_id),)).fetchone() is None:
                    raise KeyError(f"no identity {identity_id} in the gallery {self.directory}")
                ids = []
                for row, src in zip(x, sources, strict=True):
                    cur.execute(
                        "INSERT INTO faces (identity_id, embedding, contract_id, created, source)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (int(identity_id), row.astype("<f4").tobytes(), cid, now, src),
                    )
                    ids.append(int(cur.lastrowid))
            # Committed: now the index may see them.
            self._gen = tx.generation
            self._index.add(x, np.asarray(ids, np.int64))
            self._face_identity.update((i, int(identity_id)) for i in ids)
            self._maybe_retrain()
            return ids

    def remove_face(self, face_id: int) -> None:
        """Remove one face.

        Raises:
            KeyError: no such face.
        """
        with self._lock:
            self._check_open()
            self._sync()
            with (tx := self._tx()) as cur:
                cur.execute("DELETE FROM faces WHERE id = ?", (int(face_id),))
                if cur.rowcount == 0:
                    raise KeyError(f"no face {face_id} in the gallery {self.directory}")
            self._gen = tx.generation
            self._forget([int(face_id)])

    def list_faces(self, identity_id: int | None = None) -> list[FaceRecord]:
        """The faces of one identity (or all), by id, without embeddings."""
        sql = "SELECT id, identity_id, contract_id, created, source FROM faces"
        args: tuple = ()
        if identity_id is not None:
            sql, args = sql + " WHERE identity_id = ?", (int(identity_id),)
        with self._lock:
            self._check_open()
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [FaceRecord(int(a), int(b), c, float(d), e) for a, b, c, d, e in rows]

    def get_embedding(self, face_id: int) -> np.ndarray:
        """The stored (D,) float32 unit embedding of a face.

        Raises:
            KeyError: no such face.
        """
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT id, embedding FROM faces WHERE id = ?", (int(face_id),)).fetchone()
        if row is None:
            raise KeyError(f"no face {face_id} in the gallery {self.directory}")
        return self._decode(*row)

    def count(self) -> int:
        """Number of faces."""
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT COUNT(*) FROM faces").fetchone()[0])

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
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {AGGREGATES}")
        k, top = int(k), int(top)
        if k < 1 or top < 1:
            raise ValueError(f"k and top must be >= 1, got k={k}, top={top}")
        e = np.asarray(embedding)
        if e.ndim != 1:
            raise ValueError(f"expected a ({self.dim},) query embedding, got shape {e.shape}")
        q = _unit_rows(e[None], self.dim)  # (1, D)
        with self._lock:
            self._check_open()
            self._sync()
            size = len(self._index)
            if size - len(self._masked) <= 0:
                return []
            n = min(size, max(32, 4 * k * (top if aggregate == "mean_top" else 1)) + len(self._masked))
            while True:
                scores, ids = self._index.search(q, n)  # (1, n) each
                best: dict[int, tuple[float, int]] = {}  # identity -> (best score, face), in score order
                last = np.inf
                for s, f in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
                    if f < 0 or f in self._masked:
                        continue
                    last = s
                    best.setdefault(self._face_identity[f], (s, f))
                if aggregate == "max":
                    ranked = [(s, ident, f) for ident, (s, f) in best.items()]
                else:
                    means = self._mean_top(q[0], list(best), top)
                    ranked = [(means[ident], ident, f) for ident, (_, f) in best.items()]
                ranked.sort(key=lambda t: (-t[0], t[1]))
                # Unseen identities score at most `last` (their best face was not fetched).
                if n >= size or (len(ranked) >= k and ranked[k - 1][0] >= last):
                    break
                n = min(size, 2 * n)
            chosen = ranked[:k]
            names = self._names([ident for _, ident, _ in chosen])
        return [Match(ident, names[ident], float(s), int(f)) for s, ident, f in chosen]

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    def close(self) -> None:
        """Write the index cache (if enabled) and close the database. Writes are already durable."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._cache:
                    self._sync()
                    self._write_cache()
            finally:
                self._closed = True
                self._db.close()

    def rebuild_index(self) -> None:
        """Rebuild the search index from the database (never needed for correctness)."""
        with self._lock:
            self._check_open()
            self._rebuild()

    # ----------------------------------------------------------------------------------------------
    # Internals

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"the gallery {self.directory} is closed")

    def _tx(self):
        return _Transaction(self._db)

    def _bind(self, contract: ModelContract | None) -> ModelContract:
        with _Transaction(self._db, bump=False) as cur:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                if contract is None:
                    raise GalleryError(f"{self.directory}: the gallery has no model contract; open it with one")
                cur.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema", str(SCHEMA_VERSION)),
                        ("contract", contract.to_json()),
                        ("contract_id", contract.id),
                        ("generation", "0"),
                    ],
                )
                return contract
        if meta.get("schema") != str(SCHEMA_VERSION):
            raise GalleryError(
                f"{self.directory}: gallery schema {meta.get('schema')} (this code reads {SCHEMA_VERSION})"
            )
        bound = ModelContract.from_json(meta["contract"])
        if contract is not None and contract.id != bound.id:
            raise GalleryContractError(
                f"the gallery {self.directory} is bound to model contract {bound.id} ({bound.architecture}, "
                f"{bound.embedding_size}-D); the model given has contract {contract.id} ({contract.architecture}, "
                f"{contract.embedding_size}-D); embeddings of different contracts are never compared"
            )
        return bound

    def _generation(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _sync(self) -> None:
        """Reload when another connection (another process) wrote since we last looked."""
        if self._data_version() != self._seen_version:
            logger.debug("gallery %s changed on disk: reloading the index", self.directory)
            self._load_index(use_cache=False)

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.index_kind, **self._index_params)

    def _load_index(self, *, use_cache: bool = True) -> None:
        """The index from the cache when it is current and intact, else rebuilt (one consistent snapshot)."""
        with _Read(self._db):
            self._seen_version = self._data_version()
            gen = self._generation()
            rows = self._db.execute("SELECT id, identity_id FROM faces").fetchall()
            self._face_identity: dict[int, int] = {int(a): int(b) for a, b in rows}
            if use_cache and self._cache and self._read_cache(gen):
                self._gen = gen
                return
            self._rebuild_in_snapshot()

    def _rebuild(self) -> None:
        with _Read(self._db):
            self._rebuild_in_snapshot()

    def _rebuild_in_snapshot(self) -> None:
        self._seen_version = self._data_version()
        self._gen = self._generation()  # the state the index reflects (the cache's key)
        rows = self._db.execute("SELECT id, identity_id, embedding FROM faces ORDER BY id").fetchall()
        self._face_identity = {int(a): int(b) for a, b, _ in rows}
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        x = np.stack([self._decode(r[0], r[2]) for r in rows]) if rows else np.zeros((0, self.dim), np.float32)
        index = self._new_index()
        index.add(x, ids)
        self._index = index
        self._masked: set[int] = set()
        self._trained_size = len(rows)

    def _decode(self, face_id: int, blob: bytes) -> np.ndarray:
        if len(blob) != 4 * self.dim:
            raise GalleryError(f"face {face_id}: a {len(blob)}-byte embedding, expected {4 * self.dim} ({self.dim}-D)")
        return np.frombuffer(blob, "<f4").astype(np.float32)

    def _forget(self, face_ids: Sequence[int]) -> None:
        for f in face_ids:
            self._face_identity.pop(f, None)
        self._masked.update(face_ids)
        if len(self._masked) > _MASK_REBUILD_SHARE * max(len(self._index), 1) and len(self._masked) > 16:
            self._rebuild()

    def _maybe_retrain(self) -> None:
        """IVF: retrain once the gallery doubled since training, while more cells could still be filled."""
        if self.index_kind != "ivf":
            return
        wanted = int(self._index_params.get("nlist", 1024)) * 39
        if len(self._index) >= 2 * max(self._trained_size, 1) and self._trained_size < wanted:
            self._rebuild()

    def _mean_top(self, q: np.ndarray, identities: list[int], top: int) -> dict[int, float]:
        """Exact mean of each identity's ``top`` best face similarities to ``q`` (D,)."""
        out: dict[int, float] = {}
        for start in range(0, len(identities), 500):
            chunk = identities[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT id, identity_id, embedding FROM faces WHERE identity_id IN ({marks})", chunk
            ).fetchall()
            sims: dict[int, list[float]] = {}
            for fid, ident, blob in rows:
                sims.setdefault(int(ident), []).append(float(self._decode(fid, blob) @ q))
            for ident, s in sims.items():
                out[ident] = float(np.mean(sorted(s, reverse=True)[:top]))
        return out

    def _names(self, identities: list[int]) -> dict[int, str]:
        if not identities:
            return {}
        marks = ",".join("?" * len(identities))
        rows = self._db.execute(f"SELECT id, name FROM identities WHERE id IN ({marks})", identities).fetchall()
        return {int(a): b for a, b in rows}

    # Index cache: MAGIC, one JSON header line, then the FAISS index bytes and the int64 ids.

    def _cache_path(self) -> Path:
        return self.directory / f"index.{self.index_kind}.faiss"

    def _write_cache(self) -> None:
        body = self._index.to_bytes()
        if not body:  # an IVF index before its first add
            self._cache_path().unlink(missing_ok=True)
            return
        ids = self._index.ids.astype("<i8").tobytes()  # position -> face id
        header = {
            "generation": self._gen,
            "contract_id": self.contract.id,
            "kind": self.index_kind,
            "params": self._index_params,
            "index_bytes": len(body),
            "ids_bytes": len(ids),
            "masked": sorted(self._masked),
            "trained_size": self._trained_size,
            "sha256": hashlib.sha256(body + ids).hexdigest(),
        }
        path = self._cache_path()
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(_CACHE_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body + ids)
            os.replace(tmp, path)
        except OSError as e:  # a cache only: never fail a close for it
            logger.warning("could not write the gallery index cache %s: %s", path, e)
            tmp.unlink(missing_ok=True)

    def _read_cache(self, generation: int) -> bool:
        """Load the cached index when it is intact and current; False (and a log line) otherwise."""
        path = self._cache_path()
        if not path.is_file():
            return False
        try:
            data = path.read_bytes()
            if not data.startswith(_CACHE_MAGIC):
                raise ValueError("bad magic")
            end = data.index(b"\n", len(_CACHE_MAGIC))
            header = json.loads(data[len(_CACHE_MAGIC) : end])
            body = data[end + 1 : end + 1 + header["index_bytes"]]
            ids_raw = data[end + 1 + header["index_bytes"] :]
            if len(body) != header["index_bytes"] or len(ids_raw) != header["ids_bytes"]:
                raise ValueError("truncated")
            if hashlib.sha256(body + ids_raw).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            expected = (generation, self.contract.id, self.index_kind, self._index_params)
            if (header["generation"], header["contract_id"], header["kind"], header["params"]) != expected:
                logger.debug("gallery index cache %s is stale: rebuilding", path)
                return False
            ids = np.frombuffer(ids_raw, "<i8").astype(np.int64)
            masked = {int(i) for i in header["masked"]}
            if set(ids.tolist()) - masked != set(self._face_identity):
                raise ValueError("its face ids differ from the database's")
            index = VectorIndex.from_bytes(body, ids, self.index_kind, **self._index_params)
            if index.dim != self.dim:
                raise ValueError("index dimension differs")
        except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
            logger.warning("gallery index cache %s is unusable (%s): rebuilding it from the database", path, e)
            return False
        self._index = index
        self._masked = masked
        self._trained_size = int(header["trained_size"])
        logger.debug("gallery index loaded from the cache %s", path)
        return True


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection; yields a cursor.

    A committed write transaction also bumps the ``generation`` counter in ``meta`` (unless ``bump=False``: writes
    that do not touch faces, which the index does not depend on).
    """

    def __init__(self, db: sqlite3.Connection, *, bump: bool = True) -> None:
        self._db = db
        self._bump = bump

    def __enter__(self) -> sqlite3.Cursor:
        self._cur = self._db.cursor()
        self._cur.execute("BEGIN IMMEDIATE")
        return self._cur

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self._bump:  # the generation tells the index cache whether it is current
                self._cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                row = self._cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
                self.generation = int(row[0])
            self._cur.execute("COMMIT")
        else:
            self._cur.execute("ROLLBACK")
        self._cur.close()


class _Read:
    """A read transaction (``BEGIN`` ... ``COMMIT``): every SELECT inside sees one snapshot."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, *exc: object) -> None:
        self._db.execute("COMMIT")


def _identity(row: tuple) -> Identity:
    ident, name, meta, created, faces = row
    return Identity(int(ident), name, json.loads(meta), float(created), int(faces))


def _json_object(metadata: Mapping[str, Any] | None) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a JSON object (a mapping), got {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must hold JSON values ({e})") from None


def _unit_rows(x: np.ndarray, dim: int) -> np.ndarray:
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
