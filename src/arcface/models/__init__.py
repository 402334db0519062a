"""Face backbones. ``create_model(name, num_features=..., **options)`` builds one from the registry.

Every registered name is an argument set (a ``Variant``) over one of three classes: ``IResNet``
(r18, r34, r50, r100, r200; TreB1eN / face.evoLVe ir50 ... ir_se152), ``MobileFaceNet`` (mbf, mbf_large,
mbf_tflite, mbf_mxnet, mbf_treb1en) or ``ResNet`` (face.evoLVe's resnet50/101/152); options passed to
``create_model`` override the variant's arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from arcface.models import iresnet, mobilefacenet, resnet
from arcface.models._blocks import Variant
from arcface.models.iresnet import IResNet
from arcface.models.mobilefacenet import MobileFaceNet
from arcface.models.resnet import ResNet
from arcface.registry import Registry

__all__ = ["MODELS", "IResNet", "MobileFaceNet", "ResNet", "create_model"]

MODELS: Registry = Registry("model")


def _factory(cls: type[nn.Module], name: str, variant: Variant) -> Callable[..., nn.Module]:
    def build(**options: Any) -> nn.Module:
        return cls(**{**variant.args, **options})

    build.__name__ = build.__qualname__ = name
    build.__doc__ = variant.doc
    return build


for _cls, _variants in (
    (IResNet, iresnet.VARIANTS),
    (MobileFaceNet, mobilefacenet.VARIANTS),
    (ResNet, resnet.VARIANTS),
):
    for _name, _variant in _variants.items():
        MODELS.register(_name, _factory(_cls, _name, _variant))


def create_model(name: str, num_features: int | None = None, **options: Any) -> nn.Module:
    """Build the backbone registered as ``name``; it maps (B, 3, H, W) images to (B, num_features).

    Args:
        name: a name in ``MODELS`` (e.g. "r50", "mbf").
        num_features: embedding size; None keeps the variant's own (512, or 192 for mbf_tflite).
        **options: constructor arguments of the model class (e.g. ``dropout``, ``se``,
            ``width_mult``, ``input_size``, ``grad_checkpoint`` for IResNet).

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    if num_features is not None:
        options["num_features"] = num_features
    return MODELS.build(name, **options)
