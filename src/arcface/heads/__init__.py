"""Margin-softmax heads. ``create_head(kind, embedding_size, num_classes, **params)`` builds one.

Kinds (``HEADS.names()``): softmax, normface, sphereface, cosface, arcface, combined,
subcenter_arcface, curricularface, adaface, magface. Every head is a
:class:`~arcface.heads.base.MarginHead`: ``head.weight`` (C*K, D), ``head.logits(x, y)`` (B, C),
``head(x, y)`` the mean cross-entropy (+ regulariser and auxiliary terms), ``head.logits_with``
for a subset of centres (Partial FC). The logit transforms themselves are pure functions in
:mod:`arcface.heads.margins`; the ArcFace paper's intra/inter/triplet losses are in
:mod:`arcface.heads.auxiliary` and are attached with ``aux={...}``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Importing the modules registers their heads (no other side effect).
from arcface.heads import adaptive, classic  # noqa: F401
from arcface.heads.auxiliary import AUX_LOSSES
from arcface.heads.base import HEADS, MarginHead


def create_head(kind: str, embedding_size: int, num_classes: int, **params: Any) -> nn.Module:
    """Build the margin head registered as ``kind`` over a (num_classes, embedding_size) centre matrix.

    Args:
        kind: a name in ``HEADS.names()``.
        embedding_size: D.
        num_classes: C.
        **params: the head's own parameters (e.g. ``s``, ``m``) and ``aux`` for auxiliary losses;
            an unknown parameter raises TypeError naming it.

    Returns:
        A :class:`~arcface.heads.base.MarginHead`.
    """
    return HEADS.build(kind, embedding_size=embedding_size, num_classes=num_classes, **params)


__all__ = ["AUX_LOSSES", "HEADS", "MarginHead", "create_head"]
