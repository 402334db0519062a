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


# --------------------------------------------------------------------------------------------------
# Hostile model and weight files: one line naming the file (and the field), exit 1, bounded memory

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "arcface" / "samples"
BUNDLED = Path(__file__).resolve().parents[1] / "src" / "arcface" / "weights" / "mobilefacenet_tflite.safetensors"


def bundled_with_contract(path: Path, **fields) -> Path:
    """The bundled model's weights (its SHA-256 still matches) under its contract with ``fields`` replaced; the
    stored id is dropped, as anyone editing the file would recompute it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(BUNDLED), "pt") as f:
        meta = dict(f.metadata())
    doc = json.loads(meta["arcface_contract"])
    doc.update(fields)
    doc.pop("id")
    meta["arcface_contract"] = json.dumps(doc)
    save_file(load_file(str(BUNDLED)), str(path), metadata=meta)
    return path


_PEAK_CODE = """
import atexit, sys
def _peak():
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as out:
        out.write(hwm.split()[1])
atexit.register(_peak)
from arcface.cli import main
sys.exit(main(sys.argv[2:]))
"""


def console_with_peak(args: list, tmp_path: Path) -> tuple[int, str, int]:
    """Run ``arcface ARGS`` in a fresh process; (exit status, stderr, peak resident set of that process in bytes).

    The peak is the process's own VmHWM, read as it exits: getrusage's ru_maxrss would also count the pages of this
    test process that the child shared between fork and exec, which in a long test run exceed the bound checked."""
    err, peak = tmp_path / "stderr.txt", tmp_path / "peak.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(err, "wb") as fh:
        code = subprocess.run(
            [sys.executable, "-c", _PEAK_CODE, str(peak), *map(str, args)], stdout=subprocess.DEVNULL, stderr=fh,
            env=env, timeout=300,
        ).returncode  # fmt: skip
    return code, err.read_text(), int(peak.read_text()) * 1024


@pytest.mark.parametrize(
    ("field", "value"), [("input_size", [20000, 20000]), ("embedding_size", 100_000_000)], ids=["side", "embedding"]
)
def test_hostile_contract_sizes_through_the_console(tmp_path, field, value):
    model = bundled_with_contract(tmp_path / "m.safetensors", **{field: value})
    args = ["verify", "--model", model, SAMPLES / "grace_hopper_1.jpg", SAMPLES / "grace_hopper_2.jpg"]
    rc, err, peak = console_with_peak(args, tmp_path)
    assert_one_line_error(rc, err, model, f"contract field {field}")
    assert peak < 1 << 30, f"peak resident set {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("value", [float("nan"), 1e30], ids=["nan", "huge"])
def test_template_points_must_be_finite_and_in_the_crop(capsys, tmp_path, value):
    points = [[38.2946, 51.6963], [73.5318, 51.5014], [value, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
    model = bundled_with_contract(tmp_path / "m.safetensors", template_points=points)
    rc, _, err = cli(capsys, "verify", "--model", model, SAMPLES / "grace_hopper_1.jpg", SAMPLES / "grace_hopper_2.jpg")
    assert_one_line_error(rc, err, model, "contract field template_points")
    outside = bundled_with_contract(tmp_path / "o.safetensors", template_points=[[500.0, 10.0]] * 5)
    rc, _, err = cli(
        capsys, "verify", "--model", outside, SAMPLES / "grace_hopper_1.jpg", SAMPLES / "eileen_collins.jpg"
    )
    assert_one_line_error(rc, err, outside, "template_points", "outside")


def _train_init_from(capsys, tmp_path: Path, weights: Path) -> tuple[int, str]:
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke_synthetic.yaml"
    rc, _, err = cli(capsys, "train", config, "--out", tmp_path / "run", "--max-steps", "1", "--no-progress",
                     "--init-from", weights)  # fmt: skip
    return rc, err


def test_init_from_a_torn_or_lying_safetensors_file(capsys, tmp_path):
    huge = write(tmp_path / "huge.safetensors", (1 << 62).to_bytes(8, "little") + b"{}")
    rc, err = _train_init_from(capsys, tmp_path, huge)
    assert_one_line_error(rc, err, huge, "header length")
    garbage = write(tmp_path / "garbage.safetensors", b"this is no model" * 4)
    rc, err = _train_init_from(capsys, tmp_path, garbage)
    assert_one_line_error(rc, err, garbage, "not a safetensors file")
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(other))  # readable, but weights of another network
    rc, err = _train_init_from(capsys, tmp_path, other)
    assert_one_line_error(rc, err, other, "do not fit")


class _Gadget:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_pickle_with_code_is_refused_without_torch_advice(capsys, tmp_path):
    import torch

    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": _Gadget()}, evil)
    rc, err = _train_init_from(capsys, tmp_path, evil)
    assert_one_line_error(rc, err, evil, "holds code", "refused")
    assert "weights_only" not in err and "unpickled!" not in err
    rc, out, err = cli(capsys, "convert", "evolve", evil, "--arch", "IR_50", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(rc, err, evil, "holds code")
    assert "weights_only" not in err and "unpickled!" not in out


def test_onnx_contract_nested_deep(capsys, tmp_path):
    from test_fuzz_loaders import onnx_contract_seed, onnx_seed

    doc = json.loads(onnx_contract_seed())
    text = json.dumps(doc).replace(
        '"options": {"preset": "insightface"}', '"options": ' + "[" * 100_000 + "]" * 100_000
    )
    model = onnx_seed(tmp_path / "deep.onnx", text)
    rc, _, err = cli(capsys, "verify", "--model", model, SAMPLES / "grace_hopper_1.jpg", SAMPLES / "grace_hopper_2.jpg")
    assert_one_line_error(rc, err, model, "contract field options", "nested")


def _mxnet_checkpoint(folder: Path, symbol: str, params: bytes | None = None) -> Path:
    from test_fuzz_loaders import mxnet_params_seed

    folder.mkdir()
    (folder / "m-symbol.json").write_text(symbol)
    if params is None:
        mxnet_params_seed(folder / "m-0000.params")
    else:
        (folder / "m-0000.params").write_bytes(params)
    return folder / "m"


@pytest.mark.parametrize("where", ["attrs", "symbol"])
def test_mxnet_symbol_nested_deep(capsys, tmp_path, where):
    from test_fuzz_loaders import mxnet_symbol_seed

    doc = mxnet_symbol_seed()
    text = json.dumps(doc)
    nest = "[" * 200_000 + "]" * 200_000
    if where == "attrs":
        text = text.replace('"num_filter": "2"', '"num_filter": ' + nest)
    else:
        text = text.replace('"arg_nodes": [0, 3]', '"arg_nodes": ' + nest)
    prefix = _mxnet_checkpoint(tmp_path / where, text)
    rc, _, err = cli(capsys, "convert", "mxnet", prefix, "--out", tmp_path / "o.safetensors")
    assert_one_line_error(rc, err, prefix.parent / "m-symbol.json", "nested")


@pytest.mark.parametrize("dim", [2**32, -5, 2**62], ids=["2^32", "negative", "2^62"])
def test_mxnet_dimensions_are_checked_against_the_file(capsys, tmp_path, dim):
    import struct

    from test_fuzz_loaders import mxnet_symbol_seed

    head = struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<i2q", 2, dim, 3)
    array = head + struct.pack("<iii", 1, 0, 0) + bytes(24)
    params = struct.pack("<QQQ", 0x112, 0, 1) + array + struct.pack("<Q", 1) + struct.pack("<Q", 5) + b"arg:w"
    prefix = _mxnet_checkpoint(tmp_path / "dims", json.dumps(mxnet_symbol_seed()), params)
    rc, _, err = cli(capsys, "convert", "mxnet", prefix, "--out", tmp_path / "o.safetensors")
    assert_one_line_error(rc, err, prefix.parent / "m-0000.params", "array 0")


@pytest.mark.parametrize("kind", ["torn", "foreign", "bad_rng"])
def test_resume_from_a_bad_checkpoint(capsys, tmp_path, kind):
    import torch

    from arcface.engine.checkpoint import rng_state

    run = tmp_path / "run"
    run.mkdir()
    path = run / "ckpt-00000001.pt"
    if kind == "torn":
        path.write_bytes(b"PK\x03\x04" + bytes(100))
    else:
        state = {"step": 1}
        if kind == "bad_rng":
            rng = rng_state()
            rng["numpy"]["keys"] = torch.zeros(3, dtype=torch.int64)
            state = {"model": {}, "head_shards": [], "optimizer": {}, "scheduler": {}, "scaler": {}, "sampler": {},
                     "rng": rng, "step": 1}  # fmt: skip
        torch.save(state, path)
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke_synthetic.yaml"
    rc, _, err = cli(capsys, "train", config, "--out", run, "--resume", "--no-progress")
    assert_one_line_error(rc, err, path, "checkpoint")


def test_onnx_input_too_large_is_refused_before_probing(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["emb"])],
        "huge_input",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 20000, 20000])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None)],  # unknown: the loader would run it to see
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "huge_input.onnx"
    onnx.save(model, str(path))
    rc, _, err = cli(capsys, "verify", "--model", path, SAMPLES / "grace_hopper_1.jpg", SAMPLES / "grace_hopper_2.jpg")
    assert_one_line_error(rc, err, path, "20000x20000", "larger than a face model takes")


def test_a_fifo_given_as_a_file_is_refused_without_waiting(tmp_path):
    """A FIFO named as a pair file, a .bin set, a model or a settings file is one line, never a read that waits for a
    writer (each call runs under a guard that fails the test instead of hanging it)."""
    import concurrent.futures

    from arcface.eval.datasets import read_bin, read_csv_pairs, read_lfw_pairs
    from arcface.inference.loader import load_model
    from arcface.runtime.untrusted import BadFileError
    from arcface.serve.settings import Settings, SettingsError

    calls = {
        "pairs.txt": lambda p: read_lfw_pairs(p, tmp_path),
        "pairs.csv": lambda p: read_csv_pairs(p, tmp_path),
        "set.bin": read_bin,
        "m.safetensors": load_model,
        "settings.json": lambda p: Settings.load(p, env={}),
    }
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        for name, call in calls.items():
            fifo = tmp_path / name
            os.mkfifo(fifo)
            with pytest.raises((BadFileError, SettingsError, FileNotFoundError)) as e:
                pool.submit(call, fifo).result(timeout=30)
            assert str(fifo) in str(e.value) and "\n" not in str(e.value), (name, e.value)
    finally:
        pool.shutdown(wait=False)
