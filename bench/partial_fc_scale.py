"""Partial FC at scale: step time and memory of the classifier step at 100K and 1M classes.

The classifier part only: ``PartialFC(kind="arcface")`` over D=512 centres and the project's optimiser
(``build_optimizer``: SGD, momentum 0.9, weight decay 5e-4, lr 0.1), fed random unit embeddings
(``requires_grad=True``, as if from a backbone) and random labels, batch 64 per process. One timed step
is forward + backward + optimiser step (``zero_grad(set_to_none=True)`` first). For each number of
classes, sample rate (1.0, 0.3, 0.1) and world size (1 process; 2 gloo processes on this machine, each
owning half of the centres and all-gathering the embeddings) the configuration runs in fresh
processes: build, one warm-up step (it allocates the momentum buffer), then the mean of 5 timed steps
at 100K classes and of 1 at 1M (a dense 1M step takes tens of seconds on 2 cores; ``--steps-large``).
Batch 64 rows per process (so 128 rows in the global batch with 2 processes); one process gets both
cores as torch threads, two processes one thread each.

Memory, per process (with 2 processes: the larger of the two ranks):

* ``state``: the persistent classifier state, centres + momentum buffer bytes (one contiguous
  buffer each per rank);
* ``transient``: the peak resident memory during the timed steps minus the resident memory just
  before them. Before the timed steps the script collects garbage, calls ``malloc_trim(0)``, reads
  VmRSS and resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0);
  after them it reads VmHWM. The workers run with ``MALLOC_MMAP_THRESHOLD_=65536``, so every block
  above 64 KiB is its own mmap that goes back to the OS when freed (glibc's default threshold grows
  to 32 MiB and would keep freed blocks in the heap, hiding or smearing the per-step peak); torch's
  CPU allocator does not cache. RSS counts touched pages only, so this is physical memory, the
  honest figure for "does it fit". Where clear_refs cannot be written the peak is ``ru_maxrss``
  (whole-process peak, so an upper bound) and the table says so.

The ratio column compares each row with rate 1.0 of the same size and world size (the baseline,
measured in the same run). Dense rate 1.0 builds (num_local, D) gradients and SGD temporaries; at
rate < 1 the centres get a row-sparse gradient of the sampled rows and the optimiser updates only
those rows of the centres and momentum (see ``arcface.heads.partial_fc``), so the transient memory
and the optimiser work scale with the rate.

    python bench/partial_fc_scale.py                        # 100K and 1M, rates 1.0 0.3 0.1, 1 and 2 processes
    python bench/partial_fc_scale.py --sizes 100000 --worlds 1
    python bench/partial_fc_scale.py --dense-grad --sizes 1000000 --worlds 1 --name partial_fc_scale_densegrad
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import print_table, save  # noqa: E402

MiB = 1024.0 * 1024.0


# -- measurement helpers (worker side) ------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _worker(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from arcface.engine.config import OptimConfig
    from arcface.engine.optim import build_optimizer
    from arcface.heads.partial_fc import PartialFC

    torch.set_num_threads(args.threads)
    rank, world = args.rank, args.world
    group = None
    if world > 1:
        import datetime

        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"file://{args.rendezvous}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=600),
        )
    torch.manual_seed(rank)
    pfc = PartialFC(
        "arcface", args.dim, args.num_classes, sample_rate=args.rate, rank=rank, world_size=world, group=group, seed=0,
        sparse_grad=not args.dense_grad,
    ).train()
    opt = build_optimizer(OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4), nn.Identity(), pfc)
    steps = args.steps + 1
    xs = torch.nn.functional.normalize(torch.randn(steps, args.batch, args.dim), dim=2)  # unit embeddings
    ys = torch.randint(0, args.num_classes, (steps, args.batch))

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        x = xs[i].clone().requires_grad_(True)
        pfc(x, ys[i]).backward()
        opt.step()

    step(0)  # warm-up; allocates the momentum buffer
    _trim()
    rss0 = _status_kib("VmRSS") * 1024
    exact_peak = _reset_peak()
    if world > 1:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    for i in range(1, steps):
        step(i)
    dt = (time.perf_counter() - t0) / args.steps
    peak = _status_kib("VmHWM") * 1024 if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    buf = opt.state[pfc.weight]["momentum_buffer"]
    out = {
        "rank": rank,
        "num_local": pfc.num_local,
        "num_sample": pfc.num_sample,
        "step_s": dt,
        "state_bytes": pfc.weight.numel() * pfc.weight.element_size() + buf.numel() * buf.element_size(),
        "rss_before_bytes": rss0,
        "peak_bytes": peak,
        "transient_bytes": peak - rss0,
        "exact_peak": exact_peak,
    }
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    Path(args.result).write_text(json.dumps(out))


# -- driver ---------------------------------------------------------------------------------------
def _run_config(num_classes: int, rate: float, world: int, args: argparse.Namespace) -> dict:
    steps = args.steps_small if num_classes <= 200_000 else args.steps_large
    threads = max(1, args.cores // world)
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": str(HERE.parent / "src"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for rank in range(world):
            cmd = [
                sys.executable, str(Path(__file__).resolve()), "--worker",
                "--num-classes", str(num_classes), "--rate", str(rate), "--world", str(world), "--rank", str(rank),
                "--dim", str(args.dim), "--batch", str(args.batch), "--steps", str(steps), "--threads", str(threads),
                "--rendezvous", os.path.join(tmp, "rdzv"), "--result", os.path.join(tmp, f"r{rank}.json"),
            ] + (["--dense-grad"] if args.dense_grad else [])
            procs.append(subprocess.Popen(cmd, env=env))
        for p in procs:
            if p.wait(timeout=900) != 0:
                raise RuntimeError(f"worker failed: N={num_classes} rate={rate} world={world}")
        ranks = [json.loads(Path(tmp, f"r{r}.json").read_text()) for r in range(world)]
    return {
        "num_classes": num_classes,
        "rate": rate,
        "world": world,
        "threads_per_process": threads,
        "steps": steps,
        "step_ms": 1000.0 * max(r["step_s"] for r in ranks),
        "state_mib": max(r["state_bytes"] for r in ranks) / MiB,
        "transient_mib": max(r["transient_bytes"] for r in ranks) / MiB,
        "exact_peak": all(r["exact_peak"] for r in ranks),
        "ranks": ranks,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64, help="rows per process")
    ap.add_argument("--steps-small", type=int, default=5, help="timed steps at <= 200K classes")
    ap.add_argument("--steps-large", type=int, default=1, help="timed steps above 200K classes")
    ap.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1), help="threads shared by the processes")
    ap.add_argument("--name", default="partial_fc_scale")
    ap.add_argument("--dense-grad", action="store_true",
                    help="PartialFC(sparse_grad=False): the old dense centre gradient and dense SGD, for comparison")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--num-classes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--rendezvous", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    results = []
    for n in args.sizes:
        for world in args.worlds:
            for rate in args.rates:
                t = time.perf_counter()
                r = _run_config(n, rate, world, args)
                print(f"N={n} world={world} rate={rate}: {r['step_ms']:.0f} ms/step, transient "
                      f"{r['transient_mib']:.0f} MiB, state {r['state_mib']:.0f} MiB ({time.perf_counter() - t:.0f} s)",
                      flush=True)
                results.append(r)

    header = ["classes", "processes", "rate", "sampled/rank", "ms/step", "state MiB/rank",
              "transient peak MiB/rank", "baseline (rate 1.0) MiB", "memory ratio", "time ratio"]
    rows = []
    for r in results:
        base = next((b for b in results if b["num_classes"] == r["num_classes"] and b["world"] == r["world"]
                     and b["rate"] == 1.0), None)
        mem_ratio = base["transient_mib"] / r["transient_mib"] if base and r["transient_mib"] > 0 else float("nan")
        time_ratio = base["step_ms"] / r["step_ms"] if base else float("nan")
        rows.append([
            f"{r['num_classes']:,}", r["world"], f"{r['rate']:.1f}", max(x["num_sample"] for x in r["ranks"]),
            f"{r['step_ms']:.0f}", round(r["state_mib"]), round(r["transient_mib"]),
            round(base["transient_mib"]) if base else "-", f"{mem_ratio:.1f}x", f"{time_ratio:.1f}x",
        ])
    exact = all(r["exact_peak"] for r in results)
    grad = "dense centre gradient (sparse_grad=False)" if args.dense_grad else "row-sparse centre gradient"
    title = (f"Partial FC classifier step, {grad}, D={args.dim}, batch {args.batch}/process, SGD momentum; "
             f"ratio = rate-1.0 baseline / this row (same size, same processes); peak from "
             f"{'VmHWM reset before the steps' if exact else 'ru_maxrss (upper bound)'}")
    print_table(title, header, rows)
    path = save(args.name, {"args": {k: v for k, v in vars(args).items() if k in
                                     ("sizes", "rates", "worlds", "dim", "batch", "steps_small", "steps_large",
                                      "cores", "dense_grad")},
                            "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
