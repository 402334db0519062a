"""CPU allocator settings for networks whose activations are large, short-lived buffers.

On glibc, an allocation above the mmap threshold gets fresh pages from the kernel and gives them back when
freed, and freed memory at the top of the heap is returned once it exceeds the trim threshold. A CPU forward
pass allocates and frees the same multi-megabyte activations again and again, so by default every pass
page-faults its activations afresh. glibc's dynamic threshold (raised to the largest freed mmap chunk) helps
only partly.

:func:`retain_freed_memory` sets both thresholds (mmap 64 MiB, trim 256 MiB) once per process: freed
activations stay in the heap and are reused (``bench/allocator.py`` measures it on embedding and training;
docs/benchmarks.md has the figures). Setting only one of the two thresholds turns glibc's dynamic adjustment
off and was slower than neither, so both are set or neither.

It changes the whole process's allocator (it is what the jemalloc / tcmalloc ``LD_PRELOAD`` of PyTorch's CPU
tuning guides achieve, from inside the process), so only entry points call it: the thread plan's
:func:`arcface.runtime.threads.apply` for inference, the trainer on the CPU. ``ARCFACE_MALLOC_TUNING=0`` turns
it off; it does nothing off Linux or where the C library has no ``mallopt``.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
_state: dict[str, bool] = {}


def retain_freed_memory() -> bool:
    """Keep freed large buffers in this process for reuse (glibc mallopt); True when the setting is in effect.

    Idempotent; ``ARCFACE_MALLOC_TUNING=0`` in the environment disables it (returns False).
    """
    if "done" in _state:
        return _state["done"]
    ok = False
    if os.environ.get("ARCFACE_MALLOC_TUNING", "1") != "0" and sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # glibc refuses an mmap threshold above its maximum (32 MiB on some builds): fall back to that.
            if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, 32 << 20):
                ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["done"] = ok
    return ok
