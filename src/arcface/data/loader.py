"""``build_loader``: a DataLoader over a dataset and a :class:`ResumableDistributedSampler`."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from arcface.data.sampler import ResumableDistributedSampler

__all__ = ["build_loader"]


def build_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: ResumableDistributedSampler | None = None,
    num_workers: int = 0,
    drop_last: bool = True,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    **kwargs: Any,
) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader that draws indices from ``sampler``.

    Args:
        dataset: a map-style dataset returning (image (3, H, W), label).
        batch_size: per-rank batch size; batches are (B, 3, H, W) float32 and (B,) int64.
        sampler: the index sampler; default a single-rank shuffling
            ``ResumableDistributedSampler(len(dataset))``. The caller must call
            ``sampler.advance(len(labels))`` after each trained batch for resumable positions.
        num_workers: worker processes (0 loads in the main process).
        drop_last: drop the last incomplete batch of each epoch.
        pin_memory: pin host memory (for CUDA copies).
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        prefetch_factor: batches prefetched per worker (None: DataLoader's default).
        **kwargs: passed to ``torch.utils.data.DataLoader`` (e.g. ``collate_fn``,
            ``multiprocessing_context``).
    """
    if sampler is None:
        sampler = ResumableDistributedSampler(len(dataset))  # type: ignore[arg-type]
    extra: dict[str, Any] = dict(kwargs)
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        **extra,
    )
