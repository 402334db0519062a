"""Real-data smoke test: a small model learns on real LFW faces (centre crops) and its loss falls."""

from __future__ import annotations

import json

from arcface.cli._demo import lfw_list_file
from arcface.engine.config import config_from_dict
from arcface.engine.trainer import Trainer


def test_loss_falls_on_real_lfw_faces(shared, tmp_path):
    lfw = shared("data/lfw")
    lst, people, images = lfw_list_file(lfw, 30, tmp_path / "train.txt")
    assert (people, images) == (34, 2370)  # LFW people with >= 30 photos
    cfg = config_from_dict({
        "seed": 0,
        "model": {"name": "r18", "num_features": 128, "options": {"width_mult": 0.25, "input_size": 48}},
        "head": {"kind": "arcface", "params": {"s": 64.0, "m": 0.5}},
        "data": {"kind": "list_file", "params": {"list_file": str(lst), "image_size": 48, "center_crop": 144},
                 "batch_size": 32},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "poly", "warmup_steps": 5, "power": 2.0},
        "train": {"max_steps": 100, "log_every": 1, "ckpt_every": 100, "tensorboard": False},
    })
    Trainer(cfg, tmp_path / "run", progress=False).train()
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
