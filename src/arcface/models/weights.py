"""Reading backbone weights from files: our safetensors, our training checkpoints, arcface_torch ``backbone.pth``.

Everything torch-pickled is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
arbitrary objects, since a pickle can run any code. A file that holds more is refused, and the message says so (torch's
own advice to retry with ``weights_only=False`` would run that code, so it never reaches the user).

safetensors files start with an 8-byte header length; it is checked against the file size before anything is read,
so a crafted length cannot make the reader allocate more than the file holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from arcface.runtime.untrusted import BadFileError, reading, shown

__all__ = ["MAX_SAFETENSORS_HEADER", "check_safetensors_header", "load_backbone_weights", "load_safetensors",
           "torch_load_safely"]  # fmt: skip

#: Largest safetensors JSON header read (the safetensors library's own limit).
MAX_SAFETENSORS_HEADER = 100_000_000

#: Prefixes that wrappers put in front of backbone keys (DDP, torch.compile, a backbone attribute).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")


def torch_load_safely(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a torn or foreign file is a one-line BadFileError.

    Raises:
        FileNotFoundError: no such file.
        BadFileError: the file cannot be read as weights-only torch data (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with reading(path, f"not a weights-only PyTorch {what}"):
        return torch.load(path, map_location="cpu", weights_only=True)


def check_safetensors_header(path: str | Path, error: type[BadFileError] = BadFileError) -> None:
    """Refuse a file whose safetensors header length is missing, larger than the file, or implausibly large.

    Raises:
        FileNotFoundError: no such file.
        BadFileError (or ``error``): the header length does not fit the file (one line naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise error(f"{path}: not a safetensors file ({size} bytes, fewer than its 8-byte header length)")
    n = int.from_bytes(head, "little")
    if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
        raise error(f"{path}: not a safetensors file (its header length {n} exceeds the {size - 8} bytes that follow)")


def load_safetensors(path: str | Path, error: type[BadFileError] = BadFileError) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, onto the CPU, after :func:`check_safetensors_header`.

    Raises:
        FileNotFoundError: no such file.
        BadFileError (or ``error``): a torn or foreign file (one line naming it).
    """
    from safetensors.torch import load_file

    check_safetensors_header(path, error)
    with reading(path, "not a readable safetensors file", error):
        return load_file(str(path), device="cpu")


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
        return _strip_prefixes(load_safetensors(path))
    obj = torch_load_safely(path, "weights file")
    if not _is_state_dict(obj) and isinstance(obj, dict):
        # our training checkpoints keep the backbone under "model"; other tools use these keys
        obj = next((obj[k] for k in ("model", "state_dict", "backbone") if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        what = f"keys {list(obj)[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise BadFileError(f"{path}: holds no state dict of tensors ({shown(what)})")
    return _strip_prefixes(obj)
