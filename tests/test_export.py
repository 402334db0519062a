"""An exported model comes back as itself: ONNX round trip (contract, threshold, similarities, decisions), shapes,
file permissions, and foreign clients (OpenCV's dnn, insightface 2.1 in a side venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from arcface import FaceRecognizer
from arcface.gallery import Gallery
from arcface.inference.contract import read_contract
from arcface.inference.export import INPUT_KEY, export_onnx
from arcface.inference.loader import load_model
from arcface.inference.zoo import resolve_model_path
from conftest import REPO, photo, require_shared, run_cli

LFW = "data/lfw/lfw-deepfunneled"
INSIGHTFACE_PYTHON = Path(os.environ.get("ARCFACE_INSIGHTFACE_PYTHON", REPO / ".venv-insightface" / "bin" / "python"))


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "default.onnx"
    export_onnx(load_model("default", precision="fp32").module, read_contract(resolve_model_path("default")), out)
    return out


@pytest.fixture(scope="module")
def trained_r18(tmp_path_factory) -> Path:
    """A tiny r18 trained by `arcface train` (112x112 input, so it crops photos like any model)."""
    out = tmp_path_factory.mktemp("r18")
    rc = subprocess.run(
        [sys.executable, "-m", "arcface", "train",
         str(REPO / "configs" / "smoke_synthetic.yaml"), "--out", str(out), "--max-steps", "3", "--no-progress",
         "--set", "model.options={width_mult: 0.25, input_size: 112}", "--set", "data.params.image_size=112",
         "--set", "data.batch_size=4"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert rc.returncode == 0, rc.stderr[-2000:]
    return out / "backbone.safetensors"


def _pairs(lfw: Path) -> list[tuple[Path, Path]]:
    """10 same and 10 different View 1 test pairs."""
    lines = require_shared("data/lfw/pairsDevTest.txt").read_text().splitlines()[1:]
    f = [line.split("\t") for line in lines]
    same = [(photo(lfw, x[0], int(x[1])), photo(lfw, x[0], int(x[2]))) for x in f if len(x) == 3][:10]
    diff = [(photo(lfw, x[0], int(x[1])), photo(lfw, x[2], int(x[3]))) for x in f if len(x) == 4][:10]
    return same + diff


def _round_trip(source, exported: Path, lfw: Path, threshold: float | None = None) -> None:
    """verify() through the exported file gives the source model's similarities (1e-4) and decisions."""
    a = FaceRecognizer(source, precision="fp32", threshold=threshold)
    b = FaceRecognizer(exported, threshold=threshold)
    assert b.embedder.backend == "onnx"
    assert b.contract.id == a.contract.id and b.threshold == a.threshold is not None
    for x, y in _pairs(lfw):
        va, vb = a.verify(x, y), b.verify(x, y)
        assert abs(va.similarity - vb.similarity) < 1e-4, (x, y, va, vb)
        assert va.same == vb.same


@pytest.mark.shared
def test_default_model_round_trip(default_onnx, lfw, tmp_path):
    _round_trip("default", default_onnx, lfw)
    # a gallery bound to the default model takes embeddings from the exported file, and the reverse
    rec = FaceRecognizer(default_onnx)
    with Gallery.open(tmp_path / "g", read_contract(resolve_model_path("default"))) as g:
        ident = g.add_identity("Colin Powell")
        g.add_face(ident, rec.embed(photo(lfw, "Colin_Powell", 1)), rec.contract.id)
        query = FaceRecognizer(precision="fp32").embed(photo(lfw, "Colin_Powell", 2))
        assert g.search(query, 1)[0].name == "Colin Powell"


@pytest.mark.shared
def test_trained_r18_round_trip(trained_r18, lfw, tmp_path):
    out = tmp_path / "r18.onnx"
    run_cli_ok("export", "--model", trained_r18, "--out", out)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta[INPUT_KEY] == "normalized"  # our normalisation: the graph takes what the module takes
    assert json.loads(meta["arcface_contract"])["id"] == read_contract(trained_r18).id
    _round_trip(trained_r18, out, lfw, threshold=0.3)


def run_cli_ok(*args) -> str:
    """``python -m arcface ARGS`` in a child process; its stdout."""
    proc = subprocess.run([sys.executable, "-m", "arcface", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.shared
def test_verify_cli_through_the_exported_file(default_onnx, lfw, capsys):
    """The issue's acceptance: `arcface verify A B --model m.onnx` = `--model default` (threshold, decision)."""
    a, b = photo(lfw, "Colin_Powell", 1), photo(lfw, "Colin_Powell", 2)
    outs = []
    for model in ("default", default_onnx):
        rc, out, err = run_cli(capsys, "verify", a, b, "--model", model, "--json", "--precision", "fp32")
        assert rc == 0, err
        outs.append(json.loads(out))
    x, y = outs
    assert (x["threshold"], x["decision"], x["contract"]) == (y["threshold"], y["decision"], y["contract"])
    assert abs(x["similarity"] - y["similarity"]) < 1e-4


def test_shapes_metadata_and_head_nodes(default_onnx):
    model = onnx.load(str(default_onnx))
    onnx.checker.check_model(model)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(inferred.graph.input[0]) == ["batch", 3, 112, 112]
    assert dims(inferred.graph.output[0]) == ["batch", 192]
    meta = {p.key: p.value for p in model.metadata_props}
    contract = read_contract(resolve_model_path("default"))
    assert json.loads(meta["arcface_contract"])["id"] == contract.id and meta[INPUT_KEY] == "rgb_0_255"
    # insightface's rule: a node named Sub* and one named Mul* among the first 8 -> it feeds raw pixels
    heads = [n.name for n in model.graph.node[:8]]
    assert any(n.startswith("Sub") for n in heads) and any(n.startswith("Mul") for n in heads)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(default_onnx), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((5, 3, 112, 112), np.float32)})[0]
    assert out.shape == (5, 192) and [o.shape for o in sess.get_outputs()] == [["batch", 192]]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_file_respects_the_umask(tmp_path, umask):
    model = load_model("default", precision="fp32")
    old = os.umask(umask)
    try:
        export_onnx(model.module, model.contract, tmp_path / "m.onnx", check=False)
    finally:
        os.umask(old)
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name != "m.onnx"]  # no temporary file left


@pytest.mark.shared
def test_opencv_dnn_loads_it(default_onnx, lfw):
    import cv2

    rec = FaceRecognizer(precision="fp32")
    crop = rec.main_crop(photo(lfw, "Colin_Powell", 1))  # (112, 112, 3) RGB
    net = cv2.dnn.readNet(str(default_onnx))
    net.setInput(np.ascontiguousarray(crop.astype(np.float32).transpose(2, 0, 1)[None]))  # raw RGB pixels
    got = net.forward().reshape(-1)
    want = rec.embedder.embed(crop)[0]
    assert float(got @ want / np.linalg.norm(got)) > 0.9999


INSIGHTFACE_SCRIPT = """
import json, sys
import numpy as np
from insightface.model_zoo import get_model
out = {}
for path, crops in zip(sys.argv[1::2], sys.argv[2::2]):
    model = get_model(path)
    faces = np.load(crops)  # (N, 112, 112, 3) RGB
    feats = model.get_feat([np.ascontiguousarray(f[:, :, ::-1]) for f in faces])  # it takes BGR (cv2 convention)
    out[path] = {"kind": type(model).__name__, "mean": model.input_mean, "std": model.input_std,
                 "feats": feats.tolist()}
print(json.dumps(out))
"""


@pytest.mark.shared
def test_insightface_reads_the_exported_files(default_onnx, trained_r18, lfw, tmp_path):
    """insightface 2.1 (a side venv, as its users run it) loads our files as ArcFaceONNX and its embeddings are ours.

    It reads no metadata: for the default model (std 128) it sees our Sub/Mul head and feeds raw pixels (reports mean 0,
    std 1: the graph applies (x - 127.5) / 128); for our own backbones it reports (and applies) 127.5 / 127.5.
    """
    if not INSIGHTFACE_PYTHON.exists():
        msg = f"the insightface side venv {INSIGHTFACE_PYTHON} is absent (make .venv-insightface builds it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    rec = FaceRecognizer(precision="fp32")
    crops = np.stack([rec.main_crop(photo(lfw, n, 1)) for n in ("Colin_Powell", "Tony_Blair", "Laura_Bush")])
    np.save(tmp_path / "crops.npy", crops)
    r18_onnx = tmp_path / "r18.onnx"
    r18 = load_model(trained_r18, precision="fp32")
    export_onnx(r18.module, r18.contract, r18_onnx)
    proc = subprocess.run(
        [str(INSIGHTFACE_PYTHON), "-c", INSIGHTFACE_SCRIPT, str(default_onnx), str(tmp_path / "crops.npy"),
         str(r18_onnx), str(tmp_path / "crops.npy")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = {str(default_onnx): rec.embedder.embed(crops), str(r18_onnx): r18.embed(crops)}
    theirs = res[str(default_onnx)]
    assert theirs["kind"] == "ArcFaceONNX" and (theirs["mean"], theirs["std"]) == (0.0, 1.0)
    assert res[str(r18_onnx)]["kind"] == "ArcFaceONNX" and res[str(r18_onnx)]["std"] == 127.5
    for path, emb in ours.items():
        feats = np.asarray(res[path]["feats"])
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        assert (feats * emb).sum(1).min() >= 0.99999, path
