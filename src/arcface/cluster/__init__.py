"""Grouping the embeddings of unnamed faces into people over a k-nearest-neighbour graph (never an N x N matrix).

    >>> import arcface
    >>> result = arcface.cluster(embeddings, contract=contract)   # or threshold=0.6
    >>> result.labels, result.groups, result.unclustered

* :mod:`~arcface.cluster.core`: :func:`cluster`, the method and its parameters;
* :mod:`~arcface.cluster.graph`: the thresholded kNN graph from FAISS (:mod:`arcface.index`);
* :mod:`~arcface.cluster.methods`: Chinese Whispers, connected components, average-linkage merging on the graph;
* :mod:`~arcface.cluster.incremental`: :func:`extend`, new faces joining earlier clusters;
* :mod:`~arcface.cluster.metrics`: BCubed and pairwise scores against true identities.

The package itself is callable, ``arcface.cluster(embeddings, ...)`` being :func:`cluster`: the public name and the
package share one name, and whichever of the two Python finds first, the call works.
"""

from __future__ import annotations

import sys
import types

from arcface.cluster.core import DEFAULT_METHOD, METHODS, Clustering, cluster, default_threshold
from arcface.cluster.incremental import extend

__all__ = ["DEFAULT_METHOD", "METHODS", "Clustering", "cluster", "default_threshold", "extend"]


class _CallablePackage(types.ModuleType):
    """This package's module type: calling it calls :func:`cluster`."""

    def __call__(self, *args, **kwargs) -> Clustering:
        return cluster(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
