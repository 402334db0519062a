"""Step 3: LFW View 1 (threshold on pairsDevTrain, accuracy and AUC on pairsDevTest) and View 2 of a model, on the
aligned crops of step 1, with flip-test fusion."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arcface.eval.datasets import read_lfw_pairs
from arcface.eval.metrics import best_threshold, roc_metrics
from arcface.eval.pipeline import centre_crop, decode_aligned
from arcface.eval.verification import pair_scores, verification_report
from arcface.inference.embedder import Embedder
from arcface.inference.loader import load_model
from arcface.io.images import load_image
from tools.loss_table.setup import images_dir


def _crops(paths: Sequence[Path], aligned: Path, images: Path, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Aligned crops of ``paths`` (files under ``aligned``); a photo ``arcface align`` found no face in is
    centre-cropped from the original instead (counted)."""
    out = np.zeros((len(paths), size[0], size[1], 3), np.uint8)
    have = [i for i, p in enumerate(paths) if Path(p).is_file()]
    if have:
        out[have] = decode_aligned([paths[i] for i in have], size)
    missing = [i for i in range(len(paths)) if i not in set(have)]
    for i in missing:
        rel = Path(paths[i]).relative_to(aligned).with_suffix(".jpg")
        out[i] = centre_crop(load_image(images / rel), size[0])
    return out, len(missing)


def _pair_scores(pairs_file: Path, model: Embedder, aligned: Path, images: Path) -> tuple[np.ndarray, Any, int]:
    ps = read_lfw_pairs(pairs_file, aligned, suffixes=(".png",), n_folds=2)  # folds unused here
    crops, fallbacks = _crops(ps.images, aligned, images, tuple(model.contract.input_size))
    emb = model.embed(crops)
    return pair_scores(emb, ps.pairs), ps, fallbacks


def view1_eval(model: str | os.PathLike, lfw: Path, aligned: Path) -> dict[str, Any]:
    """LFW View 1 with flip-test fusion: threshold on pairsDevTrain, accuracy and AUC on pairsDevTest."""
    images = images_dir(lfw)
    embedder = load_model(model, flip=True)
    s_train, train, f1 = _pair_scores(lfw / "pairsDevTrain.txt", embedder, aligned, images)
    s_test, test, f2 = _pair_scores(lfw / "pairsDevTest.txt", embedder, aligned, images)
    thr = best_threshold(s_train, train.labels)
    roc = roc_metrics(s_test, test.labels)
    return {
        "accuracy": float(np.mean((s_test > thr) == test.labels)),
        "train_accuracy": float(np.mean((s_train > thr) == train.labels)),
        "threshold": float(thr),
        "auc": float(roc["auc"]),
        "eer": float(roc["eer"]),
        "test_pairs": len(test),
        "fallbacks": f1 + f2,
    }


def view2_eval(model: str | os.PathLike, lfw: Path, aligned: Path) -> dict[str, Any]:
    """LFW View 2 (10 official folds) with flip-test fusion on the aligned crops."""
    scores, ps, fallbacks = _pair_scores(lfw / "pairs.txt", load_model(model, flip=True), aligned, images_dir(lfw))
    r = verification_report(scores, ps.labels, ps.folds)
    return {"accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"], "auc": r["auc"], "fallbacks": fallbacks}
