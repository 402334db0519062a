"""The GPU half of the benchmarks (run by ``bench/gpu_check.sh``; not by ``make bench``, which is CPU-only).

On one CUDA GPU it measures, with the same-run float32 figure as the baseline:

* training samples/s of IResNet-50 + ArcFace (s=64, m=0.5, 10,000 classes) at batch 256: bf16 autocast +
  channels_last (what ``train.precision: bf16`` and ``train.channels_last: true`` run) against float32
  (TF32 off); a whole step: forward, loss, backward, SGD update;
* inference faces/s at batch 256 for r50 and the bundled default MobileFaceNet: bf16 autocast +
  channels_last against float32.

Synthetic tensors already on the GPU: the figures are the GPU's, not the data loader's. Writes
``bench/results/gpu_check.json`` (or ``--out``). ``--device cpu --quick`` checks the script itself on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arcface  # noqa: E402
from _common import print_table, save  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def train_rate(device: torch.device, bf16: bool, batch: int, warmup: int, iters: int) -> float:
    torch.manual_seed(0)
    model = arcface.create_model("r50").to(device)
    head = arcface.create_head("arcface", 512, 10_000).to(device)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 112, 112, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10_000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = head(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch / _timed(step, device, warmup, iters)


def infer_rate(name: str, device: torch.device, bf16: bool, batch: int, warmup: int, iters: int) -> float:
    if name == "default":
        from arcface.inference.contract import read_model
        from arcface.inference.zoo import resolve_model_path

        model, _ = read_model(resolve_model_path("default"))
    else:
        model = arcface.create_model(name)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(device).eval().to(memory_format=fmt)
    x = torch.randn(batch, 3, 112, 112, device=device).to(memory_format=fmt)

    @torch.inference_mode()
    def run() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            model(x)

    return batch / _timed(run, device, warmup, iters)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny batches and few steps (to check the script)")
    ap.add_argument("--out", default=None, help="result name (default gpu_check)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    batch, warm, iters = (4, 1, 2) if args.quick else (256, 10, 30)
    rows, results = [], {}
    fp32 = train_rate(device, False, batch, warm, iters)
    bf16 = train_rate(device, True, batch, warm, iters)
    results["train_r50"] = {"batch": batch, "fp32_samples_per_s": fp32, "bf16_samples_per_s": bf16}
    what = f"train r50 + arcface, batch {batch} (samples/s)"
    rows.append([what, f"{fp32:.0f}", f"{bf16:.0f}", f"{bf16 / fp32:.2f}x"])
    for name in ("r50", "default"):
        fp32 = infer_rate(name, device, False, batch, warm, iters * 2)
        bf16 = infer_rate(name, device, True, batch, warm, iters * 2)
        results[f"infer_{name}"] = {"batch": batch, "fp32_faces_per_s": fp32, "bf16_faces_per_s": bf16}
        rows.append([f"embed {name}, batch {batch} (faces/s)", f"{fp32:.0f}", f"{bf16:.0f}", f"{bf16 / fp32:.2f}x"])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (script check)"
    table = print_table(f"GPU check on {gpu}", ["figure", "fp32 (baseline)", "bf16 + channels_last", "ratio"], rows)
    save(args.out or ("gpu_check" if device.type == "cuda" else "gpu_check_cpu_selftest"),
         {"gpu": gpu, "results": results, "table": table, "tf32": False})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
