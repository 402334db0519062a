"""New faces joining earlier clusters without recomputing the earlier faces' graph.

The earlier faces keep their clusters. The new faces are searched against the earlier faces (one FAISS index over
them) and against each other; the edges at cosine ``> threshold`` make a graph in which only the new faces move:
Chinese Whispers runs with the earlier faces' labels fixed (they vote, they do not change), template pruning sends a
new face that does not match its cluster's template away, then average-linkage merging joins new groups to earlier
clusters (or to each other) when the average cosine is ``> threshold``, never two earlier clusters (the steps of
:func:`arcface.cluster.cluster`). A new face with no earlier neighbour forms a new cluster with its new neighbours,
or stays alone. The work grows with the new faces times the search cost, not with the earlier faces squared.
"""

from __future__ import annotations

import numpy as np

from arcface.cluster.core import as_unit_rows
from arcface.cluster.graph import Graph, index_for, knn_graph, search_knn
from arcface.cluster.methods import chinese_whispers, compact, prune_and_merge

__all__ = ["extend"]


def extend(
    old_embeddings: np.ndarray,
    old_labels: np.ndarray,
    new_embeddings: np.ndarray,
    threshold: float,
    *,
    k: int = 20,
    seed: int = 0,
) -> np.ndarray:
    """The clusters of new faces, given the earlier faces' clusters (see the module docstring).

    Args:
        old_embeddings: (M, D) the earlier faces.
        old_labels: (M,) their clusters, 0..C-1.
        new_embeddings: (N, D) the new faces, same model.
        threshold: the cosine threshold the earlier clustering used.
        k: neighbours searched per new face (among the earlier faces, and among the new ones).
        seed: Chinese Whispers' seed.

    Returns:
        (N,) int64: an earlier cluster's label for a new face that joined it, else a new label C, C+1, ...
        (numbered by first new face).

    Raises:
        ValueError: bad embeddings, or shapes that disagree.
    """
    old = as_unit_rows(old_embeddings)
    new = as_unit_rows(new_embeddings)
    old_labels = np.asarray(old_labels, np.int64).ravel()
    if old_labels.size != old.shape[0]:
        raise ValueError(f"{old.shape[0]} earlier embeddings but {old_labels.size} labels")
    if old.shape[1] != new.shape[1]:
        raise ValueError(f"the new embeddings are {new.shape[1]}-D, the earlier ones {old.shape[1]}-D")
    if old_labels.size and old_labels.min() < 0:
        raise ValueError("earlier labels must be >= 0")
    m, n = old.shape[0], new.shape[0]
    c = int(old_labels.max()) + 1 if m else 0
    if n == 0:
        return np.zeros(0, np.int64)
    a, b, w = [], [], []
    if m:
        scores, ids = search_knn(index_for(old, seed=seed), new, min(int(k), m))
        keep = (scores > threshold) & (ids >= 0)
        a.append(m + np.broadcast_to(np.arange(n)[:, None], ids.shape)[keep])
        b.append(ids[keep])
        w.append(scores[keep])
    inner = knn_graph(new, int(k), threshold, seed=seed)
    a.append(m + inner.sources().astype(np.int64))
    b.append(m + inner.indices.astype(np.int64))
    w.append(inner.weights)
    graph = Graph.from_pairs(m + n, np.concatenate(a), np.concatenate(b), np.concatenate(w))
    labels = np.concatenate([old_labels, c + np.arange(n, dtype=np.int64)])
    movable = np.r_[np.zeros(m, bool), np.ones(n, bool)]
    labels = chinese_whispers(graph, seed=seed, labels=labels, movable=movable)
    labels = prune_and_merge(labels, np.concatenate([old, new]), graph, threshold, movable=movable, fixed=c)[m:]
    # new clusters numbered C, C+1, ... by their first new face
    fresh = labels >= c
    labels[fresh] = c + compact(labels[fresh])
    return labels
