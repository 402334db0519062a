"""Named models: which file a model name means ("default", "mobilefacenet", "sface"), and where models that are not
shipped are searched.

========================  =====================================================================
``"default"``             the bundled MobileFaceNet (``arcface/weights/mobilefacenet_tflite.safetensors``),
``"mobilefacenet"``       192-D, RGB ``(x - 127.5) / 128``, with its calibrated threshold.
``"sface"``               OpenCV zoo's SFace ONNX (128-D), not shipped: searched in ``$ARCFACE_DATA/weights``,
                          ``$ARCFACE_SHARED/weights/recognition`` and ``../shared/weights/recognition``.
any path                  a model file (:mod:`arcface.inference.files` reads it).
========================  =====================================================================
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path

from arcface.inference.files import MODEL_FORMATS
from arcface.runtime.untrusted import one_line, shown, special_file

__all__ = ["BUNDLED_DEFAULT", "MODEL_NAMES", "SFACE_FILES", "find_sface", "resolve_model_path", "weight_dirs"]

#: The bundled default model, under ``arcface/weights/``.
BUNDLED_DEFAULT = "mobilefacenet_tflite.safetensors"

#: Named models (aliases included).
MODEL_NAMES = ("default", "mobilefacenet", "sface")

#: SFace file names searched for, best first: OpenCV zoo's float model, then the int8 block-quantised
#: copy with its dangling graph inputs removed (the unfixed int8bq file fails in onnxruntime).
SFACE_FILES = (
    "face_recognition_sface_2021dec.onnx",
    "face_recognition_sface_2021dec_int8bq.ortfix.onnx",
    "face_recognition_sface_2021dec_int8.onnx",
)
SFACE_URL = "https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface"


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A model name ("default", "mobilefacenet", "sface") or path -> the existing model file it means.

    Raises:
        FileNotFoundError: an unknown name or a missing file (the message lists the known names).
        TypeError: ``model`` is neither a string nor a path.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(model).__name__}")
    text = os.fspath(model)
    try:
        path = Path(text).expanduser()
        if path.is_file():
            return path
        kind = special_file(path)
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name too long, an unknown ~user
        raise FileNotFoundError(f"model file {shown(text)} cannot be opened ({one_line(e)})") from None
    if kind:  # a FIFO would make the reader wait for a writer
        raise FileNotFoundError(f"model file {shown(text, 1000)} is a {kind}, not a regular file")
    name = text.lower()
    if name in ("default", "mobilefacenet"):
        return _bundled(BUNDLED_DEFAULT)
    if name == "sface":
        return find_sface()
    if path.suffix.lower() in MODEL_FORMATS or os.sep in text:
        raise FileNotFoundError(f"model file {text} does not exist")
    raise FileNotFoundError(
        f"unknown model {shown(text)}: not a known name ({', '.join(MODEL_NAMES)}) nor an existing "
        f"{'/'.join(MODEL_FORMATS.names())} file"
    )


_BUNDLE_STACK = ExitStack()  # keeps extracted resource files alive for the process (zipped installs only)


def _bundled(name: str) -> Path:
    res = files("arcface").joinpath("weights", name)
    if not res.is_file():
        raise FileNotFoundError(f"bundled model arcface/weights/{name} is missing from this installation")
    return Path(_BUNDLE_STACK.enter_context(as_file(res)))


def weight_dirs() -> list[Path]:
    """Folders searched for models that are not shipped, in order.

    ``$ARCFACE_DATA/weights`` (and its ``recognition/``), ``$ARCFACE_SHARED/weights/recognition``, then the
    first ``shared/weights/recognition`` beside the current directory or the package's parents.
    """
    dirs: list[Path] = []
    if os.environ.get("ARCFACE_DATA"):
        root = Path(os.environ["ARCFACE_DATA"]) / "weights"
        dirs += [root, root / "recognition"]
    if os.environ.get("ARCFACE_SHARED"):
        dirs.append(Path(os.environ["ARCFACE_SHARED"]) / "weights" / "recognition")
    for parent in (Path.cwd(), *Path(__file__).resolve().parents):
        cand = parent.parent / "shared" / "weights" / "recognition"
        if cand.is_dir():
            dirs.append(cand)
            break
    return dirs


def find_sface() -> Path:
    """The SFace ONNX file (see ``SFACE_FILES``, ``weight_dirs``).

    Raises:
        FileNotFoundError: none found; the message lists where it looked and where to download it.
    """
    dirs = weight_dirs()
    for d in dirs:
        for name in SFACE_FILES:
            if (d / name).is_file():
                return d / name
    looked = ", ".join(str(d) for d in dirs) or "(no folder: set ARCFACE_DATA)"
    raise FileNotFoundError(
        f"model 'sface' is not shipped with arcface and was not found in {looked}; download "
        f"{SFACE_FILES[0]} from {SFACE_URL} into $ARCFACE_DATA/weights, or pass its path"
    )
