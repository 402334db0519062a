"""Typed training configuration, loaded from YAML and validated on load.

Every section is a dataclass. An unknown or misspelled key is an error that names its dotted path
(``optim.momentun: unknown key; known: ...``), never a silently ignored setting. The CLI mirrors the
config: ``--set optim.lr=0.05`` overrides any field, its value parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from arcface.engine.optim import OPTIMIZERS, SCHEDULES


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


@dataclass
class ModelConfig:
    """The backbone: a name from ``arcface.models.MODELS`` and its options."""

    name: str = "r50"
    num_features: int = 512
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadConfig:
    """The margin head (a kind from ``arcface.heads.HEADS``) and Partial FC sampling.

    ``sample_rate`` < 1 keeps every positive class of the global batch plus random negatives up to
    ``sample_rate * num_classes`` centres per step (Partial FC, https://arxiv.org/abs/2203.15565).
    """

    kind: str = "arcface"
    params: dict[str, Any] = field(default_factory=dict)
    sample_rate: float = 1.0
    partial_fc: bool = False
    init: str = "random"  # random | class_means (centres = mean embedding of each class: for fine-tuning)


@dataclass
class DataConfig:
    """The training set: a kind from ``arcface.data.DATASETS`` and its constructor arguments."""

    kind: str = "synthetic"
    params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 128
    num_workers: int = 0
    shuffle: bool = True


@dataclass
class OptimConfig:
    """Optimiser. Weight decay is not applied to BatchNorm/PReLU weights and biases (``no_decay_1d``)."""

    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_1d: bool = True
    head_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule in optimiser steps, after ``warmup_steps`` of linear warm-up from 0.

    ``step``: multiply by ``gamma`` at each of ``milestones`` (the paper divides by 10).
    ``poly``: ``lr * (1 - t / total) ** power`` over the steps after warm-up.
    ``constant``: no decay.
    """

    name: str = "step"  # step | poly | constant
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    power: float = 2.0


@dataclass
class TrainConfig:
    """The loop: length, precision, accumulation, clipping, logging and checkpoint cadence."""

    max_steps: int = 1000
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True  # NHWC activations: oneDNN's fast bf16 convolution kernels on CPU take NHWC
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 2
    tensorboard: bool = True
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class EvalSetConfig:
    """One verification set for the periodic evaluation hook."""

    name: str = ""
    kind: str = "bin"  # bin | pairs
    path: str = ""
    pairs: str | None = None


@dataclass
class EvalConfig:
    """Periodic evaluation: every ``every`` steps (0 = never) on ``sets``; best by mean accuracy."""

    every: int = 0
    sets: list[EvalSetConfig] = field(default_factory=list)
    batch_size: int = 64
    flip: bool = True


@dataclass
class Config:
    """A whole training recipe (see ``configs/*.yaml``)."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON serialisable) of every field."""
        return _to_plain(dataclasses.asdict(self))


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads '5e-4' (no dot) as a string; accept numeric strings for floats.
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise ConfigError(f"{dotted}: unknown key; known keys here: {', '.join(known)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a plain dict (e.g. parsed YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML recipe, apply ``--set`` overrides, and validate every key.

    Raises:
        ConfigError: the file is missing or not YAML, or a key is unknown or mistyped (named).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    try:
        return config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    checks = [
        (cfg.data.batch_size > 0, "data.batch_size must be positive"),
        (cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (cfg.train.max_steps >= 0, "train.max_steps must be >= 0"),
        (0 < cfg.head.sample_rate <= 1, "head.sample_rate must be in (0, 1]"),
        (
            cfg.head.init in ("random", "class_means"),
            f"head.init: unknown initialisation {cfg.head.init!r} (random, class_means)",
        ),
        (
            cfg.optim.name in OPTIMIZERS,
            f"optim.name: unknown optimiser {cfg.optim.name!r} ({', '.join(OPTIMIZERS.names())})",
        ),
        (
            cfg.schedule.name in SCHEDULES,
            f"schedule.name: unknown schedule {cfg.schedule.name!r} ({', '.join(SCHEDULES.names())})",
        ),
        (
            cfg.train.precision in ("auto", "fp32", "bf16", "fp16"),
            f"train.precision: unknown {cfg.train.precision!r} (auto, fp32, bf16, fp16)",
        ),
        (cfg.train.device in ("auto", "cpu", "cuda"), f"train.device: unknown {cfg.train.device!r}"),
        (cfg.train.log_every >= 1, "train.log_every must be >= 1"),
        (cfg.train.ckpt_every >= 1, "train.ckpt_every must be >= 1"),
        (cfg.eval.every >= 0, "eval.every must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
