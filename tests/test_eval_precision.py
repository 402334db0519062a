"""The evaluation embeds through the Embedder; its cache key holds the precision and backend that ran."""

from __future__ import annotations

import json
import pickle

import cv2
import numpy as np
import pytest

from arcface.cli import main
from arcface.eval import EvalCache, PairSet, embed_pair_set
from arcface.inference.loader import load_model
from conftest import plain_fp32


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    small = np.random.default_rng(seed).integers(0, 256, (n, 14, 14, 3)).astype(np.uint8)
    out = []
    for img in small.repeat(8, axis=1).repeat(8, axis=2):
        ok, buf = cv2.imencode(".png", img)
        assert ok
        out.append(buf.tobytes())
    return out


def _aligned_set(n_pairs: int = 20) -> PairSet:
    images = _jpegs(2 * n_pairs)
    pairs = np.arange(2 * n_pairs).reshape(n_pairs, 2)
    labels = np.arange(n_pairs) % 2 == 0
    return PairSet("synthetic", images, pairs, labels, np.arange(n_pairs) // 2, aligned=True)


def test_the_embedder_says_which_path_runs():
    assert (lambda e: (e.precision, e.backend))(load_model("default", precision="fp32")) == ("fp32", "torch")
    assert (lambda e: (e.precision, e.backend))(load_model("default", precision="bf16")) == ("bf16", "torch")


def test_cache_key_keeps_fp32_and_bf16_apart(tmp_path):
    pairset = _aligned_set()
    cache = EvalCache(tmp_path / "cache")
    fp32 = load_model("default", precision="fp32", flip=True)
    bf16 = load_model("default", precision="bf16", flip=True)
    a, sa = embed_pair_set(pairset, fp32, cache=cache, progress=False)
    b, sb = embed_pair_set(pairset, bf16, cache=cache, progress=False)
    assert not sa.embeddings_cached and not sb.embeddings_cached  # bf16 did not read fp32's entry
    assert np.abs(a - b).max() > 0  # and they are really different numbers ...
    assert (a * b).sum(1).min() > 0.99  # ... of the same model
    a2, sa2 = embed_pair_set(pairset, fp32, cache=cache, progress=False)
    b2, sb2 = embed_pair_set(pairset, bf16, cache=cache, progress=False)
    assert sa2.embeddings_cached and sb2.embeddings_cached
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_array_equal(b2, b)
    # The fp32 Embedder gives the numbers of the plain float32 module with flip (the evaluation before).
    np.testing.assert_allclose(a, plain_fp32(
        np.stack([cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for x in pairset.images]),
        flip=True,
    ), atol=1e-5)  # fmt: skip


def _bin(tmp_path) -> str:
    imgs = _jpegs(40, seed=1)
    flags = [k % 2 == 0 for k in range(20)]
    p = tmp_path / "tiny.bin"
    p.write_bytes(pickle.dumps((imgs, flags), protocol=4))
    return str(p)


def test_eval_cli_precision_option(tmp_path, capsys):
    data = _bin(tmp_path)
    args = ["eval", "bin", "--data", data, "--cache", str(tmp_path / "cache"), "--no-progress"]
    reports = {}
    for name, prec in (("a", "fp32"), ("b", "bf16"), ("c", "fp32")):
        assert main([*args, "--precision", prec, "--json", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    a, b, c = reports["a"], reports["b"], reports["c"]
    assert (a["precision"], a["backend"], b["precision"], b["backend"]) == ("fp32", "torch", "bf16", "torch")
    assert a["cache"]["embeddings"] is False and b["cache"]["embeddings"] is False
    assert c["cache"]["embeddings"] is True and c["scores"] == a["scores"]
    assert "fp32/torch" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # argparse names the choices; a usage error exits 1 (arcface.cli)
        main([*args, "--precision", "fp16"])
    assert e.value.code == 1
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_eval_cli_default_precision_is_auto(tmp_path, monkeypatch):
    import arcface.runtime.amp as amp

    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    out = tmp_path / "r.json"
    assert main(["eval", "bin", "--data", _bin(tmp_path), "--no-cache", "--no-progress", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["precision"], r["backend"], r["flip"]) == ("bf16", "jit", True)


def test_embed_and_verify_cli_take_precision(tmp_path, capsys):
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, data in enumerate(_jpegs(3, seed=2)):
        (folder / f"{i}.png").write_bytes(data)
    out = tmp_path / "e.npz"
    assert main(["embed", str(folder), "--out", str(out), "--aligned", "--precision", "fp32", "--no-progress"]) == 0
    with np.load(out) as z:
        paths, emb = list(z["paths"]), z["embeddings"]
    crops = np.stack([cv2.imread(p)[..., ::-1] for p in paths])
    np.testing.assert_allclose(emb, plain_fp32(crops), atol=1e-5)  # fp32: as before
    a, b = (str(folder / f"{i}.png") for i in (0, 1))
    assert main(["verify", a, b, "--aligned", "--precision", "bf16", "--json"]) in (0, 1)
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert -1.0 <= r["similarity"] <= 1.0
    with pytest.raises(SystemExit):
        main(["verify", a, b, "--aligned", "--backend", "tensorrt"])


@pytest.mark.parametrize("poison", [np.nan, 1e30, 0.0])
def test_a_cached_entry_with_bad_values_is_rebuilt(tmp_path, poison):
    """The cache folder is a file on disk like any other: NaN, huge or zero rows in it are computed again, not used."""
    pairset = _aligned_set(4)
    cache = EvalCache(tmp_path / "cache")
    model = load_model("default", precision="fp32", flip=False)
    first, _ = embed_pair_set(pairset, model, cache=cache, progress=False)
    [entry] = [p for p in (tmp_path / "cache").rglob("*.npz") if "embeddings" in np.load(p).files]
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["embeddings"][1] = poison
    np.savez(entry, **arrays)
    again, stats = embed_pair_set(pairset, model, cache=cache, progress=False)
    assert not stats.embeddings_cached
    np.testing.assert_array_equal(again, first)
