"""REST service: ``create_app(settings)`` around a face recognizer and a gallery (FastAPI, the ``all`` extra).

    >>> from arcface.serve import Settings, create_app
    >>> app = create_app(Settings.load(gallery="faces"))   # keys from ARCFACE_API_KEY

:class:`Settings` imports without FastAPI; :func:`create_app` imports it on first use.
"""

from __future__ import annotations

from typing import Any

from arcface.serve.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from arcface.serve.app import create_app  # FastAPI is optional (the [all] extra): imported on first use

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
