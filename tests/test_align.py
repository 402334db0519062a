"""Alignment: the template, Umeyama similarity, warps, inverse transforms, NMS and ranking helpers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from arcface.align import (
    ARCFACE_TEMPLATE,
    Face,
    estimate_norm,
    estimate_similarity,
    invert_affine,
    nms,
    norm_crop,
    rank_faces,
    template_for_size,
    transform_points,
)


def _similarity(rng: np.random.Generator) -> tuple[np.ndarray, float, float, np.ndarray]:
    """A random similarity matrix (2, 3) and its parts."""
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(0.2, 5.0)
    t = rng.uniform(-200, 200, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([scale * rot, t[:, None]]), angle, scale, t


def _lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Obviously-correct reference: [[a, -b, tx], [b, a, ty]] is linear in (a, b, tx, ty); solve in float64."""
    n = len(src)
    A = np.zeros((2 * n, 4))
    A[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    A[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


# --- template --------------------------------------------------------------------------------------


def test_template_is_the_contract_and_read_only():
    expected = [
        (38.2946, 51.6963),
        (73.5318, 51.5014),
        (56.0252, 71.7366),
        (41.5493, 92.3655),
        (70.7299, 92.2041),
    ]
    np.testing.assert_array_equal(ARCFACE_TEMPLATE, np.array(expected))
    assert ARCFACE_TEMPLATE[0, 0] < ARCFACE_TEMPLATE[1, 0]  # image-left eye first
    with pytest.raises(ValueError):
        ARCFACE_TEMPLATE[0, 0] = 0.0


def test_template_for_size_follows_insightface():
    np.testing.assert_allclose(template_for_size(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for_size(224), 2 * ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for_size(128), ARCFACE_TEMPLATE + [8, 0])  # not divisible by 112
    np.testing.assert_allclose(template_for_size(256), 2 * ARCFACE_TEMPLATE + [16, 0])
    np.testing.assert_allclose(template_for_size(448), 4 * ARCFACE_TEMPLATE)  # 112 wins when both divide
    for bad in (100, 0, -112):
        with pytest.raises(ValueError, match="112 or 128"):
            template_for_size(bad)


# --- similarity transform -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_exact_similarity_is_recovered(seed):
    rng = np.random.default_rng(seed)
    M, angle, scale, t = _similarity(rng)
    src = rng.uniform(-100, 300, size=(5, 2))
    est = estimate_similarity(src, transform_points(M, src))
    np.testing.assert_allclose(est, M, atol=1e-6)
    np.testing.assert_allclose(np.hypot(*est[:, 0]), scale, rtol=1e-9)
    np.testing.assert_allclose(np.arctan2(est[1, 0], est[0, 0]), angle, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_similarity_is_the_least_squares_solution(seed):
    rng = np.random.default_rng(100 + seed)
    M, *_ = _similarity(rng)
    src = rng.uniform(0, 250, size=(5, 2))
    dst = transform_points(M, src) + rng.normal(0, 3.0, size=(5, 2))
    est = estimate_similarity(src, dst)
    np.testing.assert_allclose(est, _lstsq_similarity(src, dst), atol=1e-8)
    # and it is a minimum: any perturbation of the four parameters costs more
    cost = ((transform_points(est, src) - dst) ** 2).sum()
    for _ in range(20):
        d = rng.normal(0, 1e-3, 4)
        pert = est + np.array([[d[0], -d[1], d[2]], [d[1], d[0], d[3]]])
        assert ((transform_points(pert, src) - dst) ** 2).sum() >= cost


def test_reflection_is_excluded():
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 100, size=(5, 2))
    mirrored = src * [-1, 1] + [300, 0]
    est = estimate_similarity(src, mirrored)
    assert np.linalg.det(est[:, :2]) > 0  # a rotation, never a reflection
    np.testing.assert_allclose(est, _lstsq_similarity(src, mirrored), atol=1e-8)


def test_estimate_similarity_rejects_bad_input():
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), np.ones((5, 2)))  # coincident source points
    with pytest.raises(ValueError):
        estimate_similarity(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError):
        estimate_similarity(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError):
        estimate_similarity(np.full((5, 2), np.nan), np.ones((5, 2)))


@pytest.mark.parametrize("size", [112, 128, 224])
def test_warped_landmarks_land_on_the_template(size):
    rng = np.random.default_rng(size)
    M_true, *_ = _similarity(rng)  # template -> image
    landmarks = transform_points(M_true, template_for_size(size))
    M = estimate_norm(landmarks, size)
    np.testing.assert_allclose(transform_points(M, landmarks), template_for_size(size), atol=1e-6)
    np.testing.assert_allclose(invert_affine(M), M_true, atol=1e-6)


def test_inverse_round_trips():
    rng = np.random.default_rng(3)
    for _ in range(5):
        M, *_ = _similarity(rng)
        M[:, :2] += rng.normal(0, 0.1, (2, 2))  # any invertible affine, not only similarities
        inv = invert_affine(M)
        np.testing.assert_allclose(inv, cv2.invertAffineTransform(M), atol=1e-9)
        pts = rng.uniform(-50, 150, size=(7, 2))
        np.testing.assert_allclose(transform_points(inv, transform_points(M, pts)), pts, atol=1e-9)
    batch = rng.uniform(0, 10, size=(3, 5, 2))
    assert transform_points(M, batch).shape == (3, 5, 2)


def _blob_image(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """uint8 RGB image with a Gaussian blob centred on each (x, y) point (pixel-index coordinates)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((255 * img.clip(0, 1)).round().astype(np.uint8)[..., None], 3, axis=2)


def _blob_centres(img: np.ndarray, near: np.ndarray, radius: int) -> np.ndarray:
    """Intensity centroids of the blobs in a window around each expected position."""
    g = img[..., 0].astype(np.float64)
    out = []
    for x, y in near:
        x0, y0 = round(x) - radius, round(y) - radius
        win = g[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        yy, xx = np.mgrid[: win.shape[0], : win.shape[1]]
        out.append([(win * xx).sum() / win.sum() + x0, (win * yy).sum() / win.sum() + y0])
    return np.array(out)


@pytest.mark.parametrize("size", [112, 128, 224])
def test_norm_crop_puts_the_landmarks_on_the_template(size):
    # Five blobs in a 300x400 "photo", rotated by 20 degrees and at 1.7x the crop's scale.
    angle, scale = np.deg2rad(20), 1.7 * 112 / size
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = template_for_size(size) @ rot.T + [120, 60]
    photo = _blob_image(landmarks, (300, 400), sigma=2.5 * scale)
    crop = norm_crop(photo, landmarks, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    radius = max(4, size // 16)
    centres = _blob_centres(crop, template_for_size(size), radius)
    np.testing.assert_allclose(centres, template_for_size(size), atol=0.05 * size / 112 + 0.1)


def test_norm_crop_border_is_zero_and_bilinear():
    photo = np.full((50, 50, 3), 200, dtype=np.uint8)
    lms = template_for_size(112) * 0.3 + 30  # the crop spans photo pixels 30..64: its far side is outside
    crop = norm_crop(photo, lms)
    assert crop[-1, -1].tolist() == [0, 0, 0]  # border value 0
    M = estimate_norm(lms)
    np.testing.assert_array_equal(crop, cv2.warpAffine(photo, M, (112, 112), flags=cv2.INTER_LINEAR))
    with pytest.raises(ValueError):
        norm_crop(photo, lms[:4])
    with pytest.raises(ValueError):
        norm_crop(photo, lms, image_size=100)


# --- NMS, ranking, Face ----------------------------------------------------------------------------


def _reference_nms(boxes, scores, thr, mode):
    """Slow, obviously-correct greedy NMS."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            iw = max(0.0, min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0]))
            ih = max(0.0, min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1]))
            inter = iw * ih
            ai = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            aj = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            denom = ai + aj - inter if mode == "union" else min(ai, aj)
            if inter / denom > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("mode", ["union", "min"])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_greedy_reference(mode, thr):
    rng = np.random.default_rng(int(thr * 10))
    xy = rng.uniform(0, 100, size=(200, 2))
    wh = rng.uniform(5, 40, size=(200, 2))
    boxes = np.hstack([xy, xy + wh])
    scores = rng.uniform(size=200)
    assert nms(boxes, scores, thr, mode=mode).tolist() == _reference_nms(boxes, scores, thr, mode)


def test_nms_groups_and_edge_cases():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10.0]])
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(boxes, scores, 0.5, groups=np.array([0, 1, 1])).tolist() == [0, 1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    small_inside = np.array([[0, 0, 100, 100], [10, 10, 30, 30.0]])
    assert nms(small_inside, [0.9, 0.8], 0.7).tolist() == [0, 1]  # IoU is small ...
    assert nms(small_inside, [0.9, 0.8], 0.7, mode="min").tolist() == [0]  # ... but it is inside
    with pytest.raises(ValueError):
        nms(boxes, scores, 0.5, mode="max")


def test_rank_faces_prefers_large_central_faces():
    shape = (200, 400)
    big_far = [0, 0, 60, 60]  # area 3600, centre (30, 30): far from (200, 100)
    small_centre = [190, 90, 210, 110]  # area 400, at the centre
    big_centre = [170, 70, 230, 130]  # area 3600, at the centre
    order = rank_faces(np.array([big_far, small_centre, big_centre]), shape)
    assert order.tolist() == [2, 1, 0]
    # area - 2 * d^2 exactly: equal offsets -> the larger wins; equal areas -> the nearer wins
    left, right = [80, 80, 120, 120], [290, 90, 310, 110]  # both 100 px from the centre
    assert rank_faces(np.array([right, left]), shape).tolist() == [1, 0]
    nearer = [260, 80, 300, 120]  # same area as ``left``, 80 px from the centre
    assert rank_faces(np.array([left, nearer]), shape).tolist() == [1, 0]


def test_detection_is_immutable():
    det = Face(box=(1, 2, 3, 4), score=0.5, landmarks=np.arange(10).reshape(5, 2))
    assert det.box == (1.0, 2.0, 3.0, 4.0) and det.landmarks.dtype == np.float32
    assert det.area == 4.0
    with pytest.raises(AttributeError):
        det.score = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        det.landmarks[0, 0] = 5
    with pytest.raises(ValueError):
        Face(box=(1, 2, 3), score=0.5, landmarks=np.zeros((5, 2)))
