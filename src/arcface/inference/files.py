"""Model files: from a file on disk to its weights and its contract, one reader per file type.

=================  ===============================================================================================
suffix             what the reader gives
=================  ===============================================================================================
``.safetensors``   our model file: the module rebuilt from the contract in its metadata, weights verified by SHA-256
``.pth`` ``.pt``   an arcface_torch ``backbone.pth`` (or any state dict of our backbones): needs ``arch=``; the
                   contract is ours (RGB, ``(x - 127.5) / 127.5``, 112x112) with the embedding size of the weights
``.onnx``          an ONNX recognition model: its own contract when the file carries one (``arcface export``
                   writes it, with what its input is), else inferred from the graph with a preset: insightface-style
                   (RGB, ``(x - 127.5) / 127.5``) by default, ``preset="sface"`` (or "sface" in the file name) for
                   OpenCV's SFace; ``contract=`` for anything
=================  ===============================================================================================

SFace preprocessing, measured rather than assumed: OpenCV's ``FaceRecognizerSF.feature`` takes a BGR crop and calls
``blobFromImage(crop, 1, (112, 112), 0, swapRB=true)``, so the network itself sees **RGB** in 0..255 (mean 0, std
1). Our RGB crops fed that way match OpenCV's features to cosine 1.0000; fed as BGR they drop to about 0.95, and
``(x - 127.5) / 127.5`` breaks the model (cosine about 0 to OpenCV).

Contracts of foreign ONNX models: ``architecture="onnx"``, ``options={"preset": ...}`` and ``weights_sha256`` the
SHA-256 of the file bytes (there is no state dict to hash), so two ONNX files never share an id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arcface.inference.contract import (
    CONTRACT_KEY,
    MAX_EMBEDDING_SIZE,
    MAX_INPUT_SIDE,
    ContractError,
    ModelContract,
    differing_keys,
    read_model,
    weights_sha256,
)
from arcface.inference.export import INPUT_KEY
from arcface.inference.runners import onnx_input_layout, open_session
from arcface.models import MODELS, create_model
from arcface.models.weights import load_backbone_weights
from arcface.registry import Registry
from arcface.runtime.untrusted import reading, shown

__all__ = ["MODEL_FORMATS", "ONNX_PRESETS", "ModelFile", "file_sha256", "onnx_contract", "read_model_file"]

#: Contract fields of the ONNX presets (input_size and embedding size come from the file).
ONNX_PRESETS: dict[str, dict[str, Any]] = {
    "insightface": dict(color="RGB", mean=127.5, std=127.5),
    # OpenCV's FaceRecognizerSF swaps BGR -> RGB in blobFromImage: the network takes RGB 0..255.
    "sface": dict(
        color="RGB",
        mean=0.0,
        std=1.0,
        threshold=0.363,
        calibrated_on="OpenCV zoo's published SFace cosine threshold (0.363), not recalibrated here",
        license="Apache-2.0 (OpenCV zoo)",
    ),
}


@dataclass
class ModelFile:
    """A model read from a file: its contract and what runs it.

    Attributes:
        path: the file.
        contract: how it is fed and whose embeddings it is comparable with.
        module: the torch backbone (eval mode) for torch files, else None.
        session: the onnxruntime session for ONNX files, else None.
        raw_input: an ONNX graph that takes RGB pixels 0..255 and normalises them itself (see
            :mod:`arcface.inference.export`).
    """

    path: Path
    contract: ModelContract
    module: nn.Module | None = None
    session: Any = None
    raw_input: bool = False


Reader = Callable[..., ModelFile]

# Most input values (batch x H x W x 3) of the blank batch an ONNX model is run on once to learn its embedding size.
_MAX_PROBE_VALUES = 16 << 20

#: One reader per file suffix (lower case): ``reader(path, **options) -> ModelFile``.
MODEL_FORMATS: Registry[Reader] = Registry("model file type")


def read_model_file(path: str | os.PathLike, **options: Any) -> ModelFile:
    """Read a model file with the reader of its suffix (see the module table).

    Args:
        path: the file.
        **options: the reader's options: ``device`` and ``threads`` (all; torch files leave threads to the
            engine); ``arch``, ``options`` (``.pth``); ``preset``, ``contract``, ``providers`` (``.onnx``). An option
            that does not apply to the file type is an error unless it is None.

    Raises:
        ValueError: an unknown suffix (the message lists the known ones), or a file its reader refuses
            (:class:`~arcface.inference.contract.ContractError` for weights that do not fit).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_FORMATS:
        kind = suffix or "(no suffix)"
        raise ValueError(f"{path}: unknown model file type {kind}; expected {', '.join(MODEL_FORMATS.names())}")
    return MODEL_FORMATS.get(suffix)(path, **options)


def _unused(path: Path, kind: str, **options: Any) -> None:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ValueError(f"{path}: option(s) {', '.join(given)} do not apply to a {kind} file")


@MODEL_FORMATS.register(".safetensors")
def _read_safetensors(path: Path, *, device: str = "cpu", threads: int | None = None, **unused: Any) -> ModelFile:
    _unused(path, ".safetensors", **unused)
    with reading(path, "not a readable model file", ContractError):
        module, contract = read_model(path, device=device)
    return ModelFile(path, contract, module=module)


def _read_state_dict(
    path: Path,
    *,
    arch: str | None = None,
    options: dict[str, Any] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    **unused: Any,
) -> ModelFile:
    """A ``.pth``/``.pt`` state dict (arcface_torch ``backbone.pth``) -> our backbone and our contract."""
    _unused(path, "PyTorch state dict", **unused)
    options = dict(options or {})
    if arch is None:
        raise ValueError(
            f"{path}: a PyTorch checkpoint holds weights only; say which backbone it is with arch= "
            f"(one of {', '.join(MODELS.names())}), e.g. load_model({str(path)!r}, arch='r50')"
        )
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(MODELS.names())}")
    options.pop("num_features", None)  # read from the weights below
    with reading(path, "not a weights-only PyTorch state dict", ContractError):
        sd = load_backbone_weights(path)  # weights_only=True; wrappers and DDP prefixes removed
    with torch.device("meta"):
        ref = create_model(arch, **options)
    # The embedding size is the output size of the last weight matrix / conv (fc.weight for IResNet).
    last = [k for k, v in ref.state_dict().items() if v.ndim >= 2][-1]
    num_features = int(sd[last].shape[0]) if last in sd else int(ref.state_dict()[last].shape[0])
    if not 1 <= num_features <= MAX_EMBEDDING_SIZE:  # an empty tensor may claim any size: check before building
        raise ContractError(f"{path}: {last} gives an embedding size of {num_features} (at most {MAX_EMBEDDING_SIZE})")
    with torch.device("meta"):  # shapes first, so no module is built for weights that cannot fit
        diff = differing_keys(sd, create_model(arch, num_features=num_features, **options).state_dict())
    if diff:
        raise ContractError(
            f"{path}: weights do not fit {arch} with options {options}: first differing keys {shown(diff[:3], 200)}"
        )
    module = create_model(arch, num_features=num_features, **options)
    with reading(path, f"weights do not fit {arch} with options {options}", ContractError):
        module.load_state_dict(sd, strict=True)
    contract = ModelContract(
        architecture=arch,
        embedding_size=num_features,
        options=options,
        weights_sha256=weights_sha256(sd),
        source=f"{path.name} (PyTorch state dict, arcface_torch preprocessing: RGB, (x - 127.5) / 127.5)",
    )
    return ModelFile(path, contract, module=module.to(device).eval())


MODEL_FORMATS.register(".pth", _read_state_dict)
MODEL_FORMATS.register(".pt", _read_state_dict)


@MODEL_FORMATS.register(".onnx")
def _read_onnx(
    path: Path,
    *,
    preset: str | None = None,
    contract: ModelContract | None = None,
    device: str = "cpu",
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    **unused: Any,
) -> ModelFile:
    _unused(path, ".onnx", **unused)
    if providers is None and str(device).startswith("cuda"):
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with reading(path, "not a readable ONNX model", ContractError):
        session = open_session(path, providers, threads)
        meta = dict(session.get_modelmeta().custom_metadata_map)
    raw_input = meta.get(INPUT_KEY) == "rgb_0_255"
    if meta.get(INPUT_KEY) not in (None, "normalized", "rgb_0_255"):
        raise ContractError(f"{path}: unknown {INPUT_KEY} {shown(meta[INPUT_KEY])} in the ONNX metadata")
    if contract is None and CONTRACT_KEY in meta:  # our own export: the source model's contract, as it was
        if preset is not None:
            raise ValueError(f"{path} carries its own contract (arcface export); preset={preset!r} does not apply")
        try:
            contract = ModelContract.from_json(meta[CONTRACT_KEY])
        except ContractError as e:
            raise ContractError(f"{path}: {e}") from None
    if contract is None:
        with reading(path, "not an ONNX recognition model", ContractError):
            contract = onnx_contract(path, preset, session=session)
    return ModelFile(path, contract, session=session, raw_input=raw_input)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_contract(
    path: str | os.PathLike, preset: str | None = None, *, session=None, color: str | None = None
) -> ModelContract:
    """The contract of a foreign ONNX recognition model (no ``arcface_contract`` metadata) under a preset.

    Input size, layout and embedding size are read from the model; the SHA-256 is over the file bytes. Models converted
    from other frameworks (InsightFace_TF through tf2onnx, arcface-caffe through caffe2onnx / MMdnn, insightface's MXNet
    models through mxnet2onnx) often normalise inside the graph: when no preset is named and the input goes (through
    Transpose / Cast / Identity) into a Sub or Add and a Mul or Div by constants (the rule of insightface's own ONNX
    loader), the contract says mean 0, std 1: 0..255 pixels go in as they are.

    Args:
        path: the ``.onnx`` file.
        preset: a key of ``ONNX_PRESETS``; None picks "sface" when the file name contains "sface", else
            "insightface" (mean 0 / std 1 instead when the graph normalises its input itself).
        session: an open onnxruntime session of ``path`` (one is opened otherwise).
        color: the channel order the model takes ("RGB" or "BGR"), overriding the preset's; the graph does not say
            (Caffe and many TF models take BGR).

    Raises:
        ValueError: unknown preset, or a model that is not a one-image-in, one-embedding-out network.
    """
    path = Path(path)
    auto = preset is None
    if preset is None:
        preset = "sface" if "sface" in path.name.lower() else "insightface"
    if preset not in ONNX_PRESETS:
        raise ValueError(f"unknown ONNX preset {preset!r}; known: {', '.join(ONNX_PRESETS)}")
    session = session if session is not None else open_session(path)
    input_name, layout, batch, hw = onnx_input_layout(session, path)
    size = hw or (112, 112)
    if max(size) > MAX_INPUT_SIDE or (batch or 1) * size[0] * size[1] * 3 > _MAX_PROBE_VALUES:
        raise ContractError(  # checked before a blank batch is made to probe the model
            f"{path}: its input of {batch or 'N'}x{size[0]}x{size[1]} is larger than a face model takes "
            f"(side at most {MAX_INPUT_SIDE}, a fixed batch of at most {_MAX_PROBE_VALUES} values)"
        )
    out_shape = session.get_outputs()[0].shape
    dim = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) and len(out_shape) == 2 else None
    if dim is None:  # a dynamic or odd output shape: run one blank crop and look
        n = batch or 1
        shape = (n, 3, *size) if layout == "NCHW" else (n, *size, 3)
        out = session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})[0]
        dim = int(np.asarray(out).reshape(n, -1).shape[1])
    fields = dict(ONNX_PRESETS[preset])
    if auto and preset == "insightface" and _normalises_inside(path, input_name):
        fields.update(mean=0.0, std=1.0, source=f"{path.name} (ONNX, normalises its input inside the graph)")
    if color is not None:
        fields["color"] = color
    fields.setdefault("source", f"{path.name} (ONNX, {preset} preprocessing)")
    return ModelContract(
        architecture="onnx",
        options={"preset": preset},
        embedding_size=dim,
        input_size=size,
        layout=layout,
        weights_sha256=file_sha256(path),
        **fields,
    )


def _normalises_inside(path: Path, input_name: str) -> bool:
    """Whether the graph's input goes (through Transpose / Cast / Identity) into a shift (Sub or Add) and a scale (Mul
    or Div) by constants: the graph normalises 0..255 pixels itself."""
    import onnx  # optional dependency (the [all] extra): only foreign ONNX files need their nodes read

    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {t.name for t in graph.initializer}
    consts |= {o for node in graph.node if node.op_type == "Constant" for o in node.output}
    tensor, ops = input_name, set()
    for _ in range(6):  # a short chain at the input
        users = [node for node in graph.node if tensor in node.input]
        if len(users) != 1:
            break
        node, others = users[0], [i for i in users[0].input if i != tensor]
        if node.op_type in ("Sub", "Add", "Mul", "Div") and others and all(o in consts for o in others):
            ops.add("shift" if node.op_type in ("Sub", "Add") else "scale")
        elif node.op_type not in ("Transpose", "Cast", "Identity"):
            break
        tensor = node.output[0]
    return ops == {"shift", "scale"}
