"""The heads the ArcFace paper compares: softmax, NormFace, SphereFace, CosFace, ArcFace, combined.

Each is a thin :class:`~arcface.heads.base.MarginHead` around a pure function of
:mod:`arcface.heads.margins`; defaults are the paper settings (ArcFace paper, Table 2 / section 4,
https://arxiv.org/abs/1801.07698).

Decisions taken where the spec was silent:

* ``softmax`` keeps unnormalised features and centres (``x W^T + b``, ArcFace paper eq. (1));
  its weight starts from N(0, 0.01^2) like the others and its bias at zero.
* ``sphereface`` scales by the feature norm ||x|| by default (``s=None``), as the original
  A-Softmax; a number ``s`` normalises the features and scales by s instead. Its lambda follows the
  SphereFace Caffe layer: the iteration counter is incremented first, then
  ``lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from arcface.heads.base import HEADS, MarginHead, _compute_dtype, _no_autocast
from arcface.heads.margins import (
    arcface_logits,
    combined_logits,
    cosface_logits,
    normface_logits,
    sphereface_logits,
)

__all__ = ["ArcFaceHead", "CombinedHead", "CosFaceHead", "NormFaceHead", "SoftmaxHead", "SphereFaceHead"]


def _check_scale(s: float | None, allow_none: bool = False) -> None:
    if s is None and allow_none:
        return
    if s is None or not s > 0:
        raise ValueError(f"scale s must be > 0, got {s}")


@HEADS.register("softmax")
class SoftmaxHead(MarginHead):
    """Plain softmax: a linear layer with bias, ``logits = x W^T + b`` (the paper's baseline, eq. (1)).

    https://arxiv.org/abs/1801.07698

    Args:
        embedding_size: D.
        num_classes: C.
        aux: auxiliary losses (see :mod:`arcface.heads.auxiliary`).

    Attributes:
        weight: (C, D). bias: (C,).
    """

    def __init__(self, embedding_size: int, num_classes: int, *, aux: Mapping[str, Any] | None = None) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def logits_with(
        self,
        embeddings: Tensor,
        weight: Tensor,
        labels: Tensor,
        *,
        bias: Tensor | None = None,
        target_cos: Tensor | None = None,
    ) -> Tensor:
        """``x W^T + b`` (B, C'); labels and target_cos are unused. See MarginHead.logits_with."""
        del labels, target_cos
        dtype = _compute_dtype(embeddings, weight)
        with _no_autocast(embeddings):
            out = embeddings.to(dtype) @ weight.to(dtype).t()  # (B, C')
            return out if bias is None else out + bias.to(dtype)


@HEADS.register("normface")
class NormFaceHead(MarginHead):
    """NormFace / normalised softmax (the paper's NSL): ``s * cos(theta_j)`` for every class.

    Wang et al., https://arxiv.org/abs/1704.06369; ArcFace paper eq. (2).

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64).
        aux: auxiliary losses.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, *, s: float = 64.0, aux: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        _check_scale(s)
        self.s = float(s)

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        return normface_logits(cos, labels, self.s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}"


@HEADS.register("sphereface")
class SphereFaceHead(MarginHead):
    """SphereFace / A-Softmax: multiplicative angular margin m1 with lambda annealing.

    Target ``scale * (lambda * cos(theta_y) + psi(theta_y)) / (1 + lambda)`` with
    ``psi(theta) = (-1)^k cos(m1 theta) - 2k`` on [k pi/m1, (k+1) pi/m1]; other classes
    ``scale * cos(theta_j)``; ``scale`` = ||x|| (``s=None``, the original) or ``s``.
    Liu et al., https://arxiv.org/abs/1704.08063; lambda schedule of the SphereFace Caffe code:
    ``lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power)``, where ``iteration``
    (a buffer) is incremented by each training-mode call before lambda is read.

    Args:
        embedding_size: D.
        num_classes: C.
        m1: integer multiplicative margin (4).
        s: None to scale by the feature norm, or a positive scale for normalised features.
        base, gamma, power, lambda_min: the annealing schedule (1000, 0.12, 1, 5).
        aux: auxiliary losses.
    """

    iteration: Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        m1: int = 4,
        s: float | None = None,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        if not float(m1).is_integer() or m1 < 1:
            raise ValueError(f"sphereface m1 must be a positive integer, got {m1}")
        _check_scale(s, allow_none=True)
        if base < 0 or gamma < 0 or lambda_min < 0:
            raise ValueError("sphereface base, gamma, lambda_min must be >= 0")
        self.m1 = int(m1)
        self.s = None if s is None else float(s)
        self.base, self.gamma, self.power, self.lambda_min = float(base), float(gamma), float(power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def lambda_(self) -> Tensor:
        """Current lambda (0-d float tensor), from the ``iteration`` buffer."""
        it = self.iteration.to(torch.float64)
        lam = self.base * (1.0 + self.gamma * it) ** (-self.power)
        return torch.clamp(lam, min=self.lambda_min)

    def _update_state(self, cos: Tensor, labels: Tensor, norms: Tensor, target_cos: Tensor | None) -> None:
        self.iteration += 1

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        scale = norms if self.s is None else self.s
        return sphereface_logits(cos, labels, self.m1, self.lambda_.to(cos.dtype), scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, s={self.s}"


@HEADS.register("cosface")
class CosFaceHead(MarginHead):
    """CosFace / LMCL: target ``s * (cos(theta_y) - m)``. https://arxiv.org/abs/1801.09414

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64).
        m: cosine margin (0.35).
        aux: auxiliary losses.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m: float = 0.35,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        _check_scale(s)
        self.s, self.m = float(s), float(m)

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        return cosface_logits(cos, labels, self.s, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}"


@HEADS.register("arcface")
class ArcFaceHead(MarginHead):
    """ArcFace: target ``s * cos(theta_y + m)``. Deng et al., https://arxiv.org/abs/1801.07698

    Default: the exact form with insightface's fallback ``cos(theta) - m sin(m)`` where
    ``cos(theta) <= cos(pi - m)``. ``easy_margin``: margin only where cos(theta) > 0.
    ``straight_through``: same forward, arcface_torch's gradient (the margin is applied as if
    under no_grad, so d logit / d cos = s). See :func:`arcface.heads.margins.arcface_logits`.

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64).
        m: additive angular margin in radians, 0 <= m < pi (0.5).
        easy_margin: use the easy-margin rule.
        straight_through: arcface_torch-compatible gradient.
        aux: auxiliary losses.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        straight_through: bool = False,
        aux: Mapping[str, Any] | None = None,
        rows_per_class: int = 1,
    ) -> None:
        super().__init__(embedding_size, num_classes, rows_per_class=rows_per_class, aux=aux)
        _check_scale(s)
        if not 0 <= m < math.pi:
            raise ValueError(f"arcface margin m must be in [0, pi), got {m}")
        self.s, self.m = float(s), float(m)
        self.easy_margin, self.straight_through = bool(easy_margin), bool(straight_through)

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        return arcface_logits(cos, labels, self.s, self.m, self.easy_margin, self.straight_through)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}=True" for k in ("easy_margin", "straight_through") if getattr(self, k))
        return f"{super().extra_repr()}, s={self.s}, m={self.m}{opts}"


@HEADS.register("combined")
class CombinedHead(MarginHead):
    """Combined margin: target ``s * (cos(m1 theta_y + m2) - m3)`` (ArcFace paper eq. (4)).

    https://arxiv.org/abs/1801.07698. Monotonic treatment: m1 == 1 uses ArcFace's fallback
    (so (1, m, 0) is ArcFace and (1, 0, m) is CosFace exactly); m1 != 1 uses SphereFace's
    extension (-1)^k cos(m1 theta + m2) - 2k. See :func:`arcface.heads.margins.combined_target`.

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64).
        m1, m2, m3: multiplicative angular, additive angular, additive cosine margins (1, 0.3, 0.2).
        aux: auxiliary losses.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        _check_scale(s)
        if not m1 > 0:
            raise ValueError(f"combined m1 must be > 0, got {m1}")
        if m1 == 1 and not 0 <= m2 < math.pi:
            raise ValueError(f"combined m2 must be in [0, pi) when m1 == 1, got {m2}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        return combined_logits(cos, labels, self.s, self.m1, self.m2, self.m3)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"
