"""Fast CPU embedding: one model, the quickest execution path whose accuracy holds on this machine.

    >>> emb = Embedder.from_module(create_model("r50"), precision="auto")
    >>> emb.embed(crops)  # (N, 112, 112, 3) uint8 RGB -> (N, D) float32, unit rows

Paths (``precision`` x ``backend``):

=========  ===========  ===========================================================================
precision  backend      what runs
=========  ===========  ===========================================================================
fp32       torch        eager module, channels_last memory format (same numbers as the module)
bf16       torch        bfloat16 autocast + channels_last (needs native bf16 to be fast)
fp32       onnx         the module exported to ONNX (``export_onnx``), run by onnxruntime
=========  ===========  ===========================================================================

``precision="auto"`` is a small decision table, then one accuracy check:

1. CPU with native bf16 (avx512_bf16 / amx_bf16, :func:`arcface.engine.amp.cpu_has_native_bf16`):
   bf16 autocast + channels_last on torch.
2. otherwise, onnxruntime installed: onnxruntime float32.
3. otherwise: torch float32, channels_last.

The chosen path is run once on a calibration batch (real aligned faces if the caller passes
``calibration=``; otherwise a fixed synthetic batch) next to eager float32; if any embedding's cosine
to float32 falls below ``min_cosine`` (0.99) it falls back to float32 on the same backend family.
``backend="auto"`` means torch, except under rule 2. int8 (onnxruntime static quantisation) is not
implemented yet. Measured numbers: ``bench/embed_speed.py``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from arcface.inference.backends import Backend, OnnxBackend, TorchBackend, l2_normalise, preprocess

if TYPE_CHECKING:
    from torch import nn

    from arcface.inference.contract import ModelContract  # imports arcface.align (OpenCV): not at import time

__all__ = ["PRECISIONS", "BACKENDS", "Embedder", "resolve_auto"]

PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "onnx")
MIN_COSINE = 0.99


def _default_contract(module: nn.Module) -> ModelContract:
    """Our contract (RGB, (x - 127.5) / 127.5, 112x112) with the embedding size read from a forward pass."""
    import torch

    from arcface.inference.contract import ModelContract, weights_sha256

    with torch.inference_mode():
        dim = int(module(torch.zeros(1, 3, 112, 112)).reshape(1, -1).shape[1])
    return ModelContract(
        architecture=type(module).__name__.lower(),
        embedding_size=dim,
        weights_sha256=weights_sha256(module.state_dict()),
        source="Embedder.from_module (our contract assumed)",
    )


def resolve_auto(precision: str, backend: str) -> tuple[str, str]:
    """The decision table of the module docstring: (precision, backend) before the accuracy check."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    from arcface.engine.amp import cpu_has_native_bf16

    if precision == "bf16" and backend == "onnx":
        raise ValueError("bf16 runs on the torch backend only")
    if precision == "auto":
        if backend in ("auto", "torch") and cpu_has_native_bf16():
            return "bf16", "torch"
        if backend == "auto":
            backend = "onnx" if _has_onnxruntime() else "torch"
        return "fp32", backend
    if backend == "auto":
        backend = "torch"
    return precision, backend


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _synthetic_crops(n: int = 8, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    """A fixed batch of smooth random uint8 images, for the accuracy check when no faces are given."""
    rng = np.random.default_rng(0)
    h, w = size
    small = rng.integers(0, 256, (n, h // 8, w // 8, 3)).astype(np.float32)
    big = small.repeat(8, axis=1).repeat(8, axis=2)  # blocky, then blurred a little by averaging shifts
    big = (big + np.roll(big, 4, axis=1) + np.roll(big, 4, axis=2) + np.roll(big, 4, axis=(1, 2))) / 4
    return np.clip(big, 0, 255).astype(np.uint8)


def _quiet_session(path: Path, threads: int | None):
    """An onnxruntime session whose idle worker threads do not spin.

    By default onnxruntime's intra-op threads busy-wait after each run; on a 2-core machine that steals
    the cores from whatever runs next (torch, the detector) and halved the next path's throughput in
    ``bench/embed_speed.py``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = int(threads or 0)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _FastTorch(TorchBackend):
    """TorchBackend with channels_last and optional bfloat16 autocast."""

    def __init__(self, module: nn.Module, contract: ModelContract, precision: str, batch_size: int) -> None:
        import torch

        super().__init__(module, contract, batch_size=batch_size)
        self.module = self.module.to(memory_format=torch.channels_last)
        self.precision = precision

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(preprocess(crops, self.contract, "NHWC")).permute(0, 3, 1, 2)  # (n, 3, H, W) NHWC-strided
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            emb = self.module(x)  # (n, D)
        return emb.float().numpy()


class Embedder:
    """Aligned crops in, L2-normalised float32 embeddings out, by the fastest verified path.

    Build with :meth:`from_module` or :meth:`from_pretrained`. Attributes: ``precision`` and ``backend``
    (the path actually used), ``contract``, ``min_cosine_checked`` (cosine of the chosen path to float32
    on the calibration batch; 1.0 for float32 itself, None for a foreign ONNX model).
    """

    def __init__(self, engine: Backend, precision: str, backend: str, min_cosine_checked: float | None) -> None:
        self._engine = engine
        self.precision = precision
        self.backend = backend
        self.min_cosine_checked = min_cosine_checked
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    @property
    def contract(self) -> ModelContract:
        return self._engine.contract

    @property
    def embedding_size(self) -> int:
        return self._engine.embedding_size

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
    ) -> Embedder:
        """Wrap a backbone taking (B, 3, H, W) float input.

        Args:
            module: the backbone (put in eval mode on the CPU; it is not copied, channels_last is applied in place).
            precision: "auto", "fp32" or "bf16".
            backend: "auto", "torch" or "onnx".
            contract: how to feed it; None assumes ours (RGB, (x - 127.5) / 127.5, 112x112).
            calibration: (N, H, W, 3) uint8 aligned faces for the accuracy check of "auto".
            min_cosine: the least cosine to float32 the "auto" path must keep.
            batch_size: most crops per forward pass.
            threads: torch/onnxruntime threads (None: leave torch's setting, onnxruntime's default).
        """
        import torch

        module = module.eval().cpu()
        contract = contract or _default_contract(module)
        auto = precision == "auto"
        prec, back = resolve_auto(precision, backend)
        if threads:
            torch.set_num_threads(int(threads))
        emb = cls._build(module, contract, prec, back, batch_size, threads)
        checked = 1.0 if prec == "fp32" else None
        if auto and (prec, back) != ("fp32", "torch"):
            crops = calibration if calibration is not None else _synthetic_crops(8, contract.input_size)
            ref = TorchBackend(module, contract, batch_size=batch_size).embed_crops(crops)
            checked = float((emb.embed(crops) * ref).sum(1).min())
            if checked < min_cosine:
                warnings.warn(
                    f"{prec}/{back} keeps cosine {checked:.4f} < {min_cosine} to float32; using float32",
                    stacklevel=2,
                )
                emb = cls._build(module, contract, "fp32", back, batch_size, threads)
                checked = 1.0
        emb.min_cosine_checked = checked
        return emb

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike = "default", precision: str = "auto", backend: str = "auto", **kwargs
    ) -> Embedder:
        """A zoo model (see :func:`arcface.inference.zoo.load_backend`) on the fastest verified path.

        Torch models go through :meth:`from_module` with their own contract (``kwargs`` as there);
        ONNX files run in onnxruntime float32 as they are (``precision`` must be "auto" or "fp32").
        """
        from arcface.inference.zoo import load_backend

        loaded = load_backend(name_or_path)
        if isinstance(loaded, TorchBackend):
            return cls.from_module(loaded.module, precision, backend, contract=loaded.contract, **kwargs)
        if precision not in ("auto", "fp32") or backend not in ("auto", "onnx"):
            raise ValueError(f"{name_or_path} is an ONNX model: only precision fp32 on backend onnx")
        return cls(loaded, "fp32", "onnx", None)

    @classmethod
    def _build(
        cls, module: nn.Module, contract: ModelContract, precision: str, backend: str, batch_size: int, threads
    ) -> Embedder:
        if backend == "torch":
            return cls(_FastTorch(module, contract, precision, batch_size), precision, "torch", None)
        from arcface.inference.export import export_onnx

        tmp = tempfile.TemporaryDirectory(prefix="arcface-embedder-")
        path = Path(tmp.name) / "model.onnx"
        export_onnx(module, contract, path, check=False)
        engine = OnnxBackend(path, contract, batch_size=batch_size, session=_quiet_session(path, threads))
        emb = cls(engine, precision, "onnx", None)
        emb._tmpdir = tmp  # the file lives as long as the embedder
        return emb

    def embed(self, batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB aligned crops -> (N, D) float32, unit L2 rows."""
        return l2_normalise(self._engine.embed_crops(batch))

    __call__ = embed

    def __repr__(self) -> str:
        c = self.contract
        return f"Embedder({c.architecture}, {c.embedding_size}-D, {self.precision}/{self.backend})"
