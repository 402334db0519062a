"""Inference: the embedding contract, model files, embedding backends, the model zoo and the recognizer.

Names are imported lazily (PEP 562), so that ``arcface.io.images`` stays light (no OpenCV, no
onnxruntime) for code that only loads images.
"""

from __future__ import annotations

from arcface.registry import lazy_exports

_EXPORTS = {
    "ContractError": ".contract",
    "ModelContract": ".contract",
    "read_contract": ".contract",
    "read_model": ".contract",
    "save_model": ".contract",
    "weights_sha256": ".contract",
    "Embedder": ".embedder",
    "ModelFile": ".files",
    "read_model_file": ".files",
    "load_model": ".loader",
    "FaceRecognizer": ".recognizer",
    "NoFaceError": ".recognizer",
    "Verification": ".recognizer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
