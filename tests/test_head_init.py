"""``head.init: class_means``: centres start at each class's mean embedding (for fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arcface.engine.config import ConfigError, load_config
from arcface.engine.trainer import Trainer

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_synthetic.yaml"


def test_class_means_sets_every_centre(tmp_path):
    cfg = load_config(SMOKE, ["head.init=class_means"])
    t = Trainer(cfg, tmp_path, progress=False)
    model = t.bare_model.eval()
    with torch.no_grad():
        embs, labels = [], []
        for i in range(len(t.dataset)):
            image, label = t.dataset[i]
            embs.append(torch.nn.functional.normalize(model(image[None]).float(), dim=1)[0])
            labels.append(int(label))
    embs, labels = torch.stack(embs), torch.tensor(labels)
    weight = t.head.weight.detach()
    for c in range(t.dataset.num_classes):
        want = torch.nn.functional.normalize(embs[labels == c].mean(0), dim=0)
        # the dataset's random flip makes the two passes see different images: compare loosely
        assert torch.nn.functional.cosine_similarity(weight[c], want, dim=0) > 0.95
    # the head now fits the backbone: the first loss is far below the random-head one
    loss_means = t.run_step()["loss"]
    t2 = Trainer(load_config(SMOKE), tmp_path / "random", progress=False)
    assert loss_means < t2.run_step()["loss"]


def test_unknown_init_is_named():
    with pytest.raises(ConfigError, match="head.init"):
        load_config(SMOKE, ["head.init=zeros"])
