"""The embedding contract: JSON, id, compatibility, safetensors save/load, SHA checks, thresholds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from arcface.eval.metrics import calibrate_threshold
from arcface.inference.contract import (
    CONTRACT_KEY,
    TEMPLATES,
    ContractError,
    ModelContract,
    read_contract,
    read_model,
    save_model,
    weights_sha256,
)
from arcface.models import create_model

TINY = dict(width_mult=0.25, input_size=56)  # a CPU-sized IResNet-18
# The 112 template scaled to the 56x56 crop (a file's template points must lie inside its crop).
POINTS_56 = tuple((x / 2, y / 2) for x, y in TEMPLATES["arcface_112"])


def _contract(**overrides) -> ModelContract:
    base = dict(
        architecture="r18",
        options=dict(TINY),
        embedding_size=32,
        input_size=(56, 56),
        template_points=POINTS_56,
        weights_sha256="0" * 64,
        threshold=0.3,
        calibrated_on="toy pairs",
        source="tests",
        license="MIT",
    )
    return ModelContract(**{**base, **overrides})


def _tiny_model() -> torch.nn.Module:
    return create_model("r18", num_features=32, **TINY).eval()


# ------------------------------------------------------------------------------------------------
# the dataclass
# ------------------------------------------------------------------------------------------------
def test_json_round_trip():
    c = _contract(options={"width_mult": 0.25, "input_size": 56, "blocks": (1, 2)})
    text = c.to_json()
    d = json.loads(text)
    assert d["threshold_l2"] == pytest.approx(2 - 2 * 0.3)
    assert d["id"] == c.id and d["contract_version"] == 1
    back = ModelContract.from_json(text)
    assert back == c and back.to_json() == text
    assert back.input_size == (56, 56) and back.template_points == POINTS_56
    # no threshold: both forms are None
    c2 = _contract(threshold=None, calibrated_on=None)
    assert c2.threshold_l2 is None and ModelContract.from_json(c2.to_json()) == c2


def test_defaults_follow_design():
    c = ModelContract(architecture="r50", embedding_size=512)
    assert (c.input_size, c.color, c.mean, c.std, c.layout, c.template) == (
        (112, 112),
        "RGB",
        127.5,
        127.5,
        "NCHW",
        "arcface_112",
    )
    assert c.template_points[0] == (38.2946, 51.6963) and len(c.template_points) == 5


def test_id_is_stable_and_covers_the_embedding_fields():
    c = _contract(template_points=TEMPLATES["arcface_112"])
    # The id definition is part of the file format: a change here invalidates stored galleries.
    assert c.id == _contract(template_points=TEMPLATES["arcface_112"]).id == "1163c32b2ac32f54"
    fields = {
        "architecture": "r18",
        "options": {"input_size": 56, "width_mult": 0.25},
        "weights_sha256": "0" * 64,
        "input_size": [56, 56],
        "color": "RGB",
        "mean": 127.5,
        "std": 127.5,
        "template": "arcface_112",
        "template_points": [list(p) for p in TEMPLATES["arcface_112"]],
        "embedding_size": 32,
    }
    key = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert c.id == hashlib.sha256(key).hexdigest()[:16]
    # int vs float spellings and tuple vs list do not change it
    assert _contract(std=127.5, mean=127.5).id == _contract(std=np.float32(127.5), mean=127.5).id
    assert _contract(input_size=[56, 56], template_points=TEMPLATES["arcface_112"]).id == c.id
    # what does not change the embedding space does not change the id
    for field, value in [
        ("threshold", 0.5),
        ("calibrated_on", "other pairs"),
        ("source", "x"),
        ("license", "y"),
        ("layout", "NHWC"),
    ]:
        other = dataclasses.replace(c, **{field: value})
        assert other.id == c.id and other.compatible(c), field
    # everything that does, does
    for field, value in [
        ("architecture", "r34"),
        ("options", {"width_mult": 0.5, "input_size": 56}),
        ("weights_sha256", "1" * 64),
        ("input_size", (112, 112)),
        ("color", "BGR"),
        ("mean", 127.0),
        ("std", 128.0),
        ("template", "other"),
        ("template_points", ((0, 0),) * 5),
        ("embedding_size", 64),
    ]:
        other = dataclasses.replace(c, **{field: value})
        assert other.id != c.id and not other.compatible(c) and not c.compatible(other), field


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"color": "RGBA"}, "color"),
        ({"layout": "CHW"}, "layout"),
        ({"std": 0}, "std"),
        ({"embedding_size": 0}, "embedding_size"),
        ({"input_size": (112,)}, "input_size"),
        ({"template_points": ((1, 2),) * 4}, "5"),
        ({"weights_sha256": "abc"}, "weights_sha256"),
        ({"threshold": 1.5}, "threshold"),
        ({"options": {"x": object()}}, "options"),
    ],
)
def test_bad_values_raise(overrides, match):
    with pytest.raises(ContractError, match=match):
        _contract(**overrides)


@pytest.mark.parametrize(
    "field, value",
    [
        ("input_size", [20000, 20000]),
        ("input_size", [0, 112]),
        ("input_size", [112.5, 112]),
        ("input_size", ["112", 112]),
        ("embedding_size", 100_000_000),
        ("embedding_size", True),
        ("embedding_size", 1e300),
        ("mean", float("nan")),
        ("std", float("inf")),
        ("std", 1e-300),
        ("mean", 2**1100),
        ("template_points", [[float("nan"), 0.0]] * 5),
        ("template_points", [[1e30, 1.0]] * 5),
        ("template_points", [[10.0, 10.0]] * 4 + [[100.0, 10.0]]),  # outside the 56x56 crop
        ("template_points", [[1, 2, 3]] * 5),
        ("threshold", float("nan")),
        ("identification_threshold", "0.5"),
        ("source", "x" * 5_000),
        ("architecture", ""),
        ("options", {"layers": [10**9]}),
        ("options", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}),
        ("options", {"x": "y" * 10_000}),
        ("options", []),
    ],
)
def test_a_contract_read_from_a_file_is_bounded(field, value):
    """Every number finite and within its bound, points inside the crop, text and options capped: the error names
    the field, so a model file cannot ask the loader for gigabytes or for NaN crops."""
    d = json.loads(_contract().to_json())
    d.pop("id")
    d[field] = value
    with pytest.raises(ContractError, match=f"contract field {field}"):
        ModelContract.from_json(json.dumps(d))


def test_a_contract_nested_or_long_beyond_its_caps_is_refused():
    d = json.loads(_contract().to_json())
    d.pop("id")
    text = json.dumps(d).replace('"options": {', '"options": {"deep": ' + "[" * 100_000 + "]" * 100_000 + ", ")
    with pytest.raises(ContractError, match="contract field options: nested"):
        ModelContract.from_json(text)
    with pytest.raises(ContractError, match="characters of JSON"):
        ModelContract.from_json(json.dumps({**d, "source": "s" * 70_000}))
    with pytest.raises(ContractError, match="expected JSON text"):
        ModelContract.from_json(None)


def test_from_json_rejects_unknown_missing_and_tampered():
    d = json.loads(_contract().to_json())
    with pytest.raises(ContractError, match="unknown key.*colour"):
        ModelContract.from_json(json.dumps({**d, "colour": "RGB"}))
    missing = {k: v for k, v in d.items() if k != "embedding_size"}
    with pytest.raises(ContractError, match="embedding_size"):
        ModelContract.from_json(json.dumps(missing))
    with pytest.raises(ContractError, match="id"):
        ModelContract.from_json(json.dumps({**d, "std": 128.0}))  # fields edited, stored id kept
    with pytest.raises(ContractError, match="threshold_l2"):
        ModelContract.from_json(json.dumps({**d, "threshold_l2": 0.1}))
    with pytest.raises(ContractError, match="version"):
        ModelContract.from_json(json.dumps({**d, "contract_version": 99}))
    with pytest.raises(ContractError, match="JSON"):
        ModelContract.from_json("{not json")


def test_summary_names_the_essentials():
    s = _contract().summary()
    assert "r18" in s and "56x56 RGB" in s and "cos > 0.3000" in s and "squared L2 < 1.4000" in s


# ------------------------------------------------------------------------------------------------
# weights hash and files
# ------------------------------------------------------------------------------------------------
def test_weights_sha256_definition():
    a = {"b": torch.arange(6, dtype=torch.float32), "a": torch.ones(2, 2)}
    h = weights_sha256(a)
    assert h == weights_sha256(dict(reversed(list(a.items()))))  # key order of the dict does not matter
    assert h != weights_sha256({**a, "b": a["b"].reshape(2, 3)})  # shapes are hashed
    assert h != weights_sha256({**a, "b": a["b"].double()})  # dtypes are hashed
    assert h != weights_sha256({**a, "b": a["b"] + 1})  # values are hashed
    # the documented byte stream, spelled out
    ref = hashlib.sha256()
    for k in ("a", "b"):
        t = a[k]
        ref.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode() + t.numpy().tobytes())
    assert h == ref.hexdigest()


def test_save_load_round_trip(tmp_path):
    model = _tiny_model()
    c = _contract(weights_sha256="")
    written = save_model(model, c, tmp_path / "m.safetensors")
    assert written.weights_sha256 == weights_sha256(model.state_dict())
    assert written == dataclasses.replace(c, weights_sha256=written.weights_sha256)
    loaded, c2 = read_model(tmp_path / "m.safetensors")
    assert c2 == written and read_contract(tmp_path / "m.safetensors") == written
    assert not loaded.training
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_refuses_a_module_that_does_not_fit(tmp_path):
    with pytest.raises(ContractError, match="does not match architecture"):
        save_model(_tiny_model(), _contract(embedding_size=64), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_sha_mismatch_is_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(_tiny_model(), _contract(), path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    key = sorted(sd)[0]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] += 1.0
    save_file(sd, str(path), metadata=meta)  # the weights change, the contract does not
    with pytest.raises(ContractError, match="SHA-256 .* does not match"):
        read_model(path)


def test_files_without_a_contract_or_not_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_model(tmp_path / "nope.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(ContractError, match="no arcface contract"):
        read_model(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ContractError, match="junk.safetensors.*not a safetensors"):
        read_model(junk)
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad), metadata={CONTRACT_KEY: "{}"})
    with pytest.raises(ContractError, match="bad.safetensors"):
        read_model(bad)


def test_calibrate_threshold_toy():
    t, acc = calibrate_threshold([0.1, 0.2, 0.3, 0.8, 0.9], [0, 0, 1, 1, 1])
    assert t == pytest.approx(0.25) and acc == 1.0
    # overlapping classes: two cuts reach 3/4; the lower wins
    t, acc = calibrate_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    assert t == pytest.approx(0.225) and acc == 0.75
    # one class only: the threshold sits outside the scores
    t, acc = calibrate_threshold([0.5, 0.6], [True, True])
    assert t < 0.5 and acc == 1.0
    t, acc = calibrate_threshold([0.5, 0.6], [False, False])
    assert t >= 0.6 and acc == 1.0
    # tied scores cannot be split
    t, acc = calibrate_threshold([0.5, 0.5, 0.5], [True, False, True])
    assert acc == pytest.approx(2 / 3) and t < 0.5
    with pytest.raises(ValueError, match="labels"):
        calibrate_threshold([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="finite"):
        calibrate_threshold([0.1, float("nan")], [True, False])


def test_calibrate_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        y = rng.random(n) < 0.5
        s = np.round(rng.normal(y * 0.4, 0.3), 2)  # rounding makes ties
        t, acc = calibrate_threshold(s, y)
        candidates = np.concatenate([[-np.inf], np.unique(s)])
        best = max(np.mean((s > c) == y) for c in candidates)
        assert acc == pytest.approx(best)
        assert np.mean((s > t) == y) == pytest.approx(acc)


def test_the_shape_check_draws_no_random_numbers():
    """Reading a model builds it on the meta device for its shapes without drawing its random initialisation (torch's
    meta kernel for that imports the compiler stack: seconds of start-up for every command that loads a model)."""
    code = (
        "import sys\nfrom arcface.inference.contract import read_model\nfrom arcface.inference.zoo import "
        "resolve_model_path\nread_model(resolve_model_path('default'))\nprint('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
