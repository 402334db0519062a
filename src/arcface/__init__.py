"""arcface: deep face recognition around ArcFace (Deng et al., https://arxiv.org/abs/1801.07698)."""

from arcface.heads import create_head
from arcface.models import create_model
from arcface.registry import Registry

__version__ = "0.1.0"

__all__ = ["Registry", "__version__", "create_head", "create_model"]
