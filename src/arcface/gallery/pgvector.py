"""The gallery in PostgreSQL with pgvector: ``postgresql://USER:PASSWORD@HOST:PORT/DB[?gallery=NAME&ef_search=N]``.

One schema per gallery (``gallery=NAME``, default ``arcface``), created on first use::

    NAME.meta        key text primary key, value text: the schema version, the contract (JSON) and its id
    NAME.identities  id bigint (identity), name text, metadata text (compact sorted JSON), created float8
    NAME.faces       id bigint (identity), identity_id -> identities (ON DELETE CASCADE), embedding vector(D),
                     contract_id text, created float8, source text
    indexes          faces(identity_id); faces USING hnsw (embedding vector_cosine_ops) WITH (m, ef_construction)

How this backend keeps the rules of :class:`~arcface.gallery.base.GalleryStore`:

- **Every write is one transaction**, committed before the method returns. ``synchronous_commit`` is raised to
  ``on`` for our connections when the server has it ``off`` (never lowered), so an acknowledged write is in the
  server's WAL on disk (and on the synchronous standbys, if the server has them).
- **One snapshot per call**: a search (nearest faces, identity means, names) runs in one ``REPEATABLE READ READ ONLY``
  transaction, so it never answers an identity removed before it began.
- **Search goes to the server every time** (no index in the process): several service replicas over one database
  see each other's writes at the next request. ``index="exact"`` scans every face (the HNSW index is not used):
  exact, and slower with the gallery's size; ``index="hnsw"`` walks the HNSW index with ``hnsw.ef_search`` =
  max(``ef_search``, faces asked) (at most 1000), and with pgvector >= 0.8 an ordered iterative scan, so asking for
  more faces than ``ef_search`` keeps the order. The index is kept by every write either way.
- **Removal** is ``DELETE``: invisible to every transaction that begins after it commits. The bytes stay in table and
  index pages until ``VACUUM`` (autovacuum) marks them free and new rows overwrite them, and in WAL segments, standbys
  and backups: docs/SECURITY.md says what to do when that matters.
- **Busy, full, unreachable**: writes wait at most ``busy_timeout`` for a row lock (``lock_timeout``), then
  :class:`GalleryBusyError`, as do deadlocks and a call that waited 30 s for a pooled connection; a full disk is
  :class:`GalleryFullError`; a server that cannot be reached, shuts down, or is read-only is
  :class:`GalleryStorageError`. A broken connection is dropped and the next call opens a new one.
- **SQL**: every value is a bound parameter; the schema name is ``gallery=``, checked against ``[a-z][a-z0-9_]*``
  and quoted as an identifier. Messages show the URI with the password masked.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from arcface.gallery._server import ServerGallery
from arcface.gallery.base import GALLERY_BACKENDS, FaceRecord, Identity, identity_from_row
from arcface.gallery.rules import GalleryBusyError, GalleryError, GalleryFullError
from arcface.inference.contract import ModelContract

__all__ = ["DEFAULT_EF_SEARCH", "PgGallery"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
DEFAULT_EF_SEARCH = 400
"""HNSW search beam width when neither the URI nor ``index_params`` give one: the smallest value that kept the
benchmark's recall against exact search high on a large gallery (bench/gallery_backends.py). A smaller gallery may
lower it in the URI for speed."""
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 64
POOL_SIZE = 8
"""Connections one process keeps to the server at most."""
POOL_WAIT_S = 30.0
CONNECT_TIMEOUT_S = 10
MAX_EF_SEARCH = 1000  # pgvector's limit


def _driver() -> tuple[Any, Callable[[Any], None]]:
    try:  # optional: the [pgvector] extra
        import psycopg
        from pgvector.psycopg import register_vector
    except ImportError as e:
        raise GalleryError(
            f"a postgresql:// gallery needs psycopg and pgvector ({e.name} is missing): pip install 'arcface[pgvector]'"
        ) from None
    return psycopg, register_vector


class _Pool:
    """At most ``size`` connections, lent one at a time; a broken one is closed instead of returned."""

    def __init__(self, connect: Callable[[], Any], size: int, wait: float, where: str) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._wait = wait
        self._where = where
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self._wait):
            raise GalleryBusyError(f"the gallery {self._where} is busy: no database connection free for "
                                   f"{self._wait:g} s; retry later", retry_after=1.0)  # fmt: skip
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _give_back(self, conn: Any) -> None:
        psycopg, _ = _driver()
        idle = psycopg.pq.TransactionStatus.IDLE
        if not conn.closed and not conn.broken and conn.info.transaction_status == idle:
            with self._lock:
                if not self._closed:
                    self._idle.append(conn)
                    return
        try:
            conn.close()
        except Exception as e:  # closing a broken connection: the first error is the one reported
            logger.debug("closing a database connection failed: %s", e)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PgGallery(ServerGallery):
    """The gallery in a PostgreSQL database with pgvector (see the module docstring).

    Open it with :func:`~arcface.gallery.base.open_gallery` and a ``postgresql://`` URI.

    Args:
        target: the parsed URI.
        contract: the model contract; required to create the gallery, checked against the bound one otherwise.
        index: ``"exact"`` (every face scanned) or ``"hnsw"`` (the HNSW index); ``"ivf"`` is taken as ``"hnsw"``.
        create: create the schema when the database has none (else :class:`FileNotFoundError`).
        index_params: ``m``, ``ef_construction`` (used when the index is created), ``ef_search``.
        busy_timeout: seconds a write waits for a row lock.
    """

    backend = "postgresql"
    DEFAULT_EF_SEARCH = DEFAULT_EF_SEARCH

    def _connect(self, contract: ModelContract | None, index: str, create: bool) -> tuple[ModelContract, str]:
        self._psycopg, self._register_vector = _driver()
        from psycopg import sql  # optional (the [pgvector] extra), present once _driver() passed

        self._sql = sql
        self._m = int(self._params.get("m", DEFAULT_M))
        self._ef_construction = int(self._params.get("ef_construction", DEFAULT_EF_CONSTRUCTION))
        self._iterative = False
        schema = self._target.name
        self._q = {name: sql.Identifier(schema, name) for name in ("meta", "identities", "faces")}
        self._schema = sql.Identifier(schema)
        self._pool = _Pool(self._new_connection, POOL_SIZE, POOL_WAIT_S, self.location)
        try:
            return self._bind(contract, create), "exact" if index == "exact" else "hnsw"
        except BaseException:
            self._pool.close()
            raise

    # ----------------------------------------------------------------------------------------------
    # Primitives (see GalleryStore)

    def _insert_identity(self, name: str, metadata: str) -> int:
        with self._write() as cur:
            cur.execute(self._f("INSERT INTO {identities} (name, metadata, created) VALUES (%s, %s, %s) RETURNING id"),
                        (name, metadata, time.time()))  # fmt: skip
            return int(cur.fetchone()[0])

    def _identity(self, identity_id: int) -> Identity | None:
        found = self._identity_rows(" WHERE i.id = %s", (identity_id,))
        return found[0] if found else None

    def _identity_page(self, after: int, limit: int | None) -> list[Identity]:
        return self._identity_rows(" WHERE i.id > %s ORDER BY i.id LIMIT %s", (after, limit))

    def _identities_named(self, name: str) -> list[Identity]:
        return self._identity_rows(" WHERE i.name = %s ORDER BY i.id", (name,))

    def _delete_identity(self, identity_id: int) -> int | None:
        with self._write() as cur:
            cur.execute(self._f("SELECT 1 FROM {identities} WHERE id = %s FOR UPDATE"), (identity_id,))
            if cur.fetchone() is None:
                return None
            cur.execute(self._f("DELETE FROM {faces} WHERE identity_id = %s"), (identity_id,))
            n = cur.rowcount
            cur.execute(self._f("DELETE FROM {identities} WHERE id = %s"), (identity_id,))
            return int(n)

    def count_identities(self) -> int:
        with self._read() as cur:
            cur.execute(self._f("SELECT count(*) FROM {identities}"))
            return int(cur.fetchone()[0])

    def _insert_faces(self, identity_id: int, x: np.ndarray, sources: list[str | None]) -> list[int] | None:
        now, cid = time.time(), self.contract.id
        with self._write() as cur:
            # FOR SHARE: a removal of this identity waits for this transaction (and then removes these faces too)
            cur.execute(self._f("SELECT 1 FROM {identities} WHERE id = %s FOR SHARE"), (identity_id,))
            if cur.fetchone() is None:
                return None
            if not len(x):
                return []
            cur.executemany(
                self._f("INSERT INTO {faces} (identity_id, embedding, contract_id, created, source)"
                        " VALUES (%s, %s, %s, %s, %s) RETURNING id"),
                [(identity_id, row, cid, now, src) for row, src in zip(x, sources, strict=True)],
                returning=True,
            )  # fmt: skip
            ids = []
            while True:
                ids.append(int(cur.fetchone()[0]))
                if not cur.nextset():
                    break
            return ids

    def _delete_face(self, face_id: int) -> bool:
        with self._write() as cur:
            cur.execute(self._f("DELETE FROM {faces} WHERE id = %s"), (face_id,))
            return cur.rowcount > 0

    def _face_records(self, identity_id: int | None) -> list[FaceRecord]:
        query, args = "SELECT id, identity_id, contract_id, created, source FROM {faces}", ()
        if identity_id is not None:
            query, args = query + " WHERE identity_id = %s", (identity_id,)
        with self._read() as cur:
            cur.execute(self._f(query + " ORDER BY id"), args)
            return [FaceRecord(int(a), int(b), c, float(d), e) for a, b, c, d, e in cur.fetchall()]

    def _embeddings(self, face_ids: list[int]) -> dict[int, np.ndarray]:
        if not face_ids:
            return {}
        with self._read() as cur:
            cur.execute(self._f("SELECT id, embedding FROM {faces} WHERE id = ANY(%s)"), (face_ids,))
            return {int(a): _vector(b) for a, b in cur.fetchall()}

    def count(self) -> int:
        with self._read() as cur:
            cur.execute(self._f("SELECT count(*) FROM {faces}"))
            return int(cur.fetchone()[0])

    @contextmanager
    def _search_view(self) -> Iterator[Any]:
        """One ``REPEATABLE READ READ ONLY`` transaction: a search never answers an identity removed before it."""
        with self._read() as cur:
            if self.index_kind == "exact":  # the planner may not take the HNSW index: every face is compared
                cur.execute("SELECT set_config('enable_indexscan', 'off', true)")
            elif self._iterative:  # pgvector >= 0.8: more faces than ef_search, still nearest first
                cur.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
            yield cur

    def _nearest(self, view: Any, q: np.ndarray, n: int) -> list[tuple[float, int, int]]:
        if self.index_kind == "hnsw":
            ef = min(MAX_EF_SEARCH, max(self._ef_search, n))
            view.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
        view.execute(self._f("SELECT embedding <=> %(q)s, id, identity_id FROM {faces}"
                             " ORDER BY embedding <=> %(q)s LIMIT %(n)s"), {"q": q, "n": n})  # fmt: skip
        return [(1.0 - float(d), int(f), int(i)) for d, f, i in view.fetchall()]

    def _faces_of(self, view: Any, identities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        view.execute(self._f("SELECT identity_id, embedding FROM {faces} WHERE identity_id = ANY(%s)"), (identities,))
        rows = view.fetchall()
        x = np.asarray([_vector(v) for _, v in rows], np.float32).reshape(len(rows), self.dim)
        return np.asarray([int(i) for i, _ in rows], np.int64), x

    def _names(self, view: Any, identities: list[int]) -> dict[int, str]:
        view.execute(self._f("SELECT id, name FROM {identities} WHERE id = ANY(%s)"), (identities,))
        return {int(a): b for a, b in view.fetchall()}

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    def close(self) -> None:
        """Close the pooled connections (writes are already committed)."""
        self._closed = True
        self._pool.close()

    # ----------------------------------------------------------------------------------------------
    # Internals

    def _f(self, query: str) -> Any:
        """``query`` with ``{meta}``, ``{identities}``, ``{faces}`` as quoted schema-qualified names."""
        return self._sql.SQL(query).format(**self._q)

    def _new_connection(self) -> Any:
        psycopg = self._psycopg
        with self._errors():
            conn = psycopg.connect(self._target.connect, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="arcface")  # fmt: skip
            try:
                if conn.execute("SELECT 1 FROM pg_type WHERE typname = 'vector'").fetchone() is not None:
                    self._register_vector(conn)  # else the gallery's creation installs pgvector, then registers it
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self._busy_timeout * 1000)}ms",))
                if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
                    conn.execute("SET synchronous_commit TO on")  # acknowledged = durable
            except BaseException:
                conn.close()
                raise
        return conn

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One read-write transaction; yields a cursor."""
        self._check_open()
        with self._errors(), self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def _identity_rows(self, where: str, args: tuple) -> list[Identity]:
        with self._read() as cur:
            cur.execute(self._f(_IDENTITY_SQL + where), args)
            return [identity_from_row(r) for r in cur.fetchall()]

    @contextmanager
    def _read(self) -> Iterator[Any]:
        """One read-only snapshot (REPEATABLE READ); yields a cursor."""
        self._check_open()
        with self._errors(), self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield cur

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The server's errors as the gallery's (busy, full, unavailable), with no credential in the message."""
        psycopg = self._psycopg
        errors = psycopg.errors
        try:
            yield
        except (errors.LockNotAvailable, errors.DeadlockDetected) as e:
            raise self._busy("another connection held a lock", e) from None
        except errors.DiskFull as e:
            raise GalleryFullError(f"the disk of the gallery {self.location} is full ({self._scrub(e)})") from None
        except (psycopg.OperationalError, errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege) as e:
            raise self._unavailable(e) from None

    def _bind(self, contract: ModelContract | None, create: bool) -> ModelContract:
        """Create the schema (first use) or read the bound contract; one process at a time (an advisory lock)."""
        lock = int.from_bytes(hashlib.sha256(f"arcface:{self._target.name}".encode()).digest()[:8], "big", signed=True)
        errors = self._psycopg.errors
        with self._errors(), self._pool.connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                    cur.execute("SELECT to_regclass(%s)", (f"{self._target.name}.meta",))
                    if cur.fetchone()[0] is None:
                        if not create:
                            raise FileNotFoundError(
                                f"no gallery at {self.location} (no schema {self._target.name!r} with a gallery); "
                                "enroll faces first"
                            )
                        meta = self._new_meta(contract, SCHEMA_VERSION)
                        self._create(cur, contract, meta)
                    else:
                        cur.execute(self._f("SELECT key, value FROM {meta}"))
                        meta = dict(cur.fetchall())
                    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                    version = cur.fetchone()
            except (errors.UndefinedTable, errors.UndefinedColumn, errors.DuplicateTable, errors.DuplicateObject,
                    errors.DatatypeMismatch) as e:  # fmt: skip
                raise GalleryError(f"{self.location}: schema {self._target.name!r} holds something that is not a "
                                   f"gallery ({self._scrub(e)})") from None  # fmt: skip
            except (errors.UndefinedFile, errors.FeatureNotSupported, errors.UndefinedObject) as e:
                raise GalleryError(f"{self.location}: the server has no pgvector extension ({self._scrub(e)}); "
                                   "install pgvector there") from None  # fmt: skip
        self._iterative = version is not None and tuple(int(p) for p in version[0].split(".")[:2]) >= (0, 8)
        return self._bound_contract(meta, contract, SCHEMA_VERSION)

    def _create(self, cur: Any, contract: ModelContract, meta: Mapping[str, str]) -> None:
        sql = self._sql
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        if cur.fetchone() is None:
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        self._register_vector(cur.connection)
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema))
        cur.execute(self._f("CREATE TABLE {meta} (key text PRIMARY KEY, value text NOT NULL)"))
        cur.execute(self._f(
            "CREATE TABLE {identities} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,"
            " metadata text NOT NULL DEFAULT '{{}}', created double precision NOT NULL)"
        ))  # fmt: skip
        cur.execute(sql.SQL(
            "CREATE TABLE {faces} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " identity_id bigint NOT NULL REFERENCES {identities}(id) ON DELETE CASCADE,"
            " embedding vector({dim}) NOT NULL, contract_id text NOT NULL, created double precision NOT NULL,"
            " source text)"
        ).format(dim=sql.Literal(int(contract.embedding_size)), **self._q))  # fmt: skip
        cur.execute(self._f("CREATE INDEX ON {faces} (identity_id)"))
        cur.execute(self._f("CREATE INDEX ON {identities} (name)"))
        cur.execute(sql.SQL("CREATE INDEX ON {faces} USING hnsw (embedding vector_cosine_ops)"
                            " WITH (m = {m}, ef_construction = {efc})").format(
            m=sql.Literal(self._m), efc=sql.Literal(self._ef_construction), **self._q))  # fmt: skip
        cur.executemany(self._f("INSERT INTO {meta} (key, value) VALUES (%s, %s)"), list(meta.items()))


_IDENTITY_SQL = (
    "SELECT i.id, i.name, i.metadata, i.created, (SELECT count(*) FROM {faces} f WHERE f.identity_id = i.id)"
    " FROM {identities} i"
)


def _vector(value: Any) -> np.ndarray:
    """A pgvector value (a ``Vector``, or an array) as a float32 array."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)


GALLERY_BACKENDS.register("postgresql", PgGallery)
