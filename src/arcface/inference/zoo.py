"""The model zoo: one function, :func:`load_backend`, from a model name or file to an embedding backend.

What it accepts:

========================  =====================================================================
``"default"``             the bundled MobileFaceNet (``arcface/weights/mobilefacenet_tflite.safetensors``),
``"mobilefacenet"``       192-D, RGB ``(x - 127.5) / 128``, with its calibrated threshold.
``"sface"``               OpenCV zoo's SFace ONNX (128-D), not shipped: searched in ``$ARCFACE_DATA/weights``,
                          ``$ARCFACE_SHARED/weights/recognition`` and ``../shared/weights/recognition``.
``*.safetensors``         a model file with its contract (``contract.save_model``, the trainer's output).
``*.pth`` / ``*.pt``      an arcface_torch ``backbone.pth`` (or any state dict of our backbones); needs
                          ``arch=`` ("r50", "mbf", ...): the file holds weights only.
``*.onnx``                an ONNX recognition model run by onnxruntime; insightface-style by default
                          (RGB, ``(x - 127.5) / 127.5``, 112x112); ``preset="sface"`` (or "sface" in the
                          file name) for SFace; ``contract=`` for anything else.
========================  =====================================================================

SFace preprocessing, measured rather than assumed: OpenCV's ``FaceRecognizerSF.feature`` takes a BGR crop
and calls ``blobFromImage(crop, 1, (112, 112), 0, swapRB=true)``, so the network itself sees **RGB** in
0..255 (mean 0, std 1). Our RGB crops fed that way match OpenCV's features to cosine 1.0000; fed as BGR
they drop to about 0.95, and ``(x - 127.5) / 127.5`` breaks the model (cosine about 0 to OpenCV).

Contracts of ONNX models: ``architecture="onnx"``, ``options={"preset": ...}`` and ``weights_sha256`` the
SHA-256 of the file bytes (there is no state dict to hash), so two ONNX files never share an id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import numpy as np

from arcface.engine.checkpoint import load_backbone_weights
from arcface.inference.backends import Backend, OnnxBackend, TorchBackend, onnx_input_layout, open_session
from arcface.inference.contract import ContractError, ModelContract, load_model, weights_sha256

__all__ = [
    "BUNDLED_DEFAULT",
    "MODEL_NAMES",
    "ONNX_PRESETS",
    "SFACE_FILES",
    "find_sface",
    "load_backend",
    "onnx_contract",
    "resolve_model_path",
    "weight_dirs",
]

#: The bundled default model, under ``arcface/weights/``.
BUNDLED_DEFAULT = "mobilefacenet_tflite.safetensors"

#: Named models (aliases included).
MODEL_NAMES = ("default", "mobilefacenet", "sface")

#: SFace file names searched for, best first: OpenCV zoo's float model, then the int8 block-quantised
#: copy with its dangling graph inputs removed (the unfixed int8bq file fails in onnxruntime).
SFACE_FILES = (
    "face_recognition_sface_2021dec.onnx",
    "face_recognition_sface_2021dec_int8bq.ortfix.onnx",
    "face_recognition_sface_2021dec_int8.onnx",
)
SFACE_URL = "https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface"

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

_TORCH_SUFFIXES = (".pth", ".pt")


def load_backend(
    model: str | os.PathLike = "default",
    *,
    arch: str | None = None,
    options: Mapping[str, Any] | None = None,
    preset: str | None = None,
    contract: ModelContract | None = None,
    device: str = "cpu",
    providers: Sequence[str] | None = None,
    flip: bool = False,
    batch_size: int = 64,
) -> Backend:
    """Build the embedding backend for a model name or file (see the module table).

    Args:
        model: "default" / "mobilefacenet", "sface", or a ``.safetensors``, ``.pth``/``.pt`` or ``.onnx`` path.
        arch: backbone name for a ``.pth``/``.pt`` state dict (e.g. "r50", "r100", "mbf").
        options: extra ``create_model`` arguments for a ``.pth``/``.pt`` (e.g. ``{"width_mult": 0.5}``); the
            embedding size is read from the weights.
        preset: ONNX preprocessing, "insightface" (default) or "sface" (default for files named ``*sface*``).
        contract: the full contract of an ONNX model, overriding ``preset``.
        device: torch device ("cpu", "cuda"); for ONNX, "cuda" asks onnxruntime for CUDA then CPU.
        providers: onnxruntime execution providers (overrides ``device`` for ONNX).
        flip: flip-test fusion (see ``backends``).
        batch_size: most crops per forward pass.

    Returns:
        A :class:`~arcface.inference.backends.Backend` with its ``.contract``.

    Raises:
        FileNotFoundError: an unknown name, a missing file, or SFace not found (the message says where to get it).
        ValueError: ``arch`` missing for a ``.pth``, unknown ``arch``/``preset``, or an unreadable model
            (``ContractError`` for weights that do not fit).
    """
    path = resolve_model_path(model)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        module, model_contract = load_model(path, device=device)
        return TorchBackend(module, model_contract, device=device, batch_size=batch_size, flip=flip)
    if suffix in _TORCH_SUFFIXES:
        module, model_contract = _load_state_dict_file(path, arch, dict(options or {}))
        return TorchBackend(module, model_contract, device=device, batch_size=batch_size, flip=flip)
    if suffix == ".onnx":
        if providers is None and str(device).startswith("cuda"):
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        session = open_session(path, providers)
        if contract is None:
            contract = onnx_contract(path, preset, session=session)
        return OnnxBackend(path, contract, batch_size=batch_size, flip=flip, session=session)
    kind = suffix or "(no suffix)"
    raise ValueError(f"{path}: unknown model file type {kind}; expected .safetensors, .pth, .pt or .onnx")


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A model name ("default", "mobilefacenet", "sface") or path -> the existing model file it means.

    Raises:
        FileNotFoundError: an unknown name or a missing file (the message lists the known names).
        TypeError: ``model`` is neither a string nor a path.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(model).__name__}")
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    name = text.lower()
    if name in ("default", "mobilefacenet"):
        return _bundled(BUNDLED_DEFAULT)
    if name == "sface":
        return find_sface()
    if path.suffix.lower() in (".safetensors", ".onnx", *_TORCH_SUFFIXES) or os.sep in text:
        raise FileNotFoundError(f"model file {text} does not exist")
    raise FileNotFoundError(
        f"unknown model {text!r}: not a known name ({', '.join(MODEL_NAMES)}) nor an existing "
        ".safetensors/.pth/.pt/.onnx file"
    )


_BUNDLE_STACK = ExitStack()  # keeps extracted resource files alive for the process (zipped installs only)


def _bundled(name: str) -> Path:
    res = files("arcface").joinpath("weights", name)
    if not res.is_file():
        raise FileNotFoundError(f"bundled model arcface/weights/{name} is missing from this installation")
    return Path(_BUNDLE_STACK.enter_context(as_file(res)))


def weight_dirs() -> list[Path]:
    """Folders searched for models that are not shipped, in order.

    ``$ARCFACE_DATA/weights`` (and its ``recognition/``), ``$ARCFACE_SHARED/weights/recognition``, then the
    first ``shared/weights/recognition`` beside the current directory or the package's parents.
    """
    dirs: list[Path] = []
    if os.environ.get("ARCFACE_DATA"):
        root = Path(os.environ["ARCFACE_DATA"]) / "weights"
        dirs += [root, root / "recognition"]
    if os.environ.get("ARCFACE_SHARED"):
        dirs.append(Path(os.environ["ARCFACE_SHARED"]) / "weights" / "recognition")
    for parent in (Path.cwd(), *Path(__file__).resolve().parents):
        cand = parent.parent / "shared" / "weights" / "recognition"
        if cand.is_dir():
            dirs.append(cand)
            break
    return dirs


def find_sface() -> Path:
    """The SFace ONNX file (see ``SFACE_FILES``, ``weight_dirs``).

    Raises:
        FileNotFoundError: none found; the message lists where it looked and where to download it.
    """
    dirs = weight_dirs()
    for d in dirs:
        for name in SFACE_FILES:
            if (d / name).is_file():
                return d / name
    looked = ", ".join(str(d) for d in dirs) or "(no folder: set ARCFACE_DATA)"
    raise FileNotFoundError(
        f"model 'sface' is not shipped with arcface and was not found in {looked}; download "
        f"{SFACE_FILES[0]} from {SFACE_URL} into $ARCFACE_DATA/weights, or pass its path"
    )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_contract(
    path: str | os.PathLike, preset: str | None = None, *, session=None, color: str | None = None
) -> ModelContract:
    """The contract of an ONNX recognition model under a preprocessing preset.

    Input size, layout and embedding size are read from the model; the SHA-256 is over the file bytes.
    Models converted from other frameworks (InsightFace_TF through tf2onnx, arcface-caffe through
    caffe2onnx / MMdnn, insightface's MXNet models through mxnet2onnx) often normalise inside the graph:
    when no preset is named and the input goes (through Transpose / Cast / Identity) into a Sub or Add and
    a Mul or Div by constants (insightface's own ONNX loader applies the same rule), the contract says
    mean 0, std 1: 0..255 pixels go in as they are.

    Args:
        path: the ``.onnx`` file.
        preset: a key of ``ONNX_PRESETS``; None picks "sface" when the file name contains "sface", else
            "insightface" (mean 0 / std 1 instead when the graph normalises its input itself).
        session: an open onnxruntime session of ``path`` (one is opened otherwise).
        color: the channel order the model takes ("RGB" or "BGR"), overriding the preset's; the graph does
            not say (Caffe and many TF models take BGR).

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
    out_shape = session.get_outputs()[0].shape
    dim = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) and len(out_shape) == 2 else None
    if dim is None:  # a dynamic or odd output shape: run one blank crop and look
        n = batch or 1
        shape = (n, 3, *size) if layout == "NCHW" else (n, *size, 3)
        out = session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})[0]
        dim = int(np.asarray(out).reshape(n, -1).shape[1])

    def normalises_inside() -> bool:
        try:
            import onnx  # optional heavy dependency (the [all] extra), only to read the first nodes
        except ImportError:
            return False
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

    fields = dict(ONNX_PRESETS[preset])
    if auto and preset == "insightface" and normalises_inside():
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
        weights_sha256=_file_sha256(path),
        **fields,
    )


def _load_state_dict_file(path: Path, arch: str | None, options: dict[str, Any]):
    """A ``.pth``/``.pt`` state dict (arcface_torch ``backbone.pth``) -> (module in eval mode, contract)."""
    import torch

    from arcface.models import MODELS, create_model

    if arch is None:
        raise ValueError(
            f"{path}: a PyTorch checkpoint holds weights only; say which backbone it is with arch= "
            f"(one of {', '.join(MODELS.names())}), e.g. load_backend({str(path)!r}, arch='r50')"
        )
    if arch not in MODELS.names():
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(MODELS.names())}")
    options.pop("num_features", None)  # read from the weights below
    try:
        sd = load_backbone_weights(path)  # weights_only=True; wrappers and DDP prefixes removed
    except ValueError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ContractError(f"{path}: not a weights-only PyTorch state dict ({first})") from None
    with torch.device("meta"):
        ref = create_model(arch, **options)
    # The embedding size is the output size of the last weight matrix / conv (fc.weight for IResNet).
    last = [k for k, v in ref.state_dict().items() if v.ndim >= 2][-1]
    num_features = int(sd[last].shape[0]) if last in sd else int(ref.state_dict()[last].shape[0])
    module = create_model(arch, num_features=num_features, **options)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ContractError(f"{path}: weights do not fit {arch} with options {options}: {detail}") from None
    contract = ModelContract(
        architecture=arch,
        embedding_size=num_features,
        options=options,
        weights_sha256=weights_sha256(sd),
        source=f"{path.name} (PyTorch state dict, arcface_torch preprocessing: RGB, (x - 127.5) / 127.5)",
    )
    return module.eval(), contract


