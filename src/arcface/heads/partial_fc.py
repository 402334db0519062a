"""Partial FC: a margin head over sampled, model-parallel class centres.

An et al., "Partial FC: Training 10 Million Identities on a Single Machine"
(https://arxiv.org/abs/2010.05222) and "Killing Two Birds with One Stone: Efficient and Robust
Training of Face Recognition CNNs by Partial FC" (https://arxiv.org/abs/2203.15565).

Any head from :data:`arcface.heads.HEADS` runs over a class-centre matrix that is

* **sharded**: rank ``r`` of a ``world_size``-rank group owns the contiguous class range
  ``[class_start, class_start + num_local)``. The split is as even as possible: every rank gets
  ``num_classes // world_size`` classes and the first ``num_classes % world_size`` ranks one more,
  so ``class_start(r) = r * (num_classes // world_size) + min(r, num_classes % world_size)``.
  The shard is the head's own weight: one contiguous ``nn.Parameter`` per rank (the optimiser keeps
  its momentum beside it, one dense contiguous buffer per rank as well);
* **sampled** (training mode, ``sample_rate < 1``): each step keeps every class of this shard that
  is a positive of the *global* batch plus random negatives, ``max(num_sample, #positives)``
  classes in all, with ``num_sample = max(1, int(sample_rate * num_local))``.

Every rank all-gathers the embeddings (gradients flow back) and labels, computes the margin logits
of the whole global batch against its (sampled) centres, and the softmax cross-entropy is computed
across the shards with two small all-reduces (the row max; the exp-sum and target logit together).
Nothing of size ``(B, num_classes)`` is ever built: the logits are ``(B_global, num_sampled_local)``.

Row-sparse update (as insightface's Partial FC): when sampling, the S sampled centre rows are
gathered with ``F.embedding(rows, weight, sparse=True)``, so ``weight.grad`` is a sparse COO tensor
holding only those S rows (no dense ``(num_local, D)`` gradient is built), and
:class:`arcface.engine.optim.RowSparseSGD` (what ``build_optimizer`` returns for SGD) updates only
those rows of the centres and of the momentum buffer. So the step's transient memory and work scale
with ``sample_rate``; the price is that rows not sampled in a step get no weight decay and no
momentum that step (lazy update). At ``sample_rate`` 1.0 (and in evaluation) the weight is used
whole, the gradient is dense and the update is exactly ``torch.optim.SGD``'s.

With ``world_size == 1`` no process group is needed and nothing from ``torch.distributed`` is
called; at ``sample_rate == 1`` the module then computes exactly the full head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arcface.heads import create_head

__all__ = ["PartialFC", "shard_range"]

_MASK64 = (1 << 64) - 1


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The class range a rank owns: ``(start, num_local)``.

    Every rank gets ``num_classes // world_size`` classes; the first ``num_classes % world_size``
    ranks get one more.

    Args:
        num_classes: classes over all ranks.
        rank: this rank, ``0 <= rank < world_size``.
        world_size: ranks in the group.

    Returns:
        ``(start, num_local)``: rank ``rank`` owns classes ``[start, start + num_local)``.
    """
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from a few integers (independent streams per rank and step)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h & ((1 << 63) - 1)


# -- collectives with exact backward ------------------------------------------------------------
class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients of every rank and keeps its rows.

    The backward is the all-gather's adjoint (a reduce-scatter, done here as all-reduce + slice so it
    runs on gloo too), scaled by ``grad_scale`` (the DDP compensation, see :class:`PartialFC`).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any, grad_scale: float) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.group, ctx.grad_scale, ctx.n = group, grad_scale, x.shape[0]
        ctx.rank = dist.get_rank(group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        mine = grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]
        if ctx.grad_scale != 1.0:
            mine = mine * ctx.grad_scale
        return mine, None, None


def _all_gather_nograd(x: torch.Tensor, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=0)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy whose classes (columns) are split over the ranks of a group.

    Each rank holds ``logits`` (B, C_r) for the same B rows; ``labels`` (B,) index a local column or
    are -1 where the row's target lives on another rank (each target of a ``valid`` row lives on
    exactly one rank). The global row max (it cancels in the gradient), the exp-sum and the target
    logit are all-reduced, so the loss is the same on every rank and equals the cross-entropy over
    the concatenated columns, averaged over the ``valid`` rows (``ignore_index=-1`` semantics).
    The backward is exact: ``(softmax - onehot) / N_valid`` over the local columns.
    """

    @staticmethod
    def forward(ctx, logits, labels, valid, group, distributed):  # type: ignore[override]
        has = labels >= 0  # (B,) target in this shard's columns
        safe = labels.clamp(min=0).unsqueeze(1)  # (B, 1)
        if logits.shape[1]:
            target = torch.where(has, logits.gather(1, safe).squeeze(1), logits.new_zeros(()))  # (B,)
            row_max = logits.max(dim=1).values  # (B,)
        else:  # a shard that sampled nothing (cannot happen with num_sample >= 1, kept for safety)
            target = logits.new_zeros(logits.shape[0])
            row_max = logits.new_full((logits.shape[0],), torch.finfo(logits.dtype).min)
        if distributed:
            import torch.distributed as dist

            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = (logits - row_max.unsqueeze(1)).exp_()  # (B, C_r), one buffer
        sums = torch.stack([exp.sum(dim=1), target])  # (2, B): one collective for both
        if distributed:
            dist.all_reduce(sums, group=group)
        sum_exp, target = sums[0], sums[1]
        weights = valid.to(logits.dtype)  # (B,)
        count = weights.sum()
        loss = ((torch.log(sum_exp) + row_max - target) * weights).sum() / count
        prob = exp.div_(sum_exp.unsqueeze(1))  # (B, C_r) the softmax over all shards, local columns
        ctx.save_for_backward(prob, labels, weights, count)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        prob, labels, weights, count = ctx.saved_tensors
        scale = weights * (grad_loss / count)  # (B,) 0 on ignored rows
        grad = prob * scale.unsqueeze(1)  # (B, C_r)
        if grad.shape[1]:  # minus the one-hot, where the target is a local column (no host sync)
            own = torch.where(labels >= 0, scale, torch.zeros_like(scale))  # (B,)
            grad.scatter_add_(1, labels.clamp(min=0).unsqueeze(1), -own.unsqueeze(1))
        return grad, None, None, None, None


# -- the module ---------------------------------------------------------------------------------
class PartialFC(nn.Module):
    """A margin head over sampled, rank-sharded class centres (Partial FC).

    Paper: https://arxiv.org/abs/2010.05222 and https://arxiv.org/abs/2203.15565.

    Args:
        kind: a head from :data:`arcface.heads.HEADS` (``arcface``, ``cosface``, ``softmax``, ...).
        embedding_size: D, the embedding width.
        num_classes: classes over all ranks.
        sample_rate: fraction of this shard's classes used per training step (positives are always
            kept); 1.0 uses every centre. Evaluation mode always uses every centre.
        rank: this process's rank *in* ``group`` (0 in a single process).
        world_size: ranks in ``group`` (1: a plain process, no ``torch.distributed`` needed).
        group: the process group (``None``: the default group); only used when ``world_size > 1``.
        seed: seeds the negative sampling, mixed with the rank and the sampling step, so every rank
            draws independently and a resumed run draws the same samples.
        sparse_grad: when sampling, give the centres a row-sparse (COO) gradient of the sampled rows
            only (default). The optimiser must accept it: ``build_optimizer``'s SGD (lazy row update)
            and AdamW (densified) do, and so does ``arcface.engine.optim.clip_grad_norm_``; plain
            ``torch.optim.SGD`` with momentum or weight decay and ``torch.nn.utils.clip_grad_norm_``
            do not. False: a dense gradient, zero on the rows not sampled.
        **head_params: passed to the head (``s``, ``m``, ``k``, ``aux``, ...).

    Attributes:
        head: the margin head built with ``create_head(kind, embedding_size, num_local)``; its
            ``weight`` (num_local * K, D) is this rank's shard, one contiguous parameter (K = 1
            except Sub-center ArcFace, whose classes are sampled as whole row groups);
            ``softmax``'s bias (num_local,) is sharded the same way.
        class_start, num_local: this rank owns classes ``[class_start, class_start + num_local)``,
            see :func:`shard_range`.
        num_sample: ``max(1, int(sample_rate * num_local))``, the classes sampled per step (more
            when the global batch has more positives in this shard: all of them are kept).

    Gradients:
        * Centres: when sampling, the logits use ``F.embedding(rows, weight, sparse=True)``, so the
          weight gets a sparse COO gradient of the S*K sampled rows only (duplicates summed when
          coalesced, e.g. after gradient accumulation); ``RowSparseSGD`` then updates those rows of
          the centres and of the momentum and nothing else (no weight decay or momentum for the
          other rows that step). With ``sparse_grad=False``, or without sampling, the gradient is
          dense (zero on rows not sampled). ``softmax``'s bias (num_local,) always gets a dense
          gradient and a dense update: it is 1/D of the centres.
        * Embeddings: the embeddings of every rank feed every shard, so the gradient reaching this
          rank's embeddings is the sum over shards (the all-gather's backward), **multiplied by
          world_size**: DDP averages the backbone gradients over ranks, and the factor makes that
          average exactly the gradient of the global mean loss (arcface_torch does the same). So
          ``embeddings.grad`` on rank r is ``world_size`` times the gradient of the returned loss
          with respect to those rows; with ``world_size == 1`` the factor is 1.
        * The head's regulariser (MagFace's ``lambda_g * mean g(a)``) is computed on the local rows;
          its gradient already carries the same factor (``1/B_local = world_size/B_global``) and its
          value is averaged over ranks for the returned loss.

    Head state and ``target_cos``: the head sees the whole global batch once per step on every rank
    (``logits_with``), so its running state (SphereFace's iteration, CurricularFace's t, AdaFace's
    norm statistics) evolves identically on every rank and as in a single process. With
    ``world_size > 1`` each row's target cosine is computed by the shard that owns the target,
    shared with an all-reduce (no gradient, as the head's contract says) and passed as
    ``target_cos`` to the heads whose class attribute ``needs_target_cos`` is True
    (CurricularFace; a head without the attribute gets it too). With one rank every target is in
    the logits' columns and the head reads it there.

    Auxiliary ArcFace-paper terms (``aux=...``): with one rank they get the centre rows used this
    step (all of them at ``sample_rate`` 1.0, so the loss equals the plain head's); with several
    ranks they would need centres of other shards and are refused (ValueError).

    Note:
        Every rank must feed the same number of rows per step (the all-gather needs equal shapes;
        use ``drop_last``). Labels are global class ids in ``[0, num_classes)``, or -1 for a row to
        ignore (as the plain head's ``ignore_index=-1``); anything else raises ValueError.
    """

    def __init__(
        self,
        kind: str,
        embedding_size: int,
        num_classes: int,
        *,
        sample_rate: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
        group: Any = None,
        seed: int = 0,
        sparse_grad: bool = True,
        **head_params: Any,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_classes < world_size:
            raise ValueError(f"num_classes ({num_classes}) must be at least world_size ({world_size})")
        self.kind = kind
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.rank, self.world_size, self.group, self.seed = int(rank), int(world_size), group, int(seed)
        self.sparse_grad = bool(sparse_grad)
        self.class_start, self.num_local = shard_range(self.num_classes, self.rank, self.world_size)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.head = create_head(kind, embedding_size, self.num_local, **head_params)
        if self.world_size > 1 and getattr(self.head, "aux_terms", None):
            raise ValueError(
                "PartialFC: auxiliary terms (aux=...) need centres of every shard; they are only "
                "supported with world_size == 1"
            )
        self._sample_step = 0  # training steps that sampled; saved in the state dict
        self._generators: dict[torch.device, torch.Generator] = {}
        self._group_checked = False

    # -- parameters -------------------------------------------------------------------------------
    @property
    def weight(self) -> nn.Parameter:
        """This rank's centres, (num_local * K, D): the head's own parameter."""
        return self.head.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """This rank's slice of the head's bias (num_local,), or None for heads without one."""
        return getattr(self.head, "bias", None)

    @property
    def rows_per_class(self) -> int:
        """K, centre rows per class (Sub-center ArcFace), else 1."""
        return int(getattr(self.head, "rows_per_class", 1))

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, num_classes={self.num_classes}, shard=[{self.class_start}, "
            f"{self.class_start + self.num_local}), rank={self.rank}/{self.world_size}, "
            f"sample_rate={self.sample_rate}, sparse_grad={self.sparse_grad}"
        )

    # -- sampling ---------------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        gen.manual_seed(_mix_seed(self.seed, self.rank, self._sample_step))
        return gen

    def sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw this step's classes: every local positive plus random negatives.

        Vectorised (no Python loop over classes): the positives get a score above any uniform draw
        and the ``num_sample`` best scores are kept. Advances the sampling step.

        Args:
            local_labels: (B_global,) long, the class index within this shard, or -1 where the
                row's class belongs to another shard (or the row is ignored).

        Returns:
            ``(index, labels)``: ``index`` (S,) sorted class indices into the shard, with
            ``S = max(num_sample, #positives)``; ``labels`` (B_global,) the position of each row's
            class in ``index``, or -1.
        """
        device = local_labels.device
        has = local_labels >= 0
        positives = torch.unique(local_labels[has])  # (P,) sorted
        if positives.numel() >= self.num_sample:
            index = positives
        else:
            scores = torch.rand(self.num_local, generator=self._generator(device), device=device)
            scores[positives] = 2.0  # above every uniform draw: always kept
            index = torch.topk(scores, self.num_sample, sorted=False).indices
            index = torch.sort(index).values
        self._sample_step += 1
        mapped = torch.searchsorted(index, local_labels.clamp(min=0))
        labels = torch.where(has, mapped, torch.full_like(local_labels, -1))
        return index, labels

    def get_extra_state(self) -> torch.Tensor:
        """``[sampling step, seed]`` as an int64 tensor, so a resumed run draws the same samples.

        The generator is re-seeded from (seed, rank, step) at every draw, so this small counter is
        its whole state, on any device (a CUDA generator's raw state would not load on a CPU).
        """
        return torch.tensor([self._sample_step, self.seed], dtype=torch.int64)

    def set_extra_state(self, state: Any) -> None:
        state = torch.as_tensor(state)
        self._sample_step, self.seed = int(state[0]), int(state[1])

    # -- forward ----------------------------------------------------------------------------------
    def _check_group(self) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"PartialFC with world_size={self.world_size} needs an initialised process group")
        got = (dist.get_rank(self.group), dist.get_world_size(self.group))
        if got != (self.rank, self.world_size):
            raise ValueError(f"PartialFC was built for rank/world {self.rank}/{self.world_size}, the group has {got}")
        self._group_checked = True

    @torch.no_grad()
    def _target_cos(self, embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        """Each row's cosine to its target class (max over sub-centres), whichever shard owns it.

        Args:
            embeddings: (B, D) the global batch.
            local_labels: (B,) class index in this shard or -1.

        Returns:
            (B,) float32 (float64 for float64 inputs), all-reduced over the group, no gradient.
        """
        import torch.distributed as dist

        w_all = self.weight
        dtype = torch.float64 if torch.float64 in (embeddings.dtype, w_all.dtype) else torch.float32
        rows = torch.nonzero(local_labels >= 0, as_tuple=True)[0]  # (R,)
        k = self.rows_per_class
        x = F.normalize(embeddings.index_select(0, rows).to(dtype), dim=1)  # (R, D)
        centre_rows = (local_labels[rows].unsqueeze(1) * k + torch.arange(k, device=rows.device)).reshape(-1)
        w = F.normalize(w_all.index_select(0, centre_rows).to(dtype), dim=1).view(-1, k, x.shape[1])  # (R, K, D)
        cos = torch.einsum("rkd,rd->rk", w, x).amax(dim=1).clamp(-1.0, 1.0)  # (R,)
        out = torch.zeros(embeddings.shape[0], dtype=dtype, device=embeddings.device)
        out.index_copy_(0, rows, cos)
        dist.all_reduce(out, group=self.group)
        return out

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin cross-entropy over the global batch (same value on every rank) + regulariser.

        Args:
            embeddings: (B_local, D) backbone features (un-normalised).
            labels: (B_local,) long global class ids in ``[0, num_classes)``; -1 rows are ignored.

        Returns:
            A scalar loss (float32; float64 for float64 inputs).
        """
        labels = labels.to(device=embeddings.device, dtype=torch.long)
        distributed = self.world_size > 1
        if distributed:
            if not self._group_checked:
                self._check_group()
            all_emb = _AllGather.apply(embeddings, self.group, float(self.world_size))  # (B, D)
            all_labels = _all_gather_nograd(labels, self.group)  # (B,)
        else:
            all_emb, all_labels = embeddings, labels
        # One host sync per step (the trainer syncs on the loss anyway): a bad label must not pass
        # silently, as it would own no shard and its target logit would read as 0.
        if bool(((all_labels < -1) | (all_labels >= self.num_classes)).any()):
            raise ValueError(f"PartialFC: labels must be in [0, {self.num_classes}) or -1 (ignored)")
        local = all_labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))  # (B,)

        weight, bias = self.weight, self.bias
        if self.training and self.num_sample < self.num_local:
            index, sub_labels = self.sample(local)  # (S,), (B,)
            rows = index if self.rows_per_class == 1 else self.head.class_rows(index)  # (S*K,)
            if self.sparse_grad:  # (S*K, D); weight.grad: sparse COO, S*K rows (no dense (num_local, D))
                weight = F.embedding(rows, weight, sparse=True)
            else:  # (S*K, D); weight.grad: dense, zero on the rows not sampled
                weight = weight.index_select(0, rows)
            if bias is not None:
                bias = bias.index_select(0, index)
        else:
            sub_labels = local
        target_cos = None
        if distributed and getattr(self.head, "needs_target_cos", True):
            target_cos = self._target_cos(all_emb, local)
        logits = self.head.logits_with(all_emb, weight, sub_labels, bias=bias, target_cos=target_cos)  # (B, S)
        loss = _ShardedCrossEntropy.apply(logits, sub_labels, all_labels >= 0, self.group, distributed)

        if distributed:
            import torch.distributed as dist

            extra = self.head.regulariser(embeddings)  # local rows (aux terms are refused above)
            mean = extra.detach().clone()
            dist.all_reduce(mean, group=self.group)
            extra = extra + (mean / self.world_size - extra.detach())  # global value, local gradient
        else:
            extra = self.head.extra_loss(embeddings, sub_labels, weight=weight)
        return loss + extra
