"""The loss-table experiment (``python -m tools.loss_table``, ``make paper-table``) end to end on a miniature LFW
built from real LFW photos."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tools/ is a folder of the repository, not part of the package

from tools.loss_table.__main__ import main  # noqa: E402
from tools.loss_table.report import markdown, update_readme  # noqa: E402
from tools.loss_table.setup import ROWS, held_out_people  # noqa: E402

TRAIN = ["Tony_Blair", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder"]
TEST = ["George_W_Bush", "Ariel_Sharon"]


def _mini_lfw(src: Path, dst: Path, per_person: int = 4) -> Path:
    """A tiny LFW tree (copies of real photos: the aligner skips links leading out of its input) with View 1 pair files
    over held-out people."""
    images = dst / "lfw-deepfunneled"
    for person in TRAIN + TEST:
        (images / person).mkdir(parents=True)
        for i in range(1, per_person + 1):
            name = f"{person}_{i:04d}.jpg"
            shutil.copyfile(src / person / name, images / person / name)
    # View 1 test: same pairs within TEST people, different pairs across them
    same = [f"{p}\t1\t{j}" for p in TEST for j in (2, 3)]
    diff = [f"{TEST[0]}\t{i}\t{TEST[1]}\t{i}" for i in (1, 2, 3, 4)]
    (dst / "pairsDevTest.txt").write_text("4\n" + "\n".join(same + diff) + "\n")
    same = [f"{p}\t1\t{j}" for p in TRAIN[:2] for j in (2, 3)]
    diff = [f"{TRAIN[0]}\t{i}\t{TRAIN[1]}\t{i}" for i in (1, 2, 3, 4)]
    (dst / "pairsDevTrain.txt").write_text("4\n" + "\n".join(same + diff) + "\n")
    return dst


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from conftest import require_shared

    src = require_shared("data/lfw/lfw-deepfunneled")
    tmp = tmp_path_factory.mktemp("exp")
    lfw = _mini_lfw(src, tmp / "lfw")
    cfg = yaml.safe_load((REPO / "configs" / "lfw_small_r18.yaml").read_text())
    cfg["model"]["options"]["input_size"] = 32
    cfg["model"]["options"]["width_mult"] = 0.125
    cfg["data"].update(batch_size=4, num_workers=0)
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    readme = tmp / "README.md"
    readme.write_text("# x\n\n<!-- loss-table:begin -->\nold\n<!-- loss-table:end -->\n\nrest\n")
    argv = [
        "--lfw", str(lfw), "--work", str(tmp / "work"), "--out", str(tmp / "out"),
        "--config", str(cfg_path), "--steps", "3", "--rows", "softmax,arcface_0_5", "--seeds", "2",
        "--seed-rows", "1", "--no-finetune", "--readme", str(readme), "--workers", "1", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    return {"tmp": tmp, "argv": argv, "readme": readme, "lfw": lfw}


def test_outputs_and_rows(experiment):
    out = experiment["tmp"] / "out"
    payload = json.loads((out / "loss_comparison.json").read_text())
    names = [r["loss"] for r in payload["results"]]
    # both rows with seed 0, then again with seed 1 (the headline pair always gets the extra seeds)
    assert names == ["softmax", "arcface (0.5)"] * 2
    assert [r["seed"] for r in payload["results"]] == [0, 0, 1, 1]
    for r in payload["results"]:
        assert {"loss", "accuracy", "auc", "steps", "seconds"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["steps"] == 3 and r["curve"]
    assert {s["loss"] for s in payload["summary"]} == {"softmax", "arcface (0.5)"}
    setup = payload["setup"]
    assert setup["train_people"] == len(TRAIN) and setup["train_images"] == 4 * len(TRAIN)
    for png in ("loss_comparison_curves.png", "loss_comparison_accuracy.png"):
        assert (out / png).stat().st_size > 1000
    table = (out / "loss_comparison.md").read_text()
    assert "| softmax |" in table and "| arcface (0.5) |" in table
    text = experiment["readme"].read_text()
    assert "old" not in text and "| softmax |" in text and text.endswith("rest\n")


def test_held_out_people_are_not_trained_on(experiment):
    lfw = experiment["lfw"]
    assert held_out_people(lfw) == set(TEST)
    listing = (experiment["tmp"] / "work" / "train.lst").read_text()
    assert not any(p in listing for p in TEST) and all(p in listing for p in TRAIN)


def test_second_run_reuses_finished_rows(experiment, capsys):
    runs = experiment["tmp"] / "work" / "runs"
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/backbone.safetensors")}
    assert main(experiment["argv"]) == 0
    after = {p: p.stat().st_mtime_ns for p in runs.glob("*/backbone.safetensors")}
    assert before == after and len(before) == 4


def test_unknown_row_is_a_clear_error(experiment, capsys):
    argv = list(experiment["argv"])
    argv[argv.index("--rows") + 1] = "softmax,nosuchloss"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "nosuchloss" in err and "arcface_0_5" in err and "Traceback" not in err


def test_rows_cover_the_paper_table():
    names = {r.name for r in ROWS}
    for want in ("softmax", "normface", "sphereface", "cosface (0.35)", "arcface (0.5)", "combined (1, 0.3, 0.2)"):
        assert want in names
    assert sum("arcface +" in n for n in names) == 3


def test_markdown_and_readme_markers(tmp_path):
    payload = {
        "summary": [{"loss": "a", "accuracy": 0.9, "accuracy_min": 0.89, "accuracy_max": 0.91, "auc": 0.95,
                     "seeds": [0, 1], "seconds": 10.0}],
        "setup": {"backbone": "r18", "steps": 5, "batch_size": 4, "epochs": 1.0, "train_images": 10,
                  "train_people": 2, "lr": "0.1", "machine": {"cpu": "x", "cores": 2, "torch": "2"},
                  "total_seconds": 60.0, "date": "2026-11-28"},
    }  # fmt: skip
    table = markdown(payload)
    assert "| a | 90.00% | 89.00 to 91.00 (2) | 0.9500 | 10 |" in table
    readme = tmp_path / "R.md"
    readme.write_text("no markers\n")
    assert not update_readme(readme, table)
    assert readme.read_text() == "no markers\n"
