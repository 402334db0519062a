"""Calibrate the bundled model's open-set identification threshold (1:N search) on LFW, check it on held-out people.

A 1:1 verification threshold (``tools/calibrate_default.py``) is the wrong bar for a gallery search: a person who is
not enrolled is compared with every enrolled person and the best of those N scores is what a search reports, so
strangers pass it far more often than the 1:1 false accept rate says. An identification threshold is chosen for a
false-positive identification rate (FPIR): the share of searches by never-enrolled people whose best hit passes it.

Protocol (:func:`arcface.eval.identification.lfw_open_set`): the LFW people are split by a hash of their name into a
calibration part (two thirds) and a held-out part (one third). In each part, people with two or more photos are
enrolled with their first photo and searched with their second (mated searches: a miss or a wrong first hit is a
false negative), and people with one photo are never enrolled and searched once each (non-mated searches). The
threshold at FPIR f is :func:`arcface.eval.metrics.threshold_at_far` over the non-mated searches' best scores
(at most ``floor(f * N)`` of them pass); FNIR is the share of mated searches whose first hit is not their own
person above the threshold. The threshold chosen on the calibration part at FPIR 1e-2 is then applied unchanged to
the held-out part. FPIR grows with the gallery (more people to be mistaken for): the calibration gallery size is
recorded with the threshold.

Pipeline as the service runs it: ``FaceRecognizer("default", "mtcnn")`` (MTCNN + norm_crop, the default flip
setting), the main face of each photo; photos without a detected face are left out and counted.

    python tools/calibrate_identification.py            # report only (bench/results/calibrate_identification.json)
    python tools/calibrate_identification.py --write    # also store the threshold in the bundled model's contract

``--write`` changes only the contract in the model file's metadata: the weights and their SHA-256 stay as they are,
and so does the contract id (thresholds do not enter it). Embeddings are cached in ``.cache/calibrate_identification``
(keyed by the contract id), so a second run (e.g. with ``--write``) takes seconds.
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
from arcface.eval.identification import OpenSetProtocol, lfw_open_set, open_set_identification  # noqa: E402
from arcface.inference.contract import read_model, save_model  # noqa: E402
from arcface.inference.recognizer import FaceRecognizer, NoFaceError  # noqa: E402
from arcface.inference.zoo import BUNDLED_DEFAULT  # noqa: E402
from arcface.runtime.workers import process_map  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "calibrate_identification"
FPIRS = (1e-2, 1e-3)
CHOSEN_FPIR = 1e-2

_REC: FaceRecognizer | None = None


def _init() -> None:
    global _REC
    _REC = FaceRecognizer("default", "mtcnn")


def _embed_one(path: str) -> np.ndarray | None:
    """(D,) embedding of the main face of one photo, or None without a face (runs in a worker process)."""
    assert _REC is not None
    try:
        return _REC.embed(path)
    except NoFaceError:
        return None


def embed_paths(paths: list[Path], workers: int, contract_id: str) -> dict[str, np.ndarray | None]:
    """Embedding of each photo (None: no face), read from and added to the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cache_file = CACHE / f"{contract_id}.npz"
    known: dict[str, np.ndarray | None] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            for key, value in zip(z["names"].tolist(), z["embeddings"], strict=True):
                known[key] = None if not np.any(value) else value
    todo = [p for p in paths if str(p) not in known]
    t0 = time.perf_counter()
    for i, (path, emb) in enumerate(zip(todo, process_map(_embed_one, [str(p) for p in todo], workers=workers,
                                                          initializer=_init), strict=True), 1):  # fmt: skip
        known[str(path)] = emb
        if i % 250 == 0 or i == len(todo):
            rate = i / (time.perf_counter() - t0)
            print(f"  embedded {i}/{len(todo)} photos ({rate:.1f}/s)", flush=True)
    if todo:
        names = sorted(known)
        dim = next(v.shape[0] for v in known.values() if v is not None)
        mat = np.stack([known[n] if known[n] is not None else np.zeros(dim, np.float32) for n in names])
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, names=np.array(names), embeddings=mat.astype(np.float32))
        tmp.replace(cache_file)
    return known


def evaluate(proto: OpenSetProtocol, emb: dict[str, np.ndarray | None]) -> dict:
    """Open-set numbers of one part: thresholds at FPIRs, FNIR, and the searches' best scores (for re-use)."""
    gallery = [(n, p) for n, p in proto.gallery if emb[str(p)] is not None]
    enrolled = {n for n, _ in gallery}
    mated = [(n, p) for n, p in proto.mated if n in enrolled and emb[str(p)] is not None]
    non_mated = [(n, p) for n, p in proto.non_mated if emb[str(p)] is not None]
    g = np.stack([emb[str(p)] for _, p in gallery])  # (G, D)
    probes = np.stack([emb[str(p)] for _, p in mated + non_mated])  # (P, D)
    g_subj = np.array([n for n, _ in gallery])
    p_subj = np.array([n for n, _ in mated + non_mated])
    res = open_set_identification(probes, p_subj, g, g_subj, fpirs=FPIRS, ranks=(1, 5))
    sims = probes @ g.T  # (P, G)
    top = sims.argmax(axis=1)
    return {
        "gallery": len(gallery),
        "mated": len(mated),
        "non_mated": len(non_mated),
        "dropped_no_face": {
            "gallery": len(proto.gallery) - len(gallery),
            "mated": len(proto.mated) - len(mated) - (len(proto.gallery) - len(gallery)),
            "non_mated": len(proto.non_mated) - len(non_mated),
        },
        "cmc": res["cmc"],
        "threshold_at_fpir": res["threshold_at_fpir"],
        "fnir_at_fpir": {f: None if t is None else 1.0 - t for f, t in res["tpir_at_fpir"].items()},
        "_top1": sims.max(axis=1),
        "_right": g_subj[top] == p_subj,
        "_is_mated": np.arange(len(p_subj)) < len(mated),
    }


def rates_at(part: dict, threshold: float) -> tuple[float, float]:
    """(FPIR, FNIR) of one part at a given threshold."""
    top1, right, is_mated = part["_top1"], part["_right"], part["_is_mated"]
    fpir = float(np.mean(top1[~is_mated] > threshold))
    fnir = float(1.0 - np.mean(right[is_mated] & (top1[is_mated] > threshold)))
    return fpir, fnir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=None, help="folder with lfw-deepfunneled/")
    parser.add_argument("--write", action="store_true", help="store the threshold in the bundled model's contract")
    parser.add_argument("--workers", type=int, default=2, help="processes for detection and embedding (default 2)")
    args = parser.parse_args(argv)

    lfw = args.lfw or find_lfw()
    if lfw is None:
        print(LFW_HINT, file=sys.stderr)
        return 2
    root = lfw / "lfw-deepfunneled"
    parts = {name: lfw_open_set(root, name) for name in ("calibration", "heldout")}
    paths = [p for proto in parts.values() for _, p in proto.gallery + proto.mated + proto.non_mated]
    for name, proto in parts.items():
        print(f"LFW open set, {name}: {len(proto.gallery)} enrolled people (+ as many mated searches), "
              f"{len(proto.non_mated)} never-enrolled people", flush=True)  # fmt: skip
    rec = FaceRecognizer("default", "mtcnn")
    emb = embed_paths(paths, args.workers, rec.contract.id)
    results = {name: evaluate(proto, emb) for name, proto in parts.items()}
    cal, held = results["calibration"], results["heldout"]
    chosen = cal["threshold_at_fpir"][CHOSEN_FPIR]
    if chosen is None:
        print("too few never-enrolled searches to measure FPIR 1e-2", file=sys.stderr)
        return 1
    rows = []
    for f in FPIRS:
        thr = cal["threshold_at_fpir"][f]
        if thr is None:
            continue
        fpir_c, fnir_c = rates_at(cal, thr)
        fpir_h, fnir_h = rates_at(held, thr)
        rows.append([f"{f:g}", f"{thr:.4f}", f"{fpir_c:.4f}", f"{fnir_c:.4f}", f"{fpir_h:.4f}", f"{fnir_h:.4f}"])
    verif = rec.contract.threshold
    if verif is not None:
        fpir_c, fnir_c = rates_at(cal, verif)
        fpir_h, fnir_h = rates_at(held, verif)
        rows.append(["(1:1 thr)", f"{verif:.4f}", f"{fpir_c:.4f}", f"{fnir_c:.4f}", f"{fpir_h:.4f}", f"{fnir_h:.4f}"])
    table = print_table(
        f"LFW open-set identification: threshold chosen on the calibration part ({cal['gallery']} enrolled, "
        f"{cal['non_mated']} never-enrolled searches), applied to the held-out part ({held['gallery']} enrolled, "
        f"{held['non_mated']} never-enrolled)",
        ["target FPIR", "cos thr", "calib FPIR", "calib FNIR", "held-out FPIR", "held-out FNIR"],
        rows,
    )
    fpir_h, fnir_h = rates_at(held, chosen)
    fnir_c = rates_at(cal, chosen)[1]
    fnir_3 = cal["fnir_at_fpir"][1e-3]
    calibrated_on = (
        f"LFW open set (tools/calibrate_identification.py, mtcnn + norm_crop): gallery of {cal['gallery']} enrolled "
        f"people, {cal['mated']} mated and {cal['non_mated']} non-mated searches; FPIR 0.01 at FNIR {fnir_c:.4f}"
        + (f" (FPIR 0.001 costs FNIR {fnir_3:.4f})" if fnir_3 is not None else "")
        + f"; held-out people ({held['gallery']} enrolled, {held['non_mated']} non-mated): FPIR {fpir_h:.4f}, "
        f"FNIR {fnir_h:.4f}. FPIR grows with the gallery size"
    )
    print(f"\nidentification threshold (FPIR {CHOSEN_FPIR:g}): cos > {chosen:.4f}\n{calibrated_on}")
    public = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()}
    save(
        "calibrate_identification",
        {
            "results": public,
            "chosen_fpir": CHOSEN_FPIR,
            "threshold": chosen,
            "heldout_at_threshold": {"fpir": fpir_h, "fnir": fnir_h},
            "verification_threshold": verif,
            "table": table,
            "written": bool(args.write),
        },
    )
    if args.write:
        path = Path(str(files("arcface").joinpath("weights", BUNDLED_DEFAULT)))
        module, contract = read_model(path)
        new = dataclasses.replace(contract, identification_threshold=chosen, identification_calibrated_on=calibrated_on)
        written = save_model(module, new, path)
        assert written.weights_sha256 == contract.weights_sha256 and written.id == contract.id
        print(f"wrote identification threshold {written.identification_threshold:.4f} into {path} "
              f"(contract {written.id}, weights sha256 unchanged)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
