"""A synthetic, learnable face-free dataset for tests and speed runs.

Each class owns a fixed random low-resolution colour pattern, upsampled to the image size; item ``i``
is the pattern of class ``i % num_classes`` plus Gaussian noise seeded by ``(seed, i)``. A model can
learn it (the trainer's smoke tests check that the loss falls), and item ``i`` depends only on
``seed`` and ``i``, in any process and in any order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from arcface.data.base import DATASETS, BadItem, Transform
from arcface.data.transforms import MEAN, STD

__all__ = ["SyntheticDataset"]


@DATASETS.register("synthetic")
class SyntheticDataset(Dataset):
    """Deterministic class-structured random images.

    Args:
        num_samples: number of items.
        num_classes: number of classes; item ``i`` has label ``i % num_classes``.
        image_size: side of the square images.
        seed: seed of the class patterns and the per-item noise.
        noise: standard deviation of the noise, in normalised units (the patterns span [-1, 1]).
        pattern_size: side of the low-resolution class pattern before upsampling.
        transform: None (default) returns the normalised float32 tensor directly, without
            augmentation (the cheap path); a callable gets the image as uint8 (H, W, 3) RGB
            like the file readers' transforms (e.g. ``train_transform()`` to add flips).
    """

    def __init__(
        self,
        num_samples: int = 1024,
        num_classes: int = 10,
        image_size: int = 112,
        seed: int = 0,
        noise: float = 0.5,
        pattern_size: int = 8,
        transform: Transform | None = None,
    ) -> None:
        if num_samples <= 0 or num_classes <= 0 or image_size <= 0 or pattern_size <= 0:
            raise ValueError("num_samples, num_classes, image_size and pattern_size must be positive")
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.noise = float(noise)
        self.pattern_size = int(pattern_size)
        self.transform = transform
        self.bad_items: dict[int, str] = {}
        # nearest-neighbour upsampling map from image rows/cols to pattern cells
        self._cells = (torch.arange(self.image_size) * self.pattern_size) // self.image_size

    def __len__(self) -> int:
        return self.num_samples

    def _generator(self, stream: int, index: int) -> torch.Generator:
        """A torch generator seeded from (seed, stream, index) through numpy's SeedSequence mixing."""
        state = np.random.SeedSequence([self.seed, stream, index]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state) >> 1)

    def pattern(self, label: int) -> torch.Tensor:
        """The float32 (3, image_size, image_size) pattern of class ``label``, values in [-1, 1]."""
        g = self._generator(0, int(label))
        small = torch.rand(3, self.pattern_size, self.pattern_size, generator=g) * 2 - 1
        return small.index_select(1, self._cells).index_select(2, self._cells)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return (float32 (3, image_size, image_size) in [-1, 1], label)."""
        n = self.num_samples
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for dataset of length {n}")
        index %= n
        label = index % self.num_classes
        x = self.pattern(label)  # (3, H, W)
        if self.noise > 0:
            x += self.noise * torch.randn(x.shape, generator=self._generator(1, index))
        x.clamp_(-1.0, 1.0)
        if self.transform is None:
            return x, label
        hwc = (x.permute(1, 2, 0) * STD + MEAN).round_().to(torch.uint8).numpy()  # (H, W, 3)
        return self.transform(hwc), label

    def scan(self) -> list[BadItem]:
        """Nothing can be unreadable here; present for interface parity with the file readers."""
        return []

    def __repr__(self) -> str:
        return (
            f"SyntheticDataset(num_samples={self.num_samples}, num_classes={self.num_classes}, "
            f"image_size={self.image_size}, seed={self.seed}, noise={self.noise})"
        )
