"""Optimisers (SGD as the paper, AdamW) with per-group weight decay, and the learning-rate schedules.

Row-sparse class centres: Partial FC at ``sample_rate < 1`` gives its centre matrix a sparse COO
gradient that holds only the S sampled rows (see :class:`arcface.heads.partial_fc.PartialFC`).
:class:`RowSparseSGD` updates only those rows of the centres and of their (dense, contiguous)
momentum buffer, the lazy update of insightface's Partial FC, so the optimiser step costs O(S * D)
instead of O(num_local * D). Dense gradients go through ``torch.optim.SGD`` unchanged, so at
``sample_rate`` 1.0 (dense gradient) everything is ordinary SGD, bit for bit.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from arcface.registry import Registry

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "DenseGradAdamW",
    "RowSparseSGD",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm_",
    "lr_factor",
    "param_groups",
]


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


def _coalesced_sparse_grad(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` coalesced (duplicate rows summed, e.g. after gradient accumulation), stored back.

    Partial FC's gradient already has sorted, unique rows (autograd just does not flag it): then the
    tensor is only re-flagged, without ``coalesce()``'s sort and copy of the (S, D) values.
    """
    grad = p.grad
    if grad.is_coalesced():
        return grad
    idx = grad._indices()
    if grad.sparse_dim() == 1 and bool((idx[0, 1:] > idx[0, :-1]).all()):
        p.grad = torch.sparse_coo_tensor(idx, grad._values(), grad.shape, is_coalesced=True, check_invariants=False)
    else:
        p.grad = grad.coalesce()
    return p.grad


class RowSparseSGD(torch.optim.SGD):
    """``torch.optim.SGD`` that also takes row-sparse gradients (Partial FC's sampled centres).

    A parameter whose ``.grad`` is dense gets exactly ``torch.optim.SGD``'s update. A parameter whose
    ``.grad`` is a sparse COO tensor over dim 0 (rows ``i`` with gradient rows ``g_i``; duplicates are
    summed) gets the *lazy* update of those rows only::

        d_i    = g_i + weight_decay * w_i
        buf_i  = momentum * buf_i + d_i                    (buf is dense, zero where never touched)
        w_i   -= lr * (d_i + momentum * buf_i if nesterov else buf_i)

    Rows without a gradient this step are left alone: neither their weight decay nor their momentum
    is applied (they are not decayed or carried by their old velocity until they are sampled again),
    as in insightface's Partial FC. When every row is present the update equals the dense one. The
    momentum buffer is one dense tensor shaped like the parameter, under the same state key
    (``"momentum_buffer"``) as ``torch.optim.SGD``, so ``state_dict``/checkpoints are unchanged.

    Sparse rows need ``dampening == 0`` (torch's first-step rule ``buf = d`` would need a per-row
    record of first use) and ``maximize`` is honoured.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [
            (p, group)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None and p.grad.is_sparse
        ]
        if not sparse:
            super().step()
            return loss
        grads = [p.grad for p, _ in sparse]
        for p, _ in sparse:  # hidden from torch's SGD: it would take the slow, dense-ish sparse path
            p.grad = None
        try:
            super().step()
        finally:
            for (p, _), g in zip(sparse, grads):
                p.grad = g
        for p, group in sparse:
            self._row_sparse_update(p, group)
        return loss

    def _row_sparse_update(self, p: torch.Tensor, group: dict) -> None:
        grad = _coalesced_sparse_grad(p)
        if grad.sparse_dim() != 1 or grad.dense_dim() != p.dim() - 1:
            raise ValueError("RowSparseSGD: a sparse gradient must be sparse over dim 0 only (rows)")
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        rows = grad.indices()[0]  # (n,) unique, sorted
        d = grad.values()  # (n, D)
        if group["maximize"]:
            d = -d
        w = p.index_select(0, rows)  # (n, D)
        if wd != 0:
            d = d.add(w, alpha=wd)
        if mu != 0:
            if group["dampening"] != 0:
                raise ValueError("RowSparseSGD: row-sparse gradients need dampening == 0")
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:  # one dense, contiguous buffer beside the parameter
                buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            b = buf.index_select(0, rows).mul_(mu).add_(d)  # (n, D)
            buf.index_copy_(0, rows, b)
            d = d.add(b, alpha=mu) if group["nesterov"] else b
        p.index_copy_(0, rows, w.add_(d, alpha=-lr))


class DenseGradAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that accepts Partial FC's row-sparse centre gradients by densifying them.

    Adam's moments and bias correction have no exact lazy row-wise form, so a sparse gradient is
    turned into a dense one (zero on the rows not sampled) before the ordinary AdamW step: the
    update is the same as before row-sparse gradients existed (every row's moments and decoupled
    weight decay move every step), and the optimiser step saves no memory with sampling (the
    forward/backward still do). Use SGD for the memory-lean path.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    p.grad = p.grad.to_dense()
        return super().step(closure)


def clip_grad_norm_(
    parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0
) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse COO gradients (Partial FC's centres).

    Without sparse gradients it *is* torch's function. With them, each sparse gradient is coalesced
    (stored back) and its values count in the total norm like the dense rows they stand for.

    Returns:
        The total norm of the gradients (before clipping), as a 0-d tensor.
    """
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    tensors = [_coalesced_sparse_grad(p).values() if p.grad.is_sparse else p.grad for p in params]
    norm_type = float(norm_type)
    norms = [torch.linalg.vector_norm(t, norm_type) for t in tensors]
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for t in tensors:
        t.mul_(coef.to(t.device, t.dtype))  # a coalesced gradient's values() are its storage
    return total


#: Optimisers by ``optim.name``: ``factory(param_groups, cfg) -> torch.optim.Optimizer``.
OPTIMIZERS: Registry[Callable[[list[dict], Any], torch.optim.Optimizer]] = Registry("optimiser")
#: Learning-rate schedules by ``schedule.name``: ``factor(cfg, step after warm-up, steps after warm-up) -> float``.
SCHEDULES: Registry[Callable[[Any, int, int], float]] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return RowSparseSGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return DenseGradAdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


@SCHEDULES.register("constant")
def _constant(cfg: Any, step: int, span: int) -> float:
    return 1.0


@SCHEDULES.register("step")
def _step(cfg: Any, step: int, span: int) -> float:
    return cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), step + cfg.warmup_steps)


@SCHEDULES.register("poly")
def _poly(cfg: Any, step: int, span: int) -> float:
    return (1.0 - min(1.0, step / max(1, span))) ** cfg.power


def build_optimizer(cfg: Any, model: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``cfg.name`` of :data:`OPTIMIZERS` (an ``OptimConfig``) over the backbone and the head.

    SGD is :class:`RowSparseSGD`: ``torch.optim.SGD`` for dense gradients, a lazy row update for
    Partial FC's sampled centres. AdamW is :class:`DenseGradAdamW` (sparse centre gradients are
    densified first).

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    groups = param_groups([(model, 1.0), (head, cfg.head_lr_mult)], cfg.weight_decay, cfg.no_decay_1d)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    return OPTIMIZERS.get(cfg.name)(groups, cfg)


def lr_factor(cfg: Any, step: int, total_steps: int) -> float:
    """The multiplier of the base lr at optimiser step ``step`` (0-based) of ``total_steps`` (a ``ScheduleConfig``).

    Linear warm-up over ``warmup_steps`` (reaching 1.0 at the last warm-up step), then the schedule ``cfg.name`` of
    :data:`SCHEDULES`.
    """
    warm = cfg.warmup_steps
    if step < warm:
        return (step + 1) / warm
    return SCHEDULES.get(cfg.name)(cfg, step - warm, total_steps - warm)


def build_scheduler(
    cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step (not per micro-batch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total_steps))
