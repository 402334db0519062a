"""Margin-softmax heads. ``create_head(kind, embedding_size, num_classes, **params)`` builds one."""

from __future__ import annotations

from typing import Any

from torch import nn

from arcface.registry import Registry

HEADS: Registry = Registry("head")


def create_head(kind: str, embedding_size: int, num_classes: int, **params: Any) -> nn.Module:
    """Build the margin head registered as ``kind`` over a (num_classes, embedding_size) centre matrix."""
    return HEADS.build(kind, embedding_size=embedding_size, num_classes=num_classes, **params)
