"""arcface: deep face recognition around ArcFace (Deng et al., https://arxiv.org/abs/1801.07698).

From photo to identity::

    import arcface

    rec = arcface.FaceRecognizer()             # bundled MobileFaceNet + MTCNN, calibrated threshold
    rec.verify("a.jpg", "b.jpg")               # Verification(similarity=..., same=..., threshold=...)
"""

from arcface.heads import create_head
from arcface.inference.embedder import Embedder
from arcface.inference.recognizer import Face, FaceRecognizer, NoFaceError, Verification
from arcface.io.images import ImageError, load_image
from arcface.models import create_model
from arcface.registry import Registry

__version__ = "0.1.0"

__all__ = [
    "Embedder",
    "Face",
    "FaceRecognizer",
    "ImageError",
    "NoFaceError",
    "Registry",
    "Verification",
    "__version__",
    "create_head",
    "create_model",
    "load_image",
]
