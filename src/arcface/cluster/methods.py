"""Graph clustering over a :class:`~arcface.cluster.graph.Graph`: Chinese Whispers, connected components, and
average-linkage merging of clusters along the graph's edges.

**Chinese Whispers** (Biemann, 2006, https://aclanthology.org/W06-3812/; the rule dlib's ``chinese_whispers`` uses
for faces): every face starts as its own label; in a random order each face takes the label whose neighbours have the
largest total edge weight; repeat until no label changes. Faces are visited in ``batches`` random groups per pass, a
group updated at once from the labels of the groups before it, so a pass is a handful of vectorised steps. The order
comes from ``seed``: the same input and seed give the same labels.

**Template pruning**: a face stays in its cluster only when its cosine to the cluster's template, the normalised
mean of the cluster's other faces, is ``> threshold`` (a probe against an enrolled person's template, the 1:N
decision); a face that fails leaves and stands alone. It undoes the weak point of Chinese Whispers, a face pulled into
a cluster by one edge to one of its members.

**Average-linkage merging** (UPGMA restricted to the graph): the average cosine between two clusters of unit vectors
A and B is exactly ``sum(A) . sum(B) / (|A| |B|)``, so a cluster needs only its sum and size. Clusters joined by an
edge of the graph are merged while their average cosine is ``> threshold``, best pairs first (each round merges a
matching of the best pairs, then the sums are updated); pairs without an edge between them are never compared.
"""

from __future__ import annotations

import numpy as np

from arcface.cluster.graph import Graph

__all__ = ["ROUNDS", "average_merge", "chinese_whispers", "components", "compact", "prune_and_merge", "template_prune"]


#: Most rounds of :func:`prune_and_merge`.
ROUNDS = 3

#: Cluster pairs scored at a time by :func:`average_merge`.
_PAIRS = 262_144


def compact(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..C-1 by their first face, so equal partitions give equal arrays."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse].astype(np.int64)


def components(graph: Graph) -> np.ndarray:
    """(N,) connected-component labels (union-find by repeated min-label propagation, vectorised)."""
    labels = np.arange(graph.n, dtype=np.int64)
    src, dst = graph.sources().astype(np.int64), graph.indices.astype(np.int64)
    while True:
        low = labels.copy()
        np.minimum.at(low, src, labels[dst])
        low = low[low]  # pointer jumping
        if np.array_equal(low, labels):
            return compact(labels)
        labels = low


def _edges_of(graph: Graph, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of the node in ``nodes``, edge position in the CSR arrays) of every edge leaving ``nodes``."""
    start, stop = graph.indptr[nodes], graph.indptr[nodes + 1]
    count = stop - start
    owner = np.repeat(np.arange(nodes.size), count)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    return owner, np.repeat(start, count) + offset


def chinese_whispers(
    graph: Graph,
    *,
    iterations: int = 30,
    batches: int = 16,
    seed: int = 0,
    labels: np.ndarray | None = None,
    movable: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) Chinese Whispers labels (see the module docstring).

    Args:
        graph: the similarity graph; its edge weights are the votes.
        iterations: most passes over all faces (it stops earlier when no label changes).
        batches: groups per pass (1 would be a synchronous update, which can oscillate; N is the sequential rule).
        seed: the visiting order's seed.
        labels: (N,) starting labels (default: each face its own); with ``movable``, the labels are returned as
            they are, not renumbered.
        movable: (N,) bool, the faces whose label may change (default all): the others vote but keep their label
            (new faces joining earlier clusters).
    """
    n = graph.n
    fixed_start = labels is not None and movable is not None
    labels = np.arange(n, dtype=np.int64) if labels is None else np.array(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    has_edges = np.diff(graph.indptr) > 0
    active = np.flatnonzero(has_edges if movable is None else has_edges & np.asarray(movable, bool))
    for _ in range(iterations):
        changed = 0
        for group in np.array_split(rng.permutation(active), max(1, min(batches, active.size))):
            if group.size == 0:
                continue
            owner, pos = _edges_of(graph, group)
            key = owner * np.int64(n) + labels[graph.indices[pos]]
            uniq, inverse = np.unique(key, return_inverse=True)
            votes = np.bincount(inverse, weights=graph.weights[pos])
            node, label = uniq // n, uniq % n
            # per node, the label with the most weight; ties go to the smaller label (np.lexsort is stable)
            order = np.lexsort((label, -votes, node))
            node, label = node[order], label[order]
            first = np.r_[True, node[1:] != node[:-1]]
            targets = group[node[first]]
            new = label[first]
            changed += int(np.count_nonzero(labels[targets] != new))
            labels[targets] = new
        if changed == 0:
            break
    return labels if fixed_start else compact(labels)


def template_prune(
    labels: np.ndarray,
    embeddings: np.ndarray,
    threshold: float,
    *,
    movable: np.ndarray | None = None,
    chunk: int = 65_536,
) -> tuple[np.ndarray, int]:
    """Faces whose cosine to their cluster's leave-one-out template is ``<= threshold`` leave it (module docstring).

    Args:
        labels: (N,) clusters, 0..C-1.
        embeddings: (N, D) unit rows.
        threshold: the cosine a face needs to its cluster's template.
        movable: (N,) bool, the faces that may leave (default all).
        chunk: faces scored at a time (bounds the (chunk, D) temporaries).

    Returns:
        the labels, each face that left with a new label of its own (C, C+1, ...), and how many left.
    """
    labels = np.asarray(labels, np.int64).copy()
    x = np.asarray(embeddings, np.float32)
    c = int(labels.max()) + 1 if labels.size else 0
    sums = np.zeros((c, x.shape[1]), np.float32)
    np.add.at(sums, labels, x)
    sizes = np.bincount(labels, minlength=c)
    leave = np.zeros(labels.size, bool)
    for start in range(0, labels.size, chunk):
        rows = slice(start, start + chunk)
        rest = sums[labels[rows]] - x[rows]  # (chunk, D) the sum of the cluster's other faces
        norm = np.linalg.norm(rest, axis=1)
        score = np.einsum("ij,ij->i", x[rows], rest) / np.maximum(norm, 1e-12)
        leave[rows] = (sizes[labels[rows]] > 1) & (score <= threshold)
    if movable is not None:
        leave &= np.asarray(movable, bool)
    count = int(np.count_nonzero(leave))
    labels[leave] = c + np.arange(count)
    return labels, count


def average_merge(
    labels: np.ndarray,
    embeddings: np.ndarray,
    graph: Graph,
    threshold: float,
    *,
    rounds: int = 100,
    fixed: int = 0,
) -> np.ndarray:
    """Merge clusters joined by a graph edge while their average cosine is ``> threshold`` (module docstring).

    Args:
        labels: (N,) starting clusters (``np.arange(N)`` for agglomeration from single faces).
        embeddings: (N, D) unit rows.
        graph: the candidate pairs: two clusters are compared only when an edge joins them.
        threshold: the average cosine a merge needs.
        rounds: most rounds of merges.
        fixed: labels below it are earlier clusters: two of them never merge, and a cluster merged into one keeps
            its label (then labels are returned as they are, not renumbered).
    """
    labels = compact(labels) if not fixed else np.asarray(labels, np.int64)
    x = np.asarray(embeddings, np.float32)
    c = int(labels.max()) + 1 if labels.size else 0
    sums = np.zeros((c, x.shape[1]), np.float32)
    np.add.at(sums, labels, x)
    sizes = np.bincount(labels, minlength=c).astype(np.float64)
    parent = np.arange(c, dtype=np.int64)
    src, dst = graph.sources().astype(np.int64), graph.indices.astype(np.int64)
    keep = src < dst
    a, b = labels[src[keep]], labels[dst[keep]]
    for _ in range(rounds):
        a, b = parent[a], parent[b]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        pair = np.unique(lo[lo != hi] * np.int64(c) + hi[lo != hi])
        if pair.size == 0:
            break
        a, b = pair // c, pair % c
        score = np.empty(a.size, np.float64)
        for start in range(0, a.size, _PAIRS):  # (chunk, D) gathers, never (pairs, D)
            i, j = a[start : start + _PAIRS], b[start : start + _PAIRS]
            score[start : start + _PAIRS] = np.einsum("ij,ij->i", sums[i], sums[j]) / (sizes[i] * sizes[j])
        good = np.flatnonzero(score > threshold)
        if good.size == 0:
            break
        merged = 0
        used = np.zeros(c, bool)
        for i in good[np.argsort(-score[good], kind="stable")]:  # a greedy matching, best pairs first
            p, q = a[i], b[i]
            if used[p] or used[q] or (p < fixed and q < fixed):
                continue
            if q < fixed:  # the earlier cluster keeps its label
                p, q = q, p
            used[p] = used[q] = True
            parent[q] = p
            sums[p] += sums[q]
            sizes[p] += sizes[q]
            merged += 1
        if merged == 0:
            break
        parent = parent[parent]  # one level per round: q -> p, and p is a root this round
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    return parent[labels] if fixed else compact(parent[labels])


def prune_and_merge(
    labels: np.ndarray,
    embeddings: np.ndarray,
    graph: Graph,
    threshold: float,
    *,
    movable: np.ndarray | None = None,
    fixed: int = 0,
) -> np.ndarray:
    """:func:`template_prune` then :func:`average_merge`, repeated until no face leaves (at most :data:`ROUNDS`).

    Args:
        labels: (N,) clusters (Chinese Whispers' labels).
        embeddings: (N, D) unit rows.
        graph: the candidate pairs of the merging.
        threshold: the cosine of both steps.
        movable: faces that may leave their cluster (default all; see :func:`template_prune`).
        fixed: earlier clusters that never merge with each other (see :func:`average_merge`).
    """
    for _ in range(ROUNDS):
        labels, left = template_prune(labels, embeddings, threshold, movable=movable)
        labels = average_merge(labels, embeddings, graph, threshold, fixed=fixed)
        if not left:
            break
    return labels
