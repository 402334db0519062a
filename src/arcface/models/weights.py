"""Reading backbone weights from files: our safetensors, our training checkpoints, arcface_torch ``backbone.pth``.

Everything torch-pickled is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
arbitrary objects (DESIGN.md: never unpickle untrusted data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["load_backbone_weights", "torch_load_safely"]

#: Prefixes that wrappers put in front of backbone keys (DDP, torch.compile, a backbone attribute).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")


def torch_load_safely(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a torn or foreign file is a one-line ValueError.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as weights-only torch data (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say which, do not show a pickle traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what} {path} could not be read: {first}") from None


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _is_state_dict(o: Any) -> bool:
    return isinstance(o, dict) and len(o) > 0 and all(isinstance(v, torch.Tensor) for v in o.values())


def load_backbone_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Backbone weights from our checkpoint, a ``.safetensors`` file or an arcface_torch ``backbone.pth``.

    Returns a state dict with DDP/compile prefixes removed, ready for ``load_state_dict(strict=True)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable weights file, or no state dict of tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _strip_prefixes(load_file(str(path)))
    obj = torch_load_safely(path, "weights file")
    if not _is_state_dict(obj) and isinstance(obj, dict):
        # our training checkpoints keep the backbone under "model"; other tools use these keys
        obj = next((obj[k] for k in ("model", "state_dict", "backbone") if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        what = f"keys {list(obj)[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} holds no state dict of tensors ({what})")
    return _strip_prefixes(obj)
