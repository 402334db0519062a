"""``arcface info``: this machine, the versions, and which embedding path ``precision="auto"`` picks here and why.

Speeds differ between machines (a CPU with AVX512-BF16 or AMX runs bf16, on the frozen graph where it traces; one
without native bf16 runs float32 eager torch, 16-crop passes side by side on the thread policy's threads): a benchmark
or a bug report should start with this output.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json

import torch

from arcface.inference.embedder import resolve_auto
from arcface.inference.loader import load_model
from arcface.runtime import amp
from arcface.runtime.machine import machine_info
from arcface.runtime.workers import usable_cpus


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``info`` subcommand."""
    p = sub.add_parser("info", help="the machine, versions, and the embedding path auto picks here (and why)")
    p.add_argument("--model", default="default", help="the model to check the auto path for (default: default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _why(precision: str, backend: str, native_bf16: bool, flags: list[str]) -> str:
    if native_bf16:
        return (f"this CPU runs bfloat16 natively ({', '.join(f for f in flags if 'bf16' in f)}): bf16 on the "
                f"{'frozen TorchScript graph' if backend == 'jit' else backend} backend")  # fmt: skip
    return ("no native bfloat16 on this CPU (no avx512_bf16 / amx_bf16): float32 eager torch (channels_last), "
            "16-crop passes side by side on one thread per usable CPU (faster than onnxruntime float32 there)")


def run(args: argparse.Namespace) -> int:
    """Print the report."""
    version = importlib.metadata.version("arcface")
    m = machine_info()
    native = amp.cpu_has_native_bf16()
    planned = resolve_auto("auto", "auto")
    model = load_model(args.model)
    c = model.contract
    report = {
        "arcface": version,
        "machine": {**m, "usable_cpus": usable_cpus(), "native_bf16": native, "torch_threads": torch.get_num_threads()},
        "model": {"name": str(args.model), "architecture": c.architecture, "embedding_size": c.embedding_size,
                  "contract": c.id, "threshold": c.threshold},  # fmt: skip
        "auto": {
            "planned": f"{planned[0]}/{planned[1]}",
            "chosen": f"{model.precision}/{model.backend}",
            "why": _why(*planned, native, m["flags"]),
            "min_cosine_to_fp32": model.min_cosine_checked,
        },
    }
    if args.json:
        print(json.dumps(report))
        return 0
    names = ("python", "torch", "onnxruntime", "opencv", "numpy", "faiss")
    versions = ", ".join(f"{k} {m[k]}" for k in names if k in m)
    auto = report["auto"]
    cos = auto["min_cosine_to_fp32"]
    check = "" if cos is None else f"; checked against float32: min cosine {cos:.6f}"
    fell_back = "" if auto["chosen"] == auto["planned"] else f" (planned {auto['planned']}: fell back)"
    print(f"arcface    {version}")
    print(f"machine    {m['cpu']}, {m['cores']} cores, {usable_cpus()} usable, torch threads {torch.get_num_threads()}")
    print(f"flags      {' '.join(m['flags']) or '-'} (native bf16: {'yes' if native else 'no'})")
    print(f"versions   {versions}")
    print(f"model      {args.model}: {c.architecture} {c.embedding_size}-D, contract {c.id}, threshold {c.threshold}")
    print(f"auto path  {auto['chosen']}{fell_back}: {auto['why']}{check}")
    return 0
