"""Identities (people) and their enrolled faces::

    POST   /v1/identities                {"name", "metadata"} -> 201 {"id", "name"}
    GET    /v1/identities?limit&after    {"identities": [...], "next_after"}: one page by id
    GET    /v1/identities/{id}           one identity with its face ids
    DELETE /v1/identities/{id}           the identity and its faces (from every file of the gallery)
    POST   /v1/identities/{id}/faces     multipart ``image`` -> 201 {"id", "identity_id", "box", ...}
    DELETE /v1/faces/{id}                one face

Enrolment stores the embedding under the recognizer's contract id (the gallery refuses any other). An upload's file
name is stored only with ``store_filenames``; images are never stored.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from arcface.gallery.rules import INT64_MAX
from arcface.serve import schemas
from arcface.serve.deps import (
    AUTH,
    GalleryDep,
    IdPath,
    PoolDep,
    RecognizerDep,
    SettingsDep,
    Uploads,
    gallery_call,
    gallery_known,
)
from arcface.serve.errors import ApiError
from arcface.serve.handlers import API, BODY, GALLERY, WRITE, responses

__all__ = ["router"]

router = APIRouter(dependencies=AUTH)
IMAGE = Uploads("image")


def _json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI ``requestBody`` of a route that reads a JSON ``model`` itself (after checking the content type)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _identity_out(ident) -> schemas.IdentityOut:
    return schemas.IdentityOut(
        id=ident.id, name=ident.name, metadata=ident.metadata, created=ident.created, faces=ident.faces
    )


async def _read_identity(request: Request) -> schemas.IdentityCreate:
    """The JSON body of a new identity (415 when it is not JSON, 422 when it does not validate)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the identity as application/json")
    raw = await request.body()
    try:
        return schemas.IdentityCreate.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None
    except RecursionError:  # nested deeper than the parser goes
        raise ApiError(422, "invalid_request", "the JSON is nested too deeply") from None


@router.post(
    "/v1/identities", status_code=201, response_model=schemas.IdentityCreated, tags=["identities"],
    responses=responses(API, BODY, WRITE), openapi_extra=_json_body(schemas.IdentityCreate),
)  # fmt: skip
async def create_identity(request: Request, gallery: GalleryDep) -> schemas.IdentityCreated:
    """Create an identity (a person); enrol faces with ``POST /v1/identities/{id}/faces``."""
    body = await _read_identity(request)
    try:
        ident = await gallery_call(gallery.add_identity, body.name, body.metadata)
    except (TypeError, ValueError) as e:  # a name or metadata the gallery refuses
        raise ApiError(422, "invalid_request", str(e)) from None
    return schemas.IdentityCreated(id=ident, name=body.name)


@router.get(
    "/v1/identities", response_model=schemas.IdentityList, tags=["identities"], responses=responses(API, 422, GALLERY)
)
async def list_identities(
    gallery: GalleryDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="identities per page")] = 100,
    after: Annotated[int, Query(ge=0, le=INT64_MAX, description="the next_after of the previous page")] = 0,
) -> schemas.IdentityList:
    """One page of identities by id, with face counts; follow ``next_after`` until it is null."""
    people = await gallery_call(gallery.list_identities, limit + 1, after)
    more = len(people) > limit
    people = people[:limit]
    return schemas.IdentityList(
        identities=[_identity_out(i) for i in people], next_after=people[-1].id if more else None
    )


@router.get(
    "/v1/identities/{identity_id}", response_model=schemas.IdentityDetail, tags=["identities"],
    responses=responses(API, 404, 422, GALLERY),
)  # fmt: skip
async def get_identity(identity_id: IdPath, gallery: GalleryDep) -> schemas.IdentityDetail:
    """One identity with the ids of its faces."""

    def get():
        return gallery.get_identity(identity_id), gallery.list_faces(identity_id)

    ident, faces = await gallery_known("identity", identity_id, get)
    return schemas.IdentityDetail(**_identity_out(ident).model_dump(), face_ids=[f.id for f in faces])


@router.delete(
    "/v1/identities/{identity_id}", response_model=schemas.DeletedIdentity, tags=["identities"],
    responses=responses(API, 404, 422, WRITE),
)  # fmt: skip
async def delete_identity(identity_id: IdPath, gallery: GalleryDep) -> schemas.DeletedIdentity:
    """Remove an identity and all its faces, from the database, its log and the index cache."""
    n = await gallery_known("identity", identity_id, gallery.remove_identity, identity_id)
    return schemas.DeletedIdentity(id=identity_id, removed_faces=n)


@router.post(
    "/v1/identities/{identity_id}/faces", status_code=201, response_model=schemas.FaceCreated, tags=["faces"],
    responses=responses(API, BODY, 400, 404, 409, WRITE), openapi_extra=IMAGE.openapi,
)  # fmt: skip
async def add_face(
    request: Request, identity_id: IdPath, gallery: GalleryDep, pool: PoolDep, recognizer: RecognizerDep,
    settings: SettingsDep,
) -> schemas.FaceCreated:  # fmt: skip
    """Enrol the main face (large, near the centre) of a photo (multipart part ``image``) for an identity."""
    await gallery_known("identity", identity_id, gallery.get_identity, identity_id)  # 404 before the upload is read
    image = (await IMAGE.read(request, settings))["image"]
    faces = await pool.run(pool.enroll, image.data, image.label)
    source = image.filename if settings.store_filenames else None
    embedding, contract = faces[0].embedding, recognizer.contract.id
    # (an identity removed while its photo was being embedded is a 404 too)
    face_id = await gallery_known("identity", identity_id, gallery.add_face, identity_id, embedding, contract, source)
    x1, y1, x2, y2 = faces[0].box
    box = schemas.Box(x1=x1, y1=y1, x2=x2, y2=y2, score=faces[0].score)
    return schemas.FaceCreated(id=face_id, identity_id=identity_id, box=box, faces_in_image=len(faces))


@router.delete(
    "/v1/faces/{face_id}", response_model=schemas.DeletedFace, tags=["faces"],
    responses=responses(API, 404, 422, WRITE),
)  # fmt: skip
async def delete_face(face_id: IdPath, gallery: GalleryDep) -> schemas.DeletedFace:
    """Remove one enrolled face (from the database, its log and the index cache)."""
    await gallery_known("face", face_id, gallery.remove_face, face_id)
    return schemas.DeletedFace(id=face_id)
