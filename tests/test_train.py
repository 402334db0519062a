"""End to end through the real CLI: train, resume exactly, torchrun on gloo, fine-tune, NaN guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arcface.engine.config import load_config
from arcface.engine.trainer import Trainer, TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke_synthetic.yaml"


def cli(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "arcface", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"arcface {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    cli("train", str(SMOKE), "--out", str(out), "--max-steps", "12", "--no-progress", "--set", "train.tensorboard=true")
    return out


def test_smoke_run_writes_log_and_weights(full_run):
    rows = [json.loads(x) for x in (full_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"step", "loss", "lr", "samples_per_sec"} <= set(rows[0])
    assert all(r["loss"] > 0 and r["samples_per_sec"] > 0 for r in rows)
    assert (full_run / "backbone.safetensors").is_file()
    assert (full_run / "ckpt-00000012.pt").is_file()
    assert list((full_run / "tb").glob("events.out.tfevents.*"))  # TensorBoard scalars


def test_resume_is_exact(full_run, tmp_path):
    cli("train", str(SMOKE), "--out", str(tmp_path), "--max-steps", "6", "--no-progress")
    assert (tmp_path / "ckpt-00000006.pt").is_file()
    cli("train", str(SMOKE), "--out", str(tmp_path), "--max-steps", "12", "--resume", "--no-progress")
    a, b = losses(full_run), losses(tmp_path)
    assert sorted(b) == list(range(1, 13))
    for step in range(1, 13):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-5), step


def test_torchrun_two_ranks_on_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "arcface", "train", str(SMOKE), "--out", str(tmp_path), "--max-steps", "6", "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))  # rank 0 alone writes the log
    ck = torch.load(tmp_path / "ckpt-00000006.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["head_shards"]) == 2


def test_init_from_loads_backbone_only(full_run, tmp_path):
    cfg = load_config(SMOKE)
    t = Trainer(cfg, tmp_path, init_from=full_run / "backbone.safetensors", progress=False)
    from safetensors.torch import load_file

    ref = load_file(str(full_run / "backbone.safetensors"))
    for k, v in t.bare_model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert t.step == 0
    # an arcface_torch-style backbone.pth (plain state dict, DDP prefix) loads too
    torch.save({f"module.{k}": v for k, v in ref.items()}, tmp_path / "backbone.pth")
    t2 = Trainer(cfg, tmp_path / "b", init_from=tmp_path / "backbone.pth", progress=False)
    for k, v in t2.bare_model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_init_from_wrong_model_is_clear(full_run, tmp_path):
    proc = cli(
        "train", str(SMOKE), "--out", str(tmp_path), "--init-from", str(full_run / "backbone.safetensors"),
        "--set", "model.num_features=32", "--no-progress", check=False,
    )
    assert proc.returncode != 0
    assert "is a r18 64-D model" in proc.stderr and "model.num_features" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_key_is_one_line(tmp_path):
    proc = cli("train", str(SMOKE), "--out", str(tmp_path), "--set", "optim.momentun=0.9", check=False)
    assert proc.returncode != 0
    assert "optim.momentun: unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    cfg = load_config(SMOKE, ["train.ckpt_every=2"])
    t = Trainer(cfg, tmp_path, progress=False)
    real_forward = t.head.forward

    def poisoned(emb, labels):
        loss = real_forward(emb, labels)
        return loss * float("nan") if t.step == 3 else loss

    t.head.forward = poisoned
    with pytest.raises(TrainingDiverged, match=r"step 4: the loss is nan.*ckpt-00000002\.pt"):
        t.train()
    assert (tmp_path / "ckpt-00000002.pt").is_file()


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    """batch 16 x accum 1 and batch 8 x accum 2 give the same update (BN-free model, same samples)."""

    def one_step(batch: int, accum: int, out: Path) -> list[torch.Tensor]:
        cfg = load_config(SMOKE, [f"data.batch_size={batch}", f"train.grad_accum={accum}"])
        t = Trainer(cfg, out, progress=False)
        torch.manual_seed(1)
        t.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64))
        from arcface.engine.optim import build_optimizer, build_scheduler

        t.optimizer = build_optimizer(cfg.optim, t.model, t.head)
        t.scheduler = build_scheduler(cfg.schedule, t.optimizer, cfg.train.max_steps)
        t.run_step()
        assert t.step == 1 and t.scheduler.last_epoch == 1  # the schedule steps per optimiser step
        return [p.detach().clone() for p in t.model.parameters()] + [t.head.weight.detach().clone()]

    a = one_step(16, 1, tmp_path / "a")
    b = one_step(8, 2, tmp_path / "b")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_eval_hook_keeps_the_best_backbone(tmp_path):
    scores = iter([0.6, 0.9, 0.7])
    cfg = load_config(SMOKE, ["eval.every=4"])
    t = Trainer(cfg, tmp_path, progress=False, evaluate=lambda model, contract: {"toy": next(scores)})
    t.train()
    rows = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], r["toy"]) for r in rows] == [(4, 0.6), (8, 0.9), (12, 0.7)]
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 8
    from arcface.inference.contract import read_model

    model, contract = read_model(tmp_path / "best.safetensors")
    assert contract.architecture == "r18" and contract.embedding_size == 64


def test_fine_tuning_the_default_model_keeps_its_contract(tmp_path):
    """The contract drives training: the bundled model (RGB, (x - 127.5) / 128) is fine-tuned with its own
    normalisation, and the saved file keeps its preprocessing, input size and template (new weights, no threshold)."""
    import numpy as np
    from PIL import Image

    from arcface.engine.config import config_from_dict
    from arcface.inference.contract import read_contract, read_model
    from arcface.inference.zoo import resolve_model_path

    default = resolve_model_path("default")
    before = read_contract(default)
    rng = np.random.default_rng(0)
    for person in range(4):
        (tmp_path / "faces" / f"p{person}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "faces" / f"p{person}" / f"{i}.png")
    cfg = config_from_dict({
        "model": {"name": "mbf_tflite", "num_features": 192, "options": {}},
        "head": {"kind": "arcface", "params": {"s": 64.0, "m": 0.5}},
        "data": {"kind": "image_folder", "params": {"root": str(tmp_path / "faces"), "image_size": 112},
                 "batch_size": 4},
        "optim": {"name": "sgd", "lr": 0.001},
        "train": {"max_steps": 5, "precision": "fp32", "ckpt_every": 5, "tensorboard": False},
    })  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run", init_from=default, progress=False)
    # the preprocessing used: the model's own normalisation, not ours
    transform = trainer.dataset.transform
    assert (transform.mean, transform.std, transform.color) == (127.5, 128.0, "RGB")
    image = np.asarray(Image.open(tmp_path / "faces" / "p0" / "0.png"))
    want = (image.transpose(2, 0, 1).astype(np.float32) - 127.5) / 128.0  # (3, H, W)
    x = transform(image).numpy()
    assert np.allclose(x, want, atol=1e-6) or np.allclose(x, want[:, :, ::-1], atol=1e-6)  # (randomly mirrored)
    trainer.train()
    module, after = read_model(tmp_path / "run" / "backbone.safetensors")
    assert (after.mean, after.std, after.color) == (127.5, 128.0, "RGB")
    assert (after.template, after.template_points, after.input_size) == (
        before.template, before.template_points, before.input_size,
    )  # fmt: skip
    assert (after.architecture, after.embedding_size, after.options) == ("mbf_tflite", 192, {})
    assert after.weights_sha256 != before.weights_sha256 and after.threshold is None
    assert "fine-tuned from" in after.source
