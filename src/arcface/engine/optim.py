"""Optimisers (SGD as the paper, AdamW) with per-group weight decay, and the learning-rate schedules."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import torch
from torch import nn

from arcface.engine.config import OptimConfig, ScheduleConfig


def param_groups(
    modules: Iterable[tuple[nn.Module, float]], weight_decay: float, no_decay_1d: bool
) -> list[dict]:
    """Split trainable parameters into decay / no-decay groups, per module with its lr multiplier.

    1-D parameters (BatchNorm and PReLU weights, biases) get no weight decay when ``no_decay_1d``;
    the class centres (2-D) and conv/linear weights do.
    """
    groups = []
    for module, lr_mult in modules:
        decay, no_decay = [], []
        for p in module.parameters():
            if not p.requires_grad:
                continue
            (no_decay if (no_decay_1d and p.ndim <= 1) else decay).append(p)
        if decay:
            groups.append({"params": decay, "weight_decay": weight_decay, "lr_mult": lr_mult})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_mult": lr_mult})
    return groups


def build_optimizer(cfg: OptimConfig, model: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over the backbone and the head."""
    groups = param_groups([(model, 1.0), (head, cfg.head_lr_mult)], cfg.weight_decay, cfg.no_decay_1d)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name: unknown optimiser {cfg.name!r}")


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """The multiplier of the base lr at optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warm-up over ``warmup_steps`` (reaching 1.0 at the last warm-up step), then the schedule.
    """
    warm = cfg.warmup_steps
    if step < warm:
        return (step + 1) / warm
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), step)
    if cfg.name == "poly":
        span = max(1, total_steps - warm)
        t = min(1.0, (step - warm) / span)
        return (1.0 - t) ** cfg.power
    raise ValueError(f"schedule.name: unknown schedule {cfg.name!r}")


def build_scheduler(
    cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step (not per micro-batch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total_steps))
