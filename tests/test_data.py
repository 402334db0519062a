"""Tests of arcface.data: readers, RecordIO round trips, bad items, sampler, transforms, synthetic data."""

from __future__ import annotations

import io
import logging
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from arcface.data import (
    DATASETS,
    MAGIC,
    MEAN,
    STD,
    ImageFolderDataset,
    IRHeader,
    ListFileDataset,
    RecordIODataset,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    ResumableDistributedSampler,
    SyntheticDataset,
    build_dataset,
    build_loader,
    eval_transform,
    normalize_,
    pack,
    pack_folder,
    pack_list,
    to_tensor,
    train_transform,
    unpack,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "arcface"
SIZE = 32
CLASSES = {"alice": 3, "bob": 2, "carol": 4}  # folder name -> number of images


def _image(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth RGB test image (gradients + a block), so JPEG stays close; uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(0.2, 1.0, 3)
    img = np.stack([a * x, b * y, c * (1 - x * y)], axis=-1) * 255
    r0, c0 = rng.integers(0, size // 2, 2)
    img[r0 : r0 + size // 4, c0 : c0 + size // 4] = rng.uniform(0, 255, 3)
    return img.round().clip(0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """tmp/faces/<identity>/<k>.png with CLASSES, plus a hidden file and a non-image to be ignored."""
    root = tmp_path / "faces"
    seed = 0
    for name, count in CLASSES.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(_image(seed)).save(root / name / f"{k:02d}.png")
            seed += 1
    (root / "alice" / ".hidden.png").write_bytes(b"not an image")
    (root / "alice" / "notes.txt").write_text("ignored")
    (root / "README").write_text("a file beside the identity folders is ignored")
    return root


def _expected(root: Path) -> list[tuple[np.ndarray, int]]:
    out = []
    for label, name in enumerate(sorted(CLASSES)):
        for k in range(CLASSES[name]):
            out.append((np.asarray(Image.open(root / name / f"{k:02d}.png").convert("RGB")), label))
    return out


def _raw(t: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: (3, H, W) float -> uint8 (H, W, 3)."""
    return (t * STD + MEAN).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------------
# registry and transforms
# ------------------------------------------------------------------------------------------------
def test_registry_names_and_build(folder):
    assert DATASETS.names() == ["image_folder", "list_file", "recordio", "synthetic"]
    ds = build_dataset("image_folder", root=folder, image_size=SIZE)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 9
    assert isinstance(build_dataset("synthetic", num_samples=4, num_classes=2), SyntheticDataset)


def test_to_tensor_and_normalisation_range():
    img = np.zeros((4, 5, 3), np.uint8)
    img[0, 0] = [255, 0, 128]
    t = to_tensor(img)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert t[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, (128 - 127.5) / 127.5])
    assert t.min() >= -1 and t.max() <= 1
    assert to_tensor(Image.fromarray(img)).equal(t)
    grey = to_tensor(np.full((2, 2), 255, np.uint8))
    assert grey.shape == (3, 2, 2) and torch.all(grey == 1)
    x = torch.tensor([0.0, 127.5, 255.0])
    assert normalize_(x) is x and x.tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4, 4), np.uint8))


def test_flip_transform():
    img = _image(3)
    plain = eval_transform()(img)
    assert plain.equal(to_tensor(img))
    assert train_transform(flip=True, p=1.0)(img).equal(plain.flip(-1))
    assert train_transform(flip=False)(img).equal(plain)
    torch.manual_seed(0)
    flips = [not train_transform()(img).equal(plain) for _ in range(200)]
    assert 60 < sum(flips) < 140  # about half
    pickle.loads(pickle.dumps(train_transform()))  # picklable for spawn-started workers


# ------------------------------------------------------------------------------------------------
# image folder and list file
# ------------------------------------------------------------------------------------------------
def test_image_folder_labels_and_pixels(folder):
    ds = ImageFolderDataset(folder, image_size=SIZE, transform=eval_transform())
    assert ds.classes == ["alice", "bob", "carol"]
    assert ds.num_classes == 3 and ds.class_to_idx["carol"] == 2
    assert len(ds) == 9 and ds.labels == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    for i, (img, label) in enumerate(_expected(folder)):
        x, y = ds[i]
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and y == label
        np.testing.assert_array_equal(_raw(x), img)
    assert ds.bad_items == {} and ds.scan() == []


def test_image_folder_resize_crop_and_min_images(folder, tmp_path):
    x, _ = ImageFolderDataset(folder, transform=eval_transform())[0]
    assert x.shape == (3, 112, 112)  # default image_size resizes
    ds = ImageFolderDataset(folder, image_size=None, center_crop=16, transform=eval_transform())
    x, _ = ds[0]
    np.testing.assert_array_equal(_raw(x), _expected(folder)[0][0][8:24, 8:24])
    kept = ImageFolderDataset(folder, min_images_per_class=3)
    assert kept.classes == ["alice", "carol"] and kept.labels == [0, 0, 0, 1, 1, 1, 1]
    (tmp_path / "empty" / "nobody").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "missing")


def test_list_file_parsing(folder, tmp_path):
    lst = folder / "train.lst"
    lst.write_text("# path label\n\nalice/00.png 0\n  bob/01.png\t5\n" + f"{folder}/carol/03.png 2\n")
    ds = ListFileDataset(lst, image_size=SIZE, transform=eval_transform())
    assert len(ds) == 3 and ds.labels == [0, 5, 2] and ds.num_classes == 6
    np.testing.assert_array_equal(_raw(ds[1][0]), np.asarray(Image.open(folder / "bob" / "01.png")))
    # relative paths against an explicit root; tab-separated paths may hold spaces
    other = tmp_path / "lists" / "b.txt"
    other.parent.mkdir()
    (folder / "with space.png").write_bytes((folder / "bob" / "00.png").read_bytes())
    other.write_text("alice/00.png 1\nwith space.png\t0\n")
    ds2 = ListFileDataset(other, root=folder, image_size=SIZE)
    assert ds2.num_classes == 2 and ds2[1][1] == 0
    with pytest.raises(ValueError, match="num_classes"):
        ListFileDataset(lst, num_classes=3)


@pytest.mark.parametrize(
    "body, lineno",
    [("a.png 0\nb.png\n", 2), ("a.png 0\n\n# c\nb.png x\n", 4), ("a.png 1 2\n", 1), ("a.png -1\n", 1)],
)
def test_list_file_malformed_line(tmp_path, body, lineno):
    lst = tmp_path / "bad.lst"
    lst.write_text(body)
    with pytest.raises(ValueError, match=rf"bad\.lst:{lineno}:"):
        ListFileDataset(lst)


# ------------------------------------------------------------------------------------------------
# RecordIO
# ------------------------------------------------------------------------------------------------
def test_payload_pack_unpack():
    h, rest = unpack(pack(IRHeader(0, 7.0, 3, 0), b"img"))
    assert (h.flag, h.label, h.id, h.id2, rest) == (0, 7.0, 3, 0, b"img")
    h, rest = unpack(pack((0, [4.0, 9.0], 0, 0), b""))
    assert h.flag == 2 and h.label.tolist() == [4.0, 9.0] and rest == b""
    assert len(pack(IRHeader(0, 1.0, 1, 0), b"")) == 24  # 'IfQQ'
    with pytest.raises(RecordIOError):
        unpack(b"\0" * 10)


def test_record_split_at_magic_round_trip(tmp_path):
    """dmlc splits a payload at every aligned magic word; the reader must join the parts back."""
    m = struct.pack("<I", MAGIC)
    payloads = {1: b"ab" + m + b"cd", 2: m + b"0123" + m + m + b"xyz", 3: b"", 4: b"q" * 4 + m}
    with RecordIOWriter(tmp_path / "s.rec") as w:
        for k, p in payloads.items():
            w.write_idx(k, p)
    raw = (tmp_path / "s.rec").read_bytes()
    # payload 2 is stored as 4 parts (flags 1, 2, 2, 3), magic words removed from the data
    lrecs = [struct.unpack_from("<I", raw, i + 4)[0] >> 29 for i in range(0, len(raw), 4) if raw[i : i + 4] == m]
    assert 1 in lrecs and 2 in lrecs and 3 in lrecs
    r = RecordIOReader(tmp_path / "s.rec")
    assert {k: r.read_idx(k) for k in payloads} == payloads
    assert r.keys.tolist() == [1, 2, 3, 4] and r.offsets[0] == 0 and all(o % 4 == 0 for o in r.offsets)
    with pytest.raises(RecordIOError, match="not in"):
        r.read_idx(99)
    with RecordIOWriter(tmp_path / "o.rec") as w:
        w.write_idx(0, b"abcd")
        w.write_idx(1, b"efgh")
        w.overwrite(0, b"wxyz")
        with pytest.raises(ValueError, match="bytes on disk"):
            w.overwrite(1, b"longer")
        with pytest.raises(ValueError, match="twice"):
            w.write_idx(1, b"")
    assert RecordIOReader(tmp_path / "o.rec").read_idx(0) == b"wxyz"


def test_recordio_png_round_trip_exact(folder, tmp_path):
    n, c = pack_folder(folder, tmp_path / "rec" / "train", encoding="png")
    assert (n, c) == (9, 3)
    ds = RecordIODataset(tmp_path / "rec" / "train.rec", image_size=SIZE, transform=eval_transform())
    assert len(ds) == 9 and ds.num_classes == 3
    for i, (img, label) in enumerate(_expected(folder)):
        x, y = ds[i]
        assert x.shape == (3, SIZE, SIZE) and y == label
        np.testing.assert_array_equal(_raw(x), img)
    # the same items, in the same order, as the image-folder reader of the packed folder
    ref = ImageFolderDataset(folder, image_size=SIZE, transform=eval_transform())
    for i in range(len(ref)):
        assert ds[i][0].equal(ref[i][0]) and ds[i][1] == ref[i][1]
    # a folder path finds train.rec / train.idx
    assert len(RecordIODataset(tmp_path / "rec")) == 9


def test_recordio_jpeg_round_trip_within_tolerance(folder, tmp_path):
    n, _ = pack_folder(folder, tmp_path / "j", quality=95, image_size=SIZE)
    ds = RecordIODataset(tmp_path / "j.rec", image_size=SIZE, transform=eval_transform())
    for i, (img, label) in enumerate(_expected(folder)):
        x, y = ds[i]
        assert y == label
        diff = np.abs(_raw(x).astype(int) - img.astype(int))
        assert diff.mean() < 6.0, (i, diff.mean())  # q=95 with 4:2:0 chroma on a 32x32 block image
    # resize on packing, and 'copy' stores the file bytes unchanged
    pack_folder(folder, tmp_path / "small", image_size=16, encoding="png")
    assert RecordIODataset(tmp_path / "small.rec", image_size=None)[0][0].shape == (3, 16, 16)
    pack_folder(folder, tmp_path / "copy", encoding="copy")
    header, data = unpack(RecordIOReader(tmp_path / "copy.rec").read_idx(1))
    assert data == (folder / "alice" / "00.png").read_bytes() and header.label == 0.0
    with pytest.raises(ValueError, match="copy"):
        pack_folder(folder, tmp_path / "x", encoding="copy", image_size=16)


def test_recordio_header_record_and_identity_ranges(folder, tmp_path):
    pack_folder(folder, tmp_path / "train", encoding="png")
    reader = RecordIOReader(tmp_path / "train.rec")
    header, rest = unpack(reader.read_idx(0))
    # insightface: header0.label = (num_images + 1, num_images + 1 + num_ids); images are keys 1..N
    assert header.flag == 2 and header.label.tolist() == [10.0, 13.0] and rest == b""
    assert reader.keys.tolist() == list(range(13)) and reader.offset(0) == 0  # header first, idx sorted
    ds = RecordIODataset(tmp_path / "train.rec")
    assert ds.header0 == (10, 13) and ds.imgidx.tolist() == list(range(1, 10))
    assert ds.identity_ranges() == [(1, 4), (4, 6), (6, 10)]
    for key in range(1, 10):  # image records: flag 0, float label, id = key
        h, _ = unpack(reader.read_idx(key))
        assert h.flag == 0 and h.id == key and isinstance(h.label, float)


def test_recordio_without_header_uses_all_keys(tmp_path):
    """Files packed by plain im2rec have no header: every indexed key is an image (key 0 too)."""
    imgs = [_image(i) for i in range(4)]
    with RecordIOWriter(tmp_path / "plain.rec", tmp_path / "plain.idx") as w:
        for k, img in enumerate(imgs):
            out = io.BytesIO()
            Image.fromarray(img).save(out, format="PNG")
            # labels as an array (flag 2), the first being the class, like insightface's face2rec2
            w.write_idx(k, pack(IRHeader(0, [k % 2, 1.0], k, 0), out.getvalue()))
    ds = RecordIODataset(tmp_path / "plain.rec", image_size=SIZE, transform=eval_transform())
    assert ds.header0 is None and ds.imgidx.tolist() == [0, 1, 2, 3] and ds.num_classes == 2
    for k in range(4):
        x, y = ds[k]
        assert y == k % 2
        np.testing.assert_array_equal(_raw(x), imgs[k])


def test_pack_list(folder, tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("carol/00.png 4\nalice/01.png 1\nalice/00.png 1\n")
    n, c = pack_list(lst, tmp_path / "l", root=folder, encoding="png")
    assert (n, c) == (3, 5)
    ds = RecordIODataset(tmp_path / "l.rec", image_size=SIZE, transform=eval_transform())
    assert [ds[i][1] for i in range(3)] == [1, 1, 4]  # grouped by label, file order within a label
    assert ds.num_classes == 5
    assert ds.identity_ranges() == [(1, 1), (1, 3), (3, 3), (3, 3), (3, 4)]
    np.testing.assert_array_equal(_raw(ds[0][0]), np.asarray(Image.open(folder / "alice" / "01.png")))


# ------------------------------------------------------------------------------------------------
# bad items
# ------------------------------------------------------------------------------------------------
def test_corrupt_record_is_skipped_and_reported(folder, tmp_path, caplog):
    pack_folder(folder, tmp_path / "train", encoding="png")
    reader = RecordIOReader(tmp_path / "train.rec")
    off3, off5 = reader.offset(4), reader.offset(6)  # items 3 and 5
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    raw[off3 : off3 + 4] = b"\xde\xad\xbe\xef"  # bad magic
    raw[off5 + 8 + 24 + 10 : off5 + 8 + 24 + 200] = bytes(190)  # image bytes zeroed: PNG fails to decode
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    ds = RecordIODataset(tmp_path / "train.rec", image_size=SIZE, transform=eval_transform())
    with caplog.at_level(logging.WARNING, logger="arcface.data"):
        x, y = ds[3]
    assert y == 1  # item 4 (bob/01) stands in for item 3
    np.testing.assert_array_equal(_raw(x), _expected(folder)[4][0])
    assert set(ds.bad_items) == {3} and "magic" in ds.bad_items[3]
    assert "item 3" in caplog.text and "record 4" in caplog.text and f"offset {off3}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arcface.data"):
        assert ds[5][1] == 2
    assert "item 5" in caplog.text and "record 6" in caplog.text
    bad = ds.scan()
    assert [(b.index, "record" in b.source) for b in bad] == [(3, True), (5, True)]
    assert "ImageError" in bad[1].reason
    # a truncated file: the last record is cut
    (tmp_path / "train.rec").write_bytes(bytes(raw[: reader.offset(9) + 20]))
    cut = RecordIODataset(tmp_path / "train.rec", path_idx=tmp_path / "train.idx", num_classes=3)
    assert [b.index for b in cut.scan()] == [3, 5, 8] and "truncated" in cut.bad_items[8]
    assert cut[8][1] == 0  # wraps around to item 0


def test_unreadable_and_missing_images_are_skipped(folder, caplog):
    expected = _expected(folder)
    (folder / "bob" / "00.png").write_bytes(b"\x89PNG garbage")
    ds = ImageFolderDataset(folder, image_size=SIZE, transform=eval_transform())
    with caplog.at_level(logging.WARNING, logger="arcface.data"):
        x, y = ds[3]
    assert y == 1 and 3 in ds.bad_items
    np.testing.assert_array_equal(_raw(x), expected[4][0])
    assert "item 3" in caplog.text and str(folder / "bob" / "00.png") in caplog.text
    lst = folder / "l.lst"
    lst.write_text("gone.png 0\nalice/00.png 0\n")
    lds = ListFileDataset(lst, image_size=SIZE)
    with caplog.at_level(logging.WARNING, logger="arcface.data"):
        assert lds[0][1] == 0
    assert "gone.png" in caplog.text and "no such file" in lds.bad_items[0]
    assert [b.index for b in lds.scan()] == [0]
    # an image smaller than the centre crop is a bad item too, not a crash
    assert [b.index for b in ImageFolderDataset(folder, center_crop=SIZE + 1).scan()] == list(range(9))


def test_all_bad_raises(tmp_path):
    lst = tmp_path / "l.lst"
    (tmp_path / "a.jpg").write_bytes(b"nope")
    lst.write_text("a.jpg 0\nb.jpg 1\n")
    ds = ListFileDataset(lst)
    with pytest.raises(RuntimeError, match="all 2 items"):
        ds[0]
    with pytest.raises(IndexError):
        ds[2]


def test_multiworker_loader_over_recordio(folder, tmp_path):
    pack_folder(folder, tmp_path / "train", encoding="png")
    ds = RecordIODataset(tmp_path / "train.rec", image_size=SIZE, transform=eval_transform())
    ds[0]  # open the file in this process first: workers must reopen their own handle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[1][0].equal(ds[1][0])
    sampler = ResumableDistributedSampler(len(ds), shuffle=False)
    loader = build_loader(ds, batch_size=3, sampler=sampler, num_workers=2, drop_last=False)
    images, labels = [], []
    for x, y in loader:
        assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
        images.append(x)
        labels.append(y)
        sampler.advance(len(y))
    assert torch.cat(labels).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    ref = torch.stack([ds[i][0] for i in range(9)])
    assert torch.cat(images).equal(ref)


# ------------------------------------------------------------------------------------------------
# sampler
# ------------------------------------------------------------------------------------------------
def test_sampler_shards_disjoint_and_cover():
    n, ws = 103, 4
    shards = [list(ResumableDistributedSampler(n, r, ws, seed=5)) for r in range(ws)]
    assert all(len(s) == n // ws for s in shards)
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat) == (n // ws) * ws  # disjoint; 3 dropped
    padded = [list(ResumableDistributedSampler(n, r, ws, seed=5, drop_last=False)) for r in range(ws)]
    assert all(len(s) == 26 for s in padded) and set().union(*map(set, padded)) == set(range(n))
    assert sorted(ResumableDistributedSampler(10, shuffle=False)) == list(range(10))
    assert list(ResumableDistributedSampler(10, 1, 2, shuffle=False)) == [1, 3, 5, 7, 9]


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_matches_torch_distributed_sampler(drop_last):
    """Same permutation rule and sharding as torch's DistributedSampler (seed + epoch)."""
    from torch.utils.data import DistributedSampler

    for rank in range(3):
        ours = ResumableDistributedSampler(31, rank, 3, seed=9, drop_last=drop_last)
        ref = DistributedSampler(range(31), num_replicas=3, rank=rank, seed=9, drop_last=drop_last)
        for epoch in (0, 1):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref)


def test_sampler_reshuffles_per_epoch_and_is_seeded():
    s = ResumableDistributedSampler(50, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(50))
    again = ResumableDistributedSampler(50, seed=1)
    again.set_epoch(1)
    assert list(again) == e1
    assert list(ResumableDistributedSampler(50, seed=2)) != e0


@pytest.mark.parametrize("world_size", [1, 2])
def test_sampler_resume_yields_exactly_the_rest(world_size):
    for rank in range(world_size):
        full = ResumableDistributedSampler(37, rank, world_size, seed=3)
        epoch0 = list(full)
        full.set_epoch(1)
        epoch1 = list(full)

        s = ResumableDistributedSampler(37, rank, world_size, seed=3)
        s.set_epoch(0)
        consumed = list(s)[:7]
        s.advance(7)
        state = s.state_dict()
        assert state["epoch"] == 0 and state["position"] == 7 and len(s) == len(epoch0) - 7

        resumed = ResumableDistributedSampler(37, rank, world_size, seed=3)
        resumed.load_state_dict(state)
        resumed.set_epoch(0)  # the trainer's usual call keeps the restored position
        rest = list(resumed)
        assert consumed + rest == epoch0
        resumed.advance(len(rest))
        resumed.set_epoch(1)
        assert list(resumed) == epoch1


def test_sampler_state_validation():
    s = ResumableDistributedSampler(20, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        ResumableDistributedSampler(20, world_size=4).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="dataset_len"):
        ResumableDistributedSampler(21, world_size=2).load_state_dict(s.state_dict())
    with pytest.raises(ValueError):
        s.advance(11)
    with pytest.raises(ValueError):
        ResumableDistributedSampler(20, rank=2, world_size=2)
    s.advance(10)
    assert len(s) == 0


def test_sampler_warns_when_epoch_is_consumed(caplog):
    s = ResumableDistributedSampler(4)
    s.advance(4)
    with caplog.at_level(logging.WARNING, logger="arcface.data"):
        assert list(s) == []
    assert "set_epoch(1)" in caplog.text


def test_loader_resume_continues_exactly():
    """Interrupt training after 3 batches, resume from the checkpointed state: same batches."""
    ds = SyntheticDataset(num_samples=40, num_classes=4, image_size=8)

    def run(steps, state=None, epochs=2):
        sampler = ResumableDistributedSampler(len(ds), seed=7)
        if state is not None:
            sampler.load_state_dict(state)
        loader = DataLoader(ds, batch_size=6, sampler=sampler, drop_last=True)
        seen = []
        for epoch in range(sampler.epoch, epochs):
            sampler.set_epoch(epoch)
            for _, y in loader:
                seen.append(y.tolist())
                sampler.advance(len(y))
                if len(seen) == steps:
                    return seen, sampler.state_dict()
        return seen, sampler.state_dict()

    everything, _ = run(steps=-1)
    assert len(everything) == 2 * (40 // 6)
    first, state = run(steps=3)
    rest, _ = run(steps=-1, state=state)
    assert first + rest == everything


# ------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------
def test_synthetic_deterministic_and_learnable():
    ds = SyntheticDataset(num_samples=64, num_classes=4, image_size=16, seed=3)
    x, y = ds[5]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    assert x.min() >= -1 and x.max() <= 1
    assert ds[5][0].equal(x) and SyntheticDataset(64, 4, 16, seed=3)[5][0].equal(x)
    assert not SyntheticDataset(64, 4, 16, seed=4)[5][0].equal(x)
    # class structure: the nearest class pattern recovers every label
    patterns = torch.stack([ds.pattern(c) for c in range(4)]).flatten(1)
    hits = sum(int(((patterns - ds[i][0].flatten()) ** 2).sum(1).argmin()) == ds[i][1] for i in range(64))
    assert hits == 64
    out, _ = SyntheticDataset(8, 2, 16, transform=eval_transform())[1]
    assert out.shape == (3, 16, 16) and (out - ds.__class__(8, 2, 16)[1][0]).abs().max() < 1 / 127
    assert ds.scan() == [] and ds.bad_items == {}


# ------------------------------------------------------------------------------------------------
# hygiene and shared data
# ------------------------------------------------------------------------------------------------
def test_no_mxnet_anywhere():
    for path in (SRC / "data").rglob("*.py"):
        text = path.read_text()
        assert "import mxnet" not in text and "from mxnet" not in text, path
    code = "import arcface.data, sys; assert 'mxnet' not in sys.modules and 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.shared
def test_lfw_deep_funneled_center_crop(shared):
    lfw = shared("data/lfw/lfw-deepfunneled")
    ds = ImageFolderDataset(lfw, center_crop=150, image_size=112, min_images_per_class=2)
    assert len(ds.classes) > 1000
    x, y = ds[0]
    assert x.shape == (3, 112, 112) and y == 0 and -1 <= x.min() < x.max() <= 1
