"""Embedder: shapes, normalisation, parity with the module, and the auto path on real aligned LFW faces."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import arcface
from arcface.eval.samples import aligned_lfw_sample
from arcface.inference.embedder import Embedder, RunnerChoice, choose_runner, resolve_auto
from arcface.inference.loader import load_model
from arcface.inference.runners import CPU_PASS_SIZE
from arcface.models import create_model

LFW = "data/lfw/lfw-deepfunneled"


@functools.lru_cache(maxsize=1)
def _aligned_lfw(root: str, n: int = 16) -> np.ndarray:
    """(n, 112, 112, 3) uint8 RGB: MTCNN + norm_crop on the first image of n spread-out LFW people."""
    return aligned_lfw_sample(root, n)


def _small_module() -> torch.nn.Module:
    return create_model("mbf", num_features=64).eval()


def test_public_name():
    assert arcface.Embedder is Embedder


def test_shape_and_unit_norm():
    emb = Embedder.from_module(_small_module(), precision="fp32", backend="torch")
    crops = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    out = emb.embed(crops)
    assert out.shape == (5, 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert emb.embed(crops[:0]).shape == (0, 64)


def test_passes_side_by_side_give_the_same_numbers_on_one_thread_each():
    """The Embedder spreads a call's passes over its threads: the same outputs as one thread, each pass on one torch
    intra-op thread (the plan the entry point applied), and the Embedder and its runner still pickle."""
    import pickle
    import threading

    from arcface.inference.runners import EagerRunner

    module = _small_module()
    crops = np.random.default_rng(5).integers(0, 256, (3 * CPU_PASS_SIZE + 5, 112, 112, 3), dtype=np.uint8)
    one = Embedder.from_module(module, precision="fp32", backend="torch", threads=1)
    two = Embedder.from_module(module, precision="fp32", backend="torch", threads=2)
    assert (one.pass_threads, two.pass_threads) == (1, 2)
    seen = []
    run = EagerRunner._run

    def spy(self, x):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return run(self, x)

    EagerRunner._run = spy
    try:
        np.testing.assert_array_equal(two.embed(crops, flip=True), one.embed(crops, flip=True))
    finally:
        EagerRunner._run = run
    pool = [t for name, t in seen if name.startswith("arcface-embed")]
    assert len(pool) == 8 and set(pool) == {1}  # both calls (crops, mirrored) of 4 passes each, in the pool
    copy = pickle.loads(pickle.dumps(two.runner))
    np.testing.assert_array_equal(copy(crops[:20]), two.runner(crops[:20]))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(two)).embed(crops), two.embed(crops))


def test_a_forked_child_gets_a_pool_of_its_own(monkeypatch):
    """After a fork the pool object is inherited without its threads: the Embedder makes a new one in the child (here
    the child is simulated by another process id) and still gives the same numbers."""
    import os

    emb = Embedder.from_module(_small_module(), precision="fp32", backend="torch", threads=2)
    crops = np.random.default_rng(6).integers(0, 256, (2 * CPU_PASS_SIZE, 112, 112, 3), dtype=np.uint8)
    ref = emb.embed(crops)
    parent_pool = emb._pool
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    np.testing.assert_array_equal(emb.embed(crops), ref)
    assert emb._pool is not parent_pool and emb._pool_pid == pid + 1


def test_fp32_equals_module_output():
    module = _small_module()
    crops = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    x = torch.from_numpy((crops.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(module(x), dim=1).numpy()
    for backend in ("torch", "jit", "onnx"):
        got = Embedder.from_module(module, precision="fp32", backend=backend).embed(crops)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_batches_split_into_passes_give_the_same_embeddings():
    """The Embedder runs CPU_PASS_SIZE crops per forward pass of a torch model on the CPU; a batch that spans several
    passes must equal one by one."""
    crops = np.random.default_rng(2).integers(0, 256, (CPU_PASS_SIZE * 2 + 3, 112, 112, 3), dtype=np.uint8)
    for precision in ("fp32", "bf16"):
        emb = Embedder.from_module(_small_module(), precision=precision, backend="torch")
        assert emb.pass_size == CPU_PASS_SIZE
        whole = emb.embed(crops)
        single = np.concatenate([emb.embed(c) for c in crops])
        np.testing.assert_allclose(whole, single, atol=1e-5 if precision == "fp32" else 2e-2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="precision"):
        resolve_auto("int4", "auto")
    with pytest.raises(ValueError, match="backend"):
        resolve_auto("auto", "tensorrt")
    with pytest.raises(ValueError, match="bf16"):
        resolve_auto("bf16", "onnx")


def test_auto_decision_table(monkeypatch):
    import arcface.runtime.amp as amp

    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert resolve_auto("auto", "auto") == ("bf16", "jit")  # the frozen bf16 graph
    assert resolve_auto("auto", "torch") == ("bf16", "torch")  # bf16 autocast, eager
    assert resolve_auto("bf16", "auto") == ("bf16", "torch")  # an explicit precision keeps eager torch
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert resolve_auto("auto", "jit") == ("fp32", "jit")


def test_the_runner_is_a_pure_choice_of_precision_backend_device_and_cpu():
    auto_jit = RunnerChoice("bf16", "jit", verify=True, fallback=RunnerChoice("bf16", "torch", verify=True))
    assert choose_runner("auto", "auto", native_bf16=True) == auto_jit  # verified; autocast if tracing fails
    assert choose_runner("auto", "auto", native_bf16=False) == RunnerChoice("fp32", "torch")  # nothing to verify
    assert choose_runner("auto", "onnx", native_bf16=True) == RunnerChoice(
        "fp32", "onnx", verify=True, fallback=RunnerChoice("fp32", "torch"))
    assert choose_runner("bf16", "jit", native_bf16=False) == RunnerChoice("bf16", "jit")  # asked: no fallback
    assert choose_runner("auto", "auto", device="cuda", native_bf16=True) == RunnerChoice("fp32", "torch")
    with pytest.raises(ValueError, match="on device cuda"):
        choose_runner("bf16", "auto", device="cuda")
    with pytest.raises(ValueError, match="bf16 runs on the torch backend only"):
        choose_runner("bf16", "onnx")


def test_building_and_running_changes_no_process_wide_setting_when_a_plan_is_handed_down(monkeypatch):
    """Only the entry point that decided the plan applies it: runners and the Embedder's passes set nothing."""
    from arcface.runtime import threads as tp

    plan = tp.decide("embed", threads=2)
    for name in ("set_num_threads", "set_num_interop_threads", "set_flush_denormal"):
        monkeypatch.setattr(torch, name, lambda *a, name=name: pytest.fail(f"torch.{name} called below the entry"))
    monkeypatch.setattr(tp, "apply", lambda p: pytest.fail("the plan was applied again"))
    crops = np.random.default_rng(4).integers(0, 256, (2 * CPU_PASS_SIZE + 1, 112, 112, 3), dtype=np.uint8)
    for backend in ("torch", "jit"):
        emb = Embedder.from_module(_small_module(), "fp32", backend, plan=plan)
        assert emb.pass_threads == 2 and emb.embed(crops).shape == (len(crops), 64)


def test_jit_bf16_is_close_to_float32_and_batch_invariant():
    module = _small_module()
    crops = np.random.default_rng(3).integers(0, 256, (21, 112, 112, 3), dtype=np.uint8)
    ref = Embedder.from_module(module, precision="fp32", backend="torch").embed(crops)
    emb = Embedder.from_module(module, precision="bf16", backend="jit")
    assert (emb.precision, emb.backend) == ("bf16", "jit")
    got = emb.embed(crops)
    assert (got * ref).sum(1).min() > 0.98
    np.testing.assert_allclose(np.concatenate([emb.embed(c) for c in crops[:3]]), got[:3], atol=2e-2)


def test_auto_uses_autocast_where_tracing_fails(monkeypatch):
    import arcface.inference.embedder as mod
    import arcface.runtime.amp as amp

    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)

    def refuse(*args, **kwargs):
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(mod, "FrozenRunner", refuse)
    with pytest.warns(UserWarning, match="tracing the module failed.*using torch bf16"):
        emb = Embedder.from_module(_small_module())
    assert (emb.precision, emb.backend) == ("bf16", "torch")
    with pytest.raises(RuntimeError, match="data-dependent"):  # asked for explicitly: the error stands
        Embedder.from_module(_small_module(), precision="bf16", backend="jit")


def test_auto_falls_back_when_accuracy_breaks(monkeypatch):
    import arcface.inference.embedder as mod

    monkeypatch.setattr(mod, "resolve_auto", lambda p, b, *_: ("bf16", "torch"))
    with pytest.warns(UserWarning, match="using float32"):
        emb = Embedder.from_module(_small_module(), min_cosine=2.0)
    assert (emb.precision, emb.min_cosine_checked) == ("fp32", 1.0)


@pytest.mark.shared
def test_auto_keeps_cosine_on_real_faces_default_model(shared):
    faces = _aligned_lfw(str(shared(LFW)))
    ref = load_model("default", precision="fp32", backend="torch").embed(faces)  # eager float32
    emb = load_model("default", precision="auto", calibration=faces[:8])
    assert emb.precision in ("fp32", "bf16")
    got = emb.embed(faces)
    assert got.shape == ref.shape
    assert (got * ref).sum(1).min() >= 0.99
    if emb.precision == "bf16":  # also the explicit path, uncalibrated
        bf = load_model("default", precision="bf16").embed(faces)
        assert (bf * ref).sum(1).min() >= 0.99


def test_load_model_default():
    emb = load_model("default", precision="fp32")
    out = emb.embed(np.zeros((2, 112, 112, 3), np.uint8))
    assert out.shape == (2, emb.contract.embedding_size) == (2, 192)
    assert "fp32/torch" in repr(emb)


def test_flip_fuses_raw_outputs_like_the_backends():
    """``embed(flip=True)`` is normalise(f(x) + f(hflip(x))) of the raw module output (DESIGN.md)."""
    module = _small_module()
    crops = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)

    def raw(c):
        x = torch.from_numpy((c.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            return module(x).numpy()

    fused = raw(crops) + raw(np.ascontiguousarray(crops[:, :, ::-1]))
    ref = fused / np.linalg.norm(fused, axis=1, keepdims=True)
    emb = Embedder.from_module(module, precision="fp32", backend="torch")
    assert emb.flip is False
    np.testing.assert_allclose(emb.embed(crops, flip=True), ref, atol=1e-4)
    plain = emb.embed(crops)
    assert np.abs(plain - ref).max() > 1e-3
    emb.flip = True
    np.testing.assert_allclose(emb.embed(crops), ref, atol=1e-4)
    np.testing.assert_allclose(emb.embed(crops, flip=False), plain, atol=1e-6)
    np.testing.assert_allclose(emb(crops), ref, atol=1e-4)  # calling it embeds
    assert "flip" in repr(emb)
    flipped = Embedder.from_module(module, precision="fp32", backend="torch", flip=True)
    np.testing.assert_allclose(flipped.embed(crops), ref, atol=1e-4)


def test_load_model_checks_names_before_loading(monkeypatch):
    import arcface.inference.loader as loader

    monkeypatch.setattr(loader, "read_model_file", lambda *a, **k: pytest.fail("loaded before checking the names"))
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        load_model("default", precision="half")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model("default", backend="cuda")


def test_an_untrained_network_whose_output_overflows_float32_keeps_its_fast_path(monkeypatch):
    """The accuracy check of "auto" must not read an overflow of the float32 reference as a disagreement."""
    import arcface.inference.embedder as mod

    class Huge(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _small_module()

        def forward(self, x):
            return self.net(x) * 1e30  # squares overflow float32

    monkeypatch.setattr(mod, "resolve_auto", lambda p, b, *_: ("bf16", "torch"))
    emb = Embedder.from_module(Huge())
    assert emb.precision == "bf16" and emb.min_cosine_checked > 0.98
    out = emb.embed(np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
