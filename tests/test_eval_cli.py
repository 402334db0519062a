"""``arcface eval lfw|bin`` end to end on a few LFW pairs, the cache, and the trainer's evaluation hook."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from arcface.cli import main
from arcface.eval import pipeline as eval_pipeline
from arcface.eval.verification import recompute_accuracy
from arcface.inference.contract import ModelContract
from arcface.io.images import load_image

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke_synthetic.yaml"


@pytest.fixture(scope="module")
def lfw_pairs_lines():
    """20 pairs of LFW View 2 (10 same, 10 different) as lines, and the image folder; skips without LFW."""
    from conftest import require_shared

    pairs = require_shared("data/lfw/pairs.txt")
    lines = pairs.read_text().splitlines()[1:]
    same = lines[0:10]
    diff = lines[300:310]
    return same, diff, pairs.parent / "lfw-deepfunneled"


def _tiny_pairs_file(tmp_path: Path, lines) -> Path:
    same, diff, _ = lines
    body = []
    for k in range(10):  # View 2 layout: 10 folds of 1 same + 1 different
        body += [same[k], diff[k]]
    p = tmp_path / "pairs_tiny.txt"
    p.write_text("10\t1\n" + "\n".join(body) + "\n")
    return p


def _centre_crops(lines, size: int) -> list[tuple[str, int, np.ndarray]]:
    """(name, index, crop) of every image of the 20 pairs: the fallback centre crop, resized to ``size``."""
    same, diff, root = lines
    seen, out = set(), []
    for line in same + diff:
        f = line.split("\t")
        for name, idx in ((f[0], f[1]), (f[0], f[2])) if len(f) == 3 else ((f[0], f[1]), (f[2], f[3])):
            if (name, int(idx)) in seen:
                continue
            seen.add((name, int(idx)))
            rgb = load_image(root / name / f"{name}_{int(idx):04d}.jpg")
            out.append((name, int(idx), eval_pipeline.centre_crop(rgb, size)))
    return out


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def test_eval_lfw_runs_and_second_run_hits_the_cache(tmp_path, lfw_pairs_lines, capsys):
    pairs = _tiny_pairs_file(tmp_path, lfw_pairs_lines)
    root = lfw_pairs_lines[2]
    args = ["eval", "lfw", "--data", str(root), "--pairs", str(pairs), "--model", "default",
            "--detector", "yunet", "--cache", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main([*args, "--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "roc.png")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "TAR@FAR=0.1" in out and "not enough negatives" in out
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["pairs"] == 20 and a["folds_n"] == 10 and a["flip"] is True and a["detector"] == "yunet"
    assert a["accuracy"] >= 0.9  # easy pairs for any face model
    assert recompute_accuracy(a) == pytest.approx((a["accuracy"], a["accuracy_std"]))
    assert a["cache"]["detected"] == a["images"] > 0
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["cache"]["embeddings"] is True and b["cache"]["detected"] == 0
    assert b["scores"] == a["scores"]

    # Another model (different contract): embeddings miss, crops hit (no detection).
    assert main([*args, "--no-flip", "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["cache"]["embeddings"] is False and c["cache"]["detected"] == 0 and c["flip"] is False

    # A corrupted cache file is ignored and rebuilt.
    for f in (tmp_path / "cache").rglob("*.npz"):
        f.write_bytes(b"garbage")
    assert main([*args, "--json", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["cache"]["detected"] == d["images"] and d["scores"] == pytest.approx(a["scores"], abs=1e-6)


def test_eval_bin(tmp_path, lfw_pairs_lines, capsys):
    crops = {(n, i): c for n, i, c in _centre_crops(lfw_pairs_lines, 112)}
    same, diff, _ = lfw_pairs_lines
    imgs, flags = [], []
    for line in same + diff:
        f = line.split("\t")
        keys = [(f[0], int(f[1])), (f[0], int(f[2]))] if len(f) == 3 else [(f[0], int(f[1])), (f[2], int(f[3]))]
        imgs += [_jpeg(crops[k]) for k in keys]
        flags.append(len(f) == 3)
    p = tmp_path / "tiny.bin"
    p.write_bytes(pickle.dumps((imgs, flags), protocol=4))
    out = tmp_path / "bin.json"
    assert main(["eval", "bin", "--data", str(p), "--model", "default", "--json", str(out),
                 "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0  # fmt: skip
    r = json.loads(out.read_text())
    assert r["pairs"] == 20 and r["aligned"] is True and r["detector"] is None and r["set"] == "tiny"
    assert len(r["scores"]) == 20 and r["labels"] == flags
    assert recompute_accuracy(r) == pytest.approx((r["accuracy"], r["accuracy_std"]))
    assert "accuracy" in capsys.readouterr().out


def test_eval_bin_refuses_a_pickle_payload(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.bin"
    p.write_bytes(pickle.dumps(([b"a", b"b"], Evil())))
    assert main(["eval", "bin", "--data", str(p), "--json", str(tmp_path / "x.json"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "pwned" not in captured.out
    assert "evil.bin" in captured.err and "refused" in captured.err
    assert not (tmp_path / "x.json").exists()


def test_trainer_hook_keeps_the_best_checkpoint(tmp_path, lfw_pairs_lines):
    crops_dir = tmp_path / "crops"
    for name, idx, crop in _centre_crops(lfw_pairs_lines, 32):  # the smoke model's input size
        (crops_dir / name).mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(crops_dir / name / f"{name}_{idx:04d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        assert ok
    pairs = _tiny_pairs_file(tmp_path, lfw_pairs_lines)
    out = tmp_path / "run"
    sets = f"eval.sets=[{{name: t, kind: pairs, path: '{crops_dir}', pairs: '{pairs}'}}]"
    assert main(["train", str(SMOKE), "--out", str(out), "--no-progress",
                 "--set", "eval.every=6", "--set", sets]) == 0  # fmt: skip
    rows = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [6, 12]
    assert all(0.0 <= r["t"] <= 1.0 for r in rows)
    assert (out / "best.safetensors").is_file()
    assert json.loads((out / "best.json").read_text())["t"] == max(r["t"] for r in rows)


def test_hook_embeds_in_eval_mode_and_restores_train_mode():
    import torch

    from arcface.eval.hook import embed_with_model

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(3 * 8 * 8, 4))
    model.train()
    crops = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    contract = ModelContract("r18", 4, input_size=8)
    e1 = embed_with_model(model, crops, contract, flip=True, batch_size=2)
    e2 = embed_with_model(model, crops, contract, flip=True, batch_size=5)
    assert model.training and e1.shape == (5, 4)
    assert np.allclose(e1, e2, atol=1e-6)  # deterministic: dropout off
    assert np.allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)


def test_worker_pool_gives_the_crops_of_one_process(tmp_path):
    """Detection in worker processes, a few images per pass (detect_batch), gives what one process gives, in order."""
    from arcface.eval.pipeline import DETECT_BATCH, DetectionSpec, EvalCache, align_images, iter_crops
    from conftest import require_shared

    lfw = require_shared("data/lfw/lfw-deepfunneled")
    paths = sorted(lfw.glob("A*/*.jpg"))[: 2 * DETECT_BATCH + 3]  # two full detection batches and a short one
    spec = DetectionSpec("mtcnn", {"max_side": 1600})
    one, fb1, c1 = align_images(paths, spec, EvalCache(None), workers=1, progress=False)
    two, fb2, c2 = align_images(paths, spec, EvalCache(None), workers=2, progress=False)
    assert c1 == c2 == {"cached": 0, "detected": len(paths)}
    np.testing.assert_array_equal(fb1, fb2)
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1  # the same crops (bilinear rounding at most)
    cache = EvalCache(tmp_path / "cache")
    first = [i for i, _, _ in iter_crops(paths[:5], spec, cache, progress=False)]
    again = [i for i, _, _ in iter_crops(paths, spec, cache, progress=False)]
    assert first == list(range(5)) and again[:5] == list(range(5)) and sorted(again) == list(range(len(paths)))
