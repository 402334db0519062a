"""The SQLite gallery: identities and face embeddings in one SQLite file, searched through FAISS in the process.

Layout of a gallery folder (created 0700; every file in it 0600, SQLite's ``-wal``/``-shm`` included)::

    DIR/gallery.sqlite3        the truth: meta (contract, schema, generation, cache key), identities, faces
    DIR/gallery.sqlite3-wal    SQLite's write-ahead log (and -shm, its index; no content)
    DIR/index.<kind>.faiss     optional signed cache of the search index (:mod:`arcface.gallery.index_cache`)

How this store keeps the rules of :class:`~arcface.gallery.base.GalleryStore`:

- **Transactions and durability.** WAL journal with ``synchronous=FULL``; every write is one ``BEGIN IMMEDIATE``
  transaction committed before the method returns, so an acknowledged write survives a crash of the process and of
  the machine. A write waits at most ``busy_timeout`` seconds for a lock held by another connection, then raises
  :class:`GalleryBusyError`; a full disk raises :class:`GalleryFullError`; neither leaves a partial write.
- **Erasure.** A removal returns once the removed names, metadata and embeddings are in no file of the folder:
  ``secure_delete`` zeroes the freed rows and pages, a ``wal_checkpoint(TRUNCATE)`` right after the delete empties
  the WAL (if a reader holds an older snapshot past the busy timeout, the WAL is truncated at the next write or at
  close, and a warning is logged), and the index cache file is deleted at once (the next close writes one without
  them). Disk blocks freed by the file system are out of reach: put the gallery on an encrypted volume where that
  matters.
- **Readers never wait for writers.** Reads use per-thread read-only connections (WAL: they read the last committed
  state while a write is in progress); a search holds only the in-memory index's lock.
- **Visibility across processes.** Every committed change to faces bumps a ``generation`` counter; a search first
  compares it with the index's (:mod:`arcface.gallery.live_index`) and rebuilds when another process wrote.
- **Storage.** Per identity: the name, the JSON metadata, the creation time. Per face: the embedding (little-endian
  float32, exactly ``4 * D`` bytes), the contract id, the creation time and ``source``. No image is stored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from arcface.gallery._sqlite import (
    FILE_MODE,
    Connections,
    Read,
    Transaction,
    make_private_dir,
    warn_if_shared,
)
from arcface.gallery.base import GALLERY_BACKENDS, FaceRecord, GalleryStore, GalleryTarget, Identity, identity_from_row
from arcface.gallery.index_cache import IndexCache
from arcface.gallery.live_index import LiveIndex, Snapshot
from arcface.gallery.rules import GalleryError
from arcface.inference.contract import ModelContract

__all__ = ["BUSY_TIMEOUT_S", "DB_NAME", "Gallery", "SqliteGallery"]

logger = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite3"
SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 1.5
"""Default time a write waits for another connection's lock before :class:`GalleryBusyError`."""

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
_IDENTITY_SQL = (
    "SELECT i.id, i.name, i.metadata, i.created, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id)"
    " FROM identities i"
)


class SqliteGallery(GalleryStore):
    """The gallery in one folder: SQLite for the data, a FAISS index in the process for search (see the module
    docstring for how it keeps the rules of :class:`GalleryStore`).

    Open it with :func:`~arcface.gallery.base.open_gallery` (or ``SqliteGallery.open``, which opens any backend's
    URI); the object is a context manager.

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

    backend = "sqlite"
    OPTIONS = ("cache", "busy_timeout")

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
        self.directory = Path(directory)
        super().__init__(str(self.directory), index)
        self.index_kind = index
        self._index_params = dict(index_params or {})
        self._keep_cache = bool(cache)
        path = self.directory / DB_NAME
        if not path.is_file():
            if not create:
                raise FileNotFoundError(f"no gallery at {self.directory} (no {DB_NAME}); enroll faces first")
            if contract is None:
                raise GalleryError(f"{self.directory}: creating a gallery needs a model contract")
            make_private_dir(self.directory)
            # SQLite gives its -wal and -shm files the database file's mode; another process may create it first.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        else:
            warn_if_shared(self.directory, path)
        try:
            self._conns = Connections(path, busy_timeout, self._check_open)
        except sqlite3.Error as e:
            raise GalleryError(f"{path}: cannot open the gallery database ({e})") from None
        try:
            db = self._conns.writer
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA secure_delete=ON")  # freed rows and pages are zeroed, not left in the file
            self.contract, key = self._bind(contract)
            self.dim = self.contract.embedding_size
            self._cache = IndexCache(self.directory, key, self.contract.id, index, self._index_params)
            self._live = LiveIndex(self.dim, index, self._index_params, self._snapshot)
            self._load_index()
        except sqlite3.DatabaseError as e:
            self._conns.close()
            raise GalleryError(f"{path}: not a usable gallery database ({e})") from None
        except BaseException:
            self._conns.close()
            raise

    @classmethod
    def from_target(cls, target: GalleryTarget, contract: ModelContract | None, **options: Any) -> SqliteGallery:
        return cls(target.path, contract, **options)

    def __enter__(self) -> SqliteGallery:
        return self

    # ----------------------------------------------------------------------------------------------
    # Primitives (see GalleryStore)

    def _insert_identity(self, name: str, metadata: str) -> int:
        with self._write(bump=False) as cur:
            cur.execute("INSERT INTO identities (name, metadata, created) VALUES (?, ?, ?)",
                        (name, metadata, time.time()))  # fmt: skip
            return int(cur.lastrowid)

    def _identity(self, identity_id: int) -> Identity | None:
        with self._conns.storage():
            row = self._conns.reader().execute(_IDENTITY_SQL + " WHERE i.id = ?", (identity_id,)).fetchone()
        return None if row is None else identity_from_row(row)

    def _identity_page(self, after: int, limit: int | None) -> list[Identity]:
        with self._conns.storage():
            rows = self._conns.reader().execute(_IDENTITY_SQL + " WHERE i.id > ? ORDER BY i.id LIMIT ?",
                                                (after, -1 if limit is None else limit)).fetchall()  # fmt: skip
        return [identity_from_row(r) for r in rows]

    def _identities_named(self, name: str) -> list[Identity]:
        with self._conns.storage():
            rows = self._conns.reader().execute(_IDENTITY_SQL + " WHERE i.name = ? ORDER BY i.id", (name,)).fetchall()
        return [identity_from_row(r) for r in rows]

    def _delete_identity(self, identity_id: int) -> int | None:
        with self._write() as cur:
            if cur.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() is None:
                raise self._no_identity(identity_id)  # rolls the transaction back: nothing changed
            face_ids = [int(r[0]) for r in cur.execute("SELECT id FROM faces WHERE identity_id = ?", (identity_id,))]
            cur.execute("DELETE FROM faces WHERE identity_id = ?", (identity_id,))
            cur.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
        self._live.applied(cur.generation, lambda: self._live.forget(face_ids))
        self._erase_traces()
        return len(face_ids)

    def count_identities(self) -> int:
        with self._conns.storage():
            return int(self._conns.reader().execute("SELECT COUNT(*) FROM identities").fetchone()[0])

    def _insert_faces(self, identity_id: int, x: np.ndarray, sources: list[str | None]) -> list[int] | None:
        now, cid = time.time(), self.contract.id
        with self._write() as cur:
            if cur.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() is None:
                raise self._no_identity(identity_id)  # rolls the transaction back: nothing changed
            ids = []
            for row, src in zip(x, sources, strict=True):
                cur.execute(
                    "INSERT INTO faces (identity_id, embedding, contract_id, created, source) VALUES (?, ?, ?, ?, ?)",
                    (identity_id, row.astype("<f4").tobytes(), cid, now, src),
                )
                ids.append(int(cur.lastrowid))
        self._live.applied(cur.generation, lambda: self._live.add(x, ids, identity_id))  # committed: now searchable
        if self._conns.erasure_pending:
            self._conns.checkpoint()
        return ids

    def _delete_face(self, face_id: int) -> bool:
        with self._write() as cur:
            cur.execute("DELETE FROM faces WHERE id = ?", (face_id,))
            if cur.rowcount == 0:
                raise self._no_face(face_id)  # rolls the transaction back: nothing changed
        self._live.applied(cur.generation, lambda: self._live.forget([face_id]))
        self._erase_traces()
        return True

    def _face_records(self, identity_id: int | None) -> list[FaceRecord]:
        sql, args = "SELECT id, identity_id, contract_id, created, source FROM faces", ()
        if identity_id is not None:
            sql, args = sql + " WHERE identity_id = ?", (identity_id,)
        with self._conns.storage():
            rows = self._conns.reader().execute(sql + " ORDER BY id", args).fetchall()
        return [FaceRecord(int(a), int(b), c, float(d), e) for a, b, c, d, e in rows]

    def _embeddings(self, face_ids: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        with self._conns.storage():
            reader = self._conns.reader()
            for chunk in _chunks(face_ids):
                sql = f"SELECT id, embedding FROM faces WHERE id IN ({','.join('?' * len(chunk))})"
                out.update((int(f), self._decode(f, blob)) for f, blob in reader.execute(sql, chunk))
        return out

    def count(self) -> int:
        with self._conns.storage():
            return int(self._conns.reader().execute("SELECT COUNT(*) FROM faces").fetchone()[0])

    @contextmanager
    def _search_view(self) -> Iterator[sqlite3.Connection]:
        with self._conns.storage():
            reader = self._conns.reader()
            self._live.catch_up(_generation(reader))
            with self._live.lock:
                yield reader

    def _nearest(self, view: sqlite3.Connection, q: np.ndarray, n: int) -> list[tuple[float, int, int]]:
        return self._live.nearest(q, n)

    def _faces_of(self, view: sqlite3.Connection, identities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        owners: list[int] = []
        vectors: list[np.ndarray] = []
        for chunk in _chunks(identities):
            sql = f"SELECT id, identity_id, embedding FROM faces WHERE identity_id IN ({','.join('?' * len(chunk))})"
            for fid, ident, blob in view.execute(sql, chunk):
                owners.append(int(ident))
                vectors.append(self._decode(fid, blob))
        return np.asarray(owners, np.int64), np.asarray(vectors, np.float32).reshape(len(owners), self.dim)

    def _names(self, view: sqlite3.Connection, identities: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in _chunks(identities):
            sql = f"SELECT id, name FROM identities WHERE id IN ({','.join('?' * len(chunk))})"
            out.update((int(a), b) for a, b in view.execute(sql, chunk))
        return out

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    def close(self) -> None:
        """Write the index cache (if enabled), truncate the WAL and close the database. Writes are already durable.

        Never raises for the storage: on a read-only or full disk the cache and the checkpoint are skipped (and
        logged), and the connections are closed all the same.
        """
        with self._conns.write_lock, self._live.lock:
            if self._closed:
                return
            try:
                if self._keep_cache:
                    self._live.catch_up(_generation(self._conns.reader()))
                    self._cache.write(self._live.cacheable(), self._live.generation)
                self._conns.checkpoint()
            except (sqlite3.Error, OSError, GalleryError) as e:
                logger.warning("gallery %s: closing without the index cache (%s)", self.directory, e)
            finally:
                self._closed = True
                self._conns.close()

    # ----------------------------------------------------------------------------------------------
    # Internals

    @contextmanager
    def _write(self, *, bump: bool = True) -> Iterator[sqlite3.Cursor]:
        """One write transaction under the writer's lock; yields a cursor whose ``generation`` is set after commit."""
        with self._conns.write_lock:
            self._check_open()
            tx = Transaction(self._conns.writer, bump=bump)
            with self._conns.storage(), tx as cur:
                yield _Cursor(cur, tx)

    def _erase_traces(self) -> None:
        """After a delete: no file of the folder may keep what was removed (cache deleted, WAL truncated)."""
        self._cache.erase()
        self._conns.erasure_pending = True
        self._conns.checkpoint()

    def _bind(self, contract: ModelContract | None) -> tuple[ModelContract, bytes]:
        """The bound contract (binding ``contract`` to a new gallery) and the index cache's MAC key."""
        with Transaction(self._conns.writer, bump=False) as cur:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                meta = self._new_meta(contract, SCHEMA_VERSION)
                meta.update(generation="0", cache_key=secrets.token_hex(32))
                cur.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
            elif "cache_key" not in meta and meta.get("schema") == SCHEMA_VERSION:
                meta["cache_key"] = secrets.token_hex(32)  # a gallery made before caches were bound to it
                cur.execute("INSERT INTO meta (key, value) VALUES ('cache_key', ?)", (meta["cache_key"],))
        return self._bound_contract(meta, contract, SCHEMA_VERSION), bytes.fromhex(meta["cache_key"])

    def _snapshot(self) -> Snapshot:
        """The faces as one consistent read, for the index."""
        reader = self._conns.reader()
        with Read(reader):
            gen = _generation(reader)
            rows = reader.execute("SELECT id, identity_id, embedding FROM faces ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        owners = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        x = np.stack([self._decode(r[0], r[2]) for r in rows]) if rows else np.zeros((0, self.dim), np.float32)
        return gen, ids, owners, x

    def _load_index(self) -> None:
        """The index from the cache when it is current, intact and ours, else rebuilt (one consistent snapshot)."""
        reader = self._conns.reader()
        with self._live.lock:
            if self._keep_cache:
                with Read(reader):
                    gen = _generation(reader)
                    owners = {int(a): int(b) for a, b in reader.execute("SELECT id, identity_id FROM faces")}
                cached = self._cache.read(gen, set(owners), self.dim)
                if cached is not None:
                    self._live.restore(cached, gen, owners)
                    return
            self._live.rebuild()

    def _decode(self, face_id: int, blob: bytes) -> np.ndarray:
        if len(blob) != 4 * self.dim:
            raise GalleryError(f"face {face_id}: a {len(blob)}-byte embedding, expected {4 * self.dim} ({self.dim}-D)")
        return np.frombuffer(blob, "<f4").astype(np.float32)


class _Cursor:
    """A write transaction's cursor that also tells the generation the commit made."""

    def __init__(self, cur: sqlite3.Cursor, tx: Transaction) -> None:
        self._cur, self._tx = cur, tx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    @property
    def generation(self) -> int:
        return self._tx.generation


def _generation(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def _chunks(values: list[int], size: int = 500) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


Gallery = SqliteGallery
"""The former name of :class:`SqliteGallery`; ``Gallery.open`` opens any backend (:func:`open_gallery`)."""

GALLERY_BACKENDS.register("sqlite", SqliteGallery)
