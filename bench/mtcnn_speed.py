"""MTCNN speed on LFW photos, one thread: the previous implementation vs ``detect`` and ``detect_batch``, one run.

The baseline is the MTCNN module as it was before batching: ``src/arcface/align/mtcnn.py`` at the revision
``BASELINE_REVISION`` of this repository, read from git at run time (the same weights), measured in the same process
on the same images. Every variant runs on each chunk of 32 images in turn, the order
rotating from one repetition to the next, so that a busy neighbour slows all of them alike; a variant's time is the
sum over chunks of its median per chunk. torch and OpenCV run on one thread each (the thread policy runs MTCNN one
thread per process and parallelises across images). Also reported: per-image CPU time (``time.thread_time``, less
sensitive to a shared machine than the wall clock) and the largest box / landmark / score difference of every
variant from the baseline, with the number of images whose face count differs.

    python bench/mtcnn_speed.py [--limit 300] [--reps 3] [--batches 8 16 32]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from _common import machine, module_at_revision, print_table, save
from arcface.align import Face, create_detector
from arcface.data.locations import LFW_HINT, find_lfw
from arcface.io.images import load_image

CHUNK = 32
#: The last revision before MTCNN was batched: its ``align/mtcnn.py`` is the yardstick.
BASELINE_REVISION = "e6b13755542b7bf3582656cee88d58d409e84fed"


def _differences(ref: list[list[Face]], got: list[list[Face]]) -> dict[str, float]:
    """Largest box / landmark (px) and score difference over images with the same face count; count mismatches."""
    out = {"max_box_px": 0.0, "max_landmark_px": 0.0, "max_score": 0.0, "count_mismatches": 0}
    for a, b in zip(ref, got):
        if len(a) != len(b):
            out["count_mismatches"] += 1
            continue
        for fa, fb in zip(a, b):
            out["max_box_px"] = max(out["max_box_px"], float(np.abs(np.subtract(fa.box, fb.box)).max()))
            out["max_landmark_px"] = max(out["max_landmark_px"], float(np.abs(fa.landmarks - fb.landmarks).max()))
            out["max_score"] = max(out["max_score"], abs(fa.score - fb.score))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=300, help="LFW images (every 13th file, sorted)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every variant on every chunk")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32], help="detect_batch sizes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    lfw = find_lfw()
    if lfw is None:
        raise SystemExit(LFW_HINT)
    paths = sorted((lfw / "lfw-deepfunneled").glob("*/*.jpg"))[::13][: args.limit]
    images = [load_image(p) for p in paths]
    chunks = [images[i : i + CHUNK] for i in range(0, len(images), CHUNK)]

    old = module_at_revision(BASELINE_REVISION, "src/arcface/align/mtcnn.py", "_mtcnn_baseline")
    baseline, new = old.MTCNN(), create_detector("mtcnn")

    def batched(size: int):
        return lambda chunk: [f for i in range(0, len(chunk), size) for f in new.detect_batch(chunk[i : i + size])]

    variants = {
        "baseline detect (previous code)": lambda chunk: [baseline.detect(im) for im in chunk],
        "detect": lambda chunk: [new.detect(im) for im in chunk],
        **{f"detect_batch, batch {b}": batched(b) for b in args.batches},
    }
    names = list(variants)
    for fn in variants.values():  # warm-up: oneDNN primitives, allocator
        fn(chunks[0][:4])
    wall = {n: np.zeros((args.reps, len(chunks))) for n in names}
    cpu = {n: np.zeros((args.reps, len(chunks))) for n in names}
    found: dict[str, list[list[Face]]] = {n: [] for n in names}
    for rep in range(args.reps):
        for c, chunk in enumerate(chunks):
            shift = (rep + c) % len(names)
            for name in names[shift:] + names[:shift]:
                t0, c0 = time.perf_counter(), time.thread_time()
                faces = variants[name](chunk)
                wall[name][rep, c], cpu[name][rep, c] = time.perf_counter() - t0, time.thread_time() - c0
                if rep == 0:
                    found[name] += faces
    n_img = len(images)
    ms = {n: 1e3 * np.median(wall[n], axis=0).sum() / n_img for n in names}
    cpu_ms = {n: 1e3 * np.median(cpu[n], axis=0).sum() / n_img for n in names}
    base = names[0]
    rows, results = [], []
    for name in names:
        diff = _differences(found[base], found[name])
        results.append({"what": name, "ms_per_image": ms[name], "cpu_ms_per_image": cpu_ms[name],
                        "speedup": ms[base] / ms[name], "cpu_speedup": cpu_ms[base] / cpu_ms[name],
                        "faces": sum(len(f) for f in found[name]), **diff})  # fmt: skip
        rows.append([name, round(ms[name], 2), f"{ms[base] / ms[name]:.2f}x", round(cpu_ms[name], 2),
                     f"{cpu_ms[base] / cpu_ms[name]:.2f}x", f"{diff['max_box_px']:.1e}",
                     f"{diff['max_landmark_px']:.1e}", f"{diff['max_score']:.1e}",
                     diff["count_mismatches"]])  # fmt: skip
    cpu_name = machine().get("cpu")
    print_table(
        f"MTCNN on {n_img} LFW images, one thread ({cpu_name}); median of {args.reps} interleaved repetitions",
        ["what", "ms/image", "speed-up", "CPU ms/image", "CPU speed-up", "max box diff px", "max landmark diff px",
         "max score diff", "face-count mismatches"],
        rows,
    )  # fmt: skip
    save("mtcnn_speed", {"images": n_img, "reps": args.reps, "chunk": CHUNK, "threads": 1, "results": results})


if __name__ == "__main__":
    main()
