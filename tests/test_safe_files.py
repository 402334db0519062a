"""Every file a user hands us is untrusted: the safe walker and opener (``arcface.io.walk``), the image loader on
special files, and the batch commands on folders holding FIFOs, links leading out and oversized files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from arcface.io.files import find_images
from arcface.io.images import ImageError, load_image
from arcface.io.walk import FilePolicy, FileRefused, open_regular, parse_size, walk_files
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "arcface" / "samples"
GUARD_S = 5.0  # a FIFO opened for reading blocks forever: a call still running after this is hung


def _returns(fn, *args, **kwargs):
    """Call ``fn`` in a thread; fail (instead of hanging the suite) when it has not returned in GUARD_S."""
    box: dict = {}

    def call():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed back to the test
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(GUARD_S)
    if t.is_alive():
        pytest.fail(f"{fn.__name__} blocked (a FIFO opened for reading?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def tree(tmp_path):
    """``d/`` with a photo, a FIFO named like a photo, and a link to a photo outside ``d``."""
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(SAMPLES / "grace_hopper_1.jpg", d / "A.jpg")
    os.mkfifo(d / "fifo.jpg")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(SAMPLES / "eileen_collins.jpg", outside / "B.jpg")
    (d / "link.jpg").symlink_to(outside / "B.jpg")
    return d


def test_load_image_refuses_a_fifo_without_blocking(tree):
    with pytest.raises(ImageError) as e:
        _returns(load_image, tree / "fifo.jpg")
    assert e.value.reason == "unreadable" and "FIFO" in str(e.value) and "fifo.jpg" in str(e.value)
    with pytest.raises(ImageError, match="character device"):
        _returns(load_image, "/dev/zero")


def test_open_regular_checks_the_opened_file(tree, tmp_path):
    with pytest.raises(FileRefused) as e:
        _returns(open_regular, tree / "fifo.jpg")
    assert e.value.skipped.reason == "not_regular"
    with pytest.raises(FileRefused) as e:
        open_regular(tree / "link.jpg", root=tree)
    assert e.value.skipped.reason == "link_outside"
    with open_regular(tree / "link.jpg", policy=FilePolicy(follow_links=True)) as f:
        assert f.read(3) == b"\xff\xd8\xff"
    with pytest.raises(FileRefused) as e:
        open_regular(tree / "A.jpg", policy=FilePolicy(max_bytes=100))
    assert e.value.skipped.reason == "too_large"


def test_walk_keeps_regular_files_and_says_why_it_skipped_the_rest(tree):
    walk = _returns(walk_files, tree)
    assert walk.files == [tree / "A.jpg"]
    assert {(Path(s.path).name, s.reason) for s in walk.skipped} == {
        ("fifo.jpg", "not_regular"), ("link.jpg", "link_outside"),
    }  # fmt: skip
    followed = walk_files(tree, policy=FilePolicy(follow_links=True))
    assert followed.files == [tree / "A.jpg", tree / "link.jpg"]
    small = walk_files(tree, policy=FilePolicy(follow_links=True, max_bytes=1000))
    assert small.files == [] and {s.reason for s in small.skipped} == {"not_regular", "too_large"}
    assert find_images(tree) == [tree / "A.jpg"]


def test_walk_links_inside_the_root_and_loops(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "grace_hopper_1.jpg", d / "sub" / "A.jpg")
    (d / "inner.jpg").symlink_to(d / "sub" / "A.jpg")  # stays inside: kept
    (d / "sub" / "loop").symlink_to(d)  # a folder link back up: walked once at most
    (d / "dangling.jpg").symlink_to(d / "nope.jpg")
    walk = walk_files(d)
    assert walk.files == [d / "inner.jpg", d / "sub" / "A.jpg"]
    assert [(Path(s.path).name, s.reason) for s in walk.skipped] == [("dangling.jpg", "missing")]
    followed = _returns(walk_files, d, policy=FilePolicy(follow_links=True))
    assert followed.files == [d / "inner.jpg", d / "sub" / "A.jpg"]


def test_parse_size():
    assert parse_size("300M") == 300 << 20 and parse_size("2g") == 2 << 30 and parse_size("4096") == 4096
    assert parse_size("none") is None
    for bad in ("", "abc", "-5M", "1X", "nan"):
        with pytest.raises(ValueError):
            parse_size(bad)


def _cli(*args, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``arcface ARGS`` in a fresh process (a hang ends in TimeoutExpired, a test failure)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "arcface", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def test_embed_a_folder_with_a_fifo_ends_embeds_the_photo_and_lists_the_fifo(tree, tmp_path):
    (tree / "link.jpg").unlink()
    out = tmp_path / "e.npz"
    p = _cli("embed", tree, "--out", out, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "fifo.jpg: a FIFO" in p.stderr and "skipped 1 file (1 not_regular)" in p.stderr
    npz = np.load(out)
    assert [Path(x).name for x in npz["paths"]] == ["A.jpg"]
    assert np.isfinite(npz["embeddings"]).all()
    assert [(Path(a).name, b) for a, b, _ in npz["errors"]] == [("fifo.jpg", "not_regular")]


def test_embed_skips_a_link_leading_out_unless_told_to_follow_it(tree, tmp_path, capsys):
    out = tmp_path / "e.npz"
    rc, _, err = run_cli(capsys, "embed", tree, "--out", out, "--no-progress")
    assert rc == 0, err
    assert "link.jpg: a link to a file outside" in err and "--follow-links" in err
    npz = np.load(out)
    assert [Path(x).name for x in npz["paths"]] == ["A.jpg"]
    assert sorted(b for _, b, _ in npz["errors"]) == ["link_outside", "not_regular"]

    rc, _, err = run_cli(capsys, "embed", tree, "--out", out, "--no-progress", "--follow-links")
    assert rc == 0, err
    assert [Path(x).name for x in np.load(out)["paths"]] == ["A.jpg", "link.jpg"]

    # a list naming the link: the same rule (the link leads out of the folder holding it)
    listing = tree / "photos.txt"
    listing.write_text("A.jpg\nlink.jpg\nfifo.jpg\n")
    rc, _, err = run_cli(capsys, "embed", listing, "--out", out, "--no-progress")
    assert rc == 0, err
    assert [Path(x).name for x in np.load(out)["paths"]] == ["A.jpg"]


def test_embed_size_cap_and_nothing_left(tree, tmp_path, capsys):
    out = tmp_path / "e.npz"
    rc, _, err = run_cli(capsys, "embed", tree, "--out", out, "--no-progress", "--max-file-size", "1K")
    assert rc == 1 and "no image to embed" in err and "too_large" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "embed", tree, "--out", out, "--max-file-size", "lots")
    assert e.value.code == 1 and "not a size" in capsys.readouterr().err


def test_align_and_enroll_skip_fifos_and_links_leading_out(tree, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "align", tree, tmp_path / "crops", "--workers", "1", "--no-progress")
    assert rc == 0, err
    assert (tmp_path / "crops" / "A.png").is_file() and not (tmp_path / "crops" / "link.png").exists()
    assert "skipped 2 files (1 link_outside, 1 not_regular)" in err
    report = json.loads((tmp_path / "crops" / "align_report.json").read_text())
    assert {(f["path"], f["reason"]) for f in report["failures"]} == {
        ("fifo.jpg", "not_regular"), ("link.jpg", "link_outside"),
    }  # fmt: skip

    people = tmp_path / "people"
    (people / "grace").mkdir(parents=True)
    shutil.copy(SAMPLES / "grace_hopper_1.jpg", people / "grace" / "1.jpg")
    os.mkfifo(people / "grace" / "2.jpg")
    (people / "grace" / "3.jpg").symlink_to(tmp_path / "outside" / "B.jpg")
    (people / "eileen").symlink_to(tmp_path / "outside")  # a person folder that is a link leading out
    rc, out, err = run_cli(capsys, "gallery", "enroll", people, "--gallery", tmp_path / "g", "--no-progress")
    assert rc == 0, err
    assert "enrolled 1 face(s)" in out and "skipped 3 files" in err
    assert "2.jpg: a FIFO" in err and "3.jpg: a link to a file outside" in err and "eileen: a link" in err


def test_training_folder_reader_walks_safely(tmp_path):
    from arcface.data.folder import list_identities, read_list_file

    root, outside = tmp_path / "train", tmp_path / "store"
    (root / "a").mkdir(parents=True)
    (outside / "b").mkdir(parents=True)
    shutil.copy(SAMPLES / "grace_hopper_1.jpg", root / "a" / "1.jpg")
    shutil.copy(SAMPLES / "grace_hopper_2.jpg", outside / "b" / "1.jpg")
    (root / "a" / "2.jpg").symlink_to(outside / "b" / "1.jpg")
    os.mkfifo(root / "a" / "3.jpg")
    (root / "b").symlink_to(outside / "b")
    classes, samples = _returns(list_identities, root)
    assert classes == ["a"] and [Path(p).name for p, _ in samples] == ["1.jpg"]
    classes, samples = list_identities(root, follow_links=True)
    assert classes == ["a", "b"] and [Path(p).name for p, _ in samples] == ["1.jpg", "2.jpg", "1.jpg"]

    os.mkfifo(tmp_path / "list.txt")  # a list file that is a FIFO: refused, not read forever
    with pytest.raises(FileRefused):
        _returns(read_list_file, tmp_path / "list.txt")


def test_eval_reads_the_photos_of_a_pair_list_as_a_walk_does(tree, tmp_path, capsys):
    pairs = tree / "pairs.csv"
    pairs.write_text("A.jpg,link.jpg,1,0\nA.jpg,fifo.jpg,0,1\n")  # two folds
    rc, _, err = run_cli(capsys, "eval", "csv", "--data", pairs, "--no-cache", "--no-progress")
    assert rc == 1 and "link.jpg: a link to a file outside" in err and err.count("\n") == 1, err
    rc, _, err = _returns(run_cli, capsys, "eval", "csv", "--data", pairs, "--no-cache", "--follow-links")
    assert rc == 1 and "fifo.jpg: a FIFO (named pipe), not a regular file" in err and err.count("\n") == 1, err
