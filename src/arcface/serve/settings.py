"""Settings of the REST service: where the gallery is, which model, who may call it, what it accepts.

Sources, merged by :meth:`Settings.load` (later wins, except API keys, which are pooled):

1. the defaults below;
2. a settings file (JSON, or YAML with a ``.yaml``/``.yml`` suffix) whose keys are the field names;
   an unknown key is an error that names it;
3. the environment: ``ARCFACE_API_KEY`` (one key, or several separated by commas);
4. explicit arguments (the CLI's options).

The service refuses to start without an API key unless ``allow_no_auth=True`` is set explicitly, and refuses a key
that is not printable ASCII (an HTTP header cannot carry it, so it could never match).

The defaults, and why:

- ``max_pixels`` 16 MP: a phone camera's default output fits. Detection works on a downscaled image, so more pixels
  only cost memory and time in decoding, and every model worker may hold one decoded image.
- ``max_json_bytes`` 64 KiB: a JSON request is a name and at most 16 KiB of metadata.
- ``header_timeout`` 10 s, ``body_timeout`` 60 s: a client on a slow link still sends a full-size photo in time; one
  that trickles bytes to hold a connection is cut off.
- ``max_connections`` 256 (uvicorn's ``limit_concurrency``), ``max_connections_per_client`` 16.
- ``rate_limit`` 20 requests/s per key, bursts of 40: above what the model serves, so only a runaway client meets
  it; a key shared by a busy application or a load test can meet it, so raise it there (or set 0, off).
- ``busy_timeout`` 1.5 s: a write waits that long for another process's lock, then 503 with ``Retry-After``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcface.gallery.base import GalleryTarget, mask_uri
from arcface.gallery.rules import GalleryError
from arcface.runtime import threads as thread_policy
from arcface.runtime.untrusted import check_json_depth, load_json, one_line, shown, special_file

__all__ = ["API_KEY_ENV", "Settings", "SettingsError"]

API_KEY_ENV = "ARCFACE_API_KEY"
"""Environment variable holding the API key(s), comma-separated."""


class SettingsError(ValueError):
    """Settings the service cannot start with; the message says which field and why."""


@dataclass(frozen=True)
class Settings:
    """Configuration of :func:`arcface.serve.create_app`.

    Attributes:
        gallery: the gallery: a folder, or a URI (``postgresql://``, ``milvus://``, ``milvus-lite://``,
            ``sqlite://``; see :mod:`arcface.gallery.target`), created on first use and bound to the model's contract.
            Not in ``repr()`` (a URI may carry a password); :attr:`gallery_display` is the masked form.
        model: model name or file, as :class:`~arcface.inference.recognizer.FaceRecognizer` takes it.
        detector: face detector name ("mtcnn", "yunet", "scrfd").
        index: gallery search index ("exact", "hnsw", "ivf").
        api_keys: accepted bearer keys; every ``/v1`` route needs one of them.
        allow_no_auth: serve ``/v1`` without keys (must be set explicitly; never the default).
        max_upload_bytes: largest accepted image upload, in bytes (413 above).
        max_pixels: largest accepted ``width * height`` of an upload, read from its header (413 above).
        workers: threads of the model-inference pool (the event loop never runs the model); None: the thread
            policy's choice (one per usable CPU, each running its request on one torch thread; see
            :mod:`arcface.runtime.threads`, workload "service").
        threads: CPUs the service may use (inference workers x torch threads); None: ``ARCFACE_THREADS``, else the
            usable CPUs (affinity mask and cgroup CPU quota).
        max_k: largest ``k`` of ``/v1/search``.
        max_json_bytes: largest body of a request that is not an upload (413 above).
        header_timeout: seconds to receive a request's headers, from the connection's start or the previous answer.
        body_timeout: seconds to receive a request's body, from the end of its headers (408 after).
        keep_alive_timeout: seconds an idle connection is kept between requests.
        max_connections: most connections and requests in progress at once (503 above; 0: no limit).
        max_connections_per_client: most open connections per client address (429 above; 0: no limit; behind a
            reverse proxy every client has the proxy's address).
        rate_limit: requests per second per API key (per client address without keys), on average (0: no limit).
        rate_burst: requests a key may send at once before ``rate_limit`` applies (429 with Retry-After above).
        docs: serve the API docs (``/docs``, Swagger UI from the service itself) and ``/openapi.json``.
        docs_assets: a folder holding ``swagger-ui-bundle.js`` and ``swagger-ui.css``; default the copy of the
            ``swagger-ui-bundle-v2`` package (Swagger UI 5, the ``all`` extra). Without either, ``/docs`` is not
            served.
        store_filenames: keep each upload's client file name with its face (``source``); off by default, since a
            file name often holds the person's name and the face is then not the only trace of them.
        busy_timeout: seconds a gallery write waits for another process's lock (then 503 with Retry-After).
    """

    gallery: Path | str = field(repr=False)
    model: str = "default"
    detector: str = "mtcnn"
    index: str = "exact"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_no_auth: bool = False
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 16_000_000
    workers: int | None = None
    threads: int | str | None = None
    max_k: int = 100
    max_json_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: int = 5
    max_connections: int = 256
    max_connections_per_client: int = 16
    rate_limit: float = 20.0
    rate_burst: int = 40
    docs: bool = True
    docs_assets: Path | None = None
    store_filenames: bool = False
    busy_timeout: float = 1.5

    def __post_init__(self) -> None:
        if not isinstance(self.gallery, (str, os.PathLike)):
            raise SettingsError(f"settings: gallery must be a folder or a URI, got {type(self.gallery).__name__}")
        try:
            target = GalleryTarget.parse(self.gallery)  # a URI stays text (Path would fold its //)
        except GalleryError as e:
            raise SettingsError(f"settings: {e}") from None
        object.__setattr__(self, "gallery", target.path if target.kind == "sqlite" else str(self.gallery))
        if self.docs_assets is not None:
            object.__setattr__(self, "docs_assets", Path(self.docs_assets))
        keys = _split_keys(self.api_keys)
        for key in keys:
            if not all(0x21 <= ord(c) <= 0x7E for c in key):
                raise SettingsError(
                    "settings: an API key must be printable ASCII without spaces (an HTTP header cannot carry "
                    "anything else, so such a key could never match); generate one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        object.__setattr__(self, "api_keys", keys)
        for name in ("max_upload_bytes", "max_pixels", "workers", "max_k", "max_json_bytes", "keep_alive_timeout",
                     "rate_burst"):  # fmt: skip
            value = getattr(self, name)
            if name == "workers" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"settings: {name} must be a positive integer, got {value!r}")
        for name in ("max_connections", "max_connections_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SettingsError(f"settings: {name} must be a non-negative integer (0: no limit), got {value!r}")
        for name in ("header_timeout", "body_timeout", "busy_timeout", "rate_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise SettingsError(f"settings: {name} must be a finite non-negative number, got {value!r}")
            if value == 0 and name != "rate_limit":
                raise SettingsError(f"settings: {name} must be positive, got 0")
            object.__setattr__(self, name, float(value))
        for name in ("allow_no_auth", "docs", "store_filenames"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"settings: {name} must be true or false, got {getattr(self, name)!r}")
        try:
            thread_policy.parse_threads(self.threads, "settings: threads")
        except thread_policy.ThreadsError as e:
            raise SettingsError(str(e)) from None
        if self.index not in ("exact", "hnsw", "ivf"):
            raise SettingsError(f"settings: index must be exact, hnsw or ivf, got {self.index!r}")

    @property
    def gallery_display(self) -> str:
        """The gallery's folder or URI with any password masked, for messages and ``/health``."""
        return mask_uri(self.gallery)

    def check_auth(self) -> None:
        """Refuse to serve without API keys unless ``allow_no_auth`` was set explicitly.

        Raises:
            SettingsError: no key and ``allow_no_auth`` is false.
        """
        if not self.api_keys and not self.allow_no_auth:
            raise SettingsError(
                f"no API key: set {API_KEY_ENV} (comma-separated for several) or api_keys in a settings file; "
                "to serve without authentication set allow_no_auth=True (allow_no_auth: true) explicitly"
            )

    @classmethod
    def load(
        cls,
        settings_file: str | os.PathLike | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from a file, the environment and explicit values (see the module docstring).

        Args:
            settings_file: a JSON or YAML file of field names and values, or None.
            env: the environment (default ``os.environ``); ``ARCFACE_API_KEY`` adds keys.
            **overrides: field values; ``None`` values are ignored (an option not given).

        Raises:
            SettingsError: an unreadable file, an unknown key, a bad value, or no gallery.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        if settings_file is not None:
            values.update(_read_file(Path(settings_file), names))
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise SettingsError(f"unknown settings {unknown}; known: {sorted(names)}")
        keys = list(_split_keys(values.pop("api_keys", ())))
        keys += _split_keys(overrides.pop("api_keys", None) or ())
        env_keys = (os.environ if env is None else env).get(API_KEY_ENV, "")
        keys += _split_keys(env_keys)
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["api_keys"] = tuple(dict.fromkeys(keys))
        if "gallery" not in values:
            raise SettingsError("settings: no gallery given (--gallery DIR|URI or gallery in the settings file)")
        try:
            return cls(**values)
        except TypeError as e:
            raise SettingsError(f"settings: {e}") from None


def _split_keys(keys: Any) -> tuple[str, ...]:
    """Keys from a string (comma-separated) or a list of strings; blanks dropped."""
    if isinstance(keys, str):
        keys = keys.split(",")
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
        raise SettingsError("settings: api_keys must be a string (comma-separated) or a list of strings")
    return tuple(k.strip() for k in keys if k.strip())


_MAX_SETTINGS_BYTES = 1 << 20  # a settings file is a few dozen keys


def _read_file(path: Path, names: set[str]) -> dict[str, Any]:
    """The settings in a JSON or YAML file, read as untrusted input: bounded in size and nesting, one line naming
    the file for anything that is not one object of known settings."""
    if kind := special_file(path):  # a FIFO would make the read wait for a writer
        raise SettingsError(f"{path}: the settings file is a {kind}, not a regular file")
    try:
        if path.stat().st_size > _MAX_SETTINGS_BYTES:
            raise SettingsError(f"{path}: a settings file holds at most {_MAX_SETTINGS_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"{path}: cannot read the settings file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path}: the settings file is not UTF-8 text ({one_line(e)})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            check_json_depth(text)  # flow collections nest with JSON's brackets; PyYAML recurses into each level
            data = yaml.safe_load(text)
        else:
            data = load_json(text)
    except Exception as e:  # yaml.YAMLError / ValueError / RecursionError: one line naming the file
        raise SettingsError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                            f"({one_line(e)})") from None  # fmt: skip
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the settings file must hold one object of settings")
    unknown = sorted(repr(k) if not isinstance(k, str) else k for k in set(data) - names)
    if unknown:
        raise SettingsError(f"{path}: unknown settings {shown(unknown, 200)}; known: {sorted(names)}")
    return dict(data)
