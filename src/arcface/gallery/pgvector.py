"""The gallery in PostgreSQL with pgvector: ``postgresql://USER:PASSWORD@HOST:PORT/DB[?gallery=NAME&ef_search=N]``.

One schema per gallery (``gallery=NAME``, default ``arcface``), created on first use::

    NAME.meta        key text primary key, value text: the schema version, the contract (JSON) and its id
    NAME.identities  id bigint (identity), name text, metadata text (compact sorted JSON), created float8
    NAME.faces       id bigint (identity), identity_id -> identities (ON DELETE CASCADE), embedding vector(D),
                     contract_id text, created float8, source text
    indexes          faces(identity_id); faces USING hnsw (embedding vector_cosine_ops) WITH (m, ef_construction)

The semantics are the SQLite store's (:mod:`arcface.gallery.store`, :mod:`arcface.gallery.rules`); where a server
decides differently:

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
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import numpy as np

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
    rank_identities,
)
from arcface.gallery.rules import (
    INT64_MAX,
    GalleryBusyError,
    GalleryError,
    GalleryFullError,
    GalleryStorageError,
    check_metadata,
    check_name,
    valid_id,
)
from arcface.index import INDEX_KINDS
from arcface.inference.contract import ModelContract

__all__ = ["DEFAULT_EF_SEARCH", "PgGallery"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_EF_SEARCH = 400
"""HNSW search beam width when neither the URI nor ``index_params`` give one: the smallest of the benchmark's values
with recall@10 >= 0.95 against exact search at 1M faces (0.951 at 1M, 0.996 at 100K; 100 gave 0.750 and 0.932;
docs/benchmarks.md, bench/gallery_backends.py). A smaller gallery may lower it in the URI for speed."""
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


class PgGallery(GalleryStore):
    """The gallery in a PostgreSQL database with pgvector (see the module docstring).

    Use :func:`~arcface.gallery.base.open_gallery` (or ``Gallery.open``) with a ``postgresql://`` URI.

    Args:
        target: the parsed URI.
        contract: the model contract; required to create the gallery, checked against the bound one otherwise.
        index: ``"exact"`` (every face scanned) or ``"hnsw"`` (the HNSW index); ``"ivf"`` is taken as ``"hnsw"``.
        create: create the schema when the database has none (else :class:`FileNotFoundError`).
        index_params: ``m``, ``ef_construction`` (used when the index is created), ``ef_search``.
        busy_timeout: seconds a write waits for a row lock.
        pool_size: connections kept at most.
    """

    backend = "postgresql"

    def __init__(
        self,
        target: GalleryTarget,
        contract: ModelContract | None = None,
        *,
        index: str = "exact",
        create: bool = True,
        index_params: Mapping[str, Any] | None = None,
        busy_timeout: float = 1.5,
        pool_size: int = POOL_SIZE,
        cache: bool = True,
    ) -> None:
        if index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {index!r}; expected one of {INDEX_KINDS}")
        self._psycopg, self._register_vector = _driver()
        from psycopg import sql  # optional (the [pgvector] extra), present once _driver() passed

        self._sql = sql
        self._target = target
        self.index_kind = "exact" if index == "exact" else "hnsw"
        params = dict(index_params or {})
        self._ef_search = int(target.options.get("ef_search", params.get("ef_search", DEFAULT_EF_SEARCH)))
        self._m = int(params.get("m", DEFAULT_M))
        self._ef_construction = int(params.get("ef_construction", DEFAULT_EF_CONSTRUCTION))
        self._busy_timeout = float(busy_timeout)
        self._secrets = [s for s in {target.password, unquote(target.password), _uri_password(target.uri)} if s]
        self._closed = False
        self._iterative = False
        schema = target.name
        self._q = {name: sql.Identifier(schema, name) for name in ("meta", "identities", "faces")}
        self._schema = sql.Identifier(schema)
        self._pool = _Pool(self._connect, pool_size, POOL_WAIT_S, target.display)
        try:
            self.contract = self._bind(contract, create)
        except BaseException:
            self._pool.close()
            raise
        self.dim = self.contract.embedding_size

    def __repr__(self) -> str:
        return f"PgGallery({self._target.display!r}, contract={self.contract.id}, index={self.index_kind!r})"

    # ----------------------------------------------------------------------------------------------
    # Identities

    def add_identity(self, name: str, metadata: Mapping[str, Any] | None = None) -> int:
        name = check_name(name)
        meta = check_metadata(metadata)
        with self._write() as cur:
            cur.execute(self._f("INSERT INTO {identities} (name, metadata, created) VALUES (%s, %s, %s) RETURNING id"),
                        (name, meta, time.time()))  # fmt: skip
            return int(cur.fetchone()[0])

    def get_identity(self, identity_id: int) -> Identity:
        rows = []
        if valid_id(identity_id):
            with self._read() as cur:
                cur.execute(self._f(_IDENTITY_SQL + " WHERE i.id = %s"), (int(identity_id),))
                rows = cur.fetchall()
        if not rows:
            raise KeyError(f"no identity {identity_id} in the gallery {self.location}")
        return _identity(rows[0])

    def list_identities(self, limit: int | None = None, after: int = 0) -> list[Identity]:
        if limit is not None and int(limit) < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        after = max(0, min(int(after), INT64_MAX))
        with self._read() as cur:
            cur.execute(self._f(_IDENTITY_SQL + " WHERE i.id > %s ORDER BY i.id LIMIT %s"),
                        (after, None if limit is None else int(limit)))  # fmt: skip
            return [_identity(r) for r in cur.fetchall()]

    def find_identities(self, name: str) -> list[Identity]:
        if not isinstance(name, str):
            return []
        with self._read() as cur:
            cur.execute(self._f(_IDENTITY_SQL + " WHERE i.name = %s ORDER BY i.id"), (name,))
            return [_identity(r) for r in cur.fetchall()]

    def remove_identity(self, identity_id: int) -> int:
        if not valid_id(identity_id):
            raise KeyError(f"no identity {identity_id} in the gallery {self.location}")
        with self._write() as cur:
            cur.execute(self._f("SELECT 1 FROM {identities} WHERE id = %s FOR UPDATE"), (int(identity_id),))
            if cur.fetchone() is None:
                raise KeyError(f"no identity {identity_id} in the gallery {self.location}")
            cur.execute(self._f("DELETE FROM {faces} WHERE identity_id = %s"), (int(identity_id),))
            n = cur.rowcount
            cur.execute(self._f("DELETE FROM {identities} WHERE id = %s"), (int(identity_id),))
            return int(n)

    def count_identities(self) -> int:
        with self._read() as cur:
            cur.execute(self._f("SELECT count(*) FROM {identities}"))
            return int(cur.fetchone()[0])

    # ----------------------------------------------------------------------------------------------
    # Faces

    def add_faces(
        self,
        identity_id: int,
        embeddings: np.ndarray,
        contract_id: str | ModelContract,
        sources: Sequence[str | None] | None = None,
    ) -> list[int]:
        self._check_open()
        x, srcs = checked_faces(self, embeddings, contract_id, sources)  # (N, D) unit rows
        if not valid_id(identity_id):
            raise KeyError(f"no identity {identity_id} in the gallery {self.location}")
        now, cid = time.time(), self.contract.id
        with self._write() as cur:
            # FOR SHARE: a removal of this identity waits for this transaction (and then removes these faces too)
            cur.execute(self._f("SELECT 1 FROM {identities} WHERE id = %s FOR SHARE"), (int(identity_id),))
            if cur.fetchone() is None:
                raise KeyError(f"no identity {identity_id} in the gallery {self.location}")
            if not len(x):
                return []
            cur.executemany(
                self._f("INSERT INTO {faces} (identity_id, embedding, contract_id, created, source)"
                        " VALUES (%s, %s, %s, %s, %s) RETURNING id"),
                [(int(identity_id), row, cid, now, src) for row, src in zip(x, srcs, strict=True)],
                returning=True,
            )  # fmt: skip
            ids = []
            while True:
                ids.append(int(cur.fetchone()[0]))
                if not cur.nextset():
                    break
            return ids

    def remove_face(self, face_id: int) -> None:
        if not valid_id(face_id):
            raise KeyError(f"no face {face_id} in the gallery {self.location}")
        with self._write() as cur:
            cur.execute(self._f("DELETE FROM {faces} WHERE id = %s"), (int(face_id),))
            if cur.rowcount == 0:
                raise KeyError(f"no face {face_id} in the gallery {self.location}")

    def list_faces(self, identity_id: int | None = None) -> list[FaceRecord]:
        query, args = "SELECT id, identity_id, contract_id, created, source FROM {faces}", ()
        if identity_id is not None:
            if not valid_id(identity_id):
                return []
            query, args = query + " WHERE identity_id = %s", (int(identity_id),)
        with self._read() as cur:
            cur.execute(self._f(query + " ORDER BY id"), args)
            return [FaceRecord(int(a), int(b), c, float(d), e) for a, b, c, d, e in cur.fetchall()]

    def get_embedding(self, face_id: int) -> np.ndarray:
        row = None
        if valid_id(face_id):
            with self._read() as cur:
                cur.execute(self._f("SELECT embedding FROM {faces} WHERE id = %s"), (int(face_id),))
                row = cur.fetchone()
        if row is None:
            raise KeyError(f"no face {face_id} in the gallery {self.location}")
        return np.asarray(row[0].to_numpy() if hasattr(row[0], "to_numpy") else row[0], np.float32)

    def get_embeddings(self, face_ids: Sequence[int]) -> np.ndarray:
        ids = [int(f) for f in face_ids if valid_id(f)]
        found: dict[int, Any] = {}
        if ids:
            with self._read() as cur:
                cur.execute(self._f("SELECT id, embedding FROM {faces} WHERE id = ANY(%s)"), (ids,))
                found = {int(a): b for a, b in cur.fetchall()}
        missing = [f for f in face_ids if not valid_id(f) or int(f) not in found]
        if missing:
            raise KeyError(f"no face {missing[0]} in the gallery {self.location}")
        out = [found[int(f)] for f in face_ids]
        return np.asarray([v.to_numpy() if hasattr(v, "to_numpy") else v for v in out], np.float32).reshape(
            len(out), self.dim
        )

    def count(self) -> int:
        with self._read() as cur:
            cur.execute(self._f("SELECT count(*) FROM {faces}"))
            return int(cur.fetchone()[0])

    # ----------------------------------------------------------------------------------------------
    # Search

    def search(self, embedding: np.ndarray, k: int = 5, *, aggregate: str = "max", top: int = 3) -> list[Match]:
        q, k, top = checked_query(embedding, self.dim, k, aggregate, top)
        with self._read() as cur:
            if self.index_kind == "exact":  # the planner may not take the HNSW index: every face is compared
                cur.execute("SELECT set_config('enable_indexscan', 'off', true)")
            elif self._iterative:  # pgvector >= 0.8: more faces than ef_search, still nearest first
                cur.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
            nearest_sql = self._f("SELECT embedding <=> %(q)s, id, identity_id FROM {faces}"
                                  " ORDER BY embedding <=> %(q)s LIMIT %(n)s")  # fmt: skip

            def nearest(n: int) -> list[tuple[float, int, int]]:
                if self.index_kind == "hnsw":
                    ef = min(MAX_EF_SEARCH, max(self._ef_search, n))
                    cur.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
                cur.execute(nearest_sql, {"q": q, "n": n})
                return [(1.0 - float(d), int(f), int(i)) for d, f, i in cur.fetchall()]

            def mean_top(identities: list[int], top: int) -> dict[int, float]:
                cur.execute(self._f("SELECT identity_id, 1 - (embedding <=> %s) FROM {faces}"
                                    " WHERE identity_id = ANY(%s)"), (q, identities))  # fmt: skip
                sims: dict[int, list[float]] = {}
                for ident, s in cur.fetchall():
                    sims.setdefault(int(ident), []).append(float(s))
                return {i: float(np.mean(sorted(s, reverse=True)[:top])) for i, s in sims.items()}

            ranked = rank_identities(nearest, INT64_MAX, k, aggregate, top, mean_top)[:k]
            if not ranked:
                return []
            cur.execute(self._f("SELECT id, name FROM {identities} WHERE id = ANY(%s)"), ([i for _, i, _ in ranked],))
            names = {int(a): b for a, b in cur.fetchall()}
        return [Match(ident, names[ident], float(s), int(f)) for s, ident, f in ranked if ident in names]

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

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"the gallery {self.location} is closed")

    def _connect(self) -> Any:
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
            raise GalleryBusyError(
                f"the gallery {self.location} is busy: another connection held a lock for more than "
                f"{self._busy_timeout:g} s ({self._scrub(e)}); retry later",
                retry_after=max(1.0, self._busy_timeout),
            ) from None
        except errors.DiskFull as e:
            raise GalleryFullError(f"the disk of the gallery {self.location} is full ({self._scrub(e)})") from None
        except (psycopg.OperationalError, errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege) as e:
            raise GalleryStorageError(
                f"the gallery {self.location} cannot be reached or written now ({self._scrub(e)})"
            ) from None

    def _scrub(self, e: BaseException) -> str:
        """The first line of an error, with every form of the password taken out."""
        text = " ".join(str(e).split("\n")[0].split()) or type(e).__name__
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

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
                        if contract is None:
                            raise GalleryError(f"{self.location}: creating a gallery needs a model contract")
                        self._create(cur, contract)
                        bound = contract
                    else:
                        cur.execute(self._f("SELECT key, value FROM {meta}"))
                        meta = dict(cur.fetchall())
                        bound = self._bound(meta)
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
        if contract is not None and contract.id != bound.id:
            raise contract_refused(self.location, bound, contract)
        return bound

    def _bound(self, meta: Mapping[str, str]) -> ModelContract:
        if meta.get("schema") != str(SCHEMA_VERSION) or "contract" not in meta:
            raise GalleryError(f"{self.location}: gallery schema {meta.get('schema')} (this code reads "
                               f"{SCHEMA_VERSION})")  # fmt: skip
        try:
            return ModelContract.from_json(meta["contract"])
        except (ValueError, TypeError, KeyError) as e:
            raise GalleryError(f"{self.location}: the stored model contract is unreadable ({e})") from None

    def _create(self, cur: Any, contract: ModelContract) -> None:
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
        cur.executemany(self._f("INSERT INTO {meta} (key, value) VALUES (%s, %s)"), [
            ("schema", str(SCHEMA_VERSION)), ("contract", contract.to_json()), ("contract_id", contract.id),
        ])  # fmt: skip


_IDENTITY_SQL = (
    "SELECT i.id, i.name, i.metadata, i.created, (SELECT count(*) FROM {faces} f WHERE f.identity_id = i.id)"
    " FROM {identities} i"
)


def _identity(row: tuple) -> Identity:
    ident, name, meta, created, faces = row
    return Identity(int(ident), name, json.loads(meta), float(created), int(faces))


def _uri_password(uri: str) -> str:
    """The password of a libpq URI (``user:password@``), percent-decoded; "" when there is none."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0].split("/", 1)[0]
    if "@" not in rest:
        return ""
    cred = rest.rsplit("@", 1)[0]
    return unquote(cred.split(":", 1)[1]) if ":" in cred else ""


def _open_pg(target: GalleryTarget, contract: ModelContract | None, **options: Any) -> PgGallery:
    return PgGallery(target, contract, **options)


GALLERY_BACKENDS.register("postgresql", _open_pg)
