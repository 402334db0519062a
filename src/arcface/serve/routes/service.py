"""The service itself, no key needed::

    GET /               the web page (static/index.html; it asks for the key and sends it from the browser)
    GET /health         {"status": "ok"}; with a valid key also the model, its thresholds, the inference workers and
                        threads, the gallery's backend and location (a password masked)
    GET /docs           Swagger UI (only with ``docs``), every file from this service: no CDN
    GET /docs/assets/.. the two files the docs page loads

The page's script and style sheet are mounted at ``/static`` by the app.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from arcface.serve import schemas
from arcface.serve.deps import GalleryDep, PoolDep, RecognizerDep
from arcface.serve.errors import ApiError
from arcface.serve.guard import AUTHENTICATED
from arcface.serve.settings import Settings

__all__ = ["DOCS_ASSETS", "STATIC", "docs_assets", "docs_router", "router"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"
"""The web page (``index.html``, ``app.js``, ``style.css``), served at ``/`` and ``/static``."""
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")
"""The files of Swagger UI the docs page loads."""

router = APIRouter()
docs_router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The web page: enrol, search and list people."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/health", response_model=schemas.HealthDetail | schemas.Health, tags=["service"])
async def health(
    request: Request, recognizer: RecognizerDep, pool: PoolDep, gallery: GalleryDep
) -> schemas.Health:
    """Liveness: answers without touching the model or the gallery; the model's details only with a valid key."""
    if not request.scope.get(AUTHENTICATED):
        return schemas.Health()
    contract = recognizer.contract
    return schemas.HealthDetail(
        model=contract.architecture,
        contract=contract.id,
        threshold=recognizer.threshold,
        identification_threshold=recognizer.identification_threshold,
        workers=pool.plan.item_threads,
        threads=pool.plan.intra_op,
        gallery_backend=gallery.backend,
        gallery=gallery.location,
    )


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


@docs_router.get("/docs")
async def docs() -> HTMLResponse:
    """Swagger UI, every file from this service."""
    return HTMLResponse(_DOCS_PAGE)


@docs_router.get("/docs/assets/{name}")
async def docs_asset(request: Request, name: str) -> FileResponse:
    """Only the two files the docs page loads (not the package's demo page, which points elsewhere)."""
    if name not in DOCS_ASSETS:
        raise ApiError(404, "not_found", "no such file")
    media = "text/css" if name.endswith(".css") else "text/javascript"
    return FileResponse(request.app.state.docs_assets / name, media_type=media)


def docs_assets(settings: Settings) -> Path | None:
    """The folder of Swagger UI's files: the settings' ``docs_assets``, else the swagger-ui-bundle-v2 package's copy;
    None when docs are off or the files are missing (then ``/docs`` is not served).

    Swagger UI 5 is needed: FastAPI writes OpenAPI 3.1, which Swagger UI 4 (the older swagger-ui-bundle) cannot show.
    """
    if not settings.docs:
        return None
    if settings.docs_assets is not None:
        folder = Path(settings.docs_assets)
    else:
        try:
            import swagger_ui_bundle  # optional (the [all] extra): only the API docs page needs it
        except ImportError:
            logger.warning("API docs: no Swagger UI files (pip install swagger-ui-bundle-v2); /docs is off")
            return None
        folder = Path(str(swagger_ui_bundle.swagger_ui_path))
    if not all((folder / f).is_file() for f in DOCS_ASSETS):
        logger.warning("API docs: %s lacks swagger-ui-bundle.js or swagger-ui.css; /docs is off", folder)
        return None
    return folder
