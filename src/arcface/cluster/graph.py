"""The k-nearest-neighbour similarity graph of unit embeddings, from FAISS, as a sparse symmetric graph.

Each face is searched against all faces (:class:`arcface.index.VectorIndex`: exact up to ``exact_below`` faces, an
IVF index above, so the cost grows as N * sqrt(N) * D rather than N^2 * D); of its ``k`` nearest neighbours those at
cosine ``> threshold`` become edges, and an edge found from either end is kept once for each direction. The graph
holds at most ``2 * N * k`` directed edges: no N x N matrix is ever formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from arcface.index import VectorIndex

__all__ = ["Graph", "index_for", "knn_graph", "search_knn"]

#: Queries searched at a time (bounds the (chunk, k) result arrays).
_CHUNK = 65_536


@dataclass(frozen=True)
class Graph:
    """A symmetric weighted graph in compressed sparse row form.

    Attributes:
        n: nodes.
        indptr: (n + 1,) int64; node i's neighbours are ``indices[indptr[i]:indptr[i + 1]]``.
        indices: (E,) int32 neighbour of each directed edge (both directions of every edge are present).
        weights: (E,) float32 cosine similarity of each edge.
    """

    n: int
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    @property
    def edges(self) -> int:
        """Undirected edges."""
        return int(self.indices.size // 2)

    def sources(self) -> np.ndarray:
        """(E,) int32 the source node of each directed edge."""
        return np.repeat(np.arange(self.n, dtype=np.int32), np.diff(self.indptr))

    @classmethod
    def from_pairs(cls, n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> Graph:
        """The graph of undirected edges ``a[i] - b[i]`` (weight ``w[i]``); duplicates and self-loops dropped."""
        a, b, w = np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(w, np.float32)
        keep = a != b
        a, b, w = a[keep], b[keep], w[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key, first = np.unique(lo * n + hi, return_index=True)
        w = w[first]
        lo, hi = key // n, key % n
        src = np.concatenate([lo, hi])
        dst = np.concatenate([hi, lo])
        w = np.concatenate([w, w])
        order = np.lexsort((dst, src))  # by source, then neighbour: a fixed layout for fixed input
        src, dst, w = src[order], dst[order], w[order]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
        return cls(int(n), indptr, dst.astype(np.int32), w.astype(np.float32))


def index_for(x: np.ndarray, *, exact_below: int = 50_000, seed: int = 0) -> VectorIndex:
    """A search index over unit rows ``x``: exact up to ``exact_below`` rows, else IVF (about sqrt(N) cells)."""
    n, dim = x.shape
    if n <= exact_below:
        index = VectorIndex(dim, "exact")
    else:
        # about sqrt(N) cells, a query visiting 8 of them: a face's own person lies in the cells nearest to it, and
        # the search costs about N * (sqrt(N) + 8 N / sqrt(N)) * D
        nlist = int(min(4096, max(64, math.sqrt(n))))
        index = VectorIndex(dim, "ivf", nlist=nlist, nprobe=8, train_size=max(50_000, 40 * nlist), seed=seed)
    index.add(x)
    return index


def search_knn(
    index: VectorIndex, queries: np.ndarray, k: int, *, skip_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``index`` to each query, in chunks.

    Args:
        index: the faces searched.
        queries: (Q, D) unit rows.
        k: neighbours per query.
        skip_self: the queries are the index's rows in order (ids 0..Q-1): drop each query's own row.

    Returns:
        (Q, k) float32 cosine (``-inf`` where none) and (Q, k) int64 ids (-1 where none).
    """
    q = queries.shape[0]
    kk = k + 1 if skip_self else k
    scores = np.full((q, k), -np.inf, np.float32)
    ids = np.full((q, k), -1, np.int64)
    for start in range(0, q, _CHUNK):
        stop = min(q, start + _CHUNK)
        s, i = index.search(queries[start:stop], kk)
        if skip_self:
            own = i == np.arange(start, stop)[:, None]
            # drop the query's own row where found, else the last (weakest) hit: k remain either way
            drop = np.where(own.any(axis=1), own.argmax(axis=1), kk - 1)
            keep = np.ones_like(own)
            keep[np.arange(stop - start), drop] = False
            s = s[keep].reshape(stop - start, k)
            i = i[keep].reshape(stop - start, k)
        scores[start:stop], ids[start:stop] = s, i
    return scores, ids


def knn_graph(embeddings: np.ndarray, k: int, threshold: float, *, exact_below: int = 50_000, seed: int = 0) -> Graph:
    """The thresholded k-nearest-neighbour graph of unit embeddings.

    Args:
        embeddings: (N, D) float32 unit rows.
        k: neighbours searched per face.
        threshold: an edge needs cosine ``> threshold``.
        exact_below: up to this many faces the search is exact; above, an IVF index.
        seed: the IVF training sample's seed.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    k = max(0, min(int(k), n - 1))
    if k == 0:
        return Graph.from_pairs(n, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    scores, ids = search_knn(index_for(x, exact_below=exact_below, seed=seed), x, k, skip_self=True)
    keep = (scores > threshold) & (ids >= 0)
    rows = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], ids.shape)
    return Graph.from_pairs(n, rows[keep], ids[keep], scores[keep])
