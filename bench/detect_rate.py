"""Face detection rate and speed over the LFW images (all 13,233 deep-funneled 250x250 photos, or ``--limit N``).

Runs the default detector (mtcnn) and, as the baseline measured in the same run, OpenCV's YuNet; SCRFD on
request (``--detectors mtcnn,yunet,scrfd``) with its research-only ONNX file (``--scrfd``, default: the copy in
the shared weights folder). Goal: a face in nearly every image.

    python bench/detect_rate.py                       # all of LFW, mtcnn + yunet
    python bench/detect_rate.py --limit 500 --detectors mtcnn
    python bench/detect_rate.py --workers 1 --threads 2 --misses misses.txt

LFW is looked up as ``arcface.data.locations.find_lfw`` does ($ARCFACE_DATA/lfw, $ARCFACE_SHARED/data/lfw, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from arcface.align import create_detector
from arcface.data.locations import LFW_HINT, find_lfw
from arcface.runtime.workers import process_map

_DETECTOR = None


def _init(name: str, options: dict) -> None:
    global _DETECTOR
    _DETECTOR = create_detector(name, **options)


def _run(path: str) -> tuple[str, int, bool, float]:
    """Detect on one file -> (path, faces found, main face centred, detection seconds).

    LFW's photos are centred on their subject, so the main face should be too: its box centre within 20% of
    the shorter image side from the image centre.
    """
    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    t = time.perf_counter()
    faces = _DETECTOR.detect(image)
    dt = time.perf_counter() - t
    centred = False
    if faces:
        x1, y1, x2, y2 = faces[0].box
        h, w = image.shape[:2]
        centred = max(abs((x1 + x2 - w) / 2), abs((y1 + y2 - h) / 2)) <= 0.2 * min(h, w)
    return path, len(faces), centred, dt


def measure(name: str, options: dict, paths: list[str], workers: int, threads: int) -> dict:
    """Run one detector over ``paths``; returns counts, misses and timings."""
    if workers <= 1:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    warm = max(1, workers)  # the first results (one per worker) warm the workers up and are not timed
    stream = process_map(_run, paths[:warm] + paths, workers=workers, initializer=_init, initargs=(name, options),
                         chunksize=1 if workers > 1 else None, threads_per_worker=threads)  # fmt: skip
    results = []
    t0 = time.perf_counter()
    for i, r in enumerate(stream):
        if i == warm - 1:
            t0 = time.perf_counter()
        elif i >= warm:
            results.append(r)
    wall = time.perf_counter() - t0
    found = np.array([r[1] > 0 for r in results])
    det_s = np.array([r[3] for r in results])
    return {
        "name": name,
        "n": len(paths),
        "found": int(found.sum()),
        "multi": int(sum(r[1] > 1 for r in results)),
        "centred": int(sum(r[2] for r in results)),
        "misses": [r[0] for r in results if r[1] == 0],
        "ms_per_image": 1000 * float(det_s.mean()),
        "images_per_s": len(paths) / wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, help="folder of NAME/NAME_NNNN.jpg (default: found automatically)")
    ap.add_argument("--detectors", default="mtcnn,yunet", help="comma-separated: mtcnn, yunet, scrfd")
    ap.add_argument("--scrfd", type=Path, help="SCRFD ONNX file (default: ../shared/weights/detectors/...)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (sorted); 0 = all")
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), help="processes")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads per process")
    ap.add_argument("--misses", type=Path, help="write the images without a face here")
    args = ap.parse_args(argv)

    root = args.lfw
    if root is None:
        lfw = find_lfw()
        if lfw is None:
            print(LFW_HINT, file=sys.stderr)
            return 2
        root = lfw / "lfw-deepfunneled"
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        print(f"no images under {root}", file=sys.stderr)
        return 2

    scrfd = args.scrfd
    if scrfd is None:
        cand = root.parents[2] / "weights" / "detectors" / "scrfd_2.5g_bnkps.onnx"  # ../shared layout
        scrfd = cand if cand.is_file() else None
    runs = []
    for name in [n.strip() for n in args.detectors.split(",") if n.strip()]:
        options: dict = {}
        if name == "scrfd":
            if scrfd is None:
                print("scrfd: no model file (--scrfd PATH); skipped", file=sys.stderr)
                continue
            options.update(model_path=str(scrfd), num_threads=args.threads)
        print(f"{name}: {len(paths)} images, {args.workers} worker(s) x {args.threads} thread(s) ...", flush=True)
        runs.append(measure(name, options, paths, args.workers, args.threads))

    print(f"\nLFW deep-funneled: {root} ({len(paths)} images)  goal: face found in >= 99.5%")
    head = f"{'detector':<10} {'found':>7} {'rate %':>8} {'missed':>7} {'centred %':>10} {'>1 face':>8}"
    print(f"{head} {'ms/img':>8} {'img/s':>8}")
    for r in runs:
        rate, centred = 100 * r["found"] / r["n"], 100 * r["centred"] / r["n"]
        print(
            f"{r['name']:<10} {r['found']:>7} {rate:>8.2f} {len(r['misses']):>7} {centred:>10.2f} {r['multi']:>8} "
            f"{r['ms_per_image']:>8.1f} {r['images_per_s']:>8.1f}"
        )
    print("centred: the main (first) face's box centre lies within 20% of the shorter side of the image centre.")
    print("ms/img: detection time in one process; img/s: wall-clock throughput of all workers incl. decoding.")
    for r in runs:
        if r["misses"]:
            shown = ", ".join(Path(p).name for p in r["misses"][:10])
            more = f" (+{len(r['misses']) - 10})" if len(r["misses"]) > 10 else ""
            print(f"{r['name']} missed: {shown}{more}")
    from _common import save

    save("detect_rate", {"images": len(paths), "limit": args.limit, "workers": args.workers, "threads": args.threads,
                         "runs": runs})  # fmt: skip
    if args.misses:
        args.misses.write_text("".join(f"{r['name']}\t{p}\n" for r in runs for p in r["misses"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
