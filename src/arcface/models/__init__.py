"""Face backbones. ``create_model(name, num_features=512, **options)`` builds one from the registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from arcface.registry import Registry

MODELS: Registry = Registry("model")


def create_model(name: str, num_features: int = 512, **options: Any) -> nn.Module:
    """Build the backbone registered as ``name``; it maps (B, 3, H, W) images to (B, num_features)."""
    return MODELS.build(name, num_features=num_features, **options)
