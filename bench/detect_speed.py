"""Detection images/s (mtcnn, yunet, scrfd) on LFW photos and embeddings/s of the default model, one run.

Single process, the default torch/OpenCV threads, the same images for every detector. Baselines measured
in the same run: OpenCV's YuNet for detection, OpenCV zoo's SFace (onnxruntime) for embedding.

    python bench/detect_speed.py [--limit 300] [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import print_table, save
from arcface.align import create_detector, norm_crop
from arcface.data.locations import LFW_HINT, data_roots, find_lfw
from arcface.inference.loader import load_model
from arcface.io.images import load_image


def _scrfd_path():
    for root in data_roots():
        p = root.parent / "weights" / "detectors" / "scrfd_2.5g_bnkps.onnx"
        if p.is_file():
            return p
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=300, help="LFW images (every 13th file, sorted)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    lfw = find_lfw()
    if lfw is None:
        raise SystemExit(LFW_HINT)
    paths = sorted((lfw / "lfw-deepfunneled").glob("*/*.jpg"))[::13][: args.limit]
    images = [load_image(p) for p in paths]

    detectors = {"mtcnn (default)": {}, "yunet (baseline)": {}}
    scrfd = _scrfd_path()
    if scrfd is not None:
        detectors["scrfd 2.5g"] = {"model_path": str(scrfd)}
    rows, results, crops = [], [], []
    base = None
    for label, opts in detectors.items():
        det = create_detector(label.split()[0], **opts)
        det.detect(images[0])  # warm-up
        t0 = time.perf_counter()
        found = 0
        for img in images:
            faces = det.detect(img)
            found += bool(faces)
            if label.startswith("mtcnn") and faces:
                crops.append(norm_crop(img, faces[0].landmarks))
        ips = len(images) / (time.perf_counter() - t0)
        base = ips if label.startswith("yunet") else base
        results.append({"what": f"detect {label}", "per_sec": ips, "found": found, "images": len(images)})
    for r in results:
        rows.append([r["what"], round(r["per_sec"], 1), f"{r['found']}/{r['images']}",
                     round(r["per_sec"] / base, 2) if base else "-"])

    batch = np.stack((crops * (args.batch // max(1, len(crops)) + 1))[: args.batch])  # (B, 112, 112, 3)
    emb_rows = []
    for label, name in (("embed default (mbf_tflite, torch)", "default"), ("embed SFace (onnxruntime, baseline)",
                                                                           "sface")):
        try:
            backend = load_model(name, precision="fp32")
        except FileNotFoundError as e:
            print(f"skipping {label}: {e}")
            continue
        backend.embed(batch)
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            backend.embed(batch)
        eps = reps * len(batch) / (time.perf_counter() - t0)
        emb_rows.append((label, eps))
        results.append({"what": label, "per_sec": eps, "batch": len(batch)})
    sface = next((e for label, e in emb_rows if "SFace" in label), None)
    for label, eps in emb_rows:
        rows.append([label, round(eps, 1), f"batch {len(batch)}", round(eps / sface, 2) if sface else "-"])
    print_table(f"Detection and embedding speed, {len(images)} LFW images, one process",
                ["what", "per second", "found / batch", "x baseline"], rows)
    save("detect_speed", {"images": len(images), "results": results})


if __name__ == "__main__":
    main()
