"""The typed config: every shipped recipe loads; unknown keys and bad types are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from arcface.engine.config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from arcface.engine.optim import lr_factor

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"smoke_synthetic.yaml", "casia_r50_arcface.yaml", "ms1mv2_r100_arcface.yaml",
            "glint360k_r100_pfc.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_builds(path):
    from arcface.data import DATASETS
    from arcface.heads import HEADS
    from arcface.models import MODELS

    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.name in MODELS
    assert cfg.head.kind in HEADS
    assert cfg.data.kind in DATASETS


def test_paper_recipe_values():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "casia_r50_arcface.yaml")
    assert (cfg.head.params["s"], cfg.head.params["m"]) == (64.0, 0.5)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert cfg.schedule.milestones == [20000, 28000] and cfg.train.max_steps == 32000


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {name: sgd, momentun: 0.9}\n")
    with pytest.raises(ConfigError, match=r"optim\.momentun: unknown key"):
        load_config(p)


def test_bad_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer"):
        config_from_dict({"train": {"max_steps": "many"}})
    with pytest.raises(ConfigError, match=r"head\.sample_rate"):
        config_from_dict({"head": {"sample_rate": 0}})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides():
    d = apply_overrides({}, ["optim.lr=0.05", "model.options={width_mult: 0.5}", "train.precision=bf16"])
    cfg = config_from_dict(d)
    assert cfg.optim.lr == 0.05 and cfg.model.options == {"width_mult": 0.5} and cfg.train.precision == "bf16"
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        config_from_dict(apply_overrides({}, ["optim.lrr=1"]))


def test_schedules():
    step = config_from_dict({"schedule": {"name": "step", "milestones": [10, 20], "warmup_steps": 4}}).schedule
    assert [lr_factor(step, s, 30) for s in (0, 3, 4, 9, 10, 19, 20, 29)] == pytest.approx(
        [0.25, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )
    poly = config_from_dict({"schedule": {"name": "poly", "power": 2.0, "warmup_steps": 0}}).schedule
    assert lr_factor(poly, 0, 10) == 1.0
    assert lr_factor(poly, 5, 10) == pytest.approx(0.25)
    assert lr_factor(poly, 10, 10) == 0.0
