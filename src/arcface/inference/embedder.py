"""The one inference engine: aligned crops in, L2-normalised embeddings out, by the fastest verified path.

    >>> emb = load_model("default")                      # arcface.inference.loader: name or file -> Embedder
    >>> emb = Embedder.from_module(create_model("r50"))  # or a torch backbone in memory
    >>> emb.embed(crops)               # (N, 112, 112, 3) uint8 RGB -> (N, D) float32, unit rows
    >>> emb.embed(crops, flip=True)    # flip-test fusion: f(x) + f(hflip(x)), then normalised

Everything that embeds (the face pipeline, evaluation, the trainer's evaluation hook, the gallery and the service, the
batch jobs) talks to an Embedder; what runs inside it is a :mod:`runner <arcface.inference.runners>`. The Embedder is
the one place that splits a call into forward passes (:attr:`Embedder.pass_size` crops each) and, for runners that
allow it, runs the passes side by side on :attr:`Embedder.pass_threads` threads of one intra-op thread each
(parallelism across crops rather than an OpenMP team per operator, which stalls whenever another process takes one of
its cores).

Paths (``precision`` x ``backend``) for torch models on the CPU:

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

ONNX files run float32 in onnxruntime; torch models on another device ("cuda") run float32 eagerly.

Which runner is built is decided by :func:`choose_runner`, a pure function of the model kind, the precision and
backend asked for, the device and the CPU's features. For ``precision="auto"`` on the CPU:

1. CPU with native bf16 (avx512_bf16 / amx_bf16, :func:`arcface.runtime.amp.cpu_has_native_bf16`):
   bf16 on the frozen graph (``jit``; ``backend="torch"`` asks for autocast instead); where tracing fails (a module
   TorchScript cannot trace, or a PyTorch without TorchScript) bf16 autocast is built instead, with a warning.
2. otherwise: torch float32, channels_last, the passes side by side.

A path other than eager float32 chosen by "auto" is run once on a calibration batch (real aligned faces if the caller
passes ``calibration=``; otherwise a fixed synthetic batch) next to eager float32; if any embedding's cosine to
float32 falls below ``min_cosine`` (0.99) the float32 runner of the same backend is built instead, with a warning.
The cosines are computed in float64 from the raw outputs, so an output whose float32 norm overflows (an untrained
network's) cannot fake a disagreement. ``backend="auto"`` with an explicit precision means torch; with
``precision="auto"`` it follows the table (``backend="onnx"`` asks for onnxruntime float32). int8 (onnxruntime
static quantisation) fell below cosine 0.99 and is not offered; ``torch.compile`` was no faster than the frozen graph
and takes long to build per model (``bench/embed_speed.py`` compares the paths).

The Embedder changes no process-wide setting: the entry point that decided the thread plan applied it
(:func:`arcface.runtime.threads.apply`); ``load_model`` and :meth:`Embedder.from_module` are such entry points when
no ``plan`` is handed to them.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

__all__ = [
    "BACKENDS",
    "MIN_COSINE",
    "PRECISIONS",
    "Embedder",
    "RunnerChoice",
    "check_names",
    "choose_runner",
    "resolve_auto",
]

PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "jit", "onnx")
MIN_COSINE = 0.99


def check_names(precision: str, backend: str) -> None:
    """Raise ValueError naming the choices when ``precision`` or ``backend`` is not a known name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_auto(precision: str, backend: str, native_bf16: bool | None = None) -> tuple[str, str]:
    """The decision table of the module docstring: (precision, backend) before the accuracy check.

    Args:
        precision: "auto", "fp32" or "bf16".
        backend: "auto", "torch", "jit" or "onnx".
        native_bf16: the CPU runs bfloat16 natively; None asks :func:`arcface.runtime.amp.cpu_has_native_bf16`.
    """
    check_names(precision, backend)
    if precision == "bf16" and backend == "onnx":
        raise ValueError("bf16 runs on the torch backend only")
    if precision == "auto":
        native = amp.cpu_has_native_bf16() if native_bf16 is None else native_bf16
        if backend in ("auto", "torch", "jit") and native:
            return "bf16", "jit" if backend == "auto" else backend
        return "fp32", "torch" if backend == "auto" else backend
    if backend == "auto":
        backend = "torch"
    return precision, backend


@dataclass(frozen=True)
class RunnerChoice:
    """One runner to build for a torch module.

    Attributes:
        precision: "fp32" or "bf16".
        backend: "torch", "jit" or "onnx".
        verify: compare it with eager float32 on the calibration batch before use ("auto" chose a faster path).
        fallback: what to build when this one cannot be built (an export or a trace that fails), or None: the
            error stands.
    """

    precision: str
    backend: str
    verify: bool = False
    fallback: RunnerChoice | None = None


def choose_runner(
    precision: str, backend: str, *, device: str = "cpu", native_bf16: bool | None = None
) -> RunnerChoice:
    """The runner :meth:`Embedder.from_module` builds for a torch module: a pure function of what is asked, the
    device and the CPU's features (see the module docstring).

    Args:
        precision: "auto", "fp32" or "bf16".
        backend: "auto", "torch", "jit" or "onnx".
        device: "cpu", or another torch device (float32 eager only).
        native_bf16: the CPU runs bfloat16 natively; None asks :func:`arcface.runtime.amp.cpu_has_native_bf16`.

    Raises:
        ValueError: an unknown name, bf16 on onnx, or a fast path asked of another device.
    """
    check_names(precision, backend)
    if torch.device(device).type != "cpu":
        if precision not in ("auto", "fp32") or backend not in ("auto", "torch"):
            raise ValueError(
                f"on device {device} the model runs as it is: only precision fp32 on backend torch, "
                f"got {precision}/{backend}"
            )
        return RunnerChoice("fp32", "torch")
    prec, back = resolve_auto(precision, backend, native_bf16)
    if precision != "auto":
        return RunnerChoice(prec, back)
    fallback = None
    if back in ("onnx", "jit"):  # an export or trace that fails: eager torch (onnx's precision is fp32)
        fallback = RunnerChoice(prec, "torch", verify=prec != "fp32")
    return RunnerChoice(prec, back, verify=(prec, back) != ("fp32", "torch"), fallback=fallback)


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


def _runner(module: nn.Module, contract: ModelContract, choice: RunnerChoice, onnx_threads: int | None) -> Runner:
    """Build the runner of ``choice`` on the CPU."""
    if choice.backend == "torch":
        return EagerRunner(module, contract, choice.precision, "cpu")
    if choice.backend == "jit":
        return FrozenRunner(module, contract, choice.precision)
    path = _onnx_graph(module, contract)
    return OnnxRunner(open_session(path, threads=onnx_threads), contract, path)


def _raw(runner: Runner, crops: np.ndarray) -> np.ndarray:
    """Raw outputs of ``crops`` through ``runner``, one pass of its size after another (the accuracy check)."""
    size = runner.fixed_pass or runner.pass_size
    return np.concatenate([runner(crops[i : i + size]) for i in range(0, len(crops), size)])


class Embedder:
    """Aligned crops in, L2-normalised float32 embeddings out.

    Build one with :func:`arcface.inference.loader.load_model` (a model name or file), :meth:`from_module` (a torch
    backbone) or :meth:`from_onnx` (an ONNX session), or around a runner directly.

    Args:
        runner: what runs one forward pass.
        precision: "fp32" or "bf16", the precision that runs.
        backend: "torch", "jit" or "onnx", the backend that runs.
        min_cosine_checked: the chosen path's least cosine to float32 on the calibration batch (1.0 for float32
            itself, None where nothing was checked, e.g. a foreign ONNX file).
        flip: flip-test fusion default of :meth:`embed`.
        pass_size: crops per forward pass; None: the runner's (``runner.pass_size``). A fixed-batch model takes
            its own size whatever is asked.
        pass_threads: threads the passes of one call run on side by side, where the runner allows it
            (``runner.concurrent``); each pass runs on the process's intra-op threads (the thread plan's: 1).
        module: the torch backbone, for export.

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
        pass_size: int | None = None,
        pass_threads: int = 1,
        module: nn.Module | None = None,
    ) -> None:
        thread_policy.positive(pass_threads, "pass_threads")
        if pass_size is not None and (isinstance(pass_size, bool) or int(pass_size) < 1):
            raise ValueError(f"pass_size must be at least 1, got {pass_size}")
        self.runner = runner
        self.precision = precision
        self.backend = backend
        self.min_cosine_checked = min_cosine_checked
        self.flip = bool(flip)
        self.pass_size = runner.fixed_pass or int(pass_size or runner.pass_size)
        self.pass_threads = int(pass_threads) if runner.concurrent else 1
        self.module = module
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

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
        pass_size: int | None = None,
        threads: int | str | None = None,
        plan: thread_policy.ThreadPlan | None = None,
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
            pass_size: crops per forward pass; None: the runner's.
            threads: the CPU budget (:mod:`arcface.runtime.threads`); None: ``ARCFACE_THREADS``, else the usable
                CPUs. Without ``plan`` this is an entry point: it decides the "embed" plan and applies it to this
                process.
            plan: a thread plan decided by the caller (its ``item_threads`` run the passes side by side, its
                ``onnx_threads`` the onnxruntime session); nothing is applied then.
            flip: flip-test fusion default of :meth:`embed` (the accuracy check runs without it).
            device: "cpu", or another torch device, where the module runs float32 eagerly.

        Raises:
            ValueError: an unknown precision or backend name, bf16 asked of the onnx backend, a fast path asked
                of a module on another device, or both ``threads`` and ``plan``.
        """
        choice = choose_runner(precision, backend, device=device)  # before any work: a bad name fails fast
        plan = thread_policy.entry_plan("embed", threads, plan)
        module = module.eval()
        contract = contract or _default_contract(module.cpu() if device == "cpu" else module)
        if torch.device(device).type != "cpu":
            runner: Runner = EagerRunner(module, contract, "fp32", device)
            return cls(runner, "fp32", "torch", flip=flip, pass_size=pass_size, module=module)
        module = module.cpu()
        try:
            runner = _runner(module, contract, choice, plan.onnx_threads)
        except Exception as e:  # "auto" picked onnx or jit, but the export / trace failed (odd module, no onnx)
            if choice.fallback is None:
                raise
            what = "onnx export" if choice.backend == "onnx" else "tracing the module"
            choice = choice.fallback
            warnings.warn(f"{what} failed ({type(e).__name__}: {e}); using torch {choice.precision}", stacklevel=2)
            runner = _runner(module, contract, choice, plan.onnx_threads)
        checked = 1.0 if choice.precision == "fp32" else None
        if choice.verify:
            crops = calibration if calibration is not None else _synthetic_crops(8, contract.input_size)
            checked = _min_cosine(_raw(runner, crops), _raw(EagerRunner(module, contract, "fp32", "cpu"), crops))
            if checked < min_cosine:
                warnings.warn(
                    f"{choice.precision}/{choice.backend} keeps cosine {checked:.4f} < {min_cosine} to float32; "
                    "using float32",
                    stacklevel=2,
                )
                choice = RunnerChoice("fp32", choice.backend)
                runner = _runner(module, contract, choice, plan.onnx_threads)
                checked = 1.0
        return cls(runner, choice.precision, choice.backend, min_cosine_checked=checked, flip=flip,
                   pass_size=pass_size, pass_threads=plan.item_threads, module=module)  # fmt: skip

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
        pass_size: int | None = None,
        raw_input: bool = False,
    ) -> Embedder:
        """An ONNX model in onnxruntime, run float32 as it is (``raw_input``: the graph normalises RGB 0..255 itself).
        The session's threads were set when it was opened.

        Raises:
            ValueError: a precision other than auto/fp32 or a backend other than auto/onnx.
        """
        check_names(precision, backend)
        if precision not in ("auto", "fp32") or backend not in ("auto", "onnx"):
            raise ValueError(f"{path} is an ONNX model: only precision fp32 on backend onnx, got {precision}/{backend}")
        runner = OnnxRunner(session, contract, path, raw_input=raw_input)
        return cls(runner, "fp32", "onnx", flip=flip, pass_size=pass_size)

    # ----------------------------------------------------------------------------------------------
    # Embedding

    def embed(self, batch: np.ndarray | Sequence[np.ndarray], flip: bool | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB aligned crops -> (N, D) float32, unit L2 rows.

        The crops go through the runner :attr:`pass_size` at a time, the passes side by side on :attr:`pass_threads`
        threads; a crop's embedding does not depend on the others, so the split does not change the numbers.

        Args:
            batch: the crops (a sequence of (H, W, 3) crops, or one crop as N = 1, also do), (H, W) the contract's
                ``input_size``.
            flip: flip-test fusion, ``f(x) + f(hflip(x))`` then normalised; None uses :attr:`flip`.

        Raises:
            ValueError: crops of the wrong shape or dtype.
        """
        crops = self._check(batch)
        flip = self.flip if flip is None else bool(flip)
        if len(crops) == 0:
            return np.zeros((0, self.embedding_size), np.float32)

        def one_pass(chunk: np.ndarray) -> np.ndarray:
            emb = self.runner(chunk).astype(np.float64)  # (n, D) raw
            if flip:
                emb = emb + self.runner(np.ascontiguousarray(chunk[:, :, ::-1]))
            return emb

        passes = [crops[i : i + self.pass_size] for i in range(0, len(crops), self.pass_size)]
        if self.pass_threads > 1 and len(passes) > 1:
            out = list(self._executor().map(one_pass, passes))
        else:
            out = [one_pass(p) for p in passes]
        emb = np.concatenate(out).reshape(len(crops), -1)
        if emb.shape[1] != self.embedding_size:
            raise ValueError(f"model gave {emb.shape[1]}-D embeddings but its contract says {self.embedding_size}-D")
        return l2_normalise(emb)

    __call__ = embed

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            # a forked child inherits the pool object but not its threads: it makes its own
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.pass_threads, thread_name_prefix="arcface-embed")
                self._pool_pid = os.getpid()
            return self._pool

    def __getstate__(self) -> dict[str, Any]:  # a pool and a lock do not pickle; a copy makes its own
        state = self.__dict__.copy()
        state["_pool"], state["_pool_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

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
