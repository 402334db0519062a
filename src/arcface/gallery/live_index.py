"""The SQLite gallery's in-memory search index, kept at the state of the database it was built from.

The database counts its changes to faces (a ``generation``, bumped by every committed write that touches faces). The
index remembers the generation it reflects and moves with it: a write of this process is applied incrementally when
the index was exactly one step behind; anything else (another process wrote, another thread's rebuild overtook) is a
rebuild from one snapshot of the database. Removal masks face ids (no FAISS kind needs ``remove_ids``; HNSW has
none); the index is rebuilt once masked ids exceed a quarter of it. An IVF index is retrained when the gallery has
doubled since it was trained, while more cells could still be filled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from arcface.gallery.index_cache import CachedIndex
from arcface.index import VectorIndex

__all__ = ["LiveIndex", "Snapshot"]

_MASK_REBUILD_SHARE = 0.25
_IVF_POINTS_PER_CELL = 39

Snapshot = tuple[int, np.ndarray, np.ndarray, np.ndarray]
"""``(generation, face ids (N,), identity ids (N,), unit embeddings (N, D))``: one consistent read of the faces."""


class LiveIndex:
    """A FAISS index of a gallery's faces, its face -> identity map, and the generation it reflects.

    Every method may be called from any thread (one lock guards the index and its maps; it is reentrant, so a caller
    may hold :attr:`lock` around several calls).

    Args:
        dim, kind, params: the :class:`~arcface.index.VectorIndex` to build.
        read: reads a :data:`Snapshot` of the database (for a rebuild).
    """

    def __init__(self, dim: int, kind: str, params: Mapping[str, Any], read: Callable[[], Snapshot]) -> None:
        self.dim = dim
        self.kind = kind
        self.params = dict(params)
        self.lock = threading.RLock()
        self._read = read
        self.generation = -1
        self._face_identity: dict[int, int] = {}
        self._cached = CachedIndex(VectorIndex(dim, kind, **self.params), set(), 0)

    def __len__(self) -> int:
        """Faces in the gallery (masked ones excluded)."""
        return len(self._face_identity)

    @property
    def index(self) -> VectorIndex:
        """The FAISS index (masked faces included)."""
        return self._cached.index

    def rebuild(self) -> None:
        """Build the index from a fresh snapshot of the database."""
        with self.lock:
            self.reset(self._read())

    def reset(self, snapshot: Snapshot) -> None:
        """Build the index from this snapshot."""
        generation, ids, owners, x = snapshot
        with self.lock:
            index = VectorIndex(self.dim, self.kind, **self.params)
            index.add(x, ids)
            self._face_identity = dict(zip(ids.tolist(), owners.tolist(), strict=True))
            self._cached = CachedIndex(index, set(), len(ids))
            self.generation = generation

    def restore(self, cached: CachedIndex, generation: int, owners: Mapping[int, int]) -> None:
        """Take an index read from the cache (of ``generation``, faces ``owners``: face -> identity)."""
        with self.lock:
            self._cached = cached
            self._face_identity = dict(owners)
            self.generation = generation

    def cacheable(self) -> CachedIndex:
        """The index to write to a cache: rebuilt first when it still holds removed faces (a cache must not)."""
        with self.lock:
            if self._cached.masked:
                self.rebuild()
            return self._cached

    def catch_up(self, generation: int) -> None:
        """Rebuild when the database (at ``generation``) moved past the index: another process wrote."""
        if generation > self.generation:
            with self.lock:
                if generation > self.generation:
                    self.rebuild()

    def applied(self, generation: int, change: Callable[[], None]) -> None:
        """Bring the index to ``generation``, the state a committed write of ours made.

        Incrementally (``change``) when the index was exactly one step behind; not at all when a rebuild already read
        that state; by a rebuild when another writer committed in between.
        """
        with self.lock:
            if self.generation >= generation:
                return
            if self.generation == generation - 1:
                change()  # may rebuild (too many masked, IVF retraining), reading a later state still
                self.generation = max(self.generation, generation)
            else:
                self.rebuild()

    def add(self, x: np.ndarray, ids: Sequence[int], identity: int) -> None:
        """Add (N, D) unit rows, faces ``ids`` of ``identity`` (call inside :meth:`applied`)."""
        self._cached.index.add(x, np.asarray(ids, np.int64))
        self._face_identity.update((int(i), identity) for i in ids)
        c = self._cached
        wanted = int(self.params.get("nlist", 1024)) * _IVF_POINTS_PER_CELL
        if self.kind == "ivf" and len(c.index) >= 2 * max(c.trained_size, 1) and c.trained_size < wanted:
            self.rebuild()

    def forget(self, face_ids: Iterable[int]) -> None:
        """Mask removed faces (call inside :meth:`applied`); rebuild once too many are masked."""
        masked = self._cached.masked
        for f in face_ids:
            self._face_identity.pop(int(f), None)
            masked.add(int(f))
        if len(masked) > _MASK_REBUILD_SHARE * max(len(self._cached.index), 1) and len(masked) > 16:
            self.rebuild()

    def nearest(self, q: np.ndarray, n: int) -> list[tuple[float, int, int]]:
        """The ``n`` faces nearest the (D,) unit query: ``(similarity, face, identity)``, nearest first."""
        with self.lock:
            c = self._cached
            size = len(c.index)
            if size == 0 or n <= 0:
                return []
            scores, ids = c.index.search(q[None], min(size, n + len(c.masked)))  # (1, m) each
            out = []
            for s, f in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
                if f >= 0 and f not in c.masked:
                    out.append((float(s), int(f), self._face_identity[f]))
            return out[:n]
