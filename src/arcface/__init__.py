"""arcface: deep face recognition around ArcFace (Deng et al., https://arxiv.org/abs/1801.07698).

From photo to identity::

    import arcface

    rec = arcface.FaceRecognizer()             # bundled MobileFaceNet + MTCNN, calibrated threshold
    rec.verify("a.jpg", "b.jpg")               # Verification(similarity=..., same=..., threshold=...)
    rec.analyze("group.jpg")                   # [Face(box, score, landmarks, crop, embedding), ...]
    arcface.load_model("backbone.pth", arch="r50").embed(crops)
    arcface.cluster(embeddings, threshold=0.6).labels   # unnamed faces grouped into people

The public names are imported on first use (PEP 562), so ``import arcface.data`` (say, in a DataLoader worker)
does not load OpenCV, the detectors or the inference code.
"""

from __future__ import annotations

import importlib

from arcface.registry import lazy_exports

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Embedder": "arcface.inference.embedder",
    "Face": "arcface.align.face",
    "FaceRecognizer": "arcface.inference.recognizer",
    "ImageError": "arcface.io.images",
    "NoFaceError": "arcface.inference.recognizer",
    "Registry": "arcface.registry",
    "Verification": "arcface.inference.recognizer",
    "cluster": "arcface.cluster",
    "create_head": "arcface.heads",
    "create_model": "arcface.models",
    "load_image": "arcface.io.images",
    "load_model": "arcface.inference.loader",
}

__all__ = sorted([*_EXPORTS, "__version__"])


_lazy, __dir__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str):
    """A public name, imported on first use; ``cluster`` is the callable package ``arcface.cluster`` itself, so that
    ``arcface.cluster(embeddings, ...)`` and ``arcface.cluster.extend`` both work whichever is used first."""
    if name == "cluster":
        return importlib.import_module("arcface.cluster")
    return _lazy(name)
