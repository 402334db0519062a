"""``arcface cluster``: the bundled sample photos (no ../shared needed), bad photos and bad .npz files, --into,
--update and determinism, through the real CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from arcface.inference.contract import ModelContract
from conftest import run_cli

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "arcface" / "samples"
GRACE = ("grace_hopper_1.jpg", "grace_hopper_2.jpg")
EILEEN = "eileen_collins.jpg"


def error_line(err: str) -> str:
    """The one error line (the faiss loader's log lines aside)."""
    lines = [line for line in err.splitlines() if line.startswith("arcface cluster: error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The samples, a duplicate copy, an unreadable file, a photo without a face, a FIFO and a link leading out."""
    root = tmp_path_factory.mktemp("photos")
    for name in (*GRACE, EILEEN):
        shutil.copyfile(SAMPLES / name, root / name)
    shutil.copyfile(SAMPLES / GRACE[0], root / "copy_of_grace.jpg")
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    from PIL import Image

    Image.new("RGB", (160, 160), (128, 128, 128)).save(root / "blank.png")
    os.mkfifo(root / "fifo.jpg")  # opened for reading, it would wait for a writer forever
    (root / "outside.jpg").symlink_to(SAMPLES / GRACE[0])
    return root


@pytest.fixture(scope="module")
def folder_run(photos, tmp_path_factory) -> tuple[Path, Path, dict]:
    """One run over the folder (the model and detector load once for the module): (out dir, into dir, OUT.json)."""
    from arcface.cli import main

    out = tmp_path_factory.mktemp("out")
    into = out / "people"
    rc = main(["cluster", str(photos), "--json", str(out / "clusters.json"), "--into", str(into), "--no-progress"])
    assert rc == 0
    return out, into, json.loads((out / "clusters.json").read_text())


def test_folder_groups_the_samples_and_lists_every_bad_item(folder_run, photos):
    out, into, doc = folder_run
    assert len(doc["clusters"]) == 1
    (grace,) = doc["clusters"]
    assert grace["id"] == 1 and grace["size"] == 2
    # the copy has the same embedding as its original (whichever the walk met first): clustered once, and listed once
    # as a duplicate of it
    (dup,) = doc["duplicates"]
    assert {Path(dup["path"]).name, Path(dup["same_as"]).name} == {GRACE[0], "copy_of_grace.jpg"}
    names = sorted(Path(f["path"]).name for f in grace["faces"])
    assert names == sorted([GRACE[1], Path(dup["same_as"]).name])
    assert Path(grace["representative"]["path"]).name in names
    assert all(set(f) == {"path", "box"} for f in grace["faces"])
    assert [Path(f["path"]).name for f in doc["unclustered"]] == [EILEEN]
    reasons = {Path(e["path"]).name: e["reason"] for e in doc["errors"]}
    assert reasons["blank.png"] == "no_face"
    assert reasons["fifo.jpg"] == "not_regular" and reasons["outside.jpg"] == "link_outside"
    assert "broken.jpg" in reasons and reasons["broken.jpg"] != "no_face"
    assert all(e["message"] and "\n" not in e["message"] for e in doc["errors"])
    assert doc["threshold"] > 0 and doc["faces"] == 3 and doc["embeddings"] == "clusters.npz"
    with np.load(out / "clusters.npz") as z:
        assert z["embeddings"].shape[0] == z["labels"].shape[0] == 3


def test_into_places_each_person_in_a_folder(folder_run):
    _, into, doc = folder_run
    placed = sorted(p.name for p in (into / "person-0001").iterdir())
    assert placed == sorted(Path(f["path"]).name for f in doc["clusters"][0]["faces"])
    assert [p.name for p in (into / "unclustered").iterdir()] == [EILEEN]
    assert all(p.is_file() and not p.is_symlink() for p in (into / "person-0001").iterdir())


def write_npz(path: Path, paths, x, contract: str, **more) -> Path:
    np.savez(path, paths=np.array(paths, dtype=str), embeddings=x, contract=contract, **more)
    return path


@pytest.fixture(scope="module")
def sidecar(folder_run) -> tuple[list[str], np.ndarray, str]:
    out, _, _ = folder_run
    with np.load(out / "clusters.npz") as z:
        return [str(p) for p in z["paths"]], z["embeddings"].copy(), str(z["contract"])


def test_npz_input_is_deterministic_and_needs_no_model(capsys, sidecar, tmp_path):
    paths, x, contract = sidecar
    src = write_npz(tmp_path / "faces.npz", paths, x, contract)
    docs = []
    for name in ("a.json", "b.json"):
        rc, out, err = run_cli(capsys, "cluster", src, "--json", tmp_path / name)
        assert rc == 0, err
        assert "1 clusters (2 faces), 1 unclustered" in out
        docs.append(json.loads((tmp_path / name).read_text())["clusters"])
    assert docs[0] == docs[1]


def test_update_adds_new_faces_to_earlier_clusters(capsys, sidecar, tmp_path):
    paths, x, contract = sidecar
    first = [i for i, p in enumerate(paths) if Path(p).name != GRACE[1]]
    second = [i for i, p in enumerate(paths) if Path(p).name == GRACE[1]]
    old_src = write_npz(tmp_path / "old.npz", [paths[i] for i in first], x[first], contract)
    rc, _, err = run_cli(capsys, "cluster", old_src, "--json", tmp_path / "old.json")
    assert rc == 0, err
    old = json.loads((tmp_path / "old.json").read_text())
    assert old["clusters"] == [] and len(old["unclustered"]) == 2  # one photo of each person
    with np.load(tmp_path / "old.npz") as z:
        labels = dict(zip([Path(p).name for p in z["paths"]], z["labels"].tolist()))
    # the new photo, one already clustered (skipped), and a copy of an earlier one under another name (a duplicate)
    names = [paths[i] for i in second + first[:1]] + ["copy.jpg"]
    new_src = write_npz(tmp_path / "new.npz", names, x[second + first[:1] + first[:1]], contract)
    rc, out, err = run_cli(
        capsys, "cluster", new_src, "--json", tmp_path / "new.json", "--update", tmp_path / "old.json"
    )
    assert rc == 0, err
    assert "1 already clustered" in out and "1 duplicates" in out
    doc = json.loads((tmp_path / "new.json").read_text())
    assert doc["duplicates"] == [{"path": "copy.jpg", "same_as": paths[first[0]]}]
    (grace,) = doc["clusters"]
    earlier = next(Path(p).name for p in paths if Path(p).name not in (GRACE[1], EILEEN))  # the first Grace photo
    assert sorted(Path(f["path"]).name for f in grace["faces"]) == sorted([earlier, GRACE[1]])
    assert grace["id"] == labels[earlier] + 1  # the earlier face's cluster keeps its id
    assert doc["method"] == "extend" and doc["threshold"] == old["threshold"] and doc["faces"] == 3
    # the refusals: another model's faces, and writing over the file it reads
    other = ModelContract.from_json(contract)
    other = dataclasses.replace(other, std=1.0, weights_sha256="0" * 64).to_json()
    bad = write_npz(tmp_path / "other.npz", [paths[i] for i in second], x[second], other)
    rc, _, err = run_cli(capsys, "cluster", bad, "--json", tmp_path / "x.json", "--update", tmp_path / "old.json")
    assert rc == 1 and "different models" in error_line(err)
    rc, _, err = run_cli(capsys, "cluster", new_src, "--json", tmp_path / "old.json", "--update", tmp_path / "old.json")
    assert rc == 1 and "another name" in error_line(err)


def test_bad_npz_rows_are_listed_not_fatal(capsys, sidecar, tmp_path):
    paths, x, contract = sidecar
    y = x.copy()
    y[0, 3] = np.nan
    y = np.concatenate([y, np.zeros((1, y.shape[1]), np.float32)])
    src = write_npz(tmp_path / "nan.npz", [*paths, "zero.jpg"], y, contract)
    rc, out, err = run_cli(capsys, "cluster", src, "--json", tmp_path / "out.json")
    assert rc == 0, err
    doc = json.loads((tmp_path / "out.json").read_text())
    assert [(e["path"], e["reason"]) for e in doc["errors"]] == [
        (paths[0], "bad_embedding"),
        ("zero.jpg", "bad_embedding"),
    ]
    assert doc["faces"] == 2
    # every row bad: OUT.json still lists them, exit 1
    src = write_npz(tmp_path / "allnan.npz", paths[:1], np.full((1, x.shape[1]), np.nan, np.float32), contract)
    rc, _, err = run_cli(capsys, "cluster", src, "--json", tmp_path / "none.json")
    assert rc == 1 and "no face" in error_line(err)
    assert len(json.loads((tmp_path / "none.json").read_text())["errors"]) == 1


def test_one_face_is_unclustered(capsys, sidecar, tmp_path):
    paths, x, contract = sidecar
    src = write_npz(tmp_path / "one.npz", paths[:1], x[:1], contract)
    rc, out, err = run_cli(capsys, "cluster", src, "--json", tmp_path / "one.json")
    assert rc == 0, err
    doc = json.loads((tmp_path / "one.json").read_text())
    assert doc["clusters"] == [] and len(doc["unclustered"]) == 1


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("mixed", "a mix of models"),
        ("wrong_dim", "the contract says"),
        ("wrong_rows", "do not match"),
        ("no_contract", "not an `arcface embed` file"),
        ("garbage", "not a readable .npz"),
        ("strings", "must be floats"),
    ],
)
def test_bad_npz_files_are_one_line(capsys, sidecar, tmp_path, case, match):
    paths, x, contract = sidecar
    src = tmp_path / "bad.npz"
    if case == "mixed":
        write_npz(src, paths, x, np.array([contract, contract]))
    elif case == "wrong_dim":
        write_npz(src, paths, x[:, :10], contract)
    elif case == "wrong_rows":
        write_npz(src, paths[:2], x, contract)
    elif case == "no_contract":
        np.savez(src, paths=np.array(paths), embeddings=x)
    elif case == "garbage":
        src.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        write_npz(src, paths, np.full(x.shape, "a"), contract)
    rc, _, err = run_cli(capsys, "cluster", src, "--json", tmp_path / "out.json")
    assert rc == 1
    assert match in error_line(err)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--json", "out.txt"], "must be a .json"),
        (["--json", "o.json", "--k", "0"], "--k must be"),
        (["--json", "o.json", "--threshold", "2"], "--threshold is a cosine"),
        (["--json", "o.json", "--update", "missing.json"], "cannot read it"),
    ],
)
def test_bad_options_are_one_line(capsys, sidecar, tmp_path, args, match):
    paths, x, contract = sidecar
    src = write_npz(tmp_path / "faces.npz", paths, x, contract)
    args = [str(tmp_path / a) if a.endswith((".json", ".txt")) else a for a in args]
    rc, _, err = run_cli(capsys, "cluster", src, *args)
    assert rc == 1
    assert match in error_line(err)


def test_missing_source_is_one_line(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "cluster", tmp_path / "nowhere", "--json", tmp_path / "o.json")
    assert rc == 1 and "no such file or folder" in error_line(err)


def test_lfw_people_are_grouped_by_the_default_model(capsys, shared, tmp_path):
    """A list file of real LFW photos: four people with three photos each, and three people with one."""
    lfw = shared("data/lfw/lfw-deepfunneled")
    many = ("Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Tony_Blair")
    single = ("Aaron_Eckhart", "Abba_Eban", "Zico")
    photos = [lfw / p / f"{p}_{i:04d}.jpg" for p in many for i in (1, 2, 3)] + [
        lfw / p / f"{p}_0001.jpg" for p in single
    ]
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in photos))
    rc, _, err = run_cli(capsys, "cluster", listing, "--json", tmp_path / "people.json", "--no-progress")
    assert rc == 0, err
    doc = json.loads((tmp_path / "people.json").read_text())
    groups = sorted(sorted(Path(f["path"]).parent.name for f in c["faces"]) for c in doc["clusters"])
    assert groups == [[p] * 3 for p in many]
    assert sorted(Path(f["path"]).parent.name for f in doc["unclustered"]) == list(single)
