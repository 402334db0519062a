"""Where arcface keeps derived files it can always rebuild: ``$ARCFACE_CACHE``, else ``$XDG_CACHE_HOME/arcface``,
else ``~/.cache/arcface``. Nothing there is needed for correctness: a missing or damaged file is rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """``<cache>/<parts...>`` (not created here)."""
    if os.environ.get("ARCFACE_CACHE"):
        root = Path(os.environ["ARCFACE_CACHE"]).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arcface"
    return root.joinpath(*parts)
