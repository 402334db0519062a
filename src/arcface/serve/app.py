"""The REST service: ``create_app(settings)`` wraps a recognizer (the engine) and a gallery in a FastAPI app.

Routes (``/v1`` ones need ``Authorization: Bearer KEY``; API docs at ``/docs`` unless ``docs=False``)::

    GET    /                             no auth: the web page (static/index.html; it asks for the key)
    GET    /static/...                   no auth: the page's script and style sheet
    GET    /health                       no auth: {"status": "ok"}; with a valid key also model, contract, thresholds,
                                         inference workers and threads, the gallery's backend and location (a password
                                         masked)
    POST   /v1/identities                {"name", "metadata"} -> 201 {"id", "name"}
    GET    /v1/identities?limit&after    {"identities": [...], "next_after"}: one page by id
    GET    /v1/identities/{id}           one identity with its face ids
    DELETE /v1/identities/{id}           the identity and its faces (from every file of the gallery)
    POST   /v1/identities/{id}/faces     multipart ``image`` -> 201 {"id", "identity_id", "box", ...}
    DELETE /v1/faces/{id}                one face
    POST   /v1/search?k=5                multipart ``image`` -> {"matches": [...], "threshold", "threshold_kind"}
    POST   /v1/verify                    multipart ``image1``, ``image2`` -> {"similarity", "same", "threshold"}

Decisions:

- **The guard first** (:mod:`arcface.serve.guard`, a pure ASGI middleware): keys are checked from the headers before
  any body byte is read, the rate limit per key, the body's bytes are counted as they arrive (413 at the route's
  limit, 408 past ``body_timeout``), request ids, security headers, a JSON 500 for anything unexpected.
- **Errors** are JSON ``{"error": {"code", "message"}}``. Image problems keep the loader's reason as the code
  (:class:`~arcface.io.images.ImageError`): ``too_large`` 413, ``corrupt`` 422, ``not_image`` and
  ``unsupported`` 415, ``empty`` 400; no face is 422 ``no_face``; unknown ids 404 ``not_found``; ids outside
  1..2^63-1 and other bad requests 422 ``invalid_request``; a body that is not multipart on an upload route 415
  ``unsupported_media_type``; missing or wrong key 401 ``unauthorized``; over the rate 429 ``rate_limited``; a busy
  gallery 503 ``busy`` with ``Retry-After``; a full disk 507 ``storage_full``; a read-only or failing disk 503
  ``storage_unavailable``; anything else 500 ``internal`` with a request id.
- **Uploads** are read in memory by :mod:`arcface.serve.uploads` (each part at most ``max_upload_bytes``, only the
  route's parts, each once); then the pixel count is read from the image header before decoding.
- **The event loop never runs the model.** Decoding, detection and embedding run in a bounded thread pool
  (``settings.workers``); gallery calls (SQLite with fsync) run in anyio's worker threads. So ``/health`` answers
  while uploads are being embedded.
- **The gallery is any backend** (:mod:`arcface.gallery`): a folder (SQLite + FAISS in this process) or a
  PostgreSQL/Milvus URI, whose searches go to the server, so several replicas of the service over one database agree
  (an identity enrolled through one is found through another at the next request).
- **Search is open-set identification**: ``match`` uses the model's identification threshold (chosen for a
  false-positive identification rate), not the 1:1 verification threshold of ``/v1/verify``.
- **Nothing of the client is kept but what it asks to keep**: an upload's file name is stored only with
  ``store_filenames``; images are never stored.
- **Threads**: the pool's size and torch's threads come from the thread policy (:mod:`arcface.runtime.threads`,
  workload "service"): by default one inference thread per usable CPU (affinity mask, cgroup CPU quota, or
  ``settings.threads`` / ``ARCFACE_THREADS``), each running its request with one torch and onnxruntime thread, so
  workers x threads never exceed the CPUs (requests run side by side instead of one request's small operators on a
  team of threads that stalls whenever another request or process takes a core). ``/health`` reports them to a
  caller with a key.
- Enrolment stores the embedding under the recognizer's contract id; the gallery refuses any other contract, and
  an injected gallery bound to another contract is refused at start.
"""

import asyncio
import functools
import html
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path as Path_
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from arcface.align.face import Face
from arcface.gallery import Gallery, GalleryStore
from arcface.gallery.rules import (
    INT64_MAX,
    GalleryBusyError,
    GalleryContractError,
    GalleryFullError,
    GalleryStorageError,
)
from arcface.inference.recognizer import FaceRecognizer, NoFaceError
from arcface.io.images import ImageError, image_from_upload
from arcface.runtime import threads as thread_policy
from arcface.serve import schemas
from arcface.serve.errors import ApiError
from arcface.serve.guard import AUTHENTICATED, REQUEST_ID, Guard
from arcface.serve.settings import Settings, SettingsError
from arcface.serve.uploads import Upload, multipart_schema, read_uploads

__all__ = ["IMAGE_ERROR_STATUS", "ApiError", "create_app"]

logger = logging.getLogger(__name__)

STATIC = Path_(__file__).resolve().parent / "static"
"""The web page (``index.html``, ``app.js``, ``style.css``), served at ``/`` and ``/static``."""

T = TypeVar("T")

IMAGE_ERROR_STATUS = {
    "too_large": 413,
    "corrupt": 422,
    "not_image": 415,
    "unsupported": 415,
    "empty": 400,
    "missing": 400,
    "unreadable": 400,
}
"""HTTP status of each :data:`~arcface.io.images.Reason` of an upload."""

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}
_MULTIPART_FRAMING = 64 * 1024
"""Body bytes allowed on top of the uploads of a route (boundaries and part headers)."""


def _canonical_id(value: object) -> object:
    """An id in a path is written one way only: decimal digits, no sign, space, leading zero or fraction. Without
    this ``/v1/identities/+1``, ``/ 1``, ``/1%20``, ``/01`` and ``/1.0`` all reached identity 1 (pydantic's lax int
    parsing), so a rule keyed on the path (a proxy's block list, a log alert, a cache) could be walked around."""
    if isinstance(value, str) and not _ID_TEXT.fullmatch(value):
        raise ValueError("an id is written in decimal digits, without sign, spaces or leading zeros")
    return value


_ID_TEXT = re.compile(r"[1-9][0-9]{0,18}")
IdPath = Annotated[int, BeforeValidator(_canonical_id), Path(ge=1, le=INT64_MAX, description="an id (1 .. 2^63 - 1)")]
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": schemas.ErrorResponse, "description": d}
    for s, d in (
        (401, "missing or wrong API key"),
        (413, "request body over the route's limit"),
        (422, "invalid request"),
        (429, "over the rate limit (see Retry-After)"),
        (503, "the gallery is busy (see Retry-After)"),
        (507, "the gallery's disk is full"),
    )
}
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERROR_RESPONSES,
    400: {"model": schemas.ErrorResponse, "description": "empty upload"},
    413: {"model": schemas.ErrorResponse, "description": "upload over the byte or pixel limit"},
    415: {"model": schemas.ErrorResponse, "description": "not multipart/form-data, not an image, or unsupported"},
    422: {"model": schemas.ErrorResponse, "description": "corrupt image, no face, or a bad, unknown or repeated part"},
}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class _Engine:
    """The model side of the service: decode, detect and embed in a bounded thread pool.

    Args:
        recognizer: the face recognizer (its public ``detect``, ``embed``, ``verify``, ``contract``, ``threshold``).
        settings: the byte and pixel limits.
        plan: the thread plan: ``plan.workers`` threads in the pool.
    """

    def __init__(self, recognizer: FaceRecognizer, settings: Settings, plan: thread_policy.ThreadPlan) -> None:
        self.recognizer = recognizer
        self.settings = settings
        self.plan = plan
        self.pool = ThreadPoolExecutor(max_workers=plan.workers, thread_name_prefix="arcface-model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the model pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    async def uploads(self, request: Request, *fields: str) -> dict[str, Upload]:
        """The route's image parts of a multipart body, in memory (see :mod:`arcface.serve.uploads`)."""
        return await read_uploads(
            request.headers.get("content-type"), request.stream(), fields,
            max_part_bytes=self.settings.max_upload_bytes,
        )  # fmt: skip

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an upload, with the service's limits."""
        return image_from_upload(data, self.settings.max_upload_bytes, self.settings.max_pixels, name=name)

    def embed(self, data: bytes, name: str) -> np.ndarray:
        """(D,) unit embedding of the main face of an upload."""
        rgb = self.decode(data, name)
        try:
            return self.recognizer.embed(rgb)
        except NoFaceError:
            raise NoFaceError(name) from None

    def enroll(self, data: bytes, name: str) -> list[Face]:
        """Every face of an upload, main face first, the main one with its embedding (detection runs once)."""
        faces = self.recognizer.analyze(self.decode(data, name), max_faces=1)
        if not faces:
            raise NoFaceError(name)
        return faces

    def close(self) -> None:
        """Stop the pool (queued jobs are cancelled)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


async def _gallery_call(fn: Callable[..., T], *args: Any) -> T:
    """A gallery method in a worker thread (SQLite writes fsync; server backends wait for the network)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def create_app(
    settings: Settings, recognizer: FaceRecognizer | None = None, gallery: GalleryStore | None = None
) -> FastAPI:
    """The FastAPI application of the service, behind its guard (:class:`~arcface.serve.guard.Guard`).

    Args:
        settings: see :class:`~arcface.serve.settings.Settings`.
        recognizer: the engine; default ``FaceRecognizer(settings.model, settings.detector)`` with the thread plan's
            threads per worker (this process's torch threads are set to the plan's either way).
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
    try:
        plan = thread_policy.decide("service", threads=settings.threads, workers=settings.workers)
    except thread_policy.ThreadsError as e:
        raise SettingsError(str(e)) from None
    if recognizer is None:
        # each inference thread runs the whole pipeline of its request on the plan's threads
        recognizer = FaceRecognizer(settings.model, settings.detector, threads=plan.threads,
                                    lone_threads=plan.cpus)  # a lone request on an idle machine: the CPUs (up to 4)
    thread_policy.apply(plan)  # before the pool's threads start: they take torch's setting when they first run
    contract = recognizer.contract
    own_gallery = gallery is None
    if gallery is None:
        gallery = Gallery.open(settings.gallery, contract, index=settings.index, busy_timeout=settings.busy_timeout)
    elif gallery.contract_id != contract.id:
        raise SettingsError(
            f"the gallery {gallery.location} is bound to contract {gallery.contract_id}, the model has {contract.id}"
        )
    engine = _Engine(recognizer, settings, plan)
    docs_assets = _docs_assets(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()
        if own_gallery:
            try:  # a read-only or full disk must not fail the shutdown (the writes are durable already)
                gallery.close()
            except Exception:
                logger.exception("closing the gallery %s failed", gallery.location)

    app = FastAPI(
        title="arcface",
        summary="Face gallery, identification (1:N) and verification (1:1)",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served below from the service's own copy of Swagger UI (no CDN)
        redoc_url=None,  # ReDoc would load from a CDN: not served
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.recognizer = recognizer
    app.state.gallery = gallery
    app.state.engine = engine

    upload_limit = settings.max_upload_bytes + _MULTIPART_FRAMING

    def body_limit(method: str, path: str) -> int:
        if method == "POST" and path == "/v1/verify":
            return 2 * settings.max_upload_bytes + _MULTIPART_FRAMING
        enrol = path.startswith("/v1/identities/") and path.endswith("/faces")
        if method == "POST" and (path == "/v1/search" or enrol):
            return upload_limit
        return settings.max_json_bytes

    app.add_middleware(
        Guard,
        keys=settings.api_keys,
        body_limit=body_limit,
        body_timeout=settings.body_timeout,
        rate=settings.rate_limit,
        burst=settings.rate_burst,
    )

    # Authentication happens in the guard; this only documents the scheme in OpenAPI (it never refuses).
    bearer = HTTPBearer(auto_error=False, description="an API key (ARCFACE_API_KEY or the settings file)")
    auth = [Depends(bearer)]

    # ----------------------------------------------------------------------------------------------
    # Errors

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.code, e.message, e.headers)

    @app.exception_handler(ImageError)
    async def on_image_error(request: Request, e: ImageError) -> JSONResponse:
        return _error(IMAGE_ERROR_STATUS.get(e.reason, 400), e.reason, str(e))

    @app.exception_handler(NoFaceError)
    async def on_no_face(request: Request, e: NoFaceError) -> JSONResponse:
        return _error(422, "no_face", str(e))

    @app.exception_handler(GalleryContractError)
    async def on_contract(request: Request, e: GalleryContractError) -> JSONResponse:
        return _error(409, "contract_mismatch", str(e))

    @app.exception_handler(GalleryBusyError)
    async def on_busy(request: Request, e: GalleryBusyError) -> JSONResponse:
        return _error(503, "busy", str(e), {"Retry-After": str(max(1, round(e.retry_after)))})

    @app.exception_handler(GalleryStorageError)
    async def on_storage(request: Request, e: GalleryStorageError) -> JSONResponse:
        logger.error("gallery storage failed: %s", e)
        return _error(503, "storage_unavailable", "the gallery cannot be written now (read-only or failing storage)")

    @app.exception_handler(GalleryFullError)
    async def on_full(request: Request, e: GalleryFullError) -> JSONResponse:
        logger.error("gallery write refused: %s", e)
        return _error(507, "storage_full", "the gallery's disk is full; nothing was written")

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(parts)[:1000] or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(e.status_code, "error")
        return _error(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, e: Exception) -> JSONResponse:
        # The guard answers the app's own failures; this is the last resort for a failure of the guard itself.
        rid = request.scope.get(REQUEST_ID, "-")
        logger.error("request %s failed", rid, exc_info=e)
        return _error(500, "internal", f"internal error; request id {rid} (the server log has the details)")

    # ----------------------------------------------------------------------------------------------
    # Routes

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The web page: enrol, search and list people (it asks for the API key and sends it from the browser)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    if settings.docs and docs_assets is not None:
        assets = {name: docs_assets / name for name in _DOCS_ASSETS}

        @app.get("/docs/assets/{name}", include_in_schema=False)
        async def docs_asset(name: str) -> FileResponse:
            """Only the two files the docs page loads (not the package's demo page, which points elsewhere)."""
            if name not in assets:
                raise ApiError(404, "not_found", "no such file")
            media = "text/css" if name.endswith(".css") else "text/javascript"
            return FileResponse(assets[name], media_type=media)

        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            """Swagger UI, every file from this service (the ``swagger-ui-bundle-v2`` package's copy)."""
            return HTMLResponse(_DOCS_PAGE)

    elif settings.docs:
        logger.warning("API docs: no Swagger UI files (pip install swagger-ui-bundle-v2, or docs_assets); /docs is off")

    @app.get("/health", response_model=schemas.HealthDetail | schemas.Health, tags=["service"])
    async def health(request: Request) -> schemas.Health:
        """Liveness: answers without touching the model or the gallery; the model's details only with a valid key."""
        if not request.scope.get(AUTHENTICATED):
            return schemas.Health()
        return schemas.HealthDetail(
            model=contract.architecture,
            contract=contract.id,
            threshold=recognizer.threshold,
            identification_threshold=recognizer.identification_threshold,
            workers=engine.plan.workers,
            threads=engine.plan.threads,
            gallery_backend=gallery.backend,
            gallery=gallery.location,
        )

    @app.post(
        "/v1/identities", status_code=201, response_model=schemas.IdentityCreated, dependencies=auth,
        responses={**_ERROR_RESPONSES, 415: {"model": schemas.ErrorResponse, "description": "not JSON"}},
        tags=["identities"], openapi_extra=_json_body(schemas.IdentityCreate),
    )  # fmt: skip
    async def create_identity(request: Request) -> schemas.IdentityCreated:
        """Create an identity (a person); enrol faces with ``POST /v1/identities/{id}/faces``."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise ApiError(415, "unsupported_media_type", "send the identity as application/json")
        raw = await request.body()
        try:
            body = schemas.IdentityCreate.model_validate_json(raw)
        except ValidationError as e:
            raise RequestValidationError(e.errors(include_url=False)) from None
        except RecursionError:  # nested deeper than the parser goes
            raise ApiError(422, "invalid_request", "the JSON is nested too deeply") from None
        try:
            ident = await _gallery_call(gallery.add_identity, body.name, body.metadata)
        except (TypeError, ValueError) as e:  # a name or metadata the gallery refuses
            raise ApiError(422, "invalid_request", str(e)) from None
        return schemas.IdentityCreated(id=ident, name=body.name)

    @app.get(
        "/v1/identities", response_model=schemas.IdentityList, dependencies=auth, responses=_ERROR_RESPONSES,
        tags=["identities"],
    )  # fmt: skip
    async def list_identities(
        limit: Annotated[int, Query(ge=1, le=1000, description="identities per page")] = 100,
        after: Annotated[int, Query(ge=0, le=INT64_MAX, description="the next_after of the previous page")] = 0,
    ) -> schemas.IdentityList:
        """One page of identities by id, with face counts; follow ``next_after`` until it is null."""
        people = await _gallery_call(gallery.list_identities, limit + 1, after)
        more = len(people) > limit
        people = people[:limit]
        return schemas.IdentityList(
            identities=[_identity_out(i) for i in people], next_after=people[-1].id if more else None
        )

    @app.get(
        "/v1/identities/{identity_id}", response_model=schemas.IdentityDetail, dependencies=auth,
        responses=_ERROR_RESPONSES, tags=["identities"],
    )  # fmt: skip
    async def get_identity(identity_id: IdPath) -> schemas.IdentityDetail:
        """One identity with the ids of its faces."""

        def get():
            return gallery.get_identity(identity_id), gallery.list_faces(identity_id)

        try:
            ident, faces = await _gallery_call(get)
        except KeyError:
            raise _not_found("identity", identity_id) from None
        return schemas.IdentityDetail(**_identity_out(ident).model_dump(), face_ids=[f.id for f in faces])

    @app.delete(
        "/v1/identities/{identity_id}", response_model=schemas.DeletedIdentity, dependencies=auth,
        responses=_ERROR_RESPONSES, tags=["identities"],
    )  # fmt: skip
    async def delete_identity(identity_id: IdPath) -> schemas.DeletedIdentity:
        """Remove an identity and all its faces, from the database, its log and the index cache."""
        try:
            n = await _gallery_call(gallery.remove_identity, identity_id)
        except KeyError:
            raise _not_found("identity", identity_id) from None
        return schemas.DeletedIdentity(id=identity_id, removed_faces=n)

    @app.post(
        "/v1/identities/{identity_id}/faces", status_code=201, response_model=schemas.FaceCreated,
        dependencies=auth, responses=_IMAGE_RESPONSES, tags=["faces"], openapi_extra=multipart_schema("image"),
    )  # fmt: skip
    async def add_face(request: Request, identity_id: IdPath) -> schemas.FaceCreated:
        """Enrol the main face (large, near the centre) of a photo (multipart part ``image``) for an identity."""
        try:
            await _gallery_call(gallery.get_identity, identity_id)  # 404 before the upload is read
        except KeyError:
            raise _not_found("identity", identity_id) from None
        image = (await engine.uploads(request, "image"))["image"]
        faces = await engine.run(engine.enroll, image.data, image.label)
        source = image.filename if settings.store_filenames else None
        try:
            face_id = await _gallery_call(gallery.add_face, identity_id, faces[0].embedding, contract.id, source)
        except KeyError:  # removed while its photo was being embedded
            raise _not_found("identity", identity_id) from None
        x1, y1, x2, y2 = faces[0].box
        return schemas.FaceCreated(
            id=face_id,
            identity_id=identity_id,
            box=schemas.Box(x1=x1, y1=y1, x2=x2, y2=y2, score=faces[0].score),
            faces_in_image=len(faces),
        )

    @app.delete(
        "/v1/faces/{face_id}", response_model=schemas.DeletedFace, dependencies=auth, responses=_ERROR_RESPONSES,
        tags=["faces"],
    )  # fmt: skip
    async def delete_face(face_id: IdPath) -> schemas.DeletedFace:
        """Remove one enrolled face (from the database, its log and the index cache)."""
        try:
            await _gallery_call(gallery.remove_face, face_id)
        except KeyError:
            raise _not_found("face", face_id) from None
        return schemas.DeletedFace(id=face_id)

    @app.post(
        "/v1/search", response_model=schemas.SearchResponse, dependencies=auth, responses=_IMAGE_RESPONSES,
        tags=["recognition"], openapi_extra=multipart_schema("image"),
    )  # fmt: skip
    async def search(
        request: Request,
        k: Annotated[int, Query(ge=1, le=settings.max_k, description="identities to return")] = 5,
    ) -> schemas.SearchResponse:
        """Open-set identification (1:N): the ``k`` identities most similar to the main face of a photo, best first.

        ``match`` says whether a hit passes the model's identification threshold, chosen so that a person who is not
        enrolled is reported as a match in about 1 % of searches (the FPIR in the model contract; it grows with the
        gallery's size). It is not the 1:1 threshold of ``/v1/verify``.
        """
        image = (await engine.uploads(request, "image"))["image"]
        query = await engine.run(engine.embed, image.data, image.label)
        found = await _gallery_call(gallery.search, query, k)
        return schemas.SearchResponse(
            matches=[
                schemas.SearchMatch(
                    identity_id=m.identity_id,
                    name=m.name,
                    similarity=m.similarity,
                    match=recognizer.identified(m.similarity),
                    face_id=m.face_id,
                )
                for m in found
            ],
            threshold=recognizer.identification_threshold,
        )

    @app.post(
        "/v1/verify", response_model=schemas.VerifyResponse, dependencies=auth, responses=_IMAGE_RESPONSES,
        tags=["recognition"], openapi_extra=multipart_schema("image1", "image2"),
    )  # fmt: skip
    async def verify(request: Request) -> schemas.VerifyResponse:
        """Verification (1:1): are the main faces of two photos (parts ``image1``, ``image2``) the same person?"""
        parts = await engine.uploads(request, "image1", "image2")
        e1 = await engine.run(engine.embed, parts["image1"].data, parts["image1"].label)
        e2 = await engine.run(engine.embed, parts["image2"].data, parts["image2"].label)
        try:
            v = recognizer.verify(e1, e2)
        except ValueError as e:  # a model without a calibrated threshold
            raise ApiError(409, "no_threshold", str(e)) from None
        return schemas.VerifyResponse(similarity=v.similarity, same=v.same, threshold=v.threshold)

    return app


def _json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI ``requestBody`` of a route that reads a JSON ``model`` itself (after checking the content type)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape("arcface API")}</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<script src="/docs/assets/swagger-ui-bundle.js" defer></script>
<script src="/static/docs.js" defer></script>
</head>
<body><div id="swagger-ui"></div></body>
</html>
"""


_DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")


def _docs_assets(settings: Settings) -> Path_ | None:
    """The folder of Swagger UI's files: the settings' ``docs_assets``, else the swagger-ui-bundle-v2 package's copy.

    Swagger UI 5 is needed: FastAPI writes OpenAPI 3.1, which Swagger UI 4 (the older swagger-ui-bundle) cannot show.
    """
    if not settings.docs:
        return None
    if settings.docs_assets is not None:
        folder = Path_(settings.docs_assets)
    else:
        try:
            import swagger_ui_bundle  # optional (the [all] extra): only the API docs page needs it
        except ImportError:
            return None
        folder = Path_(str(swagger_ui_bundle.swagger_ui_path))
    if not all((folder / f).is_file() for f in _DOCS_ASSETS):
        logger.warning("API docs: %s lacks swagger-ui-bundle.js or swagger-ui.css", folder)
        return None
    return folder


def _identity_out(ident) -> schemas.IdentityOut:
    return schemas.IdentityOut(
        id=ident.id, name=ident.name, metadata=ident.metadata, created=ident.created, faces=ident.faces
    )


def _not_found(kind: str, ident: int) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} {ident} in the gallery")
