"""Request and response bodies of the REST service (pydantic models; they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from arcface.gallery.rules import MAX_NAME_CHARS, check_metadata, check_name

__all__ = [
    "Box",
    "DeletedFace",
    "DeletedIdentity",
    "ErrorBody",
    "ErrorResponse",
    "FaceCreated",
    "Health",
    "HealthDetail",
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
    """``GET /health`` without a key: only that the service is up."""

    status: str = "ok"


class HealthDetail(Health):
    """``GET /health`` with a valid key: also the model and its thresholds."""

    model: str
    contract: str
    threshold: float | None = Field(description="1:1 verification threshold (cosine) of /v1/verify")
    identification_threshold: float | None = Field(
        description="1:N identification threshold (cosine) of /v1/search's match; None: not calibrated"
    )
    workers: int = Field(description="inference threads of the model pool")
    threads: int | None = Field(description="torch threads of each inference worker (null: the policy is off)")
    gallery_backend: str = Field(description="sqlite, postgresql, milvus or milvus-lite")
    gallery: str = Field(description="the gallery's folder or URI, any password masked")


_NOT_IN_A_NAME = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"
NAME_PATTERN = f"^[^{_NOT_IN_A_NAME}]*[^\\s{_NOT_IN_A_NAME}][^{_NOT_IN_A_NAME}]*$"
"""What :func:`~arcface.gallery.rules.check_name` accepts, for the OpenAPI document: not blank, and no control,
line or paragraph separator or bidirectional control character (the check itself stays the rule, and also refuses
a lone surrogate)."""


class IdentityCreate(BaseModel):
    """``POST /v1/identities``: a name (no control or bidirectional characters) and up to 16 KiB of JSON metadata
    nested at most 8 deep."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, json_schema_extra={"pattern": NAME_PATTERN})
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_metadata(value)
        return value


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
    """``GET /v1/identities``: one page of identities by id; ``next_after`` is the ``after`` of the next page."""

    identities: list[IdentityOut]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last page")


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
    """One identity of a search, best first; ``match`` is ``similarity > threshold``, the response's open-set
    identification threshold (None: the model has none)."""

    identity_id: int
    name: str
    similarity: float
    match: bool | None
    face_id: int


class SearchResponse(BaseModel):
    """``POST /v1/search``: the nearest identities and the identification threshold their ``match`` used.

    An identification (1:N) threshold is not the verification (1:1) one: it is chosen so that a person who is not
    enrolled is reported as a match in at most a given share of searches (the FPIR in the model contract), and a
    stranger compared with every enrolled person needs a higher bar than one comparison does.
    """

    matches: list[SearchMatch]
    threshold: float | None = Field(description="the cosine threshold of `match`; null when not calibrated")
    threshold_kind: Literal["identification"] = "identification"


class VerifyResponse(BaseModel):
    """``POST /v1/verify``: cosine similarity of the main faces and ``similarity > threshold`` (the 1:1
    verification threshold)."""

    similarity: float
    same: bool
    threshold: float
    threshold_kind: Literal["verification"] = "verification"
