"""Mixed precision: which dtype to autocast to, and the context manager for it.

bfloat16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), float16 with a gradient scaler on
CUDA. The margin heads compute their logits in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(preference: str, device: torch.device) -> str:
    """Map ``auto|fp32|bf16|fp16`` to the precision actually used on ``device``.

    ``auto`` is fp16 on CUDA, bf16 on a CPU with native bf16, else fp32. fp16 on CPU is refused
    (no speed-up and no gradient scaler there).
    """
    if preference == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if preference == "fp16" and device.type != "cuda":
        raise ValueError("train.precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return preference


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
