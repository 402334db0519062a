"""The REST service: ``create_app(settings)`` wires a recognizer (the engine) and a gallery into a FastAPI app.

The routes live in one router per resource (:mod:`arcface.serve.routes`); ``/v1`` ones need
``Authorization: Bearer KEY``; the API docs are at ``/docs`` unless ``docs=False``. This module only wires:

- **the guard first** (:mod:`arcface.serve.guard`, a pure ASGI middleware): keys are checked from the headers before
  any body byte is read, the rate limit per key, the body's bytes counted as they arrive against the route's limit,
  which is derived from the routes themselves (:func:`body_limits`), request ids, security headers, a JSON 500;
- **errors** from one table of failure kinds to statuses (:mod:`arcface.serve.handlers`);
- **the engine** behind :class:`~arcface.serve.engine.Recognizer`, run in a bounded thread pool
  (:class:`~arcface.serve.engine.ModelPool`) sized by the service's thread plan
  (:func:`~arcface.serve.engine.service_threads`);
- **the gallery**, any backend (:mod:`arcface.gallery`): a folder (SQLite + FAISS in this process) or a
  PostgreSQL/Milvus URI, whose searches go to the server, so several replicas over one database agree. An injected
  gallery bound to another contract than the recognizer's is refused at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from arcface.gallery import Gallery, GalleryStore
from arcface.serve.deps import upload_parts
from arcface.serve.engine import ModelPool, Recognizer, service_threads
from arcface.serve.errors import ApiError
from arcface.serve.guard import Guard
from arcface.serve.handlers import IMAGE_ERROR_STATUS, install
from arcface.serve.routes import identities, recognition, service
from arcface.serve.settings import Settings, SettingsError

__all__ = ["IMAGE_ERROR_STATUS", "ApiError", "body_limits", "create_app"]

logger = logging.getLogger(__name__)

MULTIPART_FRAMING = 64 * 1024
"""Body bytes allowed on top of the uploads of a route (boundaries and part headers)."""


def body_limits(routes: Sequence[BaseRoute], settings: Settings) -> Callable[[str, str], int]:
    """``(method, path) -> bytes`` the body of a request may have: ``max_upload_bytes`` per image part its route
    declares (plus the multipart framing), ``max_json_bytes`` on every other route."""
    uploads = [
        (route, upload_parts(route.openapi_extra) * settings.max_upload_bytes + MULTIPART_FRAMING)
        for route in routes
        if isinstance(route, APIRoute) and upload_parts(route.openapi_extra)
    ]

    def limit(method: str, path: str) -> int:
        for route, n in uploads:
            if method in route.methods and route.path_regex.match(path):
                return n
        return settings.max_json_bytes

    return limit


def _open_gallery(settings: Settings, recognizer: Recognizer, gallery: GalleryStore | None) -> GalleryStore:
    contract = recognizer.contract
    if gallery is None:
        return Gallery.open(settings.gallery, contract, index=settings.index, busy_timeout=settings.busy_timeout)
    if gallery.contract_id != contract.id:
        raise SettingsError(
            f"the gallery {gallery.location} is bound to contract {gallery.contract_id}, the model has {contract.id}"
        )
    return gallery


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.engine.close()
    if app.state.own_gallery:
        try:  # a read-only or full disk must not fail the shutdown (the writes are durable already)
            app.state.gallery.close()
        except Exception:
            logger.exception("closing the gallery %s failed", app.state.gallery.location)


def create_app(
    settings: Settings, recognizer: Recognizer | None = None, gallery: GalleryStore | None = None
) -> FastAPI:
    """The FastAPI application of the service, behind its guard (:class:`~arcface.serve.guard.Guard`).

    Args:
        settings: see :class:`~arcface.serve.settings.Settings`.
        recognizer: the engine (any :class:`~arcface.serve.engine.Recognizer`); default
            ``FaceRecognizer(settings.model, settings.detector)`` on the thread plan's threads.
        gallery: the gallery (any backend); default ``Gallery.open(settings.gallery, recognizer.contract)``, a folder
            or URI (closed on shutdown).

    Returns:
        The app (serve it with :func:`arcface.serve.server.serve`, as ``arcface serve`` does, for the connection
        limits; any ASGI server runs it).

    Raises:
        SettingsError: no API key without ``allow_no_auth``, a gallery bound to another contract, or a bad
            ``ARCFACE_THREADS``.
        GalleryContractError: the gallery at ``settings.gallery`` is bound to another contract.
        GalleryStorageError: its server cannot be reached.
    """
    settings.check_auth()
    plan, recognizer = service_threads(settings, recognizer)
    app = FastAPI(
        title="arcface",
        summary="Face gallery, identification (1:N) and verification (1:1)",
        version="1",
        lifespan=_lifespan,
        docs_url=None,  # served by the service router from the service's own copy of Swagger UI (no CDN)
        redoc_url=None,  # ReDoc would load from a CDN: not served
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.recognizer = recognizer
    app.state.own_gallery = gallery is None
    app.state.gallery = _open_gallery(settings, recognizer, gallery)
    app.state.engine = ModelPool(recognizer, settings, plan)
    app.state.docs_assets = service.docs_assets(settings)
    install(app)
    app.mount("/static", StaticFiles(directory=service.STATIC), name="static")
    routers = [service.router, identities.router, recognition.router(settings.max_k)]
    if app.state.docs_assets is not None:
        routers.append(service.docs_router)
    for router in routers:
        app.include_router(router)
    app.state.routes = [route for router in routers for route in router.routes]
    app.add_middleware(
        Guard,
        keys=settings.api_keys,
        body_limit=body_limits(app.state.routes, settings),
        body_timeout=settings.body_timeout,
        rate=settings.rate_limit,
        burst=settings.rate_burst,
    )
    return app
