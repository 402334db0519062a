"""Face detectors: the registry, bundled weights, and behaviour on real LFW faces (../shared)."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from arcface.align import (
    ARCFACE_TEMPLATE,
    DETECTORS,
    MTCNN,
    SCRFD,
    Face,
    FaceDetector,
    YuNet,
    create_detector,
    norm_crop,
)
from arcface.align.mtcnn import _face_prob, _MaxPoolCeil, _MipPyramid, _normalise, _packed_pyramid

LFW = "data/lfw/lfw-deepfunneled"
SCRFD_ONNX = "weights/detectors/scrfd_2.5g_bnkps.onnx"


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return create_detector("mtcnn")


@pytest.fixture(scope="module")
def yunet() -> YuNet:
    return create_detector("yunet")


@lru_cache(maxsize=4)
def _sample(root: Path, n: int = 40) -> tuple[tuple[str, np.ndarray], ...]:
    """A fixed, evenly spread sample of ``n`` LFW images as (name, (250, 250, 3) uint8 RGB)."""
    paths = sorted(root.glob("*/*.jpg"))
    step = max(1, len(paths) // n)
    return tuple((p.name, _read_rgb(p)) for p in paths[::step][:n])


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@lru_cache(maxsize=1)
def _mtcnn_on_sample(root: Path) -> tuple[list[Face], ...]:
    det = create_detector("mtcnn")
    return tuple(det.detect(img) for _, img in _sample(root))


def _iod(lms: np.ndarray) -> float:
    return float(np.linalg.norm(lms[1] - lms[0]))


# --- interface ---------------------------------------------------------------------------------------


def test_registry_and_factory(mtcnn):
    assert DETECTORS.names() == ["mtcnn", "scrfd", "yunet"]
    assert isinstance(mtcnn, MTCNN) and isinstance(mtcnn, FaceDetector)
    assert isinstance(create_detector(), MTCNN)  # mtcnn is the default, as in the paper
    with pytest.raises(KeyError, match="unknown detector 'retina'.*mtcnn"):
        create_detector("retina")
    with pytest.raises(ValueError):
        create_detector("mtcnn", min_face_size=5)
    with pytest.raises(TypeError):
        create_detector("scrfd")  # model_path is required: SCRFD weights are not shipped
    with pytest.raises(FileNotFoundError):
        create_detector("scrfd", model_path="/nonexistent/scrfd.onnx")


def test_bundled_weights_match_the_notice():
    weights = files("arcface") / "weights"
    notice = (weights / "NOTICE.md").read_text()
    assert "Copyright (c) 2019 Timothy Esler" in notice and "MIT License" in notice
    listed = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", notice))  # file -> SHA-256
    expected = {"mtcnn/pnet.pt", "mtcnn/rnet.pt", "mtcnn/onet.pt", "detectors/face_detection_yunet_2023mar_int8bq.onnx"}
    assert expected <= set(listed)
    for rel in expected:
        data = weights.joinpath(*rel.split("/")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == listed[rel], rel


@pytest.mark.parametrize(
    "bad", [np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.float32), np.zeros((0, 5, 3), np.uint8)]
)
def test_bad_input_is_rejected(mtcnn, bad):
    with pytest.raises(ValueError, match="uint8|empty"):
        mtcnn.detect(bad)
    with pytest.raises(TypeError):
        mtcnn.detect([[0, 0, 0]])


@pytest.mark.parametrize("name", ["mtcnn", "yunet"])
def test_no_face_gives_an_empty_list(name, mtcnn, yunet):
    det = {"mtcnn": mtcnn, "yunet": yunet}[name]
    assert det.detect(np.full((240, 320, 3), 128, dtype=np.uint8)) == []
    assert det.detect(np.zeros((8, 8, 3), dtype=np.uint8)) == []  # smaller than any face


# --- LFW ---------------------------------------------------------------------------------------------


def test_mtcnn_finds_the_central_face_in_every_lfw_sample(shared):
    root = shared(LFW)
    sample, results = _sample(root), _mtcnn_on_sample(root)
    assert len(sample) == 40
    for (name, img), faces in zip(sample, results):
        assert faces, f"no face in {name}"
        main = faces[0]
        x1, y1, x2, y2 = main.box
        h, w = img.shape[:2]
        assert abs((x1 + x2) / 2 - w / 2) < 35 and abs((y1 + y2) / 2 - h / 2) < 35, (name, main.box)
        assert 60 < x2 - x1 < 200 and main.score > 0.9, (name, main)
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = main.landmarks
        assert lex < rex and lmx < rmx, name  # image-left first
        assert max(ley, rey) < ny < min(lmy, rmy), name  # eyes above the nose above the mouth
        assert x1 <= min(lex, lmx) and max(rex, rmx) <= x2 and y1 <= min(ley, rey) and max(lmy, rmy) <= y2, name
        assert main.landmarks.shape == (5, 2) and main.landmarks.dtype == np.float32
        assert all(f.score <= 1 for f in faces)


def test_mtcnn_and_yunet_landmarks_agree(shared, yunet):
    root = shared(LFW)
    errors = []
    for (name, img), faces in zip(_sample(root), _mtcnn_on_sample(root)):
        other = yunet.detect(img)
        assert other, f"yunet found no face in {name}"
        a, b = faces[0].landmarks, other[0].landmarks
        errors.append(np.linalg.norm(a - b, axis=1).mean() / _iod(a))
    # The two detectors' landmark definitions differ slightly (about 10% of the eye distance on average).
    assert max(errors) < 0.3 and np.mean(errors) < 0.15, np.round(errors, 3)


def test_aligned_crop_looks_like_a_face_at_the_template(shared, mtcnn):
    root = shared(LFW)
    errors = []
    for (name, img), faces in list(zip(_sample(root), _mtcnn_on_sample(root)))[:12]:
        crop = norm_crop(img, faces[0].landmarks)
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        again = mtcnn.detect(crop)
        assert again, f"no face in the aligned crop of {name}"
        errors.append(np.linalg.norm(again[0].landmarks - ARCFACE_TEMPLATE, axis=1).mean())
    assert max(errors) < 7 and np.mean(errors) < 4, np.round(errors, 2)  # pixels of the 112x112 crop


def test_two_faces_are_found_and_the_larger_comes_first(shared, mtcnn, yunet):
    (_, a), (_, b) = _sample(shared(LFW))[1:3]
    small = cv2.resize(b, (125, 125), interpolation=cv2.INTER_AREA)
    canvas = np.full((300, 420, 3), 90, dtype=np.uint8)
    canvas[25:275, 10:260] = a  # face ~100 px, left
    canvas[90:215, 280:405] = small  # face ~50 px, right
    for det in (mtcnn, yunet):
        faces = det.detect(canvas)
        centres = [((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in faces]
        assert any(10 < x < 260 for x, _ in centres) and any(280 < x < 405 for x, _ in centres), centres
        assert 10 < centres[0][0] < 260 and faces[0].area > faces[1].area, (type(det).__name__, faces)


def test_huge_images_are_downscaled_and_mapped_back(shared):
    _, img = _sample(shared(LFW))[0]
    big = cv2.resize(img, (1000, 1000), interpolation=cv2.INTER_CUBIC)
    det = create_detector("mtcnn", max_side=500)
    seen = []
    inner = det._detect
    det._detect = lambda im: (seen.append(im.shape), inner(im))[1]
    ref = create_detector("mtcnn").detect(img)[0]
    out = det.detect(big)[0]
    assert seen == [(500, 500, 3)]
    expected = (ref.landmarks + 0.5) * 4 - 0.5  # pixel-index coordinates scale about pixel edges
    assert np.linalg.norm(out.landmarks - expected, axis=1).mean() < 0.05 * _iod(expected)
    np.testing.assert_allclose(out.box, np.array(ref.box) * 4, atol=0.1 * (ref.box[2] - ref.box[0]) * 4)


def test_packed_pyramid_equals_pnet_run_per_level(mtcnn):
    """P-Net runs once on all pyramid levels packed into one canvas; each level's cells must be unchanged."""
    img = np.random.default_rng(0).integers(0, 256, (97, 131, 3)).astype(np.float32)  # odd sizes
    scales = mtcnn.scales(*img.shape[:2])
    canvas, offsets, sizes = _packed_pyramid(img, scales)
    assert len(scales) == 5  # 97 * 0.6 * 0.709^k >= 12 for k = 0..4
    rects = [(oy, ox, oy + hs, ox + ws) for (oy, ox), (hs, ws) in zip(offsets, sizes)]
    for i, a in enumerate(rects):
        assert a[0] % 2 == 0 and a[1] % 2 == 0 and a[2] <= canvas.shape[0] and a[3] <= canvas.shape[1]
        for b in rects[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)  # disjoint
    with torch.inference_mode():
        _, packed = mtcnn.pnet(_normalise(torch.from_numpy(canvas).permute(2, 0, 1)[None]))
        for (oy, ox), (hs, ws) in zip(offsets, sizes):
            level = canvas[oy : oy + hs, ox : ox + ws]
            _, own = mtcnn.pnet(_normalise(torch.from_numpy(np.ascontiguousarray(level)).permute(2, 0, 1)[None]))
            ni, nj = (hs - 12) // 2 + 1, (ws - 12) // 2 + 1  # cells whose 12x12 window lies inside the level
            got = packed[0, oy // 2 : oy // 2 + ni, ox // 2 : ox // 2 + nj]
            torch.testing.assert_close(got, own[0, :ni, :nj], atol=1e-5, rtol=1e-4)


def test_mtcnn_fast_ops_give_torchs_values():
    """The cascade's hand-written speed-ups compute exactly what the reference ops do."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    for k, s in ((2, 2), (3, 2)):
        for h, w in ((22, 22), (21, 9), (372, 150), (8, 7), (3, 3)):
            x = torch.randn(2, 5, h, w, generator=gen)
            for t in (x, x.contiguous(memory_format=torch.channels_last)):
                assert torch.equal(_MaxPoolCeil(k, s)(t), F.max_pool2d(t, k, s, ceil_mode=True)), (k, s, h, w)
    logits = torch.randn(4, 2, 5, 6, generator=gen) * 10
    torch.testing.assert_close(_face_prob(logits), torch.softmax(logits, 1)[:, 1])
    for shape in ((250, 250, 3), (97, 131, 3)):
        img = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
        mips = _MipPyramid(img, torch.device("cpu"))
        ref = torch.from_numpy(img).permute(2, 0, 1)[None]
        for k in (1, 2, 3):
            ref = F.avg_pool2d(ref, 2)
            torch.testing.assert_close(mips.level(k), ref, atol=1e-4, rtol=0)


def test_mtcnn_chunked_crops_give_the_same_result(shared, mtcnn):
    _, img = _sample(shared(LFW))[3]
    chunked = create_detector("mtcnn", batch_size=3)
    a, b = mtcnn.detect(img), chunked.detect(img)
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        np.testing.assert_allclose(fa.box, fb.box, atol=1e-3)
        np.testing.assert_allclose(fa.landmarks, fb.landmarks, atol=1e-3)


def test_scrfd_from_a_user_supplied_model(shared):
    root, onnx = shared(LFW), shared(SCRFD_ONNX)
    det = create_detector("scrfd", model_path=onnx)
    assert isinstance(det, SCRFD)
    assert det.detect(np.full((200, 200, 3), 128, dtype=np.uint8)) == []
    for (name, img), faces in list(zip(_sample(root), _mtcnn_on_sample(root)))[:5]:
        out = det.detect(img)
        assert out, f"scrfd found no face in {name}"
        a, b = faces[0].landmarks, out[0].landmarks
        assert np.linalg.norm(a - b, axis=1).mean() < 0.25 * _iod(a), name
        assert out[0].landmarks[0, 0] < out[0].landmarks[1, 0]
