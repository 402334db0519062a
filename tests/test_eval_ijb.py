"""IJB-style template evaluation: meta-file readers, media/template pooling, video templates, and a mini IJB-C
protocol built from LFW in the public file formats (5 points from our MTCNN, scored with the default model)."""

from __future__ import annotations

import numpy as np
import pytest

from arcface.eval.ijb import (
    evaluate_ijb,
    identify_1n,
    load_ijb,
    read_1n_csv,
    read_face_tid_mid,
    read_name_5pts_score,
    read_template_pair_label,
    verify_1to1,
)
from arcface.eval.templates import pool_templates, video_template
from arcface.inference.runners import l2_normalise
from conftest import require_shared

# ------------------------------------------------------------------------------------------------
# Readers


def test_readers_round_trip(tmp_path):
    (tmp_path / "x_face_tid_mid.txt").write_text("1.jpg 7 70\n2.jpg 7 71\n\n3.jpg 8 80\n")
    names, tids, mids = read_face_tid_mid(tmp_path / "x_face_tid_mid.txt")
    assert names == ["1.jpg", "2.jpg", "3.jpg"]
    assert tids.tolist() == [7, 7, 8] and mids.tolist() == [70, 71, 80]

    (tmp_path / "p.txt").write_text("7 8 0\n7 7 1\n")
    t1, t2, lab = read_template_pair_label(tmp_path / "p.txt")
    assert t1.tolist() == [7, 7] and t2.tolist() == [8, 7] and lab.tolist() == [0, 1]

    pts = " ".join(str(v) for v in range(10))
    (tmp_path / "l.txt").write_text(f"1.jpg {pts} 0.9\n2.jpg {pts} 0.5\n")
    lnames, lmk, score = read_name_5pts_score(tmp_path / "l.txt")
    assert lnames == ["1.jpg", "2.jpg"] and lmk.shape == (2, 5, 2)
    assert lmk[0, 1].tolist() == [2.0, 3.0] and score.tolist() == pytest.approx([0.9, 0.5])

    (tmp_path / "g.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,50,a.jpg\n5,50,b.jpg\n6,60,c.jpg\n")
    g_t, g_s = read_1n_csv(tmp_path / "g.csv")
    assert g_t.tolist() == [5, 6] and g_s.tolist() == [50, 60]


def test_reader_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("1.jpg 7\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_face_tid_mid(tmp_path / "bad.txt")
    (tmp_path / "lab.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="labels"):
        read_template_pair_label(tmp_path / "lab.txt")
    (tmp_path / "g.csv").write_text("TEMPLATE_ID,SUBJECT_ID\n5,50\n5,51\n")
    with pytest.raises(ValueError, match="template 5"):
        read_1n_csv(tmp_path / "g.csv")
    (tmp_path / "h.csv").write_text("TID,SID\n5,50\n")
    with pytest.raises(ValueError, match="TEMPLATE_ID"):
        read_1n_csv(tmp_path / "h.csv")
    with pytest.raises(FileNotFoundError, match="face_tid_mid"):
        load_ijb(tmp_path)


def test_load_ijb_joins_landmarks_by_name(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "ijbc_face_tid_mid.txt").write_text("a.jpg 1 10\nb.jpg 2 20\n")
    pts_a, pts_b = " ".join(["1"] * 10), " ".join(["2"] * 10)
    (meta / "ijbc_name_5pts_score.txt").write_text(f"b.jpg {pts_b} 0.5\na.jpg {pts_a} 0.9\n")
    proto = load_ijb(tmp_path)
    assert [p.name for p in proto.image_paths] == ["a.jpg", "b.jpg"]
    assert proto.image_paths[0].parent == tmp_path / "loose_crop"
    assert proto.landmarks[:, 0, 0].tolist() == [1.0, 2.0] and proto.scores.tolist() == pytest.approx([0.9, 0.5])
    assert proto.pairs is None and proto.probes is None and proto.galleries == {}


# ------------------------------------------------------------------------------------------------
# Pooling


def _slow_pool(feats, tids, mids, scores=None):
    out = {}
    for t in sorted(set(tids.tolist())):
        media = []
        for m in sorted(set(mids[tids == t].tolist())):
            sel = (tids == t) & (mids == m)
            f = feats[sel] * (scores[sel][:, None] if scores is not None else 1.0)
            media.append(f.mean(axis=0))
        v = np.mean(media, axis=0)
        out[t] = v / np.linalg.norm(v)
    return out


@pytest.mark.parametrize("weighted", [False, True])
def test_pool_templates_matches_slow_reference(weighted):
    rng = np.random.default_rng(0)
    n = 60
    feats = l2_normalise(rng.standard_normal((n, 16)))
    tids = rng.integers(0, 7, n)
    mids = rng.integers(0, 3, n)  # media ids recur across templates: pooled per (template, media)
    scores = rng.uniform(0.5, 1.0, n).astype(np.float32) if weighted else None
    got_t, got_f = pool_templates(feats, tids, mids, scores)
    ref = _slow_pool(feats.astype(np.float64), tids, mids, scores)
    assert got_t.tolist() == sorted(ref)
    np.testing.assert_allclose(got_f, np.stack([ref[t] for t in got_t]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got_f, axis=1), 1.0, atol=1e-5)


def test_media_are_averaged_before_templates():
    # One template: media 0 has three identical images, media 1 one: each media weighs one half.
    feats = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32)
    _, f = pool_templates(feats, np.zeros(4, int), np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(f[0], [2**-0.5, 2**-0.5], atol=1e-6)


def test_pool_templates_rejects_mismatch():
    with pytest.raises(ValueError):
        pool_templates(np.zeros((3, 4)), np.zeros(2, int), np.zeros(3, int))


def test_video_template():
    rng = np.random.default_rng(1)
    frames = l2_normalise(rng.standard_normal((9, 32)))
    v = video_template(frames)
    assert v.shape == (32,) and v.dtype == np.float32
    np.testing.assert_allclose(v, frames.mean(0) / np.linalg.norm(frames.mean(0)), atol=1e-6)
    # A video template is the one-template, one-media case of pool_templates with frames as images.
    _, pooled = pool_templates(frames, np.zeros(9, int), np.zeros(9, int))
    np.testing.assert_allclose(pooled[0], v, atol=1e-6)
    with pytest.raises(ValueError):
        video_template(np.zeros((0, 32)))


def test_verify_and_identify_on_synthetic_templates():
    rng = np.random.default_rng(2)
    centres = l2_normalise(rng.standard_normal((6, 64)))
    tids = np.arange(12)
    feats = l2_normalise(np.repeat(centres, 2, axis=0) + 0.05 * rng.standard_normal((12, 64)))  # 2 per subject
    subj = np.repeat(np.arange(6), 2)
    t1, t2 = np.array([0, 2, 4, 0, 2]), np.array([1, 3, 5, 3, 5])
    res = verify_1to1(tids, feats, t1, t2, np.array([1, 1, 1, 0, 0]), fars=(0.5, 1e-3))
    assert res["positives"] == 3 and res["negatives"] == 2
    assert res["tar_at_far"][0.5]["tar"] == 1.0
    assert res["tar_at_far"][1e-3]["tar"] is None  # 2 negatives cannot measure FAR 1e-3
    with pytest.raises(KeyError):
        verify_1to1(tids, feats, np.array([99]), np.array([0]), np.array([1]))
    galleries = {"G1": (tids[0:6:2], subj[0:6:2]), "G2": (tids[6:12:2], subj[6:12:2])}
    probes = (tids[1::2], subj[1::2])
    out = identify_1n(tids, feats, galleries, probes, fpirs=(0.34,))
    assert out["cmc"][1] == 1.0
    assert out["per_gallery"]["G1"]["mated"] == 3 and out["per_gallery"]["G1"]["non_mated"] == 3
    assert out["tpir_at_fpir"][0.34] == 1.0


# ------------------------------------------------------------------------------------------------
# A mini IJB-C protocol from LFW

N_PEOPLE = 20  # x 5 images: template A = media [1, 2] + [3], template B = media [4] + [5]
LOOSE = (slice(50, 200), slice(50, 200))  # the "loose crop": the central 150x150 of a 250x250 LFW image


@pytest.fixture(scope="module")
def mini_ijb(tmp_path_factory):
    from PIL import Image

    from arcface.align.detectors import create_detector
    from arcface.io.images import load_image

    lfw = require_shared("data/lfw/lfw-deepfunneled")
    people = [p for p in sorted(lfw.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 6][:N_PEOPLE]
    root = tmp_path_factory.mktemp("IJBC")
    (root / "loose_crop").mkdir()
    (root / "meta").mkdir()
    detector = create_detector("mtcnn", min_face_size=60)
    tid_lines, lmk_lines, gallery, probes = [], [], {"G1": [], "G2": []}, []
    media = 0
    for pi, person in enumerate(people):
        files = sorted(person.glob("*.jpg"))[:5]
        groups = [("A", [0, 1]), ("A", [2]), ("B", [3]), ("B", [4])]
        for tname, idx in groups:
            media += 1
            tid = 1000 + 2 * pi + (tname == "B")
            for i in idx:
                crop = load_image(files[i])[LOOSE]
                faces = detector.detect(crop)
                assert faces, f"MTCNN found no face in {files[i].name}"
                Image.fromarray(crop).save(root / "loose_crop" / files[i].name, quality=95)
                tid_lines.append(f"{files[i].name} {tid} {media}")
                pts = " ".join(f"{v:.2f}" for v in faces[0].landmarks.ravel())
                lmk_lines.append(f"{files[i].name} {pts} {faces[0].score:.4f}")
                row = f"{tid},{pi},{files[i].name}"
                if tname == "A":
                    gallery["G1" if pi < N_PEOPLE // 2 else "G2"].append(row)
                else:
                    probes.append(row)
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
    # 1:1: every same-person template pair + as many different-person pairs.
    rng = np.random.default_rng(0)
    pairs = [f"{1000 + 2 * p} {1001 + 2 * p} 1" for p in range(N_PEOPLE)]
    for p in range(N_PEOPLE):
        q = (p + 1 + rng.integers(0, N_PEOPLE - 1)) % N_PEOPLE
        pairs.append(f"{1000 + 2 * p} {1001 + 2 * q} 0")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    for g, rows in gallery.items():
        (root / "meta" / f"ijbc_1N_gallery_{g}.csv").write_text(header + "\n".join(rows) + "\n")
    (root / "meta" / "ijbc_1N_probe_mixed.csv").write_text(header + "\n".join(probes) + "\n")

    from arcface.inference.loader import load_model

    backend = load_model("default", precision="fp32")
    result = evaluate_ijb(root, backend)
    return root, backend, result


@pytest.mark.shared
def test_mini_ijb_from_lfw(mini_ijb):
    root, _, res = mini_ijb
    assert res["images"] == 5 * N_PEOPLE and res["templates"] == 2 * N_PEOPLE
    one = res["1:1"]
    assert one["positives"] == N_PEOPLE and one["negatives"] == N_PEOPLE
    tar = one["tar_at_far"]
    assert tar[1e-1]["tar"] >= 0.9, tar
    assert tar[1e-1]["far_actual"] <= 0.1
    for far in (1e-2, 1e-3, 1e-6):  # 20 negatives cannot measure these
        assert tar[far]["tar"] is None and tar[far]["note"].startswith("not enough negatives")
    many = res["1:N"]
    assert set(many["per_gallery"]) == {"G1", "G2"}
    g1 = many["per_gallery"]["G1"]
    assert g1["mated"] == N_PEOPLE // 2 and g1["non_mated"] == N_PEOPLE // 2  # open set: G2 people are strangers
    assert many["cmc"][1] >= 0.9 and many["cmc"][5] >= many["cmc"][1] and many["cmc"][10] == 1.0
    assert many["tpir_at_fpir"][0.1] is not None and many["tpir_at_fpir"][0.1] >= 0.5
    assert many["tpir_at_fpir"][0.01] is None  # 10 non-mated probes per gallery


@pytest.mark.shared
def test_mini_ijb_options_reuse_features(mini_ijb):
    root, backend, res = mini_ijb
    proto = load_ijb(root)
    # The detector-score weighting changes little for confident detections; without it the scores still hold.
    plain = evaluate_ijb(proto, backend, use_detector_score=False, features=res["features"])
    assert plain["1:N"]["cmc"][1] >= 0.9
    assert plain["1:1"]["tar_at_far"][1e-1]["tar"] >= 0.9
    # A template made of one image's feature scores 1.0 against itself.
    f = res["features"]
    assert f.shape == (5 * N_PEOPLE, backend.embedding_size)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
