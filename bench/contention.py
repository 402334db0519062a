"""Throughput when other processes share the cores: the thread policy against the library defaults.

Two figures, each configuration in a fresh process, all in one run:

* photo -> embedding: ``FaceRecognizer`` (default model, MTCNN) on real LFW photos, ``embed(path)`` one photo at a
  time (what a request or a simple loop does), and ``main_crops`` + one ``Embedder.embed`` over all of them (photos
  side by side, what ``embed_batch``, ``arcface embed`` and ``gallery enroll`` do): photos/s after a warm-up.
* LFW end to end: ``arcface.eval.evaluate_pair_set`` (what ``arcface eval lfw --no-cache`` runs: detection, alignment,
  embedding, the 10-fold protocol) on the first pairs of every fold of View 2, no cache, flip off, with the
  recognizer's model: wall seconds.

Configurations: ``before`` (arcface as it ran before the policy: ``ARCFACE_THREADS=legacy``, i.e. torch, onnxruntime
and OpenCV at their own thread defaults, and ``backend="onnx"``, the embedding path ``auto`` chose then on CPUs
without native bf16) and ``policy`` (no override: the policy, and ``auto``'s path of today), each quiet, beside one
and beside two neighbours (busy-loop processes started before the measured process and stopped after it; ``--pin``
pins neighbour i to CPU i); then the container-like case, the measured process's affinity restricted to one CPU
(``os.sched_setaffinity`` in the child, as a cpuset), ``policy`` against ``before`` with ``OMP_NUM_THREADS=1``. Every
child runs with the thread variables (``ARCFACE_THREADS``, ``OMP_NUM_THREADS``, ...) removed from its environment
except those of its configuration, in its own process group within this session (so it and its neighbours share the
scheduler as ordinary processes do). A run that passes ``--seconds`` of photo work stops there (its rate is what it
managed); an LFW run that passes ``--lfw-timeout`` is stopped and reported as "> T s".

The table names the CPU and the 1-minute load average before and after: figures from a machine busy with other
work are not quiet-machine figures. Acceptance (2-core machine): beside one neighbour the policy keeps >= 40% of its
quiet photo throughput and <= 2.5x its quiet LFW wall time; quiet, it is within 10% of before; on one CPU it is no
slower than before with ``OMP_NUM_THREADS=1``.

    python bench/contention.py [--photos 80] [--pairs 300] [--pin] [--quick] [--name contention]

``--quick`` (12 photos, 40 pairs, one neighbour at most) checks that it runs in a few minutes and still writes
``bench/results/NAME.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save  # noqa: E402
from arcface.data.locations import LFW_HINT, find_lfw  # noqa: E402

#: Variables that change thread counts or OpenMP behaviour: removed from every child's environment.
THREAD_VARS = ("ARCFACE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
               "KMP_BLOCKTIME", "ARCFACE_CGROUP_ROOT", "CONTENTION_BACKEND")  # fmt: skip
#: The embedding backend of a configuration (read by the child): "before" is arcface as it ran before the policy,
#: library thread defaults and the path ``auto`` chose then on CPUs without native bf16 (onnxruntime float32).
BACKEND_VAR = "CONTENTION_BACKEND"
SETTINGS = {
    "before": {"ARCFACE_THREADS": "legacy", BACKEND_VAR: "onnx"},
    "policy": {},
    "before_omp1": {"ARCFACE_THREADS": "legacy", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", BACKEND_VAR: "onnx"},
}
LABELS = {
    "before": "before (library defaults)",
    "policy": "thread policy",
    "before_omp1": "before + OMP_NUM_THREADS=1",
}


# ---------------------------------------------------------------------------------------------------------------
# The measured process


def _photos(lfw: Path, n: int, warm: int) -> list[Path]:
    """``warm + n`` LFW photos spread over the people (sorted, every 97th file)."""
    files = sorted((lfw / "lfw-deepfunneled").glob("*/*.jpg"))
    return files[:: max(1, len(files) // (n + warm + 1))][: n + warm]


def child(args: argparse.Namespace) -> None:
    """One configuration: print a JSON line for the photos, then one for LFW (flushed, so a run stopped after
    ``--lfw-timeout`` seconds of LFW keeps the first)."""
    import torch

    from arcface import FaceRecognizer
    from arcface.eval import EvalCache, evaluate_pair_set, read_lfw_pairs
    from lfw_end_to_end import subset

    lfw = find_lfw()
    t0 = time.perf_counter()
    rec = FaceRecognizer(backend=os.environ.get(BACKEND_VAR, "auto"))
    load_s = time.perf_counter() - t0
    paths = _photos(lfw, args.photos, args.warm)
    warm, paths = paths[: args.warm], paths[args.warm :]
    for p in warm:
        rec.embed(p)
    out: dict = {"load_s": load_s, "torch_threads": torch.get_num_threads(),
                 "item_threads": rec.thread_plan.item_threads,
                 "path": f"{rec.embedder.precision}/{rec.embedder.backend}",
                 "affinity": len(os.sched_getaffinity(0))}  # fmt: skip

    done, t0 = 0, time.perf_counter()
    for p in paths:  # one photo at a time
        with contextlib.suppress(ValueError):  # no face: counted as done, it cost a detection
            rec.embed(p)
        done += 1
        if time.perf_counter() - t0 > args.seconds:
            break
    dt = time.perf_counter() - t0
    out["one_at_a_time"] = {"photos": done, "seconds": dt, "per_s": done / dt}

    crops, t0 = [], time.perf_counter()
    stream = rec.main_crops(paths)
    for c in stream:  # side by side (the pipeline's workers)
        crops.append(c)
        if time.perf_counter() - t0 > args.seconds:
            stream.close()
            break
    rec.embedder.embed([c for c in crops if not isinstance(c, Exception)])
    dt = time.perf_counter() - t0
    out["side_by_side"] = {"photos": len(crops), "seconds": dt, "per_s": len(crops) / dt}
    print(json.dumps({"photo": out}), flush=True)

    if args.pairs:

        def stop(*_: object) -> None:  # past --lfw-timeout: end this process and its detection workers
            os.killpg(os.getpgrp(), signal.SIGKILL)

        signal.signal(signal.SIGALRM, stop)
        signal.alarm(max(1, round(args.lfw_timeout)))
        pairs = subset(read_lfw_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled", name="lfw_view2"),
                       max(1, args.pairs // 20))  # fmt: skip
        t0 = time.perf_counter()
        r = evaluate_pair_set(pairs, rec.embedder, cache=EvalCache(None), progress=False)
        wall = time.perf_counter() - t0
        print(json.dumps({"lfw": {"wall_s": wall, "pairs": r["pairs"], "images": r["images"],
                                  "accuracy": r["accuracy"], "align_s": r["seconds"]["align"],
                                  "embed_s": r["seconds"]["embed"]}}), flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The driver


def _env(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    return {**env, **SETTINGS[setting], "ARCFACE_PROGRESS": "0"}


def _neighbours(n: int, pin: bool) -> list[subprocess.Popen]:
    cpus = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(n):
        cpu = cpus[i % len(cpus)]
        code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass" if pin else "while True: pass"
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
    time.sleep(0.5)  # let them reach the loop
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_config(args: argparse.Namespace, setting: str, neighbours: int, one_cpu: bool) -> dict:
    """One fresh child under one configuration; returns its results (LFW None after a timeout)."""
    cmd = [sys.executable, __file__, "--child", "--photos", str(args.photos), "--warm", str(args.warm),
           "--seconds", str(args.seconds), "--pairs", str(args.pairs),
           "--lfw-timeout", str(args.lfw_timeout)]  # fmt: skip
    cpu = sorted(os.sched_getaffinity(0))[-1]

    def preexec() -> None:
        os.setpgrp()  # its own process group (so a stopped run takes its detection workers along), same session
        if one_cpu:
            os.sched_setaffinity(0, {cpu})

    load_before = os.getloadavg()[0]
    spinners = _neighbours(neighbours, args.pin)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(setting), stdout=subprocess.PIPE, text=True, preexec_fn=preexec)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=2 * args.seconds + args.lfw_timeout + 300)  # a backstop: the child stops
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    finally:
        _stop(spinners)
    result: dict = {"setting": setting, "neighbours": neighbours, "one_cpu": one_cpu, "pinned": args.pin,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
                    "child_s": time.perf_counter() - t0, "photo": None, "lfw": None}  # fmt: skip
    for line in out.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    if proc.returncode not in (0, None) and not timed_out and result["photo"] is None:
        raise SystemExit(f"the {setting} child failed (exit {proc.returncode})")
    return result


def _fmt_rate(r: dict | None, key: str) -> str:
    return "-" if not r or not r.get("photo") else f"{r['photo'][key]['per_s']:.1f}"


def _fmt_wall(r: dict | None, timeout: float) -> str:
    if not r:
        return "-"
    return f"> {timeout:.0f}" if r.get("lfw") is None else f"{r['lfw']['wall_s']:.1f}"


def _median_of(runs: list[dict]) -> dict:
    """One run, or the medians of several runs of one configuration (photo rates, LFW wall time)."""
    if len(runs) == 1:
        return runs[0]
    out = json.loads(json.dumps(runs[0]))
    out["runs"] = len(runs)
    photos = [r["photo"] for r in runs if r.get("photo")]
    if out.get("photo") and len(photos) == len(runs):
        for key in ("one_at_a_time", "side_by_side"):
            out["photo"][key]["per_s"] = statistics.median(p[key]["per_s"] for p in photos)
    walls = [r["lfw"]["wall_s"] for r in runs if r.get("lfw")]
    if out.get("lfw") and len(walls) == len(runs):
        out["lfw"]["wall_s"] = statistics.median(walls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=80, help="LFW photos per photo measurement (after the warm-up)")
    ap.add_argument("--warm", type=int, default=5, help="warm-up photos")
    ap.add_argument("--seconds", type=float, default=30.0, help="stop a photo measurement after this long")
    ap.add_argument("--pairs", type=int, default=300, help="LFW View 2 pairs (the first of every fold; 0: none)")
    ap.add_argument("--lfw-timeout", type=float, default=180.0, help="stop an LFW run after this many seconds")
    ap.add_argument("--pin", action="store_true", help="pin neighbour i to CPU i (default: the scheduler places them)")
    ap.add_argument("--max-neighbours", type=int, default=2, choices=(1, 2), help="the most neighbours")
    ap.add_argument("--quick", action="store_true",
                    help="a check that it runs: 12 photos, 40 pairs, one neighbour at most, short limits")  # fmt: skip
    ap.add_argument("--name", default="contention", help="result file bench/results/NAME.json")
    ap.add_argument("--one-cpu-reps", type=int, default=1,
                    help="runs of each one-CPU configuration, alternating; the table gives their medians")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.photos, args.warm, args.seconds, args.pairs, args.lfw_timeout = 12, 2, 5.0, 40, 20.0
        args.max_neighbours = 1
    lfw = find_lfw()
    if lfw is None:
        raise SystemExit(LFW_HINT)
    if args.child:
        child(args)
        return
    if len(os.sched_getaffinity(0)) < 2:
        print("note: this process may use one CPU only; the neighbour cases share it", file=sys.stderr)

    configs = [(s, n, False) for n in range(args.max_neighbours + 1) for s in ("before", "policy")]
    configs += [("before_omp1", 0, True), ("policy", 0, True)] * max(1, args.one_cpu_reps)
    load0 = os.getloadavg()
    results = []
    for setting, n, one_cpu in configs:
        r = run_config(args, setting, n, one_cpu)
        results.append(r)
        where = "one CPU" if one_cpu else f"{n} neighbour(s)"
        photo = r["photo"] or {}
        print(f"{LABELS[setting]}, {where}: one at a time {_fmt_rate(r, 'one_at_a_time')} photos/s, side by side "
              f"{_fmt_rate(r, 'side_by_side')} photos/s (torch threads {photo.get('torch_threads', '?')}, "
              f"{photo.get('path', '?')}), LFW {_fmt_wall(r, args.lfw_timeout)} s; load "
              f"{r['loadavg_before']:.2f} -> {r['loadavg_after']:.2f}", flush=True)  # fmt: skip
    load1 = os.getloadavg()

    def find(setting: str, n: int, one_cpu: bool = False) -> dict | None:
        found = [r for r in results if (r["setting"], r["neighbours"], r["one_cpu"]) == (setting, n, one_cpu)]
        return _median_of(found) if found else None

    def pct(value: dict | None, base: dict | None, key: str) -> str:
        if not value or not base or not value.get("photo") or not base.get("photo"):
            return ""
        return f" ({100 * value['photo'][key]['per_s'] / base['photo'][key]['per_s']:.0f}%)"

    def times(value: dict | None, base: dict | None) -> str:
        if not value or not base or not base.get("lfw"):
            return ""
        if value.get("lfw") is None:
            return f" (> {args.lfw_timeout / base['lfw']['wall_s']:.1f}x)"
        return f" ({value['lfw']['wall_s'] / base['lfw']['wall_s']:.2f}x)"

    rows = []
    for n in range(args.max_neighbours + 1):
        b, p = find("before", n), find("policy", n)
        qb, qp = find("before", 0), find("policy", 0)
        rows.append([f"{n} neighbour{'s' if n != 1 else ''}" if n else "quiet",
                     _fmt_rate(b, "one_at_a_time") + (pct(b, qb, "one_at_a_time") if n else ""),
                     _fmt_rate(p, "one_at_a_time") + (pct(p, qp, "one_at_a_time") if n else ""),
                     _fmt_rate(b, "side_by_side") + (pct(b, qb, "side_by_side") if n else ""),
                     _fmt_rate(p, "side_by_side") + (pct(p, qp, "side_by_side") if n else ""),
                     _fmt_wall(b, args.lfw_timeout) + (times(b, qb) if n else ""),
                     _fmt_wall(p, args.lfw_timeout) + (times(p, qp) if n else "")])  # fmt: skip
    o, c = find("before_omp1", 0, True), find("policy", 0, True)
    rows.append(["one CPU (affinity); before = + OMP_NUM_THREADS=1", _fmt_rate(o, "one_at_a_time"),
                 _fmt_rate(c, "one_at_a_time"), _fmt_rate(o, "side_by_side"), _fmt_rate(c, "side_by_side"),
                 _fmt_wall(o, args.lfw_timeout), _fmt_wall(c, args.lfw_timeout)])  # fmt: skip
    n_pairs = next((r["lfw"]["pairs"] for r in results if r.get("lfw")), args.pairs)
    header = ["load", "photos/s one at a time, before", "policy", "photos/s side by side, before", "policy",
              f"LFW {n_pairs} pairs wall s, before", "policy"]  # fmt: skip
    pin = "pinned" if args.pin else "unpinned"
    title = (f"Throughput beside busy neighbours ({pin} busy loops), {args.photos} LFW photos and LFW View 2 "
             f"end to end; each configuration a fresh process; 1-min load average {load0[0]:.2f} before the run, "
             f"{load1[0]:.2f} after")  # fmt: skip
    table = print_table(title, header, rows)

    checks = {}
    qp, p1, qb = find("policy", 0), find("policy", 1), find("before", 0)
    if qp and p1 and qp.get("photo") and p1.get("photo"):
        for key in ("one_at_a_time", "side_by_side"):
            checks[f"photo {key}: 1 neighbour >= 40% of quiet"] = (
                p1["photo"][key]["per_s"] / qp["photo"][key]["per_s"] >= 0.4)
    if qp and p1 and qp.get("lfw"):
        checks["LFW: 1 neighbour <= 2.5x quiet"] = p1.get("lfw") is not None and (
            p1["lfw"]["wall_s"] <= 2.5 * qp["lfw"]["wall_s"])
    if qp and qb and qp.get("photo") and qb.get("photo"):
        for key in ("one_at_a_time", "side_by_side"):
            checks[f"photo {key}: quiet within 10% of before"] = (
                qp["photo"][key]["per_s"] >= 0.9 * qb["photo"][key]["per_s"])
    if o and c and o.get("photo") and c.get("photo"):
        checks["one CPU: photos one at a time no slower than OMP_NUM_THREADS=1"] = (
            c["photo"]["one_at_a_time"]["per_s"] >= 0.95 * o["photo"]["one_at_a_time"]["per_s"])
        if o.get("lfw") and c.get("lfw"):
            checks["one CPU: LFW no slower than OMP_NUM_THREADS=1"] = (
                c["lfw"]["wall_s"] <= 1.05 * o["lfw"]["wall_s"])
    print("\nacceptance (5% measurement tolerance on the one-CPU comparisons):")
    for what, ok in checks.items():
        print(f"  {'pass' if ok else 'FAIL'}  {what}")
    quiet = "quiet" if load0[0] < 0.5 else f"NOT quiet (1-min load {load0[0]:.2f} before the run)"
    print(f"machine: {quiet}")
    path = save(args.name, {
        "args": {k: v for k, v in vars(args).items() if k != "child"}, "loadavg_before": load0,
        "loadavg_after": load1, "machine_quiet": load0[0] < 0.5, "table": table, "checks": checks,
        "results": results,
    })  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
