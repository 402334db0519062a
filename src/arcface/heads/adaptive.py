"""Heads beyond the ArcFace paper: Sub-center ArcFace, CurricularFace, AdaFace, MagFace.

* Sub-center ArcFace (Deng et al., ECCV 2020,
  https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf): K centres per class,
  the class cosine is the max over them. ``weight`` is (C*K, D), class c at rows c*K .. c*K+K-1
  (``class_rows`` maps class ids to rows; a Partial FC must sample whole row groups).
* CurricularFace (Huang et al., CVPR 2020, https://arxiv.org/abs/2004.00288): hard negatives
  modulated by a running t (buffer ``t``, starts at 0, momentum 0.01).
* AdaFace (Kim et al., CVPR 2022, https://arxiv.org/abs/2204.00964): margin driven by the feature
  norm relative to running statistics (buffers ``batch_mean`` = 20, ``batch_std`` = 100 at start,
  momentum ``t_alpha`` = 0.01 as in the paper's training scripts).
* MagFace (Meng et al., CVPR 2021, https://arxiv.org/abs/2103.06627): margin m(a) growing with
  the feature magnitude a, plus ``lambda_g * g(a)`` as :meth:`MagFaceHead.regulariser`.

Decisions taken where the papers or the spec were silent:

* Running statistics are updated only in training mode, once per ``logits_with`` call, before the
  logits are formed (the official order). CurricularFace's t averages the target cosines of the
  rows whose target is known (all rows when ``target_cos`` is given); AdaFace's statistics use all
  rows (unbiased std) and are left alone for a batch of one.
* AdaFace's margin takes no gradient through the norm (as the official code); MagFace's does (also
  as the official code), and both its margin and g(a) clamp a to [l_a, u_a].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from arcface.heads.base import HEADS, MarginHead, _compute_dtype
from arcface.heads.classic import ArcFaceHead, _check_scale
from arcface.heads.margins import (
    adaface_logits,
    curricular_update,
    curricularface_logits,
    gather_target,
    magface_logits,
    magface_regulariser,
    subcenter_cosine,
)

__all__ = ["AdaFaceHead", "CurricularFaceHead", "MagFaceHead", "SubCenterArcFaceHead"]


@HEADS.register("subcenter_arcface")
class SubCenterArcFaceHead(ArcFaceHead):
    """Sub-center ArcFace: ArcFace on ``max_k cos(x, W_{c,k})`` over K sub-centres per class.

    https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf

    Args:
        embedding_size: D.
        num_classes: C.
        k: sub-centres per class (3).
        s, m, easy_margin, straight_through: as :class:`~arcface.heads.classic.ArcFaceHead`
            (64, 0.5).
        aux: auxiliary losses.

    Attributes:
        weight: (C*K, D), class c at rows c*K .. c*K+K-1 (see ``class_rows``).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        k: int = 3,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        straight_through: bool = False,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        if not float(k).is_integer() or k < 1:
            raise ValueError(f"subcenter k must be a positive integer, got {k}")
        super().__init__(
            embedding_size,
            num_classes,
            s=s,
            m=m,
            easy_margin=easy_margin,
            straight_through=straight_through,
            aux=aux,
            rows_per_class=int(k),
        )

    @property
    def k(self) -> int:
        """Sub-centres per class."""
        return self.rows_per_class

    def _cosine(self, x: Tensor, w: Tensor) -> Tensor:
        return subcenter_cosine(super()._cosine(x, w), self.rows_per_class)  # (B, C')


@HEADS.register("curricularface")
class CurricularFaceHead(MarginHead):
    """CurricularFace: ArcFace target, hard negatives ``cos_j -> cos_j (t + cos_j)``.

    A negative j is hard when ``cos(theta_j) > cos(theta_y + m)``; t is a buffer updated in training
    mode as ``t <- momentum * mean(cos(theta_y)) + (1 - momentum) * t``.
    Huang et al., https://arxiv.org/abs/2004.00288. Under a sharded Partial FC pass ``target_cos``
    to :meth:`logits_with` so that rows whose target lives on another shard are modulated too.

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64).
        m: additive angular margin (0.5).
        momentum: weight of the batch mean in t's update (0.01).
        aux: auxiliary losses.
    """

    t: Tensor
    needs_target_cos = True

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m: float = 0.5,
        momentum: float = 0.01,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        _check_scale(s)
        if not 0 <= momentum <= 1:
            raise ValueError(f"curricularface momentum must be in [0, 1], got {momentum}")
        self.s, self.m, self.momentum = float(s), float(m), float(momentum)
        self.register_buffer("t", torch.zeros(()))

    def _update_state(self, cos: Tensor, labels: Tensor, norms: Tensor, target_cos: Tensor | None) -> None:
        target, valid = gather_target(cos.clamp(-1.0, 1.0), labels)
        if target_cos is not None:
            ref, mask = torch.where(valid, target, target_cos.clamp(-1.0, 1.0)), None
        else:
            ref, mask = target, valid
        self.t.copy_(curricular_update(self.t, ref, self.momentum, mask))

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        return curricularface_logits(cos, labels, self.t, self.s, self.m, target_cos)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}"


@HEADS.register("adaface")
class AdaFaceHead(MarginHead):
    """AdaFace: quality-adaptive margin from the feature norm.

    Target ``s * (cos(clip(theta_y - m g, 0, pi)) - (m + m g))`` with
    ``g = clip(h (||z|| - mu) / (sigma + eps), -1, 1)``; mu and sigma are running statistics of
    the norms (buffers ``batch_mean``, ``batch_std``, momentum ``t_alpha``).
    Kim et al., https://arxiv.org/abs/2204.00964.

    Args:
        embedding_size: D.
        num_classes: C.
        m: margin (0.4).
        h: concentration (0.333).
        s: scale (64).
        t_alpha: momentum of the norm statistics (0.01).
        eps: stabiliser (1e-3).
        aux: auxiliary losses.
    """

    batch_mean: Tensor
    batch_std: Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        _check_scale(s)
        if not 0 <= t_alpha <= 1:
            raise ValueError(f"adaface t_alpha must be in [0, 1], got {t_alpha}")
        self.m, self.h, self.s, self.t_alpha, self.eps = float(m), float(h), float(s), float(t_alpha), float(eps)
        self.register_buffer("batch_mean", torch.full((), 20.0))
        self.register_buffer("batch_std", torch.full((), 100.0))

    def _update_state(self, cos: Tensor, labels: Tensor, norms: Tensor, target_cos: Tensor | None) -> None:
        if norms.numel() < 2:
            return
        safe = norms.clamp(0.001, 100.0)
        a = self.t_alpha
        self.batch_mean.copy_(a * safe.mean() + (1 - a) * self.batch_mean)
        self.batch_std.copy_(a * safe.std() + (1 - a) * self.batch_std)

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        return adaface_logits(cos, labels, norms, self.batch_mean, self.batch_std, self.s, self.m, self.h, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, h={self.h}"


@HEADS.register("magface")
class MagFaceHead(MarginHead):
    """MagFace: ArcFace with margin ``m(a)`` linear in the magnitude a = ||x||, plus ``lambda_g g(a)``.

    ``m(a) = (u_m - l_m)/(u_a - l_a) (a - l_a) + l_m``, ``g(a) = 1/a + a/u_a^2``, a clamped to
    [l_a, u_a]. Meng et al., https://arxiv.org/abs/2103.06627. :meth:`regulariser` (part of
    ``extra_loss`` and ``forward``) is ``lambda_g * mean(g(a))``.

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64).
        l_a, u_a: magnitude bounds (10, 110).
        l_m, u_m: margin bounds (0.45, 0.8).
        lambda_g: regulariser weight (35).
        aux: auxiliary losses.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(embedding_size, num_classes, aux=aux)
        _check_scale(s)
        if not 0 < l_a < u_a:
            raise ValueError(f"magface needs 0 < l_a < u_a, got {l_a}, {u_a}")
        self.s, self.l_a, self.u_a = float(s), float(l_a), float(u_a)
        self.l_m, self.u_m, self.lambda_g = float(l_m), float(u_m), float(lambda_g)

    def regulariser(self, embeddings: Tensor) -> Tensor:
        """``lambda_g * mean_i g(||x_i||)`` (scalar). https://arxiv.org/abs/2103.06627"""
        norms = embeddings.to(_compute_dtype(embeddings)).norm(dim=1)  # (B,)
        return self.lambda_g * magface_regulariser(norms, self.l_a, self.u_a).mean()

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        return magface_logits(cos, labels, norms, self.s, self.l_a, self.u_a, self.l_m, self.u_m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, l_a={self.l_a}, u_a={self.u_a}, lambda_g={self.lambda_g}"
