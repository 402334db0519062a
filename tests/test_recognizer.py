"""FaceRecognizer: the public photo-to-identity API on real LFW photos (../shared), and its error paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import arcface
from arcface import Face, FaceRecognizer, ImageError, NoFaceError, Verification
from arcface.inference.contract import ModelContract
from arcface.inference.embedder import Embedder
from arcface.inference.loader import load_model
from arcface.io.images import load_image
from arcface.models import create_model
from conftest import embed_or_none, photo, require_shared

LFW = "data/lfw/lfw-deepfunneled"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a small shared CPU, two busy-waiting threads per process slow MTCNN by 10-40x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


@pytest.fixture(scope="module")
def rec() -> FaceRecognizer:
    return FaceRecognizer()


def test_public_names_and_light_import():
    for name in ("FaceRecognizer", "Face", "Verification", "NoFaceError", "ImageError", "load_image"):
        assert name in arcface.__all__ and hasattr(arcface, name)
    assert {"Registry", "create_model", "create_head", "__version__"} <= set(arcface.__all__)
    assert issubclass(NoFaceError, ValueError) and issubclass(ImageError, ValueError)
    code = "import sys, arcface; print(sorted(m for m in ('cv2', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # OpenCV and onnxruntime load on first use, not at import


def test_detect_align_embed(rec, lfw):
    path = photo(lfw, "Colin_Powell", 1)
    faces = rec.detect(path)
    assert len(faces) >= 1 and all(isinstance(f, Face) for f in faces)
    f = faces[0]
    assert len(f.box) == 4 and 0 < f.score <= 1
    assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
    x1, y1, x2, y2 = f.box
    assert (x1 < f.landmarks[:, 0]).all() and (f.landmarks[:, 0] < x2).all()
    assert (y1 < f.landmarks[:, 1]).all() and (f.landmarks[:, 1] < y2).all()
    assert f.landmarks[0, 0] < f.landmarks[1, 0]  # image-left eye first

    crops = rec.align(path)
    assert len(crops) == len(faces)
    assert all(c.shape == (112, 112, 3) and c.dtype == np.uint8 for c in crops)

    emb = rec.embed(path)
    assert emb.shape == (192,) and emb.dtype == np.float32
    assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    all_faces = rec.embed_faces(path)
    assert all_faces.shape == (len(faces), 192)
    np.testing.assert_allclose(np.linalg.norm(all_faces, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(all_faces[0], emb, atol=1e-5)


def test_main_face_first(rec, lfw):
    big = load_image(photo(lfw, "George_W_Bush", 1))  # (250, 250, 3)
    small = np.asarray(Image.fromarray(load_image(photo(lfw, "Colin_Powell", 1))).resize((140, 140)))
    canvas = np.zeros((250, 400, 3), np.uint8)
    canvas[:, :250] = big
    canvas[55:195, 255:395] = small
    faces = rec.detect(canvas)
    assert len(faces) >= 2
    assert (faces[0].box[0] + faces[0].box[2]) / 2 < 250  # the big face, on the left
    emb = rec.embed_faces(canvas)
    assert emb.shape[0] == len(faces)
    assert float(emb[0] @ rec.embed(big)) > 0.9
    assert float(emb[1] @ rec.embed(photo(lfw, "Colin_Powell", 1))) > 0.7


def test_verify_same_and_different(rec, lfw):
    assert rec.threshold is not None and rec.threshold == rec.contract.threshold  # calibrated, shipped
    same = rec.verify(photo(lfw, "George_W_Bush", 1), photo(lfw, "George_W_Bush", 2))
    assert isinstance(same, Verification) and same.same and same.threshold == rec.threshold
    assert same.similarity > rec.threshold
    assert same.distance_l2 == pytest.approx(2 - 2 * same.similarity)
    assert same.threshold_l2 == pytest.approx(2 - 2 * rec.threshold)
    assert rec.verify(photo(lfw, "Colin_Powell", 1), photo(lfw, "Colin_Powell", 2)).same
    diff = rec.verify(photo(lfw, "George_W_Bush", 1), photo(lfw, "Colin_Powell", 1))
    assert not diff.same and diff.similarity < rec.threshold


def test_lfw_view1_200_test_pairs(rec, lfw):
    """Acceptance: >= 97% right on the first 100 same + first 100 different pairs of pairsDevTest."""
    lines = require_shared("data/lfw/pairsDevTest.txt").read_text().splitlines()[1:]
    fields = [line.split("\t") for line in lines]
    same = [(photo(lfw, f[0], int(f[1])), photo(lfw, f[0], int(f[2])), True) for f in fields if len(f) == 3]
    diff = [(photo(lfw, f[0], int(f[1])), photo(lfw, f[2], int(f[3])), False) for f in fields if len(f) == 4]
    pairs = same[:100] + diff[:100]
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    cache = dict(zip(paths, embed_or_none(rec, paths)))  # None (no face): the pair counts as wrong
    right = sum(
        cache[a] is not None and cache[b] is not None and rec.verify(cache[a], cache[b]).same == label
        for a, b, label in pairs
    )
    print(f"200 LFW View-1 test pairs: {right / len(pairs):.3f} right, {len(cache)} images")
    assert right / len(pairs) >= 0.97


def test_aligned_input(rec, lfw, tmp_path):
    path = photo(lfw, "George_W_Bush", 3)
    crop = rec.align(path)[0]
    np.testing.assert_allclose(rec.embed(crop, aligned=True), rec.embed(path), atol=1e-5)
    png = tmp_path / "crop.png"
    Image.fromarray(crop).save(png)
    np.testing.assert_allclose(rec.embed(png, aligned=True), rec.embed(crop, aligned=True), atol=1e-6)
    batch = rec.embed_batch([crop, crop[:, ::-1]], aligned=True)
    assert batch.shape == (2, 192)
    assert rec.compare(crop, crop, aligned=True) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"big\.png: aligned=True needs a 112x112"):
        Image.fromarray(load_image(path)).save(tmp_path / "big.png")
        rec.embed(tmp_path / "big.png", aligned=True)


def test_no_face(rec, tmp_path):
    grey = np.full((200, 240, 3), 128, np.uint8)
    assert rec.detect(grey) == [] and rec.align(grey) == []
    assert rec.embed_faces(grey).shape == (0, 192)
    with pytest.raises(NoFaceError, match=r"^<array>: no face found$"):
        rec.embed(grey)
    path = tmp_path / "flat grey.png"
    Image.fromarray(grey).save(path)
    with pytest.raises(NoFaceError, match="flat grey.png") as info:
        rec.compare(path, path)
    assert info.value.source == str(path)


def test_bad_input(rec, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo, just some words\n")
    with pytest.raises(ImageError, match="notes.jpg: not an image") as info:
        rec.embed(text)
    assert info.value.reason == "not_image"
    with pytest.raises(ImageError, match="missing.jpg") as info:
        rec.detect(tmp_path / "missing.jpg")
    assert info.value.reason == "missing"
    with pytest.raises(ImageError):
        rec.embed(np.zeros((112, 112, 3), np.float32))  # float pixels are ambiguous


def test_grey_and_pil_inputs(rec, lfw):
    path = photo(lfw, "Colin_Powell", 2)
    pil = Image.open(path)
    colour = rec.embed(path)
    np.testing.assert_allclose(rec.embed(pil), colour, atol=1e-5)
    grey_pil = pil.convert("L")
    grey = np.asarray(grey_pil)  # (H, W)
    assert grey.ndim == 2
    e_grey = rec.embed(grey)
    np.testing.assert_allclose(rec.embed(grey_pil), e_grey, atol=1e-5)
    assert float(e_grey @ colour) > 0.8  # the same photo without colour


def test_compare_embeddings(rec, lfw):
    a, b = rec.embed_batch([photo(lfw, "George_W_Bush", 1), photo(lfw, "George_W_Bush", 2)])
    assert rec.compare(a, a) == pytest.approx(1.0, abs=1e-6)
    assert rec.compare(a, 3 * b) == pytest.approx(float(a @ b), abs=1e-6)  # re-normalised
    assert rec.compare(a, photo(lfw, "George_W_Bush", 2)) == pytest.approx(float(a @ b), abs=1e-5)
    with pytest.raises(ValueError, match="different contracts"):
        rec.compare(a, np.ones(128, np.float32))
    with pytest.raises(NoFaceError, match="<array>"):
        rec.embed_batch([photo(lfw, "George_W_Bush", 1), np.full((100, 100), 7, np.uint8)])


def test_flip_option(rec, lfw):
    crops = np.stack([rec.align(photo(lfw, "George_W_Bush", i))[0] for i in (1, 2)])
    plain = rec.embedder.embed(crops)
    flip = load_model("default", flip=True)
    fused = flip.embed(crops)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    assert np.abs(fused - plain).max() > 1e-3  # it changes the embedding ...
    assert (np.sum(fused * plain, axis=1) > 0.95).all()  # ... but not the identity
    np.testing.assert_allclose(flip.embed(crops[:, :, ::-1]), fused, atol=1e-5)  # mirror invariant
    assert flip.contract.id == rec.contract.id  # same model: comparable
    assert FaceRecognizer(flip=True).embedder.flip


def test_threshold_required_and_override():
    module = create_model("r18", width_mult=0.25, num_features=64)
    contract = ModelContract("r18", 64, options={"width_mult": 0.25})
    backend = Embedder.from_module(module, "fp32", "torch", contract=contract)
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    uncalibrated = FaceRecognizer(backend)
    assert uncalibrated.threshold is None
    with pytest.raises(ValueError, match="no calibrated threshold"):
        uncalibrated.verify(crop, crop, aligned=True)
    given = FaceRecognizer(backend, threshold=0.5)
    result = given.verify(crop, crop, aligned=True)
    assert result.same and result.threshold == 0.5
    with pytest.raises(ValueError, match="threshold"):
        FaceRecognizer(backend, threshold=2.0)


def test_embedder_input_checks():
    embedder = load_model()
    assert embedder.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 192)
    assert embedder.embed([]).shape == (0, 192)
    with pytest.raises(ValueError, match=r"\(N, 112, 112, 3\) uint8"):
        embedder.embed(np.zeros((2, 96, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((1, 112, 112, 3), np.float32))


def test_huge_image_is_downscaled_for_detection(lfw):
    path = photo(lfw, "George_W_Bush", 1)
    small_detector = FaceRecognizer(max_side=320)  # detection sees at most 320 pixels a side
    huge = np.asarray(Image.open(path).resize((1000, 1000), Image.Resampling.BICUBIC))
    faces = small_detector.detect(huge)
    assert faces and faces[0].box[2] > 500  # boxes are in the full-resolution image's pixels
    crop = small_detector.align(huge)[0]  # cut from the full-resolution photo
    assert crop.shape == (112, 112, 3)
    assert float(small_detector.embed(huge) @ small_detector.embed(path)) > 0.9
