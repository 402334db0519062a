"""Embedding backends: aligned crops in, L2-normalised embeddings out, under a :class:`ModelContract`.

A backend owns a model and the contract that says how to feed it; it applies that contract (colour
order, ``(x - mean) / std``, tensor layout) so that callers only ever hand it aligned uint8 RGB crops:

    >>> backend = TorchBackend(module, contract)
    >>> emb = backend.embed_crops(crops)  # (N, 112, 112, 3) uint8 RGB -> (N, D) float32, unit rows

Two engines: :class:`TorchBackend` (our backbones) and :class:`OnnxBackend` (ONNX files through
onnxruntime, e.g. insightface recognition models or OpenCV's SFace). Build them by name or path with
:func:`arcface.inference.zoo.load_backend`.

Flip test (DESIGN.md): with ``flip=True`` the embedding is ``f(x) + f(hflip(x))``, then L2-normalised;
``f`` is the raw (unnormalised) model output, as in insightface's verification code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from arcface.inference.contract import ModelContract

__all__ = ["Backend", "OnnxBackend", "TorchBackend", "l2_normalise", "onnx_input_layout", "open_session", "preprocess"]


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm: (N, D) -> (N, D) float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32, copy=False)


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


class Backend(ABC):
    """Maps aligned crops to embeddings under one contract.

    Args:
        contract: how the model is fed and whose embeddings are comparable (see ModelContract).
        flip: flip-test fusion: ``f(x) + f(hflip(x))`` before normalising (twice the compute).
        batch_size: most crops per forward pass.
    """

    def __init__(self, contract: ModelContract, *, flip: bool = False, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.contract = contract
        self.flip = bool(flip)
        self.batch_size = int(batch_size)

    @property
    def embedding_size(self) -> int:
        """D, the length of one embedding."""
        return self.contract.embedding_size

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the crops this backend takes."""
        return self.contract.input_size

    def embed_crops(self, crops: np.ndarray | Sequence[np.ndarray], *, flip: bool | None = None) -> np.ndarray:
        """Embed aligned face crops.

        Args:
            crops: (N, H, W, 3) uint8 RGB array (or a sequence of (H, W, 3) crops), with (H, W) the
                contract's ``input_size``; a single (H, W, 3) crop is taken as N = 1.
            flip: flip-test fusion for this call; None uses the backend's ``flip``.

        Returns:
            (N, D) float32, each row of unit L2 norm.

        Raises:
            ValueError: crops of the wrong shape or dtype.
        """
        crops = self._check(crops)
        flip = self.flip if flip is None else bool(flip)
        if len(crops) == 0:
            return np.zeros((0, self.embedding_size), np.float32)
        out = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            emb = self._forward(chunk)  # (n, D) raw
            if flip:
                emb = emb + self._forward(np.ascontiguousarray(chunk[:, :, ::-1]))
            out.append(emb)
        emb = np.concatenate(out).reshape(len(crops), -1)
        if emb.shape[1] != self.embedding_size:
            raise ValueError(f"model gave {emb.shape[1]}-D embeddings but its contract says {self.embedding_size}-D")
        return l2_normalise(emb)

    __call__ = embed_crops

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

    @abstractmethod
    def _forward(self, crops: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB, n <= batch_size -> (n, D) float32 raw model output."""

    def __repr__(self) -> str:
        c = self.contract
        return f"{type(self).__name__}({c.architecture}, {c.embedding_size}-D, contract {c.id}, flip={self.flip})"


class TorchBackend(Backend):
    """A PyTorch backbone that takes NCHW float input (every module ``create_model`` builds).

    Args:
        module: the backbone; put in eval mode and on ``device``.
        contract: its contract (``load_model`` returns both).
        device: torch device to run on.
        batch_size: most crops per forward pass.
        flip: flip-test fusion.
    """

    def __init__(
        self,
        module: nn.Module,
        contract: ModelContract,
        device: str = "cpu",
        batch_size: int = 64,
        *,
        flip: bool = False,
    ) -> None:
        import torch

        super().__init__(contract, flip=flip, batch_size=batch_size)
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(preprocess(crops, self.contract, "NCHW")).to(self.device)  # (n, 3, H, W)
        with torch.inference_mode():
            emb = self.module(x)  # (n, D)
        return emb.float().cpu().numpy()


class OnnxBackend(Backend):
    """An ONNX recognition model run by onnxruntime.

    The input layout (NCHW or NHWC) is read from the model's input shape (the axis of size 3 is the
    channel axis); a model with a fixed batch size of 1 is run one crop at a time.

    Args:
        path: the ``.onnx`` file.
        contract: how to feed it (``zoo.load_backend`` builds one for insightface-style models and SFace).
        providers: onnxruntime execution providers; None means ``["CPUExecutionProvider"]``.
        batch_size: most crops per run for models with a dynamic batch.
        flip: flip-test fusion.
        threads: onnxruntime intra-op threads (0: its default, all cores).
        session: an already open ``onnxruntime.InferenceSession`` of ``path`` to reuse (see :func:`open_session`).

    Raises:
        ValueError: the input is not a single 4-D image tensor with 3 channels, or its fixed spatial size
            differs from the contract's ``input_size``.
    """

    def __init__(
        self,
        path: str | Path,
        contract: ModelContract,
        providers: Sequence[str] | None = None,
        batch_size: int = 64,
        *,
        flip: bool = False,
        threads: int = 0,
        session=None,
    ) -> None:
        super().__init__(contract, flip=flip, batch_size=batch_size)
        self.path = Path(path)
        self.session = session if session is not None else open_session(self.path, providers, threads)
        self.input_name, self.layout, fixed_batch, hw = onnx_input_layout(self.session, self.path)
        if hw is not None and hw != contract.input_size:
            raise ValueError(f"{self.path}: model input is {hw[0]}x{hw[1]}, contract says {contract.input_size}")
        self.output_name = self.session.get_outputs()[0].name
        if fixed_batch is not None:
            self.batch_size = fixed_batch if fixed_batch == 1 else min(self.batch_size, fixed_batch)
        self._fixed_batch = fixed_batch

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        x = preprocess(crops, self.contract, self.layout)
        if self._fixed_batch is not None and len(x) != self._fixed_batch:  # a short last chunk
            pad = np.zeros((self._fixed_batch - len(x), *x.shape[1:]), np.float32)
            out = self.session.run([self.output_name], {self.input_name: np.concatenate([x, pad])})[0]
            return np.asarray(out, np.float32).reshape(self._fixed_batch, -1)[: len(x)]
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, np.float32).reshape(len(x), -1)


def open_session(path: str | Path, providers: Sequence[str] | None = None, threads: int = 0):
    """An ``onnxruntime.InferenceSession`` for ``path``, quiet about harmless graph warnings.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers; None means ``["CPUExecutionProvider"]``.
        threads: intra-op threads (0: onnxruntime's default).

    Raises:
        ValueError: onnxruntime cannot load the file (the message names it and gives onnxruntime's first line).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # no "removing unused initializer" chatter
    options.intra_op_num_threads = int(threads)
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
