"""Errors as answers: one table from each kind of failure (an exception type) to its status and code, the handler
that answers them all in the service's JSON shape, and the OpenAPI ``responses`` a route documents.

Every error is ``{"error": {"code", "message"}}``. :class:`~arcface.serve.errors.ApiError` carries its own status
and code; an image problem keeps the loader's reason as its code (:data:`IMAGE_ERROR_STATUS`); an HTTP error of the
framework (an unknown route, a wrong method) keeps its status. Anything else unexpected is a 500 naming the request
id (the server log has the traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from arcface.gallery.rules import GalleryBusyError, GalleryContractError, GalleryFullError, GalleryStorageError
from arcface.inference.recognizer import NoFaceError
from arcface.io.images import ImageError
from arcface.serve import schemas
from arcface.serve.errors import ApiError
from arcface.serve.guard import REQUEST_ID

__all__ = ["ERROR_KINDS", "IMAGE_ERROR_STATUS", "ErrorKind", "as_api_error", "install", "responses"]

logger = logging.getLogger(__name__)


def _validation_message(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)[:1000] or "invalid request"


def _retry_after(e: GalleryBusyError) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(e.retry_after)))}


class ErrorKind(NamedTuple):
    """How one kind of failure is answered.

    Attributes:
        status: the HTTP status.
        code: the ``error.code``.
        message: the ``error.message`` of an exception (default its text).
        headers: extra headers of an exception's answer.
        log: log the exception (a server-side failure the operator must see).
    """

    status: int
    code: str
    message: Callable[[Any], str] = str
    headers: Callable[[Any], dict[str, str] | None] = lambda e: None
    log: bool = False


ERROR_KINDS: dict[type[Exception], ErrorKind] = {
    NoFaceError: ErrorKind(422, "no_face"),
    GalleryContractError: ErrorKind(409, "contract_mismatch"),
    GalleryBusyError: ErrorKind(503, "busy", headers=_retry_after),
    GalleryStorageError: ErrorKind(
        503, "storage_unavailable", lambda e: "the gallery cannot be written now (read-only or failing storage)",
        log=True,
    ),
    GalleryFullError: ErrorKind(
        507, "storage_full", lambda e: "the gallery's disk is full; nothing was written", log=True
    ),
    RequestValidationError: ErrorKind(422, "invalid_request", _validation_message),
}
"""The status and code of each kind of failure (the most derived type that matches wins)."""

IMAGE_ERROR_STATUS = {
    "too_large": 413,
    "corrupt": 422,
    "not_image": 415,
    "unsupported": 415,
    "empty": 400,
    "missing": 400,
    "unreadable": 400,
}
"""HTTP status of each :data:`~arcface.io.images.Reason` of an upload (the reason is the code)."""

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}
"""``error.code`` of the framework's own HTTP errors."""


def as_api_error(e: Exception) -> ApiError | None:
    """The answer to a failure, or None when it is of no known kind (an unexpected failure)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, ImageError):
        return ApiError(IMAGE_ERROR_STATUS.get(e.reason, 400), e.reason, str(e))
    if isinstance(e, StarletteHTTPException):
        return ApiError(e.status_code, _HTTP_CODES.get(e.status_code, "error"), str(e.detail), e.headers)
    kind = next((ERROR_KINDS[t] for t in type(e).__mro__ if t in ERROR_KINDS), None)
    if kind is None:
        return None
    if kind.log:
        logger.error("%s: %s", kind.code, e)
    return ApiError(kind.status, kind.code, kind.message(e), kind.headers(e))


def _allowed(request: Request) -> str:
    """Every method of every route at the request's path (the framework names only the first route's); the app
    keeps its routes in ``app.state.routes``."""
    routes = getattr(request.app.state, "routes", ())
    path = request.scope["path"]
    methods = {m for r in routes if isinstance(r, APIRoute) and r.path_regex.match(path) for m in r.methods}
    return ", ".join(sorted(methods))


async def _on_error(request: Request, e: Exception) -> JSONResponse:
    answer = as_api_error(e)
    if answer is not None and answer.status == 405:
        answer = ApiError(405, answer.code, answer.message, {**(answer.headers or {}), "Allow": _allowed(request)})
    if answer is None:  # the guard answers the app's own failures; this is the last resort
        rid = request.scope.get(REQUEST_ID, "-")
        logger.error("request %s failed", rid, exc_info=e)
        answer = ApiError(500, "internal", f"internal error; request id {rid} (the server log has the details)")
    body = {"error": {"code": answer.code, "message": answer.message}}
    return JSONResponse(body, status_code=answer.status, headers=answer.headers)


def install(app: FastAPI) -> None:
    """Answer every kind of failure of :data:`ERROR_KINDS`, and the rest, in the service's JSON shape."""
    for kind in (ApiError, ImageError, StarletteHTTPException, *ERROR_KINDS, Exception):
        app.add_exception_handler(kind, _on_error)


_DESCRIPTIONS = {
    400: "an empty upload",
    401: "missing or wrong API key",
    404: "no such identity or face",
    408: "the request body did not arrive in time",
    409: "the model has no calibrated threshold, or the gallery is bound to another model",
    413: "request body over the route's limit, or an image over the byte or pixel limit",
    415: "not the route's content type (multipart/form-data or JSON), not an image, or an unsupported format",
    422: "invalid request: a bad parameter or body, a corrupt image, no face, or an unknown or repeated part",
    429: "over the rate limit (see Retry-After)",
    503: "the gallery is busy (see Retry-After) or its storage cannot be written now",
    507: "the gallery's disk is full",
}

API = (401, 429)
"""What any ``/v1`` route may answer before it runs (the guard)."""
BODY = (408, 413, 415, 422)
"""What a route that reads a body may answer about it."""
GALLERY = (503,)
"""What a route that reads the gallery may answer."""
WRITE = (503, 507)
"""What a route that writes the gallery may answer."""


def responses(*groups: tuple[int, ...] | int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer these statuses (tuples of them, or single ones)."""
    statuses = sorted({s for g in groups for s in ((g,) if isinstance(g, int) else g)})
    return {s: {"model": schemas.ErrorResponse, "description": _DESCRIPTIONS[s]} for s in statuses}
