"""Import insightface's MXNet recognition models (``PREFIX-symbol.json`` + ``PREFIX-NNNN.params``) without MXNet.

Two readers and one mapping, all pure Python + NumPy:

- :func:`read_params` reads MXNet's NDArray list file (``mx.nd.save`` / ``save_checkpoint``): a uint64
  magic ``0x112`` and a reserved uint64, a uint64 count of arrays, each array as (uint32 magic
  ``0xF993FAC9`` (V2; V1 ``...C8`` has no storage type, V3 ``...CA`` uses NumPy shape semantics), int32
  storage type (0 dense), int32 ndim + int64 dims, int32 device type + id, int32 dtype flag, raw C-order
  little-endian data), then a uint64 count of names, each a uint64 length and UTF-8 bytes. Files from
  before the magic (first uint32 is ndim, then uint32 dims) are read too. Names carry ``arg:`` /
  ``aux:`` prefixes (parameters / BatchNorm moving statistics).
- :func:`read_symbol` reads the graph JSON: ``nodes`` (op, name, attrs, inputs as [node, output, version])
  in topological order, and ``heads``.
- :func:`convert_mxnet` maps insightface's two families onto our backbones by walking the graph from its
  input, layer by layer, and checking each node's op, attributes and data input against what our module
  computes at that point:

  * **fresnet**, IR units (``net_unit 3``: LResNet{18,34,50,100}E-IR): ``conv0``/``bn0``/``relu0`` ->
    ``stageS_unitU_{bn1,conv1,bn2,relu1,conv2,bn3}`` (+ ``_se_*`` squeeze-excitation with biased convs
    and PReLU) + shortcut ``_conv1sc``/``_sc`` -> output ``bn1`` -> Dropout -> ``pre_fc1`` -> ``fc1``
    (``E``/``FC``), or without the first BN (``J``), or ``fc1`` as the FullyConnected itself (``F``/``G``/``H``).
    Input variants: ``net_input 1`` (3x3 stem), ``0`` (7x7 stride-2 stem), ``2`` (BatchNorm ``bn_data`` on the
    raw input). -> ``r18``/``r34``/``r50``/``r100`` (with options where the layout differs).
  * **fmobilefacenet** (MobileFaceNet, ``net_output GDC``): ``conv_1`` .. ``conv_6sep``, ``conv_6dw7_7``,
    ``pre_fc1``, ``fc1`` -> ``mbf_mxnet``.

  The scalar ops on the input (``(x - 127.5) * 0.0078125``) become the contract's mean and std, so the
  module starts at the first conv. BatchNorm epsilons (MXNet's default 1e-3, fresnet's 2e-5) move into
  the running variance (see ``BatchNormParams.as_torch``); ``fix_gamma=True`` BatchNorms get scale 1
  whatever the file stores, as MXNet computes them. Only the subgraph that produces ``fc1`` (the
  embedding) is mapped, so a training graph with ``fc7`` and a softmax still converts. Any other op, or
  a layer that is not where the family puts it, is refused with its op and name.

Contract of the result: RGB, 0..255 in, mean/std from the graph (127.5 / 128 for the model zoo's), the
arcface 112x112 template, the embedding size of ``pre_fc1``.
"""

from __future__ import annotations

import ast
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from arcface.inference.contract import ModelContract, save_model
from arcface.inference.converters._common import BatchNormParams, ConversionError, build_and_load, state_dict_for
from arcface.models import iresnet
from arcface.runtime.untrusted import load_json, one_line, reading

__all__ = ["MXGraph", "MXNode", "convert_mxnet", "mxnet_paths", "read_params", "read_symbol"]

_LIST_MAGIC = 0x112
_MAX_ATTR_CHARS = 256
_MAX_SYMBOL_BYTES = 8 << 20  # a graph of a thousand layers is a few hundred KiB
_V1_MAGIC, _V2_MAGIC, _V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# MXNet's mshadow type flags.
_DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?"}

_ADD_OPS = ("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add", "broadcast_plus")
_MUL_OPS = ("broadcast_mul", "elemwise_mul", "_Mul", "_mul")
_SCALAR_OPS = ("_minus_scalar", "_plus_scalar", "_mul_scalar", "_div_scalar")
_IDENTITY_OPS = ("_copy", "identity")
#: Every op the importer can place; any other op in the embedding's subgraph is refused by name.
KNOWN_OPS = frozenset(
    ("Convolution", "BatchNorm", "LeakyReLU", "FullyConnected", "Dropout", "Pooling", "Activation", "Flatten")
    + _ADD_OPS
    + _MUL_OPS
    + _SCALAR_OPS
    + _IDENTITY_OPS
)


# --------------------------------------------------------------------------------------------------
# The .params reader


class _Bytes:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ConversionError(
                f"{self.path}: truncated MXNet params file: {what} needs {n} bytes at offset {self.pos}, "
                f"the file has {len(self.data)}"
            )
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> Any:
        values = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))
        return values[0] if len(values) == 1 else values


def _read_array(r: _Bytes, index: int) -> np.ndarray | None:
    what = f"array {index}"
    magic = r.unpack("<I", f"{what} header")
    if magic in (_V2_MAGIC, _V3_MAGIC):
        stype = r.unpack("<i", f"{what} storage type")
        if stype != 0:
            raise ConversionError(f"{r.path}: {what} is a sparse NDArray (storage type {stype}); only dense is read")
    if magic in (_V1_MAGIC, _V2_MAGIC, _V3_MAGIC):
        ndim = r.unpack("<i", f"{what} ndim")
        if ndim < 0 or (ndim == 0 and magic != _V3_MAGIC):
            return None  # an empty ("none") array: nothing follows
        if ndim > 32:
            raise ConversionError(f"{r.path}: {what} has an implausible ndim {ndim} (corrupt file?)")
        shape = r.unpack(f"<{ndim}q", f"{what} shape") if ndim else ()
    elif magic <= 32:  # before NDArray magics: the first word is ndim, dims are uint32
        ndim = magic
        if ndim == 0:
            return None
        shape = r.unpack(f"<{ndim}I", f"{what} shape")
    else:
        raise ConversionError(f"{r.path}: {what} starts with 0x{magic:08x}, not an MXNet NDArray")
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    r.unpack("<ii", f"{what} context")  # device type and id: irrelevant on load
    flag = r.unpack("<i", f"{what} dtype")
    if flag not in _DTYPES:
        raise ConversionError(f"{r.path}: {what} has MXNet dtype flag {flag}, which this reader does not know")
    dtype = np.dtype(_DTYPES[flag])
    if any(d < 0 for d in shape):
        raise ConversionError(f"{r.path}: {what} has a negative dimension in its shape {shape} (corrupt file?)")
    count = math.prod(shape)  # exact: a crafted shape must not wrap around
    if count * dtype.itemsize > len(r.data) - r.pos:  # checked before anything is allocated
        raise ConversionError(
            f"{r.path}: truncated MXNet params file: {what} claims shape {shape} ({count * dtype.itemsize} bytes "
            f"of {dtype}), more than the "
            f"{len(r.data) - r.pos} bytes left in the file"
        )
    raw = r.take(count * dtype.itemsize, f"{what} data ({shape}, {dtype})")
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read an MXNet ``.params`` file (NDArray list) into ``{name: array}`` (names keep ``arg:``/``aux:``).

    Raises:
        FileNotFoundError: no such file.
        ConversionError: not an NDArray list, truncated, sparse arrays, or names that do not match the arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MXNet params file {path} does not exist")
    with reading(path, "not a readable MXNet params file", ConversionError):
        return _read_params(path, _Bytes(path.read_bytes(), path))


def _read_params(path: Path, r: _Bytes) -> dict[str, np.ndarray]:
    magic, _reserved = r.unpack("<QQ", "the file header")
    if magic != _LIST_MAGIC:
        raise ConversionError(f"{path}: not an MXNet params file (header 0x{magic:x}, expected 0x{_LIST_MAGIC:x})")
    count = r.unpack("<Q", "the array count")
    if count > 1_000_000:
        raise ConversionError(f"{path}: implausible array count {count} (corrupt file?)")
    arrays = [_read_array(r, i) for i in range(count)]
    n_names = r.unpack("<Q", "the name count")
    if n_names != count:
        raise ConversionError(f"{path}: {count} arrays but {n_names} names (an unnamed list is not a checkpoint)")
    names = []
    for i in range(n_names):
        length = r.unpack("<Q", f"name {i} length")
        try:
            names.append(bytes(r.take(length, f"name {i}")).decode("utf-8"))
        except UnicodeDecodeError:
            raise ConversionError(f"{path}: name {i} is not UTF-8 (corrupt file?)") from None
    if r.pos != len(r.data):
        raise ConversionError(f"{path}: {len(r.data) - r.pos} unexpected trailing bytes after the names")
    return {name: a for name, a in zip(names, arrays) if a is not None}


# --------------------------------------------------------------------------------------------------
# The symbol reader


@dataclass(frozen=True)
class MXNode:
    """One graph node: ``op`` ("null" for a variable), ``name``, string ``attrs``, input node indices."""

    index: int
    op: str
    name: str
    attrs: dict[str, str]
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class MXGraph:
    """An MXNet symbol: nodes in topological order and the indices of its outputs."""

    path: Path
    nodes: tuple[MXNode, ...]
    heads: tuple[int, ...]

    def find(self, name: str) -> MXNode | None:
        """The last non-variable node called ``name`` (names are unique in insightface's graphs), or None."""
        return next((n for n in reversed(self.nodes) if n.name == name and n.op != "null"), None)


def read_symbol(path: str | Path) -> MXGraph:
    """Parse an MXNet ``-symbol.json`` file.

    Raises:
        FileNotFoundError: no such file.
        ConversionError: not JSON, or not an MXNet symbol (the missing field is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MXNet symbol file {path} does not exist")
    if path.stat().st_size > _MAX_SYMBOL_BYTES:
        raise ConversionError(f"{path}: {path.stat().st_size} bytes, more than an MXNet symbol file holds")
    try:
        doc = load_json(path.read_bytes())
    except ValueError as e:  # not UTF-8, not JSON, or nested too deeply
        raise ConversionError(f"{path}: not a readable MXNet symbol file ({one_line(e)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or "heads" not in doc:
        raise ConversionError(f"{path}: not an MXNet symbol (no 'nodes' list and 'heads')")
    nodes = []
    try:
        for i, nd in enumerate(doc["nodes"]):
            # "attrs" since MXNet 0.9; older files say "attr" or "param".
            attrs = nd.get("attrs", nd.get("attr", nd.get("param", {}))) or {}
            inputs = tuple(int(e[0]) for e in nd.get("inputs", []))
            if any(j >= i for j in inputs):
                raise ConversionError(f"{path}: node {i} ({nd.get('name')}) takes a later node: not topological")
            nodes.append(MXNode(i, str(nd["op"]), str(nd["name"]), {str(k): str(v) for k, v in attrs.items()}, inputs))
        heads = tuple(int(h[0]) for h in doc["heads"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{path}: malformed MXNet symbol node ({type(e).__name__}: {one_line(e)})") from None
    if not heads or any(h >= len(nodes) for h in heads):
        raise ConversionError(f"{path}: the symbol's heads point outside its {len(nodes)} nodes")
    return MXGraph(path, tuple(nodes), heads)


def mxnet_paths(prefix: str | Path, epoch: int | None = None) -> tuple[Path, Path]:
    """``(PREFIX-symbol.json, PREFIX-EPOCH.params)``; without ``epoch`` the only (or the latest) epoch on disk.

    Raises:
        FileNotFoundError: the symbol or the params file is missing (the message names what was looked for).
    """
    prefix = Path(prefix)
    symbol = prefix.parent / f"{prefix.name}-symbol.json"
    if not symbol.is_file():
        raise FileNotFoundError(f"MXNet symbol file {symbol} does not exist (give PREFIX without -symbol.json)")
    if epoch is not None:
        params = prefix.parent / f"{prefix.name}-{epoch:04d}.params"
        if not params.is_file():
            raise FileNotFoundError(f"MXNet params file {params} does not exist")
        return symbol, params
    found = sorted(prefix.parent.glob(f"{prefix.name}-[0-9][0-9][0-9][0-9].params"))
    if not found:
        raise FileNotFoundError(f"no MXNet params file {prefix.name}-NNNN.params beside {symbol}")
    return symbol, found[-1]


# --------------------------------------------------------------------------------------------------
# Walking the graph


def _tuple(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    if len(text) > _MAX_ATTR_CHARS:  # a shape or stride attribute is a few numbers: refuse before parsing
        raise ValueError(f"attribute of {len(text)} characters where a tuple of a few numbers belongs")
    value = ast.literal_eval(text)
    return tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))


def _bool(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    return text.strip().lower() in ("true", "1")


class _Walker:
    """Matches the graph, layer by layer, against the layout of our module, and collects its weights.

    Every method takes the node index ``x`` our module's input at that point corresponds to, finds the
    graph node that consumes it (by name for named layers, by op for anonymous ones), checks it, claims
    it, and returns its index. Weights go to ``tensors`` / ``bns`` keyed by our module paths.
    """

    def __init__(self, graph: MXGraph, params: dict[str, np.ndarray], output: int) -> None:
        self.g, self.output = graph, output
        self.params = {}
        for k, v in params.items():
            self.params[k.split(":", 1)[1] if k.startswith(("arg:", "aux:")) else k] = v
        # The embedding's subgraph: ancestors of the output.
        keep, stack = set(), [output]
        while stack:
            i = stack.pop()
            if i not in keep:
                keep.add(i)
                stack.extend(graph.nodes[i].inputs)
        self.subgraph = keep
        for i in sorted(keep):
            node = graph.nodes[i]
            if node.op != "null" and node.op not in KNOWN_OPS:
                raise ConversionError(f"{graph.path}: unsupported op {node.op!r} at layer {node.name!r}")
        self.consumers: dict[int, list[int]] = {}
        for i in sorted(keep):
            for j in graph.nodes[i].inputs:
                self.consumers.setdefault(j, []).append(i)
        self.claimed: set[int] = set()
        self.tensors: dict[str, np.ndarray] = {}
        self.bns: dict[str, BatchNormParams] = {}

    # -- lookup helpers ---------------------------------------------------------------------------

    def fail(self, node: MXNode | str, msg: str) -> ConversionError:
        name = node.name if isinstance(node, MXNode) else node
        return ConversionError(f"{self.g.path}: cannot map layer {name!r}: {msg}")

    def has(self, name: str) -> bool:
        node = self.g.find(name)
        return node is not None and node.index in self.subgraph

    def named(self, name: str, op: str | tuple[str, ...], x: int) -> MXNode:
        node = self.g.find(name)
        ops = (op,) if isinstance(op, str) else op
        if node is None or node.index not in self.subgraph:
            after = self.g.nodes[x].name
            raise ConversionError(
                f"{self.g.path}: expected layer {name!r} ({'/'.join(ops)}) after {after!r}, not found"
            )
        if node.op not in ops:
            raise self.fail(node, f"op {node.op}, expected {'/'.join(ops)}")
        if not node.inputs or node.inputs[0] != x:
            got = self.g.nodes[node.inputs[0]].name if node.inputs else "nothing"
            raise self.fail(node, f"takes {got!r}, expected {self.g.nodes[x].name!r}")
        return self._claim(node)

    def consumer(self, x: int, ops: tuple[str, ...], optional: bool = False) -> MXNode | None:
        found = [self.g.nodes[i] for i in self.consumers.get(x, ()) if self.g.nodes[i].op in ops]
        if not found:
            if optional:
                return None
            raise ConversionError(
                f"{self.g.path}: expected {'/'.join(ops)} after layer {self.g.nodes[x].name!r}, not found"
            )
        if len(found) > 1:
            raise self.fail(found[1], f"a second {found[1].op} on {self.g.nodes[x].name!r}")
        return self._claim(found[0])

    def _claim(self, node: MXNode) -> MXNode:
        if node.index in self.claimed:
            raise self.fail(node, "reached twice (a shared layer is not a layout we map)")
        self.claimed.add(node.index)
        for j in node.inputs:
            if self.g.nodes[j].op == "null":
                self.claimed.add(j)
        return node

    def param(self, node: MXNode, slot: int, what: str) -> np.ndarray:
        if len(node.inputs) <= slot or self.g.nodes[node.inputs[slot]].op != "null":
            raise self.fail(node, f"has no {what} input")
        name = self.g.nodes[node.inputs[slot]].name
        if name not in self.params:
            raise ConversionError(f"{self.g.path}: layer {node.name!r} needs {name!r}, which the params file lacks")
        return self.params[name]

    # -- layers -----------------------------------------------------------------------------------

    def conv(
        self,
        x: int,
        name: str,
        to: str,
        kernel: int,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bias: bool = False,
    ) -> int:
        node = self.named(name, "Convolution", x)
        a = node.attrs
        got = dict(
            kernel=_tuple(a.get("kernel"), ()),
            stride=_tuple(a.get("stride"), (1, 1)),
            pad=_tuple(a.get("pad"), (0, 0)),
            dilate=_tuple(a.get("dilate"), (1, 1)),
            num_group=int(a.get("num_group", 1)),
            no_bias=_bool(a.get("no_bias"), False),
        )
        want = dict(
            kernel=(kernel, kernel), stride=(stride, stride), pad=(pad, pad), dilate=(1, 1),
            num_group=groups, no_bias=not bias,
        )  # fmt: skip
        for key, value in want.items():
            if got[key] != value:
                raise self.fail(node, f"{key} {got[key]}, expected {value}")
        if a.get("layout", "NCHW") not in ("NCHW", "None"):
            raise self.fail(node, f"layout {a.get('layout')}, expected NCHW")
        self.tensors[f"{to}.weight"] = self.param(node, 1, "weight")
        if bias:
            self.tensors[f"{to}.bias"] = self.param(node, 2, "bias")
        return node.index

    def bn(self, x: int, name: str, to: str) -> int:
        node = self.named(name, "BatchNorm", x)
        a = node.attrs
        if int(a.get("axis", 1)) != 1:
            raise self.fail(node, f"axis {a.get('axis')}, expected 1 (channels)")
        if _bool(a.get("output_mean_var"), False):
            raise self.fail(node, "output_mean_var=True")
        fix_gamma = _bool(a.get("fix_gamma"), True)  # MXNet's default is True
        self.bns[to] = BatchNormParams(
            gamma=None if fix_gamma else self.param(node, 1, "gamma"),
            beta=self.param(node, 2, "beta"),
            mean=self.param(node, 3, "moving_mean"),
            var=self.param(node, 4, "moving_var"),
            eps=float(a.get("eps", 1e-3)),  # MXNet's default eps
        )
        return node.index

    def prelu(self, x: int, name: str, to: str) -> int:
        node = self.named(name, ("LeakyReLU", "Activation"), x)
        act = node.attrs.get("act_type", "leaky" if node.op == "LeakyReLU" else "")
        if node.op != "LeakyReLU" or act != "prelu":
            raise self.fail(node, f"activation {act!r}; only PReLU (LeakyReLU act_type='prelu') is mapped")
        self.tensors[f"{to}.weight"] = self.param(node, 1, "gamma").reshape(-1)
        return node.index

    def fc(self, x: int, name: str, to: str) -> int:
        node = self.named(name, "FullyConnected", x)
        if not _bool(node.attrs.get("flatten"), True):
            raise self.fail(node, "flatten=False")
        self.tensors[f"{to}.weight"] = self.param(node, 1, "weight")
        if not _bool(node.attrs.get("no_bias"), False):
            self.tensors[f"{to}.bias"] = self.param(node, 2, "bias")
        return node.index

    def global_avg_pool(self, x: int, name: str) -> int:
        node = self.named(name, "Pooling", x)
        if not _bool(node.attrs.get("global_pool"), False) or node.attrs.get("pool_type", "max") != "avg":
            raise self.fail(node, "expected a global average pool")
        return node.index

    def sigmoid(self, x: int, name: str) -> int:
        node = self.named(name, "Activation", x)
        if node.attrs.get("act_type") != "sigmoid":
            raise self.fail(node, f"act_type {node.attrs.get('act_type')!r}, expected 'sigmoid'")
        return node.index

    def binary(self, ops: tuple[str, ...], a: int, b: int) -> int:
        both = [i for i in self.consumers.get(a, ()) if i in self.consumers.get(b, ()) and self.g.nodes[i].op in ops]
        if len(both) != 1:
            raise ConversionError(
                f"{self.g.path}: expected one {ops[0]} of layers {self.g.nodes[a].name!r} and "
                f"{self.g.nodes[b].name!r}, found {len(both)}"
            )
        return self._claim(self.g.nodes[both[0]]).index

    def dropout(self, x: int) -> int:
        node = self.consumer(x, ("Dropout",), optional=True)
        if node is None:
            return x
        if node.attrs.get("mode", "training") != "training":
            raise self.fail(node, f"Dropout mode {node.attrs.get('mode')!r} also drops at inference")
        return node.index

    # -- input and completeness -------------------------------------------------------------------

    def data_input(self) -> tuple[int, float, float]:
        """The data variable and the affine normalisation ``x * scale + shift`` the graph applies to it."""
        datas = [
            i for i in sorted(self.subgraph)
            if self.g.nodes[i].op == "null" and self.g.nodes[i].name not in self.params
        ]  # fmt: skip
        if len(datas) != 1:
            names = [self.g.nodes[i].name for i in datas]
            raise ConversionError(f"{self.g.path}: expected one data input, found {names} without weights")
        x = datas[0]
        self.claimed.add(x)
        scale, shift = 1.0, 0.0
        while True:
            nxt = [self.g.nodes[i] for i in self.consumers.get(x, ())]
            if len(nxt) != 1 or nxt[0].op not in _SCALAR_OPS + _IDENTITY_OPS:
                return x, scale, shift
            node = self._claim(nxt[0])
            s = float(node.attrs.get("scalar", "nan"))
            if node.op == "_minus_scalar":
                shift -= s
            elif node.op == "_plus_scalar":
                shift += s
            elif node.op == "_mul_scalar":
                scale, shift = scale * s, shift * s
            elif node.op == "_div_scalar":
                scale, shift = scale / s, shift / s
            if not np.isfinite([scale, shift]).all() or scale == 0:
                raise self.fail(node, f"input normalisation with scalar {node.attrs.get('scalar')!r}")
            x = node.index

    def finish(self, x: int) -> None:
        if x != self.output:
            raise ConversionError(
                f"{self.g.path}: the mapping ended at {self.g.nodes[x].name!r}, but the embedding is "
                f"{self.g.nodes[self.output].name!r}"
            )
        for i in sorted(self.subgraph - self.claimed):
            node = self.g.nodes[i]
            if node.op != "null":
                raise ConversionError(f"{self.g.path}: cannot map layer {node.name!r} (op {node.op})")


# --------------------------------------------------------------------------------------------------
# The two families


def _stage_units(walker: _Walker) -> list[int]:
    units = []
    for s in range(1, 5):
        n = 0
        while walker.has(f"stage{s}_unit{n + 1}_bn1") or walker.has(f"stage{s}_unit{n + 1}_conv1"):
            n += 1
        units.append(n)
    return units


def _map_fresnet(w: _Walker, x: int) -> tuple[str, dict[str, Any], int]:
    options: dict[str, Any] = {}
    if w.has("bn_data"):  # net_input 2: BatchNorm on the raw 0..255 input
        x = w.bn(x, "bn_data", "input_bn")
        options["input_bn"] = True
    conv0 = w.g.find("conv0")
    k = _tuple(conv0.attrs.get("kernel"), (3, 3))[0] if conv0 is not None else 3
    if k == 7:  # net_input 0
        options.update(stem_kernel=7, stem_stride=2)
    x = w.conv(x, "conv0", "conv1", kernel=k, stride=1 if k == 3 else 2, pad=k // 2)
    x = w.bn(x, "bn0", "bn1")
    x = w.prelu(x, "relu0", "prelu")
    units = _stage_units(w)
    if min(units) == 0:
        raise ConversionError(f"{w.g.path}: fresnet stage layout {units}: a stage has no IR unit (stageS_unitU_bn1)")
    se = w.has("stage1_unit1_se_conv1")
    if se:
        options.update(se=True, se_bias=True, se_act="prelu")
    for s, n in enumerate(units, start=1):
        for u in range(1, n + 1):
            p, t = f"stage{s}_unit{u}", f"layer{s}.{u - 1}"
            y = w.bn(x, f"{p}_bn1", f"{t}.bn1")
            y = w.conv(y, f"{p}_conv1", f"{t}.conv1", kernel=3, pad=1)
            y = w.bn(y, f"{p}_bn2", f"{t}.bn2")
            y = w.prelu(y, f"{p}_relu1", f"{t}.prelu")
            y = w.conv(y, f"{p}_conv2", f"{t}.conv2", kernel=3, stride=2 if u == 1 else 1, pad=1)
            y = w.bn(y, f"{p}_bn3", f"{t}.bn3")
            if se:
                z = w.global_avg_pool(y, f"{p}_se_pool1")
                z = w.conv(z, f"{p}_se_conv1", f"{t}.se.fc1", kernel=1, bias=True)
                z = w.prelu(z, f"{p}_se_relu1", f"{t}.se.relu")
                z = w.conv(z, f"{p}_se_conv2", f"{t}.se.fc2", kernel=1, bias=True)
                z = w.sigmoid(z, f"{p}_se_sigmoid")
                y = w.binary(_MUL_OPS, y, z)
            shortcut = x
            if u == 1:
                shortcut = w.conv(x, f"{p}_conv1sc", f"{t}.downsample.0", kernel=1, stride=2)
                shortcut = w.bn(shortcut, f"{p}_sc", f"{t}.downsample.1")
            x = w.binary(_ADD_OPS, y, shortcut)
    # Output: [bn1] [Dropout] FullyConnected (pre_fc1 -> BatchNorm fc1, or fc1 itself)
    if w.has("bn1"):
        x = w.bn(x, "bn1", "bn2")
    else:
        options["pre_fc_bn"] = False
    x = w.dropout(x)
    if w.has("pre_fc1"):
        x = w.fc(x, "pre_fc1", "fc")
        x = w.bn(x, "fc1", "features")
    else:
        x = w.fc(x, "fc1", "fc")
        options["post_fc_bn"] = False
    arch = next((name for name, v in iresnet.VARIANTS.items() if list(v.args.get("layers", ())) == units
                 and len(v.args) == 1), None)  # fmt: skip
    if arch is None:  # a depth without a name of its own (fresnet 74, 90, 124, ...): r50 with its layers
        arch, options = "r50", {"layers": units, **options}
    return arch, options, x


def _num_filter(w: _Walker, name: str) -> int:
    node = w.g.find(name)
    return int(node.attrs.get("num_filter", 0)) if node is not None else 0


def _map_dresidual(w: _Walker, x: int, name: str, to: str, stride: int) -> int:
    """A bottleneck ``{name}_conv_sep`` (1x1) -> ``_conv_dw`` (3x3 depthwise) -> ``_conv_proj`` (1x1, linear)."""
    inner = _num_filter(w, f"{name}_conv_sep_conv2d")
    x = w.conv(x, f"{name}_conv_sep_conv2d", f"{to}.layers.0.layers.0", kernel=1)
    x = w.bn(x, f"{name}_conv_sep_batchnorm", f"{to}.layers.0.layers.1")
    x = w.prelu(x, f"{name}_conv_sep_relu", f"{to}.layers.0.layers.2")
    x = w.conv(x, f"{name}_conv_dw_conv2d", f"{to}.layers.1.layers.0", kernel=3, stride=stride, pad=1, groups=inner)
    x = w.bn(x, f"{name}_conv_dw_batchnorm", f"{to}.layers.1.layers.1")
    x = w.prelu(x, f"{name}_conv_dw_relu", f"{to}.layers.1.layers.2")
    x = w.conv(x, f"{name}_conv_proj_conv2d", f"{to}.layers.2.layers.0", kernel=1)
    return w.bn(x, f"{name}_conv_proj_batchnorm", f"{to}.layers.2.layers.1")


def _map_residual(w: _Walker, x: int, name: str, to: str) -> tuple[int, int, int]:
    """A stack of residual bottlenecks ``{name}_block{i}``: (output, number of blocks, inner width)."""
    n, inner = 0, 0
    while w.has(f"{name}_block{n}_conv_sep_conv2d"):
        if n == 0:
            inner = _num_filter(w, f"{name}_block0_conv_sep_conv2d")
        y = _map_dresidual(w, x, f"{name}_block{n}", f"{to}.layers.{n}", stride=1)
        x = w.binary(_ADD_OPS, y, x)
        n += 1
    if n == 0:
        raise ConversionError(f"{w.g.path}: expected residual blocks {name}_block0... , not found")
    return x, n, inner


def _map_mobilefacenet(w: _Walker, x: int) -> tuple[str, dict[str, Any], int]:
    x = w.conv(x, "conv_1_conv2d", "layers.0.layers.0", kernel=3, stride=2, pad=1)
    x = w.bn(x, "conv_1_batchnorm", "layers.0.layers.1")
    x = w.prelu(x, "conv_1_relu", "layers.0.layers.2")
    c1 = _num_filter(w, "conv_1_conv2d")
    if w.has("conv_2_dw_conv2d"):
        x = w.conv(x, "conv_2_dw_conv2d", "layers.1.layers.0", kernel=3, pad=1, groups=c1)
        x = w.bn(x, "conv_2_dw_batchnorm", "layers.1.layers.1")
        x = w.prelu(x, "conv_2_dw_relu", "layers.1.layers.2")
        blocks, inner = [1], [128]  # inner[0] is unused with one stage-0 block: keep the variant's default
    else:
        x, n0, e0 = _map_residual(w, x, "res_2", "layers.1")
        blocks, inner = [n0], [e0]
    for i, (down, res) in enumerate((("dconv_23", "res_3"), ("dconv_34", "res_4"), ("dconv_45", "res_5"))):
        inner.append(_num_filter(w, f"{down}_conv_sep_conv2d"))
        x = _map_dresidual(w, x, down, f"layers.{2 + 2 * i}", stride=2)
        x, n, e = _map_residual(w, x, res, f"layers.{3 + 2 * i}")
        blocks.append(n)
        inner.append(e)
    x = w.conv(x, "conv_6sep_conv2d", "conv_sep.layers.0", kernel=1)
    x = w.bn(x, "conv_6sep_batchnorm", "conv_sep.layers.1")
    x = w.prelu(x, "conv_6sep_relu", "conv_sep.layers.2")
    head = _num_filter(w, "conv_6sep_conv2d")
    if not w.has("conv_6dw7_7_conv2d"):
        raise ConversionError(f"{w.g.path}: only the GDC output (conv_6dw7_7) of fmobilefacenet is mapped")
    x = w.conv(x, "conv_6dw7_7_conv2d", "features.layers.0.layers.0", kernel=7, groups=head)
    x = w.bn(x, "conv_6dw7_7_batchnorm", "features.layers.0.layers.1")
    x = w.fc(x, "pre_fc1", "features.layers.2")
    x = w.bn(x, "fc1", "features.layers.3")
    options: dict[str, Any] = {}
    if "features.layers.2.bias" not in w.tensors:
        options["fc_bias"] = False
    if blocks != [1, 4, 6, 2]:
        options["blocks"] = blocks
    if inner != [128, 128, 128, 256, 256, 512, 256]:
        options["inner_channels"] = inner
    if c1 != 64:
        options["scale"] = c1 // 64
    if head != 512:
        options["head_channels"] = head
    return "mbf_mxnet", options, x


# --------------------------------------------------------------------------------------------------
# The converter


def _output_node(graph: MXGraph) -> int:
    # insightface's graphs name the embedding fc1; training graphs go on to fc7 and a softmax.
    fc1 = graph.find("fc1")
    return fc1.index if fc1 is not None else graph.heads[0]


def convert_mxnet(
    prefix: str | Path, out: str | Path | None = None, *, epoch: int | None = None
) -> tuple[nn.Module, ModelContract]:
    """Convert insightface's ``PREFIX-symbol.json`` + ``PREFIX-EPOCH.params`` into our backbone (no MXNet).

    Args:
        prefix: the checkpoint prefix (``model`` for ``model-symbol.json`` / ``model-0000.params``).
        out: where to save the ``.safetensors`` model with its contract; None converts only.
        epoch: which ``.params`` to read; None takes the only (or latest) one beside the symbol.

    Returns:
        (module in eval mode, contract; with ``weights_sha256`` filled in when ``out`` is given).

    Raises:
        FileNotFoundError: the symbol or params file is missing.
        ConversionError: unreadable files, an unsupported op, or a layer that does not map (named).
    """
    symbol_path, params_path = mxnet_paths(prefix, epoch)
    graph = read_symbol(symbol_path)
    params = read_params(params_path)
    with reading(symbol_path, "cannot map this MXNet model", ConversionError):
        return _convert(graph, params, symbol_path, params_path, out)


def _convert(
    graph: MXGraph, params: dict[str, np.ndarray], symbol_path: Path, params_path: Path, out: str | Path | None
) -> tuple[nn.Module, ModelContract]:
    w = _Walker(graph, params, _output_node(graph))
    x, scale, shift = w.data_input()
    mapper: Callable[[_Walker, int], tuple[str, dict[str, Any], int]]
    if w.has("conv0") or w.has("bn_data"):
        mapper = _map_fresnet
    elif w.has("conv_1_conv2d"):
        mapper = _map_mobilefacenet
    else:
        first = next((n for n in graph.nodes if n.index in w.subgraph and n.op not in ("null",) + _SCALAR_OPS
                      + _IDENTITY_OPS), None)  # fmt: skip
        name = first.name if first is not None else "(none)"
        raise ConversionError(
            f"{symbol_path}: cannot map layer {name!r}: neither insightface's fresnet (conv0, stageS_unitU_*) "
            "nor fmobilefacenet (conv_1_conv2d, ...)"
        )
    arch, options, x = mapper(w, x)
    w.finish(x)
    fc_key = "fc.weight" if mapper is _map_fresnet else "features.layers.2.weight"
    embedding_size = int(w.tensors[fc_key].shape[0])
    source = f"{symbol_path.name} + {params_path.name}"
    module = build_and_load(
        arch, embedding_size, options, lambda m: state_dict_for(m, w.tensors, w.bns), f"{params_path}"
    )
    contract = ModelContract(
        architecture=arch,
        embedding_size=embedding_size,
        options=options,
        input_size=(112, 112),
        color="RGB",
        mean=-shift / scale + 0.0,  # + 0.0: no "-0.0" in the contract (its id hashes the JSON)
        std=1.0 / scale,
        source=f"{source} (insightface MXNet; converted by arcface convert mxnet)",
        license="the source model's terms (insightface's model zoo: non-commercial research use)",
    )
    if out is not None:
        contract = save_model(module, contract, out)
    return module, contract
