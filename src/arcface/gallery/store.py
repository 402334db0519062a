"""A persistent face gallery: identities and their face embeddings in SQLite, searched through FAISS.

Layout of a gallery folder (created 0700; every file in it 0600, SQLite's ``-wal``/``-shm`` included)::

    DIR/gallery.sqlite3        the truth: meta (contract, schema, generation, cache key), identities, faces
    DIR/gallery.sqlite3-wal    SQLite's write-ahead log (and -shm, its index; no content)
    DIR/index.<kind>.faiss     optional cache of the search index (written on close, deleted by a removal)

The semantics below are the store's contract; another backend (a server database) must keep each of them or say
where it differs.

- **One contract per gallery.** The first :meth:`Gallery.open` binds the model contract (stored as JSON with its
  id); opening it later with another contract, or adding a face made under another contract id, raises
  :class:`GalleryContractError` naming both ids. Embeddings of different contracts are never compared.
- **Durability.** WAL journal with ``synchronous=FULL``; every write is one transaction committed before the
  method returns, so an acknowledged write survives a crash of the process (and of the machine).
- **Erasure.** :meth:`Gallery.remove_identity` and :meth:`Gallery.remove_face` return once the removed names,
  metadata and embeddings are in no file of the folder: ``secure_delete`` zeroes the freed rows and pages, a
  ``wal_checkpoint(TRUNCATE)`` right after the delete empties the WAL (if a reader holds an older snapshot past
  the busy timeout, the WAL is truncated at the next write or at close, and a warning is logged), and the index
  cache file is deleted at once (the next close writes one without them). Disk blocks freed by the file system
  are out of reach: put the gallery on an encrypted volume where that matters.
- **What is stored.** Per identity: the name, the JSON metadata given, the creation time. Per face: the
  embedding, the contract id, the creation time and ``source``, whatever the caller passes (the REST service
  passes nothing unless its operator turns ``store_filenames`` on). No image is stored.
- **Limits.** Names: 1 to :data:`MAX_NAME_CHARS` characters, not blank, without control characters (NUL, ESC,
  line breaks...), surrogates or bidirectional overrides/isolates (:func:`check_name`). Metadata: a JSON object of
  at most :data:`MAX_METADATA_BYTES` bytes and :data:`MAX_METADATA_DEPTH` levels. Ids are SQLite integers: an id
  outside 1 .. 2^63 - 1 is simply not found (:class:`KeyError`), never an overflow.
- **Paging.** :meth:`Gallery.list_identities` pages by id (``after`` = the last id seen, ``limit`` rows): a stable
  cursor that neither skips nor repeats identities when others are added or removed between pages.
- **Busy and full.** A write waits at most ``busy_timeout`` seconds (default 1.5) for a lock held by another
  connection, then raises :class:`GalleryBusyError` (retry later); a full disk raises :class:`GalleryFullError`.
  Neither leaves a partial write.
- **Readers never wait for writers.** Reads use per-thread read-only connections (WAL: they read the last
  committed state while a write is in progress) and do not take the writer's lock; a search holds only the
  in-memory index's lock, for the time of the search.
- **Embeddings are L2-normalised on the way in** (faces and queries): cosine similarity is scale-invariant,
  so normalising never changes a comparison; zero, non-finite or wrongly shaped vectors are refused. They are
  stored as little-endian float32 BLOBs of exactly ``4 * D`` bytes.
- **The index is derived data, bound to the database.** On open it is loaded from the cache file when that file
  is intact, belongs to the database's current generation (a counter bumped by every change to faces) and carries
  a valid HMAC-SHA256 under a random key kept in the database's ``meta`` table; otherwise it is rebuilt from the
  database. So a cache rewritten outside the process (even with a fresh checksum) is refused, and a missing,
  stale or corrupted cache is only slower, never wrong. Writes update the index incrementally. Removal masks the
  face ids (no FAISS kind needs to support ``remove_ids``; HNSW cannot); the index is rebuilt from the database once
  masked ids exceed a quarter of it, and before a cache is written. An IVF index is retrained when the gallery has
  doubled since it was trained (until it has enough points for all its cells).
- **Identity score.** ``aggregate="max"`` (default): the best similarity over the identity's faces; one good
  enrolment photo is enough, and more photos never lower the score. ``aggregate="mean_top"``: the mean of
  the identity's ``top`` best face similarities (fewer when it has fewer faces), which damps a single
  lucky face. Both are exact for the exact index: faces are fetched until no unseen identity can beat the
  k-th result (an identity's score is never above its best face).
- **Threads and processes.** Every method may be called from any thread. Writes of another process are noticed
  (the generation moved) before the next search, which then rebuilds the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from arcface.gallery._sqlite import (
    FILE_MODE,
    Read,
    Transaction,
    disk_full,
    make_private_dir,
    suppress_os,
    suppress_sqlite,
    warn_if_shared,
)
from arcface.gallery.base import (
    GALLERY_BACKENDS,
    FaceRecord,
    GalleryStore,
    GalleryTarget,
    Identity,
    Match,
    checked_faces,
    checked_query,
    contract_refused,
    open_gallery,
)
from arcface.gallery.rules import (
    INT64_MAX,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_NAME_CHARS,
    GalleryBusyError,
    GalleryContractError,
    GalleryError,
    GalleryFullError,
    GalleryStorageError,
    check_metadata,
    check_name,
    valid_id,
)
from arcface.index import INDEX_KINDS, VectorIndex
from arcface.inference.contract import ModelContract

__all__ = [
    "DB_NAME",
    "INT64_MAX",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_NAME_CHARS",
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

logger = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 1.5
"""Default time a write waits for another connection's lock before :class:`GalleryBusyError`."""
_CACHE_MAGIC = b"ARCFACE-GALLERY-INDEX 2\n"
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


class Gallery(GalleryStore):
    """Identities and face embeddings of one model contract, persisted in SQLite and searched with FAISS.

    Use :meth:`open`; the object is a context manager (``with Gallery.open(d, contract) as g:``). See the module
    docstring for the semantics (erasure, limits, paging, busy and full, the index cache).

    Args:
        directory: the gallery folder (created 0700 with a 0600 database when new).
        contract: the model contract; required to create a gallery, checked against the bound one otherwise.
        index: ``"exact"`` (default, ``IndexFlatIP``), ``"hnsw"`` or ``"ivf"`` (approximate, for large galleries;
            see :class:`~arcface.index.VectorIndex`).
        create: create the gallery when the folder has none (else :class:`FileNotFoundError`).
        index_params: extra :class:`~arcface.index.VectorIndex` arguments (``m``, ``ef_search``, ``nlist``...).
        cache: keep the index cache file (read on open, written on close).
        busy_timeout: seconds a statement waits for a lock held by another connection before
            :class:`GalleryBusyError`.

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
        busy_timeout: float = BUSY_TIMEOUT_S,
    ) -> None:
        if index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {index!r}; expected one of {INDEX_KINDS}")
        self.directory = Path(directory)
        self.backend = "sqlite"
        self.index_kind = index
        self._index_params = dict(index_params or {})
        self._cache = bool(cache)
        self._busy_timeout = float(busy_timeout)
        self._write_lock = threading.RLock()  # the writer connection and its transactions
        self._index_lock = threading.RLock()  # the in-memory index and its maps
        self._readers_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._erasure_pending = False
        self._closed = False
        self._path = self.directory / DB_NAME
        if not self._path.is_file():
            if not create:
                raise FileNotFoundError(f"no gallery at {self.directory} (no {DB_NAME}); enroll faces first")
            if contract is None:
                raise GalleryError(f"{self.directory}: creating a gallery needs a model contract")
            make_private_dir(self.directory)
            # SQLite gives its -wal and -shm files the database file's mode; another process may create it first.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        else:
            warn_if_shared(self.directory, self._path)
        try:
            self._db = self._connect()
        except sqlite3.Error as e:
            raise GalleryError(f"{self._path}: cannot open the gallery database ({e})") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA secure_delete=ON")  # freed rows and pages are zeroed, not left in the file
            self.contract, self._cache_key = self._bind(contract)
            self.dim = self.contract.embedding_size
            self._load_index()
        except sqlite3.DatabaseError as e:
            self._close_connections()
            raise GalleryError(f"{self._path}: not a usable gallery database ({e})") from None
        except BaseException:
            self._close_connections()
            raise

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike | GalleryTarget,
        contract: ModelContract | None = None,
        *,
        index: str = "exact",
        create: bool = True,
        index_params: Mapping[str, Any] | None = None,
        cache: bool = True,
        busy_timeout: float = BUSY_TIMEOUT_S,
    ) -> GalleryStore:
        """Open (or create) the gallery at a folder, or at any URI :func:`~arcface.gallery.base.open_gallery` takes.

        A folder or ``sqlite://`` URI gives this SQLite store; ``postgresql://``, ``milvus://`` and ``milvus-lite://``
        give that backend's store (the same methods and semantics). The other arguments are those of
        :class:`Gallery`.
        """
        return open_gallery(
            directory, contract, index=index, create=create, index_params=index_params, cache=cache,
            busy_timeout=busy_timeout,
        )  # fmt: skip

    def __enter__(self) -> Gallery:
        return self

    def __repr__(self) -> str:
        return f"Gallery({str(self.directory)!r}, contract={self.contract.id}, index={self.index_kind!r})"

    @property
    def location(self) -> str:
        """The gallery folder."""
        return str(self.directory)

    # ----------------------------------------------------------------------------------------------
    # Identities

    def add_identity(self, name: str, metadata: Mapping[str, Any] | None = None) -> int:
        """Create an identity; returns its id.

        Args:
            name: display name (see :func:`check_name`; need not be unique).
            metadata: a JSON object stored with it (see :func:`check_metadata`).

        Raises:
            ValueError: a name or metadata the gallery refuses.
            GalleryBusyError, GalleryFullError: nothing was written.
        """
        name = check_name(name)
        meta = check_metadata(metadata)
        with self._write_lock:
            self._check_open()
            with self._storage(), Transaction(self._db, bump=False) as cur:
                cur.execute(
                    "INSERT INTO identities (name, metadata, created) VALUES (?, ?, ?)", (name, meta, time.time())
                )
                return int(cur.lastrowid)

    def get_identity(self, identity_id: int) -> Identity:
        """The identity with this id.

        Raises:
            KeyError: no such identity (also for an id outside 1 .. 2^63 - 1).
        """
        row = None
        if valid_id(identity_id):
            with self._storage():
                row = self._reader().execute(
                    "SELECT i.id, i.name, i.metadata, i.created,"
                    " (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id) FROM identities i WHERE i.id = ?",
                    (int(identity_id),),
                ).fetchone()
        if row is None:
            raise KeyError(f"no identity {identity_id} in the gallery {self.directory}")
        return _identity(row)

    def list_identities(self, limit: int | None = None, after: int = 0) -> list[Identity]:
        """Identities by id, with their face counts: all of them, or one page.

        Args:
            limit: at most this many (None: all).
            after: only ids greater than this (the last id of the previous page; 0 for the first page).
        """
        if limit is not None and int(limit) < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        after = max(0, min(int(after), INT64_MAX))
        sql = (
            "SELECT i.id, i.name, i.metadata, i.created, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id)"
            " FROM identities i WHERE i.id > ? ORDER BY i.id"
        )
        args: tuple = (after,)
        if limit is not None:
            sql, args = sql + " LIMIT ?", (after, int(limit))
        with self._storage():
            rows = self._reader().execute(sql, args).fetchall()
        return [_identity(r) for r in rows]

    def find_identities(self, name: str) -> list[Identity]:
        """The identities with exactly this name, by id."""
        with self._storage():
            rows = self._reader().execute("SELECT id FROM identities WHERE name = ? ORDER BY id", (name,)).fetchall()
        return [self.get_identity(r[0]) for r in rows]

    def remove_identity(self, identity_id: int) -> int:
        """Remove an identity and all its faces, from every file of the gallery; returns how many faces went.

        Raises:
            KeyError: no such identity.
            GalleryBusyError, GalleryFullError: nothing was removed.
        """
        if not valid_id(identity_id):
            raise KeyError(f"no identity {identity_id} in the gallery {self.directory}")
        with self._write_lock:
            self._check_open()
            with self._storage(), (tx := Transaction(self._db)) as cur:
                if cur.execute("SELECT 1 FROM identities WHERE id = ?", (int(identity_id),)).fetchone() is None:
                    raise KeyError(f"no identity {identity_id} in the gallery {self.directory}")
                rows = cur.execute("SELECT id FROM faces WHERE identity_id = ?", (int(identity_id),)).fetchall()
                face_ids = [int(r[0]) for r in rows]
                cur.execute("DELETE FROM faces WHERE identity_id = ?", (int(identity_id),))
                cur.execute("DELETE FROM identities WHERE id = ?", (int(identity_id),))
            self._applied(tx.generation, lambda: self._forget(face_ids))
            self._erase_traces()
            return len(face_ids)

    def count_identities(self) -> int:
        """Number of identities."""
        with self._storage():
            return int(self._reader().execute("SELECT COUNT(*) FROM identities").fetchone()[0])

    # ----------------------------------------------------------------------------------------------
    # Faces

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
        x, sources = checked_faces(self, embeddings, contract_id, sources)  # (N, D) unit rows
        cid = self.contract.id
        if not valid_id(identity_id):
            raise KeyError(f"no identity {identity_id} in the gallery {self.directory}")
        now = time.time()
        with self._write_lock:
            self._check_open()
            with self._storage(), (tx := Transaction(self._db)) as cur:
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

            def add() -> None:  # committed: now the index may see them
                self._index.add(x, np.asarray(ids, np.int64))
                self._face_identity.update((i, int(identity_id)) for i in ids)
                self._maybe_retrain()

            self._applied(tx.generation, add)
            if self._erasure_pending:
                self._checkpoint()
            return ids

    def remove_face(self, face_id: int) -> None:
        """Remove one face, from every file of the gallery.

        Raises:
            KeyError: no such face.
            GalleryBusyError, GalleryFullError: nothing was removed.
        """
        if not valid_id(face_id):
            raise KeyError(f"no face {face_id} in the gallery {self.directory}")
        with self._write_lock:
            self._check_open()
            with self._storage(), (tx := Transaction(self._db)) as cur:
                cur.execute("DELETE FROM faces WHERE id = ?", (int(face_id),))
                if cur.rowcount == 0:
                    raise KeyError(f"no face {face_id} in the gallery {self.directory}")
            self._applied(tx.generation, lambda: self._forget([int(face_id)]))
            self._erase_traces()

    def list_faces(self, identity_id: int | None = None) -> list[FaceRecord]:
        """The faces of one identity (or all), by id, without embeddings."""
        sql = "SELECT id, identity_id, contract_id, created, source FROM faces"
        args: tuple = ()
        if identity_id is not None:
            if not valid_id(identity_id):
                return []
            sql, args = sql + " WHERE identity_id = ?", (int(identity_id),)
        with self._storage():
            rows = self._reader().execute(sql + " ORDER BY id", args).fetchall()
        return [FaceRecord(int(a), int(b), c, float(d), e) for a, b, c, d, e in rows]

    def get_embedding(self, face_id: int) -> np.ndarray:
        """The stored (D,) float32 unit embedding of a face.

        Raises:
            KeyError: no such face.
        """
        row = None
        if valid_id(face_id):
            with self._storage():
                row = self._reader().execute("SELECT id, embedding FROM faces WHERE id = ?", (int(face_id),)).fetchone()
        if row is None:
            raise KeyError(f"no face {face_id} in the gallery {self.directory}")
        return self._decode(*row)

    def count(self) -> int:
        """Number of faces."""
        with self._storage():
            return int(self._reader().execute("SELECT COUNT(*) FROM faces").fetchone()[0])

    # ----------------------------------------------------------------------------------------------
    # Search

    def search(self, embedding: np.ndarray, k: int = 5, *, aggregate: str = "max", top: int = 3) -> list[Match]:
        """The ``k`` identities most similar to a query face, best first.

        Reads the last committed state without waiting for a write in progress (its own or another process's).

        Args:
            embedding: (D,) query embedding under the gallery's contract (L2-normalised here).
            k: identities to return (fewer when the gallery has fewer).
            aggregate: ``"max"`` (identity score = its best face) or ``"mean_top"`` (mean of its ``top`` best faces).
            top: faces averaged by ``"mean_top"``.

        Returns:
            Up to ``k`` :class:`Match` records sorted by similarity, highest first (ties: lower identity id first).
        """
        q1, k, top = checked_query(embedding, self.dim, k, aggregate, top)
        q = q1[None]  # (1, D)
        with self._storage():
            reader = self._reader()
            self._catch_up(reader)
            with self._index_lock:
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
                        means = self._mean_top(reader, q[0], list(best), top)
                        ranked = [(means[ident], ident, f) for ident, (_, f) in best.items() if ident in means]
                    ranked.sort(key=lambda t: (-t[0], t[1]))
                    # Unseen identities score at most `last` (their best face was not fetched).
                    if n >= size or (len(ranked) >= k and ranked[k - 1][0] >= last):
                        break
                    n = min(size, 2 * n)
            names = self._names(reader, [ident for _, ident, _ in ranked[: 2 * k]])
        # An identity removed since the index was read has no name any more: it is not an answer.
        chosen = [(s, ident, f) for s, ident, f in ranked if ident in names][:k]
        return [Match(ident, names[ident], float(s), int(f)) for s, ident, f in chosen]

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    def close(self) -> None:
        """Write the index cache (if enabled), truncate the WAL and close the database. Writes are already durable.

        Never raises for the storage: on a read-only or full disk the cache and the checkpoint are skipped (and
        logged), and the connections are closed all the same.
        """
        with self._write_lock, self._index_lock:
            if self._closed:
                return
            try:
                if self._cache and self._cache_key is not None:
                    self._catch_up(self._reader())
                    if self._masked:  # the cache must not hold removed vectors
                        self._rebuild()
                    self._write_cache()
                self._checkpoint()
            except (sqlite3.Error, OSError, GalleryError) as e:
                logger.warning("gallery %s: closing without the index cache (%s)", self.directory, e)
            finally:
                self._closed = True
                self._close_connections()

    def rebuild_index(self) -> None:
        """Rebuild the search index from the database (never needed for correctness)."""
        self._check_open()
        with self._storage(), self._index_lock:
            self._rebuild()

    # ----------------------------------------------------------------------------------------------
    # Internals: connections, errors, erasure

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout)
        if read_only:
            db.execute("PRAGMA query_only=ON")
        return db

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (WAL: it reads the last commit, never waits for a writer)."""
        self._check_open()
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect(read_only=True)
            with self._readers_lock:
                if self._closed:
                    db.close()
                    self._check_open()
                self._readers.append(db)
            self._local.db = db
        return db

    def _close_connections(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for db in readers:
            with suppress_sqlite():
                db.close()
        with suppress_sqlite():
            self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"the gallery {self.directory} is closed")

    @contextmanager
    def _storage(self) -> Iterator[None]:
        """SQLite's busy, full, read-only and I/O errors as :class:`GalleryBusyError`, :class:`GalleryFullError` and
        :class:`GalleryStorageError`."""
        try:
            yield
        except sqlite3.OperationalError as e:
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            text = str(e)
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in text:
                raise GalleryBusyError(
                    f"the gallery {self.directory} is busy: another connection held its lock for more than "
                    f"{self._busy_timeout:g} s; retry later",
                    retry_after=max(1.0, self._busy_timeout),
                ) from None
            full = code == sqlite3.SQLITE_FULL or "disk is full" in text
            if full or (code == sqlite3.SQLITE_IOERR and disk_full(self.directory)):
                raise GalleryFullError(f"the disk of the gallery {self.directory} is full ({text})") from None
            if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
                raise GalleryStorageError(f"the gallery {self.directory} cannot be written now ({text})") from None
            raise

    def _erase_traces(self) -> None:
        """After a delete: no file of the folder may keep what was removed (cache deleted, WAL truncated)."""
        for path in (self._cache_path(), *self.directory.glob(f".{self._cache_path().name}.tmp*")):
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                logger.warning("gallery %s: could not delete the index cache %s (%s)", self.directory, path, e)
        self._erasure_pending = True
        self._checkpoint()

    def _checkpoint(self) -> None:
        """``wal_checkpoint(TRUNCATE)``: the WAL's frames go into the database file and the WAL to zero bytes."""
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as e:
            logger.warning("gallery %s: WAL checkpoint failed (%s); retried at the next write", self.directory, e)
            return
        if busy:
            logger.warning("gallery %s: a reader kept the WAL busy; it is truncated at the next write", self.directory)
        else:
            self._erasure_pending = False

    # ----------------------------------------------------------------------------------------------
    # Internals: the index

    def _bind(self, contract: ModelContract | None) -> tuple[ModelContract, bytes | None]:
        """The bound contract (binding ``contract`` to a new gallery) and the index cache's MAC key."""
        with Transaction(self._db, bump=False) as cur:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                if contract is None:
                    raise GalleryError(f"{self.directory}: the gallery has no model contract; open it with one")
                key = secrets.token_hex(32)
                cur.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema", str(SCHEMA_VERSION)),
                        ("contract", contract.to_json()),
                        ("contract_id", contract.id),
                        ("generation", "0"),
                        ("cache_key", key),
                    ],
                )
                return contract, bytes.fromhex(key)
            if "cache_key" not in meta and meta.get("schema") == str(SCHEMA_VERSION):
                meta["cache_key"] = secrets.token_hex(32)  # a gallery made before caches were bound to it
                cur.execute("INSERT INTO meta (key, value) VALUES ('cache_key', ?)", (meta["cache_key"],))
        if meta.get("schema") != str(SCHEMA_VERSION):
            raise GalleryError(
                f"{self.directory}: gallery schema {meta.get('schema')} (this code reads {SCHEMA_VERSION})"
            )
        bound = ModelContract.from_json(meta["contract"])
        if contract is not None and contract.id != bound.id:
            raise contract_refused(str(self.directory), bound, contract)
        return bound, bytes.fromhex(meta["cache_key"])

    @staticmethod
    def _generation(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _catch_up(self, reader: sqlite3.Connection) -> None:
        """Rebuild when the database moved past the index (another process wrote)."""
        if self._generation(reader) > self._gen:
            with self._index_lock:
                if self._generation(reader) > self._gen:
                    logger.debug("gallery %s changed on disk: reloading the index", self.directory)
                    self._rebuild()

    def _applied(self, generation: int, change: Callable[[], None]) -> None:
        """Bring the index to ``generation``, the state our committed write made.

        Incrementally when the index was exactly one step behind; not at all when a rebuild already read that
        state; by a rebuild when another writer committed in between.
        """
        with self._index_lock:
            if self._gen >= generation:
                return
            if self._gen == generation - 1:
                change()
                self._gen = generation
            else:
                self._rebuild()

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.index_kind, **self._index_params)

    def _load_index(self) -> None:
        """The index from the cache when it is current, intact and ours, else rebuilt (one consistent snapshot)."""
        reader = self._reader()
        with self._index_lock, Read(reader):
            gen = self._generation(reader)
            rows = reader.execute("SELECT id, identity_id FROM faces").fetchall()
            self._face_identity: dict[int, int] = {int(a): int(b) for a, b in rows}
            if self._cache and self._cache_key is not None and self._read_cache(gen):
                self._gen = gen
                return
            self._rebuild_in_snapshot(reader)

    def _rebuild(self) -> None:
        reader = self._reader()
        with self._index_lock, Read(reader):
            self._rebuild_in_snapshot(reader)

    def _rebuild_in_snapshot(self, reader: sqlite3.Connection) -> None:
        self._gen = self._generation(reader)  # the state the index reflects (the cache's key)
        rows = reader.execute("SELECT id, identity_id, embedding FROM faces ORDER BY id").fetchall()
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

    def _mean_top(self, reader: sqlite3.Connection, q: np.ndarray, identities: list[int], top: int) -> dict[int, float]:
        """Exact mean of each identity's ``top`` best face similarities to ``q`` (D,)."""
        out: dict[int, float] = {}
        for start in range(0, len(identities), 500):
            chunk = identities[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = reader.execute(
                f"SELECT id, identity_id, embedding FROM faces WHERE identity_id IN ({marks})", chunk
            ).fetchall()
            sims: dict[int, list[float]] = {}
            for fid, ident, blob in rows:
                sims.setdefault(int(ident), []).append(float(self._decode(fid, blob) @ q))
            for ident, s in sims.items():
                out[ident] = float(np.mean(sorted(s, reverse=True)[:top]))
        return out

    @staticmethod
    def _names(reader: sqlite3.Connection, identities: list[int]) -> dict[int, str]:
        if not identities:
            return {}
        marks = ",".join("?" * len(identities))
        rows = reader.execute(f"SELECT id, name FROM identities WHERE id IN ({marks})", identities).fetchall()
        return {int(a): b for a, b in rows}

    # Index cache: MAGIC, one JSON header line, then the FAISS index bytes and the int64 ids. The header's "mac" is
    # an HMAC-SHA256, under the database's random cache_key, of the header without it and the payload.

    def _cache_path(self) -> Path:
        return self.directory / f"index.{self.index_kind}.faiss"

    def _mac(self, header: Mapping[str, Any], payload: bytes) -> str:
        assert self._cache_key is not None
        h = hmac.new(self._cache_key, json.dumps(dict(header), sort_keys=True).encode(), hashlib.sha256)
        h.update(payload)
        return h.hexdigest()

    def _write_cache(self) -> None:
        body = self._index.to_bytes()
        if not body:  # an IVF index before its first add
            self._cache_path().unlink(missing_ok=True)
            return
        ids = self._index.ids.astype("<i8").tobytes()  # position -> face id
        header: dict[str, Any] = {
            "generation": self._gen,
            "contract_id": self.contract.id,
            "kind": self.index_kind,
            "params": self._index_params,
            "index_bytes": len(body),
            "ids_bytes": len(ids),
            "masked": sorted(self._masked),
            "trained_size": self._trained_size,
        }
        header["mac"] = self._mac(header, body + ids)
        path = self._cache_path()
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with open(fd, "wb") as f:
                f.write(_CACHE_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body + ids)
            os.replace(tmp, path)
        except OSError as e:  # a cache only: never fail a close for it
            logger.warning("could not write the gallery index cache %s: %s", path, e)
            with suppress_os():
                tmp.unlink(missing_ok=True)

    def _read_cache(self, generation: int) -> bool:
        """Load the cached index when it is intact, current and made for this database; False (and a log) otherwise."""
        path = self._cache_path()
        if not path.is_file():
            return False
        try:
            data = path.read_bytes()
            if not data.startswith(_CACHE_MAGIC):
                raise ValueError("bad magic (an older or foreign cache)")
            end = data.index(b"\n", len(_CACHE_MAGIC))
            header = json.loads(data[len(_CACHE_MAGIC) : end])
            body = data[end + 1 : end + 1 + header["index_bytes"]]
            ids_raw = data[end + 1 + header["index_bytes"] :]
            if len(body) != header["index_bytes"] or len(ids_raw) != header["ids_bytes"]:
                raise ValueError("truncated")
            mac = header.pop("mac")
            if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac(header, body + ids_raw)):
                raise ValueError("its MAC does not match this database's key (damaged, or written by someone else)")
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


def _identity(row: tuple) -> Identity:
    ident, name, meta, created, faces = row
    return Identity(int(ident), name, json.loads(meta), float(created), int(faces))


def _open_sqlite(target: GalleryTarget, contract: ModelContract | None, **options: Any) -> Gallery:
    return Gallery(target.path, contract, **options)


GALLERY_BACKENDS.register("sqlite", _open_sqlite)
