"""Per-item failure records of the batch jobs: a bad item is recorded with its reason and the job goes on."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from arcface.inference.recognizer import NoFaceError
from arcface.io.images import ImageError

__all__ = ["Failure", "failure_of", "reason_of"]


@dataclass(frozen=True)
class Failure:
    """One item of a batch that could not be processed.

    Attributes:
        path: the item as the batch names it.
        reason: a stable code: an ``ImageError.reason`` (``missing``, ``corrupt``, ...), ``no_face``, a reason the
            safe walker skipped the file for (``not_regular``, ``link_outside``, ``too_large``; see
            :mod:`arcface.io.walk`), ``bad_embedding`` (the model gave a vector that is not finite and of unit
            norm), or ``error`` for anything else.
        message: one line for a person.
    """

    path: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The failure as a JSON-ready dict."""
        return asdict(self)


def reason_of(error: BaseException) -> str:
    """The failure code of an exception (see :class:`Failure`)."""
    if isinstance(error, ImageError):
        return str(error.reason)
    if isinstance(error, NoFaceError):
        return "no_face"
    return "error"


def failure_of(path: str, error: BaseException) -> Failure:
    """The :class:`Failure` record of ``error`` raised for ``path``, with a one-line message."""
    message = " ".join(str(error).split()) or type(error).__name__
    if reason_of(error) == "error" and type(error).__name__ not in message:
        message = f"{type(error).__name__}: {message}"
    return Failure(path, reason_of(error), message)
