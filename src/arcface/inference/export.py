"""ONNX export of our backbones, with the embedding contract in the file and a parity check.

The exported graph takes what the PyTorch module takes: float NCHW crops already normalised by the
contract (``(x - mean) / std`` in the contract's colour order), with a dynamic batch dimension, and
returns the raw (not normalised) embeddings. The contract JSON is stored in the ONNX metadata under
``arcface_contract`` so the file carries its own preprocessing.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from arcface.inference.contract import ModelContract

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


@dataclass(frozen=True)
class Parity:
    """How closely the ONNX graph reproduces the PyTorch module on the same inputs."""

    max_abs_diff: float
    min_cosine: float
    samples: int

    def __str__(self) -> str:
        return (
            f"parity on {self.samples} inputs: max abs diff {self.max_abs_diff:.2e}, "
            f"min cosine {self.min_cosine:.6f}"
        )


def export_onnx(
    module: nn.Module, contract: ModelContract, out: str | os.PathLike, *, opset: int = 17, check: bool = True
) -> Parity | None:
    """Export ``module`` to ``out`` (dynamic batch) and, with ``check``, compare it with PyTorch.

    Args:
        module: a backbone taking (B, 3, H, W) float input.
        contract: its contract; ``input_size`` fixes H and W, and the JSON goes into the file's metadata.
        out: the ``.onnx`` path (written atomically).
        opset: ONNX opset.
        check: run onnxruntime and the module on 4 random batches of sizes 1 and 3.

    Returns:
        The :class:`Parity` report, or None without ``check``.
    """
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval().cpu()
    h, w = contract.input_size
    example = torch.zeros(2, 3, h, w)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about static padding sizes are expected
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        model = onnx.load(tmp)
        entry = model.metadata_props.add()
        entry.key, entry.value = "arcface_contract", contract.to_json()
        onnx.save(model, tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return parity(module, out, contract) if check else None


def parity(module: nn.Module, path: str | os.PathLike, contract: ModelContract, seed: int = 0) -> Parity:
    """Max abs difference and min cosine between ``module`` and the ONNX file on random inputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    h, w = contract.input_size
    diffs, cosines, n = [], [], 0
    for batch in (1, 3, 1, 3):
        x = rng.uniform(-1, 1, (batch, 3, h, w)).astype(np.float32)
        ref = module(torch.from_numpy(x)).detach().numpy()  # (B, D)
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        diffs.append(float(np.abs(ref - got).max()))
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        cosines.append(float(cos.min()))
        n += batch
    return Parity(max(diffs), min(cosines), n)
