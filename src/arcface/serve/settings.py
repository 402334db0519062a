"""Settings of the REST service: where the gallery is, which model, who may call it, what it accepts.

Sources, merged by :meth:`Settings.load` (later wins, except API keys, which are pooled):

1. the defaults below;
2. a settings file (JSON, or YAML with a ``.yaml``/``.yml`` suffix) whose keys are the field names;
   an unknown key is an error that names it;
3. the environment: ``ARCFACE_API_KEY`` (one key, or several separated by commas);
4. explicit arguments (the CLI's options).

The service refuses to start without an API key unless ``allow_no_auth=True`` is set explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcface.runtime import threads as thread_policy

__all__ = ["API_KEY_ENV", "Settings", "SettingsError"]

API_KEY_ENV = "ARCFACE_API_KEY"
"""Environment variable holding the API key(s), comma-separated."""


class SettingsError(ValueError):
    """Settings the service cannot start with; the message says which field and why."""


@dataclass(frozen=True)
class Settings:
    """Configuration of :func:`arcface.serve.create_app`.

    Attributes:
        gallery: the gallery folder (created on first use, bound to the model's contract).
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
    """

    gallery: Path
    model: str = "default"
    detector: str = "mtcnn"
    index: str = "exact"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_no_auth: bool = False
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    workers: int | None = None
    threads: int | str | None = None
    max_k: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "gallery", Path(self.gallery))
        keys = _split_keys(self.api_keys)
        object.__setattr__(self, "api_keys", keys)
        for name in ("max_upload_bytes", "max_pixels", "workers", "max_k"):
            value = getattr(self, name)
            if name == "workers" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"settings: {name} must be a positive integer, got {value!r}")
        try:
            thread_policy.parse_threads(self.threads, "settings: threads")
        except thread_policy.ThreadsError as e:
            raise SettingsError(str(e)) from None
        if not isinstance(self.allow_no_auth, bool):
            raise SettingsError(f"settings: allow_no_auth must be true or false, got {self.allow_no_auth!r}")
        if self.index not in ("exact", "hnsw", "ivf"):
            raise SettingsError(f"settings: index must be exact, hnsw or ivf, got {self.index!r}")

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
            raise SettingsError("settings: no gallery folder given (--gallery DIR or gallery in the settings file)")
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


def _read_file(path: Path, names: set[str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"{path}: cannot read the settings file ({e.strerror or e})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: one line naming the file
        raise SettingsError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                            f"({' '.join(str(e).split())})") from None  # fmt: skip
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the settings file must hold one object of settings")
    unknown = sorted(set(data) - names)
    if unknown:
        raise SettingsError(f"{path}: unknown settings {unknown}; known: {sorted(names)}")
    return dict(data)
