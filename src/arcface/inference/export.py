"""ONNX export of our backbones, with the whole embedding contract in the file and a parity check.

The exported file carries its own contract, so loading it back (:func:`arcface.load_model`) gives the same contract
id and threshold as the source model, and a gallery accepts embeddings from either:

* ONNX metadata ``arcface_contract``: the contract JSON (architecture, input size and layout, colour order,
  normalisation, template, embedding size, thresholds, weights digest, source, license);
* ONNX metadata ``arcface_input``: what the graph's input is: ``"normalized"`` (float NCHW crops already
  ``(x - mean) / std`` in the contract's colour order, what the torch module takes) or ``"rgb_0_255"`` (float NCHW
  RGB pixels 0..255: the graph normalises them itself).

Foreign clients: insightface's ``ArcFaceONNX`` (2.1) does not read metadata; it guesses. When one of the first 8
nodes is named ``Sub*`` and one ``Mul*`` it feeds raw RGB pixels (mean 0, std 1, the MXNet convention), else
``(x - 127.5) / 127.5``. So a model whose normalisation is insightface's default (ours) is exported as the module
takes it, and any other (the bundled MobileFaceNet: ``(x - 127.5) / 128``) is exported with its normalisation
at the head of the graph, as nodes named ``Sub`` and ``Mul`` (and a channel swap first for a BGR model): insightface
then feeds raw RGB and gets exactly our embeddings. OpenCV's ``cv2.dnn.readNet`` loads either.

Shapes: input ``[batch, 3, H, W]``, output ``[batch, D]`` (checked with ONNX shape inference).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from arcface.inference.contract import CONTRACT_KEY, ModelContract
from arcface.io.files import atomic_path

__all__ = ["INPUT_KEY", "INPUT_NAME", "OUTPUT_NAME", "Parity", "export_onnx", "parity"]

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
#: ONNX metadata key saying what the graph's input is ("normalized" or "rgb_0_255").
INPUT_KEY = "arcface_input"
#: insightface's default normalisation: a model with it needs no preprocessing in the graph.
_INSIGHTFACE_DEFAULT = (127.5, 127.5)


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


class _Normalising(nn.Module):
    """The module behind its contract's preprocessing: RGB 0..255 in (channel swap for BGR), then ``(x - mean) *
    (1 / std)``: a Sub and a Mul, the first nodes of the exported graph."""

    def __init__(self, module: nn.Module, contract: ModelContract) -> None:
        super().__init__()
        self.module = module
        self.bgr = contract.color == "BGR"
        self.register_buffer("mean", torch.tensor(contract.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(1.0 / contract.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return self.module((x - self.mean) * self.scale)


def export_onnx(
    module: nn.Module,
    contract: ModelContract,
    out: str | os.PathLike,
    *,
    opset: int = 17,
    check: bool = True,
    normalize_inside: bool | None = None,
) -> Parity | None:
    """Export ``module`` to ``out`` (dynamic batch, the contract in the metadata) and, with ``check``, compare it
    with PyTorch.

    Args:
        module: a backbone taking (B, 3, H, W) float input.
        contract: its contract; ``input_size`` fixes H and W.
        out: the ``.onnx`` path (written atomically, with the usual umask permissions).
        opset: ONNX opset.
        check: run onnxruntime and the module on 4 random batches of sizes 1 and 3.
        normalize_inside: put the contract's preprocessing at the head of the graph (input: RGB 0..255); None: when
            the contract's normalisation is not insightface's default ``(x - 127.5) / 127.5`` or its colour is BGR.

    Returns:
        The :class:`Parity` report, or None without ``check``.
    """
    import onnx  # optional dependency (the [all] extra): only export needs it

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval().cpu()
    if normalize_inside is None:
        normalize_inside = (contract.mean, contract.std) != _INSIGHTFACE_DEFAULT or contract.color != "RGB"
    graph_module = _Normalising(module, contract).eval() if normalize_inside else module
    h, w = contract.input_size
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about static padding sizes are expected
            torch.onnx.export(
                graph_module,
                (torch.zeros(2, 3, h, w),),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        _fix_output_shape(model, contract.embedding_size)
        if normalize_inside:
            _name_preprocessing(model)
        for key, value in ((CONTRACT_KEY, contract.to_json()), (INPUT_KEY, "rgb_0_255" if normalize_inside else
                                                                 "normalized")):  # fmt: skip
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return parity(graph_module, out, contract, raw=normalize_inside) if check else None


def _fix_output_shape(model, dim: int) -> None:
    """Declare the output as [batch, D] (the exporter leaves a symbolic second axis)."""
    shape = model.graph.output[0].type.tensor_type.shape
    shape.dim[0].ClearField("dim_value")
    shape.dim[0].dim_param = "batch"
    shape.dim[1].ClearField("dim_param")
    shape.dim[1].dim_value = int(dim)


def _name_preprocessing(model) -> None:
    """Name the head's Sub and Mul nodes ``Sub`` and ``Mul`` (what insightface looks for in the first 8 nodes)."""
    names = {n.name for n in model.graph.node}
    for op in ("Sub", "Mul"):
        node = next((n for n in model.graph.node[:8] if n.op_type == op), None)
        if node is None:
            raise RuntimeError(f"the exported graph has no {op} node at its head")
        if op not in names:
            node.name = op


def parity(
    module: nn.Module, path: str | os.PathLike, contract: ModelContract, seed: int = 0, *, raw: bool = False
) -> Parity:
    """Max abs difference and min cosine between ``module`` and the ONNX file on random inputs (pixel values when
    ``raw``, else normalised values)."""
    import onnxruntime as ort  # optional dependency (the [all] extra)

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    h, w = contract.input_size
    diffs, cosines, n = [], [], 0
    for batch in (1, 3, 1, 3):
        x = rng.uniform(0, 255, (batch, 3, h, w)) if raw else rng.uniform(-1, 1, (batch, 3, h, w))
        x = x.astype(np.float32)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).numpy()  # (B, D)
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        diffs.append(float(np.abs(ref - got).max()))
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        cosines.append(float(cos.min()))
        n += batch
    return Parity(max(diffs), min(cosines), n)
