"""``arcface gallery enroll|search|list|remove`` on real LFW photos (../shared), in this process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import photo
from conftest import run_cli as cli

LFW = "data/lfw/lfw-deepfunneled"
PEOPLE = ("Colin_Powell", "George_W_Bush", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon")


@pytest.fixture
def people(shared, tmp_path) -> tuple[Path, Path]:
    """(LFW root, tmp/people/NAME/NAME_0001.jpg for six people, plus a broken file in one folder)."""
    lfw = shared(LFW)
    root = tmp_path / "people"
    for name in PEOPLE:
        (root / name).mkdir(parents=True)
        shutil.copy(photo(lfw, name, 1), root / name)
    (root / PEOPLE[0] / "broken.jpg").write_text("this is not a photo\n")
    return lfw, root


def test_enroll_search_list_remove(capsys, people, tmp_path, monkeypatch):
    lfw, root = people
    gal = tmp_path / "gallery"
    monkeypatch.setenv("ARCFACE_GALLERY", str(gal))  # the default --gallery

    rc, out, err = cli(capsys, "gallery", "enroll", root, "--no-progress")
    assert rc == 0, err
    assert "enrolled 6 face(s) of 7 photo(s)" in out and "6 new identities" in out and "1 failed" in out
    assert "broken.jpg" in err

    rc, out, _ = cli(capsys, "gallery", "enroll", root, "--no-progress")  # again: nothing new
    assert rc == 0 and "enrolled 0 face(s)" in out and "6 already enrolled" in out

    rc, out, _ = cli(capsys, "gallery", "list", "--json")
    doc = json.loads(out)
    assert sorted(i["name"] for i in doc["identities"]) == sorted(PEOPLE)
    assert doc["faces"] == 6 and all(i["faces"] == 1 for i in doc["identities"])
    ids = {i["name"]: i["id"] for i in doc["identities"]}

    right = 0
    for name in PEOPLE:
        rc, out, err = cli(capsys, "gallery", "search", photo(lfw, name, 2), "-k", "3", "--json")
        assert rc == 0, err
        res = json.loads(out)
        assert len(res["matches"]) == 3 and res["threshold"] is not None
        top = res["matches"][0]
        right += top["name"] == name
        if top["name"] == name:
            assert top["match"] is True
    assert right >= 5

    rc, out, _ = cli(capsys, "gallery", "search", photo(lfw, "Tony_Blair", 3), "-k", "2")
    assert rc == 0 and "Tony_Blair" in out.splitlines()[1] and "match" in out.splitlines()[1]

    rc, out, _ = cli(capsys, "gallery", "list")
    assert rc == 0 and "6 identities, 6 faces" in out

    rc, out, _ = cli(capsys, "gallery", "remove", ids["Tony_Blair"])
    assert rc == 0 and "Tony_Blair" in out
    rc, out, _ = cli(capsys, "gallery", "search", photo(lfw, "Tony_Blair", 2), "--json")
    assert "Tony_Blair" not in [m["name"] for m in json.loads(out)["matches"]]
    rc, _, err = cli(capsys, "gallery", "remove", ids["Tony_Blair"])
    assert rc == 1 and "no identity" in err


def test_errors_are_one_line(capsys, people, tmp_path):
    lfw, root = people
    gal = str(tmp_path / "g")
    rc, _, err = cli(capsys, "gallery", "list", "--gallery", gal)
    assert rc == 1 and "no gallery" in err
    rc, _, err = cli(capsys, "gallery", "search", photo(lfw, "Tony_Blair", 1), "--gallery", gal)
    assert rc == 1 and "no gallery" in err
    rc, _, err = cli(capsys, "gallery", "enroll", tmp_path / "missing", "--gallery", gal)
    assert rc == 1 and "no such folder" in err

    rc, _, _ = cli(capsys, "gallery", "enroll", root / PEOPLE[1], "--gallery", gal, "--no-progress")
    assert rc == 1  # a folder of photos, not of person folders
    one = tmp_path / "one"
    shutil.copytree(root / PEOPLE[1], one / PEOPLE[1])
    rc, _, err = cli(capsys, "gallery", "enroll", one, "--gallery", gal, "--no-progress")
    assert rc == 0, err
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (160, 160), (128, 128, 128)).save(blank)
    rc, _, err = cli(capsys, "gallery", "search", blank, "--gallery", gal)
    assert rc == 3 and "no face" in err


def test_search_with_another_model_is_refused(capsys, people, tmp_path):
    from arcface.inference.contract import ModelContract, save_model
    from arcface.models import create_model

    lfw, root = people
    gal = str(tmp_path / "g")
    one = tmp_path / "one"
    shutil.copytree(root / PEOPLE[2], one / PEOPLE[2])
    rc, _, err = cli(capsys, "gallery", "enroll", one, "--gallery", gal, "--no-progress")
    assert rc == 0, err
    other = save_model(create_model("mbf", num_features=64), ModelContract("mbf", 64), tmp_path / "other.safetensors")
    rc, _, err = cli(capsys, "gallery", "search", photo(lfw, PEOPLE[2], 2), "--gallery", gal, "--model",
                     tmp_path / "other.safetensors")  # fmt: skip
    assert rc == 1 and other.id in err and "bound to model contract" in err
    assert len(err.strip().splitlines()) == 1
