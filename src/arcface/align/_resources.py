"""Locate the weights bundled in the package (``arcface/weights/``) through importlib.resources."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def bundled_weight(*parts: str) -> Traversable:
    """The package resource ``arcface/weights/<parts...>``; works from a source tree or an installed wheel.

    Raises:
        FileNotFoundError: when the file is not part of the installation.
    """
    res = files("arcface").joinpath("weights", *parts)
    if not res.is_file():
        raise FileNotFoundError(f"bundled weight file arcface/weights/{'/'.join(parts)} is missing")
    return res
