"""``arcface convert KIND SRC --out DST``: convert a foreign model into ours, with its contract.

Kinds: ``tflite`` (MobileFaceNet.tflite), ``mxnet`` (insightface's model zoo, no MXNet needed), ``treb1en``
(TreB1eN's InsightFace_Pytorch .pth) and ``evolve`` (face.evoLVe .pth).
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np

from arcface.inference.converters import (
    EVOLVE_ARCHS,
    TREB1EN_ARCHS,
    convert_evolve,
    convert_mxnet,
    convert_tflite,
    convert_treb1en,
)
from arcface.inference.converters.tflite import parity


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``convert`` subcommand and its source kinds."""
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

    m = kinds.add_parser(
        "mxnet",
        help="insightface's MXNet model zoo (PREFIX-symbol.json + PREFIX-NNNN.params) -> r50/r100/mbf_mxnet/...",
        description=(
            "Read an insightface MXNet checkpoint without MXNet: fresnet IR nets (LResNet18/34/50/100E-IR, SE, "
            "input/output variants) and fmobilefacenet (GDC). The contract keeps the graph's own normalisation "
            "(RGB, (x - 127.5) / 128 for the model zoo's)."
        ),
    )
    m.add_argument("prefix", help="checkpoint prefix: PREFIX-symbol.json and PREFIX-NNNN.params")
    m.add_argument("--epoch", type=int, default=None, help="which PREFIX-EPOCH.params (default: the only/latest)")
    m.add_argument("--out", required=True, help="output .safetensors file")
    m.set_defaults(func=run_mxnet)

    for kind, archs, system in (
        ("treb1en", TREB1EN_ARCHS, "TreB1eN's InsightFace_Pytorch"),
        ("evolve", EVOLVE_ARCHS, "face.evoLVe"),
    ):
        k = kinds.add_parser(
            kind,
            help=f"{system} state dict (.pth) -> our backbone",
            description=(
                f"Load a {system} backbone state dict (torch.load weights_only=True: tensors only) into our "
                "backbone. Contract: RGB, (x - 127.5) / 127.5, 112x112."
            ),
        )
        k.add_argument("src", help="the .pth state dict")
        k.add_argument("--arch", required=True, choices=list(archs), help="the network the file holds")
        k.add_argument("--out", required=True, help="output .safetensors file")
        k.set_defaults(func=run_state_dict, system=kind)


def _report(out: str, contract) -> None:
    print(f"wrote {out}")
    print(contract.summary())


def run_mxnet(args: argparse.Namespace) -> int:
    """Convert an insightface MXNet checkpoint and print its contract."""
    _, contract = convert_mxnet(args.prefix, args.out, epoch=args.epoch)
    _report(args.out, contract)
    return 0


def run_state_dict(args: argparse.Namespace) -> int:
    """Convert a TreB1eN or face.evoLVe state dict and print its contract."""

    convert = convert_treb1en if args.system == "treb1en" else convert_evolve
    _, contract = convert(args.src, args.arch, args.out)
    _report(args.out, contract)
    return 0


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
