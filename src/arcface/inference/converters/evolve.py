"""Import face.evoLVe state dicts (``backbone_ir50_ms1m_epoch120.pth``, ...).

face.evoLVe's IR / IR-SE nets (``model_irse.py``) and MobileFaceNet (``MobileFaceNets.py``, 112x112: a
7x7 GDC) have TreB1eN's key layouts, so they go through :mod:`.treb1en`'s renaming onto ``ir50`` ...
``ir_se152`` and ``mbf_treb1en`` (evoLVe's ``IR_101`` is the 100-layer net, our ``ir100``). Its
``ResNet_50/101/152`` (``model_resnet.py``) map onto our ``resnet50/101/152``: the trunk keys are the same
(torchvision's names); the head's ``bn_o1``, ``fc``, ``bn_o2`` become ``bn2``, ``fc``, ``features``.
Read with ``torch.load(weights_only=True)``.

Contract of the result: RGB, mean 0.5 / std 0.5 on [0, 1] = ``(x - 127.5) / 127.5``, 112x112, 512-D.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from arcface.inference.contract import ModelContract
from arcface.inference.converters._common import ConversionError
from arcface.inference.converters.treb1en import convert_state_dict, ir_or_mbf_renamer
from arcface.models import resnet

__all__ = ["EVOLVE_ARCHS", "convert_evolve", "rename_resnet"]

#: face.evoLVe's backbone names -> our registered architecture.
EVOLVE_ARCHS: dict[str, str] = {
    "IR_50": "ir50",
    "IR_101": "ir100",
    "IR_152": "ir152",
    "IR_SE_50": "ir_se50",
    "IR_SE_101": "ir_se100",
    "IR_SE_152": "ir_se152",
    "MobileFaceNet": "mbf_treb1en",
    "ResNet_50": "resnet50",
    "ResNet_101": "resnet101",
    "ResNet_152": "resnet152",
}

_RESNET_KEY = re.compile(
    r"(conv1\.weight|bn1\.\w+|layer[1-4]\.(\d+)\.(conv[1-3]\.weight|bn[1-3]\.\w+|downsample\.[01]\.\w+))$"
)
_RESNET_HEAD = {"bn_o1": "bn2", "fc": "fc", "bn_o2": "features"}


def rename_resnet(sd: Mapping[str, torch.Tensor], layers: tuple[int, ...], what: str) -> dict[str, torch.Tensor]:
    """face.evoLVe ``ResNet`` keys -> our ``ResNet`` keys (trunk unchanged, head renamed).

    Raises:
        ConversionError: a key with no place in a ResNet of these ``layers`` (named, with ``what``).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        head, _, leaf = key.partition(".")
        if head in _RESNET_HEAD and "." not in leaf:
            out[f"{_RESNET_HEAD[head]}.{leaf}"] = value
            continue
        m = _RESNET_KEY.match(key)
        if m is None or (m[2] is not None and int(m[2]) >= layers[int(key[5]) - 1]):
            raise ConversionError(f"{what}: unexpected key {key!r}")
        out[key] = value
    return out


def convert_evolve(path: str | Path, arch: str, out: str | Path | None = None) -> tuple[nn.Module, ModelContract]:
    """Convert a face.evoLVe backbone state dict into our backbone.

    Args:
        path: the ``.pth`` file (the backbone's state dict, not the head's).
        arch: a key of ``EVOLVE_ARCHS`` ("IR_50", "IR_SE_50", "IR_101", "IR_152", "IR_SE_152", "MobileFaceNet",
            "ResNet_50", ...).
        out: where to save the ``.safetensors`` model with its contract; None converts only.

    Returns:
        (module in eval mode, contract).

    Raises:
        FileNotFoundError: no such file.
        ConversionError: an unknown ``arch``, a file that is not a weights-only state dict, or one of another
            architecture (the first differing keys named).
    """
    if arch not in EVOLVE_ARCHS:
        raise ConversionError(f"unknown face.evoLVe arch {arch!r}; known: {', '.join(EVOLVE_ARCHS)}")
    path, ours = Path(path), EVOLVE_ARCHS[arch]
    what = f"{path}: not a face.evoLVe {arch} state dict"
    if ours.startswith("resnet"):
        res_layers = tuple(resnet.VARIANTS[ours].args["layers"])
        rename, key = (lambda sd: rename_resnet(sd, res_layers, what)), "fc.weight"
    else:
        rename, key = ir_or_mbf_renamer(ours, what)
    return convert_state_dict(path, ours, rename, key, "face.evoLVe", out)
