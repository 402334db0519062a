"""face.evoLVe state dicts -> our backbones, checked against face.evoLVe's own backbone files.

The original networks are built from ``../shared/reference/oracles/face_evolve/{model_irse,model_resnet,
MobileFaceNets}.py`` (imported at test time), given random weights with realistic BatchNorm statistics,
saved as a state dict, run on 8 real aligned LFW faces with face.evoLVe's preprocessing (RGB, mean 0.5,
std 0.5), converted by ``arcface convert evolve`` and embedded by ``FaceRecognizer(..., aligned=True)``.
"""

from __future__ import annotations

import pytest
import torch

from _oracles import assert_agree, embed_converted, half_normalised, import_oracle, lfw_faces, randomize_
from arcface.inference.contract import read_contract
from conftest import run_cli

pytestmark = pytest.mark.shared

CASES = {
    # --arch: (oracle file, how to build the original, expected architecture)
    "IR_50": ("model_irse.py", lambda m: m.IR_50([112, 112]), "ir50"),
    "IR_SE_152": ("model_irse.py", lambda m: m.IR_SE_152([112, 112]), "ir_se152"),
    "MobileFaceNet": ("MobileFaceNets.py", lambda m: m.MobileFaceNet(512, 7, 7), "mbf_treb1en"),
    "ResNet_50": ("model_resnet.py", lambda m: m.ResNet_50([112, 112]), "resnet50"),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """{arch: (state-dict file, original embeddings)}, built once for this module."""
    x = half_normalised(lfw_faces())
    root = tmp_path_factory.mktemp("evolve")
    built = {}
    for arch, (filename, make, _) in CASES.items():
        net = randomize_(make(import_oracle("face_evolve", filename)), x, seed=10 + len(built))
        with torch.no_grad():
            ref = net(x).numpy()  # (8, 512), face.evoLVe's forward
        path = root / f"backbone_{arch}.pth"
        torch.save(net.state_dict(), path)
        built[arch] = (path, ref)
    return built


@pytest.mark.parametrize("arch", list(CASES))
def test_matches_face_evolve(arch, originals, tmp_path, capsys):
    path, ref = originals[arch]
    out = tmp_path / f"{arch}.safetensors"
    rc, stdout, err = run_cli(capsys, "convert", "evolve", path, "--arch", arch, "--out", out)
    assert rc == 0, err
    contract = read_contract(out)
    assert contract.architecture == CASES[arch][2]
    assert (contract.color, contract.mean, contract.std, contract.input_size) == ("RGB", 127.5, 127.5, (112, 112))
    assert_agree(embed_converted(out, lfw_faces()), ref, f"face.evoLVe {arch}")  # prints the cosines (pytest -s)


def test_wrong_architecture_is_one_line(originals, tmp_path, capsys):
    ir50, _ = originals["IR_50"]
    rc, _, err = run_cli(capsys, "convert", "evolve", ir50, "--arch", "IR_101", "--out", tmp_path / "x.safetensors")
    assert rc == 1 and err.count("\n") == 1 and err.startswith("arcface convert: error: ")
    assert "weights do not fit ir100: missing layer3.0.downsample.0.weight" in err
    resnet, _ = originals["ResNet_50"]
    rc, _, err = run_cli(capsys, "convert", "evolve", resnet, "--arch", "IR_SE_50", "--out", tmp_path / "y.safetensors")
    assert rc == 1 and err.count("\n") == 1 and "not a face.evoLVe IR_SE_50 state dict: unexpected key" in err
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it, naming the known architectures
        run_cli(capsys, "convert", "evolve", ir50, "--arch", "IR_999", "--out", tmp_path / "z.safetensors")
    assert exit_.value.code == 1 and "invalid choice: 'IR_999'" in capsys.readouterr().err
