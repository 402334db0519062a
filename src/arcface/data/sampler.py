"""A distributed sampler that reshuffles per epoch and resumes mid-epoch exactly.

Each epoch draws a permutation from ``torch.Generator().manual_seed(seed + epoch)`` (the same rule as
``torch.utils.data.DistributedSampler``), truncates it (``drop_last``) or pads it by wrapping to a
multiple of ``world_size``, and gives rank ``r`` the indices ``perm[r::world_size]``.

Position. The sampler does not count what it yields: DataLoader workers prefetch, so yields run ahead
of training. Instead the trainer tells it what was consumed::

    sampler = ResumableDistributedSampler(len(ds), rank, world_size, seed=cfg.seed)
    sampler.load_state_dict(ckpt["sampler"])        # on --resume
    loader = DataLoader(ds, batch_size=B, sampler=sampler, drop_last=True, num_workers=4)
    for epoch in range(sampler.epoch, num_epochs):
        sampler.set_epoch(epoch)                   # keeps the position when the epoch is unchanged
        for images, labels in loader:              # starts at the stored position
            step(images, labels)
            sampler.advance(len(labels))           # per-rank samples consumed by this step
            if want_checkpoint: save({"sampler": sampler.state_dict(), ...})

Every rank consumes the same number of samples per step, so the state of rank 0 resumes all ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableDistributedSampler"]

logger = logging.getLogger("arcface.data")


class ResumableDistributedSampler(Sampler[int]):
    """Shard a dataset over ranks, reshuffle every epoch, and resume from ``(epoch, position)``.

    Args:
        dataset_len: number of items in the dataset (or the dataset itself).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes sharing the data.
        shuffle: draw a fresh permutation each epoch; otherwise keep index order.
        seed: the permutation of epoch ``e`` is seeded with ``seed + e`` (same on every rank).
        drop_last: truncate the epoch to a multiple of ``world_size``; otherwise pad by wrapping
            around (some indices are then seen twice in an epoch).

    Attributes:
        epoch: the current epoch.
        position: how many of this rank's indices of the current epoch are consumed.
        num_samples: indices per rank per epoch (``len(self)`` is what remains of the epoch).
    """

    def __init__(
        self,
        dataset_len: int | Sized,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        n = dataset_len if isinstance(dataset_len, int) else len(dataset_len)
        if n <= 0:
            raise ValueError(f"dataset_len must be positive, got {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if drop_last and n < world_size:
            raise ValueError(f"{n} items cannot feed {world_size} ranks with drop_last=True")
        self.dataset_len = n
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.total_size = (n // world_size if drop_last else -(-n // world_size)) * world_size
        self.num_samples = self.total_size // world_size
        self.epoch = 0
        self.position = 0

    def indices(self, epoch: int | None = None) -> list[int]:
        """All of this rank's indices for ``epoch`` (default the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_len, generator=g)
        else:
            order = torch.arange(self.dataset_len)
        if self.total_size > len(order):  # pad by wrapping around (drop_last=False)
            reps = -(-self.total_size // len(order))
            order = order.repeat(reps)
        return order[self.rank : self.total_size : self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        """Yield the indices of the current epoch from ``position`` on (fixed at the call)."""
        if self.position >= self.num_samples:
            logger.warning(
                "sampler epoch %d is already consumed (position %d of %d); call set_epoch(%d)",
                self.epoch,
                self.position,
                self.num_samples,
                self.epoch + 1,
            )
        return iter(self.indices()[self.position :])

    def __len__(self) -> int:
        """Indices left in the current epoch (``num_samples`` at an epoch's start)."""
        return max(0, self.num_samples - self.position)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` at position 0; setting the current epoch again keeps the position.

        Keeping the position makes the usual ``set_epoch(epoch)`` at the top of the epoch loop
        harmless after :meth:`load_state_dict` restored a mid-epoch position.
        """
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def advance(self, n: int) -> None:
        """Record that ``n`` more of this rank's samples were consumed (call once per trained batch).

        Raises:
            ValueError: ``n`` is negative or passes the end of the epoch.
        """
        if n < 0 or self.position + n > self.num_samples:
            raise ValueError(
                f"cannot advance by {n} from position {self.position} of {self.num_samples} in epoch {self.epoch}"
            )
        self.position += int(n)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: epoch, position, and the settings they are only valid under."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset_len": self.dataset_len,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore epoch, position and seed from :meth:`state_dict`.

        Raises:
            ValueError: the state was made for another dataset length, world size, shuffle or
                drop_last setting (its position would then point at different samples), or its
                position is out of range.
        """
        for key in ("dataset_len", "world_size", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}; an exact resume is impossible"
                )
        position = int(state["position"])
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"sampler state position {position} is outside [0, {self.num_samples}]")
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.position = position

    def __repr__(self) -> str:
        return (
            f"ResumableDistributedSampler(dataset_len={self.dataset_len}, rank={self.rank}, "
            f"world_size={self.world_size}, shuffle={self.shuffle}, seed={self.seed}, "
            f"drop_last={self.drop_last}, epoch={self.epoch}, position={self.position})"
        )
