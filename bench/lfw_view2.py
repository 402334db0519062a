"""LFW View 2 (pairs.txt, 6,000 pairs, the 10 official folds): the default model and SFace, one run.

Both models go through the same code as ``arcface eval lfw`` (:func:`arcface.eval.evaluate_pair_set`):
detection (mtcnn by default) + 112x112 alignment, flip-test fusion, the 10-fold protocol. The crops are
cached, so detection runs once and both models share it (SFace is the baseline of the same run; its shared
reference figure is 99.38% +- 0.37 with YuNet detection).

    python bench/lfw_view2.py [--detector mtcnn] [--workers 2] [--cache .cache/arcface] [--no-flip]
"""

from __future__ import annotations

import argparse
import time

from _common import print_table, save
from arcface._shared import LFW_HINT, find_lfw
from arcface.eval import EvalCache, evaluate_pair_set, read_lfw_pairs
from arcface.inference.zoo import load_backend

MODELS = ("default", "sface")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="mtcnn")
    ap.add_argument("--workers", type=int, default=2, help="detection processes")
    ap.add_argument("--cache", default=".cache/arcface")
    ap.add_argument("--no-flip", dest="flip", action="store_false")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    lfw = find_lfw()
    if lfw is None:
        raise SystemExit(LFW_HINT)
    pairs = read_lfw_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled", name="lfw_view2")
    cache = EvalCache(args.cache)
    rows, results = [], {}
    for model in MODELS:
        t0 = time.perf_counter()
        backend = load_backend(model, flip=args.flip)
        r = evaluate_pair_set(pairs, backend, cache=cache, detector=args.detector, workers=args.workers)
        r["seconds"]["total"] = time.perf_counter() - t0
        results[model] = {k: v for k, v in r.items() if k not in ("scores", "labels", "folds")}
        results[model]["per_pair"] = {"scores": r["scores"], "labels": r["labels"], "folds": r["folds"]}
        tar = {f"{t['far']:g}": t["tar"] for t in r["tar_at_far"]}
        s = r["seconds"]
        rows.append([
            model, f"{100 * r['accuracy']:.2f} +- {100 * r['accuracy_std']:.2f}", f"{r['auc']:.4f}",
            f"{100 * r['eer']:.2f}%", *(f"{100 * v:.2f}" if v is not None else "n/a" for v in tar.values()),
            r["fallbacks"], r["cache"]["detected"], f"{s['align']:.1f}", f"{s['embed']:.1f}", f"{s['protocol']:.2f}",
        ])  # fmt: skip
    header = ["model", "accuracy % (10-fold)", "AUC", "EER", "TAR@1e-1", "TAR@1e-2", "TAR@1e-3",
              "no face", "detected", "detect+align s", "embed s", "protocol s"]  # fmt: skip
    table = print_table(
        f"LFW View 2, {len(pairs)} pairs, {args.detector} + 112x112 alignment, flip={args.flip}", header, rows
    )
    path = save("lfw_view2", {"detector": args.detector, "flip": args.flip, "workers": args.workers,
                              "threads": args.threads,
                              "table": table, "results": results})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
