"""The image subcommands (detect, align, embed, verify) on real LFW photos (../shared).

Most cases call ``arcface.cli.main`` in this process (capsys); three run the real console
(``python -m arcface``): verify, align with a process pool, and a bad file in ``test_bad_input.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arcface.cli import main
from arcface.inference.contract import ModelContract, read_contract
from arcface.inference.zoo import resolve_model_path
from conftest import photo, require_shared
from conftest import run_cli as cli

LFW = "data/lfw/lfw-deepfunneled"
PEOPLE = ("Colin_Powell", "George_W_Bush", "Tony_Blair")
#: Stand-in while the bundled model has no calibrated threshold (bench/results/calibrate_default.json).
UNCALIBRATED_STANDIN = 0.385


def console(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real CLI in a fresh interpreter, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "arcface", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


@pytest.fixture(scope="module")
def threshold_args() -> list[str]:
    """No option when the bundled model is calibrated (the acceptance case), else an explicit stand-in."""
    if read_contract(resolve_model_path("default")).threshold is not None:
        return []
    warnings.warn(
        f"the bundled model has no calibrated threshold yet; verify tests use --threshold {UNCALIBRATED_STANDIN}",
        stacklevel=1,
    )
    return ["--threshold", str(UNCALIBRATED_STANDIN)]


@pytest.fixture(scope="module")
def tree(lfw, tmp_path_factory) -> Path:
    """3 people x 3 photos plus one text file named .jpg, in one sub-folder per person."""
    src = tmp_path_factory.mktemp("tree") / "src"
    for name in PEOPLE:
        (src / name).mkdir(parents=True)
        for i in (1, 2, 3):
            shutil.copy(photo(lfw, name, i), src / name)
    (src / PEOPLE[2] / "broken.jpg").write_text("this is not a photo\n")
    (src / "README.txt").write_text("not an image name: ignored\n")
    return src


# --------------------------------------------------------------------------------------------------
# verify


def test_verify_same_person_through_the_console(lfw, threshold_args):
    r = console("verify", photo(lfw, "Colin_Powell", 1), photo(lfw, "Colin_Powell", 2), *threshold_args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert lines["decision"].startswith("same")
    sim, thr = float(lines["similarity"].split()[0]), float(lines["threshold"].split()[0])
    assert sim > thr
    assert f"{2 - 2 * thr:.4f}" in lines["threshold"]  # the squared-L2 form of the threshold


def test_verify_json_same_and_different(capsys, lfw, threshold_args):
    contract = read_contract(resolve_model_path("default"))
    rc, out, _ = cli(
        capsys, "verify", photo(lfw, "George_W_Bush", 1), photo(lfw, "George_W_Bush", 2), "--json", *threshold_args
    )
    same = json.loads(out)
    assert rc == 0 and same["decision"] == "same" and same["same"] is True
    expected = contract.threshold if contract.threshold is not None else UNCALIBRATED_STANDIN
    assert same["threshold"] == pytest.approx(expected)
    assert same["threshold_l2"] == pytest.approx(2 - 2 * expected)
    assert same["distance_l2"] == pytest.approx(2 - 2 * same["similarity"])
    assert same["contract"] == contract.id

    rc, out, _ = cli(
        capsys, "verify", photo(lfw, "George_W_Bush", 1), photo(lfw, "Colin_Powell", 1), "--json", *threshold_args
    )
    diff = json.loads(out)
    assert rc == 0  # the decision is data, not an error
    assert diff["decision"] == "different" and diff["same"] is False
    assert diff["similarity"] < diff["threshold"] < same["similarity"]


def test_verify_threshold_option_decides(capsys, lfw):
    a, b = photo(lfw, "Tony_Blair", 1), photo(lfw, "Tony_Blair", 2)
    rc, out, _ = cli(capsys, "verify", a, b, "--json", "--threshold", "0.99", "--flip")
    doc = json.loads(out)
    assert rc == 0 and doc["decision"] == "different" and doc["threshold"] == 0.99 and doc["flip"] is True
    rc, _, err = cli(capsys, "verify", a, b, "--threshold", "1.5")
    assert rc == 1 and "--threshold" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# detect


def test_detect_lines_json_and_drawing(capsys, lfw, tmp_path):
    img = photo(lfw, "Colin_Powell", 1)
    rc, out, err = cli(capsys, "detect", img)
    assert rc == 0 and err == ""
    assert out.startswith("face 1: box=(") and "score=" in out and out.count("(") >= 6

    drawn = tmp_path / "drawn.png"
    rc, out, _ = cli(capsys, "detect", img, "--json", "--draw", drawn)
    assert rc == 0
    doc = json.loads(out)
    assert doc["image"] == str(img) and (doc["width"], doc["height"]) == (250, 250)
    face = doc["faces"][0]
    x1, y1, x2, y2 = face["box"]
    lms = np.array(face["landmarks"])
    assert lms.shape == (5, 2) and 0.9 < face["score"] <= 1
    assert ((lms[:, 0] > x1) & (lms[:, 0] < x2) & (lms[:, 1] > y1) & (lms[:, 1] < y2)).all()

    original = np.asarray(Image.open(img).convert("RGB")).astype(int)
    picture = np.asarray(Image.open(drawn).convert("RGB")).astype(int)
    assert picture.shape == original.shape
    changed = np.abs(picture - original).sum(-1) > 60
    assert changed[round(y1), round(x1) : round(x2)].mean() > 0.8  # the top edge of the box
    assert not changed[:, : int(x1) - 5].any()  # nothing drawn left of the face
    g = picture[round(y1), round((x1 + x2) / 2)]
    assert g[1] > 150 and g[0] < 100  # the main face in green


def test_detect_yunet_and_bad_options(capsys, lfw, tmp_path):
    rc, out, _ = cli(capsys, "detect", photo(lfw, "Tony_Blair", 1), "--detector", "yunet", "--json")
    assert rc == 0 and len(json.loads(out)["faces"]) >= 1
    for args, words in [
        (["--detector", "scrfd"], "--scrfd-model"),
        (["--detector", "scrfd", "--scrfd-model", tmp_path / "none.onnx"], "none.onnx"),
        (["--draw", tmp_path / "out.xyz"], "out.xyz"),
    ]:
        rc, _, err = cli(capsys, "detect", photo(lfw, "Tony_Blair", 1), *args)
        assert rc == 1 and words in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------------------------------
# align


def test_align_tree_in_parallel_then_resume(capsys, tree, tmp_path):
    dst = tmp_path / "aligned"
    r = console("align", tree, dst, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "aligned 9 of 10 images" in r.stdout and "1 failed" in r.stdout
    assert "broken.jpg" in r.stderr  # the failure is listed

    crops = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png"))
    assert crops == [f"{n}/{n}_{i:04d}.png" for n in PEOPLE for i in (1, 2, 3)]  # the tree, mirrored
    for p in dst.rglob("*.png"):
        with Image.open(p) as im:
            assert im.size == (112, 112) and im.mode == "RGB"
    assert not [p for p in dst.rglob(".*")]  # no temporary files left
    report = json.loads((dst / "align_report.json").read_text())
    assert report["counts"] == {"images": 10, "aligned": 9, "skipped_existing": 0, "failed": 1, "several_faces": 0}
    (failure,) = report["failures"]
    assert failure["path"] == f"{PEOPLE[2]}/broken.jpg" and failure["reason"] == "not_image"
    assert "broken.jpg" in failure["message"]

    # Resume: a removed crop is redone, the existing ones are skipped untouched.
    gone = dst / PEOPLE[0] / f"{PEOPLE[0]}_0002.png"
    gone.unlink()
    kept = dst / PEOPLE[1] / f"{PEOPLE[1]}_0001.png"
    stamp = kept.stat().st_mtime_ns
    stale = dst / PEOPLE[0] / f".{PEOPLE[0]}_0003.png.tmp4242.png"  # left by a killed run
    stale.write_bytes(b"\x89PNG half")
    rc, out, err = cli(capsys, "align", tree, dst, "--workers", "1")
    assert rc == 0 and "Traceback" not in err
    report = json.loads((dst / "align_report.json").read_text())
    assert report["counts"]["skipped_existing"] == 8 and report["counts"]["aligned"] == 1
    assert report["counts"]["failed"] == 1
    assert gone.is_file() and kept.stat().st_mtime_ns == stamp
    assert not stale.exists()


def test_align_jpeg_tsv_report_and_failures(capsys, lfw, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    shutil.copy(photo(lfw, "Tony_Blair", 4), src / "a")
    Image.new("RGB", (120, 90), (128, 128, 128)).save(src / "a" / "flat.png")
    dst = tmp_path / "dst"
    rc, out, _ = cli(
        capsys, "align", src, dst, "--workers", "1", "--format", "jpg", "--size", "224", "--report", dst / "r.tsv"
    )
    assert rc == 0
    with Image.open(dst / "a" / "Tony_Blair_0004.jpg") as im:
        assert im.format == "JPEG" and im.size == (224, 224)
    lines = (dst / "r.tsv").read_text().splitlines()
    assert lines[0].startswith("# ") and "failed=1" in lines[0] and lines[1] == "path\treason\tmessage"
    assert lines[2].startswith("a/flat.png\tno_face\t")

    # Another detector; then nothing alignable: exit 1, still a report; a missing source folder: exit 1.
    rc, out, _ = cli(capsys, "align", src, tmp_path / "yunet", "--workers", "1", "--detector", "yunet")
    assert rc == 0 and (tmp_path / "yunet" / "a" / "Tony_Blair_0004.png").is_file()
    (src / "a" / "Tony_Blair_0004.jpg").unlink()
    rc, _, err = cli(capsys, "align", src, tmp_path / "dst2", "--workers", "1")
    assert rc == 1 and "no image could be aligned" in err
    assert json.loads((tmp_path / "dst2" / "align_report.json").read_text())["counts"]["failed"] == 1
    rc, _, err = cli(capsys, "align", tmp_path / "nowhere", tmp_path / "dst3")
    assert rc == 1 and "nowhere" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# embed


def test_embed_folder_list_and_aligned_crops(capsys, tree, lfw, tmp_path):
    out = tmp_path / "emb.npz"
    rc, stdout, err = cli(capsys, "embed", tree, "--out", out)
    assert rc == 0, err
    assert "embedded 9 of 10 images" in stdout and "broken.jpg" in err
    with np.load(out) as z:  # no pickle needed
        paths, emb, errors = z["paths"], z["embeddings"], z["errors"]
        contract = ModelContract.from_json(str(z["contract"]))
        options = json.loads(str(z["options"]))
    assert emb.shape == (9, contract.embedding_size) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert len(paths) == 9 and all(Path(p).is_file() for p in paths)
    assert errors.shape == (1, 3)
    assert errors[0, 0].endswith("broken.jpg") and errors[0, 1] == "not_image"
    assert options == {"flip": False, "aligned": False, "detector": "mtcnn"}
    assert not list(tmp_path.glob(".*"))  # written atomically, no temporary file left

    # A list file (paths relative to it, one missing) and a single image give the same embeddings.
    lst = tmp_path / "list.txt"
    rel = [os.path.relpath(p, tmp_path) for p in paths[:2]]
    lst.write_text("# two photos and a missing one\n" + "\n".join(rel) + "\n\nmissing.jpg\n")
    rc, _, _ = cli(capsys, "embed", lst, "--out", tmp_path / "list.npz")
    with np.load(tmp_path / "list.npz") as z:
        np.testing.assert_allclose(z["embeddings"], emb[:2], atol=1e-5)
        assert z["errors"][0, 1] == "missing" and z["errors"][0, 0].endswith("missing.jpg")
    rc, _, _ = cli(capsys, "embed", paths[0], "--out", tmp_path / "one.npz")
    with np.load(tmp_path / "one.npz") as z:
        assert rc == 0 and z["embeddings"].shape == (1, emb.shape[1]) and z["errors"].shape == (0, 3)

    # Aligned crops (lossless PNG) embed like their photos.
    crops = tmp_path / "crops"
    assert cli(capsys, "align", tree, crops, "--workers", "1")[0] == 0
    rc, _, _ = cli(capsys, "embed", crops, "--aligned", "--out", tmp_path / "crops.npz")
    with np.load(tmp_path / "crops.npz") as z:
        assert rc == 0 and z["embeddings"].shape == (9, emb.shape[1])
        by_name = {Path(p).stem: e for p, e in zip(z["paths"], z["embeddings"])}
    for p, e in zip(paths, emb):
        assert float(by_name[Path(p).stem] @ e) > 0.99

    # --aligned on a photo that is not a crop: recorded; nothing embedded: exit 1.
    rc, _, err = cli(capsys, "embed", paths[0], "--aligned", "--out", tmp_path / "bad.npz")
    assert rc == 1 and "112x112" in err and "no image" in err
    rc, _, err = cli(capsys, "embed", tree, "--out", tmp_path / "emb.txt")
    assert rc == 1 and ".npz" in err and err.count("\n") == 1


def test_help_lists_the_image_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("detect", "align", "embed", "verify"):
        assert name in out


def test_info_names_the_machine_and_the_auto_path(capsys):
    rc, out, err = cli(capsys, "info", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["machine"]["cpu"] and r["machine"]["cores"] >= 1 and "torch" in r["machine"]
    assert isinstance(r["machine"]["native_bf16"], bool)
    assert r["auto"]["chosen"] in ("bf16/jit", "bf16/torch", "fp32/onnx", "fp32/torch") and r["auto"]["why"]
    rc, out, _ = cli(capsys, "info")
    assert rc == 0 and "auto path" in out and "flags" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        ["verify", "a.jpg"],  # a missing positional argument
        ["verify", "a.jpg", "b.jpg", "--no-such-option"],
        ["detect", "a.jpg", "--detector", "nope"],  # a bad choice
        ["embed", "a.jpg", "--out", "e.npz", "--threads", "zero"],  # a bad value (the option's own type check)
        ["gallery", "search"],  # a nested subcommand's usage error
        ["convert", "evolve", "x.pth", "--arch", "IR_999", "--out", "m.safetensors"],
    ],
)
def test_a_usage_error_exits_1_like_every_bad_argument(capsys, argv):
    """One rule (``arcface.cli``'s table, the README's): a bad argument exits 1 whether argparse or the command finds
    it; argparse's own 2 never reaches the caller."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err


def test_a_bad_option_value_found_by_the_command_exits_1(capsys, tmp_path):
    rc, _, err = cli(capsys, "embed", tmp_path, "--out", tmp_path / "e.txt")
    assert rc == 1 and err.count("\n") == 1 and ".npz" in err
