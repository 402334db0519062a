"""Where a gallery is: the path or URI that names one, parsed, with its credentials masked.

A gallery is named by a path or a URI, everywhere one is named (the API, ``--gallery``, ``arcface serve``, the
settings file)::

    /srv/gallery, sqlite:///srv/gallery       the SQLite store (+ FAISS) in that folder: the embedded default
    postgresql://USER:PASSWORD@HOST:PORT/DB   PostgreSQL with pgvector (``postgres://`` too)
    milvus://[USER:PASSWORD@]HOST:PORT[/DB]   a Milvus server or cluster over gRPC (``milvus+https://``: TLS)
    milvus-lite:///path/file.db               an embedded Milvus Lite data folder (one process only)

A server URI may add ``gallery=NAME`` (the gallery's name on that server: a PostgreSQL schema, a prefix of Milvus
collections; default ``arcface``; lower-case letters, digits and ``_``) and ``ef_search=N`` (the HNSW search beam
width) to its query string; they are taken out before the rest reaches the driver. A PostgreSQL URI passes on only
the connection parameters of :data:`PG_URI_PARAMS` (TLS, authentication, timeouts, host selection); any other
(``options``, which sets server settings such as ``search_path`` for every statement, ``service``, which reads them
from a file) is refused, so a URI cannot change what the gallery's SQL refers to. The path after ``sqlite://`` or
``milvus-lite://`` is the text that follows the ``//`` (``sqlite:///srv/g`` is ``/srv/g``).

Credentials never leave the URI: :attr:`GalleryTarget.display` (and ``str()``) shows the password and any
``password``/``token`` parameter as ``***``, and every message of a backend uses that form.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from arcface.gallery.rules import GalleryError

__all__ = ["DEFAULT_GALLERY_NAME", "PG_URI_PARAMS", "SCHEMES", "GalleryTarget", "mask_uri"]

DEFAULT_GALLERY_NAME = "arcface"
"""The gallery's name on a server when the URI gives none."""
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_OUR_PARAMS = ("gallery", "ef_search")
_SECRET_PARAMS = ("password", "token", "sslpassword")
PG_URI_PARAMS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth", "channel_binding",
    "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode", "sslrootcert",
    "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "gssencmode", "krbsrvname", "gsslib", "gssdelegation", "target_session_attrs", "load_balance_hosts",
    "application_name",
})  # fmt: skip
"""The libpq parameters a ``postgresql://`` URI may carry: where and how to connect, never what the session does."""
SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "milvus": "milvus",
    "milvus+https": "milvus",
    "milvus-lite": "milvus-lite",
}
"""URI scheme -> backend kind."""


@dataclass(frozen=True)
class GalleryTarget:
    """A parsed gallery location (see the module docstring for the forms).

    Attributes:
        kind: ``"sqlite"``, ``"postgresql"``, ``"milvus"`` or ``"milvus-lite"``.
        uri: what was given (credentials included: never print it; ``str()`` is :attr:`display`).
        display: the location with the password masked, for messages.
        path: the folder (SQLite) or data folder (Milvus Lite); None for a server.
        name: the gallery's name on a server (``gallery=``; default ``arcface``).
        connect: what the driver gets: the libpq URI without our parameters, or Milvus's ``http(s)://host:port``.
        options: our parameters other than the name (``ef_search``), as ints.
        user, password, database: Milvus credentials and database from the URI ("" when absent).
    """

    kind: str
    uri: str = field(repr=False)
    display: str
    path: Path | None = None
    name: str = DEFAULT_GALLERY_NAME
    connect: str = field(default="", repr=False)
    options: Mapping[str, int] = field(default_factory=dict)
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    database: str = ""

    def __str__(self) -> str:
        return self.display

    @classmethod
    def parse(cls, value: str | os.PathLike | GalleryTarget) -> GalleryTarget:
        """A path or a URI as a target.

        Raises:
            GalleryError: an unknown scheme, or a URI that is malformed (the message shows it masked).
        """
        if isinstance(value, GalleryTarget):
            return value
        if isinstance(value, os.PathLike) or "://" not in str(value):
            path = Path(value)
            if not str(path).strip():
                raise GalleryError("a gallery needs a folder or a URI, got an empty string")
            return cls("sqlite", str(path), str(path), path=path)
        text = str(value)
        scheme, rest = text.split("://", 1)
        kind = SCHEMES.get(scheme.lower())
        display = mask_uri(text)
        if kind is None:
            known = ", ".join(sorted(SCHEMES))
            raise GalleryError(f"gallery {display}: unknown scheme {scheme!r} (a folder, or one of {known}://)")
        if kind == "sqlite":
            if "?" in rest or not rest.strip():
                raise GalleryError(f"gallery {display}: sqlite:// takes a folder and nothing else (sqlite:///srv/g)")
            return cls("sqlite", text, display, path=Path(rest))
        base, _, query = rest.partition("?")
        params = parse_qsl(query, keep_blank_values=True)
        ours = {k: v for k, v in params if k in _OUR_PARAMS}
        name = ours.get("gallery", DEFAULT_GALLERY_NAME)
        if not _NAME.fullmatch(name):
            raise GalleryError(
                f"gallery {display}: gallery={name!r} must be 1 to 40 lower-case letters, digits or _, "
                "starting with a letter"
            )
        options: dict[str, int] = {}
        if "ef_search" in ours:
            try:
                options["ef_search"] = int(ours["ef_search"])
            except ValueError:
                options["ef_search"] = 0
            if not 1 <= options["ef_search"] <= 32768:
                raise GalleryError(f"gallery {display}: ef_search must be an integer in 1..32768")
        rest_query = urlencode([(k, v) for k, v in params if k not in _OUR_PARAMS], quote_via=quote)
        if kind == "milvus-lite":
            if rest_query:
                raise GalleryError(f"gallery {display}: milvus-lite:// takes gallery= and ef_search= only")
            if not base.endswith(".db") or base.endswith("/.db"):
                raise GalleryError(f"gallery {display}: a Milvus Lite file is named *.db (milvus-lite:///srv/g.db)")
            return cls(kind, text, display, path=Path(base), name=name, options=options)
        if kind == "postgresql":
            refused = sorted({k for k, _ in params if k not in _OUR_PARAMS and k not in PG_URI_PARAMS})
            if refused:
                raise GalleryError(
                    f"gallery {display}: the URI parameter {refused[0]}= is not accepted (a postgresql:// URI takes "
                    "connection parameters such as sslmode=, connect_timeout=, and gallery=, ef_search=)"
                )
            connect = f"postgresql://{base}" + (f"?{rest_query}" if rest_query else "")
            return cls(kind, text, display, name=name, connect=connect, options=options)
        # Milvus: [user:password@]host[:port][/database]
        netloc, _, db = base.partition("/")
        user = password = ""
        if "@" in netloc:
            cred, netloc = netloc.rsplit("@", 1)
            user, _, password = cred.partition(":")
        host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
        if not host or (port and not port.isdigit()) or rest_query or "/" in db:
            raise GalleryError(f"gallery {display}: expected milvus://[user:password@]host:port[/database]")
        scheme_http = "https" if scheme.lower() == "milvus+https" else "http"
        connect = f"{scheme_http}://{host}:{port or 19530}"
        return cls(kind, text, display, name=name, connect=connect, options=options, user=user, password=password,
                   database=db)  # fmt: skip


def mask_uri(value: str | os.PathLike) -> str:
    """``value`` with the password of a URI (and ``password``/``token`` parameters) replaced by ``***``."""
    text = str(value)
    if "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    base, sep, query = rest.partition("?")
    netloc, slash, path = base.partition("/")
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        netloc = f"{cred}@{host}"
    if query:
        parts = []
        for item in query.split("&"):
            key = item.split("=", 1)[0]
            parts.append(f"{key}=***" if key.lower() in _SECRET_PARAMS else item)
        query = "&".join(parts)
    return f"{scheme}://{netloc}{slash}{path}{sep}{query}"
