"""The service's error answers: ``{"error": {"code": ..., "message": ...}}`` with an HTTP status (no FastAPI here).

Used by the ASGI guard (:mod:`arcface.serve.guard`, which answers before the app runs), the upload reader
(:mod:`arcface.serve.uploads`) and the app's exception handlers, so every error has the same shape.
"""

from __future__ import annotations

import json

__all__ = ["ApiError", "error_body"]


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": {"code": code, "message": message}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> bytes:
    """The JSON bytes of an error answer."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()
