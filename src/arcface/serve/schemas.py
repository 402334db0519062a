"""Request and response bodies of the REST service (pydantic models; they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "Box",
    "DeletedFace",
    "DeletedIdentity",
    "ErrorBody",
    "ErrorResponse",
    "FaceCreated",
    "Health",
    "IdentityCreate",
    "IdentityCreated",
    "IdentityDetail",
    "IdentityList",
    "IdentityOut",
    "SearchMatch",
    "SearchResponse",
    "VerifyResponse",
]


class ErrorBody(BaseModel):
    """What went wrong: a stable ``code`` for programs and a one-line ``message`` for people."""

    code: str = Field(examples=["corrupt"])
    message: str = Field(examples=["photo.jpg: truncated or corrupt JPEG: image file is truncated"])


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody


class Health(BaseModel):
    """``GET /health``."""

    status: str = "ok"
    model: str
    contract: str
    threshold: float | None
    workers: int = Field(description="inference threads of the model pool")
    threads: int | None = Field(description="torch threads of each inference worker (null: the policy is off)")


class IdentityCreate(BaseModel):
    """``POST /v1/identities``."""

    name: str = Field(min_length=1, max_length=256, pattern=r"\S")
    metadata: dict[str, Any] = Field(default_factory=dict)


class IdentityCreated(BaseModel):
    """The id of a new identity."""

    id: int
    name: str


class IdentityOut(BaseModel):
    """One identity with its face count."""

    id: int
    name: str
    metadata: dict[str, Any]
    created: float
    faces: int


class IdentityDetail(IdentityOut):
    """One identity with the ids of its faces."""

    face_ids: list[int]


class IdentityList(BaseModel):
    """``GET /v1/identities``."""

    identities: list[IdentityOut]


class DeletedIdentity(BaseModel):
    """``DELETE /v1/identities/{id}``."""

    id: int
    removed_faces: int


class DeletedFace(BaseModel):
    """``DELETE /v1/faces/{id}``."""

    id: int


class Box(BaseModel):
    """A detected face: box (x1, y1, x2, y2) in the uploaded image's pixels and detector score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float


class FaceCreated(BaseModel):
    """``POST /v1/identities/{id}/faces``: the enrolled face (the main face of the photo)."""

    id: int
    identity_id: int
    box: Box
    faces_in_image: int


class SearchMatch(BaseModel):
    """One identity of a search, best first; ``match`` is ``similarity > threshold`` (None: no threshold)."""

    identity_id: int
    name: str
    similarity: float
    match: bool | None
    face_id: int


class SearchResponse(BaseModel):
    """``POST /v1/search``."""

    matches: list[SearchMatch]
    threshold: float | None


class VerifyResponse(BaseModel):
    """``POST /v1/verify``: cosine similarity of the main faces and ``similarity > threshold``."""

    similarity: float
    same: bool
    threshold: float
