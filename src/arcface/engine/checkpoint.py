"""Atomic training checkpoints (backbone weight files: :mod:`arcface.models.weights`).

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over its final name, so a crash never leaves a half-written checkpoint and the previous one stays.
Checkpoints are loaded with ``weights_only=True``: nothing is ever unpickled.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arcface.models.weights import torch_load_safely
from arcface.runtime.untrusted import BadFileError, reading

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace`` onto it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches (torch, CUDA, numpy, random), as plain tensors/ints."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "random": _py_random_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_random_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    npd = state["numpy"]
    np.random.set_state(("MT19937", npd["keys"].numpy().astype(np.uint32), npd["pos"], npd["has_gauss"], npd["cached"]))
    r = state["random"]
    random.setstate((r["version"], tuple(r["internal"]), r["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """``DIR/ckpt-00000012.pt`` for step 12."""
    return Path(out_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints in ``out_dir``, oldest step first."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``out_dir``, or None."""
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints."""
    ckpts = list_checkpoints(out_dir)
    for p in ckpts[: max(0, len(ckpts) - keep_last)]:
        p.unlink(missing_ok=True)


#: What a checkpoint holds, and the container type of each entry.
_CHECKPOINT_KEYS = {
    "model": dict, "head_shards": list, "optimizer": dict, "scheduler": dict, "scaler": dict, "sampler": dict,
    "rng": dict, "step": int,
}  # fmt: skip


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``) onto the CPU, and check its layout.

    The layout and the random-number states are checked here, so a torn or foreign checkpoint is one line naming
    the file rather than a failure deep inside the resume.

    Raises:
        FileNotFoundError: no such file.
        BadFileError: not weights-only torch data, or not a checkpoint this trainer wrote (the entry named).
    """
    state = torch_load_safely(path, "checkpoint")
    if not isinstance(state, dict):
        raise BadFileError(f"{path}: not a training checkpoint (it holds a {type(state).__name__})")
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise BadFileError(f"{path}: not a training checkpoint ({key!r} is missing or not a {kind.__name__})")
    with reading(path, "not a training checkpoint (its random-number states are malformed)"):
        _check_rng_state(state["rng"])
    return state


def _check_rng_state(state: dict[str, Any]) -> None:
    """Raise unless ``state`` is what :func:`rng_state` captured (so that :func:`set_rng_state` cannot fail)."""
    if not isinstance(state.get("torch"), torch.Tensor) or state["torch"].dtype != torch.uint8:
        raise ValueError("'torch' is not a byte tensor")
    npd = state["numpy"]
    if not isinstance(npd["keys"], torch.Tensor) or tuple(npd["keys"].shape) != (624,):
        raise ValueError("numpy 'keys' are not 624 integers")
    np.random.RandomState().set_state(
        ("MT19937", npd["keys"].numpy().astype(np.uint32), npd["pos"], npd["has_gauss"], npd["cached"])
    )
    r = state["random"]
    random.Random().setstate((r["version"], tuple(r["internal"]), r["gauss"]))
