"""Vector search over unit embeddings (cosine = inner product) through FAISS: exact, IVF or HNSW.

    >>> index = VectorIndex(512, kind="hnsw")          # or "exact" (IndexFlatIP), "ivf"
    >>> index.add(gallery, ids)                       # (N, 512) unit rows, (N,) int64
    >>> scores, found = index.search(queries, k=10)   # (Q, 10) cosine, (Q, 10) ids (-1: none)

Used by the identification protocols (:mod:`arcface.eval.identification`) and the gallery (:mod:`arcface.gallery`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["INDEX_KINDS", "VectorIndex"]

#: The kinds of index.
INDEX_KINDS = ("exact", "hnsw", "ivf")


class VectorIndex:
    """A gallery of unit embeddings searched by inner product (= cosine) through FAISS.

    Args:
        dim: D, the embedding length.
        kind: ``"exact"`` (``IndexFlatIP``), ``"hnsw"`` (``IndexHNSWFlat``, inner-product metric) or ``"ivf"``
            (``IndexIVFFlat`` over a flat inner-product quantizer, trained on the first ``add``).
        m: HNSW neighbours per node.
        ef_construction: HNSW build beam width.
        ef_search: HNSW search beam width (at least ``k`` is used).
        nlist: IVF cells; lowered to ``n_train // 39`` when the training sample is smaller (FAISS wants ~39
            points per centroid).
        nprobe: IVF cells visited per query.
        train_size: most vectors sampled from the first ``add`` to train the IVF quantizer.
        seed: sampling seed of the IVF training set.

    Ids are int64 labels kept beside the index (position -> id), so every kind accepts arbitrary ids.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "exact",
        *,
        m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        nlist: int = 1024,
        nprobe: int = 16,
        train_size: int = 50_000,
        seed: int = 0,
    ) -> None:
        import faiss  # optional dependency (the [all] extra): only search needs it

        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.kind = kind
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)
        self.ef_search = int(ef_search)
        self.train_size = int(train_size)
        self.seed = int(seed)
        self._ids = np.zeros(0, dtype=np.int64)
        if kind == "exact":
            self.index = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(self.dim, int(m), faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = int(ef_construction)
        else:
            self.index = None  # built at the first add, when the training sample fixes nlist

    def __len__(self) -> int:
        return int(self._ids.size)

    def __repr__(self) -> str:
        return f"VectorIndex(dim={self.dim}, kind={self.kind!r}, size={len(self)})"

    def add(self, embeddings: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Add gallery rows.

        Args:
            embeddings: (N, D) float32 unit rows.
            ids: (N,) int labels; default the running positions ``len(self) .. len(self) + N - 1``.
        """
        x = _as_matrix(embeddings, self.dim)
        if ids is None:
            ids = np.arange(len(self), len(self) + x.shape[0], dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} embeddings but {ids.shape[0]} ids")
        if x.shape[0] == 0:
            return
        if self.index is None:
            self.index = self._train_ivf(x)
        self.index.add(x)
        self._ids = np.concatenate([self._ids, ids])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best gallery rows of each query.

        Args:
            queries: (Q, D) float32 unit rows.
            k: results per query.

        Returns:
            scores (Q, k) float32 inner products, highest first (``-inf`` where fewer than k were found) and
            ids (Q, k) int64 (-1 there).
        """
        q = _as_matrix(queries, self.dim)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            return np.full((q.shape[0], k), -np.inf, np.float32), np.full((q.shape[0], k), -1, np.int64)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, k)
        elif self.kind == "ivf":
            self.index.nprobe = self.nprobe
        scores, pos = self.index.search(q, k)  # (Q, k), (Q, k) positions, -1 = none
        found = pos >= 0
        ids = np.where(found, self._ids[np.where(found, pos, 0)], -1)
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        return scores, ids.astype(np.int64)

    @property
    def ids(self) -> np.ndarray:
        """(N,) int64 id of each row, in insertion order."""
        return self._ids

    @property
    def nbytes(self) -> int:
        """Size of the serialised FAISS index in bytes (vectors + graph / lists), plus the id array."""
        return len(self.to_bytes()) + int(self._ids.nbytes)

    def to_bytes(self) -> bytes:
        """The FAISS index serialised (without the ids; b"" for an IVF index before its first add)."""
        import faiss  # optional dependency (the [all] extra)

        return b"" if self.index is None else faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, ids: np.ndarray, kind: str, **params: Any) -> VectorIndex:
        """Rebuild an index from :meth:`to_bytes` and its ids (``kind`` and ``params`` as the constructor's).

        Raises:
            ValueError: the bytes are not a FAISS index, or its size differs from the ids'.
        """
        import faiss  # optional dependency (the [all] extra)

        try:
            raw = faiss.deserialize_index(np.frombuffer(data, np.uint8).copy())
        except RuntimeError as e:
            raise ValueError(f"not a FAISS index ({str(e).splitlines()[0] if str(e) else e})") from None
        ids = np.asarray(ids, np.int64).ravel()
        if raw.ntotal != ids.size:
            raise ValueError(f"the index holds {raw.ntotal} vectors but {ids.size} ids were given")
        index = cls(int(raw.d), kind, **params)
        index.index = raw
        index._ids = ids
        if kind == "ivf":
            index.nlist = int(raw.nlist)
        return index

    def _train_ivf(self, x: np.ndarray):
        import faiss  # optional dependency (the [all] extra)

        rng = np.random.default_rng(self.seed)
        n_train = min(x.shape[0], self.train_size)
        sample = x if n_train == x.shape[0] else x[np.sort(rng.choice(x.shape[0], n_train, replace=False))]
        nlist = max(1, min(self.nlist, n_train // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.train(np.ascontiguousarray(sample))
        self._quantizer = quantizer  # FAISS does not own it: keep it alive with the index
        self.nlist = nlist
        return index


def _as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected (N, {dim}) embeddings, got {x.shape}")
    return x


def _as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected (N, {dim}) embeddings, got {x.shape}")
    return x
