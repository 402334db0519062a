"""torch.distributed set-up: one plain process by default, torchrun when its variables are set.

The backend follows the device: NCCL on CUDA, gloo on CPU, so a CPU machine never needs NCCL and
one GPU never needs a process group at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs and writes checkpoints."""
        return self.rank == 0


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local GPU) when available, else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), if any.

    Without those variables (or with WORLD_SIZE=1) nothing is initialised and the process runs
    alone. Multi-node runs use torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, device, False)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


def cleanup(info: DistInfo) -> None:
    """Leave the process group if this module created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()
