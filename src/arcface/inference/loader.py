"""The one model loader: a model name or file -> its weights and contract -> the ready :class:`Embedder`.

    >>> emb = load_model()                                   # the bundled default model, fastest verified path
    >>> emb = load_model("backbone.pth", arch="r50")         # an arcface_torch checkpoint
    >>> emb = load_model("model.onnx", flip=True)            # an ONNX file (its own contract when it carries one)
    >>> emb.contract.id, emb.embed(crops)

One straight path: :func:`arcface.inference.zoo.resolve_model_path` (a name -> a file),
:func:`arcface.inference.files.read_model_file` (the file -> weights + contract, one reader per file type), then
the engine (:meth:`Embedder.from_module` for torch weights, :meth:`Embedder.from_onnx` for ONNX graphs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from arcface.inference.contract import ModelContract
from arcface.inference.embedder import MIN_COSINE, Embedder, check_names
from arcface.inference.files import read_model_file
from arcface.inference.zoo import resolve_model_path
from arcface.runtime import threads as thread_policy

__all__ = ["load_model"]


def load_model(
    model: str | os.PathLike = "default",
    *,
    precision: str = "auto",
    backend: str = "auto",
    flip: bool = False,
    device: str = "cpu",
    pass_size: int | None = None,
    arch: str | None = None,
    options: dict[str, Any] | None = None,
    preset: str | None = None,
    contract: ModelContract | None = None,
    providers: Sequence[str] | None = None,
    calibration: np.ndarray | None = None,
    min_cosine: float = MIN_COSINE,
    threads: int | str | None = None,
    plan: thread_policy.ThreadPlan | None = None,
) -> Embedder:
    """Load a model by name or file into the inference engine.

    Args:
        model: "default" / "mobilefacenet", "sface", or a ``.safetensors``, ``.pth``/``.pt`` or ``.onnx`` path.
        precision: "auto", "fp32" or "bf16" (see :mod:`arcface.inference.embedder`).
        backend: "auto", "torch", "jit" or "onnx".
        flip: flip-test fusion default of :meth:`Embedder.embed`.
        device: torch device ("cpu", "cuda"); for ONNX, "cuda" asks onnxruntime for CUDA then CPU.
        pass_size: crops per forward pass; None: the runner's (see :class:`Embedder`).
        arch: backbone name of a ``.pth``/``.pt`` state dict (e.g. "r50", "mbf").
        options: extra ``create_model`` arguments of a ``.pth``/``.pt`` (the embedding size is read from the weights).
        preset: preprocessing of a foreign ONNX file, "insightface" (default) or "sface".
        contract: the full contract of a foreign ONNX file (overrides ``preset``).
        providers: onnxruntime execution providers.
        calibration: aligned faces for the accuracy check of ``precision="auto"``.
        min_cosine: the least cosine to float32 a fast path must keep.
        threads: the CPU budget (passes side by side, onnxruntime threads); None: ``ARCFACE_THREADS``, else the
            usable CPUs (affinity and cgroup quota; see :mod:`arcface.runtime.threads`). Without ``plan`` this is an
            entry point: it decides the "embed" plan and applies it to this process, once.
        plan: a thread plan decided by the caller (an entry point above, e.g. ``FaceRecognizer``); nothing is applied.

    Raises:
        FileNotFoundError: an unknown name, a missing file, or SFace not found (the message says where to get it).
        ValueError: an unknown precision or backend, one the model cannot run, an option that does not apply to the
            file type, or an unreadable model (``ContractError`` for weights that do not fit); ``ThreadsError`` for
            a bad ``threads`` or ``ARCFACE_THREADS``, or both ``threads`` and ``plan``.
    """
    check_names(precision, backend)  # before loading anything
    plan = thread_policy.entry_plan("embed", threads, plan)
    path = resolve_model_path(model)
    read = read_model_file(
        path, device=device, arch=arch, options=options, preset=preset, contract=contract, providers=providers,
        threads=plan.onnx_threads,
    )  # fmt: skip
    if read.module is None:
        return Embedder.from_onnx(
            read.session, read.contract, path=path, precision=precision, backend=backend, flip=flip,
            pass_size=pass_size, raw_input=read.raw_input,
        )  # fmt: skip
    return Embedder.from_module(
        read.module, precision, backend, contract=read.contract, calibration=calibration, min_cosine=min_cosine,
        pass_size=pass_size, plan=plan, flip=flip, device=device,
    )  # fmt: skip
