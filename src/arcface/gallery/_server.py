"""What the server backends (PostgreSQL, Milvus) share: the parsed URI, the search beam width, the busy timeout, and
error messages that never show a credential."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import unquote

from arcface.gallery.base import GalleryStore
from arcface.gallery.rules import GalleryBusyError, GalleryStorageError
from arcface.gallery.target import GalleryTarget
from arcface.inference.contract import ModelContract

__all__ = ["BUSY_TIMEOUT_S", "ServerGallery"]

BUSY_TIMEOUT_S = 1.5
"""Default time a write waits for the server to take it before :class:`GalleryBusyError`."""


class ServerGallery(GalleryStore):
    """A gallery on a server, opened from its parsed URI.

    Args:
        target: the parsed URI.
        contract: the model contract; required to create the gallery, checked against the bound one otherwise.
        index: the index kind asked for (each backend says what it makes of it).
        create: create the gallery when the server has none (else :class:`FileNotFoundError`).
        index_params: the backend's index options; ``ef_search`` (the URI's wins) is the HNSW search beam width.
        busy_timeout: seconds a write waits for the server to take it (see each backend), then
            :class:`GalleryBusyError`.
    """

    OPTIONS = ("busy_timeout",)
    DEFAULT_EF_SEARCH: ClassVar[int] = 64

    def __init__(
        self,
        target: GalleryTarget,
        contract: ModelContract | None = None,
        *,
        index: str = "exact",
        create: bool = True,
        index_params: Mapping[str, Any] | None = None,
        busy_timeout: float = BUSY_TIMEOUT_S,
    ) -> None:
        super().__init__(target.display, index)
        self._target = target
        self._params = dict(index_params or {})
        self._ef_search = int(target.options.get("ef_search", self._params.get("ef_search", self.DEFAULT_EF_SEARCH)))
        self._busy_timeout = float(busy_timeout)
        self._secrets = sorted({s for s in (target.password, unquote(target.password), _uri_password(target.uri)) if s})
        self.contract, self.index_kind = self._connect(contract, index, create)
        self.dim = self.contract.embedding_size

    @abstractmethod
    def _connect(self, contract: ModelContract | None, index: str, create: bool) -> tuple[ModelContract, str]:
        """Reach the server, create the gallery (first use) or read it; the bound contract and the index kind.
        Releases what it opened when it raises."""

    def _scrub(self, e: BaseException) -> str:
        """The first line of an error (at most 500 characters), with every form of the password taken out."""
        text = " ".join(str(getattr(e, "message", "") or e).split("\n")[0].split()) or type(e).__name__
        for s in self._secrets:
            text = text.replace(s, "***")
        return text[:500]

    def _busy(self, why: str, e: BaseException) -> GalleryBusyError:
        """The error of a write the server did not take within the busy timeout."""
        return GalleryBusyError(
            f"the gallery {self.location} is busy: {why} for more than {self._busy_timeout:g} s ({self._scrub(e)}); "
            "retry later",
            retry_after=max(1.0, self._busy_timeout),
        )

    def _unavailable(self, e: BaseException) -> GalleryStorageError:
        """The error of a server that cannot be reached or written now."""
        return GalleryStorageError(f"the gallery {self.location} cannot be reached or written now ({self._scrub(e)})")


def _uri_password(uri: str) -> str:
    """The password of a URI (``user:password@``), percent-decoded; "" when there is none."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0].split("/", 1)[0]
    if "@" not in rest:
        return ""
    cred = rest.rsplit("@", 1)[0]
    return unquote(cred.split(":", 1)[1]) if ":" in cred else ""
