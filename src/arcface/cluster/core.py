"""``cluster(embeddings, threshold)``: group the embeddings of unnamed faces into people.

The method, over the thresholded k-nearest-neighbour graph (:func:`~arcface.cluster.graph.knn_graph`):

1. **Chinese Whispers** (:func:`~arcface.cluster.methods.chinese_whispers`): each face takes the label with the
   most edge weight among its neighbours, in a seeded random order, until stable. It follows the graph's
   communities, so the several poses of one person end up together, but one edge can pull a stranger in;
2. **template pruning** (:func:`~arcface.cluster.methods.template_prune`): a face whose cosine to the normalised mean
   of its cluster's other faces is not ``> threshold`` leaves (the stranger pulled in by one edge);
3. **average-linkage merging** (:func:`~arcface.cluster.methods.average_merge`): clusters joined by an edge merge
   while the average cosine between their faces is ``> threshold`` (exact, from the clusters' sums): it joins the
   pieces of one person left apart, and gives the faces that left a second chance.

Steps 2 and 3 repeat until no face leaves (at most :data:`~arcface.cluster.methods.ROUNDS` times). The methods
were chosen by measuring each step alone and the baselines (DBSCAN, average-linkage over all pairs, Chinese Whispers
over all pairs) on the same embeddings (``bench/clustering.py``; the figures are in docs/benchmarks.md).

Parameters:

* ``threshold``: the cosine two faces need to be neighbours, a face needs to its cluster's template, and two
  clusters' average cosine needs to merge (one number for the three, so that one calibrated decision rules). By default
  the model contract's open-set identification threshold (``identification_threshold``): deciding that a face
  belongs with one of many others is a 1:N decision like a gallery search, not a 1:1 verification, and the stricter
  1:N threshold is the one calibrated for it. It is never chosen on the faces being clustered.
* ``k``: neighbours searched per face (default 20); each face needs an edge to some of its own person's faces, not
  to all, and the graph holds at most ``2 * N * k`` edges. Up to 50,000 faces the search is exact, above it an IVF
  index (:func:`~arcface.cluster.graph.index_for`).
* ``seed``: Chinese Whispers' visiting order; the same input, parameters and seed give the same clusters.

A face with no neighbour above the threshold is alone in its cluster ("unclustered").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from arcface.cluster.graph import Graph, knn_graph
from arcface.cluster.methods import average_merge, chinese_whispers, compact, prune_and_merge
from arcface.registry import Registry

__all__ = ["DEFAULT_METHOD", "METHODS", "Clustering", "as_unit_rows", "cluster", "default_threshold"]

#: The methods, each ``(embeddings, graph, threshold, seed) -> labels``: ``whispers+prune`` (the default: the three
#: steps of the module docstring), ``whispers`` (Chinese Whispers alone), ``whispers+average`` (without the pruning)
#: and ``average`` (average-linkage merging from single faces).
METHODS: Registry[Callable[..., np.ndarray]] = Registry("clustering method")
DEFAULT_METHOD = "whispers+prune"


@METHODS.register("whispers+prune")
def _whispers_prune(x: np.ndarray, graph: Graph, threshold: float, seed: int) -> np.ndarray:
    return prune_and_merge(chinese_whispers(graph, seed=seed), x, graph, threshold)


@METHODS.register("whispers")
def _whispers(x: np.ndarray, graph: Graph, threshold: float, seed: int) -> np.ndarray:
    return chinese_whispers(graph, seed=seed)


@METHODS.register("whispers+average")
def _whispers_average(x: np.ndarray, graph: Graph, threshold: float, seed: int) -> np.ndarray:
    return average_merge(chinese_whispers(graph, seed=seed), x, graph, threshold)


@METHODS.register("average")
def _average(x: np.ndarray, graph: Graph, threshold: float, seed: int) -> np.ndarray:
    return average_merge(np.arange(x.shape[0]), x, graph, threshold)


@dataclass(frozen=True)
class Clustering:
    """The clusters of N faces.

    Attributes:
        labels: (N,) int64 cluster of each face, 0..C-1 numbered by first face.
        threshold: the cosine threshold used.
        method: the method used (a name in :data:`METHODS`).
        k: neighbours searched per face.
        edges: undirected edges of the graph.
    """

    labels: np.ndarray
    threshold: float
    method: str
    k: int
    edges: int = 0
    sizes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", np.bincount(self.labels) if self.labels.size else np.zeros(0, np.int64))

    @property
    def groups(self) -> list[np.ndarray]:
        """The face indices of each cluster of two or more faces, largest first (ties: by first face)."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.cumsum(self.sizes)[:-1]
        parts = [p for p in np.split(order, bounds) if p.size > 1]
        return sorted(parts, key=lambda p: (-p.size, int(p[0])))

    @property
    def unclustered(self) -> np.ndarray:
        """Indices of the faces alone in their cluster."""
        return np.flatnonzero(self.sizes[self.labels] == 1)


def default_threshold(contract) -> float:
    """The clustering threshold of a model contract: its open-set identification threshold (module docstring).

    Raises:
        ValueError: the contract has no identification threshold.
    """
    value = getattr(contract, "identification_threshold", None)
    if value is None:
        raise ValueError("the model contract has no identification threshold (an uncalibrated model): give a threshold")
    return float(value)


def as_unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """(N, D) float32 L2-normalised copy of ``embeddings``.

    Raises:
        ValueError: not a 2-D array, a row that is not finite, or a zero row (each named by its index).
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be an (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"embeddings must be real numbers, got dtype {x.dtype}")
    x = np.array(x, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"embeddings: row {int(bad[0])} is not finite (NaN or inf; {bad.size} such rows)")
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"embeddings: row {int(zero[0])} is all zeros ({zero.size} such rows)")
    x /= norms[:, None]
    return x


def cluster(
    embeddings: np.ndarray,
    threshold: float | None = None,
    *,
    contract=None,
    k: int = 20,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
) -> Clustering:
    """Group faces into people (see the module docstring for the method and its parameters).

    Args:
        embeddings: (N, D) embeddings of one model (normalised here).
        threshold: cosine threshold; default: ``contract``'s (:func:`default_threshold`).
        contract: the model's :class:`~arcface.inference.contract.ModelContract` (anything with an
            ``identification_threshold``), for the default threshold.
        k: neighbours searched per face.
        method: a name in :data:`METHODS`.
        seed: Chinese Whispers' seed.

    Raises:
        ValueError: bad embeddings, an unknown method, a threshold outside [-1, 1], or neither a threshold nor a
            calibrated contract.
    """
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS.names()}")
    if threshold is None:
        if contract is None:
            raise ValueError("cluster needs a threshold, or the model contract to take its threshold from")
        threshold = default_threshold(contract)
    threshold = float(threshold)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = as_unit_rows(embeddings)
    graph = knn_graph(x, int(k), threshold, seed=seed)
    labels = METHODS.get(method)(x, graph, threshold, seed)
    return Clustering(compact(labels), threshold, method, int(k), graph.edges)
