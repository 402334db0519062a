"""Every bad input of the issue, through the CLI: one clear line on stderr naming the file, a non-zero exit,
never a traceback; and the awkward-but-valid images (16-bit, RGBA, grey, CMYK, EXIF-rotated, huge, several
faces) made from a real LFW face still give that face.

The files are generated here, in tmp_path. Most cases run ``arcface.cli.main`` in this process; one runs the
real console to prove no traceback reaches it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from conftest import run_cli as cli
from test_image_io import _png_claiming

LFW = "data/lfw/lfw-deepfunneled"


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


@pytest.fixture(scope="module")
def face(lfw) -> np.ndarray:
    """A real LFW photo, (250, 250, 3) uint8 RGB, with one face in the middle."""
    return np.asarray(Image.open(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg").convert("RGB"))


def detect_json(capsys, path: Path, *extra) -> dict:
    rc, out, err = cli(capsys, "detect", path, "--json", *extra)
    assert rc == 0, err
    assert "Traceback" not in err
    return json.loads(out)


def assert_one_line_error(rc: int, err: str, path: Path, *words: str, status: int = 1) -> None:
    """Exit ``status``, exactly one line on stderr, naming the file and saying what is wrong."""
    assert rc == status, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert str(path) in err, err
    for w in words:
        assert w in err, err


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------
# Files that are not readable images: exit 1, one line naming the file


def test_missing_file(capsys, tmp_path):
    path = tmp_path / "nobody.jpg"
    assert_one_line_error(*cli(capsys, "detect", path)[::2], path, "no such file")


def test_empty_file(capsys, tmp_path):
    path = write(tmp_path / "empty.jpg", b"")
    assert_one_line_error(*cli(capsys, "detect", path)[::2], path, "empty")


def test_text_named_jpg(capsys, tmp_path):
    path = write(tmp_path / "photo.jpg", b"hello, this is not a photo\n")
    assert_one_line_error(*cli(capsys, "detect", path)[::2], path, "not an image")


def test_truncated_jpeg_through_the_console(lfw, tmp_path):
    data = (lfw / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    path = write(tmp_path / "cut.jpg", data[: len(data) // 2])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "arcface", "detect", str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert_one_line_error(r.returncode, r.stderr, path, "truncated or corrupt JPEG")
    assert r.stdout == ""


def test_image_bomb_is_refused_by_its_header(capsys, tmp_path):
    path = write(tmp_path / "bomb.png", _png_claiming(30_000, 30_000))  # a few dozen bytes claiming 900 MP
    assert path.stat().st_size < 100
    assert_one_line_error(*cli(capsys, "detect", path)[::2], path, "exceeds the pixel limit")


def test_verify_names_the_bad_file(capsys, lfw, tmp_path):
    good = lfw / "Colin_Powell" / "Colin_Powell_0001.jpg"
    bad = write(tmp_path / "b.png", b"\x89PNG\r\n\x1a\n" + bytes(20))
    rc, out, err = cli(capsys, "verify", good, bad, "--threshold", "0.4")
    assert_one_line_error(rc, err, bad, "corrupt PNG")
    assert str(good) not in err and out == ""


# --------------------------------------------------------------------------------------------------
# No face, several faces


def test_no_face(capsys, tmp_path):
    path = tmp_path / "flat grey.png"
    Image.new("RGB", (240, 200), (128, 128, 128)).save(path)
    rc, out, err = cli(capsys, "detect", path)
    assert_one_line_error(rc, err, path, "no face found in", status=3)
    assert out == ""
    rc, out, err = cli(capsys, "detect", path, "--json")
    assert rc == 3 and json.loads(out)["faces"] == []


def test_verify_says_which_photo_has_no_face(capsys, lfw, tmp_path):
    good = lfw / "Colin_Powell" / "Colin_Powell_0001.jpg"
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 200), (30, 90, 160)).save(flat)
    rc, out, err = cli(capsys, "verify", good, flat, "--threshold", "0.4")
    assert_one_line_error(rc, err, flat, "no face found in", status=3)
    assert str(good) not in err and out == ""


def test_several_faces_larger_first(capsys, lfw, tmp_path):
    def centre(name: str, side: int) -> np.ndarray:
        im = Image.open(lfw / name / f"{name}_0001.jpg").convert("RGB").crop((50, 50, 200, 200))  # the face only
        return np.asarray(im.resize((side, side), Image.Resampling.BICUBIC))

    canvas = np.full((220, 360, 3), 110, np.uint8)
    canvas[10:210, 10:210] = centre("George_W_Bush", 200)
    canvas[50:170, 230:350] = centre("Colin_Powell", 120)
    path = tmp_path / "two.png"
    Image.fromarray(canvas).save(path)

    faces = detect_json(capsys, path)["faces"]
    assert len(faces) == 2, faces
    area = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
    assert area[0] > area[1]
    assert faces[0]["box"][2] < 215 and faces[1]["box"][0] > 225  # left (large), then right (small)
    rc, out, _ = cli(capsys, "detect", path)
    assert rc == 0 and out.splitlines()[1].startswith("face 2: ")


# --------------------------------------------------------------------------------------------------
# Valid but awkward images made from a real face: the face is still found where it is


def _box_close(a, b, tol: float) -> bool:
    return bool(np.abs(np.array(a) - np.array(b)).max() < tol)


@pytest.fixture(scope="module")
def plain(face) -> dict:
    """Detection on the plain RGB photo."""
    from arcface.align import create_detector

    (det,) = create_detector("mtcnn").detect(face)[:1]
    return {"box": det.box, "landmarks": det.landmarks}


def _variants(face: np.ndarray) -> dict[str, tuple[str, bytes]]:
    grey = np.asarray(Image.fromarray(face).convert("L"))
    sixteen_rgb = cv2.imencode(".png", (face[..., ::-1].astype(np.uint16) * 257))[1].tobytes()
    sixteen_grey = encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:, :30, 3] = 0  # a transparent border
    rgba[:, 30:40, 3] = 128
    return {
        "16-bit RGB PNG": ("deep.png", sixteen_rgb),
        "16-bit grey PNG": ("deep_grey.png", sixteen_grey),
        "RGBA PNG": ("cutout.png", encode(Image.fromarray(rgba, "RGBA"), "PNG")),
        "grey JPEG": ("grey.jpg", encode(Image.fromarray(grey, "L"), "JPEG", quality=95)),
        "CMYK JPEG": ("print.jpg", encode(Image.fromarray(face).convert("CMYK"), "JPEG", quality=95)),
    }


@pytest.mark.parametrize("kind", ["16-bit RGB PNG", "16-bit grey PNG", "RGBA PNG", "grey JPEG", "CMYK JPEG"])
def test_awkward_formats_still_find_the_face(capsys, tmp_path, face, plain, kind):
    name, data = _variants(face)[kind]
    path = write(tmp_path / name, data)
    if kind.startswith("16-bit"):  # the file really is what it claims: PNG bit depth (IHDR byte 24)
        assert data[12:16] == b"IHDR" and data[24] == 16
    else:
        with Image.open(path) as im:
            assert im.mode == {"RGBA PNG": "RGBA", "grey JPEG": "L", "CMYK JPEG": "CMYK"}[kind]
    doc = detect_json(capsys, path)
    assert (doc["width"], doc["height"]) == (250, 250)
    assert doc["faces"], kind
    assert _box_close(doc["faces"][0]["box"], plain["box"], tol=12), (kind, doc["faces"][0]["box"], plain["box"])


def test_exif_rotated_photo_is_turned_upright(capsys, tmp_path, face, plain):
    stored = np.ascontiguousarray(np.rot90(face, k=1))  # a phone held sideways: pixels turned left...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and the tag that says "turn right to view"
    path = write(tmp_path / "phone.jpg", encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif))
    doc = detect_json(capsys, path)
    lms = np.array(doc["faces"][0]["landmarks"])
    assert lms[:2, 1].max() < lms[3:, 1].min()  # eyes above the mouth: upright
    assert _box_close(doc["faces"][0]["box"], plain["box"], tol=15)


def test_huge_image_is_downscaled_and_landmarks_map_back(capsys, tmp_path, face, plain):
    side, scale = 4000, 4000 / 250
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "huge.jpg"
    Image.fromarray(big).save(path, quality=90)
    doc = detect_json(capsys, path)  # detected on a 1600 px copy (--max-side default)
    assert (doc["width"], doc["height"]) == (side, side)
    (f,) = doc["faces"]
    lms = np.array(f["landmarks"])
    x1, y1, x2, y2 = np.array(plain["box"]) * scale
    assert ((lms[:, 0] > x1) & (lms[:, 0] < x2) & (lms[:, 1] > y1) & (lms[:, 1] < y2)).all()
    expected = (plain["landmarks"] + 0.5) * scale - 0.5
    eye_distance = np.linalg.norm(expected[1] - expected[0])
    assert np.linalg.norm(lms - expected, axis=1).max() < 0.1 * eye_distance
