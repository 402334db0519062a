"""Embedder speed and accuracy: each execution path against eager float32 of the same module, same run.

Per model (mbf, r50, and the bundled default): throughput at batch 32 (img/s), batch-1 latency (ms),
ratio to eager float32, min cosine to float32. Timings interleave the paths rep by rep and take medians
(the CPU is shared). Inputs are real aligned LFW faces (MTCNN + norm_crop) when LFW is found.

Untrained r50/mbf with fresh BatchNorm statistics overflow or underflow (denormals make r50 very slow
and its output zero), so their BN statistics are first estimated on the aligned faces (a data-dependent
init); the weights stay random.

    python bench/embed_speed.py [--reps 5] [--models mbf r50 default]

``--graph`` adds frozen / compiled graphs of the same module to the comparison (not used by ``Embedder``:
see the README for why): ``torch.jit.trace`` + ``torch.jit.freeze`` + ``optimize_for_inference`` in float32
and with bfloat16 weights, and ``torch.compile`` (inductor) under bfloat16 autocast; the one-off trace /
compile seconds are reported. The suite runs without it (``python bench/embed_speed.py --graph --name
embed_speed_graph`` is the larger run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, save  # noqa: E402
from arcface.inference.contract import read_model  # noqa: E402
from arcface.inference.embedder import Embedder  # noqa: E402
from arcface.inference.loader import load_model  # noqa: E402
from arcface.inference.runners import l2_normalise, preprocess  # noqa: E402
from arcface.inference.zoo import resolve_model_path  # noqa: E402
from arcface.models import create_model  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "lfw-deepfunneled"
PATHS = [("fp32", "torch"), ("bf16", "torch"), ("fp32", "onnx"), ("auto", "auto")]


def aligned_faces(n: int = 32) -> tuple[np.ndarray, str]:
    """(n, 112, 112, 3) uint8: aligned LFW faces, or smooth noise when LFW is absent."""
    if not LFW.is_dir():
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8), "random uint8 (LFW absent)"
    from arcface.eval.samples import aligned_lfw_sample

    crops = aligned_lfw_sample(LFW, n)
    return crops, f"{len(crops)} aligned LFW faces (MTCNN + norm_crop)"


def bn_init(module: torch.nn.Module, faces: np.ndarray) -> torch.nn.Module:
    """Estimate BatchNorm running stats on the faces (weights stay random), then eval mode."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    x = torch.from_numpy((faces.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2).contiguous()
    module.train()
    with torch.no_grad():
        module(x)
    return module.eval()


class _Plain:
    """The baseline: the module as it is, eager float32, NCHW contiguous, all crops in one pass."""

    def __init__(self, module: torch.nn.Module, contract) -> None:
        self.module, self.contract = module, contract

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return l2_normalise(self.module(torch.from_numpy(preprocess(crops, self.contract))).numpy())


def _time(fn, x) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def graph_runners(module: torch.nn.Module, contract, faces: np.ndarray) -> tuple[dict, dict[str, float]]:
    """Frozen and compiled graphs of ``module``: {label: embed(faces) -> unit rows}, {label: build seconds}.

    The frozen graphs are the Embedder's ``jit`` backend; torch.compile wraps the module of its eager bf16 path.
    """
    import copy

    runners, build = {}, {}
    for label, prec in (("jit.freeze fp32", "fp32"), ("jit.freeze bf16 weights", "bf16")):
        t0 = time.perf_counter()
        emb = Embedder.from_module(copy.deepcopy(module), prec, "jit", contract=contract)
        build[label] = time.perf_counter() - t0
        runners[label] = emb.embed
    t0 = time.perf_counter()
    emb = Embedder.from_module(copy.deepcopy(module), "bf16", "torch", contract=contract)
    emb.runner.module = torch.compile(emb.runner.module)
    emb.embed(faces)  # compiles for the full micro-batch and for the remainder's size
    build["torch.compile bf16 autocast"] = time.perf_counter() - t0
    runners["torch.compile bf16 autocast"] = emb.embed
    return runners, build


def bench_model(name: str, faces: np.ndarray, reps: int, graph: bool = False) -> tuple[list[list[object]], list[dict]]:
    if name == "default":
        module, contract = read_model(resolve_model_path("default"))
    else:
        module = bn_init(create_model(name), faces)
        contract = None
    runners: dict[str, object] = {}
    for prec, back in PATHS:
        emb = Embedder.from_module(module, prec, back, contract=contract, calibration=faces[:8])
        label = f"{prec}/{back}" if prec != "auto" else f"auto -> {emb.precision}/{emb.backend}"
        runners[label] = emb.embed
    contract = contract or next(iter(runners.values())).__self__.contract
    # eager fp32 of the same module, NCHW contiguous, no channels_last (built after: from_module
    # converts the module to channels_last in place, so give the baseline its own copy)
    ref_module = create_model(name) if name != "default" else None
    if ref_module is not None:
        ref_module.load_state_dict(module.state_dict())
        baseline = _Plain(ref_module.eval(), contract)
    else:
        baseline = _Plain(read_model(resolve_model_path("default"))[0], contract)
    fns = {"eager fp32 (baseline)": baseline, **runners}
    build: dict[str, float] = {}
    if graph:
        extra, build = graph_runners(baseline.module, contract, faces)
        fns.update(extra)
    ref = baseline(faces)
    assert np.isfinite(ref).all(), f"{name}: non-finite float32 embeddings"
    for fn in fns.values():  # warm-up
        fn(faces)
        fn(faces[:1])
    t32 = {k: [] for k in fns}
    t1 = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t32[k].append(_time(fn, faces))
            t1[k].append(min(_time(fn, faces[i : i + 1]) for i in range(3)))
    base32 = statistics.median(t32["eager fp32 (baseline)"])
    rows, records = [], []
    for k, fn in fns.items():
        med = statistics.median(t32[k])
        cos = float((fn(faces) * ref).sum(1).min())
        rec = dict(
            path=k,
            throughput_b32=len(faces) / med,
            latency_b1_ms=statistics.median(t1[k]) * 1000,
            ratio=base32 / med,
            min_cosine=cos,
        )
        if k in build:
            rec["build_s"] = build[k]
        records.append(rec)
        label = f"{k} (built in {build[k]:.1f} s)" if k in build else k
        rows.append([label, rec["throughput_b32"], rec["latency_b1_ms"], rec["ratio"], f"{cos:.5f}"])
    return rows, records


def lfw_view1(paths: list[tuple[str, str]]) -> list[list[object]]:
    """LFW View 1 (pairsDevTest.txt, 1,000 pairs) accuracy of the default model per Embedder (precision, backend).

    Same code as ``arcface eval lfw`` (cached MTCNN crops, no flip; the embeddings cache keys by the path).
    """
    from arcface.data.locations import find_lfw
    from arcface.eval import EvalCache, evaluate_pair_set, read_lfw_pairs

    lfw = find_lfw()
    if lfw is None:
        return []
    pairs = read_lfw_pairs(lfw / "pairsDevTest.txt", lfw / "lfw-deepfunneled", name="lfw_view1_test")
    cache = EvalCache(Path(__file__).resolve().parents[1] / ".cache" / "arcface")
    rows = []
    for prec, back in paths:
        emb = load_model("default", precision=prec, backend=back)
        r = evaluate_pair_set(pairs, emb, cache=cache, workers=2, progress=False)
        rows.append([f"{prec}/{back}", f"{100 * r['accuracy']:.2f}", f"{r['auc']:.4f}", r["fallbacks"]])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["mbf", "r50", "default"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lfw-view1", action="store_true", help="also LFW View 1 accuracy of fp32 and bf16 paths")
    ap.add_argument("--graph", action="store_true", help="also jit.freeze and torch.compile graphs of each model")
    ap.add_argument("--name", default="embed_speed", help="result file bench/results/NAME.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faces, what = aligned_faces(32)
    print(f"inputs: {what}; batch {len(faces)}; {args.threads} threads; {args.reps} interleaved reps\n")
    results = {"inputs": what, "batch": len(faces), "reps": args.reps, "models": {}}
    header = ["path", "img/s @32", "ms @1", "x eager fp32", "min cos vs fp32"]
    for name in args.models:
        rows, records = bench_model(name, faces, args.reps, args.graph)
        print_table(f"{name}: Embedder paths vs eager float32", header, rows)
        print()
        results["models"][name] = records
    if args.lfw_view1:
        rows = lfw_view1([("fp32", "torch"), ("bf16", "torch"), ("bf16", "jit")])
        print_table("default model, LFW View 1 (pairsDevTest, 1,000 pairs), no flip", ["path", "accuracy %",
                    "AUC", "no face"], rows)  # fmt: skip
        results["lfw_view1"] = rows
    print("saved", save(args.name, results))


if __name__ == "__main__":
    main()
