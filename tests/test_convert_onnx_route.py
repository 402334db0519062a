"""InsightFace_TF and arcface-caffe reach us as ONNX: graphs that take 0..255 BGR and normalise inside.

tf2onnx turns InsightFace_TF's graph into an NHWC-input model whose first nodes are ``Sub`` / ``Mul`` by
constants (initializers); caffe2onnx / MMdnn give arcface-caffe models an NCHW input and the same
arithmetic (often as ``Constant`` nodes). Both take BGR, which no graph records, so the caller says so.
``onnx_contract`` must then give mean 0 / std 1 (the graph does the rest), the right layout, and the
caller's colour; embedding through ``load_model`` must equal the graph's arithmetic done by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from arcface.inference.files import onnx_contract
from arcface.inference.loader import load_model
from conftest import require_module

onnx = require_module("onnx", "the all extra")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)  # Caffe's usual per-channel means, BGR order
SCALE = np.float32(0.0078125)
DIM = 16


def _graph(path, layout: str, normalise: bool, constants_as_nodes: bool, w: np.ndarray) -> None:
    """input -> [Sub mean -> Mul scale] -> [Transpose to NCHW] -> Flatten -> Gemm(w) -> embedding."""
    shape = ["N", 112, 112, 3] if layout == "NHWC" else ["N", 3, 112, 112]
    mean = MEAN_BGR.reshape((1, 1, 1, 3) if layout == "NHWC" else (1, 3, 1, 1))
    consts = {"mean": mean, "scale": np.array([SCALE], np.float32), "w": w}
    nodes, inits = [], []
    for name, value in consts.items():
        if constants_as_nodes and name != "w":
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        else:
            inits.append(numpy_helper.from_array(value, name))
    x = "data"
    if normalise:
        nodes.append(helper.make_node("Sub", [x, "mean"], ["centred"]))
        nodes.append(helper.make_node("Mul", ["centred", "scale"], ["x"]))
        x = "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("Flatten", [x], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w"], ["embedding"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", DIM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _by_hand(crops: np.ndarray, w: np.ndarray) -> np.ndarray:
    x = (crops[..., ::-1].astype(np.float32) - MEAN_BGR) * SCALE  # BGR, normalised, (N, H, W, 3)
    out = x.transpose(0, 3, 1, 2).reshape(len(x), -1) @ w.T  # (N, DIM)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "layout, constants_as_nodes", [("NHWC", False), ("NCHW", True)], ids=["InsightFace_TF-tf2onnx", "caffe2onnx"]
)
def test_foreign_graph_contract(tmp_path, layout, constants_as_nodes):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.01, (DIM, 3 * 112 * 112)).astype(np.float32)
    path = tmp_path / "foreign.onnx"
    _graph(path, layout, True, constants_as_nodes, w)

    contract = onnx_contract(path, color="BGR")
    assert (contract.layout, contract.color, contract.mean, contract.std) == (layout, "BGR", 0.0, 1.0)
    assert (contract.input_size, contract.embedding_size) == ((112, 112), DIM)
    assert "normalises its input inside the graph" in contract.source

    crops = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    got = load_model(path, contract=contract).embed(crops)
    assert (np.sum(got * _by_hand(crops, w), axis=1) > 0.99999).all()
    # The colour is the caller's to give: read as RGB the same graph embeds differently.
    as_rgb = load_model(path, contract=onnx_contract(path)).embed(crops)
    assert onnx_contract(path).color == "RGB"
    assert np.sum(as_rgb * _by_hand(crops, w), axis=1).min() < 0.999


def test_graph_without_input_arithmetic_keeps_the_preset(tmp_path):
    w = np.random.default_rng(1).normal(0, 0.01, (DIM, 3 * 112 * 112)).astype(np.float32)
    path = tmp_path / "plain.onnx"
    _graph(path, "NCHW", False, False, w)
    contract = onnx_contract(path)
    assert (contract.mean, contract.std, contract.color, contract.layout) == (127.5, 127.5, "RGB", "NCHW")
    # A named preset wins over the detection.
    _graph(tmp_path / "inside.onnx", "NHWC", True, False, w)
    assert onnx_contract(tmp_path / "inside.onnx", preset="insightface").mean == 127.5
