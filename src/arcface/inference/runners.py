"""What runs a model's forward pass inside the :class:`~arcface.inference.embedder.Embedder`.

A runner maps a chunk of aligned uint8 RGB crops to the model's raw (unnormalised) outputs, applying the contract's
preprocessing (colour order, ``(x - mean) / std``, tensor layout) on the way in. The Embedder owns everything
around it (input checks, batching, flip-test fusion, normalisation), so every runner gives comparable numbers:

=================  =============================================================================================
runner             what runs
=================  =============================================================================================
``EagerRunner``    the torch module as it is: float32, or bfloat16 autocast; channels_last on the CPU;
                   at most :data:`MICRO_BATCH` crops per forward pass, the passes of one call side by side on
                   ``workers`` threads of one torch intra-op thread each (the thread policy's "embed" plan)
``FrozenRunner``   the module traced, ``torch.jit.freeze``-d and ``optimize_for_inference``-d (BN folded into the
                   convolutions), float32 or bfloat16 weights, channels_last
``OnnxRunner``     an ONNX graph in onnxruntime (NCHW or NHWC input, dynamic or fixed batch)
=================  =============================================================================================
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from arcface.runtime.memory import retain_freed_memory

if TYPE_CHECKING:
    from arcface.inference.contract import ModelContract

__all__ = [
    "MICRO_BATCH",
    "EagerRunner",
    "FrozenRunner",
    "OnnxRunner",
    "Runner",
    "l2_normalise",
    "onnx_input_layout",
    "open_session",
    "preprocess",
]

#: Most crops per forward pass of the torch runners on the CPU: bounds activation memory whatever the batch. With the
#: allocator setting (arcface.runtime.memory) 16 was 1-7% quicker per crop than 32 or 64 (bench/allocator.py);
#: without it, larger passes allocate activations past glibc's mmap threshold and page-fault them every pass.
MICRO_BATCH = 16


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
    """Raw forward pass of one model: (n, H, W, 3) uint8 RGB crops -> (n, D) float32 raw outputs.

    Attributes:
        contract: how the model is fed.
        max_batch: most crops per call (the Embedder splits larger batches).
    """

    contract: ModelContract
    max_batch: int = 64

    @abstractmethod
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB, n <= max_batch -> (n, D) float32 raw model output."""


class EagerRunner(Runner):
    """A torch backbone taking (B, 3, H, W) float input, run eagerly.

    On the CPU a call's crops go through the module :data:`MICRO_BATCH` at a time, and with ``workers`` > 1 those
    passes run side by side on a pool of ``workers`` threads, each with one torch intra-op thread (torch releases the
    GIL inside its operators). That is the thread policy's rule (:mod:`arcface.runtime.threads`): parallelism across
    images, not an OpenMP team per operator. Measured on the 2-core Xeon (Ice Lake, no bf16), the default model in
    float32, 128 crops: 1 thread 96-107 crops/s, a team of 2 intra-op threads 122-169, 2 threads side by side
    172-201; beside a busy neighbour a team waits for its descheduled member at every operator, side-by-side passes
    only at the end of the call. Each pass gives the same numbers whatever the split (a crop's output does not depend
    on the other crops of its pass).

    Args:
        module: the backbone (put in eval mode and on ``device``; channels_last in place on the CPU).
        contract: its contract.
        precision: "fp32", or "bf16" for bfloat16 autocast (CPU).
        device: torch device.
        max_batch: most crops per call.
        workers: CPU threads the passes of one call are spread over (1: all in the calling thread).
    """

    def __init__(
        self, module: nn.Module, contract: ModelContract, precision: str = "fp32", device: str = "cpu",
        max_batch: int = 64, workers: int = 1,
    ) -> None:  # fmt: skip
        self.contract = contract
        self.precision = precision
        self.device = torch.device(device)
        self.max_batch = int(max_batch)
        self.workers = max(1, int(workers))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self.module = module.to(self.device).eval()
        if self.device.type == "cpu":
            self.module = self.module.to(memory_format=torch.channels_last)
            retain_freed_memory()  # reuse freed activations instead of page-faulting them afresh every pass
            torch.set_flush_denormal(True)  # denormal activations cost 10-100x per op on x86; their value is ~0

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass: (n, 3, H, W) float32 -> (n, D)."""
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        with ctx:
            return self.module(x)

    def _pass(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # thread-local: entered in the thread that runs the pass
            return self._run(x).float()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if self.device.type != "cpu":
            x = torch.from_numpy(preprocess(crops, self.contract, "NCHW")).to(self.device)  # (n, 3, H, W)
            with torch.inference_mode():
                return self._run(x).float().cpu().numpy()
        x = torch.from_numpy(preprocess(crops, self.contract, "NHWC")).permute(0, 3, 1, 2)  # (n, 3, H, W) NHWC-strided
        passes = [x[i : i + MICRO_BATCH] for i in range(0, len(x), MICRO_BATCH)]  # (<=16, 3, H, W) each
        if self.workers > 1 and len(passes) > 1:
            parts = list(self._executor().map(self._pass, passes))
        else:
            parts = [self._pass(p) for p in passes]
        return torch.cat(parts).numpy()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            # a forked child inherits the pool object but not its threads: it makes its own
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="arcface-embed",
                                                initializer=_pass_thread)  # fmt: skip
                self._pool_pid = os.getpid()
            return self._pool

    def __getstate__(self) -> dict[str, Any]:  # a pool and a lock do not pickle; a copy makes its own
        state = self.__dict__.copy()
        state["_pool"], state["_pool_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()


def _pass_thread() -> None:
    """Start of a pool thread: one torch intra-op thread, denormals flushed (both are per-thread settings). A new
    thread starts with the count last set in the process (the policy's 1); it is set only where it differs, since
    ``torch.set_num_threads`` also changes process-wide settings (MKL's)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    torch.set_flush_denormal(True)


class FrozenRunner(EagerRunner):
    """A traced, frozen TorchScript graph of the module (``torch.jit.freeze`` + ``optimize_for_inference``: BN
    folded into the convolutions), channels_last, its weights and activations in float32 or bfloat16 (CPU only).

    The trace is of a (MICRO_BATCH, 3, H, W) input; the contract fixes H and W, and the batch size is free.
    """

    def __init__(
        self, module: nn.Module, contract: ModelContract, precision: str = "fp32", max_batch: int = 64,
        workers: int = 1,
    ) -> None:  # fmt: skip
        super().__init__(module, contract, precision, "cpu", max_batch, workers)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        h, w = contract.input_size
        example = torch.zeros(MICRO_BATCH, 3, h, w, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        graph_module = copy.deepcopy(self.module).eval().to(dtype=self.dtype)
        with torch.no_grad(), warnings.catch_warnings():
            # Shapes computed from the input size (TF-style "same" padding) become constants: H, W are fixed.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # TorchScript is deprecated from PyTorch 2.13 on; where it is gone, "auto" falls back to autocast.
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
    a model with a fixed batch size is run in chunks of that size, the last one padded.

    Args:
        session: an open ``onnxruntime.InferenceSession`` (:func:`open_session`).
        contract: how to feed it.
        path: the file, for messages.
        max_batch: most crops per call for a model with a dynamic batch.
        raw_input: the graph takes RGB pixels 0..255 and normalises them itself (``arcface export`` of a model
            whose normalisation is not insightface's default); else it takes the contract's normalised input.

    Raises:
        ValueError: the input is not a single 4-D image tensor with 3 channels, or its fixed spatial size differs
            from the contract's ``input_size``.
    """

    def __init__(
        self, session: Any, contract: ModelContract, path: str | Path = "<onnx>", max_batch: int = 64,
        *, raw_input: bool = False,
    ) -> None:  # fmt: skip
        self.session = session
        self.raw_input = bool(raw_input)
        self.contract = contract
        self.path = Path(path)
        self.input_name, self.layout, fixed_batch, hw = onnx_input_layout(session, path)
        if hw is not None and hw != contract.input_size:
            raise ValueError(f"{path}: model input is {hw[0]}x{hw[1]}, contract says {contract.input_size}")
        self.output_name = session.get_outputs()[0].name
        self.max_batch = int(max_batch) if fixed_batch is None else min(int(max_batch), fixed_batch)
        self._fixed_batch = fixed_batch

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if self.raw_input:  # RGB 0..255 as float: the graph does the rest
            x = np.ascontiguousarray(crops.astype(np.float32).transpose(0, 3, 1, 2) if self.layout == "NCHW" else
                                     crops.astype(np.float32))  # fmt: skip
        else:
            x = preprocess(crops, self.contract, self.layout)
        if self._fixed_batch is not None and len(x) != self._fixed_batch:  # a short last chunk
            pad = np.zeros((self._fixed_batch - len(x), *x.shape[1:]), np.float32)
            out = self.session.run([self.output_name], {self.input_name: np.concatenate([x, pad])})[0]
            return np.asarray(out, np.float32).reshape(self._fixed_batch, -1)[: len(x)]
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
            machine the spinning threads steal the cores from whatever runs next (torch, the detector), which
            halved the next path's throughput in ``bench/embed_speed.py``.

    Raises:
        ValueError: onnxruntime cannot load the file (the message names it and gives onnxruntime's first line).
    """
    import onnxruntime as ort  # optional dependency: only ONNX models need it

    options = ort.SessionOptions()
    options.log_severity_level = 3  # no "removing unused initializer" chatter
    options.intra_op_num_threads = int(threads or 0)
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as torch's flush_denormal above
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
