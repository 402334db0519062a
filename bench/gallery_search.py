"""Gallery search at scale (exact vs approximate) and enrolment throughput over HTTP, in one run.

Part 1, :class:`arcface.gallery.Gallery` with synthetic embeddings: random unit vectors (D=192 like the default
model), enrolled through ``add_identity`` + ``add_faces`` (``--faces-per-identity`` faces per identity, one
transaction each, SQLite WAL with ``synchronous=FULL`` as in service). The gallery grows to each size in
``--sizes``; at each size:

- enrolment throughput (faces/s) of the rows added since the previous size;
- ``Gallery.search(q, k)`` latency of ``--queries`` mated queries (a gallery row plus noise, at cosine ~``--cos`` to
  it), one query per call as the service makes them: mean, p50, p99 ms and queries/s (one thread);
- for the approximate kinds (``hnsw``, ``ivf``) the same gallery folder opened with that index (its build from the
  database is timed) and recall@1 = how often its top face is the exact index's top face.

Uniform random unit vectors have no cluster structure (real embeddings cluster by person) and the mated queries
sit at cosine ~0.5 from their source: a hard case for IVF cells and HNSW graphs, so the approximate recall here is
not a prediction for a real gallery (the exact index finds every source). ``--hnsw-max`` caps the HNSW build (about
4 minutes at 1M on 2 cores). ``bench/identification_scale.py`` measures the bare indexes.

Part 2, the REST service: ``arcface serve`` (the real default model, MobileFaceNet + MTCNN, 2 model threads) as a
child process on 127.0.0.1; ``--http-requests`` face enrolments (``POST /v1/identities/{id}/faces`` with LFW
photos) then as many searches from ``--http-threads`` client threads: requests/s and latency. Skipped (and said
so) when the LFW photos are absent.

    python bench/gallery_search.py                         # 10K, 100K, 1M
    python bench/gallery_search.py --sizes 10000 100000    # quicker
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import print_table, save  # noqa: E402
from arcface.gallery import Gallery  # noqa: E402
from arcface.inference.contract import ModelContract  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LFW = "data/lfw/lfw-deepfunneled"
PEOPLE = (
    "Colin_Powell", "Tony_Blair", "George_W_Bush", "Donald_Rumsfeld", "Gerhard_Schroeder",
    "Ariel_Sharon", "Hugo_Chavez", "Jacques_Chirac", "Junichiro_Koizumi", "Jean_Chretien",
)  # fmt: skip


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _mated(rng: np.random.Generator, rows: np.ndarray, q: int, cos: float) -> tuple[np.ndarray, np.ndarray]:
    src = rng.choice(rows.shape[0], q, replace=False)
    noise = _unit(rng, q, rows.shape[1])
    x = rows[src] + np.sqrt(1.0 / cos**2 - 1.0) * noise  # cosine ~cos to its source row
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), src


def _timed_search(gallery: Gallery, queries: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, float]]:
    """Top face id per query and latency stats (one ``search`` call per query)."""
    gallery.search(queries[0], k)  # warm-up
    top = np.empty(len(queries), np.int64)
    times = np.empty(len(queries))
    t_all = time.perf_counter()
    for i, q in enumerate(queries):
        t = time.perf_counter()
        top[i] = gallery.search(q, k)[0].face_id
        times[i] = time.perf_counter() - t
    total = time.perf_counter() - t_all
    ms = times * 1e3
    stats = {"mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
             "p99_ms": float(np.percentile(ms, 99)), "qps": len(queries) / total}  # fmt: skip
    return top, stats


def _search_part(args: argparse.Namespace, folder: Path) -> tuple[list[list[object]], list[dict]]:
    rng = np.random.default_rng(args.seed)
    contract = ModelContract("mbf_tflite", args.dim)
    approx_kinds = [  # kind, search-time knob, its values, build parameters (one build per kind and size)
        ("hnsw", "ef_search", args.ef_search, {"m": args.hnsw_m}),
        ("ivf", "nprobe", args.nprobe, {"nlist": args.nlist}),
    ]
    rows: list[list[object]] = []
    results: list[dict] = []
    vectors = np.empty((max(args.sizes), args.dim), np.float32)  # what was enrolled, for the mated queries
    face_ids = np.empty(max(args.sizes), np.int64)
    n = 0
    t0 = time.perf_counter()
    with Gallery.open(folder, contract, index="exact", cache=False) as gallery:
        for size in sorted(args.sizes):
            t = time.perf_counter()
            start = n
            while n < size:
                m = min(args.faces_per_identity, size - n)
                x = _unit(rng, m, args.dim)
                ident = gallery.add_identity(f"person-{n // args.faces_per_identity}")
                face_ids[n : n + m] = gallery.add_faces(ident, x, contract.id)
                vectors[n : n + m] = x
                n += m
            insert_s = time.perf_counter() - t
            enrol_rate = (n - start) / insert_s
            print(f"[{time.perf_counter() - t0:.0f}s] {n:,} faces enrolled ({enrol_rate:,.0f} faces/s)", flush=True)
            queries, src = _mated(rng, vectors[:n], args.queries, args.cos)
            exact_top, stats = _timed_search(gallery, queries, args.k)
            source_hit = float(np.mean(exact_top == face_ids[src]))
            db_mib = sum(p.stat().st_size for p in folder.glob("gallery.sqlite3*")) / 2**20
            rows.append([f"{n:,}", "exact", f"{enrol_rate:,.0f}", "-", f"{stats['mean_ms']:.2f}",
                         f"{stats['p99_ms']:.2f}", f"{stats['qps']:,.0f}", "1.000", f"{source_hit:.3f}"])  # fmt: skip
            results.append({"n": n, "kind": "exact", "enrol_faces_per_s": enrol_rate, "enrol_s": insert_s,
                            "db_mib": db_mib, **stats, "recall_at_1_vs_exact": 1.0,
                            "top1_is_source": source_hit})  # fmt: skip
            for kind, attr, values, base in approx_kinds:
                if kind == "hnsw" and n > args.hnsw_max:
                    skip = f"n > --hnsw-max {args.hnsw_max:,}"
                    rows.append([f"{n:,}", kind, "-", "skipped", "-", "-", "-", "-", skip])
                    results.append({"n": n, "kind": kind, "skipped": skip})
                    continue
                t = time.perf_counter()
                approx = Gallery.open(folder, index=kind, index_params=base, cache=False, create=False)
                build_s = time.perf_counter() - t  # the index is built from the database on open
                try:
                    for value in values:
                        # a search-time knob of the built index (VectorIndex reads it on every search)
                        setattr(approx._live.index, attr, value)
                        top, st = _timed_search(approx, queries, args.k)
                        recall = float(np.mean(top == exact_top))
                        hit = float(np.mean(top == face_ids[src]))
                        params = {**base, attr: value}
                        if kind == "ivf":  # lowered to n_train // 39 for small galleries
                            params["nlist"] = int(approx._live.index.nlist)
                        label = f"{kind} " + ", ".join(f"{a}={v}" for a, v in params.items())
                        rows.append([f"{n:,}", label, "-", f"{build_s:.1f}", f"{st['mean_ms']:.2f}",
                                     f"{st['p99_ms']:.2f}", f"{st['qps']:,.0f}", f"{recall:.3f}",
                                     f"{hit:.3f}"])  # fmt: skip
                        results.append({"n": n, "kind": kind, "params": params, "open_build_s": build_s, **st,
                                        "recall_at_1_vs_exact": recall, "top1_is_source": hit})  # fmt: skip
                        print(f"[{time.perf_counter() - t0:.0f}s] n={n:,} {label}: build {build_s:.1f}s, "
                              f"recall@1 {recall:.3f}, {st['mean_ms']:.2f} ms/query "
                              f"(exact {stats['mean_ms']:.2f})", flush=True)  # fmt: skip
                finally:
                    approx.close()
    return rows, results


# --------------------------------------------------------------------------------------------------
# HTTP


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_part(args: argparse.Namespace, folder: Path, lfw: Path) -> tuple[list[list[object]], list[dict]]:
    import httpx

    photos = []
    for p in PEOPLE:
        photos += [(p, (lfw / p / f"{p}_{i:04d}.jpg").read_bytes()) for i in range(1, 7)]
    key = secrets.token_urlsafe(24)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ARCFACE_API_KEY": key, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "arcface", "serve", "--gallery", str(folder / "http-gallery"),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(folder / "server.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    rows: list[list[object]] = []
    results: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{(folder / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            ids = {p: c.post("/v1/identities", json={"name": p}).json()["id"] for p in PEOPLE}

        def run(kind: str) -> dict:
            jobs = [photos[i % len(photos)] for i in range(args.http_requests)]
            lat: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()

            def work(t: int) -> None:
                with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
                    for person, data in jobs[t :: args.http_threads]:
                        files = {"image": (f"{person}.jpg", data, "image/jpeg")}
                        s = time.perf_counter()
                        if kind == "enrol":
                            r = c.post(f"/v1/identities/{ids[person]}/faces", files=files)
                            ok = r.status_code == 201
                        else:
                            r = c.post("/v1/search", params={"k": 5}, files=files)
                            ok = r.status_code == 200 and r.json()["matches"][0]["identity_id"] == ids[person]
                        with lock:
                            lat.append(time.perf_counter() - s)
                            if not ok:
                                errors.append(f"{r.status_code} {r.text[:200]}")

            threads = [threading.Thread(target=work, args=(t,)) for t in range(args.http_threads)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            ms = np.array(lat) * 1e3
            return {"kind": kind, "requests": len(jobs), "threads": args.http_threads, "wall_s": wall,
                    "per_s": len(jobs) / wall, "mean_ms": float(ms.mean()), "p99_ms": float(np.percentile(ms, 99)),
                    "not_ok": len(errors), "errors": errors[:5]}  # fmt: skip

        for kind in ("enrol", "search"):
            r = run(kind)
            results.append(r)
            label = "POST /v1/identities/{id}/faces" if kind == "enrol" else "POST /v1/search (k=5)"
            rows.append([label, r["requests"], r["threads"], f"{r['per_s']:.1f}", f"{r['mean_ms']:.0f}",
                         f"{r['p99_ms']:.0f}", r["not_ok"]])  # fmt: skip
            print(f"HTTP {kind}: {r['per_s']:.1f}/s, {r['not_ok']} not ok", flush=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return rows, results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--faces-per-identity", type=int, default=100, help="faces per add_faces transaction")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=5, help="identities per search, as /v1/search's default")
    ap.add_argument("--cos", type=float, default=0.5, help="cosine of a query to its source row")
    ap.add_argument("--hnsw-max", type=int, default=1_000_000, help="largest gallery HNSW is built for")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 256], help="HNSW efSearch values")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="IVF nprobe values")
    ap.add_argument("--http-requests", type=int, default=50)
    ap.add_argument("--http-threads", type=int, default=4)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the temporary galleries go (default: the system's tmp)")
    ap.add_argument("--name", default="gallery_search", help="result file bench/results/NAME.json")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    import faiss

    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="gallery-bench-", dir=args.workdir))
    try:
        rows, results = _search_part(args, folder / "synthetic")
        shutil.rmtree(folder / "synthetic", ignore_errors=True)
        http_rows: list[list[object]] = []
        http_results: list[dict] = []
        http_note = ""
        lfw = Path(os.environ.get("ARCFACE_SHARED", REPO.parent / "shared")) / LFW
        if args.no_http:
            http_note = "skipped (--no-http)"
        elif not lfw.is_dir():
            http_note = f"skipped: the LFW photos are absent ({lfw})"
        else:
            http_rows, http_results = _http_part(args, folder, lfw)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    title = (f"Gallery search (D={args.dim}, synthetic unit vectors, {args.faces_per_identity} faces/identity, "
             f"{args.queries} mated queries at cos~{args.cos}, k={args.k}, one query per call; "
             f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads)")  # fmt: skip
    header = ["faces", "index", "enrol faces/s", "open+build s", "mean ms/query", "p99 ms", "queries/s",
              "recall@1 vs exact", "top-1 = source"]  # fmt: skip
    tables = [print_table(title, header, rows)]
    if http_rows:
        tables.append(print_table(
            "REST service over HTTP on 127.0.0.1 (arcface serve, default model MobileFaceNet + MTCNN, 2 model threads,"
            " LFW 250x250 JPEGs)",
            ["request", "n", "client threads", "requests/s", "mean ms", "p99 ms", "not ok"], http_rows,
        ))  # fmt: skip
    else:
        print(f"HTTP enrolment: {http_note}")
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s")
    if not args.no_save:
        path = save(args.name, {"args": vars(args), "faiss": faiss.__version__, "search": results,
                                       "http": http_results, "http_note": http_note, "total_s": total})  # fmt: skip
        print(f"saved {path}")


if __name__ == "__main__":
    main()
