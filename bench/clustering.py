"""Grouping unnamed faces into people: our method at its default threshold against three baselines, one run.

On all of LFW (or any labelled folder: one sub-folder per person), every photo embedded once by the chosen model (the
main face, as ``arcface embed`` does; cached under ``.cache/clustering/``), the same embeddings for every method:

- **ours**: :func:`arcface.cluster` (kNN graph from FAISS, Chinese Whispers, average-linkage merging) at the model
  contract's threshold, no label used; and, for reference only, at its best threshold on the labels;
- **DBSCAN** (scikit-learn, cosine distance ``1 - t``, ``min_samples=1``);
- **hierarchical** (SciPy, average linkage on cosine distance over all pairs, cut at ``1 - t``);
- **Chinese Whispers, dlib's rule**: every pair at cosine ``> t`` an edge of weight 1 (FAISS range search over all
  pairs), labels spread until stable.

Each baseline at the default threshold (the contract's, the one our method uses) and at its best threshold found on
the labels (a grid of ``--grid`` cosines; a user cannot do this). Scores (:mod:`arcface.cluster.metrics`): BCubed and
pairwise precision/recall/F and the number of clusters. Time and peak memory of each row: the method re-run alone in
a fresh process (spawned), the wall time of the clustering and the process's peak RSS (VmHWM, which includes
Python, NumPy, FAISS and the embeddings, about the same for every row).

``--synthetic N``: the scale run, N synthetic 192-D embeddings with the default model's spectrum (the generator of
``bench/gallery_backends.py``) and identity sizes from a Zipf law (most people with one photo, a few with hundreds,
as in photo collections), clustered by our method alone; time, peak RSS, the load average and the scores.

    python bench/clustering.py                                 # all of LFW, default model; result clustering_lfw
    python bench/clustering.py --folder PHOTOS --name clustering_mine
    nice python bench/clustering.py --synthetic 1000000 --name clustering_1m
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from queue import Empty

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "src"))

from _common import print_table, save  # noqa: E402
from arcface.cluster import cluster as cluster_faces  # noqa: E402
from arcface.cluster.core import default_threshold  # noqa: E402
from arcface.cluster.graph import Graph  # noqa: E402
from arcface.cluster.methods import chinese_whispers  # noqa: E402
from arcface.cluster.metrics import scores  # noqa: E402
from arcface.inference.contract import ModelContract  # noqa: E402

CACHE = REPO / ".cache" / "clustering"
LFW = "data/lfw/lfw-deepfunneled"
METHODS = ("ours", "dbscan", "hierarchical", "whispers")


# --------------------------------------------------------------------------------------------------
# Data


def _embedded(folder: Path, model: str) -> tuple[np.ndarray, np.ndarray, ModelContract, int]:
    """(embeddings, person of each, contract, photos skipped) of a labelled folder, from the cache when there."""
    from arcface.batch.embed import embed_images
    from arcface.batch.jobs import JobSettings
    from arcface.io.files import find_images

    cache = CACHE / f"{folder.name}_{Path(model).stem}.npz"
    if not cache.is_file():
        images = find_images(folder)
        print(f"embedding {len(images)} photos of {folder} with {model} into {cache} ...", flush=True)
        embed_images(images, cache, JobSettings("embed", model=model), progress_bar=True)
    with np.load(cache, allow_pickle=False) as z:
        x, paths, errors = z["embeddings"], z["paths"], z["errors"]
        contract = ModelContract.from_json(str(z["contract"]))
    people = np.array([Path(p).parent.name for p in paths])
    return x.astype(np.float32), np.unique(people, return_inverse=True)[1], contract, len(errors)


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit 192-D faces (the default model's spectrum) of people with Zipf-distributed photo counts."""
    from gallery_backends import Faces

    faces = Faces(192, 1, 0.9, seed)
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.zipf(2.2, n), 1000)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
    sizes[-1] -= int(sizes.sum()) - n
    people = np.repeat(np.arange(sizes.size), sizes)
    x = np.empty((n, 192), np.float32)
    block = 100_000
    for start in range(0, n, block):
        stop = min(n, start + block)
        who = people[start:stop]
        centres = faces.centres(int(who[0]), int(who[-1]) + 1)[who - who[0]]
        noise = faces.centres(2**40 + start, 2**40 + stop)  # another stream of the same law
        v = faces.spread * centres + np.sqrt(1 - faces.spread**2) * noise
        x[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return x, people


# --------------------------------------------------------------------------------------------------
# Methods


def _ours(x: np.ndarray, t: float) -> np.ndarray:
    return cluster_faces(x, t).labels


def _dbscan(x: np.ndarray, t: float) -> np.ndarray:
    from sklearn.cluster import DBSCAN  # the baseline's library

    return DBSCAN(eps=1.0 - t, min_samples=1, metric="cosine").fit(x).labels_


def _linkage(x: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage  # the baseline's library

    return linkage(x.astype(np.float64), method="average", metric="cosine")


def _hierarchical(x: np.ndarray, t: float, tree: np.ndarray | None = None) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster

    return fcluster(_linkage(x) if tree is None else tree, 1.0 - t, criterion="distance")


def _whispers(x: np.ndarray, t: float) -> np.ndarray:
    """dlib's rule: every pair at cosine > t an edge of weight 1, over all pairs (FAISS range search)."""
    import faiss  # the range search over all pairs

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x))
    lims, _, found = index.range_search(np.ascontiguousarray(x), float(t))
    rows = np.repeat(np.arange(x.shape[0]), np.diff(lims.astype(np.int64)))
    graph = Graph.from_pairs(x.shape[0], rows, found, np.ones(found.size, np.float32))
    return chinese_whispers(graph, iterations=100, batches=256)


RUN = {"ours": _ours, "dbscan": _dbscan, "hierarchical": _hierarchical, "whispers": _whispers}


def _alone(method: str, path: str, t: float, out: mp.Queue) -> None:
    """In a fresh process: load the embeddings, run one method once; (labels, seconds, peak RSS MiB)."""
    x = np.load(path)
    start, cpu = time.perf_counter(), _cpu_s()
    labels = RUN[method](x, t)
    seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
    out.put((np.asarray(labels), seconds, _peak_mib(), cpu))


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used: on a shared machine the wall time depends on
    the neighbours, the CPU time much less."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_mib() -> float:
    """This process's peak RSS in MiB: VmHWM, which starts afresh at exec (``ru_maxrss`` keeps the forking parent's
    high-water mark across the spawn's exec, so it would report the parent's memory)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measured(method: str, path: Path, t: float) -> tuple[np.ndarray, float, float, float]:
    """(labels, wall seconds, peak RSS MiB, CPU seconds) of one method run alone in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_alone, args=(method, str(path), t, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise SystemExit(f"{method} at {t:.4f}: its process died (exit {proc.exitcode})") from None
    proc.join()
    return result


# --------------------------------------------------------------------------------------------------
# Runs


def _row(name: str, t: float, s: dict, seconds: float, mib: float, cpu: float, note: str) -> dict:
    return {"method": name, "threshold": round(float(t), 4), **s, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(mib), "note": note}  # fmt: skip


def labelled(args: argparse.Namespace) -> None:
    folder = Path(args.folder) if args.folder else Path(args.shared) / LFW
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such folder (--folder, or --shared holding {LFW})")
    x, people, contract, skipped = _embedded(folder, args.model)
    t0 = default_threshold(contract) if args.threshold is None else args.threshold
    CACHE.mkdir(parents=True, exist_ok=True)
    array = CACHE / f"{folder.name}_{Path(args.model).stem}.x.npy"
    np.save(array, x)
    grid = np.round(np.arange(args.grid[0], args.grid[1] + 1e-9, args.grid[2]), 4)
    rows = []
    for method in args.methods:
        labels, seconds, mib, cpu = _measured(method, array, t0)
        rows.append(_row(method, t0, scores(labels, people), seconds, mib, cpu, "default threshold (the contract's)"))
        print(f"{method} at {t0:.4f}: {rows[-1]}", flush=True)
        tree = _linkage(x) if method == "hierarchical" else None
        sweep = {}
        for t in grid:
            labels = _hierarchical(x, t, tree) if tree is not None else RUN[method](x, float(t))
            sweep[float(t)] = scores(labels, people)
        best = max(sweep, key=lambda t: (sweep[t]["bcubed_f"], sweep[t]["pairwise_f"]))
        labels, seconds, mib, cpu = _measured(method, array, best)
        rows.append(_row(method, best, scores(labels, people), seconds, mib, cpu, "best threshold on the labels"))
        rows[-1]["sweep"] = {str(t): {k: round(v, 4) for k, v in s.items()} for t, s in sweep.items()}
        print(f"{method} best at {best:.4f}: {rows[-1]['bcubed_f']:.4f}", flush=True)
    table = print_table(
        f"clustering {folder.name}: {x.shape[0]} faces of {people.max() + 1} people ({args.model}, "
        f"{contract.embedding_size}-D; {skipped} photos without a usable face)",
        ["method", "threshold", "BCubed P", "BCubed R", "BCubed F", "pair P", "pair R", "pair F", "clusters", "s",
         "peak MiB", "threshold from"],
        [[r["method"], f"{r['threshold']:.3f}", *(f"{r[k]:.4f}" for k in (
            "bcubed_precision", "bcubed_recall", "bcubed_f", "pairwise_precision", "pairwise_recall", "pairwise_f")),
          r["clusters"], r["seconds"], r["peak_rss_mib"], r["note"]] for r in rows],
    )  # fmt: skip
    path = save(args.name or ("clustering_lfw" if not args.folder else f"clustering_{folder.name}"), {
        "command": " ".join(sys.argv), "folder": folder.name, "model": args.model, "contract": contract.id,
        "faces": int(x.shape[0]), "people": int(people.max() + 1), "skipped_photos": skipped,
        "default_threshold": t0, "load_average": os.getloadavg(), "rows": rows, "table": table,
    })  # fmt: skip
    print(f"wrote {path}")


def synthetic(args: argparse.Namespace) -> None:
    n = args.synthetic
    CACHE.mkdir(parents=True, exist_ok=True)
    array = CACHE / f"synthetic_{n}.x.npy"
    x, people = _synthetic(n)
    np.save(array, x)
    del x
    from arcface.inference.files import read_model_file
    from arcface.inference.zoo import resolve_model_path

    t0 = default_threshold(read_model_file(resolve_model_path("default")).contract)
    load_before = os.getloadavg()
    labels, seconds, mib, cpu = _measured("ours", array, t0)
    note = "default threshold (the default model's contract)"
    row = _row("ours", t0, scores(labels, people), seconds, mib, cpu, note)
    table = print_table(
        f"clustering {n} synthetic faces of {people.max() + 1} people (192-D, the default model's spectrum)",
        ["method", "threshold", "BCubed F", "pair F", "clusters", "s", "CPU s", "peak MiB", "load average"],
        [["ours", f"{t0:.3f}", f"{row['bcubed_f']:.4f}", f"{row['pairwise_f']:.4f}", row["clusters"], row["seconds"],
          row["cpu_seconds"], row["peak_rss_mib"], " ".join(f"{v:.1f}" for v in load_before)]],
    )  # fmt: skip
    path = save(args.name or f"clustering_synthetic_{n}", {  # --name clustering_100k, clustering_1m
        "command": " ".join(sys.argv), "faces": n, "people": int(people.max() + 1), "default_threshold": t0,
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": [row], "table": table,
    })  # fmt: skip
    array.unlink()
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(REPO.parent / "shared"), help="folder holding data/lfw (LFW's photos)")
    p.add_argument("--folder", help="a labelled folder (one sub-folder per person) instead of LFW")
    p.add_argument("--model", default="default", help="the model embedding the photos")
    p.add_argument("--threshold", type=float, default=None, help="the default threshold (default: the contract's)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--grid", type=float, nargs=3, default=(0.45, 0.75, 0.025), metavar=("LO", "HI", "STEP"),
                   help="the thresholds searched for each method's best")  # fmt: skip
    p.add_argument("--synthetic", type=int, default=None, metavar="N", help="the scale run on N synthetic faces")
    p.add_argument("--name", help="result file name (bench/results/NAME.json)")
    args = p.parse_args(argv)
    synthetic(args) if args.synthetic else labelled(args)


if __name__ == "__main__":
    main()
