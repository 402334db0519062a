"""FaceRecognizer embeds through the Embedder: precision recorded, fp32 numbers unchanged, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from arcface import FaceRecognizer
from arcface.inference.contract import read_contract
from arcface.inference.embedder import Embedder
from arcface.inference.loader import load_model
from arcface.inference.zoo import resolve_model_path
from conftest import plain_fp32, require_module


def _crops(n: int = 3, seed: int = 0) -> np.ndarray:
    """(n, 112, 112, 3) uint8 smooth random images (blocky noise, as the Embedder's synthetic batch)."""
    small = np.random.default_rng(seed).integers(0, 256, (n, 14, 14, 3)).astype(np.uint8)
    return np.ascontiguousarray(small.repeat(8, axis=1).repeat(8, axis=2))


@pytest.fixture(scope="module")
def fp32_rec():
    return FaceRecognizer(precision="fp32")


def test_recognizer_embeds_through_the_embedder(fp32_rec):
    rec = fp32_rec
    assert isinstance(rec.embedder, Embedder)
    assert (rec.precision, rec.embedder.precision, rec.embedder.backend) == ("fp32", "fp32", "torch")
    assert rec.contract.id == read_contract(resolve_model_path("default")).id
    assert "fp32/torch" in repr(rec)


def test_fp32_path_gives_the_numbers_of_before(fp32_rec):
    """Before the Embedder, FaceRecognizer embedded with the plain float32 module: the same numbers."""
    crops = _crops(4)
    before = plain_fp32(crops)
    np.testing.assert_allclose(fp32_rec.embed_batch(list(crops), aligned=True), before, atol=1e-5)
    np.testing.assert_allclose(fp32_rec.embed(crops[0], aligned=True), before[0], atol=1e-5)
    flipped = FaceRecognizer(precision="fp32", flip=True)
    assert flipped.embedder.flip
    before_flip = plain_fp32(crops, flip=True)
    np.testing.assert_allclose(flipped.embed_batch(list(crops), aligned=True), before_flip, atol=1e-5)


def test_auto_takes_bf16_on_a_native_bf16_cpu(monkeypatch):
    import arcface.runtime.amp as amp

    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    rec = FaceRecognizer()
    assert rec.precision == "bf16" and rec.embedder.backend == "jit"
    assert rec.embedder.min_cosine_checked >= 0.99
    crops = _crops(3)
    got = rec.embed_batch(list(crops), aligned=True)
    ref = plain_fp32(crops)
    assert (got * ref).sum(1).min() >= 0.99
    assert FaceRecognizer(precision="bf16").precision == "bf16"


def test_bad_precision_or_backend_names_say_the_choices():
    with pytest.raises(ValueError, match=r"precision must be one of auto, fp32, bf16, got 'fp16'"):
        FaceRecognizer(precision="fp16")
    with pytest.raises(ValueError, match=r"backend must be one of auto, torch, jit, onnx, got 'tensorrt'"):
        FaceRecognizer(backend="tensorrt")
    with pytest.raises(ValueError, match="bf16 runs on the torch backend only"):
        FaceRecognizer(precision="bf16", backend="onnx")


def test_a_ready_embedder_is_used_as_is():
    from arcface.inference.contract import ModelContract
    from arcface.models import create_model

    module = create_model("r18", width_mult=0.25, num_features=64)
    emb = Embedder.from_module(module, "fp32", "torch", contract=ModelContract("r18", 64, options={"width_mult": 0.25}))
    rec = FaceRecognizer(emb, precision="bf16")  # precision does not apply to a ready embedder
    assert rec.embedder is emb and rec.precision == "fp32"
    default = load_model("default", precision="fp32")
    assert FaceRecognizer(default).embedder is default


@pytest.mark.shared
def test_sface_runs_fp32_on_onnxruntime(shared):
    require_module("onnxruntime", "the all extra")
    shared("weights/recognition")
    rec = FaceRecognizer("sface")
    assert (rec.precision, rec.embedder.backend) == ("fp32", "onnx")
    crops = _crops(2)
    np.testing.assert_allclose(rec.embed_batch(list(crops), aligned=True),
                               load_model("sface").embed(crops), atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="ONNX model: only precision fp32"):
        FaceRecognizer("sface", precision="bf16")
