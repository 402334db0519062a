"""``MarginHead``: the class-centre matrix plus a margin-softmax logit transform.

A head owns ``weight`` (num_classes * K, embedding_size); K = ``rows_per_class`` is 1 for every
kind except Sub-center ArcFace, where class c owns rows ``c*K .. c*K+K-1`` (see ``class_rows``).

The one method a (sharded) Partial FC calls is ``logits_with(embeddings, weight, labels, ...)``:
it takes any subset of centre rows, ``labels`` indexing into that subset and -1 where a row's target
is not in it. Everything runs in float32 with autocast disabled (float64 stays float64, for tests),
whatever the dtype of the embeddings and whatever autocast is active outside.

State that changes during training (SphereFace's iteration counter, CurricularFace's t, AdaFace's
norm statistics) lives in registered buffers, so checkpoints carry it, and is only updated in
training mode, once per ``logits_with`` call (Partial FC calls it once per step and rank).

Decisions taken where the spec was silent:

* ``weight`` is initialised from N(0, 0.01^2) as in arcface_torch's Partial FC.
* ``forward`` ignores rows labelled -1 in the cross-entropy (``ignore_index=-1``).
* ``extra_loss`` accepts an optional ``weight`` (defaults to ``self.weight``); its labels index row
  groups of that matrix. The magnitude regulariser (MagFace) needs no weight; the intra/inter terms
  need the full centre matrix (or a caller that passes the rows it has with remapped labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arcface.heads.auxiliary import AuxInputs, parse_aux
from arcface.heads.margins import gather_target
from arcface.registry import Registry

#: Every head kind, registered by the modules that define them (classic, adaptive).
HEADS: Registry = Registry("head")

__all__ = ["MarginHead"]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64 (gradcheck, references), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _no_autocast(x: Tensor) -> AbstractContextManager[Any]:
    return torch.autocast(device_type=x.device.type, enabled=False)


class MarginHead(nn.Module):
    """Base of every head: centres, cosines, cross-entropy, auxiliary terms.

    Subclasses implement :meth:`_margin_logits` (cosines -> logits) and may override
    :meth:`_cosine` (Sub-center), :meth:`_update_state` (running statistics), or
    :meth:`regulariser` (MagFace).

    Args:
        embedding_size: D, the embedding width.
        num_classes: C, the number of identities.
        rows_per_class: K centre rows per class (Sub-center ArcFace); 1 otherwise.
        aux: auxiliary ArcFace-paper losses, e.g. ``{"intra": 1.0, "triplet": {"margin": 0.35}}``;
            see :func:`arcface.heads.auxiliary.parse_aux`.

    Attributes:
        weight: (C * K, D) parameter, class c at rows c*K .. c*K+K-1.
        needs_target_cos: class attribute, True for heads whose logits read ``target_cos``
            (CurricularFace), so a sharded caller can skip gathering it for the others.
    """

    needs_target_cos: bool = False

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        rows_per_class: int = 1,
        aux: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1 or rows_per_class < 1:
            raise ValueError(
                f"embedding_size, num_classes, rows_per_class must be >= 1, got "
                f"{embedding_size}, {num_classes}, {rows_per_class}"
            )
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.rows_per_class = int(rows_per_class)
        self.weight = nn.Parameter(torch.empty(num_classes * rows_per_class, embedding_size).normal_(0, 0.01))
        self.aux_terms = parse_aux(aux)

    # ------------------------------------------------------------------ layout helpers
    def class_rows(self, class_ids: Tensor) -> Tensor:
        """Rows of ``weight`` that belong to the given classes.

        Args:
            class_ids: (N,) long class ids.

        Returns:
            (N * K,) long row indices, class by class (class_ids[0]'s K rows first).
        """
        k = self.rows_per_class
        offsets = torch.arange(k, device=class_ids.device)
        return (class_ids.long().unsqueeze(1) * k + offsets).reshape(-1)

    # ------------------------------------------------------------------ hooks for subclasses
    def _cosine(self, x: Tensor, w: Tensor) -> Tensor:
        """Cosines (B, C') between x (B, D) and the centre rows w (C'*K, D)."""
        return F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()

    def _update_state(self, cos: Tensor, labels: Tensor, norms: Tensor, target_cos: Tensor | None) -> None:
        """Update running state (training mode only; called before the logits are formed)."""

    def _margin_logits(self, cos: Tensor, labels: Tensor, *, norms: Tensor, target_cos: Tensor | None) -> Tensor:
        """Logits (B, C') from cosines (B, C'), labels (B,), feature norms (B,)."""
        raise NotImplementedError

    def regulariser(self, embeddings: Tensor) -> Tensor:
        """Per-batch regulariser added to the loss (MagFace's lambda_g * g(a)); 0 by default.

        Args:
            embeddings: (B, D).

        Returns:
            Scalar tensor.
        """
        return torch.zeros((), dtype=_compute_dtype(embeddings), device=embeddings.device)

    # ------------------------------------------------------------------ public API
    def logits_with(
        self,
        embeddings: Tensor,
        weight: Tensor,
        labels: Tensor,
        *,
        bias: Tensor | None = None,
        target_cos: Tensor | None = None,
    ) -> Tensor:
        """Scaled, margin-adjusted logits of ``embeddings`` against the given centre rows.

        Args:
            embeddings: (B, D) unnormalised features, any float dtype.
            weight: (C' * K, D) centre rows (a subset of ``self.weight`` or the whole of it).
            labels: (B,) long index into the C' classes of ``weight``; -1 = target not present
                (that row gets the scaling only, no margin).
            bias: (C',) only used by the ``softmax`` head.
            target_cos: optional (B,) cosine of every row's target (gathered from the shard that
                holds it), for heads whose non-target logits depend on it (CurricularFace). When
                None it is read from the target column where present.

        Returns:
            (B, C') float32 logits (float64 if the inputs are float64).
        """
        dtype = _compute_dtype(embeddings, weight)
        with _no_autocast(embeddings):
            x = embeddings.to(dtype)
            w = weight.to(dtype)
            labels = labels.to(device=x.device, dtype=torch.long)
            norms = x.norm(dim=1)  # (B,)
            cos = self._cosine(x, w)  # (B, C')
            if target_cos is not None:
                target_cos = target_cos.to(device=x.device, dtype=dtype)
            if self.training:
                self._update_state(cos.detach(), labels, norms.detach(), target_cos)
            return self._margin_logits(cos, labels, norms=norms, target_cos=target_cos)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Logits (B, C) against all of ``self.weight``; see :meth:`logits_with`."""
        return self.logits_with(embeddings, self.weight, labels, bias=getattr(self, "bias", None))

    def target_cosine(self, embeddings: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
        """Each row's target cosine against the given rows, 0 where the label is -1.

        A sharded caller can sum this over shards (each target lives in exactly one) to get the
        ``target_cos`` argument of :meth:`logits_with`.

        Args:
            embeddings: (B, D).
            weight: (C' * K, D).
            labels: (B,) index into C' or -1.

        Returns:
            (B,) float32 (float64 for float64 inputs), without gradient.
        """
        dtype = _compute_dtype(embeddings, weight)
        with torch.no_grad(), _no_autocast(embeddings):
            labels = labels.to(device=embeddings.device, dtype=torch.long)
            cos = self._cosine(embeddings.to(dtype), weight.to(dtype)).clamp(-1.0, 1.0)
            target, valid = gather_target(cos, labels)
            return torch.where(valid, target, torch.zeros_like(target))

    def extra_loss(self, embeddings: Tensor, labels: Tensor, *, weight: Tensor | None = None) -> Tensor:
        """The regulariser and the configured auxiliary terms only (no cross-entropy).

        Args:
            embeddings: (B, D).
            labels: (B,) class ids into ``weight``'s classes, -1 = ignore.
            weight: (C * K, D) centre rows for the intra/inter terms; ``self.weight`` by default.

        Returns:
            Scalar tensor (an exact 0 for a head without regulariser or auxiliary terms).
        """
        total = self.regulariser(embeddings)
        if not self.aux_terms:
            return total
        w = self.weight if weight is None else weight
        dtype = _compute_dtype(embeddings, w)
        with _no_autocast(embeddings):
            inputs = AuxInputs(
                embeddings.to(dtype),
                labels.to(device=embeddings.device, dtype=torch.long),
                w.to(dtype),
                self.rows_per_class,
            )
            for term in self.aux_terms:
                total = total + term(inputs)
        return total

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of :meth:`logits` plus :meth:`extra_loss`.

        Args:
            embeddings: (B, D) unnormalised features.
            labels: (B,) class ids in [0, C); -1 rows are ignored by the cross-entropy.

        Returns:
            Scalar float32 loss.
        """
        logits = self.logits(embeddings, labels)  # (B, C)
        labels = labels.to(device=logits.device, dtype=torch.long)
        loss = F.cross_entropy(logits, labels, ignore_index=-1)
        return loss + self.extra_loss(embeddings, labels)

    def extra_repr(self) -> str:
        k = f", rows_per_class={self.rows_per_class}" if self.rows_per_class != 1 else ""
        aux = f", aux={[t.name for t in self.aux_terms]}" if self.aux_terms else ""
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}{k}{aux}"
