"""The signed cache file of a SQLite gallery's search index: ``DIR/index.<kind>.faiss``.

Layout: a magic line, one JSON header line, then the FAISS index bytes and the int64 face id of each of its rows.
The header says which state of the database the index holds (the generation counter, the contract, the index kind
and parameters, the face ids masked as removed, the size it was trained at) and carries ``mac``: an HMAC-SHA256,
under a random key kept in the database, of the header without it and of the payload. So a cache written outside the
process (even with a fresh checksum), copied from another gallery, damaged, truncated or stale is refused and only
costs a rebuild from the database; it is never wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arcface.gallery._sqlite import FILE_MODE, suppress_os
from arcface.index import VectorIndex

__all__ = ["CachedIndex", "IndexCache"]

logger = logging.getLogger(__name__)

_MAGIC = b"ARCFACE-GALLERY-INDEX 2\n"


@dataclass
class CachedIndex:
    """An index with what the gallery keeps beside it.

    Attributes:
        index: the FAISS index (its ids are face ids).
        masked: face ids still in the index but removed from the gallery.
        trained_size: faces in the gallery when an IVF index was trained.
    """

    index: VectorIndex
    masked: set[int]
    trained_size: int


class IndexCache:
    """The cache file of one gallery folder, for one index kind and parameters, signed with the database's key.

    Args:
        directory: the gallery folder.
        key: the database's random MAC key.
        contract_id: the gallery's contract id.
        kind, params: the index kind and parameters (a cache of others is stale).
    """

    def __init__(self, directory: Path, key: bytes, contract_id: str, kind: str, params: Mapping[str, Any]) -> None:
        self.path = directory / f"index.{kind}.faiss"
        self._key = key
        self._contract_id = contract_id
        self._kind = kind
        self._params = dict(params)

    def write(self, cached: CachedIndex, generation: int) -> None:
        """Write (replace) the cache atomically, 0600; a failure is logged, never raised (it is only a cache)."""
        body = cached.index.to_bytes()
        if not body:  # an IVF index before its first add
            self.path.unlink(missing_ok=True)
            return
        ids = cached.index.ids.astype("<i8").tobytes()  # position -> face id
        header: dict[str, Any] = {
            "generation": generation,
            "contract_id": self._contract_id,
            "kind": self._kind,
            "params": self._params,
            "index_bytes": len(body),
            "ids_bytes": len(ids),
            "masked": sorted(cached.masked),
            "trained_size": cached.trained_size,
        }
        header["mac"] = self._mac(header, body + ids)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with open(fd, "wb") as f:
                f.write(_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body + ids)
            os.replace(tmp, self.path)
        except OSError as e:
            logger.warning("could not write the gallery index cache %s: %s", self.path, e)
            with suppress_os():
                tmp.unlink(missing_ok=True)

    def read(self, generation: int, face_ids: set[int], dim: int) -> CachedIndex | None:
        """The cached index when it is intact, signed with this database's key, of ``generation`` and holding exactly
        ``face_ids`` (besides masked ones); None (and a log line) otherwise."""
        if not self.path.is_file():
            return None
        try:
            data = self.path.read_bytes()
            if not data.startswith(_MAGIC):
                raise ValueError("bad magic (an older or foreign cache)")
            end = data.index(b"\n", len(_MAGIC))
            header = json.loads(data[len(_MAGIC) : end])
            body = data[end + 1 : end + 1 + header["index_bytes"]]
            ids_raw = data[end + 1 + header["index_bytes"] :]
            if len(body) != header["index_bytes"] or len(ids_raw) != header["ids_bytes"]:
                raise ValueError("truncated")
            mac = header.pop("mac")
            if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac(header, body + ids_raw)):
                raise ValueError("its MAC does not match this database's key (damaged, or written by someone else)")
            expected = (generation, self._contract_id, self._kind, self._params)
            if (header["generation"], header["contract_id"], header["kind"], header["params"]) != expected:
                logger.debug("gallery index cache %s is stale: rebuilding", self.path)
                return None
            ids = np.frombuffer(ids_raw, "<i8").astype(np.int64)
            masked = {int(i) for i in header["masked"]}
            if set(ids.tolist()) - masked != face_ids:
                raise ValueError("its face ids differ from the database's")
            index = VectorIndex.from_bytes(body, ids, self._kind, **self._params)
            if index.dim != dim:
                raise ValueError("index dimension differs")
        except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
            logger.warning("gallery index cache %s is unusable (%s): rebuilding it from the database", self.path, e)
            return None
        logger.debug("gallery index loaded from the cache %s", self.path)
        return CachedIndex(index, masked, int(header["trained_size"]))

    def erase(self) -> None:
        """Delete the cache and any temporary file of an interrupted write (they may hold removed embeddings)."""
        for path in (self.path, *self.path.parent.glob(f".{self.path.name}.tmp*")):
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                logger.warning("gallery %s: could not delete the index cache %s (%s)", self.path.parent, path, e)

    def _mac(self, header: Mapping[str, Any], payload: bytes) -> str:
        h = hmac.new(self._key, json.dumps(dict(header), sort_keys=True).encode(), hashlib.sha256)
        h.update(payload)
        return h.hexdigest()
