"""The one inference engine: aligned crops in, L2-normalised embeddings out, by the fastest verified path.

    >>> emb = load_model("default")                      # arcface.inference.loader: name or file -> Embedder
    >>> emb = Embedder.from_module(create_model("r50"))  # or a torch backbone in memory
    >>> emb.embed(crops)               # (N, 112, 112, 3) uint8 RGB -> (N, D) float32, unit rows
    >>> emb.embed(crops, flip=True)    # flip-test fusion: f(x) + f(hflip(x)), then normalised

Everything that embeds (the face pipeline, evaluation, the gallery and the service, the batch jobs) talks to an
Embedder; what runs inside it is a :mod:`runner <arcface.inference.runners>`. Paths (``precision`` x ``backend``)
for torch models on the CPU:

=========  ===========  ===========================================================================
precision  backend      what runs
=========  ===========  ===========================================================================
fp32       torch        eager module, channels_last memory format (same numbers as the module); on the CPU the
                        16-crop passes of a batch run side by side on the thread policy's threads
bf16       torch        bfloat16 autocast + channels_last (needs native bf16 to be fast)
fp32       jit          the module traced, frozen and ``optimize_for_inference``-d (TorchScript: BN folded
                        into the convolutions), channels_last
bf16       jit          the same graph with bfloat16 weights and activations (needs native bf16)
fp32       onnx         the module exported to ONNX (``export_onnx``), run by onnxruntime
=========  ===========  ===========================================================================

ONNX files run float32 in onnxruntime; torch models on another device ("cuda") run float32 eagerly.

``precision="auto"`` is a small decision table, then one accuracy check:

1. CPU with native bf16 (avx512_bf16 / amx_bf16, :func:`arcface.runtime.amp.cpu_has_native_bf16`):
   bf16 on the frozen graph (``jit``; ``backend="torch"`` asks for autocast instead). Where tracing fails
   (a module with data-dependent control flow) it warns and uses bf16 autocast.
2. otherwise: torch float32, channels_last, the passes side by side on the policy's threads. (Until issue 18's
   follow-up it was onnxruntime float32; on the 2-core Ice Lake Xeon, the default model, 128 crops, one run:
   onnxruntime with 2 threads 93-103 crops/s, torch side by side 172-201, torch with a 2-thread team 122-169.)

The chosen path is run once on a calibration batch (real aligned faces if the caller passes
``calibration=``; otherwise a fixed synthetic batch) next to eager float32; if any embedding's cosine
to float32 falls below ``min_cosine`` (0.99) it falls back to float32 on the same backend family. The cosines
are computed in float64 from the raw outputs, so an output whose float32 norm overflows (an untrained
network's) cannot fake a disagreement. ``backend="auto"`` with an explicit precision means torch; with
``precision="auto"`` it follows the table (``backend="onnx"`` asks for onnxruntime float32). int8
(onnxruntime static quantisation) fell below cosine 0.99 and is not offered; ``torch.compile`` was measured no
faster than the frozen graph and costs 10-16 s per model to build. Measured numbers: ``bench/embed_speed.py``
(``--graph`` for jit.freeze and torch.compile side by side).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arcface.inference.contract import CONTRACT_KEY, ModelContract, weights_sha256
from arcface.inference.export import export_onnx
from arcface.inference.runners import EagerRunner, FrozenRunner, OnnxRunner, Runner, l2_normalise, open_session
from arcface.runtime import amp
from arcface.runtime import threads as thread_policy
from arcface.runtime.paths import cache_dir

__all__ = ["BACKENDS", "MIN_COSINE", "PRECISIONS", "Embedder", "check_names", "resolve_auto"]

PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "jit", "onnx")
MIN_COSINE = 0.99


def check_names(precision: str, backend: str) -> None:
    """Raise ValueError naming the choices when ``precision`` or ``backend`` is not a known name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_auto(precision: str, backend: str) -> tuple[str, str]:
    """The decision table of the module docstring: (precision, backend) before the accuracy check."""
    check_names(precision, backend)
    if precision == "bf16" and backend == "onnx":
        raise ValueError("bf16 runs on the torch backend only")
    if precision == "auto":
        if backend in ("auto", "torch", "jit") and amp.cpu_has_native_bf16():
            return "bf16", "jit" if backend == "auto" else backend
        return "fp32", "torch" if backend == "auto" else backend
    if backend == "auto":
        backend = "torch"
    return precision, backend


def _default_contract(module: nn.Module) -> ModelContract:
    """Our contract (RGB, (x - 127.5) / 127.5, 112x112) with the embedding size read from a forward pass."""
    with torch.inference_mode():
        dim = int(module(torch.zeros(1, 3, 112, 112)).reshape(1, -1).shape[1])
    return ModelContract(
        architecture=type(module).__name__.lower(),
        embedding_size=dim,
        weights_sha256=weights_sha256(module.state_dict()),
        source="Embedder.from_module (our contract assumed)",
    )


def _onnx_graph(module: nn.Module, contract: ModelContract) -> Path:
    """The module's ONNX graph for the onnxruntime path, exported once per weights and kept in the cache folder
    (``arcface.runtime.paths.cache_dir``): building the Embedder then costs a file read instead of an export. The
    file is keyed by the contract id (weights digest included) and checked by its metadata; a damaged or foreign file
    is exported again."""
    path = cache_dir("onnx", f"{contract.id}-{weights_sha256(module.state_dict())[:16]}.onnx")
    if path.is_file():
        try:
            meta = dict(open_session(path).get_modelmeta().custom_metadata_map)
            if json.loads(meta.get(CONTRACT_KEY, "{}")).get("id") == contract.id:
                return path
        except (ValueError, OSError):
            pass  # a torn or foreign file: export again
    try:
        export_onnx(module, contract, path, check=False, normalize_inside=False)
    except OSError:  # a read-only cache folder: export to a temporary one that lives with the process
        tmp = Path(tempfile.mkdtemp(prefix="arcface-embedder-")) / path.name
        export_onnx(module, contract, tmp, check=False, normalize_inside=False)
        return tmp
    return path


def _synthetic_crops(n: int = 8, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    """A fixed batch of smooth random uint8 images, for the accuracy check when no faces are given."""
    rng = np.random.default_rng(0)
    h, w = size
    small = rng.integers(0, 256, (n, h // 8, w // 8, 3)).astype(np.float32)
    big = small.repeat(8, axis=1).repeat(8, axis=2)  # blocky, then blurred a little by averaging shifts
    big = (big + np.roll(big, 4, axis=1) + np.roll(big, 4, axis=2) + np.roll(big, 4, axis=(1, 2))) / 4
    return np.clip(big, 0, 255).astype(np.uint8)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine of two (N, D) raw output arrays, in float64 (no overflow, no rounding games)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.maximum(np.abs(a).max(axis=1, keepdims=True), 1e-300)  # scale first: squares of huge outputs stay finite
    a, b = a / scale, b / np.maximum(np.abs(b).max(axis=1, keepdims=True), 1e-300)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return float(cos.min())


class Embedder:
    """Aligned crops in, L2-normalised float32 embeddings out.

    Build one with :func:`arcface.inference.loader.load_model` (a model name or file), :meth:`from_module` (a torch
    backbone) or :meth:`from_onnx` (an ONNX session).

    Args:
        runner: what runs the forward pass.
        precision: "fp32" or "bf16", the precision that runs.
        backend: "torch", "jit" or "onnx", the backend that runs.
        min_cosine_checked: the chosen path's least cosine to float32 on the calibration batch (1.0 for float32
            itself, None where nothing was checked, e.g. a foreign ONNX file).
        flip: flip-test fusion default of :meth:`embed`.
        batch_size: most crops per runner call.

    Attributes:
        contract: the model's contract (embeddings of equal ``contract.id`` are comparable).
        module: the torch backbone (float32, eval mode) for torch models, else None (e.g. for export).
    """

    def __init__(
        self,
        runner: Runner,
        precision: str,
        backend: str,
        *,
        min_cosine_checked: float | None = None,
        flip: bool = False,
        batch_size: int = 64,
        module: nn.Module | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.runner = runner
        self.precision = precision
        self.backend = backend
        self.min_cosine_checked = min_cosine_checked
        self.flip = bool(flip)
        self.batch_size = min(int(batch_size), runner.max_batch)
        self.module = module

    @property
    def contract(self) -> ModelContract:
        return self.runner.contract

    @property
    def embedding_size(self) -> int:
        """D, the length of one embedding."""
        return self.contract.embedding_size

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the crops it takes."""
        return self.contract.input_size

    # ----------------------------------------------------------------------------------------------
    # Building

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        precision: str = "auto",
        backend: str = "auto",
        *,
        contract: ModelContract | None = None,
        calibration: np.ndarray | None = None,
        min_cosine: float = MIN_COSINE,
        batch_size: int = 64,
        threads: int | None = None,
        flip: bool = False,
        device: str = "cpu",
    ) -> Embedder:
        """Wrap a backbone taking (B, 3, H, W) float input.

        Args:
            module: the backbone (put in eval mode on ``device``; it is not copied, channels_last is applied in place).
            precision: "auto", "fp32" or "bf16".
            backend: "auto", "torch", "jit" or "onnx".
            contract: how to feed it; None assumes ours (RGB, (x - 127.5) / 127.5, 112x112).
            calibration: (N, H, W, 3) uint8 aligned faces for the accuracy check of "auto".
            min_cosine: the least cosine to float32 the "auto" path must keep.
            batch_size: most crops per forward pass.
            threads: CPUs it may use (the threads its torch passes run on side by side, onnxruntime's threads); None:
                the thread policy's choice for the "embed" workload (:mod:`arcface.runtime.threads`). Sets this
                process's torch intra-op threads (on the CPU: 1).
            flip: flip-test fusion default of :meth:`embed` (the accuracy check runs without it).
            device: "cpu", or another torch device, where the module runs float32 eagerly.

        Raises:
            ValueError: an unknown precision or backend name, bf16 asked of the onnx backend, or a fast path asked
                of a module on another device.
        """
        check_names(precision, backend)  # before any work: a bad name fails fast
        module = module.eval()
        contract = contract or _default_contract(module.cpu() if device == "cpu" else module)
        if torch.device(device).type != "cpu":
            if precision not in ("auto", "fp32") or backend not in ("auto", "torch"):
                raise ValueError(
                    f"on device {device} the model runs as it is: only precision fp32 on backend torch, "
                    f"got {precision}/{backend}"
                )
            runner = EagerRunner(module, contract, "fp32", device, batch_size)
            return cls(runner, "fp32", "torch", flip=flip, batch_size=batch_size, module=module)
        prec, back = resolve_auto(precision, backend)
        module = module.cpu()
        auto = precision == "auto"
        plan = thread_policy.configure("embed", threads=threads)
        try:
            emb = cls._build(module, contract, prec, back, batch_size, plan)
        except Exception as e:  # "auto" picked onnx or jit, but the export / trace failed (odd module, no onnx)
            if not (auto and back in ("onnx", "jit")):
                raise
            what = "onnx export" if back == "onnx" else "tracing the module"
            prec = "fp32" if back == "onnx" else prec
            warnings.warn(f"{what} failed ({type(e).__name__}: {e}); using torch {prec}", stacklevel=2)
            back = "torch"
            emb = cls._build(module, contract, prec, back, batch_size, plan)
        checked = 1.0 if prec == "fp32" else None
        if auto and (prec, back) != ("fp32", "torch"):
            crops = calibration if calibration is not None else _synthetic_crops(8, contract.input_size)
            reference = EagerRunner(module, contract, "fp32", "cpu", batch_size)
            checked = _min_cosine(emb.runner(crops), reference(crops))
            if checked < min_cosine:
                warnings.warn(
                    f"{prec}/{back} keeps cosine {checked:.4f} < {min_cosine} to float32; using float32",
                    stacklevel=2,
                )
                emb = cls._build(module, contract, "fp32", back, batch_size, plan)
                checked = 1.0
        emb.min_cosine_checked = checked
        emb.flip = flip
        return emb

    @classmethod
    def _build(
        cls, module: nn.Module, contract: ModelContract, precision: str, backend: str, batch_size: int,
        plan: thread_policy.ThreadPlan,
    ) -> Embedder:  # fmt: skip
        if backend == "torch":
            runner: Runner = EagerRunner(module, contract, precision, "cpu", batch_size, plan.workers)
        elif backend == "jit":
            runner = FrozenRunner(module, contract, precision, batch_size, plan.workers)
        else:
            path = _onnx_graph(module, contract)
            runner = OnnxRunner(open_session(path, threads=plan.onnx_threads), contract, path, batch_size)
        return cls(runner, precision, backend, batch_size=batch_size, module=module)

    @classmethod
    def from_onnx(
        cls,
        session: Any,
        contract: ModelContract,
        *,
        path: str | Path = "<onnx>",
        precision: str = "auto",
        backend: str = "auto",
        flip: bool = False,
        batch_size: int = 64,
        raw_input: bool = False,
    ) -> Embedder:
        """An ONNX model in onnxruntime, run float32 as it is (``raw_input``: the graph normalises RGB 0..255 itself).

        Raises:
            ValueError: a precision other than auto/fp32 or a backend other than auto/onnx.
        """
        check_names(precision, backend)
        if precision not in ("auto", "fp32") or backend not in ("auto", "onnx"):
            raise ValueError(f"{path} is an ONNX model: only precision fp32 on backend onnx, got {precision}/{backend}")
        runner = OnnxRunner(session, contract, path, batch_size, raw_input=raw_input)
        return cls(runner, "fp32", "onnx", flip=flip, batch_size=batch_size)

    # ----------------------------------------------------------------------------------------------
    # Embedding

    def embed(self, batch: np.ndarray | Sequence[np.ndarray], flip: bool | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB aligned crops -> (N, D) float32, unit L2 rows.

        Args:
            batch: the crops (a sequence of (H, W, 3) crops, or one crop as N = 1, also do), (H, W) the contract's
                ``input_size``.
            flip: flip-test fusion, ``f(x) + f(hflip(x))`` then normalised (DESIGN.md); None uses :attr:`flip`.

        Raises:
            ValueError: crops of the wrong shape or dtype.
        """
        crops = self._check(batch)
        flip = self.flip if flip is None else bool(flip)
        if len(crops) == 0:
            return np.zeros((0, self.embedding_size), np.float32)
        out = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            emb = self.runner(chunk).astype(np.float64)  # (n, D) raw
            if flip:
                emb = emb + self.runner(np.ascontiguousarray(chunk[:, :, ::-1]))
            out.append(emb)
        emb = np.concatenate(out).reshape(len(crops), -1)
        if emb.shape[1] != self.embedding_size:
            raise ValueError(f"model gave {emb.shape[1]}-D embeddings but its contract says {self.embedding_size}-D")
        return l2_normalise(emb)

    __call__ = embed

    def _check(self, crops: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        h, w = self.input_size
        if not isinstance(crops, np.ndarray):
            items = [np.asarray(c) for c in crops]
            if any(c.shape != items[0].shape for c in items):
                raise ValueError(f"crops must all be ({h}, {w}, 3), got shapes {sorted({c.shape for c in items})}")
            crops = np.stack(items) if items else np.zeros((0, h, w, 3), np.uint8)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.ndim != 4 or crops.shape[1:] != (h, w, 3) or crops.dtype != np.uint8:
            raise ValueError(
                f"crops must be (N, {h}, {w}, 3) uint8 RGB aligned faces, got shape {crops.shape} dtype {crops.dtype}"
            )
        return crops

    def __repr__(self) -> str:
        c = self.contract
        flip = ", flip" if self.flip else ""
        return f"Embedder({c.architecture}, {c.embedding_size}-D, {self.precision}/{self.backend}{flip})"
