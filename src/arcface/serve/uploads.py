"""Reading ``multipart/form-data`` uploads in memory, with limits on every part, as they arrive.

Starlette's form parser spools large files to temporary files on disk and accepts many parts; photos of
faces are personal data, and a route takes one or two images. So the service reads its uploads here instead:

- only ``multipart/form-data`` with a boundary is read (415 otherwise, before any byte of the body);
- only the route's own part names are accepted, each once (422 for an unknown or repeated part, e.g. two ``image``
  parts: no silent "last one wins");
- at most ``max_parts`` parts and 16 KiB of part headers; each part at most ``max_part_bytes`` (the image byte limit:
  413 ``too_large`` as soon as a part passes it, without reading the rest);
- nothing is written to disk; the whole body is also counted by the guard (:mod:`arcface.serve.guard`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from arcface.io.images import ImageError
from arcface.serve.errors import ApiError

__all__ = ["MAX_PART_HEADER_BYTES", "Upload", "multipart_schema", "read_uploads"]

MAX_PART_HEADER_BYTES = 16 * 1024
"""Largest total size of one part's headers."""


@dataclass(frozen=True)
class Upload:
    """One uploaded part.

    Attributes:
        field: the part's name (e.g. ``image``).
        filename: the client's file name, cleaned for messages (control characters dropped, at most 100 characters),
            or None.
        data: the bytes.
    """

    field: str
    filename: str | None
    data: bytes

    @property
    def label(self) -> str:
        """How to call the upload in messages: its file name, else its part name."""
        return self.filename or self.field


class _Reader:
    """python-multipart callbacks collecting the parts of one body in memory, refusing what breaks a limit."""

    def __init__(self, fields: Sequence[str], max_part_bytes: int, max_parts: int) -> None:
        self.fields = tuple(fields)
        self.max_part_bytes = max_part_bytes
        self.max_parts = max_parts
        self.parts: dict[str, Upload] = {}
        self.count = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._name = b""
        self._value = b""
        self._field: str | None = None
        self._filename: str | None = None
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.count += 1
        if self.count > self.max_parts:
            raise ApiError(422, "invalid_request", f"too many parts: this route takes {', '.join(self.fields)}")
        self._headers, self._header_bytes = [], 0
        self._name = self._value = b""
        self._field, self._filename, self._data = None, None, bytearray()

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ApiError(422, "invalid_request", f"part headers over {MAX_PART_HEADER_BYTES:,} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name = self._value = b""

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), None)
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise ApiError(422, "invalid_request", "a part without 'Content-Disposition: form-data; name=...'")
        field = options[b"name"].decode("utf-8", "replace")
        if field not in self.fields:
            raise ApiError(422, "invalid_request", f"unexpected part {_clean(field)!r}; this route takes "
                           f"{', '.join(repr(f) for f in self.fields)}")  # fmt: skip
        if field in self.parts:
            raise ApiError(422, "invalid_request", f"the part {field!r} was sent more than once; send it once")
        self._field = field
        if b"filename" in options:
            self._filename = _clean(options[b"filename"].decode("utf-8", "replace")) or None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if len(self._data) + (end - start) > self.max_part_bytes:
            raise ImageError(
                self._filename or self._field or "upload", "too_large",
                f"upload of more than {self.max_part_bytes:,} bytes exceeds the limit (max_upload_bytes)",
            )  # fmt: skip
        self._data += data[start:end]

    def on_part_end(self) -> None:
        assert self._field is not None  # on_headers_finished refused a part without a name
        self.parts[self._field] = Upload(self._field, self._filename, bytes(self._data))
        self._data = bytearray()


async def read_uploads(
    content_type: str | None,
    stream: AsyncIterator[bytes],
    fields: Sequence[str],
    *,
    max_part_bytes: int,
    max_parts: int | None = None,
) -> dict[str, Upload]:
    """The named parts of a ``multipart/form-data`` body, in memory.

    Args:
        content_type: the request's ``Content-Type`` header.
        stream: the body, chunk by chunk (``request.stream()``); read only when the content type is right.
        fields: the part names the route takes; each is required and accepted once.
        max_part_bytes: largest part (the image byte limit).
        max_parts: most parts (default: ``len(fields) + 2``, so a repeated or unknown part is named as such).

    Raises:
        ApiError: 415 not multipart; 422 malformed body, unknown, repeated or missing part, too many parts.
        ImageError: ``too_large`` for a part over ``max_part_bytes``.
    """
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = _clean((content_type or "none").split(";")[0])
        raise ApiError(415, "unsupported_media_type", f"send multipart/form-data with the part(s) "
                       f"{', '.join(repr(f) for f in fields)}, not {shown}")  # fmt: skip
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(422, "invalid_request", "a multipart/form-data body needs a boundary (at most 200 characters)")
    reader = _Reader(fields, max_part_bytes, max_parts or len(fields) + 2)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise ApiError(422, "invalid_request", f"malformed multipart body ({_clean(str(e))[:200]})") from None
    missing = [f for f in fields if f not in reader.parts]
    if missing:
        raise ApiError(422, "invalid_request", f"missing part(s) {', '.join(repr(f) for f in missing)}")
    return reader.parts


def multipart_schema(*fields: str) -> dict:
    """The OpenAPI ``requestBody`` of a route that takes these image parts (for ``openapi_extra``)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": list(fields),
                        "properties": {f: {"type": "string", "format": "binary"} for f in fields},
                    }
                }
            },
        }
    }


def _clean(text: str) -> str:
    """A client-given string fit for a message: printable characters only, whitespace collapsed, 100 at most."""
    return " ".join("".join(c for c in text if c.isprintable()).split())[:100]
