"""Import TreB1eN's InsightFace_Pytorch state dicts (``model_ir_se50.pth``, ``model_mobilefacenet.pth``, ...).

TreB1eN's ``Backbone(num_layers, drop_ratio, mode)`` and ``MobileFaceNet(embedding_size)`` map onto our
``IResNet`` / ``MobileFaceNet`` classes with options (registered as ``ir50`` ... ``ir_se152`` and
``mbf_treb1en``); face.evoLVe's IR nets and MobileFaceNet share these key layouts, and its importer reuses
the renaming here. The file is read with ``torch.load(weights_only=True)``: tensors only, nothing else is
unpickled. Keys are renamed by rule, and every key must be used and every weight of our module filled
(shapes checked), so a state dict of another architecture is refused with the first keys that differ.

Key map of the IR nets (block ``K`` of ``body`` is block ``j`` of stage ``s``, counted from the layers):

    input_layer.{0,1,2}                 conv1, bn1, prelu
    body.K.res_layer.{0,1,2,3,4}        layerS.j.{bn1, conv1, prelu, conv2, bn3}  (no bn2: mid_bn=False)
    body.K.res_layer.5.{fc1,fc2}        layerS.j.se.{fc1,fc2}                    (IR-SE)
    body.K.shortcut_layer.{0,1}         layerS.j.downsample.{0,1}                (a max-pool has no weights)
    output_layer.{0,3,4}                bn2, fc, features                         (BN2d, Linear, BN1d)

and of MobileFaceNet (``Conv_block``/``Linear_block`` hold ``conv``, ``bn``, ``prelu``):

    conv1, conv2_dw                     layers.0, layers.1
    conv_23, conv_34, conv_45           layers.2, layers.4, layers.6   (``conv``, ``conv_dw``, ``project``)
    conv_3, conv_4, conv_5 .model.i     layers.3, layers.5, layers.7 .layers.i
    conv_6_sep                          conv_sep
    conv_6_dw, linear, bn               features.layers.0, features.layers.2, features.layers.3

Contract of the result: RGB, ``(x / 255 - 0.5) / 0.5`` = ``(x - 127.5) / 127.5``, 112x112, 512-D.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from arcface.inference.contract import ModelContract, save_model
from arcface.inference.converters._common import (
    ConversionError,
    build_and_load,
    read_torch_state_dict,
    state_dict_for,
)
from arcface.models import iresnet
from arcface.runtime.untrusted import reading

__all__ = ["TREB1EN_ARCHS", "convert_state_dict", "convert_treb1en", "rename_ir", "rename_mobilefacenet"]

#: ``--arch`` names (TreB1eN's net_mode + depth) -> our registered architecture.
TREB1EN_ARCHS: dict[str, str] = {
    "ir50": "ir50",
    "ir_se50": "ir_se50",
    "ir100": "ir100",
    "ir_se100": "ir_se100",
    "ir152": "ir152",
    "ir_se152": "ir_se152",
    "mobilefacenet": "mbf_treb1en",
}

_IR_BLOCK = {"0": "bn1", "1": "conv1", "2": "prelu", "3": "conv2", "4": "bn3", "5.fc1": "se.fc1", "5.fc2": "se.fc2"}
_IR_TOP = {"input_layer.0": "conv1", "input_layer.1": "bn1", "input_layer.2": "prelu",
           "output_layer.0": "bn2", "output_layer.3": "fc", "output_layer.4": "features"}  # fmt: skip
_BLOCK_KEY = re.compile(r"body\.(\d+)\.(res_layer|shortcut_layer)\.(\d+(?:\.fc[12])?)\.(\w+)$")


def rename_ir(sd: Mapping[str, torch.Tensor], layers: Sequence[int], what: str) -> dict[str, torch.Tensor]:
    """TreB1eN / face.evoLVe ``Backbone`` keys -> our ``IResNet`` keys (see the module table).

    Raises:
        ConversionError: a key with no place in an IR net of these ``layers`` (named, with ``what``).
    """
    where = [(s, j) for s, n in enumerate(layers, start=1) for j in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in _IR_TOP:
            out[f"{_IR_TOP[prefix]}.{leaf}"] = value
            continue
        m = _BLOCK_KEY.match(key)
        if m is None or int(m[1]) >= len(where):
            raise ConversionError(f"{what}: unexpected key {key!r}")
        s, j = where[int(m[1])]
        if m[2] == "shortcut_layer" and m[3] in ("0", "1"):
            target = f"downsample.{m[3]}"
        elif m[2] == "res_layer" and m[3] in _IR_BLOCK:
            target = _IR_BLOCK[m[3]]
        else:
            raise ConversionError(f"{what}: unexpected key {key!r}")
        out[f"layer{s}.{j}.{target}.{m[4]}"] = value
    return out


_MBF_TOP = {"conv1": "layers.0", "conv2_dw": "layers.1", "conv_23": "layers.2", "conv_34": "layers.4",
            "conv_45": "layers.6", "conv_6_sep": "conv_sep", "conv_6_dw": "features.layers.0"}  # fmt: skip
_MBF_STACKS = {"conv_3": "layers.3", "conv_4": "layers.5", "conv_5": "layers.7"}
_MBF_BLOCK = {"conv": "layers.0", "bn": "layers.1", "prelu": "layers.2"}
_MBF_DW = {"conv": "layers.0", "conv_dw": "layers.1", "project": "layers.2"}


def rename_mobilefacenet(sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """TreB1eN / face.evoLVe ``MobileFaceNet`` keys -> our ``MobileFaceNet`` keys (see the module table).

    Raises:
        ConversionError: a key with no place in that layout (named, with ``what``).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        parts = key.split(".")
        target = None
        if parts[0] == "linear" and len(parts) == 2:
            target = f"features.layers.2.{parts[1]}"
        elif parts[0] == "bn" and len(parts) == 2:
            target = f"features.layers.3.{parts[1]}"
        elif parts[0] in ("conv1", "conv2_dw", "conv_6_sep", "conv_6_dw") and len(parts) == 3:
            block = _MBF_BLOCK.get(parts[1])
            target = block and f"{_MBF_TOP[parts[0]]}.{block}.{parts[2]}"
        elif parts[0] in ("conv_23", "conv_34", "conv_45") and len(parts) == 4:
            dw, block = _MBF_DW.get(parts[1]), _MBF_BLOCK.get(parts[2])
            target = dw and block and f"{_MBF_TOP[parts[0]]}.{dw}.{block}.{parts[3]}"
        elif parts[0] in _MBF_STACKS and len(parts) == 6 and parts[1] == "model" and parts[2].isdigit():
            dw, block = _MBF_DW.get(parts[3]), _MBF_BLOCK.get(parts[4])
            target = dw and block and f"{_MBF_STACKS[parts[0]]}.layers.{parts[2]}.{dw}.{block}.{parts[5]}"
        if target is None:
            raise ConversionError(f"{what}: unexpected key {key!r}")
        out[target] = value
    return out


def convert_state_dict(
    path: Path,
    arch: str,
    rename: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
    embedding_key: str,
    system: str,
    out: str | Path | None = None,
) -> tuple[nn.Module, ModelContract]:
    """Read ``path`` weights-only, rename its keys, load them strictly into ``arch``; the contract is RGB 127.5/127.5.
    With ``out``, the model is saved there (``.safetensors`` with its contract) and the saved contract returned.

    Raises:
        FileNotFoundError / ConversionError: as ``read_torch_state_dict``, or keys that do not fit ``arch``.
    """
    with reading(path, f"not a {system} {arch} state dict", ConversionError):
        sd = rename(read_torch_state_dict(path))
        if embedding_key not in sd:
            raise ConversionError(f"{path}: not a {system} {arch} state dict: no {embedding_key} (the embedding layer)")
        embedding_size = int(sd[embedding_key].shape[0])
        module = build_and_load(arch, embedding_size, {}, lambda m: state_dict_for(m, sd, {}), f"{path}")
    contract = ModelContract(
        architecture=arch,
        embedding_size=embedding_size,
        input_size=(112, 112),
        color="RGB",
        mean=127.5,
        std=127.5,
        source=f"{path.name} ({system}; converted by arcface)",
        license="the source model's terms",
    )
    if out is not None:
        contract = save_model(module, contract, out)
    return module, contract


def ir_or_mbf_renamer(
    ours: str, what: str
) -> tuple[Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]], str]:
    """The key renaming of an IR net's or MobileFaceNet's state dict into our ``ours`` variant, and the key of its
    embedding layer (TreB1eN and face.evoLVe share these layouts). ``what`` names the file in errors."""
    if ours.startswith("mbf"):
        return (lambda sd: rename_mobilefacenet(sd, what)), "features.layers.2.weight"
    layers = iresnet.VARIANTS[ours].args["layers"]
    return (lambda sd: rename_ir(sd, layers, what)), "fc.weight"


def convert_treb1en(path: str | Path, arch: str, out: str | Path | None = None) -> tuple[nn.Module, ModelContract]:
    """Convert a TreB1eN InsightFace_Pytorch state dict into our backbone.

    Args:
        path: the ``.pth`` file (``Backbone`` or ``MobileFaceNet`` state dict).
        arch: a key of ``TREB1EN_ARCHS`` ("ir_se50", "ir50", "ir100", "ir152", "mobilefacenet", ...).
        out: where to save the ``.safetensors`` model with its contract; None converts only.

    Returns:
        (module in eval mode, contract).

    Raises:
        FileNotFoundError: no such file.
        ConversionError: an unknown ``arch``, a file that is not a weights-only state dict, or one of another
            architecture (the first differing keys named).
    """
    if arch not in TREB1EN_ARCHS:
        raise ConversionError(f"unknown TreB1eN arch {arch!r}; known: {', '.join(TREB1EN_ARCHS)}")
    path, ours = Path(path), TREB1EN_ARCHS[arch]
    rename, key = ir_or_mbf_renamer(ours, f"{path}: not a TreB1eN {arch} state dict")
    return convert_state_dict(path, ours, rename, key, "TreB1eN InsightFace_Pytorch", out)
