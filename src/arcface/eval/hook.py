"""The trainer's periodic evaluation: 10-fold verification accuracy of the training model on ``cfg.eval.sets``.

    >>> evaluate = build_evaluator(cfg)          # reads nothing yet
    >>> evaluate(model)                          # {"lfw": 0.9915, "cfp_fp": 0.962}
    >>> Trainer(cfg, out, evaluate=evaluate)     # EvalHook keeps DIR/best.safetensors

Each set is either an insightface ``.bin`` (``kind: bin``, ``path: lfw.bin``) or a folder of aligned crops with an
LFW-format pair file (``kind: pairs``, ``path: CROPS_DIR``, ``pairs: pairs.txt``; crops named
``NAME/NAME_%04d.jpg`` or ``.png``). The images are already aligned, so there is no detection: they are decoded
once (on the first call), resized to the model's input size when they differ, and fed as NCHW float
``(x - 127.5) / 127.5`` (RGB), the contract of our models. With ``cfg.eval.flip`` the embedding is
``f(x) + f(mirror(x))``, then L2-normalised. The model is put in eval mode for the evaluation and back in
train mode afterwards (if it was training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from arcface.eval.datasets import PairSet, read_bin, read_lfw_pairs
from arcface.eval.verification import fold_accuracies, pair_scores

if TYPE_CHECKING:
    from torch import nn

    from arcface.engine.config import Config, EvalSetConfig

__all__ = ["build_evaluator", "embed_with_model", "load_eval_set"]


def load_eval_set(spec: EvalSetConfig) -> PairSet:
    """Read one configured set (aligned images).

    Raises:
        FileNotFoundError: a missing file or folder (named).
        ValueError: an unknown kind, a ``pairs`` set without its pair file, or a malformed file.
    """
    path = Path(spec.path)
    if not path.exists():
        raise FileNotFoundError(f"eval set {spec.name or spec.path}: {path} does not exist")
    if spec.kind == "bin":
        return read_bin(path, name=spec.name or None)
    if spec.kind == "pairs":
        if not spec.pairs:
            raise ValueError(f"eval set {spec.name or spec.path}: kind 'pairs' needs 'pairs' (an LFW pair file)")
        if not Path(spec.pairs).is_file():
            raise FileNotFoundError(f"eval set {spec.name or spec.path}: pair file {spec.pairs} does not exist")
        ps = read_lfw_pairs(spec.pairs, path, name=spec.name or None, suffixes=(".jpg", ".png"))
        missing = [p for p in ps.images if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"eval set {ps.name}: {len(missing)} crop(s) missing, e.g. {missing[0]}")
        ps.aligned = True
        return ps
    raise ValueError(f"eval set {spec.name or spec.path}: kind must be 'bin' or 'pairs', got {spec.kind!r}")


def _input_size(model: nn.Module) -> tuple[int, int]:
    size = getattr(model, "input_size", 112)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def embed_with_model(model: nn.Module, crops: np.ndarray, *, flip: bool = True, batch_size: int = 64) -> np.ndarray:
    """Embeddings of aligned crops by a training model (eval mode inside, the mode restored after).

    Args:
        model: a backbone taking (B, 3, H, W) float ``(x - 127.5) / 127.5``.
        crops: (M, H, W, 3) uint8 RGB.
        flip: add the embedding of the mirrored crop before normalising.
        batch_size: crops per forward pass.

    Returns:
        (M, D) float32 unit rows.
    """
    import torch

    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(crops), batch_size):
                x = torch.from_numpy(crops[s : s + batch_size]).to(device)  # (B, H, W, 3) uint8
                x = (x.permute(0, 3, 1, 2).float() - 127.5) / 127.5  # (B, 3, H, W)
                e = model(x).float()  # (B, D)
                if flip:
                    e = e + model(torch.flip(x, dims=[3])).float()
                out.append(torch.nn.functional.normalize(e, dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def build_evaluator(cfg: Config) -> Callable[[nn.Module], dict[str, float]]:
    """The ``evaluate(model) -> {set name: accuracy}`` callable of :class:`arcface.engine.hooks.EvalHook`.

    Sets are read and decoded lazily, on the first call, at the model's ``input_size``; the accuracy is the
    10-fold mean (see :mod:`arcface.eval.verification`).

    Args:
        cfg: the training config; ``cfg.eval.sets``, ``cfg.eval.flip`` and ``cfg.eval.batch_size`` are used.

    Raises:
        ValueError: a set without a path, or two sets with the same name.
    """
    from arcface.eval.cache import decode_aligned

    specs = list(cfg.eval.sets)
    names = []
    for s in specs:
        if not s.path:
            raise ValueError(f"eval set {s.name!r}: 'path' is required")
        names.append(s.name or Path(s.path).stem)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"eval sets: duplicate name(s) {sorted(dup)}; give each set a distinct 'name'")
    flip, batch_size = bool(cfg.eval.flip), int(cfg.eval.batch_size)
    loaded: dict[tuple[str, tuple[int, int]], tuple[PairSet, np.ndarray]] = {}

    def evaluate(model: nn.Module) -> dict[str, float]:
        size = _input_size(model)
        scores: dict[str, float] = {}
        for name, spec in zip(names, specs, strict=True):
            if (name, size) not in loaded:
                ps = load_eval_set(spec)
                loaded[(name, size)] = (ps, decode_aligned(ps.images, size))
            ps, crops = loaded[(name, size)]
            emb = embed_with_model(model, crops, flip=flip, batch_size=batch_size)
            accs, _ = fold_accuracies(pair_scores(emb, ps.pairs), ps.labels, ps.folds)
            scores[name] = float(accs.mean())
        return scores

    return evaluate
