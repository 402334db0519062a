"""The ArcFace paper's ablation losses (section 3.3 and Table 2) as composable auxiliary terms.

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
https://arxiv.org/abs/1801.07698, section 3.3 "Comparison with SphereFace and CosFace / other losses"
and Table 2 (rows "ArcFace+Intra", "ArcFace+Inter", "Triplet (0.35)", "ArcFace+Triplet", ...).
With N samples in the batch, n classes, theta_{y_i} the angle between sample x_i and its class
centre W_{y_i}, and unit vectors throughout:

* Intra-loss, eq. (5):  ``L_intra = 1/(pi N) * sum_i theta_{y_i}``.
* Inter-loss, eq. (6):  ``L_inter = -1/(pi N (n-1)) * sum_i sum_{j != y_i} arccos(W_{y_i}^T W_j)``.
* Triplet-loss, eq. (7), angular form: ``max(0, arccos(x_a^T x_p) + m - arccos(x_a^T x_n))`` over
  triplets (anchor a, positive p with the same label, negative n with another label), m in
  radians (Table 2 uses m = 0.35).

The paper adds these to a margin loss (ArcFace+Intra) or to the normalised softmax (NS+Inter); here
any head takes them through ``create_head(kind, D, C, aux={...})``, e.g.
``aux={"intra": 1.0, "triplet": {"weight": 1.0, "margin": 0.35}}``; the head's ``extra_loss``
returns ``sum_k weight_k * term_k`` and ``forward`` adds it to the cross-entropy.

Decisions taken where the paper is silent:

* Rows with label -1 (unlabelled / target elsewhere) are left out of every term. A term with no
  usable row is an exact zero that still belongs to the graph.
* Sub-center heads (K centres per class): the "target centre" of a sample is its nearest
  sub-centre of the right class (the one its logit uses), and the "other centres" of the
  inter-loss are all sub-centres of the other classes.
* Triplet mining: ``"all"`` (default) averages the hinge over every valid triplet in the batch,
  the literal form of eq. (7); ``"batch_hard"`` uses, per anchor, the farthest positive and the
  nearest negative (Hermans et al., https://arxiv.org/abs/1703.07737) and averages over anchors.
  Either needs batches with several samples per identity to have positives at all.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from arcface.heads.margins import safe_theta
from arcface.registry import Registry

__all__ = [
    "AUX_LOSSES",
    "AuxInputs",
    "AuxTerm",
    "inter_loss",
    "intra_loss",
    "parse_aux",
    "triplet_loss",
]

_TRIPLET_CHUNK = 1 << 24  # max anchor-chunk * N * N elements held at once by mining="all"


def intra_loss(target_cos: Tensor) -> Tensor:
    """Intra-loss ``1/(pi N) * sum_i theta_{y_i}`` (ArcFace paper eq. (5)).

    https://arxiv.org/abs/1801.07698, section 3.3.

    Args:
        target_cos: (N,) cosine between each sample and its target centre.

    Returns:
        Scalar; 0 when N == 0.
    """
    theta = safe_theta(target_cos)  # (N,)
    if theta.numel() == 0:
        return theta.sum()
    return theta.mean() / math.pi


def inter_loss(target_centres: Tensor, centres: Tensor, is_other: Tensor) -> Tensor:
    """Inter-loss ``-1/(pi N (n-1)) * sum_i sum_{j != y_i} arccos(W_{y_i}^T W_j)`` (eq. (6)).

    Written per sample as ``-mean_i mean_{j in other(i)} angle(W_{y_i}, W_j) / pi`` so that it also
    covers sub-centres (then ``other(i)`` is every row not of class y_i). https://arxiv.org/abs/1801.07698

    Args:
        target_centres: (N, D) the target centre of each sample (any norm; normalised here).
        centres: (R, D) all centre rows (any norm).
        is_other: (N, R) bool, True where row r is a centre of another class than sample i's.

    Returns:
        Scalar; rows with no other centre are skipped, 0 when none is left.
    """
    cos = F.normalize(target_centres, dim=1) @ F.normalize(centres, dim=1).t()  # (N, R)
    theta = safe_theta(cos)
    mask = is_other.to(theta.dtype)
    count = mask.sum(dim=1)  # (N,)
    keep = count > 0
    if not bool(keep.any()):
        return (theta * 0).sum()
    per_row = (theta * mask).sum(dim=1)[keep] / count[keep]  # (N',)
    return -per_row.mean() / math.pi


def triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.35, mining: str = "all") -> Tensor:
    """Angular triplet loss ``max(0, theta(a, p) + m - theta(a, n))`` (ArcFace paper eq. (7)).

    theta(u, v) = arccos of the cosine of the normalised embeddings. https://arxiv.org/abs/1801.07698,
    section 3.3 and Table 2 ("Triplet (0.35)").

    Args:
        embeddings: (N, D) embeddings (any norm).
        labels: (N,) class ids; -1 rows are ignored.
        margin: angular margin m in radians.
        mining: ``"all"`` (mean over all valid triplets) or ``"batch_hard"`` (mean over anchors of
            the hinge with the farthest positive and the nearest negative).

    Returns:
        Scalar; 0 when the batch has no valid triplet.
    """
    if mining not in ("all", "batch_hard"):
        raise ValueError(f"unknown triplet mining {mining!r}; known: 'all', 'batch_hard'")
    x = F.normalize(embeddings, dim=1)
    n = x.shape[0]
    theta = safe_theta(x @ x.t())  # (N, N)
    valid = labels >= 0
    both = valid.unsqueeze(1) & valid.unsqueeze(0)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    pos = same & both & ~torch.eye(n, dtype=torch.bool, device=x.device)
    neg = ~same & both
    if mining == "batch_hard":
        has = pos.any(dim=1) & neg.any(dim=1)
        if not bool(has.any()):
            return (theta * 0).sum()
        far_pos = torch.where(pos, theta, torch.zeros_like(theta)).amax(dim=1)  # (N,)
        near_neg = torch.where(neg, theta, torch.full_like(theta, 2 * math.pi)).amin(dim=1)
        return F.relu(far_pos + margin - near_neg)[has].mean()
    total = (theta * 0).sum()
    count = 0
    chunk = max(1, _TRIPLET_CHUNK // max(1, n * n))
    for start in range(0, n, chunk):
        a = slice(start, start + chunk)
        hinge = F.relu(theta[a].unsqueeze(2) + margin - theta[a].unsqueeze(1))  # (c, N_p, N_n)
        mask = pos[a].unsqueeze(2) & neg[a].unsqueeze(1)
        total = total + (hinge * mask).sum()
        count += int(mask.sum())
    return total / max(count, 1)


class AuxInputs:
    """What the auxiliary terms read, computed lazily from a head's inputs (float32 or float64).

    Args:
        embeddings: (B, D) embeddings as given to the head.
        labels: (B,) class ids (row-group index into ``weight``), -1 = ignore.
        weight: (C*K, D) centre rows; class c owns rows c*K .. c*K+K-1.
        rows_per_class: K (1 for every head except Sub-center ArcFace).
    """

    def __init__(self, embeddings: Tensor, labels: Tensor, weight: Tensor, rows_per_class: int = 1) -> None:
        self.embeddings = embeddings
        self.labels = labels
        self.weight = weight
        self.k = rows_per_class

    @cached_property
    def _valid(self) -> Tensor:
        return torch.nonzero(self.labels >= 0).squeeze(1)  # (N,)

    @cached_property
    def _target(self) -> tuple[Tensor, Tensor]:
        """(target_cos (N,), target_row (N,)) over labelled rows; nearest sub-centre for K > 1."""
        idx = self._valid
        x = F.normalize(self.embeddings[idx], dim=1)  # (N, D)
        rows = self.labels[idx].unsqueeze(1) * self.k + torch.arange(self.k, device=x.device)  # (N, K)
        w = F.normalize(self.weight[rows], dim=2)  # (N, K, D)
        cos = torch.einsum("nd,nkd->nk", x, w)  # (N, K)
        best = cos.argmax(dim=1)  # (N,)
        return cos.gather(1, best.unsqueeze(1)).squeeze(1), rows.gather(1, best.unsqueeze(1)).squeeze(1)

    @property
    def target_cos(self) -> Tensor:
        """(N,) cosine of each labelled sample to its (nearest) target centre."""
        return self._target[0]

    @property
    def target_centres(self) -> Tensor:
        """(N, D) the (nearest) target centre row of each labelled sample."""
        return self.weight[self._target[1]]

    @property
    def is_other(self) -> Tensor:
        """(N, R) True where centre row r belongs to another class than labelled sample i."""
        row_class = torch.arange(self.weight.shape[0], device=self.weight.device) // self.k  # (R,)
        return row_class.unsqueeze(0) != self.labels[self._valid].unsqueeze(1)


AUX_LOSSES: Registry = Registry("auxiliary loss")


@AUX_LOSSES.register("intra")
def _intra_term(inputs: AuxInputs) -> Tensor:
    return intra_loss(inputs.target_cos)


@AUX_LOSSES.register("inter")
def _inter_term(inputs: AuxInputs) -> Tensor:
    return inter_loss(inputs.target_centres, inputs.weight, inputs.is_other)


@AUX_LOSSES.register("triplet")
def _triplet_term(inputs: AuxInputs, margin: float = 0.35, mining: str = "all") -> Tensor:
    return triplet_loss(inputs.embeddings, inputs.labels, margin=margin, mining=mining)


@dataclass(frozen=True)
class AuxTerm:
    """One configured auxiliary term: ``weight * AUX_LOSSES[name](inputs, **params)``."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, inputs: AuxInputs) -> Tensor:
        fn: Callable[..., Tensor] = AUX_LOSSES.get(self.name)
        return self.weight * fn(inputs, **self.params)


def parse_aux(aux: Mapping[str, Any] | None) -> tuple[AuxTerm, ...]:
    """Validate an ``aux`` spec: ``{name: weight}`` or ``{name: {"weight": w, **params}}``.

    Args:
        aux: mapping from a registered auxiliary loss name (``AUX_LOSSES.names()``) to its weight
            or to a dict with an optional ``weight`` (default 1.0) and the term's parameters.

    Returns:
        The terms, in the mapping's order.

    Raises:
        KeyError: an unknown loss name (the message lists the known ones).
        TypeError: an unknown parameter for a loss (the message names it).
        ValueError: an invalid value (e.g. unknown triplet mining).
    """
    if not aux:
        return ()
    terms = []
    for name, spec in aux.items():
        fn = AUX_LOSSES.get(name)
        if isinstance(spec, Mapping):
            params = dict(spec)
            weight = float(params.pop("weight", 1.0))
        else:
            weight, params = float(spec), {}
        try:
            inspect.signature(fn).bind(None, **params)
        except TypeError as err:
            raise TypeError(f"auxiliary loss {name!r}: {err}") from None
        if params.get("mining", "all") not in ("all", "batch_hard"):
            raise ValueError(f"auxiliary loss {name!r}: unknown mining {params['mining']!r}")
        terms.append(AuxTerm(name, weight, params))
    return tuple(terms)
