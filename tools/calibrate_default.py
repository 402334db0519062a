"""Calibrate the bundled model's verification threshold on LFW View 1 and check it on the held-out pairs.

Pipeline: ``FaceRecognizer`` (MTCNN + norm_crop + the bundled MobileFaceNet), embeddings with flip-test
fusion off and on. The threshold is chosen on ``pairsDevTrain.txt`` (1,100 same + 1,100 different pairs)
with :func:`arcface.eval.metrics.calibrate_threshold` and applied unchanged to ``pairsDevTest.txt`` (500 + 500).

A pair whose image has no detected face is counted as wrong (listed in the output; it is left out of the
threshold search). Each image is detected and aligned once, then embedded in batches. With ``--sface`` the
SFace ONNX model (if found) is evaluated on the same crops, for reference (its threshold is OpenCV's).

    python tools/calibrate_default.py            # report only (bench/results/calibrate_default.json)
    python tools/calibrate_default.py --write    # also store the threshold in the bundled model's contract

A tool, not a benchmark: ``--write`` rewrites the shipped model file, so it is not part of ``make bench``.

The threshold written is the one for the recognizer's default flip setting (``recognizer.DEFAULT_FLIP``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the benchmarks' table and JSON helpers

from _common import print_table, save  # noqa: E402
from arcface.data.locations import LFW_HINT, find_lfw  # noqa: E402
from arcface.eval.datasets import read_lfw_pairs  # noqa: E402
from arcface.eval.metrics import calibrate_threshold  # noqa: E402
from arcface.inference.contract import read_model, save_model  # noqa: E402
from arcface.inference.loader import load_model  # noqa: E402
from arcface.inference.recognizer import DEFAULT_FLIP, FaceRecognizer, NoFaceError  # noqa: E402
from arcface.inference.zoo import BUNDLED_DEFAULT  # noqa: E402

Pair = tuple[Path, Path, bool]  # (image a, image b, same)


def align_all(rec: FaceRecognizer, names: list[Path]) -> tuple[dict[Path, int], np.ndarray, list[Path]]:
    """Main-face crop of each image: ({name: row}, (M, H, W, 3) crops, names without a face)."""
    index: dict[Path, int] = {}
    crops, missing = [], []
    t0 = time.perf_counter()
    for i, name in enumerate(names, 1):
        try:
            crop = rec.main_crop(name)
        except NoFaceError:
            missing.append(name)
        else:
            index[name] = len(crops)
            crops.append(crop)
        if i % 250 == 0 or i == len(names):
            rate = i / (time.perf_counter() - t0)
            print(f"  aligned {i}/{len(names)} images ({rate:.1f} img/s), {len(missing)} without a face", flush=True)
    return index, np.stack(crops), missing


def pair_scores(
    pairs: list[Pair], index: dict[Path, int], emb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (P,) with NaN where a face is missing, labels (P,), valid (P,))."""
    labels = np.array([s for _, _, s in pairs])
    valid = np.array([a in index and b in index for a, b, _ in pairs])
    scores = np.full(len(pairs), np.nan)
    for k, (a, b, _) in enumerate(pairs):
        if valid[k]:
            scores[k] = float(emb[index[a]] @ emb[index[b]])
    return scores, labels, valid


def accuracy(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray, threshold: float) -> float:
    """Fraction right over ALL pairs; a pair with a missing face counts as wrong."""
    right = valid & ((scores > threshold) == labels)
    return float(right.sum() / len(labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=None, help="folder with lfw-deepfunneled/ and the pair files")
    parser.add_argument("--write", action="store_true", help="store the threshold in the bundled model's contract")
    parser.add_argument("--sface", action="store_true", help="also evaluate SFace on the same crops")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs per file (smoke run)")
    args = parser.parse_args(argv)

    lfw = args.lfw or find_lfw()
    if lfw is None:
        print(LFW_HINT, file=sys.stderr)
        return 2
    root = lfw / "lfw-deepfunneled"
    train = read_lfw_pairs(lfw / "pairsDevTrain.txt", root).image_pairs()
    test = read_lfw_pairs(lfw / "pairsDevTest.txt", root).image_pairs()
    if args.limit:
        train = train[: args.limit // 2] + train[len(train) // 2 :][: args.limit // 2]
        test = test[: args.limit // 2] + test[len(test) // 2 :][: args.limit // 2]
    names = sorted({n for a, b, _ in train + test for n in (a, b)})
    print(f"LFW View 1: {len(train)} train pairs, {len(test)} test pairs, {len(names)} distinct images", flush=True)

    rec = FaceRecognizer("default", "mtcnn", threshold=0.0)
    t0 = time.perf_counter()
    index, crops, missing = align_all(rec, names)
    t_align = time.perf_counter() - t0

    models = ["default"] + (["sface"] if args.sface else [])
    rows, results = [], {}
    for model in models:
        for flip in (False, True):
            embedder = load_model(model, flip=flip, precision="fp32")
            t0 = time.perf_counter()
            emb = embedder.embed(crops)  # (M, D)
            t_embed = time.perf_counter() - t0
            label = f"{model}{' + flip' if flip else ''}"
            print(f"  embedded {len(crops)} crops with {label} in {t_embed:.0f} s", flush=True)
            s_tr, y_tr, v_tr = pair_scores(train, index, emb)
            s_te, y_te, v_te = pair_scores(test, index, emb)
            thr, _ = calibrate_threshold(s_tr[v_tr], y_tr[v_tr])
            key = f"{model}{'+flip' if flip else ''}"
            res = {
                "threshold": thr,
                "threshold_l2": 2 - 2 * thr,
                "train_accuracy": accuracy(s_tr, y_tr, v_tr, thr),
                "test_accuracy": accuracy(s_te, y_te, v_te, thr),
                "embed_ms_per_crop": 1000 * t_embed / len(crops),
            }
            published = embedder.contract.threshold if model != "default" else None
            if published is not None:
                res["test_accuracy_published_threshold"] = accuracy(s_te, y_te, v_te, published)
            results[key] = res
            rows.append(
                [
                    key,
                    f"{thr:.4f}",
                    f"{2 - 2 * thr:.4f}",
                    f"{res['train_accuracy']:.4f}",
                    f"{res['test_accuracy']:.4f}",
                    f"{res.get('test_accuracy_published_threshold', float('nan')):.4f}",
                    f"{res['embed_ms_per_crop']:.1f}",
                ]
            )
    n_bad_train = sum(not (a in index and b in index) for a, b, _ in train)
    n_bad_test = sum(not (a in index and b in index) for a, b, _ in test)
    table = print_table(
        "LFW View 1: threshold from pairsDevTrain, accuracy on pairsDevTrain / pairsDevTest (MTCNN + norm_crop)",
        ["model", "cos thr", "sq. L2 thr", "train acc", "test acc", "test acc, published thr", "embed ms/crop"],
        rows,
    )
    print(f"\nalignment: {len(names)} images in {t_align:.0f} s ({len(names) / t_align:.1f} img/s)")
    print(f"no face found in {len(missing)} image(s): {', '.join(str(m) for m in missing) or '-'}")
    print(f"pairs counted wrong for a missing face: {n_bad_train} train, {n_bad_test} test")

    chosen = f"default{'+flip' if DEFAULT_FLIP else ''}"
    res = results[chosen]
    calibrated_on = (
        f"LFW View 1 pairsDevTrain.txt ({len(train)} pairs, mtcnn + norm_crop{', flip' if DEFAULT_FLIP else ''}), "
        f"train accuracy {res['train_accuracy']:.4f}; pairsDevTest accuracy {res['test_accuracy']:.4f}"
    )
    print(f"\nthreshold for the default recognizer ({chosen}): cos > {res['threshold']:.4f}; {calibrated_on}")
    save(
        "calibrate_default",
        {
            "results": results,
            "missing_faces": [str(m) for m in missing],
            "table": table,
            "align_seconds": t_align,
            "written": bool(args.write and not args.limit),
        },
    )
    if args.write:
        if args.limit:
            print("--write ignored with --limit (a partial calibration is not stored)", file=sys.stderr)
            return 1
        path = Path(str(files("arcface").joinpath("weights", BUNDLED_DEFAULT)))
        module, contract = read_model(path)
        new = dataclasses.replace(contract, threshold=res["threshold"], calibrated_on=calibrated_on)
        written = save_model(module, new, path)
        print(f"wrote threshold {written.threshold:.4f} into {path} (contract {written.id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
