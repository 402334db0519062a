"""What the routers are given: the service's parts as FastAPI dependencies (from ``app.state``, set by
:func:`arcface.serve.app.create_app`), the id path parameter, the uploads a route reads, and gallery calls off the
event loop."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer
from pydantic import BeforeValidator

from arcface.gallery import GalleryStore
from arcface.gallery.rules import INT64_MAX
from arcface.serve.engine import ModelPool, Recognizer
from arcface.serve.errors import ApiError
from arcface.serve.settings import Settings
from arcface.serve.uploads import Upload, multipart_schema, read_uploads

__all__ = [
    "AUTH",
    "GalleryDep",
    "IdPath",
    "PoolDep",
    "RecognizerDep",
    "SettingsDep",
    "Uploads",
    "gallery_call",
    "gallery_known",
    "upload_parts",
]

T = TypeVar("T")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _gallery(request: Request) -> GalleryStore:
    return request.app.state.gallery


def _recognizer(request: Request) -> Recognizer:
    return request.app.state.recognizer


def _pool(request: Request) -> ModelPool:
    return request.app.state.engine


SettingsDep = Annotated[Settings, Depends(_settings)]
GalleryDep = Annotated[GalleryStore, Depends(_gallery)]
RecognizerDep = Annotated[Recognizer, Depends(_recognizer)]
PoolDep = Annotated[ModelPool, Depends(_pool)]

AUTH = [Depends(HTTPBearer(auto_error=False, description="an API key (ARCFACE_API_KEY or the settings file)"))]
"""The bearer scheme, for OpenAPI only: the guard authenticates before any route runs, so this never refuses."""

_ID_TEXT = re.compile(r"[1-9][0-9]{0,18}")


def _canonical_id(value: object) -> object:
    """An id in a path is written one way only: decimal digits, no sign, space, leading zero or fraction. Pydantic's
    lax int parsing would let ``+1``, `` 1``, ``1%20``, ``01`` and ``1.0`` all reach identity 1, so a rule keyed on
    the path (a proxy's block list, a log alert, a cache) could be walked around."""
    if isinstance(value, str) and not _ID_TEXT.fullmatch(value):
        raise ValueError("an id is written in decimal digits, without sign, spaces or leading zeros")
    return value


IdPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="an id (1 .. 2^63 - 1)"), BeforeValidator(_canonical_id)]
"""An identity or face id in a path (``Path`` first: after a validator its bounds would leave the OpenAPI schema)."""


async def gallery_call(fn: Callable[..., T], *args: Any) -> T:
    """A gallery method in a worker thread (SQLite writes fsync; server backends wait for the network)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


async def gallery_known(kind: str, ident: int, fn: Callable[..., T], *args: Any) -> T:
    """:func:`gallery_call` about one identity or face: its KeyError (an unknown id) is the 404 of that ``kind``."""
    try:
        return await gallery_call(fn, *args)
    except KeyError:
        raise ApiError(404, "not_found", f"no {kind} {ident} in the gallery") from None


class Uploads:
    """The image parts a route takes: its OpenAPI request body (:attr:`openapi`) and their reading, in memory, with
    each part at most ``max_upload_bytes`` (see :mod:`arcface.serve.uploads`). The body limit of a route is derived
    from the parts it declares (:func:`upload_parts`)."""

    def __init__(self, *fields: str) -> None:
        self.fields = fields
        self.openapi = multipart_schema(*fields)

    async def read(self, request: Request, settings: Settings) -> dict[str, Upload]:
        """The parts of the request's multipart body."""
        return await read_uploads(
            request.headers.get("content-type"), request.stream(), self.fields,
            max_part_bytes=settings.max_upload_bytes,
        )  # fmt: skip


def upload_parts(openapi_extra: dict | None) -> int:
    """How many image parts a route takes, from the request body it documents (0: not an upload route)."""
    content = ((openapi_extra or {}).get("requestBody") or {}).get("content") or {}
    form = content.get("multipart/form-data") or {}
    return len(form.get("schema", {}).get("properties", {}))
