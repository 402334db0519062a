"""LFW View 2 end to end: wall time and accuracy of our pipeline against OpenCV's YuNet + SFace, one run.

Every pipeline goes over the 7,701 distinct images of ``pairs.txt`` with no cache: the clock runs from model
loading and image decoding through detection, alignment, embedding (flip-test fusion on, as the papers) to the
10-fold protocol (the same :mod:`arcface.eval.verification` code for every pipeline).

* ours: :func:`arcface.eval.evaluate_pair_set` (what ``arcface eval lfw --no-cache`` runs) with the default
  model through :class:`arcface.Embedder` (``precision="auto"``), MTCNN (our default detector) or our YuNet.
* baseline: OpenCV's own pipeline as its face_recognition_sface sample runs it: ``cv2.FaceDetectorYN`` (the
  shipped YuNet int8bq onnx, the sample's score 0.9 / NMS 0.3 / top-k 5000, first face), then
  ``cv2.FaceRecognizerSF.alignCrop`` + ``feature`` (SFace from the shared weights folder); flip test by summing the
  features of the crop and its mirror image before normalising, as ours does.
* baseline_tuned: the same OpenCV code with our YuNet settings, score 0.7 (at 0.9 some of LFW's faces are
  missed) and the main face chosen as ours does (:func:`arcface.align.detection.rank_faces`: large and central,
  not the highest score): how much of the sample's accuracy gap is its settings.

Images where a pipeline finds no face use the same fallback (the centre crop of
:func:`arcface.eval.pipeline.centre_crop`) and are counted. Fairness: every pipeline runs in a fresh process of its
own (one process at a time, so none inherits another's thread pools), with the same thread budget
(``--threads``: torch and OpenCV both), and all files are read once beforehand so the page cache is equally
warm. Besides wall time the table gives each pipeline's process CPU time: with one thread, CPU time close to the
wall time says the neighbours slowed every pipeline by sharing the cores' caches and execution units rather than by
taking turns. The default is one thread: on a small machine shared with other jobs, an OpenMP team of several threads
waits for whichever of its threads is descheduled, which would measure the neighbours more than either pipeline;
``--threads 2`` on a quiet machine is the other setting.

    python bench/lfw_end_to_end.py [--threads 1] [--no-flip] [--limit N] [--pipelines baseline mtcnn yunet]

``--cli`` is the comparison a newcomer makes: both sides as a user runs them, each from a fresh process and
its own start-up, with their default threads and no flip test: OpenCV's sample pipeline (``--threads 0``: OpenCV's
default) against ``arcface eval lfw --no-flip --no-cache`` timed from outside, its CLI start-up, model load and
worker start-up included (``--workers``: its detection processes).

    python bench/lfw_end_to_end.py --cli --limit 60 --no-flip --threads 0 --workers 2 --name lfw_cli_1200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save  # noqa: E402
from arcface.data.locations import LFW_HINT, data_roots, find_lfw  # noqa: E402
from arcface.eval import EvalCache, PairSet, evaluate_pair_set, read_lfw_pairs  # noqa: E402
from arcface.eval.verification import pair_scores, verification_report  # noqa: E402

PIPELINES = ("baseline", "baseline_tuned", "mtcnn", "yunet")
LABELS = {
    "cli": "ours: `arcface eval lfw` (MTCNN + default model, Embedder auto), start-up included",
    "baseline": "OpenCV YuNet + SFace (baseline, as OpenCV's sample)",
    "baseline_tuned": "OpenCV YuNet + SFace, score 0.7 + our main-face rule",
    "mtcnn": "ours: MTCNN + default model (Embedder auto)",
    "yunet": "ours: YuNet + default model (Embedder auto)",
}


def _yunet_path() -> Path:
    for root in data_roots():
        p = root.parent / "weights" / "detectors" / "face_detection_yunet_2023mar_int8bq.onnx"
        if p.is_file():
            return p
    raise SystemExit("YuNet onnx not found under ../shared/weights/detectors")


def subset(pairs: PairSet, limit: int) -> PairSet:
    """The first ``limit`` same and ``limit`` different pairs of every fold (smoke runs), keeping 10 folds."""
    keep = np.sort(np.concatenate([np.flatnonzero((pairs.folds == f) & (pairs.labels == same))[:limit]
                                   for f in np.unique(pairs.folds) for same in (True, False)]))  # fmt: skip
    idx = pairs.pairs[keep]
    used = np.unique(idx)
    remap = np.full(len(pairs.images), -1, np.int64)
    remap[used] = np.arange(len(used))
    return PairSet(
        name=pairs.name, images=[pairs.images[i] for i in used], pairs=remap[idx], labels=pairs.labels[keep],
        folds=pairs.folds[keep], source=pairs.source, aligned=pairs.aligned,
    )  # fmt: skip


def write_pairs(pairs: PairSet, path: Path) -> Path:
    """``pairs`` as an LFW View 2 pair file (10 folds of n same + n different pairs) for the CLI."""
    folds = np.unique(pairs.folds)
    per = int(np.sum((pairs.folds == folds[0]) & pairs.labels))
    lines = [f"{len(folds)} {per}"]
    for f in folds:
        for same in (True, False):
            for a, b in pairs.pairs[(pairs.folds == f) & (pairs.labels == same)]:
                pa, pb = Path(pairs.images[a]), Path(pairs.images[b])
                na, ia = pa.parent.name, int(pa.stem.rsplit("_", 1)[1])
                nb, ib = pb.parent.name, int(pb.stem.rsplit("_", 1)[1])
                lines.append(f"{na}\t{ia}\t{ib}" if same else f"{na}\t{ia}\t{nb}\t{ib}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(pairs: PairSet, lfw_images: Path, flip: bool, workers: int, out_dir: Path) -> dict:
    """``arcface eval lfw`` in a fresh process, timed from outside (start-up included)."""
    pair_file = write_pairs(pairs, out_dir / "pairs_subset.txt")
    report = out_dir / "cli_report.json"
    cmd = [sys.executable, "-m", "arcface", "eval", "lfw", "--data", str(lfw_images), "--pairs", str(pair_file),
           "--no-cache", "--no-progress", "--workers", str(workers), "--json", str(report)]  # fmt: skip
    if not flip:
        cmd.append("--no-flip")
    c0 = os.times()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    c1 = os.times()
    r = json.loads(report.read_text())
    s = r["seconds"]
    return {
        "accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"], "auc": r["auc"], "fallbacks": r["fallbacks"],
        "wall_s": wall, "cpu_s": (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system),
        "setup_s": wall - s["align"] - s["embed"] - s["protocol"], "detect_align_s": s["align"],
        "embed_s": s["embed"], "protocol_s": s["protocol"], "path": f"{r['precision']}/{r['backend']}",
        "min_cosine_checked": None, "detector": f"mtcnn (CLI, {workers} detection workers)",
    }  # fmt: skip


def run_ours(pairs: PairSet, detector: str, flip: bool) -> dict:
    from arcface.inference.loader import load_model

    c0, t0 = time.process_time(), time.perf_counter()
    embedder = load_model("default", flip=flip)
    t_setup = time.perf_counter() - t0
    r = evaluate_pair_set(pairs, embedder, cache=EvalCache(None), detector=detector, workers=1, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = r["seconds"]
    return {
        "accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"], "auc": r["auc"], "fallbacks": r["fallbacks"],
        "wall_s": wall, "cpu_s": cpu, "setup_s": t_setup, "detect_align_s": s["align"], "embed_s": s["embed"],
        "protocol_s": s["protocol"], "path": f"{embedder.precision}/{embedder.backend}",
        "min_cosine_checked": embedder.min_cosine_checked, "detector": detector,
    }  # fmt: skip


def run_baseline(pairs: PairSet, flip: bool, tuned: bool = False) -> dict:
    import cv2

    from arcface.align.face import rank_faces
    from arcface.eval.pipeline import centre_crop
    from arcface.inference.zoo import find_sface

    c0, t0 = time.process_time(), time.perf_counter()
    score = 0.7 if tuned else 0.9
    det = cv2.FaceDetectorYN.create(str(_yunet_path()), "", (320, 320), score, 0.3, 5000)
    rec = cv2.FaceRecognizerSF.create(str(find_sface()), "")
    t_setup = time.perf_counter() - t0
    feats = np.zeros((len(pairs.images), 128), np.float32)
    fallbacks, t_det, t_emb = 0, 0.0, 0.0
    for i, path in enumerate(pairs.images):
        t1 = time.perf_counter()
        img = cv2.imread(str(path))
        if img is None:
            raise SystemExit(f"{path}: unreadable")
        h, w = img.shape[:2]
        det.setInputSize((w, h))
        _, faces = det.detect(img)
        if faces is not None and len(faces):
            main = 0
            if tuned:  # boxes (x, y, w, h) -> (x1, y1, x2, y2)
                main = int(rank_faces(np.c_[faces[:, :2], faces[:, :2] + faces[:, 2:4]], img.shape)[0])
            crop = rec.alignCrop(img, faces[main])
        else:
            crop, fallbacks = centre_crop(img, 112), fallbacks + 1
        t2 = time.perf_counter()
        f = rec.feature(crop).reshape(-1).copy()  # (128,) raw
        if flip:
            f = f + rec.feature(cv2.flip(crop, 1)).reshape(-1)
        feats[i] = f
        t_det += t2 - t1
        t_emb += time.perf_counter() - t2
    t3 = time.perf_counter()
    emb = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    r = verification_report(pair_scores(emb, pairs.pairs), pairs.labels, pairs.folds)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t_protocol = time.perf_counter() - t3
    return {
        "accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"], "auc": r["auc"], "fallbacks": fallbacks,
        "wall_s": wall, "cpu_s": cpu, "setup_s": t_setup, "detect_align_s": t_det, "embed_s": t_emb,
        "protocol_s": t_protocol, "path": "fp32/opencv-dnn (int8bq weights)",
        "min_cosine_checked": None, "detector": f"yunet (cv2.FaceDetectorYN, score {score})",
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads of each pipeline's process")
    ap.add_argument("--no-flip", dest="flip", action="store_false", help="flip-test fusion off (default on)")
    ap.add_argument("--limit", type=int, default=0, help="smoke run: N same + N different pairs per fold (0: all)")
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    ap.add_argument("--name", default="lfw_end_to_end", help="result file bench/results/NAME.json")
    ap.add_argument("--child", default=None, choices=PIPELINES, help=argparse.SUPPRESS)
    ap.add_argument("--cli", action="store_true",
                    help="OpenCV's sample pipeline against `arcface eval lfw` as a user runs it (start-up included)")
    ap.add_argument("--workers", type=int, default=2, help="with --cli: the CLI's detection processes")
    args = ap.parse_args()
    lfw = find_lfw()
    if lfw is None:
        raise SystemExit(LFW_HINT)
    pairs = read_lfw_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled", name="lfw_view2")
    if args.limit:
        pairs = subset(pairs, args.limit)
    if args.child:  # one pipeline in this fresh process; the result as the last stdout line
        import cv2
        import torch

        if args.threads > 0:  # 0: the libraries' own defaults (OpenCV: all cores)
            torch.set_num_threads(args.threads)
            cv2.setNumThreads(args.threads)
        name = args.child
        if name.startswith("baseline"):
            r = run_baseline(pairs, args.flip, tuned=name == "baseline_tuned")
        else:
            r = run_ours(pairs, name, args.flip)
        print(json.dumps(r))
        return
    for p in pairs.images:  # warm the page cache equally for every pipeline
        Path(p).read_bytes()
    results = {}
    if args.cli:
        import tempfile

        args.pipelines = ["baseline"]  # OpenCV's side in a child process as below; ours through the CLI after it
    for name in args.pipelines:
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads), "--limit", str(args.limit)]
        out = subprocess.run(cmd + ([] if args.flip else ["--no-flip"]), check=True, stdout=subprocess.PIPE, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["loadavg_1min_before"], r["loadavg_1min_after"] = load, os.getloadavg()[0]
        results[name] = r
        print(f"{name}: {r['wall_s']:.1f} s, accuracy {100 * r['accuracy']:.2f}", flush=True)
    if args.cli:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            r = run_cli(pairs, lfw / "lfw-deepfunneled", args.flip, args.workers, Path(tmp))
        r["loadavg_1min_before"], r["loadavg_1min_after"] = load, os.getloadavg()[0]
        results["cli"] = r
        print(f"cli: {r['wall_s']:.1f} s, accuracy {100 * r['accuracy']:.2f}", flush=True)
    base = results.get("baseline")
    rows = []
    for name, r in results.items():
        ratio = base["wall_s"] / r["wall_s"] if base else None
        cpu_ratio = base["cpu_s"] / r["cpu_s"] if base else None
        r["speedup_vs_baseline"], r["cpu_speedup_vs_baseline"] = ratio, cpu_ratio
        rows.append([
            LABELS[name], f"{100 * r['accuracy']:.2f} +- {100 * r['accuracy_std']:.2f}", r["path"], r["fallbacks"],
            f"{r['detect_align_s']:.1f}", f"{r['embed_s']:.1f}", f"{r['wall_s']:.1f}",
            f"{len(pairs.images) / r['wall_s']:.1f}", f"{ratio:.2f}x" if ratio else "-", f"{r['cpu_s']:.1f}",
            f"{cpu_ratio:.2f}x" if cpu_ratio else "-",
        ])  # fmt: skip
    header = ["pipeline", "accuracy % (10-fold)", "embedding path", "no face", "detect+align s", "embed s",
              "wall s", "images/s", "wall vs baseline", "CPU s", "CPU vs baseline"]  # fmt: skip
    threads = "default threads" if args.threads == 0 else f"{args.threads} threads"
    title = (f"LFW View 2 end to end, {len(pairs.images)} images / {len(pairs)} pairs, no cache, "
             f"flip={'on' if args.flip else 'off'}, {threads}"
             + (f"; ours through the CLI with {args.workers} detection workers, start-up included" if args.cli else
                ", one process") )  # fmt: skip
    table = print_table(title, header, rows)
    path = save(args.name, {
        "images": len(pairs.images), "pairs": len(pairs), "flip": args.flip, "threads": args.threads,
        "processes": "1 at a time (a fresh process per pipeline)", "limit": args.limit,
        "note": "2-core machine shared with other jobs; loadavg_1min_before/after per pipeline show the contention. "
                "Ratios move between runs with the load (see the module docstring); compare cpu_s with wall_s.",
        "table": table, "results": results,
    })  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
