"""MTCNN's batched cascade: ``detect_batch`` gives what ``detect`` gives, and its pieces match the reference ops.

The LFW tests need ../shared (skipped with the reason where it is absent, failing under CI=true).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arcface.align import MTCNN, Face, create_detector
from arcface.align.mtcnn import (
    _crop,
    _fill_canvases,
    _group_sides,
    _layout,
    _MaxPoolCeil,
    _MipPyramid,
    _normalise,
    _prelu_rows,
)

LFW = "data/lfw/lfw-deepfunneled"


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return create_detector("mtcnn")


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@lru_cache(maxsize=1)
def _varied(root: Path) -> tuple[tuple[str, np.ndarray], ...]:
    """28 LFW photos at various sizes, a photo with no face, a tiny image, a two-face canvas and a huge image."""
    paths = sorted(root.glob("*/*.jpg"))[::450][:28]
    out = []
    for k, p in enumerate(paths):
        img = _read_rgb(p)
        if k % 4 == 1:
            img = cv2.resize(img, (330 + 7 * k, 290 + 3 * k), interpolation=cv2.INTER_CUBIC)  # larger, not square
        elif k % 4 == 2:
            img = np.ascontiguousarray(img[25 + k : 231, 18:205 + k])  # a crop, odd sizes
        elif k % 4 == 3:
            img = cv2.resize(img, (117 + k, 131), interpolation=cv2.INTER_AREA)  # smaller
        out.append((p.name, img))
    a, b = out[0][1], cv2.resize(out[4][1], (125, 125), interpolation=cv2.INTER_AREA)
    two = np.full((300, 420, 3), 90, dtype=np.uint8)
    two[25:275, 10:260], two[90:215, 280:405] = a, b
    out.insert(3, ("two faces", two))
    out.insert(7, ("no face", np.full((200, 300, 3), 128, dtype=np.uint8)))
    out.insert(12, ("tiny", np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)))
    out.append(("huge", cv2.resize(out[0][1], (1900, 1700), interpolation=cv2.INTER_CUBIC)))  # > max_side 1600
    return tuple(out)


def _assert_same(a: list[Face], b: list[Face], name: str) -> None:
    assert len(a) == len(b), f"{name}: {len(a)} vs {len(b)} faces"
    for fa, fb in zip(a, b):
        np.testing.assert_allclose(fa.box, fb.box, rtol=0, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(fa.landmarks, fb.landmarks, rtol=0, atol=1e-3, err_msg=name)
        assert abs(fa.score - fb.score) <= 1e-5, name


# --- detect_batch on real photos -------------------------------------------------------------------


@pytest.mark.shared
def test_detect_batch_equals_detect_on_varied_lfw_images(shared, mtcnn):
    images = _varied(shared(LFW))
    single = [mtcnn.detect(img) for _, img in images]
    batch = mtcnn.detect_batch([img for _, img in images])
    assert len(batch) == len(images)
    for (name, _), a, b in zip(images, single, batch):
        _assert_same(a, b, name)
    found = dict(zip([name for name, _ in images], single))
    assert found["no face"] == [] and found["tiny"] == []
    assert len(found["two faces"]) >= 2 and found["huge"]
    assert sum(bool(faces) for faces in single) == len(images) - 2  # every photo has its face


@pytest.mark.shared
def test_detect_batch_sizes_and_grouping_do_not_change_detections(shared, mtcnn):
    images = [img for _, img in _varied(shared(LFW))[:12]]
    ref = mtcnn.detect_batch(images)
    assert mtcnn.detect_batch([]) == []
    one = mtcnn.detect_batch(images[4:5])
    assert len(one) == 1
    _assert_same(one[0], mtcnn.detect(images[4]), "batch of one")
    small = create_detector("mtcnn", batch_size=5)  # R-Net / O-Net crops in chunks of 5
    small.GROUP_PIXELS = 200_000  # a few images per pass through the cascade
    small.CANVAS_PIXELS = 40_000  # several P-Net canvases per pass
    for k, (a, b) in enumerate(zip(ref, small.detect_batch(images))):
        _assert_same(a, b, f"image {k}")


@pytest.mark.shared
def test_detect_batch_with_min_score_and_max_side(shared):
    images = [img for _, img in _varied(shared(LFW))]
    det = create_detector("mtcnn", max_side=300, min_score=0.99)
    for k, (a, b) in enumerate(zip([det.detect(img) for img in images], det.detect_batch(images))):
        _assert_same(a, b, f"image {k}")
        assert all(f.score >= 0.99 for f in b)


def test_every_detector_has_detect_batch():
    yunet = create_detector("yunet")
    rng = np.random.default_rng(1)
    images = [np.full((120, 160, 3), 100, dtype=np.uint8), rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]
    assert yunet.detect_batch([]) == []
    assert [len(f) for f in yunet.detect_batch(images)] == [len(yunet.detect(im)) for im in images]


def test_detect_batch_checks_every_image(mtcnn):
    good = np.zeros((40, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        mtcnn.detect_batch([good, np.zeros((40, 40, 3), dtype=np.float32)])
    with pytest.raises(TypeError):
        mtcnn.detect_batch([good, [[0, 0, 0]]])


# --- the pieces against the reference ops ----------------------------------------------------------------


def _reference_crop(img: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
    """The previous implementation's crops: grid_sample at 2x2 points per pixel from a 2x mip pyramid, averaged."""
    levels = [torch.from_numpy(img).permute(2, 0, 1)[None]]
    h0, w0 = img.shape[:2]
    max_level = max(0, int(math.log2(max(min(h0, w0), 1))) - 1)
    wh = boxes[:, 2:] - boxes[:, :2]
    lvl = np.clip(np.floor(np.log2(np.maximum(wh.max(1) / size, 1.0))), 0, max_level).astype(np.int64)
    ss = 2 * size
    t = (np.arange(ss) + 0.5) / ss
    out = torch.empty((len(boxes), 3, size, size))
    for j, (b, k) in enumerate(zip(boxes, lvl)):
        while len(levels) <= k:
            levels.append(F.avg_pool2d(levels[-1], 2))
        src = levels[k]
        hk, wk = src.shape[-2:]
        f = 2.0**k
        gx = 2 * (b[0] + t * (b[2] - b[0])) / (f * wk) - 1
        gy = 2 * (b[1] + t * (b[3] - b[1])) / (f * hk) - 1
        grid = np.stack(np.broadcast_arrays(gx[None, :], gy[:, None]), axis=-1).astype(np.float32)[None]
        samp = F.grid_sample(src, torch.from_numpy(grid), mode="bilinear", padding_mode="zeros", align_corners=False)
        out[j] = F.avg_pool2d(samp, 2)[0]
    return _normalise(out)


def test_separable_crops_match_grid_sample():
    rng = np.random.default_rng(2)
    for shape in ((97, 131, 3), (250, 250, 3), (16, 23, 3)):
        img = rng.uniform(0, 255, shape).astype(np.float32)
        h, w = shape[:2]
        centre = rng.uniform(-0.2, 1.2, (40, 2)) * (w, h)  # some boxes hang over the border or lie outside
        side = np.exp(rng.uniform(np.log(4), np.log(3 * max(h, w)), (40, 1)))  # below, at and above crop size
        aspect = rng.uniform(0.7, 1.4, (40, 1))
        boxes = np.hstack([centre - side / 2, centre + side * np.hstack([aspect, 1 / aspect]) / 2])
        for size in (24, 48):
            mips = [_MipPyramid(img, torch.device("cpu"))]
            got, order = _crop(mips, boxes, np.zeros(len(boxes), dtype=np.int64), size, torch.device("cpu"))
            assert sorted(order.tolist()) == list(range(len(boxes)))
            assert got.is_contiguous(memory_format=torch.channels_last)
            ref = _reference_crop(img, boxes, size)[torch.from_numpy(order)]
            torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)  # 2e-5 of the input scale: 3e-3 of 255


def test_crops_of_several_images_are_each_images_own():
    rng = np.random.default_rng(3)
    imgs = [rng.uniform(0, 255, s).astype(np.float32) for s in ((80, 60, 3), (120, 150, 3), (40, 40, 3))]
    boxes = [rng.uniform(0, 40, (n, 2)).repeat(2, axis=1)[:, [0, 2, 1, 3]] + [0, 0, 30, 30] for n in (5, 0, 7)]
    mips = [_MipPyramid(im, torch.device("cpu")) for im in imgs]
    image = np.repeat(np.arange(3), [len(b) for b in boxes])
    together, order = _crop(mips, np.concatenate(boxes), image, 24, torch.device("cpu"))
    back = torch.empty_like(together)
    back[torch.from_numpy(order)] = together
    start = 0
    for m, b in zip(mips, boxes):
        alone, own = _crop([m], b, np.zeros(len(b), dtype=np.int64), 24, torch.device("cpu"))
        mine = torch.empty_like(alone)
        mine[torch.from_numpy(own)] = alone
        torch.testing.assert_close(back[start : start + len(b)], mine, atol=0, rtol=0)
        start += len(b)
    empty, order = _crop(mips, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), 48, torch.device("cpu"))
    assert empty.shape == (0, 3, 48, 48) and len(order) == 0


def test_group_sides_round_up():
    rng = np.random.default_rng(4)
    for n, size, lo, hi in ((9, 24, 26, 51), (60, 24, 26, 51), (2000, 48, 50, 99)):
        side = rng.integers(lo, hi, n)
        grouped = _group_sides(side, size)
        assert (grouped >= side).all() and (grouped % 8 == 0).all()
    assert len(np.unique(_group_sides(rng.integers(26, 51, 2000), 24))) >= 3  # full groups stay apart


def test_layout_packs_disjoint_even_rectangles():
    rng = np.random.default_rng(5)
    for n in (1, 3, 8, 40):
        sizes = [tuple(int(v) for v in rng.integers(12, 200, 2)) for _ in range(n)]
        offsets, (hc, wc) = _layout(sizes)
        rects = [(oy, ox, oy + hs, ox + ws) for (oy, ox), (hs, ws) in zip(offsets, sizes)]
        for i, a in enumerate(rects):
            assert a[0] % 2 == 0 and a[1] % 2 == 0 and a[2] <= hc and a[3] <= wc
            for b in rects[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_canvases_of_several_images_equal_pnet_per_level(mtcnn):
    """Levels of several images share canvases; every level's cells must be what P-Net gives on it alone."""
    rng = np.random.default_rng(6)
    imgs = [rng.uniform(0, 255, s).astype(np.float32) for s in ((97, 131, 3), (60, 45, 3), (128, 128, 3))]
    levels = [(i, k, int(im.shape[0] * s + 1), int(im.shape[1] * s + 1))
              for i, im in enumerate(imgs) for k, s in enumerate(mtcnn.scales(*im.shape[:2]))]  # fmt: skip
    seen = set()
    with torch.inference_mode():
        for canvas, placed in _fill_canvases(imgs, levels, max_pixels=20_000):  # several canvases
            _, packed = mtcnn.pnet(torch.from_numpy(canvas).permute(2, 0, 1)[None])
            for item, oy, ox in placed:
                i, _, hs, ws = levels[item]
                seen.add(item)
                alone = cv2.resize(imgs[i], (ws, hs), interpolation=cv2.INTER_AREA)
                _, own = mtcnn.pnet(_normalise(torch.from_numpy(alone).permute(2, 0, 1)[None]))
                ni, nj = (hs - 12) // 2 + 1, (ws - 12) // 2 + 1
                if ni > 0 and nj > 0:
                    got = packed[0, oy // 2 : oy // 2 + ni, ox // 2 : ox // 2 + nj]
                    torch.testing.assert_close(got, own[0, :ni, :nj], atol=1e-5, rtol=1e-4)
    assert seen == set(range(len(levels)))


def test_fast_net_ops_give_torchs_values(mtcnn):
    gen = torch.Generator().manual_seed(7)
    for shape in ((3, 28, 22, 22), (2, 32, 46, 46), (2, 5, 8, 6), (1, 4, 4, 4)):
        x = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
        assert torch.equal(_MaxPoolCeil(3, 2)(x), F.max_pool2d(x, 3, 2, ceil_mode=True)), shape
    x = torch.randn(2, 10, 30, 14, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(10, generator=gen)
    assert torch.equal(_prelu_rows(x, w), F.prelu(x, w))
    assert torch.equal(_prelu_rows(x.contiguous(), w), F.prelu(x, w))
    p = mtcnn.pnet
    x = torch.randn(1, 3, 64, 50, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        h = F.max_pool2d(p.prelu1(p.conv1(x)), 2, 2, ceil_mode=True)
        h = p.prelu3(p.conv3(p.prelu2(p.conv2(h))))
        reg, prob = p(x)
        torch.testing.assert_close(reg, p.conv4_2(h), atol=1e-6, rtol=0)
        torch.testing.assert_close(prob, torch.softmax(p.conv4_1(h), 1)[:, 1], atol=1e-6, rtol=0)
