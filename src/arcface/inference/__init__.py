"""Inference: the embedding contract, model files, embedding backends, the model zoo and the recognizer.

Names are imported lazily (PEP 562), so that ``arcface.io.images`` stays light (no OpenCV, no
onnxruntime) for code that only loads images.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ContractError": "contract",
    "ModelContract": "contract",
    "calibrate_threshold": "contract",
    "load_model": "contract",
    "read_contract": "contract",
    "save_model": "contract",
    "weights_sha256": "contract",
    "Backend": "backends",
    "OnnxBackend": "backends",
    "TorchBackend": "backends",
    "load_backend": "zoo",
    "Face": "recognizer",
    "FaceRecognizer": "recognizer",
    "NoFaceError": "recognizer",
    "Verification": "recognizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
