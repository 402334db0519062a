"""What machine this is: CPU model and the instruction sets that decide the fast paths, cores, library versions.

Every benchmark table and experiment names its machine with :func:`machine_info` (absolute speeds differ between
an AMD EPYC with AVX512-BF16 and an Intel Xeon with AMX; ratios measured in one run do not).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "cpu_model", "machine_info"]

#: CPU flags that change which path is fastest (bf16 autocast / frozen graph, AMX tiles, VNNI).
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """Which of :data:`INTERESTING_FLAGS` this CPU has."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return [f for f in INTERESTING_FLAGS if f in flags]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model and flags, core count, Python and library versions (JSON-ready)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "cores": os.cpu_count() or 0,
        "python": platform.python_version(),
    }
    for name, dist in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("opencv", "opencv-python-headless"),
                       ("numpy", "numpy"), ("faiss", "faiss-cpu")):  # fmt: skip
        v = _version(dist)
        if v is not None:
            info[name] = v
    return info
