"""1:N identification: the numpy ROC, the FAISS index kinds, MegaFace-style CMC against a brute-force reference, the
open-set TPIR@FPIR, and a MegaFace-style run on LFW with the default model."""

from __future__ import annotations

import numpy as np
import pytest

from arcface.eval.identification import evaluate_identification, open_set_identification
from arcface.eval.metrics import cmc_from_ranks, tar_at_far
from arcface.index import VectorIndex
from arcface.inference.runners import l2_normalise
from conftest import require_module

require_module("faiss", "the all extra")


def _clusters(rng, n_ids, per_id, dim, noise):
    centres = l2_normalise(rng.standard_normal((n_ids, dim)))
    emb = l2_normalise(np.repeat(centres, per_id, axis=0) + noise * rng.standard_normal((n_ids * per_id, dim)))
    return emb, np.repeat(np.arange(n_ids), per_id)


# ------------------------------------------------------------------------------------------------
# ROC


def test_tar_at_far_matches_brute_force():
    rng = np.random.default_rng(0)
    gen = rng.normal(0.6, 0.15, 500)
    imp = rng.normal(0.0, 0.15, 2000)
    res = tar_at_far(gen, imp, fars=(1e-3, 1e-2, 1e-1, 1.0))
    for far, r in res.items():
        # Brute force: the lowest threshold among the scores whose FAR (strictly above) stays <= far.
        cands = np.concatenate([imp, [imp.min() - 1]])
        ok = [t for t in cands if np.mean(imp > t) <= far + 1e-12]
        thr = min(ok)
        assert r["far_actual"] <= far + 1e-12
        assert r["tar"] == pytest.approx(np.mean(gen > thr)), far
    assert res[1e-1]["far_actual"] == pytest.approx(0.1)


def test_tar_at_far_not_enough_negatives():
    res = tar_at_far([0.9, 0.8], np.linspace(-0.5, 0.5, 99), fars=(1e-2, 1e-1))
    assert res[1e-2]["tar"] is None and res[1e-2]["threshold"] is None
    assert res[1e-2]["note"].startswith("not enough negatives") and "have 99" in res[1e-2]["note"]
    assert res[1e-1]["tar"] == 1.0
    with pytest.raises(ValueError):
        tar_at_far([], [0.1])
    with pytest.raises(ValueError):
        tar_at_far([0.5], [0.1], fars=(0.0,))


def test_cmc_from_ranks():
    assert cmc_from_ranks(np.array([1, 2, 7, np.inf]), (1, 5, 10)) == {1: 0.25, 5: 0.5, 10: 0.75}


# ------------------------------------------------------------------------------------------------
# Index


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_index_kinds_find_neighbours(kind):
    rng = np.random.default_rng(1)
    gallery = l2_normalise(rng.standard_normal((2000, 32)))
    ids = np.arange(2000) * 10 + 7  # arbitrary int64 labels
    index = VectorIndex(32, kind, nlist=16, nprobe=16)
    index.add(gallery[:1000], ids[:1000])
    index.add(gallery[1000:], ids[1000:])  # a second add goes to the same (trained) index
    assert len(index) == 2000 and index.nbytes > 2000 * 32 * 4
    queries = l2_normalise(gallery[::50] + 0.05 * rng.standard_normal((40, 32)))
    scores, found = index.search(queries, 5)
    assert scores.shape == found.shape == (40, 5) and found.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert np.mean(found[:, 0] == ids[::50]) >= 0.95
    exact = queries @ gallery.T
    np.testing.assert_allclose(scores[:, 0], exact.max(axis=1), atol=1e-4)


def test_index_edge_cases():
    index = VectorIndex(8)
    scores, found = index.search(np.ones((2, 8), np.float32), 3)
    assert (found == -1).all() and np.isneginf(scores).all()
    index.add(l2_normalise(np.eye(8)[:2]))
    scores, found = index.search(np.eye(8, dtype=np.float32)[:1], 4)  # k > size: padded with -1
    assert found[0].tolist()[:2] == [0, 1] and found[0, 2:].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="kind"):
        VectorIndex(8, "lsh")
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        index.add(np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="ids"):
        index.add(np.zeros((2, 8), np.float32), ids=[1])


# ------------------------------------------------------------------------------------------------
# MegaFace-style evaluation against a brute-force reference


def _megaface_reference(emb, ids, distractors, kmax):
    """Every ordered mated pair (i, j), i != j: rank of j among {j} + distractors for probe i."""
    ranks, gen = [], []
    dscores = emb @ distractors.T
    for i in range(len(ids)):
        for j in range(len(ids)):
            if i != j and ids[i] == ids[j]:
                s = float(emb[i] @ emb[j])
                gen.append(s)
                r = 1 + int((dscores[i] > s).sum())
                ranks.append(r if r <= kmax else np.inf)
    return np.array(ranks), np.array(gen), dscores.ravel()


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_evaluate_identification_matches_reference(kind):
    rng = np.random.default_rng(2)
    emb, ids = _clusters(rng, 30, 3, 24, noise=0.12)
    distractors = l2_normalise(rng.standard_normal((800, 24)))
    res = evaluate_identification(emb, ids, None, None, distractors, ranks=(1, 2, 5), index=kind)
    ranks, gen, imp = _megaface_reference(emb, ids, distractors, 5)
    assert res["trials"] == res["genuine_pairs"] == 30 * 3 * 2
    assert res["cmc"] == pytest.approx(cmc_from_ranks(ranks, (1, 2, 5)))
    assert res["cmc"][1] < 1.0  # the distractors do bite at this noise level (the test means something)
    assert res["impostor_pairs"] == emb.shape[0] * 800
    assert res["tar_at_far"] == tar_at_far(gen, imp)
    assert (res["recall_vs_exact"] is None) == (kind == "exact")
    if kind == "hnsw":
        assert res["recall_vs_exact"] >= 0.95


def test_evaluate_identification_gallery_protocol():
    rng = np.random.default_rng(3)
    emb, ids = _clusters(rng, 20, 2, 32, noise=0.05)
    probes, gallery = emb[0::2], emb[1::2]
    res = evaluate_identification(probes, ids[0::2], gallery, ids[1::2], None, protocol="gallery", ranks=(1, 5))
    assert res["cmc"] == {1: 1.0, 5: 1.0} and res["trials"] == 20
    assert res["impostor_pairs"] == 20 * 19  # no distractors: probe x other-identity gallery rows
    # The gallery protocol with a self-gallery skips each probe's own row.
    res_self = evaluate_identification(emb, ids, None, None, protocol="gallery", ranks=(1,))
    assert res_self["cmc"] == {1: 1.0}
    with pytest.raises(ValueError, match="protocol"):
        evaluate_identification(emb, ids, None, None, protocol="lfw")
    with pytest.raises(ValueError, match="mated"):
        evaluate_identification(probes, np.arange(20), gallery, np.arange(20) + 100)


def test_open_set_identification():
    rng = np.random.default_rng(4)
    emb, ids = _clusters(rng, 40, 2, 64, noise=0.03)
    gal, gal_ids = emb[0:40:2], ids[0:40:2]  # subjects 0..19 enrolled
    probes, probe_ids = emb[1::2], ids[1::2]  # subjects 0..39: 20 mated, 20 non-mated
    res = open_set_identification(probes, probe_ids, gal, gal_ids, fpirs=(0.01, 0.1), ranks=(1, 5))
    assert res["mated"] == 20 and res["non_mated"] == 20
    assert res["cmc"] == {1: 1.0, 5: 1.0}
    assert res["tpir_at_fpir"][0.1] == 1.0  # well separated: strangers score far below the mates
    assert res["tpir_at_fpir"][0.01] is None  # 20 non-mated probes cannot measure 1 %


# ------------------------------------------------------------------------------------------------
# LFW, MegaFace style: 40 people x 2 images as probe/gallery, 300 one-image people as distractors

# Median MTCNN landmarks of LFW deep-funneled 250x250 images (measured on 60 images, one per 90th person); the
# deep-funneled faces sit still enough that a fixed alignment serves them, which keeps detection out of this test.
LFW_LANDMARKS = np.array([[104.0, 112.8], [146.9, 111.9], [124.9, 137.5], [107.6, 158.5], [145.9, 157.4]], np.float32)


@pytest.mark.shared
def test_megaface_style_on_lfw(shared):
    from arcface.eval.templates import embed_aligned
    from arcface.inference.loader import load_model

    lfw = shared("data/lfw/lfw-deepfunneled")
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    files = {p: sorted(p.glob("*.jpg")) for p in people}
    pairs = [p for p in people if len(files[p]) >= 2][::20][:40]
    singles = [p for p in people if len(files[p]) == 1][::10][:300]
    paths = [f for p in pairs for f in files[p][:2]] + [files[p][0] for p in singles]
    model = load_model("default", precision="fp32")
    emb = embed_aligned(paths, np.broadcast_to(LFW_LANDMARKS, (len(paths), 5, 2)), model)
    n = 2 * len(pairs)
    probe, probe_ids, distractors = emb[:n], np.repeat(np.arange(len(pairs)), 2), emb[n:]
    exact = evaluate_identification(probe, probe_ids, None, None, distractors, index="exact")
    hnsw = evaluate_identification(probe, probe_ids, None, None, distractors, index="hnsw")
    assert exact["trials"] == 80 and exact["distractors"] == 300
    assert exact["cmc"][1] >= 0.9, exact["cmc"]
    assert exact["cmc"][10] >= exact["cmc"][5] >= exact["cmc"][1]
    assert exact["tar_at_far"][1e-1]["tar"] >= 0.9 and exact["tar_at_far"][1e-4]["tar"] is not None
    assert hnsw["recall_vs_exact"] >= 0.99
    assert hnsw["cmc"] == pytest.approx(exact["cmc"], abs=0.02)
