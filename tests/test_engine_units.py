"""Engine pieces without a training run: optimiser groups, checkpoints, precision."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from arcface.engine import checkpoint as ckpt
from arcface.engine.config import OptimConfig
from arcface.engine.optim import build_optimizer
from arcface.models.weights import load_backbone_weights
from arcface.runtime.amp import resolve_precision


def test_no_weight_decay_on_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4))
    head = nn.Linear(4, 2)
    opt = build_optimizer(OptimConfig(weight_decay=5e-4), model, head)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model[0].weight)] == 5e-4
    assert by_id[id(model[0].bias)] == 0.0
    assert by_id[id(model[1].weight)] == 0.0 and by_id[id(model[2].weight)] == 0.0
    assert by_id[id(head.weight)] == 5e-4
    assert opt.defaults["momentum"] == 0.9


def test_atomic_save_keeps_previous_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    ckpt.atomic_torch_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ckpt.atomic_torch_save({"a": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp file left behind


def test_rng_state_round_trip(tmp_path):
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.atomic_torch_save({"rng": state}, tmp_path / "r.pt")
    ckpt.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_listing_and_pruning(tmp_path):
    for s in (6, 12, 18):
        ckpt.atomic_torch_save({"step": s}, ckpt.checkpoint_path(tmp_path, s))
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-00000018.pt"
    ckpt.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000012.pt", "ckpt-00000018.pt"]


def test_load_backbone_weights_strips_prefixes(tmp_path):
    sd = {"module.fc.weight": torch.ones(2, 2)}
    torch.save(sd, tmp_path / "backbone.pth")
    assert list(load_backbone_weights(tmp_path / "backbone.pth")) == ["fc.weight"]
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_backbone_weights(tmp_path / "junk.pth")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) in ("bf16", "fp32")
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        resolve_precision("fp16", cpu)
