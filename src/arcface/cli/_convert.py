"""``arcface convert tflite SRC --out DST``: convert a foreign model into ours, with its contract."""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np

from arcface.inference.convert_tflite import convert_tflite, parity


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``convert`` subcommand and its ``tflite`` source kind."""
    p = sub.add_parser(
        "convert",
        help="convert a foreign model file into an arcface safetensors model",
        description="Convert a foreign model into our PyTorch backbone, saved as safetensors with its contract.",
    )
    kinds = p.add_subparsers(dest="source_kind", required=True, metavar="KIND")
    t = kinds.add_parser(
        "tflite",
        help="MobileFaceNet.tflite (sirius-ai lineage) -> mbf_tflite",
        description=(
            "Read a MobileFaceNet .tflite (no TensorFlow needed), map its weights onto mbf_tflite, "
            "and save them with the embedding contract. If ai-edge-litert is installed, also compare "
            "the result with the TFLite interpreter."
        ),
    )
    t.add_argument("src", help="the .tflite file")
    t.add_argument("--out", required=True, help="output .safetensors file")
    t.add_argument("--no-parity", action="store_true", help="skip the interpreter comparison")
    t.add_argument("--parity-samples", type=int, default=8, help="random inputs for the comparison (default 8)")
    t.set_defaults(func=run_tflite)


def run_tflite(args: argparse.Namespace) -> int:
    """Convert, save, print the contract and (when possible) a parity line."""
    model, contract = convert_tflite(args.src, args.out)
    print(f"wrote {args.out}")
    print(contract.summary())
    if args.no_parity:
        return 0
    if importlib.util.find_spec("ai_edge_litert") is None:
        print("parity: skipped (pip install ai-edge-litert to compare with the TFLite interpreter)")
        return 0
    h, w = contract.input_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(1, args.parity_samples), h, w, 3), dtype=np.uint8)
    max_abs, min_cos = parity(args.src, model, contract, images)
    print(
        f"parity vs TFLite interpreter on {len(images)} random inputs: max abs diff {max_abs:.3g}, "
        f"min cosine {min_cos:.7f}"
    )
    return 0
