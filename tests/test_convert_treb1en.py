"""TreB1eN InsightFace_Pytorch state dicts -> our backbones, checked against TreB1eN's own model.py.

The original networks are built from ``../shared/reference/oracles/treb1en/model.py`` (imported at test
time), given random weights with realistic BatchNorm statistics, saved as a state dict, run on 8 real
aligned LFW faces with TreB1eN's preprocessing, converted by ``arcface convert treb1en`` and embedded by
``FaceRecognizer(model=converted, ...).embed_batch(crops, aligned=True)``.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from _oracles import assert_agree, embed_converted, half_normalised, import_oracle, lfw_faces, randomize_
from arcface.inference.contract import read_contract
from conftest import run_cli

pytestmark = pytest.mark.shared

CASES = {
    # --arch: (how to build the original, expected architecture)
    "ir_se50": (lambda m: m.Backbone(50, 0.6, "ir_se"), "ir_se50"),
    "mobilefacenet": (lambda m: m.MobileFaceNet(512), "mbf_treb1en"),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """{arch: (state-dict file, original embeddings)} for every case, built once for this module."""
    oracle = import_oracle("treb1en", "model.py")
    faces = lfw_faces()
    x = half_normalised(faces)
    root = tmp_path_factory.mktemp("treb1en")
    built = {}
    for arch, (make, _) in CASES.items():
        net = randomize_(make(oracle), x, seed=len(built))
        with torch.no_grad():
            ref = net(x).numpy()  # (8, 512), TreB1eN's forward (it L2-normalises)
        path = root / f"model_{arch}.pth"
        torch.save(net.state_dict(), path)
        built[arch] = (path, ref)
    return built


@pytest.mark.parametrize("arch", list(CASES))
def test_matches_treb1en(arch, originals, tmp_path, capsys):
    path, ref = originals[arch]
    out = tmp_path / f"{arch}.safetensors"
    rc, stdout, err = run_cli(capsys, "convert", "treb1en", path, "--arch", arch, "--out", out)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    contract = read_contract(out)
    assert contract.architecture == CASES[arch][1]
    assert (contract.color, contract.mean, contract.std, contract.input_size) == ("RGB", 127.5, 127.5, (112, 112))
    assert contract.embedding_size == 512
    assert_agree(embed_converted(out, lfw_faces()), ref, f"TreB1eN {arch}")  # prints the cosines (pytest -s)


def test_wrong_architecture_is_one_line(originals, tmp_path, capsys):
    se_file, _ = originals["ir_se50"]
    rc, _, err = run_cli(capsys, "convert", "treb1en", se_file, "--arch", "ir50", "--out", tmp_path / "x.safetensors")
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("arcface convert: error: ")
    assert "weights do not fit ir50: unexpected layer1.0.se.fc1.weight" in err
    mbf_file, _ = originals["mobilefacenet"]
    y = tmp_path / "y.safetensors"
    rc, _, err = run_cli(capsys, "convert", "treb1en", mbf_file, "--arch", "ir_se50", "--out", y)
    assert rc == 1 and err.count("\n") == 1 and "unexpected key 'conv1.conv.weight'" in err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


class _Gadget:
    def __reduce__(self):  # what a malicious pickle would do; weights_only must never call it
        return (print, ("unpickled!",))


def test_only_tensors_are_unpickled(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.conv.weight": _Gadget()}, f, protocol=2)
    rc, out, err = run_cli(capsys, "convert", "treb1en", path, "--arch", "mobilefacenet", "--out", tmp_path / "o.st")
    assert rc == 1 and "unpickled!" not in out
    assert err.count("\n") == 1 and "not a weights-only PyTorch file" in err
