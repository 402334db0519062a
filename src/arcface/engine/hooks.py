"""Trainer hooks: logging, checkpoints and periodic evaluation stay out of the training step.

A hook sees the trainer before training, after every optimiser step (with that step's metrics),
and after training (detectron2's ``HookBase`` pattern).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from arcface.runtime.progress import Progress

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """What a hook sees of :class:`arcface.engine.trainer.Trainer` (hooks do not import the trainer)."""

    step: int
    max_steps: int
    samples_per_step: int
    out_dir: Path
    dist: Any
    contract: Any
    epoch: int
    bare_model: Any

    def save_checkpoint(self, keep_last: int = 2) -> Path | None: ...

    def save_backbone(self, path: str | Path) -> None: ...


class Hook:
    """Base hook: override any of the three methods."""

    def before_train(self, trainer: Trainer) -> None:  # noqa: B027 - intentionally empty
        """Called once, after set-up and any resume, before the first step."""

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:  # noqa: B027
        """Called after each optimiser step with ``trainer.step`` already advanced."""

    def after_train(self, trainer: Trainer) -> None:  # noqa: B027
        """Called once when training ends normally."""


class LoggerHook(Hook):
    """Progress bar (loss, lr, samples/s, ETA), ``DIR/log.jsonl`` and TensorBoard scalars; rank 0 only.

    Each line of ``log.jsonl`` is one logged step: ``step``, ``loss``, ``lr``, ``samples_per_sec``,
    ``epoch``, ``time``. On resume, lines for steps beyond the checkpoint are dropped so the file
    reads as one uninterrupted run.
    """

    def __init__(self, every: int, tensorboard: bool = True, progress: bool = True) -> None:
        self.every = every
        self.tensorboard = tensorboard
        self.progress = progress
        self._bar = None
        self._tb = None
        self._t0 = 0.0
        self._samples = 0

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        path = trainer.out_dir / "log.jsonl"
        if path.exists():  # keep only the lines up to the step we resume from
            kept = [ln for ln in path.read_text().splitlines() if _step_of(ln) <= trainer.step]
            path.write_text("".join(ln + "\n" for ln in kept))
        self._file = path.open("a")
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(trainer.out_dir / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed; TensorBoard scalars are off")
        if self.progress:
            self._bar = Progress(trainer.max_steps, "train", unit="step", initial=trainer.step)
        self._t0 = time.perf_counter()
        self._samples = 0

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not trainer.dist.is_main:
            return
        self._samples += trainer.samples_per_step
        if self._bar is not None:
            self._bar.update(1)
        if trainer.step % self.every and trainer.step != trainer.max_steps:
            return
        dt = max(time.perf_counter() - self._t0, 1e-9)
        rec = {
            "step": trainer.step,
            "loss": metrics["loss"],
            "lr": metrics["lr"],
            "samples_per_sec": self._samples / dt,
            "epoch": trainer.epoch,
            "time": time.time(),
        }
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k in ("loss", "lr", "samples_per_sec"):
                self._tb.add_scalar(f"train/{k}", rec[k], trainer.step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.3g}", sps=f"{rec['samples_per_sec']:.1f}")
        self._t0 = time.perf_counter()
        self._samples = 0

    def after_train(self, trainer: Trainer) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar, the log file and the TensorBoard writer (also on failure)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class CheckpointHook(Hook):
    """Writes a full checkpoint every ``every`` steps and at the end; keeps the newest ``keep_last``."""

    def __init__(self, every: int, keep_last: int = 2) -> None:
        self.every = every
        self.keep_last = keep_last

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.step % self.every == 0 and trainer.step != trainer.max_steps:
            trainer.save_checkpoint(keep_last=self.keep_last)

    def after_train(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(keep_last=self.keep_last)
        trainer.save_backbone(trainer.out_dir / "backbone.safetensors")


class EvalHook(Hook):
    """Runs ``evaluate(model, contract) -> {set name: accuracy}`` every ``every`` steps; keeps the best backbone.

    The best model (highest mean accuracy over the sets) is written to ``DIR/best.safetensors`` and
    its scores to ``DIR/best.json``; every result is appended to ``DIR/eval.jsonl``.
    """

    def __init__(self, every: int, evaluate: Callable[[Any], dict[str, float]]) -> None:
        self.every = every
        self.evaluate = evaluate
        self.best = -math.inf

    def before_train(self, trainer: Trainer) -> None:
        best = trainer.out_dir / "best.json"
        if best.exists():
            self.best = json.loads(best.read_text()).get("mean", -math.inf)

    def _run(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        scores = self.evaluate(trainer.bare_model, trainer.contract)
        mean = sum(scores.values()) / max(1, len(scores))
        rec = {"step": trainer.step, "mean": mean, **scores}
        with (trainer.out_dir / "eval.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
        log.info("eval at step %d: %s", trainer.step, rec)
        if mean > self.best:
            self.best = mean
            trainer.save_backbone(trainer.out_dir / "best.safetensors")
            (trainer.out_dir / "best.json").write_text(json.dumps(rec, indent=2))

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.every and trainer.step % self.every == 0:
            self._run(trainer)


def ensure_dir(p: str | Path) -> Path:
    """Create ``p`` (and parents) and return it as a Path."""
    p = Path(p)
    p.mkdir(parents=True, exist_ok=True)
    return p
