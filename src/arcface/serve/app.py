"""The REST service: ``create_app(settings)`` wraps a recognizer (the engine) and a gallery in a FastAPI app.

Routes (``/v1`` ones need ``Authorization: Bearer KEY``; OpenAPI docs at ``/docs``)::

    GET    /                             no auth: the web page (static/index.html; it asks for the key)
    GET    /static/...                   no auth: the page's script and style sheet
    GET    /health                       no auth: status, model, contract id, threshold, inference workers/threads
    POST   /v1/identities                {"name", "metadata"} -> 201 {"id", "name"}
    GET    /v1/identities                {"identities": [...]}
    GET    /v1/identities/{id}           one identity with its face ids
    DELETE /v1/identities/{id}           the identity and its faces
    POST   /v1/identities/{id}/faces     multipart ``image`` -> 201 {"id", "identity_id", "box", ...}
    DELETE /v1/faces/{id}                one face
    POST   /v1/search?k=5                multipart ``image`` -> {"matches": [...], "threshold"}
    POST   /v1/verify                    multipart ``image1``, ``image2`` -> {"similarity", "same", "threshold"}

Decisions:

- **Errors** are JSON ``{"error": {"code", "message"}}``. Image problems keep the loader's reason as the code
  (:class:`~arcface.io.images.ImageError`): ``too_large`` 413, ``corrupt`` 422, ``not_image`` and
  ``unsupported`` 415, ``empty`` 400; no face is 422 ``no_face``; unknown ids 404 ``not_found``; missing or wrong
  key 401 ``unauthorized``; a bad request 422 ``invalid_request``.
- **Limits** are checked before decoding: the request's Content-Length (more than two uploads' worth is refused
  before the body is parsed), each upload's bytes, then the pixel count from the image header.
- **The event loop never runs the model.** Decoding, detection and embedding run in a bounded thread pool
  (``settings.workers``); gallery calls (SQLite with fsync) run in anyio's worker threads. So ``/health`` answers
  while uploads are being embedded.
- **Threads**: the pool's size and torch's threads come from the thread policy (:mod:`arcface.runtime.threads`,
  workload "service"): by default one inference thread per usable CPU (affinity mask, cgroup CPU quota, or
  ``settings.threads`` / ``ARCFACE_THREADS``), each running its request with one torch and onnxruntime thread, so
  workers x threads never exceed the CPUs (requests run side by side instead of one request's small operators on a
  team of threads that stalls whenever another request or process takes a core). ``/health`` reports them.
- **Keys** are compared with :func:`hmac.compare_digest` against every configured key (no early exit).
- Enrolment stores the embedding under the recognizer's contract id; the gallery refuses any other contract, and
  an injected gallery bound to another contract is refused at start.
"""

import asyncio
import functools
import hmac
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from arcface.align.face import Face
from arcface.gallery import Gallery
from arcface.gallery.store import GalleryContractError
from arcface.inference.recognizer import FaceRecognizer, NoFaceError
from arcface.io.images import ImageError, image_from_upload
from arcface.runtime import threads as thread_policy
from arcface.serve import schemas
from arcface.serve.settings import Settings, SettingsError

__all__ = ["IMAGE_ERROR_STATUS", "ApiError", "create_app"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
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

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": schemas.ErrorResponse, "description": d}
    for s, d in ((401, "missing or wrong API key"), (422, "invalid request"))
}
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERROR_RESPONSES,
    400: {"model": schemas.ErrorResponse, "description": "empty upload"},
    413: {"model": schemas.ErrorResponse, "description": "upload over the byte or pixel limit"},
    415: {"model": schemas.ErrorResponse, "description": "not an image, or an unsupported format"},
    422: {"model": schemas.ErrorResponse, "description": "corrupt image, no face, or invalid request"},
}


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": {"code": code, "message": message}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


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

    async def read(self, upload: UploadFile, field: str) -> tuple[bytes, str]:
        """The bytes of an upload (at most ``max_upload_bytes``) and its name for messages."""
        name = " ".join((upload.filename or field).split()) or field
        limit = self.settings.max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            size = f"{upload.size:,} bytes" if upload.size else f"more than {limit:,} bytes"
            raise ImageError(name, "too_large", f"upload of {size} exceeds the limit of {limit:,} bytes "
                             "(max_upload_bytes)")  # fmt: skip
        return data, name

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
    """A gallery method in a worker thread (SQLite writes fsync)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def create_app(settings: Settings, recognizer: FaceRecognizer | None = None, gallery: Gallery | None = None) -> FastAPI:
    """The FastAPI application of the service.

    Args:
        settings: see :class:`~arcface.serve.settings.Settings`.
        recognizer: the engine; default ``FaceRecognizer(settings.model, settings.detector)`` with the thread plan's
            threads per worker (this process's torch threads are set to the plan's either way).
        gallery: the gallery; default ``Gallery.open(settings.gallery, recognizer.contract)`` (closed on shutdown).

    Returns:
        The app (serve it with uvicorn; ``arcface serve`` does).

    Raises:
        SettingsError: no API key without ``allow_no_auth``, a gallery bound to another contract, or a bad
            ``ARCFACE_THREADS``.
    """
    settings.check_auth()
    try:
        plan = thread_policy.decide("service", threads=settings.threads, workers=settings.workers)
    except thread_policy.ThreadsError as e:
        raise SettingsError(str(e)) from None
    if recognizer is None:
        # each inference thread runs the whole pipeline of its request on the plan's threads
        recognizer = FaceRecognizer(settings.model, settings.detector, threads=plan.threads)
    thread_policy.apply(plan)  # before the pool's threads start: they take torch's setting when they first run
    contract = recognizer.contract
    own_gallery = gallery is None
    if gallery is None:
        gallery = Gallery.open(settings.gallery, contract, index=settings.index)
    elif gallery.contract_id != contract.id:
        raise SettingsError(
            f"the gallery {gallery.directory} is bound to contract {gallery.contract_id}, the model has {contract.id}"
        )
    engine = _Engine(recognizer, settings, plan)
    keys = tuple(k.encode() for k in settings.api_keys)
    body_limit = 2 * settings.max_upload_bytes + 1024 * 1024  # two uploads (verify) and the multipart framing

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()
        if own_gallery:
            gallery.close()

    app = FastAPI(
        title="arcface",
        summary="Face gallery, identification and verification",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.recognizer = recognizer
    app.state.gallery = gallery
    app.state.engine = engine

    bearer = HTTPBearer(auto_error=False, description="an API key (ARCFACE_API_KEY or the settings file)")

    async def require_key(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not keys:  # allow_no_auth (checked above)
            return
        if creds is None:
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer KEY'",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        given = creds.credentials.encode()
        ok = False
        for key in keys:  # no early exit: the time does not say which key came close
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise ApiError(401, "unauthorized", "wrong API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    # ----------------------------------------------------------------------------------------------
    # Errors

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > body_limit:
            return _error(413, "too_large", f"request body of {int(length):,} bytes exceeds the limit of "
                          f"{body_limit:,} bytes (max_upload_bytes per image)")  # fmt: skip
        return await call_next(request)

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

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(e.status_code, "error")
        return _error(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    # ----------------------------------------------------------------------------------------------
    # Routes

    auth = [Depends(require_key)]

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The web page: enrol, search and list people (it asks for the API key and sends it from the browser)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", response_model=schemas.Health, tags=["service"])
    async def health() -> schemas.Health:
        """Liveness: answers without a key and without touching the model or the gallery."""
        return schemas.Health(model=contract.architecture, contract=contract.id, threshold=recognizer.threshold,
                              workers=engine.plan.workers, threads=engine.plan.threads)  # fmt: skip

    @app.post(
        "/v1/identities", status_code=201, response_model=schemas.IdentityCreated, dependencies=auth,
        responses=_ERROR_RESPONSES, tags=["identities"],
    )  # fmt: skip
    async def create_identity(body: schemas.IdentityCreate) -> schemas.IdentityCreated:
        """Create an identity (a person); enrol faces with ``POST /v1/identities/{id}/faces``."""
        try:
            ident = await _gallery_call(gallery.add_identity, body.name, body.metadata)
        except (TypeError, ValueError) as e:  # metadata that is not JSON
            raise ApiError(422, "invalid_request", str(e)) from None
        return schemas.IdentityCreated(id=ident, name=body.name)

    @app.get(
        "/v1/identities", response_model=schemas.IdentityList, dependencies=auth, responses=_ERROR_RESPONSES,
        tags=["identities"],
    )  # fmt: skip
    async def list_identities() -> schemas.IdentityList:
        """Every identity with its face count, by id."""
        people = await _gallery_call(gallery.list_identities)
        return schemas.IdentityList(identities=[_identity_out(i) for i in people])

    @app.get(
        "/v1/identities/{identity_id}", response_model=schemas.IdentityDetail, dependencies=auth,
        responses=_ERROR_RESPONSES, tags=["identities"],
    )  # fmt: skip
    async def get_identity(identity_id: int) -> schemas.IdentityDetail:
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
    async def delete_identity(identity_id: int) -> schemas.DeletedIdentity:
        """Remove an identity and all its faces."""
        try:
            n = await _gallery_call(gallery.remove_identity, identity_id)
        except KeyError:
            raise _not_found("identity", identity_id) from None
        return schemas.DeletedIdentity(id=identity_id, removed_faces=n)

    @app.post(
        "/v1/identities/{identity_id}/faces", status_code=201, response_model=schemas.FaceCreated,
        dependencies=auth, responses=_IMAGE_RESPONSES, tags=["faces"],
    )  # fmt: skip
    async def add_face(identity_id: int, image: Annotated[UploadFile, File()]) -> schemas.FaceCreated:
        """Enrol the main face (large, near the centre) of a photo for an identity."""
        try:
            await _gallery_call(gallery.get_identity, identity_id)  # 404 before the model runs
        except KeyError:
            raise _not_found("identity", identity_id) from None
        data, name = await engine.read(image, "image")
        faces = await engine.run(engine.enroll, data, name)
        try:
            face_id = await _gallery_call(gallery.add_face, identity_id, faces[0].embedding, contract.id, name)
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
    async def delete_face(face_id: int) -> schemas.DeletedFace:
        """Remove one enrolled face."""
        try:
            await _gallery_call(gallery.remove_face, face_id)
        except KeyError:
            raise _not_found("face", face_id) from None
        return schemas.DeletedFace(id=face_id)

    @app.post(
        "/v1/search", response_model=schemas.SearchResponse, dependencies=auth, responses=_IMAGE_RESPONSES,
        tags=["recognition"],
    )  # fmt: skip
    async def search(
        image: Annotated[UploadFile, File()],
        k: Annotated[int, Query(ge=1, le=settings.max_k, description="identities to return")] = 5,
    ) -> schemas.SearchResponse:
        """The ``k`` identities most similar to the main face of a photo, best first."""
        data, name = await engine.read(image, "image")
        query = await engine.run(engine.embed, data, name)
        found = await _gallery_call(gallery.search, query, k)
        threshold = recognizer.threshold
        return schemas.SearchResponse(
            matches=[
                schemas.SearchMatch(
                    identity_id=m.identity_id,
                    name=m.name,
                    similarity=m.similarity,
                    match=None if threshold is None else bool(m.similarity > threshold),
                    face_id=m.face_id,
                )
                for m in found
            ],
            threshold=threshold,
        )

    @app.post(
        "/v1/verify", response_model=schemas.VerifyResponse, dependencies=auth, responses=_IMAGE_RESPONSES,
        tags=["recognition"],
    )  # fmt: skip
    async def verify(
        image1: Annotated[UploadFile, File()], image2: Annotated[UploadFile, File()]
    ) -> schemas.VerifyResponse:
        """Are the main faces of two photos the same person?"""
        data1, name1 = await engine.read(image1, "image1")
        data2, name2 = await engine.read(image2, "image2")
        e1 = await engine.run(engine.embed, data1, name1)
        e2 = await engine.run(engine.embed, data2, name2)
        try:
            v = recognizer.verify(e1, e2)
        except ValueError as e:  # a model without a calibrated threshold
            raise ApiError(409, "no_threshold", str(e)) from None
        return schemas.VerifyResponse(similarity=v.similarity, same=v.same, threshold=v.threshold)

    return app


def _identity_out(ident) -> schemas.IdentityOut:
    return schemas.IdentityOut(
        id=ident.id, name=ident.name, metadata=ident.metadata, created=ident.created, faces=ident.faces
    )


def _not_found(kind: str, ident: int) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} {ident} in the gallery")
