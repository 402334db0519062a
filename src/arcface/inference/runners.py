"""What runs one forward pass of a model inside the :class:`~arcface.inference.embedder.Embedder`.

A runner maps one pass of aligned uint8 RGB crops to the model's raw (unnormalised) outputs, applying the contract's
preprocessing (colour order, ``(x - mean) / std``, tensor layout) on the way in. The Embedder owns everything around
it (input checks, splitting a call into passes and running them, flip-test fusion, normalisation), so every runner
gives comparable numbers. A runner changes no process-wide setting: threads, denormal flushing and the allocator are
set by the entry point that decided the thread plan (:func:`arcface.runtime.threads.apply`).

=================  =============================================================================================
runner             what runs
=================  =============================================================================================
``EagerRunner``    the torch module as it is: float32, or bfloat16 autocast; channels_last on the CPU
``FrozenRunner``   the module traced, ``torch.jit.freeze``-d and ``optimize_for_inference``-d (BN folded into the
                   convolutions), float32 or bfloat16 weights, channels_last
``OnnxRunner``     an ONNX graph in onnxruntime (NCHW or NHWC input, dynamic or fixed batch)
=================  =============================================================================================
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from arcface.inference.contract import ModelContract

__all__ = [
    "CPU_PASS_SIZE",
    "PASS_SIZE",
    "EagerRunner",
    "FrozenRunner",
    "OnnxRunner",
    "Runner",
    "l2_normalise",
    "onnx_input_layout",
    "open_session",
    "preprocess",
]

#: Crops per forward pass of the torch runners on the CPU: bounds activation memory whatever the batch, and with the
#: allocator setting (:mod:`arcface.runtime.memory`) it was the quickest per crop of the sizes tried
#: (``bench/allocator.py``); larger passes allocate activations past glibc's mmap threshold.
CPU_PASS_SIZE = 16
#: Crops per forward pass of the other runners (onnxruntime, torch on another device).
PASS_SIZE = 64


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm: (N, D) -> (N, D) float32 (all-zero rows stay zero).

    The norm is computed in float64, so outputs whose squares overflow float32 (an untrained network's) still
    normalise correctly.
    """
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32)


def preprocess(crops: np.ndarray, contract: ModelContract, layout: str = "NCHW") -> np.ndarray:
    """Apply a contract to uint8 RGB crops: colour order, ``(x - mean) / std``, layout.

    Args:
        crops: (N, H, W, 3) uint8 RGB.
        contract: gives ``color``, ``mean`` and ``std``.
        layout: "NCHW" (-> (N, 3, H, W)) or "NHWC" (-> (N, H, W, 3)).

    Returns:
        C-contiguous float32 array in ``layout``.
    """
    x = crops.astype(np.float32)  # (N, H, W, 3)
    if contract.color == "BGR":
        x = x[..., ::-1]
    x = (x - np.float32(contract.mean)) / np.float32(contract.std)
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    elif layout != "NHWC":
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    return np.ascontiguousarray(x, dtype=np.float32)


class Runner(ABC):
    """One raw forward pass of one model: (n, H, W, 3) uint8 RGB crops -> (n, D) float32 raw outputs.

    Attributes:
        contract: how the model is fed.
        pass_size: the crops per pass the runner is built for (the Embedder's default).
        fixed_pass: the only pass size the model takes (a fixed-batch ONNX graph; a shorter pass is padded), or None.
        concurrent: passes may run side by side on several threads of this process (torch on the CPU releases the
            GIL inside its operators); an onnxruntime session runs one pass at a time on its own threads.
    """

    contract: ModelContract
    pass_size: int = PASS_SIZE
    fixed_pass: int | None = None
    concurrent: bool = False

    @abstractmethod
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB, one pass -> (n, D) float32 raw model output."""


class EagerRunner(Runner):
    """A torch backbone taking (B, 3, H, W) float input, run eagerly.

    On the CPU the module runs in channels_last memory format (converted in place, unless ``channels_last`` is False:
    the trainer's evaluation runs the training model as it is). A crop's output does not depend on the other crops of
    its pass, so any split of a batch into passes gives the same numbers.

    Args:
        module: the backbone (put in eval mode and on ``device``).
        contract: its contract.
        precision: "fp32", or "bf16" for bfloat16 autocast (CPU).
        device: torch device.
        channels_last: convert the module to channels_last on the CPU and feed it that layout.
    """

    def __init__(
        self, module: nn.Module, contract: ModelContract, precision: str = "fp32", device: str = "cpu",
        *, channels_last: bool = True,
    ) -> None:  # fmt: skip
        self.contract = contract
        self.precision = precision
        self.device = torch.device(device)
        self.channels_last = channels_last and self.device.type == "cpu"
        self.concurrent = self.device.type == "cpu"
        self.pass_size = CPU_PASS_SIZE if self.device.type == "cpu" else PASS_SIZE
        self.module = module.to(self.device).eval()
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass: (n, 3, H, W) float32 -> (n, D)."""
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        with ctx:
            return self.module(x)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if self.channels_last:  # (n, 3, H, W) with NHWC strides
            x = torch.from_numpy(preprocess(crops, self.contract, "NHWC")).permute(0, 3, 1, 2)
        else:
            x = torch.from_numpy(preprocess(crops, self.contract, "NCHW")).to(self.device)  # (n, 3, H, W)
        with torch.inference_mode():  # thread-local: entered in the thread that runs the pass
            return self._run(x).float().cpu().numpy()


class FrozenRunner(EagerRunner):
    """A traced, frozen TorchScript graph of the module (``torch.jit.freeze`` + ``optimize_for_inference``: BN
    folded into the convolutions), channels_last, its weights and activations in float32 or bfloat16 (CPU only).

    The trace is of a (:data:`CPU_PASS_SIZE`, 3, H, W) input; the contract fixes H and W, and the batch size is free.
    """

    def __init__(self, module: nn.Module, contract: ModelContract, precision: str = "fp32") -> None:
        super().__init__(module, contract, precision, "cpu")
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        h, w = contract.input_size
        example = torch.zeros(CPU_PASS_SIZE, 3, h, w, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        graph_module = copy.deepcopy(self.module).eval().to(dtype=self.dtype)
        with torch.no_grad(), warnings.catch_warnings():
            # Shapes computed from the input size (TF-style "same" padding) become constants: H, W are fixed.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # TorchScript is deprecated in recent PyTorch; where it is gone, "auto" falls back to autocast.
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(graph_module, example)
            self.graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            for _ in range(2):  # the profiling executor specialises the graph on its first runs
                self.graph(example)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.to(self.dtype))


class OnnxRunner(Runner):
    """An ONNX recognition model run by onnxruntime.

    The input layout (NCHW or NHWC) is read from the model's input shape (the axis of size 3 is the channel axis);
    a model with a fixed batch size takes passes of that size (:attr:`fixed_pass`), a short one padded.

    Args:
        session: an open ``onnxruntime.InferenceSession`` (:func:`open_session`).
        contract: how to feed it.
        path: the file, for messages.
        raw_input: the graph takes RGB pixels 0..255 and normalises them itself (``arcface export`` of a model
            whose normalisation is not insightface's default); else it takes the contract's normalised input.

    Raises:
        ValueError: the input is not a single 4-D image tensor with 3 channels, or its fixed spatial size differs
            from the contract's ``input_size``.
    """

    def __init__(
        self, session: Any, contract: ModelContract, path: str | Path = "<onnx>", *, raw_input: bool = False,
    ) -> None:  # fmt: skip
        self.session = session
        self.raw_input = bool(raw_input)
        self.contract = contract
        self.path = Path(path)
        self.input_name, self.layout, fixed_batch, hw = onnx_input_layout(session, path)
        if hw is not None and hw != contract.input_size:
            raise ValueError(f"{path}: model input is {hw[0]}x{hw[1]}, contract says {contract.input_size}")
        self.output_name = session.get_outputs()[0].name
        self.fixed_pass = fixed_batch

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if self.raw_input:  # RGB 0..255 as float: the graph does the rest
            x = np.ascontiguousarray(crops.astype(np.float32).transpose(0, 3, 1, 2) if self.layout == "NCHW" else
                                     crops.astype(np.float32))  # fmt: skip
        else:
            x = preprocess(crops, self.contract, self.layout)
        if self.fixed_pass is not None and len(x) != self.fixed_pass:  # a short last pass
            pad = np.zeros((self.fixed_pass - len(x), *x.shape[1:]), np.float32)
            out = self.session.run([self.output_name], {self.input_name: np.concatenate([x, pad])})[0]
            return np.asarray(out, np.float32).reshape(self.fixed_pass, -1)[: len(x)]
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, np.float32).reshape(len(x), -1)


def open_session(
    path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None, *, spin: bool = False
):
    """An ``onnxruntime.InferenceSession`` for ``path``, quiet about harmless graph warnings.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers; None means ``["CPUExecutionProvider"]``.
        threads: intra-op threads (None or 0: onnxruntime's default).
        spin: let idle worker threads busy-wait after each run (onnxruntime's default). Off here: on a small
            machine the spinning threads steal the cores from whatever runs next (torch, the detector).

    Raises:
        ValueError: onnxruntime cannot load the file (the message names it and gives onnxruntime's first line).
    """
    import onnxruntime as ort  # optional dependency: only ONNX models need it

    options = ort.SessionOptions()
    options.log_severity_level = 3  # no "removing unused initializer" chatter
    options.intra_op_num_threads = int(threads or 0)
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as the entry points' flush_denormal
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: onnxruntime cannot load this model ({first})") from e


def onnx_input_layout(session, path: str | Path) -> tuple[str, str, int | None, tuple[int, int] | None]:
    """Read an image model's input: (name, "NCHW" | "NHWC", fixed batch or None, fixed (H, W) or None).

    Raises:
        ValueError: not exactly one 4-D input with a channel axis of size 3.
    """
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        shapes = [(i.name, i.shape) for i in inputs]
        raise ValueError(f"{path}: expected one 4-D image input, got {shapes}")
    name, shape = inputs[0].name, inputs[0].shape
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if dims[1] == 3:
        layout, hw = "NCHW", dims[2:]
    elif dims[3] == 3:
        layout, hw = "NHWC", dims[1:3]
    else:
        raise ValueError(f"{path}: cannot tell the channel axis of input {name!r} with shape {shape}")
    size = (hw[0], hw[1]) if None not in hw else None
    return name, layout, dims[0], size
