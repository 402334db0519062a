"""``make bench``: run every benchmark script in bench/ at its suite size, then write one summary table.

Each script prints its own table (with its same-run baseline) and writes ``bench/results/NAME.json``; this
driver runs them one after another (a fresh process each, nothing else should load the machine), times
them, and composes ``bench/results/summary.md`` (figure, value, baseline, ratio, and the machine) from
their JSON files, each row naming its result file and machine. With ``--readme docs/benchmarks.md`` the table
replaces the text between the ``<!-- bench:begin -->`` / ``<!-- bench:end -->`` markers of that page. Every script
in bench/ must be listed in ``SUITE`` (checked), so a new benchmark cannot be forgotten.

Suite sizes keep the whole run short on a small machine; the larger runs quoted in docs/benchmarks.md name their own
commands.

    python bench/_suite.py [--readme docs/benchmarks.md] [--only train_speed,embed_speed] [--summary-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS

BENCH = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

#: script -> arguments at suite size (the README's table comes from exactly these runs)
SUITE: dict[str, list[str]] = {
    "train_speed.py": [],
    "embed_speed.py": ["--reps", "3"],
    "allocator.py": [],
    "detect_speed.py": ["--limit", "200"],
    "mtcnn_speed.py": ["--limit", "300", "--reps", "3"],
    "detect_rate.py": ["--limit", "1500"],
    "lfw_end_to_end.py": ["--limit", "50", "--pipelines", "baseline_tuned", "mtcnn", "yunet"],
    "partial_fc_scale.py": [],
    "identification_scale.py": ["--sizes", "10000", "100000"],
    "gallery_search.py": ["--sizes", "10000", "100000", "--hnsw-max", "100000"],
    "contention.py": ["--photos", "40", "--pairs", "100", "--seconds", "15", "--lfw-timeout", "60",
                      "--max-neighbours", "1"],
    # 10K faces at 192-D only; the larger table in docs/benchmarks.md names its own command
    "gallery_backends.py": ["--sizes", "10000", "--queries", "100", "--pg-ef", "40", "100", "--milvus-ef", "64", "128",
                            "--exact-queries", "10"],
    "ray_batch.py": ["--limit", "300"],
    "clustering.py": ["--grid", "0.5", "0.7", "0.05"],
}


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _fmt(x: float, unit: str = "") -> str:
    if x >= 100:
        s = f"{x:,.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return f"{s}{unit}"


# -- one extractor per result file: rows of (figure, value, baseline, ratio) -------------------------------
def _train_speed(d: dict) -> list[list[str]]:
    rows = []
    res = d["results"]
    for model in dict.fromkeys(r["model"] for r in res if "variant" in r):
        base = next(r for r in res if r.get("model") == model and r.get("variant", "").startswith("fp32"))
        dflt = next(r for r in res if r.get("model") == model and r.get("variant", "").startswith("default"))
        curve = next((r for r in res if r.get("model") == model and "curve_max_relative_gap" in r), None)
        tuned = next((r for r in res if r.get("model") == model and "allocator" in r.get("variant", "")), None)
        rows.append([f"train {model}, batch 32: samples/s, default (bf16 + channels_last)",
                     _fmt(dflt["samples_per_sec"]), f"{_fmt(base['samples_per_sec'])} (fp32 eager)",
                     f"{dflt['samples_per_sec'] / base['samples_per_sec']:.2f}x"])  # fmt: skip
        if tuned:
            rows.append([f"train {model}: default vs fp32 eager with the allocator setting",
                         _fmt(dflt["samples_per_sec"]), f"{_fmt(tuned['samples_per_sec'])} (fp32 + setting)",
                         f"{dflt['samples_per_sec'] / tuned['samples_per_sec']:.2f}x"])  # fmt: skip
        if curve:
            rows.append([f"train {model}: loss after {d.get('curve_steps', 50)} steps, default vs fp32",
                         f"{curve['final_loss_default']:.3f}", f"{curve['final_loss_fp32']:.3f}",
                         f"max gap {100 * curve['curve_max_relative_gap']:.1f}%"])  # fmt: skip
    return rows


def _embed_speed(d: dict) -> list[list[str]]:
    rows = []
    for model, paths in d["models"].items():
        base = next(p for p in paths if p["path"].startswith("eager"))
        auto = next((p for p in paths if p["path"].startswith("auto")), None)
        if auto is None:
            continue
        rows.append([f"embed {model}, batch 32: faces/s, Embedder auto ({auto['path'].split('-> ')[-1]}); "
                     f"min cosine {auto['min_cosine']:.4f}", _fmt(auto["throughput_b32"]),
                     f"{_fmt(base['throughput_b32'])} (eager fp32)", f"{auto['ratio']:.2f}x"])  # fmt: skip
        rows.append([f"embed {model}, batch 1: latency ms, Embedder auto", _fmt(auto["latency_b1_ms"]),
                     _fmt(base["latency_b1_ms"]), f"{base['latency_b1_ms'] / auto['latency_b1_ms']:.2f}x"])  # fmt: skip
    return rows


def _allocator(d: dict) -> list[list[str]]:
    med, rows = d["medians"], []
    for work, label in (("embed_jit", "frozen bf16 graph"), ("embed_torch", "eager bf16 autocast")):
        e = med[work]
        rows.append([f"CPU allocator setting: embed default model, {label} ({d['args']['crops']} crops, flip, 1 "
                     "thread) ms/face", _fmt(e["on"]["ms_per_face"]), f"{_fmt(e['off']['ms_per_face'])} (setting off)",
                     f"{e['off']['ms_per_face'] / e['on']['ms_per_face']:.2f}x faster"])  # fmt: skip
    t = med["train"]
    rows.append(["CPU allocator setting: train mbf (batch 32, 2 threads) samples/s", _fmt(t["on"]["samples_per_s"]),
                 f"{_fmt(t['off']['samples_per_s'])} (setting off)",
                 f"{t['on']['samples_per_s'] / t['off']['samples_per_s']:.2f}x faster"])  # fmt: skip
    for backend, m in d.get("micro_batch", {}).items():
        rows.append([f"embed default model ({backend}), 64 crops per forward pass instead of 16: ms/face",
                     _fmt(m["64"]), f"{_fmt(m['16'])} (16)", f"{m['64'] / m['16']:.2f}x slower"])  # fmt: skip
    return rows


def _detect_speed(d: dict) -> list[list[str]]:
    by = {r["what"]: r for r in d["results"]}
    rows = []
    yunet = next((r for w, r in by.items() if w.startswith("detect yunet")), None)
    sface = next((r for w, r in by.items() if "SFace" in w), None)
    for w, r in by.items():
        if w.startswith("detect yunet") or "SFace" in w:
            continue
        base = yunet if w.startswith("detect") else sface
        if base is None:
            continue
        label = "YuNet" if base is yunet else "SFace"
        rows.append([f"{w}: per second (one process)", _fmt(r["per_sec"]), f"{_fmt(base['per_sec'])} ({label})",
                     f"{r['per_sec'] / base['per_sec']:.2f}x"])  # fmt: skip
    return rows


def _mtcnn_speed(d: dict) -> list[list[str]]:
    res = d["results"]
    base = res[0]
    return [[f"MTCNN {r['what']}, {d['images']} LFW images, one thread: ms/image (max box diff "
             f"{r['max_box_px']:.0e} px, {r['count_mismatches']} face-count changes)", _fmt(r["ms_per_image"]),
             f"{_fmt(base['ms_per_image'])} (previous code)", f"{r['speedup']:.2f}x"] for r in res[1:]]  # fmt: skip


def _detect_rate(d: dict) -> list[list[str]]:
    runs = {r["name"]: r for r in d["runs"]}
    base = runs.get("yunet")
    rows = []
    for name, r in runs.items():
        if name == "yunet" or base is None:
            continue
        rows.append([f"detect {name}: face found in first {r['n']:,} LFW images",
                     f"{100 * r['found'] / r['n']:.2f}%", f"{100 * base['found'] / base['n']:.2f}% (YuNet)",
                     f"{r['images_per_s'] / base['images_per_s']:.2f}x speed"])  # fmt: skip
    return rows


def _lfw_end_to_end(d: dict) -> list[list[str]]:
    res = d["results"]
    base = res.get("baseline_tuned") or res.get("baseline")
    rows = []
    for name, r in res.items():
        if name.startswith("baseline") or base is None:
            continue
        rows.append([f"LFW View 2 end to end ({d['pairs']:,} pairs, {d['images']:,} images, flip, no cache), "
                     f"ours with {name}: "
                     f"wall s (accuracy {100 * r['accuracy']:.2f}% vs {100 * base['accuracy']:.2f}%)",
                     _fmt(r["wall_s"]), f"{_fmt(base['wall_s'])} (YuNet + SFace)",
                     f"{base['wall_s'] / r['wall_s']:.2f}x faster"])  # fmt: skip
    return rows


def _partial_fc_scale(d: dict) -> list[list[str]]:
    rows = []
    for r in d["results"]:
        if r["rate"] == 1.0 or r["num_classes"] < 1_000_000:
            continue
        base = next(b for b in d["results"] if b["num_classes"] == r["num_classes"] and b["world"] == r["world"]
                    and b["rate"] == 1.0)  # fmt: skip
        rows.append([f"Partial FC {r['num_classes']:,} classes, rate {r['rate']}, {r['world']} process(es): "
                     f"classifier step transient MiB/rank ({_fmt(r['step_ms'])} ms/step)",
                     _fmt(r["transient_mib"]), f"{_fmt(base['transient_mib'])} (rate 1.0)",
                     f"{base['transient_mib'] / r['transient_mib']:.1f}x less"])  # fmt: skip
    return rows


def _identification_scale(d: dict) -> list[list[str]]:
    res = d["results"]
    rows = []
    for n in sorted({r["n"] for r in res}):
        exact = next((r for r in res if r["n"] == n and r["kind"] == "exact"), None)
        for r in res:
            if r["n"] != n or r["kind"] == "exact" or exact is None or "recall_at_1_vs_exact" not in r:
                continue
            rows.append([f"identify {n:,} x {d['args']['dim']}-D, {r['kind']}: ms/query (recall@1 "
                         f"{r['recall_at_1_vs_exact']:.3f})", _fmt(r["latency_batch1_ms"]),
                         f"{_fmt(exact['latency_batch1_ms'])} (exact)",
                         f"{exact['latency_batch1_ms'] / r['latency_batch1_ms']:.1f}x"])  # fmt: skip
    return rows


def _gallery_search(d: dict) -> list[list[str]]:
    rows = []
    for r in d["search"]:
        if r["kind"] != "exact":
            continue
        rows.append([f"gallery search {r['n']:,} faces (exact, k=5): ms/query", _fmt(r["mean_ms"]), "-", "-"])
    for h in d.get("http", []):
        rows.append([f"REST {h['kind']} with the default model ({h['threads']} client threads): per s",
                     _fmt(h["per_s"]), "-", "-"])  # fmt: skip
    return rows


def _contention(d: dict) -> list[list[str]]:
    res = d["results"]

    def find(setting: str, n: int, one_cpu: bool = False) -> dict:
        return next(r for r in res if (r["setting"], r["neighbours"], r["one_cpu"]) == (setting, n, one_cpu))

    def rate(r: dict) -> float:
        return r["photo"]["one_at_a_time"]["per_s"]

    def wall(r: dict) -> str:
        return _fmt(r["lfw"]["wall_s"]) if r.get("lfw") else f"> {d['args']['lfw_timeout']:.0f}"

    qb, qp, b1, p1 = find("before", 0), find("policy", 0), find("before", 1), find("policy", 1)
    o, c = find("before_omp1", 0, True), find("policy", 0, True)
    load = f"load {d['loadavg_before'][0]:.1f}"
    rows = [
        [f"photo -> embedding, quiet ({load}): photos/s, thread policy", _fmt(rate(qp)),
         f"{_fmt(rate(qb))} (before: library defaults)", f"{rate(qp) / rate(qb):.2f}x"],
        ["photo -> embedding beside 1 busy neighbour: photos/s, thread policy "
         f"({100 * rate(p1) / rate(qp):.0f}% of its quiet)", _fmt(rate(p1)),
         f"{_fmt(rate(b1))} (before; {100 * rate(b1) / rate(qb):.0f}% of its quiet)", f"{rate(p1) / rate(b1):.1f}x"],
        ["photo -> embedding on one CPU (affinity): photos/s, thread policy", _fmt(rate(c)),
         f"{_fmt(rate(o))} (before + OMP_NUM_THREADS=1)", f"{rate(c) / rate(o):.2f}x"],
    ]
    if qp.get("lfw"):
        n = qp["lfw"]["pairs"]
        rows.append([f"LFW {n} pairs end to end beside 1 busy neighbour: wall s, thread policy (quiet "
                     f"{_fmt(qp['lfw']['wall_s'])})", wall(p1), f"{wall(b1)} (before)",
                     f"{b1['lfw']['wall_s'] / p1['lfw']['wall_s']:.1f}x faster" if b1.get("lfw") and p1.get("lfw")
                     else "-"])  # fmt: skip
    return rows


def _gallery_backends(d: dict) -> list[list[str]]:
    res = d["results"]
    rows = []
    for r in res:
        if "http" in r or r["backend"] == "sqlite":
            continue
        base = next(b for b in res if b.get("backend") == "sqlite" and b.get("n") == r["n"] and b["dim"] == r["dim"])
        how = next((f"hnsw {k}={r[k]}" for k in ("ef_search", "ef") if k in r), "exact scan")
        inserts = f"; {_fmt(r['inserts_per_s'])} inserts/s" if "inserts_per_s" in r else ""
        rows.append([f"gallery {r['backend']} {r['n']:,} faces x {r['dim']}-D, {how}: "
                     f"ms/query (recall@10 {r['recall_at_10']:.3f}{inserts})", _fmt(r["mean_ms"]),
                     f"{_fmt(base['mean_ms'])} (SQLite + FAISS exact)",
                     f"{base['mean_ms'] / r['mean_ms']:.2f}x"])  # fmt: skip
    return rows


def _ray_batch(d: dict) -> list[list[str]]:
    res = d["results"]
    base = next(r for r in res if r["engine"] != "ray" and not r.get("default_threads"))
    rows = []
    for r in res:
        if r["engine"] != "ray":
            continue
        rows.append([f"embed {d['images']} LFW photos on Ray, {r['actors']} actor(s) x 0.5 CPU: img/s (actor start "
                     f"{r['start_s']:.1f} s, {r['task_overhead_ms']:.0f} ms/task; load {d['loadavg_before']})",
                     _fmt(r["img_per_s"]), f"{_fmt(base['img_per_s'])} (single process, 1 thread)",
                     f"{r['img_per_s'] / base['img_per_s']:.2f}x"])  # fmt: skip
    return rows


def _clustering(d: dict) -> list[list[str]]:
    ours = next(r for r in d["rows"] if r["method"] == "ours" and r["note"].startswith("default"))
    best = max((r for r in d["rows"] if r["method"] != "ours" and r["note"].startswith("best")),
               key=lambda r: r["bcubed_f"])  # fmt: skip
    return [[f"cluster {d['faces']:,} LFW faces: BCubed F, ours at the contract's threshold (pairwise F "
             f"{ours['pairwise_f']:.4f}, {ours['seconds']:.1f} s)", f"{ours['bcubed_f']:.4f}",
             f"{best['bcubed_f']:.4f} ({best['method']}, label-tuned cos > {best['threshold']:.3f})",
             f"{ours['bcubed_f'] - best['bcubed_f']:+.4f}"]]  # fmt: skip


EXTRACT = {
    "train_speed": _train_speed, "embed_speed": _embed_speed, "allocator": _allocator,
    "lfw_end_to_end": _lfw_end_to_end,
    "detect_speed": _detect_speed, "mtcnn_speed": _mtcnn_speed, "detect_rate": _detect_rate,
    "partial_fc_scale": _partial_fc_scale, "identification_scale": _identification_scale,
    "gallery_search": _gallery_search, "contention": _contention, "gallery_backends": _gallery_backends,
    "ray_batch": _ray_batch, "clustering_lfw": _clustering,
}  # fmt: skip


def _machine_line(m: dict) -> str:
    """The machine a result file was measured on (not the one that builds the table)."""
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}, "
            f"onnxruntime {m.get('onnxruntime', '-')}")


def summary(timings: dict[str, float] | None = None) -> str:
    """The combined markdown table from the result files."""
    lines = ["| result file (CPU) | figure | value | baseline (same run) | ratio |", "|---|---|---|---|---|"]
    dates = []
    machines: set[str] = set()
    for name, fn in EXTRACT.items():
        d = _load(name)
        if d is None:
            lines.append(f"| {name} | (no result file) | | | |")
            continue
        dates.append(d.get("date", "?")[:10])
        try:
            rows = fn(d)
        except (KeyError, StopIteration, TypeError, ZeroDivisionError) as e:
            rows = [[f"(result file not understood: {type(e).__name__} {e})", "", "", ""]]
        machines.add(_machine_line(d.get("machine") or {}))
        cpu = (d.get("machine") or {}).get("cpu", "?")
        for r in rows:
            lines.append(f"| `bench/results/{name}.json` ({cpu}) | " + " | ".join(r) + " |")
    total = f"; `make bench` took {sum(timings.values()) / 60:.1f} min" if timings else ""
    lines += ["", f"Machines (from the result files): {'; '.join(sorted(machines)) or '?'}; results dated "
              f"{min(dates, default='?')} to {max(dates, default='?')}{total}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=None, help="README to update between the bench markers")
    ap.add_argument("--only", default=None, help="comma-separated scripts (without .py) to run")
    ap.add_argument("--summary-only", action="store_true", help="run nothing; rebuild the table from the JSON")
    args = ap.parse_args()
    scripts = {p.name for p in BENCH.glob("[!_]*.py")}
    missing = scripts - set(SUITE)
    if missing:
        print(f"bench/_suite.py: scripts not in SUITE: {sorted(missing)}", file=sys.stderr)
        return 2
    only = {s if s.endswith(".py") else f"{s}.py" for s in args.only.split(",")} if args.only else None
    timings: dict[str, float] = {}
    failed = []
    for script, extra in ([] if args.summary_only else SUITE.items()):
        if only and script not in only:
            continue
        print(f"\n=== {script} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(BENCH / script), *extra], cwd=BENCH.parent)
        timings[script] = time.perf_counter() - t0
        print(f"=== {script}: exit {rc}, {timings[script]:.0f} s", flush=True)
        if rc != 0:
            failed.append(script)
    table = summary(timings if not only else None)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.md").write_text(table)
    if timings:
        (RESULTS / "suite_timings.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                                "seconds": timings}, indent=1) + "\n")  # fmt: skip
    print("\n" + table)
    if args.readme:
        text = args.readme.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            args.readme.write_text(f"{head}{BEGIN}\n{table}{END}{rest.split(END, 1)[1]}")
        else:
            print(f"{args.readme}: no {BEGIN} / {END} markers; not updated", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
