"""The trainer's periodic evaluation: 10-fold verification accuracy of the training model on ``cfg.eval.sets``.

    >>> evaluate = build_evaluator(cfg)          # reads nothing yet
    >>> evaluate(model, contract)                # {"lfw": 0.9915, "cfp_fp": 0.962}
    >>> Trainer(cfg, out, evaluate=evaluate)     # EvalHook keeps DIR/best.safetensors

Each set is one of the kinds of :data:`EVAL_SETS`: an insightface ``.bin`` (``kind: bin``, ``path: lfw.bin``) or a
folder of aligned crops with an LFW-format pair file (``kind: pairs``, ``path: CROPS_DIR``, ``pairs: pairs.txt``;
crops named ``NAME/NAME_%04d.jpg`` or ``.png``). The images are already aligned, so there is no detection: they are
decoded once (on the first call), resized to the contract's input size when they differ, and embedded by an
:class:`~arcface.inference.embedder.Embedder` around the training model as it is (eager float32, its memory format
untouched, ``cfg.eval.batch_size`` crops per pass, one pass after another on the trainer's threads), fed as the
contract says, the same preprocessing the saved model will get. With ``cfg.eval.flip`` the embedding is
``f(x) + f(mirror(x))``, then L2-normalised. The model is put in eval mode for the evaluation and back in train mode
afterwards (if it was training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from arcface.engine.config import Config, EvalSetConfig
from arcface.eval.datasets import PairSet, read_bin, read_lfw_pairs
from arcface.eval.metrics import fold_accuracies
from arcface.eval.pipeline import decode_aligned
from arcface.eval.verification import pair_scores
from arcface.inference.contract import ModelContract
from arcface.inference.embedder import Embedder
from arcface.inference.runners import EagerRunner
from arcface.registry import Registry

__all__ = ["EVAL_SETS", "build_evaluator", "embed_with_model", "load_eval_set"]

#: Readers of the kinds of evaluation set: ``reader(spec) -> PairSet`` of aligned images.
EVAL_SETS: Registry[Callable[[EvalSetConfig], PairSet]] = Registry("eval set kind")


@EVAL_SETS.register("bin")
def _read_bin_set(spec: EvalSetConfig) -> PairSet:
    return read_bin(spec.path, name=spec.name or None)


@EVAL_SETS.register("pairs")
def _read_pairs_set(spec: EvalSetConfig) -> PairSet:
    if not spec.pairs:
        raise ValueError(f"eval set {spec.name or spec.path}: kind 'pairs' needs 'pairs' (an LFW pair file)")
    if not Path(spec.pairs).is_file():
        raise FileNotFoundError(f"eval set {spec.name or spec.path}: pair file {spec.pairs} does not exist")
    ps = read_lfw_pairs(spec.pairs, spec.path, name=spec.name or None, suffixes=(".jpg", ".png"))
    missing = [p for p in ps.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"eval set {ps.name}: {len(missing)} crop(s) missing, e.g. {missing[0]}")
    ps.aligned = True
    return ps


def load_eval_set(spec: EvalSetConfig) -> PairSet:
    """Read one configured set (aligned images) with the reader of its kind (:data:`EVAL_SETS`).

    Raises:
        FileNotFoundError: a missing file or folder (named).
        ValueError: an unknown kind, a ``pairs`` set without its pair file, or a malformed file.
    """
    path = Path(spec.path)
    if not path.exists():
        raise FileNotFoundError(f"eval set {spec.name or spec.path}: {path} does not exist")
    if spec.kind not in EVAL_SETS:
        raise ValueError(
            f"eval set {spec.name or spec.path}: kind must be one of {', '.join(EVAL_SETS.names())}, got {spec.kind!r}"
        )
    return EVAL_SETS.get(spec.kind)(spec)


def embed_with_model(
    model: nn.Module, crops: np.ndarray, contract: ModelContract, *, flip: bool = True, batch_size: int = 64
) -> np.ndarray:
    """Embeddings of aligned crops by a training model, through an :class:`Embedder` (eval mode inside, the mode
    restored after; the model's device and memory format are kept).

    Args:
        model: a backbone taking (B, 3, H, W) float input.
        crops: (M, H, W, 3) uint8 RGB.
        contract: how the model is fed (colour order, mean, std).
        flip: add the embedding of the mirrored crop before normalising.
        batch_size: crops per forward pass.

    Returns:
        (M, D) float32 unit rows.
    """
    was_training = model.training
    device = str(next(model.parameters()).device)
    try:
        runner = EagerRunner(model, contract, "fp32", device, channels_last=False)
        return Embedder(runner, "fp32", "torch", flip=flip, pass_size=batch_size).embed(crops)
    finally:
        model.train(was_training)


def build_evaluator(cfg: Config) -> Callable[[nn.Module, ModelContract], dict[str, float]]:
    """The ``evaluate(model, contract) -> {set name: accuracy}`` callable of :class:`arcface.engine.hooks.EvalHook`.

    Sets are read and decoded lazily, on the first call, at the contract's ``input_size``; the accuracy is the
    10-fold mean (see :mod:`arcface.eval.verification`).

    Args:
        cfg: the training config; ``cfg.eval.sets``, ``cfg.eval.flip`` and ``cfg.eval.batch_size`` are used.

    Raises:
        ValueError: a set without a path or of an unknown kind, or two sets with the same name.
    """
    specs = list(cfg.eval.sets)
    names = []
    for i, s in enumerate(specs):
        if not s.path:
            raise ValueError(f"eval set {s.name!r}: 'path' is required")
        if s.kind not in EVAL_SETS:
            raise ValueError(f"eval.sets[{i}].kind: unknown {s.kind!r} ({', '.join(EVAL_SETS.names())})")
        names.append(s.name or Path(s.path).stem)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"eval sets: duplicate name(s) {sorted(dup)}; give each set a distinct 'name'")
    flip, batch_size = bool(cfg.eval.flip), int(cfg.eval.batch_size)
    loaded: dict[tuple[str, tuple[int, int]], tuple[PairSet, np.ndarray]] = {}

    def evaluate(model: nn.Module, contract: ModelContract) -> dict[str, float]:
        size = tuple(contract.input_size)
        scores: dict[str, float] = {}
        for name, spec in zip(names, specs, strict=True):
            if (name, size) not in loaded:
                ps = load_eval_set(spec)
                loaded[(name, size)] = (ps, decode_aligned(ps.images, size))
            ps, crops = loaded[(name, size)]
            emb = embed_with_model(model, crops, contract, flip=flip, batch_size=batch_size)
            accs, _ = fold_accuracies(pair_scores(emb, ps.pairs), ps.labels, ps.folds)
            scores[name] = float(accs.mean())
        return scores

    return evaluate
