"""Identification at scale: query latency, memory and recall of exact vs approximate FAISS indexes.

Synthetic gallery: N random unit vectors (D=512, float32) for N = 10K, 100K, 1M distractors. Queries are mated: a
random gallery row plus Gaussian noise, renormalised, at cosine ~0.5 to their source (a plausible same-person score),
so "the right answer" exists and an approximate index can miss it. Random 512-D unit vectors are nearly orthogonal
(cosine ~ N(0, 0.044)), which makes this easier for approximate search than real face embeddings; the recall here is
an upper bound of what a real gallery gets with the same parameters.

Per size and kind: build time, index bytes (``faiss.serialize_index``) and RSS growth while building, latency of
batch-1 queries (ms per query) and batch-100 queries (ms per batch), recall@1 of the approximate index against the
exact one (the baseline, measured in the same run).

    python bench/identification_scale.py                 # 10K, 100K, 1M; HNSW up to 100K
    python bench/identification_scale.py --hnsw-max 1000000 --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import print_table, save  # noqa: E402
from arcface.index import VectorIndex  # noqa: E402


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _unit_rows(rng: np.random.Generator, n: int, dim: int, intrinsic: int = 0, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    basis = rng.standard_normal((intrinsic, dim), dtype=np.float32) if intrinsic else None
    for s in range(0, n, chunk):
        if basis is None:
            x = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        else:
            x = rng.standard_normal((min(chunk, n - s), intrinsic), dtype=np.float32) @ basis
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + x.shape[0]] = x
    return out


def _mated_queries(rng: np.random.Generator, gallery: np.ndarray, q: int, cos: float) -> tuple[np.ndarray, np.ndarray]:
    src = rng.choice(gallery.shape[0], q, replace=False)
    noise = rng.standard_normal((q, gallery.shape[1]), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    mix = np.sqrt(1.0 / cos**2 - 1.0)  # |x + mix*n| direction has cosine ~cos to x
    queries = gallery[src] + mix * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries.astype(np.float32), src


def _latency(
    index: VectorIndex, queries: np.ndarray, k: int, n_single: int, n_batches: int
) -> tuple[float, float]:
    index.search(queries[:1], k)  # warm-up
    t = time.perf_counter()
    for i in range(n_single):
        index.search(queries[i : i + 1], k)
    single_ms = (time.perf_counter() - t) / n_single * 1e3
    t = time.perf_counter()
    for b in range(n_batches):
        index.search(queries[b * 100 : (b + 1) * 100], k)
    batch_ms = (time.perf_counter() - t) / n_batches * 1e3
    return single_ms, batch_ms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="largest gallery HNSW is built for")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 256], help="HNSW efSearch values (one build)")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="IVF nprobe values (one build)")
    ap.add_argument("--train-size", type=int, default=50_000)
    ap.add_argument("--cos", type=float, default=0.5, help="cosine of a query to its source row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--intrinsic-dim", type=int, default=0,
                    help="0: uniform on the sphere; d > 0: rows = normalise(A z), z ~ N(0, I_d), a random (d -> D) "
                         "map A, i.e. data on a d-dimensional subspace, closer to real embeddings")
    ap.add_argument("--name", default="identification_scale", help="result file bench/results/NAME.json")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    import faiss

    rng = np.random.default_rng(args.seed)
    params = {
        "hnsw": dict(m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search[0]),
        "ivf": dict(nlist=args.nlist, nprobe=args.nprobe[0], train_size=args.train_size, seed=args.seed),
        "exact": {},
    }
    rows, results = [], []
    t_all = time.perf_counter()
    for n in args.sizes:
        gallery = _unit_rows(rng, n, args.dim, intrinsic=args.intrinsic_dim)
        queries, src = _mated_queries(rng, gallery, args.queries, args.cos)
        exact_top1 = None
        for kind in ("exact", "ivf", "hnsw"):
            if kind == "hnsw" and n > args.hnsw_max:
                rows.append([n, kind, "skipped", "-", "-", "-", "-", "-", f"n > --hnsw-max {args.hnsw_max}"])
                results.append({"n": n, "kind": kind, "skipped": f"n > --hnsw-max {args.hnsw_max}"})
                continue
            gc.collect()
            rss0 = _rss_bytes()
            t = time.perf_counter()
            index = VectorIndex(args.dim, kind, **params[kind])
            index.add(gallery)
            build_s = time.perf_counter() - t
            rss_delta = max(0, _rss_bytes() - rss0)
            nbytes = index.nbytes
            settings = {"ivf": [("nprobe", v) for v in args.nprobe],
                        "hnsw": [("ef_search", v) for v in args.ef_search]}.get(kind, [(None, None)])
            for attr, value in settings:
                label = kind if attr is None else f"{kind} {attr}={value}"
                if attr is not None:
                    setattr(index, attr, value)
                _, found = index.search(queries, args.k)  # (Q, k)
                top1 = found[:, 0]
                if kind == "exact":
                    exact_top1 = top1
                    recall = 1.0
                else:
                    recall = float(np.mean(top1 == exact_top1))
                source_hit = float(np.mean(top1 == src))
                single_ms, batch_ms = _latency(index, queries, args.k, n_single=min(100, args.queries),
                                               n_batches=min(5, args.queries // 100))
                rows.append([n, label, f"{build_s:.1f}", f"{nbytes / 2**20:.0f}", f"{rss_delta / 2**20:.0f}",
                             f"{single_ms:.3f}", f"{batch_ms:.1f}", f"{recall:.4f}", f"{source_hit:.4f}"])
                results.append({
                    "n": n, "kind": label, "build_s": build_s, "index_bytes": nbytes, "rss_delta_bytes": rss_delta,
                    "latency_batch1_ms": single_ms, "latency_batch100_ms": batch_ms, "recall_at_1_vs_exact": recall,
                    "top1_is_source": source_hit,
                    "params": {**params[kind], **({attr: value} if attr else {}),
                               **({"nlist": index.nlist} if kind == "ivf" else {})},
                })
                print(f"[{time.perf_counter() - t_all:.0f}s] n={n} {label}: build {build_s:.1f}s, recall {recall:.4f}",
                      flush=True)
            del index
        del gallery
        gc.collect()

    data = f"intrinsic dim {args.intrinsic_dim}" if args.intrinsic_dim else "uniform"
    title = (f"Identification index scale (D={args.dim}, {data}, k={args.k}, {args.queries} mated queries at "
             f"cos~{args.cos}, "
             f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads)")
    header = ["N", "index", "build s", "index MiB", "RSS +MiB", "batch-1 ms/query", "batch-100 ms/batch",
              "recall@1 vs exact", "top-1 = source"]
    print_table(title, header, rows)
    print(f"HNSW: M={args.hnsw_m}, efConstruction={args.ef_construction}, efSearch in {args.ef_search}; "
          f"IVF: nlist={args.nlist} (trained on {args.train_size}), nprobe in {args.nprobe}; total "
          f"{time.perf_counter() - t_all:.0f} s")
    if not args.no_save:
        path = save(args.name, {"args": vars(args), "faiss": faiss.__version__, "results": results})
        print(f"saved {path}")


if __name__ == "__main__":
    main()
