"""``arcface export --model NAME_OR_PATH --out F.onnx``: ONNX with a dynamic batch and a parity check."""

from __future__ import annotations

import argparse

import torch

from arcface.inference.export import export_onnx
from arcface.inference.loader import load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` subcommand."""
    p = sub.add_parser("export", help="export a PyTorch model to ONNX (dynamic batch) and check parity")
    p.add_argument("--model", default="default", help="default, a .safetensors model, or a .pth with --arch")
    p.add_argument("--arch", default=None, help="backbone name for a .pth state dict (r50, mbf, ...)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, export it, print the contract and the parity line."""
    model = load_model(args.model, arch=args.arch, precision="fp32", backend="auto")
    if model.module is None:
        raise ValueError(f"{args.model}: only PyTorch models (.safetensors, .pth, default) can be exported")
    c = model.contract
    with torch.no_grad():  # not torch.set_grad_enabled(False): that would switch autograd off for the process
        report = export_onnx(model.module, c, args.out, opset=args.opset)
    print(f"wrote {args.out} ({c.architecture}, {c.embedding_size}-D, "
          f"input (B, 3, {c.input_size[0]}, {c.input_size[1]}), dynamic batch)")  # fmt: skip
    print(report)
    return 0
