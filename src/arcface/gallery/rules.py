"""What every gallery backend accepts and promises, whatever stores it: limits, names, metadata, ids, errors.

:class:`~arcface.gallery.base.GalleryStore` applies these for every backend, so that a caller cannot tell the backends
apart by what they accept.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "BIDI_CONTROLS",
    "INT64_MAX",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_SOURCE_CHARS",
    "GalleryBusyError",
    "GalleryContractError",
    "GalleryError",
    "GalleryFullError",
    "GalleryStorageError",
    "check_metadata",
    "check_name",
    "check_source",
    "valid_id",
]

INT64_MAX = 2**63 - 1
"""The largest id (database integers are signed 64-bit); ids outside 1..INT64_MAX are never found."""
MAX_NAME_CHARS = 256
"""Longest identity name, in characters."""
MAX_METADATA_BYTES = 16 * 1024
"""Largest identity metadata, as compact JSON in UTF-8 bytes."""
MAX_METADATA_DEPTH = 8
"""Deepest nesting of identity metadata (the object itself is level 1)."""
MAX_SOURCE_CHARS = 4096
"""Longest face source (a file path, as ``arcface gallery enroll`` stores it), in characters."""
# Bidirectional formatting characters: they reorder what a terminal or a page shows (a name that reads as another).
_REFUSED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class GalleryError(ValueError):
    """A folder that is not a usable gallery (not SQLite, another schema, no contract)."""


class GalleryContractError(GalleryError):
    """An embedding or model contract other than the one the gallery is bound to."""


class GalleryStorageError(RuntimeError):
    """The storage cannot take the operation now; nothing was written. Not the caller's mistake."""


class GalleryBusyError(GalleryStorageError):
    """Another connection (another process) held the database lock for longer than the busy timeout: retry later.

    Attributes:
        retry_after: seconds after which a retry is sensible.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GalleryFullError(GalleryStorageError):
    """The disk (or the file-size limit) is full: the write was rolled back."""


def check_name(name: object) -> str:
    """An identity name as the gallery accepts it; raises ValueError naming what is wrong.

    Refused: a non-string, blank, longer than :data:`MAX_NAME_CHARS` characters, or holding a control character
    (Unicode category Cc: NUL, ESC, tab, line breaks, DEL, C1), an invisible format character (category Cf: zero
    width spaces and joiners, the byte-order mark, soft hyphen, the bidirectional overrides, isolates and marks), a
    line or paragraph separator or a lone surrogate: each makes a name display as another one (or not at all).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("an identity needs a non-empty name")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a name has at most {MAX_NAME_CHARS} characters, got {len(name)}")
    for i, c in enumerate(name):
        if unicodedata.category(c) in _REFUSED_CATEGORIES or c in BIDI_CONTROLS:
            raise ValueError(f"a name may not hold control, invisible or bidirectional characters (U+{ord(c):04X} at "
                             f"{i})")  # fmt: skip
    return name


def check_metadata(metadata: Mapping[str, Any] | None) -> str:
    """Identity metadata as the gallery stores it (compact sorted JSON); raises ValueError naming what is wrong.

    A JSON object (string keys; strings, finite numbers, booleans, null, lists and objects as values) of at most
    :data:`MAX_METADATA_DEPTH` levels and :data:`MAX_METADATA_BYTES` bytes.
    """
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a JSON object (a mapping), got {type(metadata).__name__}")
    stack: list[tuple[Any, int]] = [(metadata, 1)]  # iterative: a deep value must not exhaust the Python stack
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (Mapping, list, tuple)):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
            children = value.values() if isinstance(value, Mapping) else value
            stack.extend((child, depth + 1) for child in children)
    try:
        text = json.dumps(dict(metadata), sort_keys=True, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must hold JSON values ({e})") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("metadata holds a lone surrogate (not valid Unicode)") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size:,} bytes of JSON, the limit is {MAX_METADATA_BYTES:,}")
    return text


def check_source(source: object) -> str | None:
    """A face's source as every backend stores it (None, or text); raises ValueError naming what is wrong.

    Refused: a non-string, longer than :data:`MAX_SOURCE_CHARS` characters, a NUL character (no PostgreSQL text holds
    one) or a lone surrogate (not valid Unicode). Other characters are kept: a file name may hold them.
    """
    if source is None:
        return None
    if not isinstance(source, str):
        raise ValueError(f"a face source must be text or None, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise ValueError(f"a face source has at most {MAX_SOURCE_CHARS} characters, got {len(source)}")
    if "\x00" in source:
        raise ValueError("a face source may not hold a NUL character")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a face source holds a lone surrogate (not valid Unicode)") from None
    return source


def valid_id(value: object) -> bool:
    """An id SQLite can hold that the gallery may have given: an int (not a bool) in 1 .. 2^63 - 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 1 <= int(value) <= INT64_MAX
