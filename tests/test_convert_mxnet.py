"""insightface MXNet checkpoints -> our backbones, without MXNet, checked against MXNet itself.

The originals are built by MXNet 1.9 in its own venv (``make mxnet-venv``: ``.venv-mxnet``, or
``$ARCFACE_MXNET_PYTHON``), called as a subprocess: ``tests/oracles/mxnet_build.py`` imports insightface's
symbol code from ``../shared/reference/oracles/insightface_mxnet``, gives the network random weights with
realistic BatchNorm statistics, saves ``PREFIX-symbol.json`` / ``PREFIX-0000.params`` and writes MXNet's
embeddings of 8 real aligned LFW faces (RGB 0..255 in, as insightface feeds them). This process, which
has no MXNet, converts with ``arcface convert mxnet`` and embeds the faces with ``FaceRecognizer``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _oracles import assert_agree, cosines, embed_converted, lfw_faces, oracle_dir
from arcface.inference.contract import read_contract
from arcface.inference.converters import ConversionError, convert_mxnet
from arcface.inference.converters.mxnet import read_params
from conftest import REPO, run_cli

DRIVER = REPO / "tests" / "oracles" / "mxnet_build.py"

#: name -> (driver arguments, expected architecture, options, embedding size, mean, std)
CASES = {
    "LResNet50E-IR": (dict(network="fresnet", num_layers=50), "r50", {}, 512, 127.5, 128.0),
    "LResNet100E-IR": (dict(network="fresnet", num_layers=100), "r100", {}, 512, 127.5, 128.0),
    "MobileFaceNet": (
        dict(network="fmobilefacenet", emb_size=128, net_output="GDC"), "mbf_mxnet", {}, 128, 127.5, 128.0
    ),
    # The variants: SE units, BatchNorm on the raw input (net_input 2), FC -> BN output without bn1 (J) ...
    "LResNet18E-IR-SE input2 outputJ": (
        dict(network="fresnet", num_layers=18, net_se=1, net_input=2, net_output="J"),
        "r18",
        dict(se=True, se_bias=True, se_act="prelu", input_bn=True, pre_fc_bn=False),
        512, 0.0, 1.0,
    ),
    # ... and the 7x7 stride-2 stem (net_input 0), BN -> Dropout -> FC output named fc1 (F).
    "LResNet34E-IR input0 outputF": (
        dict(network="fresnet", num_layers=34, net_input=0, net_output="F"),
        "r34",
        dict(stem_kernel=7, stem_stride=2, post_fc_bn=False),
        512, 127.5, 128.0,
    ),
}  # fmt: skip


def mxnet_python() -> Path:
    """The MXNet venv's interpreter; skips (fails under CI) when it has not been built."""
    py = Path(os.environ.get("ARCFACE_MXNET_PYTHON", REPO / ".venv-mxnet" / "bin" / "python"))
    if not py.exists():
        msg = f"the MXNet oracle venv {py} is absent (run `make mxnet-venv` or set ARCFACE_MXNET_PYTHON)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; `make test` builds it, so under CI this is a failure")
        pytest.skip(msg)
    return py


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """name -> (PREFIX, MXNet's embeddings), each built by MXNet once per module on first use."""
    root = tmp_path_factory.mktemp("mxnet")
    faces_file = root / "faces.npy"
    built: dict[str, tuple[Path, np.ndarray]] = {}

    def get(name: str) -> tuple[Path, np.ndarray]:
        if name not in built:
            py, oracles = mxnet_python(), oracle_dir("insightface_mxnet")
            if not faces_file.exists():
                np.save(faces_file, lfw_faces())
            prefix, emb = root / name.replace(" ", "_") / "model", root / f"{name}.npy"
            prefix.parent.mkdir()
            cmd = [py, DRIVER, "--oracles", oracles, "--faces", faces_file, "--prefix", prefix, "--emb", emb]
            for key, value in CASES[name][0].items():
                cmd += [f"--{key.replace('_', '-')}", str(value)]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, env=env)
            assert run.returncode == 0, f"MXNet oracle failed:\n{run.stderr[-3000:]}"
            built[name] = (prefix, np.load(emb))
        return built[name]

    return get


def test_mxnet_is_not_importable_in_the_project_venv():
    assert importlib.util.find_spec("mxnet") is None, f"{sys.executable} has mxnet; the importer must not need it"


@pytest.mark.shared
@pytest.mark.parametrize("name", list(CASES))
def test_matches_mxnet(name, original, tmp_path, capsys, monkeypatch):
    prefix, ref = original(name)
    _, arch, options, dim, mean, std = CASES[name]
    monkeypatch.setitem(sys.modules, "mxnet", None)  # `import mxnet` would raise: the converter cannot use it
    out = tmp_path / "converted.safetensors"
    rc, stdout, err = run_cli(capsys, "convert", "mxnet", prefix, "--out", out)
    assert rc == 0, err
    contract = read_contract(out)
    assert (contract.architecture, contract.options, contract.embedding_size) == (arch, options, dim)
    assert (contract.color, contract.mean, contract.std, contract.input_size) == ("RGB", mean, std, (112, 112))
    assert_agree(embed_converted(out, lfw_faces()), ref, f"MXNet {name}")  # prints the cosines (pytest -s)


def _copy_checkpoint(prefix: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(f"{prefix}-symbol.json", dest / "model-symbol.json")
    shutil.copy(f"{prefix}-0000.params", dest / "model-0000.params")
    return dest / "model"


def _edit_symbol(prefix: Path, edit) -> None:
    path = Path(f"{prefix}-symbol.json")
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _node(doc: dict, name: str) -> dict:
    return next(n for n in doc["nodes"] if n["name"] == name)


@pytest.mark.shared
def test_training_graph_converts_to_its_embedding(original, tmp_path):
    # insightface's training checkpoints go on from fc1 to fc7 and a softmax: only fc1's subgraph is mapped.
    prefix = _copy_checkpoint(original("MobileFaceNet")[0], tmp_path / "train")

    def add_head(doc):
        fc1 = next(i for i, n in enumerate(doc["nodes"]) if n["name"] == "fc1")
        n = len(doc["nodes"])
        doc["nodes"] += [
            {"op": "null", "name": "fc7_weight", "inputs": []},
            {"op": "FullyConnected", "name": "fc7", "attrs": {"num_hidden": "10", "no_bias": "True"},
             "inputs": [[fc1, 0, 0], [n, 0, 0]]},
            {"op": "null", "name": "softmax_label", "inputs": []},
            {"op": "SoftmaxOutput", "name": "softmax", "inputs": [[n + 1, 0, 0], [n + 2, 0, 0]]},
        ]  # fmt: skip
        doc["heads"] = [[n + 3, 0, 0]]

    _edit_symbol(prefix, add_head)
    _, with_head = convert_mxnet(prefix, tmp_path / "with_head.safetensors")
    _, plain = convert_mxnet(original("MobileFaceNet")[0], tmp_path / "plain.safetensors")
    assert with_head.architecture == "mbf_mxnet" and with_head.embedding_size == 128
    assert with_head.weights_sha256 == plain.weights_sha256  # the same weights, fc7 left out


def _cli_error(capsys, prefix: Path, out: Path) -> str:
    rc, _, err = run_cli(capsys, "convert", "mxnet", prefix, "--out", out)
    assert rc == 1 and err.count("\n") == 1 and err.startswith("arcface convert: error: "), err
    assert not out.exists()
    return err


@pytest.mark.shared
def test_bad_checkpoints_are_one_line(original, tmp_path, capsys):
    base = original("MobileFaceNet")[0]
    out = tmp_path / "out.safetensors"

    truncated = _copy_checkpoint(base, tmp_path / "truncated")
    params = Path(f"{truncated}-0000.params")
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    err = _cli_error(capsys, truncated, out)
    assert f"{params}: truncated MXNet params file" in err

    unknown = _copy_checkpoint(base, tmp_path / "unknown")
    _edit_symbol(unknown, lambda doc: _node(doc, "conv_2_dw_relu").update(op="Custom", attrs={"op_type": "x"}))
    assert "unsupported op 'Custom' at layer 'conv_2_dw_relu'" in _cli_error(capsys, unknown, out)

    stride = _copy_checkpoint(base, tmp_path / "stride")
    _edit_symbol(stride, lambda doc: _node(doc, "dconv_23_conv_dw_conv2d")["attrs"].update(stride="(1, 1)"))
    err = _cli_error(capsys, stride, out)
    assert "cannot map layer 'dconv_23_conv_dw_conv2d': stride (1, 1), expected (2, 2)" in err

    leaky = _copy_checkpoint(base, tmp_path / "leaky")
    _edit_symbol(leaky, lambda doc: _node(doc, "conv_1_relu")["attrs"].update(act_type="leaky"))
    assert "cannot map layer 'conv_1_relu': activation 'leaky'" in _cli_error(capsys, leaky, out)

    not_params = _copy_checkpoint(base, tmp_path / "junk")
    Path(f"{not_params}-0000.params").write_bytes(b"\x00" * 64)
    assert "not an MXNet params file" in _cli_error(capsys, not_params, out)

    rc, _, err = run_cli(capsys, "convert", "mxnet", tmp_path / "nothing", "--out", out)
    assert rc == 1 and "nothing-symbol.json does not exist" in err
    rc, _, err = run_cli(capsys, "convert", "mxnet", not_params, "--epoch", 7, "--out", out)
    assert rc == 1 and "model-0007.params does not exist" in err


@pytest.mark.shared
def test_converted_model_works_everywhere(original, tmp_path, capsys):
    """FaceRecognizer, the Embedder's fast path, ONNX export (parity) and the gallery on one converted model."""
    from arcface.gallery.store import Gallery
    from arcface.inference.loader import load_model

    prefix, ref = original("MobileFaceNet")
    path = tmp_path / "mbf.safetensors"
    assert run_cli(capsys, "convert", "mxnet", prefix, "--out", path)[0] == 0
    faces = lfw_faces()
    contract = read_contract(path)

    via_recognizer = embed_converted(path, faces)
    embedder = load_model(path)  # precision/backend "auto": the fastest path that keeps accuracy
    via_embedder = embedder.embed(faces)
    floor = 0.9999 if embedder.precision == "fp32" else 0.99
    assert cosines(via_embedder, ref).min() >= floor, (embedder.precision, embedder.backend)

    onnx_path = tmp_path / "mbf.onnx"
    rc, out, err = run_cli(capsys, "export", "--model", path, "--out", onnx_path)
    assert rc == 0, err
    min_cos = float(out.rsplit("min cosine", 1)[1].strip())
    assert min_cos >= 0.9999
    exported = load_model(onnx_path)  # the file's own contract: the same id, fed as the file says
    assert exported.contract.id == contract.id and exported.backend == "onnx"
    assert cosines(exported.embed(faces), ref).min() >= 0.9999

    with Gallery.open(tmp_path / "gallery", contract) as gallery:
        for i, emb in enumerate(via_recognizer):
            gallery.add_face(gallery.add_identity(f"person{i}"), emb, contract)
        hits = [gallery.search(e, k=1)[0].name for e in via_embedder]
    assert hits == [f"person{i}" for i in range(len(faces))]


def _ndarray(magic: int | None, array: np.ndarray, flag: int, stype: int = 0) -> bytes:
    """One NDArray as MXNet writes it (V1/V2/V3 magic), or in the legacy layout (magic None)."""
    if magic is None:  # before the magics: uint32 ndim and uint32 dims
        head = struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape)
    else:
        head = struct.pack("<I", magic) + (struct.pack("<i", stype) if magic != 0xF993FAC8 else b"")
        head += struct.pack(f"<i{array.ndim}q", array.ndim, *array.shape)
    return head + struct.pack("<iii", 1, 0, flag) + array.tobytes()


def _params_file(path: Path, arrays: list[bytes], names: list[str]) -> Path:
    body = struct.pack("<QQQ", 0x112, 0, len(arrays)) + b"".join(arrays) + struct.pack("<Q", len(names))
    body += b"".join(struct.pack("<Q", len(n.encode())) + n.encode() for n in names)
    path.write_bytes(body)
    return path


def test_params_reader_formats(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    h = np.array([1.5, -2.0], np.float16)
    for magic in (0xF993FAC8, 0xF993FAC9, 0xF993FACA, None):
        path = _params_file(tmp_path / "p.params", [_ndarray(magic, a, 0), _ndarray(magic, h, 2)], ["arg:a", "aux:h"])
        got = read_params(path)
        assert list(got) == ["arg:a", "aux:h"]
        np.testing.assert_array_equal(got["arg:a"], a)
        assert got["aux:h"].dtype == np.float16 and (got["aux:h"] == h).all()


def test_params_reader_refusals(tmp_path):
    a = np.ones((2, 2), np.float32)
    sparse = _params_file(tmp_path / "s.params", [_ndarray(0xF993FAC9, a, 0, stype=1)], ["arg:s"])
    with pytest.raises(ConversionError, match="sparse NDArray"):
        read_params(sparse)
    unnamed = _params_file(tmp_path / "u.params", [_ndarray(0xF993FAC9, a, 0)], [])
    with pytest.raises(ConversionError, match="1 arrays but 0 names"):
        read_params(unnamed)
    full = _params_file(tmp_path / "t.params", [_ndarray(0xF993FAC9, a, 0)], ["arg:a"]).read_bytes()
    for cut in (4, 30, len(full) - 20, len(full) - 1):
        (tmp_path / "cut.params").write_bytes(full[:cut])
        with pytest.raises(ConversionError, match="truncated MXNet params file"):
            read_params(tmp_path / "cut.params")
