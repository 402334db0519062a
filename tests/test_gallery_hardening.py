"""The gallery's promises beyond CRUD, with synthetic vectors: erasure from every file, private modes, an index cache
bound to its database, limits on names, metadata and ids, paging, busy errors, and readers that never wait for a
writer. The tests that take ``gallery_uri`` run on every backend (see dbservers.py)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from arcface.gallery import (
    Gallery,
    GalleryBusyError,
    check_metadata,
    check_name,
)
from arcface.gallery.rules import INT64_MAX, MAX_METADATA_BYTES
from arcface.inference.contract import ModelContract
from served import float32_runs_near

D = 64
CONTRACT = ModelContract("r50", D)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _traces(folder: Path, name: str, embedding: np.ndarray) -> list[str]:
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if name.encode() in data:
            hits.append(f"{path.name}: name")
        if float32_runs_near(data, embedding):
            hits.append(f"{path.name}: embedding")
    return hits


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_removal_leaves_no_trace_in_any_file(tmp_path, kind):
    rng = np.random.default_rng(1)
    vecs = unit(rng, 30)
    folder = tmp_path / "g"
    with Gallery.open(folder, CONTRACT, index=kind) as g:
        ids = [g.add_identity(f"person-{i:02d}", {"secret": f"note-{i:02d}"}) for i in range(30)]
        faces = [g.add_face(ids[i], vecs[i], CONTRACT.id, source=f"person-{i:02d}.jpg") for i in range(30)]
    with Gallery.open(folder, index=kind) as g:  # a cache on disk now: the removal must reach it too
        assert (folder / f"index.{kind}.faiss").is_file()
        assert _traces(folder, "person-07", vecs[7]), "the scan must see a face that is there"
        g.remove_identity(ids[7])
        g.remove_face(faces[12])
        assert _traces(folder, "person-07", vecs[7]) == [] and _traces(folder, "note-07", vecs[12]) == []
        assert not (folder / f"index.{kind}.faiss").exists()  # deleted at once
        assert g.search(vecs[3], 1)[0].name == "person-03"
    for v in (vecs[7], vecs[12]):  # and after close, which writes a new cache
        assert _traces(folder, "person-07", v) == []
    assert (folder / f"index.{kind}.faiss").is_file()
    with Gallery.open(folder, index=kind) as g:
        assert g.count() == 28 and g.search(vecs[20], 1)[0].name == "person-20"
        assert all(m.name != "person-07" for m in g.search(vecs[7], 5))


def test_files_are_private(tmp_path):
    folder = tmp_path / "new" / "gallery"
    with Gallery.open(folder, CONTRACT) as g:
        g.add_face(g.add_identity("a"), unit(np.random.default_rng(2), 1)[0], CONTRACT.id)
        for p in folder.iterdir():  # the database, its -wal and -shm
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {p.name for p in folder.iterdir()} >= {"gallery.sqlite3", "index.exact.faiss"}
    for p in folder.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def _forge(cache: Path, *, old_format: bool) -> None:
    """Swap the first two face ids of a cache and give it a fresh plain SHA-256 (what a forger can compute)."""
    raw = cache.read_bytes()
    magic_end = raw.index(b"\n") + 1
    end = raw.index(b"\n", magic_end)
    header = json.loads(raw[magic_end:end])
    body = raw[end + 1 : end + 1 + header["index_bytes"]]
    ids = np.frombuffer(raw[end + 1 + header["index_bytes"] :], "<i8").copy()
    ids[[0, 1]] = ids[[1, 0]]
    payload = body + ids.tobytes()
    header.pop("mac")
    header["sha256"] = hashlib.sha256(payload).hexdigest()
    magic = b"ARCFACE-GALLERY-INDEX 1\n" if old_format else raw[:magic_end]
    if not old_format:
        header["mac"] = hashlib.sha256(b"guessed key" + payload).hexdigest()
    cache.write_bytes(magic + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)


@pytest.mark.parametrize("old_format", [True, False], ids=["v1-sha256", "v2-wrong-mac"])
def test_a_cache_rewritten_outside_is_refused(tmp_path, old_format, caplog):
    rng = np.random.default_rng(3)
    vecs = unit(rng, 2)
    with Gallery.open(tmp_path, CONTRACT) as g:
        a, b = g.add_identity("a"), g.add_identity("b")
        g.add_face(a, vecs[0], CONTRACT.id)
        g.add_face(b, vecs[1], CONTRACT.id)
    _forge(tmp_path / "index.exact.faiss", old_format=old_format)
    with Gallery.open(tmp_path) as g:
        assert g.search(vecs[0], 1)[0].name == "a" and g.search(vecs[1], 1)[0].name == "b"
    assert "is unusable" in caplog.text


def test_another_database_key_refuses_a_copied_cache(tmp_path):
    """A cache copied from another gallery with the same ids and generation is refused: its key differs."""
    rng = np.random.default_rng(4)
    x, y = unit(rng, 1)[0], unit(rng, 1)[0]
    for folder, v in ((tmp_path / "one", x), (tmp_path / "two", y)):
        with Gallery.open(folder, CONTRACT) as g:
            g.add_face(g.add_identity("same-id"), v, CONTRACT.id)
    (tmp_path / "two" / "index.exact.faiss").write_bytes((tmp_path / "one" / "index.exact.faiss").read_bytes())
    with Gallery.open(tmp_path / "two") as g:
        assert g.search(y, 1)[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_names_metadata_and_ids(gallery_uri):
    for bad in ("", "   ", "a\x00b", "\x1b[31mred", "line\nbreak", "tab\there", "rtl\u202eoverride", "\u2067iso",
                "\ud800", "x" * 257, 5, None):  # fmt: skip
        with pytest.raises(ValueError):
            check_name(bad)
    for good in ("Zoë", "名前", "O'Brien-Smith", "emoji 🙂", "a" * 256):
        assert check_name(good) == good
    deep: dict = {"a": 1}
    for _ in range(7):
        deep = {"k": deep}
    check_metadata(deep)  # 8 levels
    with pytest.raises(ValueError, match="deeper"):
        check_metadata({"k": deep})
    with pytest.raises(ValueError, match="deeper"):
        check_metadata({"k": [[[[[[[[[]]]]]]]]]})
    with pytest.raises(ValueError, match="bytes"):
        check_metadata({"x": "y" * MAX_METADATA_BYTES})
    for bad in ([1], "x", {"a": float("nan")}, {"a": object()}, {"a": "\ud800"}):
        with pytest.raises(ValueError):
            check_metadata(bad)
    with Gallery.open(gallery_uri(), CONTRACT) as g:
        with pytest.raises(ValueError):
            g.add_identity("bad\x00name")
        ident = g.add_identity("ok", {"n": [1, 2, {"x": None}]})
        for bad_id in (0, -1, INT64_MAX + 1, 2**64, 10**30, True, "1", 1.0):
            with pytest.raises(KeyError):
                g.get_identity(bad_id)
            with pytest.raises(KeyError):
                g.remove_identity(bad_id)
            with pytest.raises(KeyError):
                g.remove_face(bad_id)
            with pytest.raises(KeyError):
                g.add_face(bad_id, np.ones(D), CONTRACT.id)
        with pytest.raises(KeyError):
            g.get_identity(INT64_MAX)
        assert g.get_identity(ident).metadata == {"n": [1, 2, {"x": None}]}


def test_paging_by_id(gallery_uri):
    with Gallery.open(gallery_uri(), CONTRACT) as g:
        ids = [g.add_identity(f"p{i}") for i in range(7)]
        g.remove_identity(ids[3])
        pages, after = [], 0
        while True:
            page = g.list_identities(limit=3, after=after)
            if not page:
                break
            pages.append([i.id for i in page])
            after = page[-1].id
        assert pages == [ids[:3], ids[4:7]]
        assert [i.id for i in g.list_identities()] == ids[:3] + ids[4:]
        assert g.list_identities(limit=2, after=INT64_MAX * 4) == []


def test_busy_database_and_readers_that_do_not_wait(tmp_path):
    """Another connection holds the write lock: a write fails with GalleryBusyError after the busy timeout, and while
    a write is waiting for that lock, reads and searches from other threads complete (an ordering: the lock is only
    released after they have answered)."""
    rng = np.random.default_rng(5)
    vecs = unit(rng, 3)
    with Gallery.open(tmp_path, CONTRACT) as g:
        for i, v in enumerate(vecs):
            g.add_face(g.add_identity(f"p{i}"), v, CONTRACT.id)
    other = sqlite3.connect(tmp_path / "gallery.sqlite3", timeout=0, isolation_level=None)
    try:
        with Gallery.open(tmp_path, busy_timeout=0.2) as quick:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(GalleryBusyError) as e:
                quick.add_identity("refused")
            assert e.value.retry_after >= 1
            other.execute("ROLLBACK")
            assert quick.count_identities() == 3  # nothing half-written
        with Gallery.open(tmp_path, busy_timeout=120) as g:
            other.execute("BEGIN IMMEDIATE")
            writer_done = threading.Event()
            result: list = []

            def write() -> None:
                result.append(g.add_face(g.add_identity("late"), unit(rng, 1)[0], CONTRACT.id))
                writer_done.set()

            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            reads: list = []

            def read() -> None:
                reads.append((g.search(vecs[1], 1)[0].name, len(g.list_identities()), g.count()))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            reader.join(60)  # a safety bound: a reader stuck behind the writer would never finish
            assert not reader.is_alive() and reads == [("p1", 3, 3)]
            assert not writer_done.is_set()  # the writer is still waiting for the lock the test holds
            other.execute("ROLLBACK")
            writer.join(60)
            assert writer_done.is_set() and g.count() == 4
    finally:
        other.close()


def test_writes_of_another_process_are_seen_by_generation(gallery_uri):
    rng = np.random.default_rng(6)
    v, w = unit(rng, 2)
    where = gallery_uri()
    with Gallery.open(where, CONTRACT) as reader, Gallery.open(where) as writer:
        a = writer.add_identity("a")
        writer.add_face(a, v, CONTRACT.id)
        assert reader.search(v, 1)[0].name == "a"
        f = reader.add_face(reader.add_identity("b"), w, CONTRACT.id)  # the reader writes too: its index follows
        writer.remove_identity(a)
        assert [m.name for m in reader.search(v, 5)] == ["b"]
        reader.remove_face(f)
        assert writer.search(w, 5) == []


def test_invisible_and_nul_characters_are_refused_in_names_and_lookups(gallery_uri):
    """Format characters (Unicode Cf: zero-width space, byte-order mark, soft hyphen, word joiner) make a name look
    like another, as controls and bidirectional marks do; a lookup by a name no identity could have is the same
    ValueError as creating it, on every backend (never a driver's error)."""
    refused = ("\ufeffann", "a\u200bnn", "an\u00adn", "an\u2060n", "ann\u200d", "a\x00", "\x00")
    for bad in refused:
        with pytest.raises(ValueError, match="control|invisible"):
            check_name(bad)
    with Gallery.open(gallery_uri(), CONTRACT) as g:
        ann = g.add_identity("ann")
        for bad in refused:
            with pytest.raises(ValueError, match="control|invisible"):
                g.add_identity(bad)
            with pytest.raises(ValueError, match="control|invisible"):
                g.find_identities(bad)
        with pytest.raises(ValueError, match="non-empty"):
            g.find_identities("")
        assert [i.id for i in g.find_identities("ann")] == [ann]
        assert g.find_identities(5) == [] and g.count_identities() == 1  # type: ignore[arg-type]
