"""Fast CPU embedding: one model, the quickest execution path whose accuracy holds on this machine.

    >>> emb = Embedder.from_module(create_model("r50"), precision="auto")
    >>> emb.embed(crops)  # (N, 112, 112, 3) uint8 RGB -> (N, D) float32, unit rows
    >>> emb.embed(crops, flip=True)  # flip-test fusion: f(x) + f(hflip(x)), then normalised

Paths (``precision`` x ``backend``):

=========  ===========  ===========================================================================
precision  backend      what runs
=========  ===========  ===========================================================================
fp32       torch        eager module, channels_last memory format (same numbers as the module)
bf16       torch        bfloat16 autocast + channels_last (needs native bf16 to be fast)
fp32       jit          the module traced, frozen and ``optimize_for_inference``-d (TorchScript: BN folded
                        into the convolutions), channels_last
bf16       jit          the same graph with bfloat16 weights and activations (needs native bf16)
fp32       onnx         the module exported to ONNX (``export_onnx``), run by onnxruntime
=========  ===========  ===========================================================================

Every torch path runs at most :data:`MICRO_BATCH` crops per forward pass and turns on the process's allocator
setting (:func:`arcface.runtime.memory.retain_freed_memory`).

``precision="auto"`` is a small decision table, then one accuracy check:

1. CPU with native bf16 (avx512_bf16 / amx_bf16, :func:`arcface.runtime.amp.cpu_has_native_bf16`):
   bf16 on the frozen graph (``jit``; ``backend="torch"`` asks for autocast instead). Where tracing fails
   (a module with data-dependent control flow) it warns and uses bf16 autocast.
2. otherwise, onnxruntime installed: onnxruntime float32.
3. otherwise: torch float32, channels_last.

The chosen path is run once on a calibration batch (real aligned faces if the caller passes
``calibration=``; otherwise a fixed synthetic batch) next to eager float32; if any embedding's cosine
to float32 falls below ``min_cosine`` (0.99) it falls back to float32 on the same backend family.
``backend="auto"`` with an explicit precision means torch; with ``precision="auto"`` it follows the table
(where the ONNX export fails under rule 2: torch float32). int8 (onnxruntime static quantisation) fell below
cosine 0.99 and is not offered; ``torch.compile`` was measured no faster than the frozen graph and costs
10-16 s per model to build. Measured numbers: ``bench/embed_speed.py`` (``--graph`` for jit.freeze and
torch.compile side by side).
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

from arcface.inference.backends import Backend, OnnxBackend, TorchBackend, preprocess

if TYPE_CHECKING:
    from torch import nn

    from arcface.inference.contract import ModelContract  # imports arcface.align (OpenCV): not at import time

__all__ = ["PRECISIONS", "BACKENDS", "Embedder", "check_names", "resolve_auto"]

PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "jit", "onnx")
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


def check_names(precision: str, backend: str) -> None:
    """Raise ValueError naming the choices when ``precision`` or ``backend`` is not a known name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_auto(precision: str, backend: str) -> tuple[str, str]:
    """The decision table of the module docstring: (precision, backend) before the accuracy check."""
    check_names(precision, backend)
    from arcface.runtime.amp import cpu_has_native_bf16

    if precision == "bf16" and backend == "onnx":
        raise ValueError("bf16 runs on the torch backend only")
    if precision == "auto":
        if backend in ("auto", "torch", "jit") and cpu_has_native_bf16():
            return "bf16", "jit" if backend == "auto" else backend
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


#: Most crops per forward pass of the fast torch paths: bounds activation memory whatever the batch. With the
#: allocator setting (arcface.runtime.memory) 16 was 1-7% quicker per crop than 32 or 64 (bench/allocator.py);
#: without it, larger passes allocate activations past glibc's mmap threshold and page-fault them every pass.
MICRO_BATCH = 16


class _FastTorch(TorchBackend):
    """TorchBackend with channels_last, optional bfloat16 autocast and cache-sized forward passes."""

    def __init__(self, module: nn.Module, contract: ModelContract, precision: str, batch_size: int) -> None:
        import torch

        from arcface.runtime.memory import retain_freed_memory

        super().__init__(module, contract, batch_size=batch_size)
        self.module = self.module.to(memory_format=torch.channels_last)
        self.precision = precision
        retain_freed_memory()  # reuse freed activations instead of page-faulting them afresh every pass

    def _run(self, x):
        """One pass of at most MICRO_BATCH crops: (n, 3, H, W) NHWC-strided float32 -> (n, D)."""
        import torch

        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        with ctx:
            return self.module(x)

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(preprocess(crops, self.contract, "NHWC")).permute(0, 3, 1, 2)  # (n, 3, H, W) NHWC-strided
        with torch.inference_mode():
            parts = [self._run(x[i : i + MICRO_BATCH]).float() for i in range(0, len(x), MICRO_BATCH)]  # (<=16, D)
        return torch.cat(parts).numpy()


class _FrozenTorch(_FastTorch):
    """A traced, frozen TorchScript graph of the module (``torch.jit.freeze`` + ``optimize_for_inference``: BN
    folded into the convolutions), channels_last, its weights and activations in float32 or bfloat16.

    The trace is of a (MICRO_BATCH, 3, H, W) input; the contract fixes H and W, and the batch size is free.
    """

    def __init__(self, module: nn.Module, contract: ModelContract, precision: str, batch_size: int) -> None:
        import copy

        import torch

        super().__init__(module, contract, precision, batch_size)
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

    def _run(self, x):
        return self.graph(x.to(self.dtype))


class Embedder:
    """Aligned crops in, L2-normalised float32 embeddings out, by the fastest verified path.

    Build with :meth:`from_module`, :meth:`from_pretrained` or (a ready backend, run as it is)
    :meth:`from_backend`. Attributes: ``precision`` and ``backend`` (the path actually used), ``contract``,
    ``flip`` (flip-test fusion default of :meth:`embed`), ``engine`` (the :class:`Backend` that runs),
    ``min_cosine_checked`` (cosine of the chosen path to float32 on the calibration batch; 1.0 for float32
    itself, None for a model run as it is, e.g. a foreign ONNX file).

    It has a backend's interface too (``embed_crops``, ``contract``, ``embedding_size``, ``input_size``,
    ``flip``), so the evaluation and ``FaceRecognizer`` take either.
    """

    def __init__(self, engine: Backend, precision: str, backend: str, min_cosine_checked: float | None) -> None:
        self._engine = engine
        self.precision = precision
        self.backend = backend
        self.min_cosine_checked = min_cosine_checked
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    @property
    def engine(self) -> Backend:
        """The backend that runs the chosen path (its ``embed_crops`` gives the same numbers as :meth:`embed`)."""
        return self._engine

    @property
    def contract(self) -> ModelContract:
        return self._engine.contract

    @property
    def embedding_size(self) -> int:
        return self._engine.embedding_size

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the crops it takes."""
        return self._engine.input_size

    @property
    def flip(self) -> bool:
        """Flip-test fusion of :meth:`embed` when its ``flip`` is None: ``f(x) + f(hflip(x))``, then normalised."""
        return self._engine.flip

    @flip.setter
    def flip(self, value: bool) -> None:
        self._engine.flip = bool(value)

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
    ) -> Embedder:
        """Wrap a backbone taking (B, 3, H, W) float input.

        Args:
            module: the backbone (put in eval mode on the CPU; it is not copied, channels_last is applied in place).
            precision: "auto", "fp32" or "bf16".
            backend: "auto", "torch", "jit" or "onnx".
            contract: how to feed it; None assumes ours (RGB, (x - 127.5) / 127.5, 112x112).
            calibration: (N, H, W, 3) uint8 aligned faces for the accuracy check of "auto".
            min_cosine: the least cosine to float32 the "auto" path must keep.
            batch_size: most crops per forward pass.
            threads: torch/onnxruntime threads (None: leave torch's setting, onnxruntime's default).
            flip: flip-test fusion default of :meth:`embed` (the accuracy check runs without it).

        Raises:
            ValueError: an unknown precision or backend name, or bf16 asked of the onnx backend.
        """
        import torch

        prec, back = resolve_auto(precision, backend)  # before any work: a bad name fails fast
        module = module.eval().cpu()
        contract = contract or _default_contract(module)
        auto = precision == "auto"
        if threads:
            torch.set_num_threads(int(threads))
        try:
            emb = cls._build(module, contract, prec, back, batch_size, threads)
        except Exception as e:  # "auto" picked onnx or jit, but the export / trace failed (odd module, no onnx)
            if not (auto and back in ("onnx", "jit")):
                raise
            what = "onnx export" if back == "onnx" else "tracing the module"
            prec = "fp32" if back == "onnx" else prec
            warnings.warn(f"{what} failed ({type(e).__name__}: {e}); using torch {prec}", stacklevel=2)
            back = "torch"
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
        emb.flip = flip
        return emb

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "default",
        precision: str = "auto",
        backend: str = "auto",
        *,
        flip: bool = False,
        device: str = "cpu",
        batch_size: int = 64,
        arch: str | None = None,
        options: dict | None = None,
        preset: str | None = None,
        contract: ModelContract | None = None,
        providers: Sequence[str] | None = None,
        **kwargs,
    ) -> Embedder:
        """A zoo model (see :func:`arcface.inference.zoo.load_backend`) on the fastest verified path.

        Torch models on the CPU go through :meth:`from_module` with their own contract (``kwargs`` as there:
        ``calibration``, ``min_cosine``, ``threads``). Models the Embedder cannot speed up run float32 on their
        own backend, as :func:`load_backend` builds them: ONNX files (onnxruntime; ``precision`` must be "auto"
        or "fp32", ``backend`` "auto" or "onnx") and torch models on another device ("cuda"; backend "torch").

        Args:
            name_or_path: model name or file.
            precision: "auto", "fp32" or "bf16".
            backend: "auto", "torch", "jit" or "onnx".
            flip: flip-test fusion default of :meth:`embed`.
            device, batch_size, arch, options, preset, contract, providers: as :func:`load_backend`.

        Raises:
            ValueError: an unknown precision or backend name, or one the model cannot run (the message says which).
            FileNotFoundError: as :func:`load_backend`.
        """
        from arcface.inference.zoo import load_backend

        check_names(precision, backend)  # before loading anything
        loaded = load_backend(
            name_or_path, arch=arch, options=options, preset=preset, contract=contract, device=device,
            providers=providers, batch_size=batch_size, flip=flip,
        )  # fmt: skip
        if isinstance(loaded, TorchBackend):
            if loaded.device.type == "cpu":
                return cls.from_module(
                    loaded.module, precision, backend, contract=loaded.contract, batch_size=batch_size, flip=flip,
                    **kwargs,
                )  # fmt: skip
            if precision not in ("auto", "fp32") or backend not in ("auto", "torch"):
                raise ValueError(
                    f"on device {device} the model runs as it is: only precision fp32 on backend torch, "
                    f"got {precision}/{backend}"
                )
            return cls(loaded, "fp32", "torch", None)
        if precision not in ("auto", "fp32") or backend not in ("auto", "onnx"):
            raise ValueError(
                f"{name_or_path} is an ONNX model: only precision fp32 on backend onnx, got {precision}/{backend}"
            )
        return cls(loaded, "fp32", "onnx", None)

    @classmethod
    def from_backend(cls, engine: Backend) -> Embedder:
        """A ready backend, run as it is (float32 unless it says otherwise, e.g. a bf16 engine of an Embedder)."""
        if isinstance(engine, Embedder):
            return engine
        if not isinstance(engine, Backend):
            raise TypeError(f"expected an arcface Backend or Embedder, got {type(engine).__name__}")
        kind = "onnx" if isinstance(engine, OnnxBackend) else "torch"
        return cls(engine, str(getattr(engine, "precision", "fp32")), kind, None)

    @classmethod
    def _build(
        cls, module: nn.Module, contract: ModelContract, precision: str, backend: str, batch_size: int, threads
    ) -> Embedder:
        if backend == "torch":
            return cls(_FastTorch(module, contract, precision, batch_size), precision, "torch", None)
        if backend == "jit":
            return cls(_FrozenTorch(module, contract, precision, batch_size), precision, "jit", None)
        from arcface.inference.export import export_onnx

        tmp = tempfile.TemporaryDirectory(prefix="arcface-embedder-")
        path = Path(tmp.name) / "model.onnx"
        export_onnx(module, contract, path, check=False)
        engine = OnnxBackend(path, contract, batch_size=batch_size, session=_quiet_session(path, threads))
        emb = cls(engine, precision, "onnx", None)
        emb._tmpdir = tmp  # the file lives as long as the embedder
        return emb

    def embed(self, batch: np.ndarray | Sequence[np.ndarray], flip: bool | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB aligned crops -> (N, D) float32, unit L2 rows.

        Args:
            batch: the crops (a sequence of (H, W, 3) crops, or one crop as N = 1, also do).
            flip: flip-test fusion, ``f(x) + f(hflip(x))`` then normalised (DESIGN.md); None uses :attr:`flip`.
        """
        return self._engine.embed_crops(batch, flip=flip)

    embed_crops = embed
    __call__ = embed

    def __repr__(self) -> str:
        c = self.contract
        flip = ", flip" if self.flip else ""
        return f"Embedder({c.architecture}, {c.embedding_size}-D, {self.precision}/{self.backend}{flip})"
