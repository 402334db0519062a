"""The gallery in Milvus: ``milvus://[USER:PASSWORD@]HOST:PORT[/DB]`` (a server or cluster; ``milvus+https://`` over
TLS) or ``milvus-lite:///path/file.db`` (an embedded Milvus Lite data folder), ``?gallery=NAME&ef_search=N``.

Collections of a gallery (``NAME``, default ``arcface``), created on first use with ``consistency_level="Strong"``::

    NAME_meta                   key (primary), value: the schema version, the contract (JSON), its id, the index kind
    NAME_identities             id (auto), name, name_key (int64 hash of the name), metadata (JSON text), created
    NAME_faces_<contract id>    id (auto), identity_id, embedding FLOAT_VECTOR(D), contract_id, created, source

One faces collection per contract: its name says which model made its vectors. Milvus wants a vector field in every
collection, so ``meta`` and ``identities`` carry a 2-D zero vector they never search.

How this backend keeps the rules of :class:`~arcface.gallery.base.GalleryStore`:

- **Consistency**: every query and search asks for ``Strong`` consistency, so an acknowledged write (and a removal)
  is visible to the next call of any client, replicas included.
- **Durability**: a write returns once Milvus acknowledged it: in its write-ahead log (a cluster's message storage;
  Milvus Lite's WAL file, flushed to the operating system on every write and fsynced when its segments are sealed, so
  it survives a crash of the process, not of the machine).
- **No transactions across collections**: each insert or delete is atomic, a call that touches two collections is
  not. So the order is chosen to be safe: ``add_faces`` inserts, then checks the identity still exists (and deletes
  what it inserted if not); ``remove_identity`` deletes the identity, then its faces (again if any arrived meanwhile);
  a search drops faces whose identity is gone.
- **Search** goes to Milvus every time. The faces collection's index is chosen when the gallery is created and stays:
  ``index="exact"`` -> ``FLAT`` (exact), ``"hnsw"`` -> ``HNSW`` (COSINE, ``M``, ``efConstruction``; searched with
  ``ef`` = max(``ef_search``, faces asked)), ``"ivf"`` -> ``IVF_FLAT`` (``nlist``; ``nprobe``). Opening an existing
  gallery with another kind keeps the collection's (:attr:`index_kind` says which; a debug log line too). One search
  asks for at most :data:`MAX_TOPK` faces (Milvus's limit), so an identity with more faces than that near the query
  can hide others.
- **Busy**: Milvus has no locks; a write its rate limiter refuses is retried for ``busy_timeout`` seconds, then
  :class:`GalleryBusyError`.
- **Removal** deletes by primary key: gone from the next search and query at once; the bytes stay in the segment
  files until compaction rewrites them (see docs/SECURITY.md).
- **Filters** are built from integers only (ids and the name's hash); a name is compared in Python, so no text of a
  caller ever reaches Milvus's expression parser. Messages show the URI with the password masked.
- Milvus Lite serves one process per data folder (created 0700): a second process that opens it gets
  :class:`GalleryStorageError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from arcface.gallery._server import ServerGallery
from arcface.gallery._sqlite import make_private_dir
from arcface.gallery.base import GALLERY_BACKENDS, FaceRecord, Identity
from arcface.gallery.rules import GalleryError
from arcface.inference.contract import ModelContract

__all__ = ["DEFAULT_EF_SEARCH", "MilvusGallery"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
DEFAULT_EF_SEARCH = 256
"""HNSW search beam width when neither the URI nor ``index_params`` give one: high recall against exact search in
the benchmark (bench/gallery_backends.py), and Milvus's search time barely depends on it."""
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_NLIST = 1024
DEFAULT_NPROBE = 32
MAX_TOPK = 16384
"""Most results of one Milvus search or query."""
CALL_TIMEOUT_S = 60.0
_RATE_LIMIT = 8  # pymilvus's ErrorCode.RATE_LIMIT
_BATCH = 1000
_INDEX_TYPES = {"exact": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT"}
_DUMMY = [0.0, 0.0]


def _driver() -> Any:
    try:  # optional: the [milvus] extra
        import pymilvus
    except ImportError as e:
        raise GalleryError(
            f"a milvus:// gallery needs pymilvus ({e.name} is missing): pip install 'arcface[milvus]'"
        ) from None
    # pymilvus logs every failed call at ERROR with a traceback; this backend turns each into one error of its own.
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    return pymilvus


def name_key(name: str) -> int:
    """The int64 a name is found by (its SHA-256's first 8 bytes); the name itself is compared afterwards."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)


class MilvusGallery(ServerGallery):
    """The gallery in Milvus or Milvus Lite (see the module docstring).

    Open it with :func:`~arcface.gallery.base.open_gallery` and a ``milvus://`` or ``milvus-lite://`` URI.

    Args:
        target: the parsed URI.
        contract: the model contract; required to create the gallery, checked against the bound one otherwise.
        index: the faces collection's index when the gallery is created (``exact``, ``hnsw``, ``ivf``).
        create: create the collections when there are none (else :class:`FileNotFoundError`).
        index_params: ``m``, ``ef_construction``, ``nlist`` (at creation), ``ef_search``, ``nprobe``.
        busy_timeout: seconds a write refused by Milvus's rate limiter is retried, then :class:`GalleryBusyError`.
    """

    MAX_FETCH = MAX_TOPK
    DEFAULT_EF_SEARCH = DEFAULT_EF_SEARCH

    def _connect(self, contract: ModelContract | None, index: str, create: bool) -> tuple[ModelContract, str]:
        self._pm = _driver()
        target = self._target
        self.backend = target.kind
        self._nprobe = int(self._params.get("nprobe", DEFAULT_NPROBE))
        self._lock = threading.Lock()
        name = target.name
        self._meta, self._identities = f"{name}_meta", f"{name}_identities"
        if target.kind == "milvus-lite" and target.path is not None and not target.path.exists():
            if not create:
                raise FileNotFoundError(f"no gallery at {self.location}; enroll faces first")
            make_private_dir(target.path)  # Milvus Lite's data folder: 0700, like a SQLite gallery's
        # No keepalive pings on an idle connection: a server with gRPC's default policy (Milvus Lite's) answers them
        # with GOAWAY "too_many_pings" and a log line every few seconds; a dead connection shows at the next call.
        grpc = {"grpc.keepalive_permit_without_calls": False}
        with self._errors():
            if target.kind == "milvus-lite":
                self._client = self._pm.MilvusClient(uri=str(target.path), timeout=CALL_TIMEOUT_S, grpc_options=grpc)
            else:
                token = f"{target.user}:{target.password}" if target.user or target.password else ""
                self._client = self._pm.MilvusClient(uri=target.connect, token=token, db_name=target.database,
                                                     timeout=CALL_TIMEOUT_S, grpc_options=grpc)  # fmt: skip
        try:
            with self._errors():
                bound, kind = self._bind(contract, index, create)
        except BaseException:
            self._client.close()
            raise
        self._faces = f"{name}_faces_{bound.id}"
        return bound, kind

    # ----------------------------------------------------------------------------------------------
    # Primitives (see GalleryStore)

    def _insert_identity(self, name: str, metadata: str) -> int:
        row = {"name": name, "name_key": name_key(name), "metadata": metadata, "created": time.time(), "v": _DUMMY}
        with self._call():
            return int(self._write("insert", self._identities, [row])["ids"][0])

    def _identity(self, identity_id: int) -> Identity | None:
        found = self._with_counts(self._identity_rows([identity_id]))
        return found[0] if found else None

    def _identity_page(self, after: int, limit: int | None) -> list[Identity]:
        with self._call():
            ids = sorted(int(r["id"]) for r in self._all(self._identities, f"id > {after}", ["id"]))
        return self._with_counts(self._identity_rows(ids[:limit]))

    def _identities_named(self, name: str) -> list[Identity]:
        with self._call():
            rows = self._all(self._identities, f"name_key == {name_key(name)}", _IDENTITY_FIELDS)
        return self._with_counts(sorted((r for r in rows if r["name"] == name), key=lambda r: int(r["id"])))

    def _delete_identity(self, identity_id: int) -> int | None:
        if not self._identity_rows([identity_id]):
            return None
        with self._call():
            self._write("delete", self._identities, ids=[identity_id])  # first: an add_faces from now on is undone
            removed = 0
            while True:  # faces, and any face an add_faces inserted meanwhile
                faces = [int(r["id"]) for r in self._all(self._faces, f"identity_id == {identity_id}", ["id"])]
                if not faces:
                    return removed
                for start in range(0, len(faces), _BATCH):
                    self._write("delete", self._faces, ids=faces[start : start + _BATCH])
                removed += len(faces)

    def count_identities(self) -> int:
        with self._call():
            return self._count(self._identities)

    def _insert_faces(self, identity_id: int, x: np.ndarray, sources: list[str | None]) -> list[int] | None:
        if not self._identity_rows([identity_id]):
            return None
        now, cid = time.time(), self.contract.id
        rows = [{"identity_id": identity_id, "embedding": row.tolist(), "contract_id": cid, "created": now,
                 "source": src} for row, src in zip(x, sources, strict=True)]  # fmt: skip
        ids: list[int] = []
        with self._call():
            try:
                for start in range(0, len(rows), _BATCH):
                    ids += [int(i) for i in self._write("insert", self._faces, rows[start : start + _BATCH])["ids"]]
            except BaseException:
                if ids:  # a later batch failed: the earlier ones must not stay
                    self._write("delete", self._faces, ids=ids)
                raise
            if not self._identity_rows([identity_id]):  # removed meanwhile: what was inserted goes too
                if ids:
                    self._write("delete", self._faces, ids=ids)
                return None
        return ids

    def _delete_face(self, face_id: int) -> bool:
        with self._call():
            if not self._client.query(self._faces, ids=[face_id], output_fields=["id"], consistency_level="Strong"):
                return False
            self._write("delete", self._faces, ids=[face_id])
            return True

    def _face_records(self, identity_id: int | None) -> list[FaceRecord]:
        expr = "id > 0" if identity_id is None else f"identity_id == {identity_id}"
        with self._call():
            rows = self._all(self._faces, expr, ["id", "identity_id", "contract_id", "created", "source"])
        return sorted((FaceRecord(int(r["id"]), int(r["identity_id"]), r["contract_id"], float(r["created"]),
                                  r.get("source")) for r in rows), key=lambda f: f.id)  # fmt: skip

    def _embeddings(self, face_ids: list[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        with self._call():
            for start in range(0, len(face_ids), _BATCH):
                rows = self._client.query(self._faces, ids=face_ids[start : start + _BATCH],
                                          output_fields=["id", "embedding"], consistency_level="Strong")  # fmt: skip
                found.update((int(r["id"]), np.asarray(r["embedding"], np.float32)) for r in rows)
        return found

    def count(self) -> int:
        with self._call():
            return self._count(self._faces)

    @contextmanager
    def _search_view(self) -> Iterator[None]:
        """Every call asks for Strong consistency: the search sees every write acknowledged before it."""
        with self._call():
            yield None

    def _nearest(self, view: None, q: np.ndarray, n: int) -> list[tuple[float, int, int]]:
        if self.index_kind == "hnsw":
            params: dict[str, Any] = {"ef": max(self._ef_search, n)}
        elif self.index_kind == "ivf":
            params = {"nprobe": self._nprobe}
        else:
            params = {}
        hits = self._client.search(self._faces, data=[q.tolist()], limit=n, output_fields=["identity_id"],
                                   search_params={"metric_type": "COSINE", "params": params},
                                   consistency_level="Strong")[0]  # fmt: skip
        return [(float(h["distance"]), int(h["id"]), int(h["entity"]["identity_id"])) for h in hits]

    def _faces_of(self, view: None, identities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = self._all(self._faces, f"identity_id in {[int(i) for i in identities]}", ["identity_id", "embedding"])
        x = np.asarray([r["embedding"] for r in rows], np.float32).reshape(len(rows), self.dim)
        return np.asarray([int(r["identity_id"]) for r in rows], np.int64), x

    def _names(self, view: None, identities: list[int]) -> dict[int, str]:
        return {int(r["id"]): r["name"] for r in self._identity_rows(identities)}

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    def close(self) -> None:
        """Close the client (writes are already acknowledged)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._client.close()
        except Exception as e:  # closing: nothing left to protect
            logger.debug("closing the Milvus client failed: %s", e)

    # ----------------------------------------------------------------------------------------------
    # Internals

    def _write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A write (``insert``, ``delete``, ``upsert``) of the client; one refused by Milvus's rate limiter is retried
        for ``busy_timeout`` seconds, then :class:`GalleryBusyError` (a refused write wrote nothing)."""
        call = getattr(self._client, method)
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.05
        while True:
            try:
                return call(*args, retry_on_rate_limit=False, **kwargs)
            except self._pm.exceptions.MilvusException as e:
                if getattr(e, "code", None) != _RATE_LIMIT:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy("Milvus refused writes", e) from None
                time.sleep(min(pause, left))
                pause = min(2 * pause, 1.0)

    @contextmanager
    def _call(self) -> Iterator[None]:
        self._check_open()
        with self._errors():
            yield

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Milvus's errors (unreachable, refused, timed out) as :class:`GalleryStorageError`, without credentials."""
        try:
            yield
        except self._pm.exceptions.MilvusException as e:
            raise self._unavailable(e) from None
        except Exception as e:
            if type(e).__module__.split(".")[0] in ("grpc", "milvus_lite"):
                raise self._unavailable(e) from None
            raise

    def _all(self, collection: str, expr: str, fields: list[str]) -> list[dict]:
        """Every row matching ``expr`` (an expression built from integers only): one query, or batches past
        Milvus's limit on one answer."""
        rows = self._client.query(collection, filter=expr, output_fields=fields, limit=MAX_TOPK,
                                  consistency_level="Strong")  # fmt: skip
        if len(rows) < MAX_TOPK:
            return [dict(r) for r in rows]
        it = self._client.query_iterator(collection, batch_size=_BATCH, filter=expr, output_fields=fields)
        rows = []
        try:
            while True:
                batch = it.next()
                if not batch:
                    return rows
                rows += [dict(r) for r in batch]
        finally:
            it.close()

    def _count(self, collection: str) -> int:
        res = self._client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(res[0]["count(*)"])

    def _identity_rows(self, ids: list[int]) -> list[dict]:
        """The identities with these ids (those that exist), by id."""
        if not ids:
            return []
        with self._call():
            rows: list[dict] = []
            for start in range(0, len(ids), _BATCH):
                rows += self._client.query(self._identities, ids=ids[start : start + _BATCH],
                                           output_fields=_IDENTITY_FIELDS, consistency_level="Strong")  # fmt: skip
        return sorted((dict(r) for r in rows), key=lambda r: int(r["id"]))

    def _with_counts(self, rows: list[dict]) -> list[Identity]:
        """Identities with their face counts."""
        if not rows:
            return []
        ids = [int(r["id"]) for r in rows]
        counts: Counter = Counter()
        with self._call():
            for start in range(0, len(ids), _BATCH):
                chunk = ids[start : start + _BATCH]
                counts.update(int(r["identity_id"]) for r in self._all(self._faces, f"identity_id in {chunk}",
                                                                       ["identity_id"]))  # fmt: skip
        return [Identity(int(r["id"]), r["name"], json.loads(r["metadata"]), float(r["created"]), counts[int(r["id"])])
                for r in rows]  # fmt: skip

    def _bind(self, contract: ModelContract | None, index: str, create: bool) -> tuple[ModelContract, str]:
        """Create the collections (first use) or read the bound contract and index kind; load them."""
        c = self._client
        if not c.has_collection(self._meta):
            if not create:
                raise FileNotFoundError(f"no gallery at {self.location} (no collection {self._meta}); enroll "
                                        "faces first")  # fmt: skip
            if contract is None:
                raise GalleryError(f"{self.location}: creating a gallery needs a model contract")
            self._create_meta()
        c.load_collection(self._meta)
        keys = ["schema", "contract", "contract_id", "index"]
        rows = c.query(self._meta, ids=keys, output_fields=["key", "value"], consistency_level="Strong")
        meta = {r["key"]: r["value"] for r in rows}
        if not meta:
            meta = {**self._new_meta(contract, SCHEMA_VERSION), "index": index}
            self._write("upsert", self._meta, [{"key": k, "value": v, "v": _DUMMY} for k, v in meta.items()])
            # Two processes creating at once: the contract read back is the one that stays.
            rows = c.query(self._meta, ids=keys, output_fields=["key", "value"], consistency_level="Strong")
            meta = {r["key"]: r["value"] for r in rows}
        bound = self._bound_contract(meta, contract, SCHEMA_VERSION)
        kind = meta.get("index", "exact")
        if kind != index:
            logger.debug("gallery %s: its faces are indexed %s (chosen at creation); index=%r is not used",
                        self.location, kind, index)  # fmt: skip
        self._create_data(bound, kind)
        return bound, kind

    def _schema(self) -> Any:
        return self._pm.MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)

    def _create_meta(self) -> None:
        DataType = self._pm.DataType
        s = self._pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        s.add_field("value", DataType.VARCHAR, max_length=65535)
        s.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        self._create(self._meta, s, "v", "FLAT", "L2", {})

    def _create_data(self, contract: ModelContract, kind: str) -> None:
        """The identities and faces collections (when absent), loaded."""
        DataType = self._pm.DataType
        if not self._client.has_collection(self._identities):
            s = self._schema()
            s.add_field("id", DataType.INT64, is_primary=True)
            s.add_field("name", DataType.VARCHAR, max_length=4096)
            s.add_field("name_key", DataType.INT64)
            s.add_field("metadata", DataType.VARCHAR, max_length=65535)
            s.add_field("created", DataType.DOUBLE)
            s.add_field("v", DataType.FLOAT_VECTOR, dim=2)
            self._create(self._identities, s, "v", "FLAT", "L2", {}, scalar="name_key")
        faces = f"{self._target.name}_faces_{contract.id}"
        if not self._client.has_collection(faces):
            s = self._schema()
            s.add_field("id", DataType.INT64, is_primary=True)
            s.add_field("identity_id", DataType.INT64)
            s.add_field("embedding", DataType.FLOAT_VECTOR, dim=int(contract.embedding_size))
            s.add_field("contract_id", DataType.VARCHAR, max_length=64)
            s.add_field("created", DataType.DOUBLE)
            s.add_field("source", DataType.VARCHAR, max_length=65535, nullable=True)
            p = self._params
            build = {
                "exact": {},
                "hnsw": {"M": int(p.get("m", DEFAULT_M)), "efConstruction": int(p.get("ef_construction",
                                                                                      DEFAULT_EF_CONSTRUCTION))},
                "ivf": {"nlist": int(p.get("nlist", DEFAULT_NLIST))},
            }[kind]  # fmt: skip
            self._create(faces, s, "embedding", _INDEX_TYPES[kind], "COSINE", build, scalar="identity_id")
        for name in (self._identities, faces):
            self._client.load_collection(name)

    def _create(self, name: str, schema: Any, field: str, index_type: str, metric: str, params: dict,
                scalar: str | None = None) -> None:  # fmt: skip
        ip = self._client.prepare_index_params()
        ip.add_index(field, index_type=index_type, metric_type=metric, params=params)
        if scalar is not None:
            ip.add_index(scalar, index_type="INVERTED")
        try:
            self._client.create_collection(name, schema=schema, index_params=ip, consistency_level="Strong")
        except self._pm.exceptions.MilvusException:
            if not self._client.has_collection(name):  # not another process that created it first
                raise


_IDENTITY_FIELDS = ["id", "name", "metadata", "created"]


GALLERY_BACKENDS.register("milvus", MilvusGallery)
GALLERY_BACKENDS.register("milvus-lite", MilvusGallery)
