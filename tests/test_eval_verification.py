"""The verification protocol (10-fold, ROC, EER, TAR@FAR), the pair-file readers and the restricted .bin reader."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from arcface.eval.datasets import BinFormatError, read_bin, read_csv_pairs, read_lfw_pairs, restricted_loads
from arcface.eval.metrics import DEFAULT_FARS, contiguous_folds, fold_accuracies, roc_metrics, tar_at_far
from arcface.eval.verification import recompute_accuracy, verification_report


def brute_force_threshold(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Best accuracy over every candidate threshold (each score, and below all), slow and obvious."""
    best_acc, best_thr = -1.0, None
    for t in sorted({*s.tolist(), s.min() - 1.0}):
        acc = float(np.mean((s > t) == y))
        if acc > best_acc:
            best_acc, best_thr = acc, t
    return best_thr, best_acc


def test_perfectly_separable_gives_100_percent_and_threshold_between():
    rng = np.random.default_rng(0)
    y = np.tile([True] * 30 + [False] * 30, 10)
    s = np.where(y, rng.uniform(0.5, 0.9, y.size), rng.uniform(-0.2, 0.3, y.size))
    r = verification_report(s, y)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0
    lo, hi = s[~y].max(), s[y].min()
    assert all(lo <= t < hi for t in r["thresholds"])
    assert np.allclose(r["thresholds_l2"], 2 - 2 * np.asarray(r["thresholds"]))
    assert r["auc"] == pytest.approx(1.0) and r["eer"] == pytest.approx(0.0)
    assert len(r["scores"]) == len(r["labels"]) == len(r["folds"]) == 600


def test_fold_accuracy_matches_brute_force_search():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.5
    s = np.round(np.where(y, 0.45, 0.2) + rng.normal(0, 0.15, 200), 2)  # rounded: many ties
    folds = contiguous_folds(200, 10)
    accs, thrs = fold_accuracies(s, y, folds)
    for k in range(10):
        train, test = folds != k, folds == k
        _, best = brute_force_threshold(s[train], y[train])
        assert np.mean((s[train] > thrs[k]) == y[train]) == pytest.approx(best)  # optimal on the 9 folds
        assert accs[k] == pytest.approx(np.mean((s[test] > thrs[k]) == y[test]))


def test_hand_built_case():
    # Two folds; fold 0 trains the threshold for fold 1 and vice versa.
    s = np.array([0.9, 0.8, 0.3, 0.1, 0.7, 0.6, 0.5, 0.2])
    y = np.array([True, True, False, False, True, False, True, False])
    f = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    accs, thrs = fold_accuracies(s, y, f)
    # fold 0 tested with the threshold of fold 1's pairs: best cut is between 0.3 and 0.8 -> lowest = 0.55
    assert thrs[0] == pytest.approx(0.55)
    assert accs[0] == pytest.approx(np.mean((s[4:] > 0.55) == y[4:]))  # 0.7 T, 0.6 F(wrong), 0.5 F, 0.2 F -> 0.5
    assert accs[0] == pytest.approx(0.5)
    # fold 1 tested with fold 0's threshold: scores .7 T .6 F .5 T .2 F -> best 3/4 at cut (.2,.5) or (.6,.7)
    assert thrs[1] == pytest.approx(0.35)  # the lowest of the equally good cuts
    assert accs[1] == 1.0


def test_recompute_accuracy_reproduces_the_report():
    rng = np.random.default_rng(2)
    y = rng.random(600) < 0.5
    s = np.where(y, 0.5, 0.2) + rng.normal(0, 0.15, 600)
    r = verification_report(s, y)
    import json

    again = json.loads(json.dumps(r))
    assert recompute_accuracy(again) == pytest.approx((r["accuracy"], r["accuracy_std"]))


def test_auc_and_eer_on_a_known_roc():
    # negatives 0..9 (score i/10), positives shifted by 0.45: a staircase with known AUC and EER.
    neg = np.arange(10) / 10
    pos = np.arange(10) / 10 + 0.45
    s = np.r_[pos, neg]
    y = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    m = roc_metrics(s, y)
    # P(pos > neg): pos i beats neg j when i/10 + .45 > j/10 <=> j <= i + 4
    expect_auc = np.mean([[p > n for n in neg] for p in pos])
    assert m["auc"] == pytest.approx(expect_auc)
    # accepting scores >= 0.7: negatives .7 .8 .9 (FAR 0.3), positives .75 .. 1.35 (FRR 0.3)
    assert m["eer"] == pytest.approx(0.3) and m["eer_threshold"] == pytest.approx(0.7)
    # equal scores: AUC 0.5
    assert roc_metrics(np.zeros(20), y)["auc"] == pytest.approx(0.5)


def test_tar_at_far_and_not_enough_negatives():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    s = np.r_[rng.normal(1, 0.3, 500), rng.normal(0, 0.3, 500)]
    t = tar_at_far(s[y], s[~y], (1e-2,))[1e-2]
    assert t["far_actual"] <= 0.01 and 0 < t["tar"] <= 1
    assert np.sum(s[~y] > t["threshold"]) == 5
    t = tar_at_far(s[y], s[~y], (1e-3,))[1e-3]
    assert t["tar"] is None and "not enough negatives" in t["note"] and "1000" in t["note"]
    r = verification_report(s, y)
    assert [e["far"] for e in r["tar_at_far"]] == list(DEFAULT_FARS)
    by_far = {e["far"]: e for e in r["tar_at_far"]}
    assert by_far[1e-3]["tar"] is None
    assert by_far[1e-2]["tar"] is not None


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        verification_report([0.1, 0.2], [True])
    with pytest.raises(ValueError):
        verification_report([np.nan] * 20, [True, False] * 10)
    with pytest.raises(ValueError):
        contiguous_folds(5, 10)


# ------------------------------------------------------------------------------------------------
# Pair files


def test_lfw_view2_pairs(shared):
    pairs = shared("data/lfw/pairs.txt")
    ps = read_lfw_pairs(pairs, pairs.parent / "lfw-deepfunneled")
    assert len(ps) == 6000 and ps.labels.sum() == 3000
    assert np.bincount(ps.folds).tolist() == [600] * 10
    for k in range(10):  # each official fold: 300 same then 300 different
        assert ps.labels[ps.folds == k].tolist() == [True] * 300 + [False] * 300
    first = ps.images[ps.pairs[0, 0]]
    assert first.name == "Abel_Pacheco_0001.jpg" and first.is_file()


def test_lfw_view1_pairs_are_stratified(shared):
    pairs = shared("data/lfw/pairsDevTest.txt")
    ps = read_lfw_pairs(pairs, pairs.parent / "lfw-deepfunneled")
    assert len(ps) == 1000
    for k in range(10):
        assert ps.labels[ps.folds == k].sum() == 50 and (ps.folds == k).sum() == 100


def test_lfw_pairs_malformed_line(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("1 1\nA\t1\t2\tB\t3\tC\n")
    with pytest.raises(ValueError, match=r"p.txt:2"):
        read_lfw_pairs(p, tmp_path)


def test_csv_pairs(tmp_path):
    p = tmp_path / "pairs.csv"
    rows = ["a,b,same"] + [f"x{i}.jpg,y{i}.jpg,{i % 2}" for i in range(20)]
    p.write_text("\n".join(rows))
    ps = read_csv_pairs(p)
    assert len(ps) == 20 and ps.labels.sum() == 10 and len(ps.images) == 40
    assert ps.images[0] == tmp_path / "x0.jpg"
    assert np.bincount(ps.folds).tolist() == [2] * 10


# ------------------------------------------------------------------------------------------------
# .bin


@pytest.mark.parametrize("protocol", [2, 4])
def test_bin_round_trip(tmp_path, protocol):
    imgs = [bytes([i]) * 10 for i in range(20)]
    flags = [i % 2 == 0 for i in range(10)]
    p = tmp_path / "x.bin"
    p.write_bytes(pickle.dumps((imgs, flags), protocol=protocol))
    ps = read_bin(p)
    assert ps.aligned and len(ps) == 10 and ps.images == imgs and ps.pairs[3].tolist() == [6, 7]
    assert ps.labels.tolist() == flags


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    "payload",
    [
        _Evil(),
        collections.OrderedDict(a=1),
        np.zeros(3),
        ([b"x", b"y"], np.array([True])),  # numpy bool flags: refused (documented)
        ([b"x"], [True]),  # one image for one flag
        ["not", "a", "pair"],
        ([b"x", b"y"], ["yes"]),
    ],
    ids=["os.system", "class-instance", "numpy-array", "numpy-flags", "count", "shape", "flag-type"],
)
def test_bin_refuses_anything_else(tmp_path, payload):
    p = tmp_path / "evil.bin"
    p.write_bytes(pickle.dumps(payload))
    with pytest.raises(BinFormatError, match="evil.bin"):
        read_bin(p)


def test_restricted_loads_never_calls_globals():
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        restricted_loads(pickle.dumps(_Evil()))
    assert restricted_loads(pickle.dumps(([b"a"], [True]), protocol=4)) == ([b"a"], [True])
