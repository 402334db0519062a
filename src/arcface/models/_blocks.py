"""Pieces shared by the backbones: variant records, TF-style padding, squeeze-excitation, checkpointing."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Variant:
    """A named model variant: the constructor arguments it fixes and a one-paragraph description.

    Variants are argument sets over one class (timm style), never copied classes.
    """

    args: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``112 -> (112, 112)``; a (H, W) pair is returned unchanged."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def downsampled_size(size: tuple[int, int], num_stride2: int) -> tuple[int, int]:
    """Spatial size after ``num_stride2`` 3x3 stride-2 convs with padding 1 (or TF SAME padding).

    Both paddings give ceil(n / 2) per stride-2 conv, so 112 -> 56 -> 28 -> 14 -> 7.
    """
    h, w = size
    for _ in range(num_stride2):
        h, w = (h + 1) // 2, (w + 1) // 2
    return (h, w)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's SAME padding, computed from the input size at run time.

    TensorFlow pads ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)`` in total and puts the odd
    pixel at the bottom/right. For a 3x3 stride-2 conv on an even size that is (0, 1) rows and
    columns, which PyTorch's symmetric ``padding=1`` cannot express; weights trained in TF see
    shifted features without it. The parameters are those of a plain Conv2d (same state-dict keys).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    @staticmethod
    def _same_pad(n: int, k: int, s: int, d: int) -> int:
        return max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)

    def forward(self, x: Tensor) -> Tensor:
        ph = self._same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = self._same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class SEModule(nn.Module):
    """Squeeze-and-excitation (Hu et al., https://arxiv.org/abs/1709.01507) as used in IR-SE nets.

    (B, C, H, W) -> (B, C, H, W): global average pool, 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C,
    sigmoid, and a per-channel rescale of the input.

    Args:
        channels: C.
        reduction: r.
        bias: the two 1x1 convs have biases (insightface's MXNet SE units; TreB1eN's have none).
        act: "relu", or "prelu" for a per-channel PReLU in the ``relu`` slot (insightface's MXNet units).
    """

    def __init__(self, channels: int, reduction: int = 16, bias: bool = False, act: str = "relu") -> None:
        super().__init__()
        if act not in ("relu", "prelu"):
            raise ValueError(f"SE activation must be 'relu' or 'prelu', got {act!r}")
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.relu = nn.ReLU(inplace=True) if act == "relu" else nn.PReLU(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        w = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # (B, C, 1, 1)
        return x * w


@contextmanager
def _restore_bn_stats(module: nn.Module) -> Iterator[None]:
    # Recomputation runs the block's forward a second time; in train mode that would update the
    # BatchNorm running statistics twice per step. Snapshot them and put them back afterwards.
    saved = [
        (buf, buf.clone())
        for m in module.modules()
        if isinstance(m, _BatchNorm)
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def checkpoint_module(module: nn.Module, x: Tensor) -> Tensor:
    """Run ``module(x)`` under activation checkpointing (activations recomputed in backward).

    Outputs, gradients and BatchNorm running statistics are the same as without checkpointing.
    """
    return checkpoint(module, x, use_reentrant=False, context_fn=lambda: (nullcontext(), _restore_bn_stats(module)))
