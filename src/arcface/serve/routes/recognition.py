"""Recognition::

    POST /v1/search?k=5    multipart ``image`` -> {"matches": [...], "threshold", "threshold_kind"}
    POST /v1/verify        multipart ``image1``, ``image2`` -> {"similarity", "same", "threshold"}

Search is open-set identification: ``match`` uses the model's identification threshold (chosen for a false-positive
identification rate), not the 1:1 verification threshold of ``/v1/verify``. The largest ``k`` is a setting, and the
OpenAPI document states it, so :func:`router` takes it.
"""


from typing import Annotated

from fastapi import APIRouter, Query, Request

from arcface.serve import schemas
from arcface.serve.deps import AUTH, GalleryDep, PoolDep, RecognizerDep, SettingsDep, Uploads, gallery_call
from arcface.serve.errors import ApiError
from arcface.serve.handlers import API, BODY, GALLERY, responses

__all__ = ["router"]

IMAGE = Uploads("image")
PAIR = Uploads("image1", "image2")
_SEARCH_RESPONSES = responses(API, BODY, 400, GALLERY)


async def _search(
    request: Request, k: int, pool: PoolDep, recognizer: RecognizerDep, gallery: GalleryDep, settings: SettingsDep
) -> schemas.SearchResponse:
    image = (await IMAGE.read(request, settings))["image"]
    query = await pool.run(pool.embed, image.data, image.label)
    found = await gallery_call(gallery.search, query, k)
    matches = [
        schemas.SearchMatch(
            identity_id=m.identity_id, name=m.name, similarity=m.similarity, match=recognizer.identified(m.similarity),
            face_id=m.face_id,
        )  # fmt: skip
        for m in found
    ]
    return schemas.SearchResponse(matches=matches, threshold=recognizer.identification_threshold)


async def verify(
    request: Request, pool: PoolDep, recognizer: RecognizerDep, settings: SettingsDep
) -> schemas.VerifyResponse:
    """Verification (1:1): are the main faces of two photos (parts ``image1``, ``image2``) the same person?"""
    parts = await PAIR.read(request, settings)
    e1 = await pool.run(pool.embed, parts["image1"].data, parts["image1"].label)
    e2 = await pool.run(pool.embed, parts["image2"].data, parts["image2"].label)
    try:
        v = recognizer.verify(e1, e2)
    except ValueError as e:  # a model without a calibrated threshold
        raise ApiError(409, "no_threshold", str(e)) from None
    return schemas.VerifyResponse(similarity=v.similarity, same=v.same, threshold=v.threshold)


def router(max_k: int) -> APIRouter:
    """Search and verify, with ``k`` of a search at most ``max_k``."""
    r = APIRouter(dependencies=AUTH, tags=["recognition"])

    @r.post(
        "/v1/search", response_model=schemas.SearchResponse, responses=_SEARCH_RESPONSES, openapi_extra=IMAGE.openapi
    )
    async def search(
        request: Request, pool: PoolDep, recognizer: RecognizerDep, gallery: GalleryDep, settings: SettingsDep,
        k: Annotated[int, Query(ge=1, le=max_k, description="identities to return")] = 5,
    ) -> schemas.SearchResponse:  # fmt: skip
        """Open-set identification (1:N): the ``k`` identities most similar to the main face of a photo, best first.

        ``match`` says whether a hit passes the model's identification threshold, chosen so that a person who is not
        enrolled is reported as a match in only a small share of searches (the FPIR in the model contract; it grows
        with the gallery's size). It is not the 1:1 threshold of ``/v1/verify``.
        """
        return await _search(request, k, pool, recognizer, gallery, settings)

    r.add_api_route(
        "/v1/verify", verify, methods=["POST"], response_model=schemas.VerifyResponse,
        responses=responses(API, BODY, 400, 409), openapi_extra=PAIR.openapi,
    )  # fmt: skip
    return r
