"""Grouping unnamed faces (arcface.cluster): the graph methods, the scores, the incremental extension, the public name
and bounded memory, on small synthetic embeddings (fast, no model)."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

import arcface
from arcface.cluster import METHODS, Clustering, cluster, default_threshold, extend
from arcface.cluster.graph import Graph, knn_graph
from arcface.cluster.methods import average_merge, chinese_whispers, compact, components
from arcface.cluster.metrics import bcubed, pairwise, scores


def people(n_people: int, per: int, dim: int = 64, spread: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit faces: each person a random centre, each face the centre at cosine ``spread`` plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_people, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n_people, per, dim))
    noise /= np.linalg.norm(noise, axis=2, keepdims=True)
    x = spread * centres[:, None] + np.sqrt(1 - spread**2) * noise
    x = (x / np.linalg.norm(x, axis=2, keepdims=True)).reshape(-1, dim).astype(np.float32)
    return x, np.repeat(np.arange(n_people), per)


# --------------------------------------------------------------------------------------------------
# Scores


def test_scores_on_a_hand_worked_example():
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1, 2])
    b = bcubed(pred, true)
    # precision per face: 1, 1, 1/3, 2/3, 2/3, 1; recall: 2/3, 2/3, 1/3, 1, 1, 1
    assert b["precision"] == pytest.approx((3 + 1 / 3 + 4 / 3) / 6)
    assert b["recall"] == pytest.approx((4 / 3 + 1 / 3 + 3) / 6)
    p = pairwise(pred, true)
    # pairs put together: (0,1), (2,3), (2,4), (3,4); of them one person: (0,1), (3,4); one person's pairs: 3 + 1
    assert p["precision"] == pytest.approx(2 / 4) and p["recall"] == pytest.approx(2 / 4)
    perfect = scores(true + 10, true)
    assert perfect["bcubed_f"] == perfect["pairwise_f"] == 1.0 and perfect["clusters"] == 3


def test_scores_refuse_mismatched_lengths():
    with pytest.raises(ValueError, match="3 predicted labels but 2"):
        bcubed(np.zeros(3), np.zeros(2))


# --------------------------------------------------------------------------------------------------
# The graph and its methods


def two_triangles() -> Graph:
    a = np.array([0, 1, 2, 3, 4, 5])
    b = np.array([1, 2, 0, 4, 5, 3])
    return Graph.from_pairs(7, a, b, np.full(6, 0.9, np.float32))  # node 6 alone


def test_graph_is_symmetric_without_duplicates_or_loops():
    g = Graph.from_pairs(4, np.array([0, 1, 0, 2, 3]), np.array([1, 0, 0, 3, 2]), np.array([0.9, 0.9, 1, 0.8, 0.8]))
    assert g.edges == 2
    pairs = set(zip(g.sources().tolist(), g.indices.tolist()))
    assert pairs == {(0, 1), (1, 0), (2, 3), (3, 2)}


def test_whispers_and_components_find_the_triangles():
    g = two_triangles()
    for labels in (chinese_whispers(g), components(g)):
        assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_whispers_does_not_chain_two_groups_through_one_weak_edge():
    # two 5-cliques joined by one weak edge: connected components merge them, Chinese Whispers does not
    cliques = [(i, j) for base in (0, 5) for i in range(base, base + 5) for j in range(i + 1, base + 5)]
    a = np.array([p[0] for p in cliques] + [4])
    b = np.array([p[1] for p in cliques] + [5])
    w = np.r_[np.full(len(cliques), 0.9), 0.61].astype(np.float32)
    g = Graph.from_pairs(10, a, b, w)
    assert components(g).max() == 0
    assert chinese_whispers(g).tolist() == [0] * 5 + [1] * 5


def test_average_merge_uses_the_exact_average_cosine():
    x = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)  # cos(0,1) 0.8, cos(1,2) 0.6, cos(0,2) 0
    g = Graph.from_pairs(3, np.array([0, 1]), np.array([1, 2]), np.array([0.8, 0.6], np.float32))
    assert average_merge(np.arange(3), x, g, 0.5).tolist() == [0, 0, 1]  # {0,1} vs {2}: average 0.3, no merge
    assert average_merge(np.arange(3), x, g, 0.25).tolist() == [0, 0, 0]


def test_knn_graph_keeps_edges_above_the_threshold_only():
    x, _ = people(20, 4)
    g = knn_graph(x, 5, 0.7)
    assert g.edges <= 20 * 4 * 5
    assert (g.weights > 0.7).all()
    src = g.sources()
    assert np.allclose(g.weights, np.einsum("ij,ij->i", x[src], x[g.indices]), atol=1e-5)


def test_compact_numbers_labels_by_first_face():
    assert compact(np.array([7, 7, 3, 9, 3])).tolist() == [0, 0, 1, 2, 1]


# --------------------------------------------------------------------------------------------------
# cluster()


def test_cluster_recovers_people_and_leaves_singletons_alone():
    x, who = people(30, 5)
    lone, _ = people(10, 1, seed=1)
    x = np.concatenate([x, lone])
    who = np.concatenate([who, 100 + np.arange(10)])
    for method in METHODS:
        r = cluster(x, 0.5, method=method)
        assert isinstance(r, Clustering)
        s = scores(r.labels, who)
        assert s["bcubed_f"] > 0.99 and s["pairwise_f"] > 0.99, method
    r = cluster(x, 0.5)
    assert len(r.groups) == 30 and all(g.size == 5 for g in r.groups)
    assert sorted(r.unclustered.tolist()) == list(range(150, 160))


def test_cluster_is_deterministic_and_seeded():
    x, _ = people(40, 6, spread=0.8, seed=3)
    first = cluster(x, 0.5, seed=5).labels
    assert np.array_equal(first, cluster(x, 0.5, seed=5).labels)
    assert np.array_equal(first, cluster(x.copy(), 0.5, seed=5).labels)


def test_cluster_normalises_rows_and_accepts_one_face_or_none():
    x, who = people(5, 4)
    assert np.array_equal(cluster(x * 3.0, 0.5).labels, cluster(x, 0.5).labels)
    one = cluster(x[:1], 0.5)
    assert one.labels.tolist() == [0] and one.groups == [] and one.unclustered.tolist() == [0]
    assert cluster(np.zeros((0, 8), np.float32), 0.5).labels.size == 0


def test_cluster_threshold_comes_from_the_contract_or_must_be_given():
    x, _ = people(5, 4)
    contract = SimpleNamespace(identification_threshold=0.55)
    assert cluster(x, contract=contract).threshold == 0.55
    assert cluster(x, 0.7, contract=contract).threshold == 0.7
    with pytest.raises(ValueError, match="needs a threshold"):
        cluster(x)
    with pytest.raises(ValueError, match="no identification threshold"):
        cluster(x, contract=SimpleNamespace(identification_threshold=None))
    assert default_threshold(contract) == 0.55


def test_the_default_models_contract_gives_the_threshold():
    from arcface.inference.files import read_model_file
    from arcface.inference.zoo import resolve_model_path

    contract = read_model_file(resolve_model_path("default")).contract
    assert default_threshold(contract) == contract.identification_threshold > contract.threshold


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros(5, np.float32), r"\(N, D\)"),
        (np.array([[1.0, 0.0], [np.nan, 1.0]]), "row 1 is not finite"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), "row 1 is all zeros"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_cluster_refuses_bad_embeddings_with_one_line(bad, match):
    with pytest.raises(ValueError, match=match):
        cluster(bad, 0.5)


def test_cluster_refuses_bad_parameters():
    x, _ = people(3, 3)
    with pytest.raises(ValueError, match="unknown clustering method"):
        cluster(x, 0.5, method="kmeans")
    with pytest.raises(ValueError, match=r"cosine in \[-1, 1\]"):
        cluster(x, 1.5)
    with pytest.raises(ValueError, match="k must be"):
        cluster(x, 0.5, k=0)


def test_public_name_is_callable_and_is_the_package():
    x, _ = people(4, 3)
    assert "cluster" in arcface.__all__
    assert np.array_equal(arcface.cluster(x, 0.5).labels, cluster(x, 0.5).labels)
    assert arcface.cluster.extend is extend
    from arcface import cluster as imported

    assert imported(x, 0.5).labels.size == 12


# --------------------------------------------------------------------------------------------------
# Incremental


def test_extend_joins_new_faces_to_earlier_clusters_and_makes_new_ones():
    x, who = people(20, 6)
    old = np.flatnonzero(np.arange(x.shape[0]) % 6 < 4)  # four faces of each person first
    new = np.flatnonzero(np.arange(x.shape[0]) % 6 >= 4)
    extra, _ = people(3, 4, seed=9)  # three people never seen
    earlier = cluster(x[old], 0.5)
    labels = extend(x[old], earlier.labels, np.concatenate([x[new], extra]), 0.5)
    c = int(earlier.labels.max()) + 1
    for i, face in enumerate(new):  # each new face of a known person carries that person's earlier label
        assert labels[i] == earlier.labels[np.flatnonzero(who[old] == who[face])[0]]
    fresh = labels[new.size :]
    assert (fresh >= c).all() and len(set(fresh.tolist())) == 3
    assert fresh.tolist() == sorted(fresh.tolist())  # numbered by first new face


def test_extend_never_merges_two_earlier_clusters():
    # two earlier clusters, and a new face exactly between them: it joins one, the two stay apart
    a = np.array([[1, 0, 0], [0.99, 0.141, 0]], np.float32)
    b = np.array([[0, 1, 0], [0.141, 0.99, 0]], np.float32)
    old = np.concatenate([a, b])
    mid = np.array([[0.7071, 0.7071, 0]], np.float32)
    labels = extend(old, np.array([0, 0, 1, 1]), mid, 0.6)
    assert labels.tolist() in ([0], [1])


def test_extend_checks_its_inputs():
    x, _ = people(3, 3)
    with pytest.raises(ValueError, match="labels"):
        extend(x, np.zeros(2), x, 0.5)
    with pytest.raises(ValueError, match="-D"):
        extend(x, np.zeros(9), np.ones((2, 5), np.float32), 0.5)
    assert extend(x, np.zeros(9), np.zeros((0, 64), np.float32), 0.5).size == 0


# --------------------------------------------------------------------------------------------------
# Scale: the graph, never an N x N matrix


def test_no_n_by_n_matrix_is_built():
    """30,000 faces: an N x N float32 matrix would be 3.6 GB; the traced peak stays a small fraction of it."""
    n = 30_000
    x, _ = people(n // 4, 4, dim=16, seed=2)
    tracemalloc.start()
    try:
        r = cluster(x, 0.6, k=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.edges <= n * 8
    assert peak < 0.02 * n * n * 4
