"""Pieces every importer shares: the error type, BatchNorm re-expression, weights-only state dicts, loading."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arcface.inference.contract import MAX_EMBEDDING_SIZE
from arcface.models import MODELS, create_model
from arcface.runtime.untrusted import BadFileError, reading, shown

__all__ = ["BatchNormParams", "ConversionError", "build_and_load", "read_torch_state_dict", "state_dict_for"]


class ConversionError(BadFileError):
    """A source model the importer cannot read or map; the message is one line naming the file or layer."""


@dataclass(frozen=True)
class BatchNormParams:
    """A source BatchNorm: ``gamma * (x - mean) / sqrt(var + eps) + beta``, per channel.

    ``gamma`` None means a fixed scale of 1 (MXNet's ``fix_gamma=True``, whatever the file stores).
    """

    gamma: np.ndarray | None
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float

    def as_torch(self, eps: float, where: str) -> dict[str, torch.Tensor]:
        """The four state-dict tensors of a torch BatchNorm with ``eps`` that computes the same function.

        A different epsilon is moved into the variance: ``(var + eps_src - eps) + eps == var + eps_src``,
        so the module keeps its own eps (exact up to one float32 rounding of the variance).

        Raises:
            ConversionError: the re-expressed variance would not be positive.
        """
        var = self.var.astype(np.float64) + (float(self.eps) - float(eps))
        if not (var > 0).all():
            raise ConversionError(
                f"{where}: BatchNorm eps {self.eps:g} with variance {float(self.var.min()):g} cannot be expressed "
                f"with eps {eps:g}"
            )
        gamma = np.ones_like(self.beta) if self.gamma is None else self.gamma
        return {
            "weight": torch.from_numpy(np.ascontiguousarray(gamma, dtype=np.float32)),
            "bias": torch.from_numpy(np.ascontiguousarray(self.beta, dtype=np.float32)),
            "running_mean": torch.from_numpy(np.ascontiguousarray(self.mean, dtype=np.float32)),
            "running_var": torch.from_numpy(var.astype(np.float32)),
        }


def state_dict_for(
    module: nn.Module, tensors: Mapping[str, np.ndarray | torch.Tensor], bns: Mapping[str, BatchNormParams]
) -> dict[str, torch.Tensor]:
    """Assemble a full state dict for ``module`` from plain tensors and BatchNorms (keyed by module path).

    BatchNorm ``num_batches_tracked`` counters, which no source framework keeps, are set to 0.
    """
    ref = module.state_dict()
    sd: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        dtype = ref[key].dtype if key in ref else torch.float32  # int64 counters stay integers
        sd[key] = t.detach().to(dtype).contiguous()
    for prefix, bn in bns.items():
        target = module.get_submodule(prefix)
        if not isinstance(target, nn.modules.batchnorm._BatchNorm):
            raise ConversionError(f"{prefix}: expected a BatchNorm in our model, found {type(target).__name__}")
        for name, t in bn.as_torch(target.eps, prefix).items():
            sd[f"{prefix}.{name}"] = t
    for key, buf in ref.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(buf)
    return sd


def build_and_load(arch: str, num_features: int, options: Mapping[str, Any], make_state_dict, source: str) -> nn.Module:
    """``create_model(arch, ...)`` loaded strictly with ``make_state_dict(module)``, in eval mode.

    Raises:
        ConversionError: missing, unexpected or mis-shaped weights (the first few named), as one line.
    """
    if arch not in MODELS.names():
        raise ConversionError(f"unknown architecture {arch!r}")
    if not 1 <= num_features <= MAX_EMBEDDING_SIZE:  # read from the file (an empty tensor may claim any size)
        raise ConversionError(
            f"{source}: an embedding size of {num_features} (a face model has 1 to {MAX_EMBEDDING_SIZE})"
        )
    module = create_model(arch, num_features=num_features, **dict(options))
    sd = make_state_dict(module)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    shape = [f"{k} {got[k]} vs {want[k]}" for k in want if k in got and got[k] != want[k]]
    for what, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shape)):
        if items:
            more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
            raise ConversionError(f"{source}: weights do not fit {arch}: {what} {', '.join(items[:3])}{more}")
    module.load_state_dict(sd, strict=True)
    return module.eval()


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` file, loaded with ``torch.load(weights_only=True)`` (nothing else unpickled).

    Accepts a plain state dict, or one under ``state_dict`` / ``model`` / ``backbone``; a DataParallel
    ``module.`` prefix is removed.

    Raises:
        FileNotFoundError: no such file.
        ConversionError: not a weights-only torch file, or no state dict of tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    with reading(path, "not a weights-only PyTorch file", ConversionError):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not _is_tensor_dict(obj) and isinstance(obj, dict):
        obj = next((obj[k] for k in ("state_dict", "model", "backbone") if _is_tensor_dict(obj.get(k))), obj)
    if not _is_tensor_dict(obj):
        what = f"keys {shown(list(obj)[:5])}" if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path}: holds no state dict of tensors ({what})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)
