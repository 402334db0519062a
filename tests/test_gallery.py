"""arcface.gallery with synthetic unit vectors: CRUD, search, aggregation, contract, durability, index.

The tests that take ``gallery_uri`` are the conformance suite: they run on every backend (a SQLite folder, a schema on
a real PostgreSQL server, collections on a real Milvus Lite gRPC server; see dbservers.py), through the same
``Gallery.open(location, ...)``. The index-cache and approximate-index tests are the SQLite store's own.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest

from arcface.gallery import Gallery, GalleryContractError, GalleryError, Match
from arcface.inference.contract import ModelContract

D = 32
CONTRACT = ModelContract("r50", D)
OTHER = dataclasses.replace(CONTRACT, mean=0.0, std=255.0)


def unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    x = rng.normal(size=(D,) if n is None else (n, D))
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.3) -> np.ndarray:
    x = v + noise * rng.normal(size=v.shape) / np.sqrt(D)
    return (x / np.linalg.norm(x)).astype(np.float32)


def test_add_search_remove(gallery_uri):
    rng = np.random.default_rng(0)
    with Gallery.open(gallery_uri(), CONTRACT) as g:
        people = {name: unit(rng) for name in ("ann", "bob", "cid")}
        ids = {name: g.add_identity(name, {"team": name[0]}) for name in people}
        faces = {name: g.add_face(ids[name], v, CONTRACT.id, source=f"{name}.jpg") for name, v in people.items()}
        g.add_face(ids["ann"], near(people["ann"], rng), CONTRACT)  # a ModelContract is accepted too
        assert g.count() == 4 and g.count_identities() == 3

        res = g.search(near(people["bob"], rng), k=5)
        assert [m.name for m in res][0] == "bob" and len(res) == 3
        assert isinstance(res[0], Match) and res[0].face_id == faces["bob"]
        assert all(a.similarity >= b.similarity for a, b in zip(res, res[1:], strict=False))
        assert g.search(people["cid"], k=1)[0].similarity == pytest.approx(1.0, abs=1e-5)

        ann = g.get_identity(ids["ann"])
        assert (ann.name, ann.metadata, ann.faces) == ("ann", {"team": "a"}, 2)
        assert [i.name for i in g.list_identities()] == ["ann", "bob", "cid"]
        assert [f.source for f in g.list_faces(ids["ann"])] == ["ann.jpg", None]
        assert g.find_identities("bob")[0].id == ids["bob"]
        np.testing.assert_allclose(g.get_embedding(faces["cid"]), people["cid"], atol=1e-6)

        g.remove_face(faces["bob"])
        assert "bob" not in [m.name for m in g.search(people["bob"], k=5)]
        assert g.get_identity(ids["bob"]).faces == 0
        assert g.remove_identity(ids["ann"]) == 2
        assert [m.name for m in g.search(people["ann"], k=5)] == ["cid"]
        assert g.count() == 1
        with pytest.raises(KeyError):
            g.get_identity(ids["ann"])
        with pytest.raises(KeyError):
            g.remove_face(faces["bob"])
        with pytest.raises(KeyError):
            g.add_face(ids["ann"], people["ann"], CONTRACT.id)
        g.remove_identity(ids["cid"])
        assert g.search(people["cid"]) == []


def test_embeddings_are_normalised_and_checked(gallery_uri):
    rng = np.random.default_rng(1)
    with Gallery.open(gallery_uri(), CONTRACT) as g:
        a = g.add_identity("a")
        v = unit(rng)
        f = g.add_face(a, 7.0 * v, CONTRACT.id)  # stored as the unit vector
        assert np.linalg.norm(g.get_embedding(f)) == pytest.approx(1.0, abs=1e-6)
        assert g.search(3.0 * v, k=1)[0].similarity == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(ValueError, match=r"\(32,\)"):
            g.add_face(a, np.ones(D + 1, np.float32), CONTRACT.id)
        with pytest.raises(ValueError):
            g.add_face(a, np.ones((2, D), np.float32), CONTRACT.id)
        with pytest.raises(ValueError, match="zero"):
            g.add_face(a, np.zeros(D, np.float32), CONTRACT.id)
        with pytest.raises(ValueError, match="non-finite"):
            g.add_face(a, np.full(D, np.nan, np.float32), CONTRACT.id)
        with pytest.raises(ValueError):
            g.search(np.ones(D - 1, np.float32))
        with pytest.raises(ValueError):
            g.add_identity("")
        with pytest.raises(ValueError):
            g.add_identity("x", {"bad": object()})
        for bad_source in ("nul\x00byte", "\ud800", "x" * 4097, 5):
            with pytest.raises(ValueError, match="source"):
                g.add_face(a, v, CONTRACT.id, source=bad_source)
        assert g.count() == 1


def test_aggregation_max_vs_mean_top(gallery_uri):
    rng = np.random.default_rng(2)
    q = unit(rng)
    basis = unit(rng)
    perp = basis - (basis @ q) * q
    perp /= np.linalg.norm(perp)

    def at(cos: float) -> np.ndarray:  # a unit vector with cosine `cos` to q
        return (cos * q + np.sqrt(1 - cos**2) * perp).astype(np.float32)

    with Gallery.open(gallery_uri(), CONTRACT) as g:
        lucky, steady = g.add_identity("lucky"), g.add_identity("steady")
        for cos in (0.95, 0.1, 0.0):
            g.add_face(lucky, at(cos), CONTRACT.id)
        for cos in (0.8, 0.8, 0.8):
            g.add_face(steady, at(cos), CONTRACT.id)
        by_max = g.search(q, k=2)
        assert [m.name for m in by_max] == ["lucky", "steady"]
        assert by_max[0].similarity == pytest.approx(0.95, abs=1e-4)
        by_mean = g.search(q, k=2, aggregate="mean_top", top=3)
        assert [m.name for m in by_mean] == ["steady", "lucky"]
        assert by_mean[0].similarity == pytest.approx(0.8, abs=1e-4)
        assert by_mean[1].similarity == pytest.approx((0.95 + 0.1 + 0.0) / 3, abs=1e-4)
        assert by_mean[1].face_id == g.list_faces(lucky)[0].id  # still its best face
        assert g.search(q, k=2, aggregate="mean_top", top=1)[0].name == "lucky"
        with pytest.raises(ValueError, match="aggregate"):
            g.search(q, aggregate="median")


def test_over_fetch_finds_k_identities_behind_many_faces(gallery_uri):
    """One identity owns the 100 nearest faces; the other 4 identities must still be found."""
    rng = np.random.default_rng(3)
    q = unit(rng)
    with Gallery.open(gallery_uri(), CONTRACT) as g:
        crowd = g.add_identity("crowd")
        g.add_faces(crowd, np.stack([near(q, rng, 0.2) for _ in range(100)]), CONTRACT.id)
        others = [g.add_identity(f"p{i}") for i in range(4)]
        for o in others:
            g.add_face(o, unit(rng), CONTRACT.id)
        for agg in ("max", "mean_top"):
            res = g.search(q, k=5, aggregate=agg)
            assert res[0].name == "crowd" and {m.identity_id for m in res[1:]} == set(others)


def test_contract_binding_and_refusal(gallery_uri, tmp_path):
    rng = np.random.default_rng(4)
    where = gallery_uri()
    with Gallery.open(where, CONTRACT) as g:
        a = g.add_identity("a")
        with pytest.raises(GalleryContractError) as e:
            g.add_face(a, unit(rng), OTHER.id)
        assert CONTRACT.id in str(e.value) and OTHER.id in str(e.value)
        assert g.count() == 0
    with pytest.raises(GalleryContractError) as e:
        Gallery.open(where, OTHER)
    assert CONTRACT.id in str(e.value) and OTHER.id in str(e.value)
    with Gallery.open(where) as g:  # no contract: the bound one
        assert g.contract == CONTRACT
    with pytest.raises(FileNotFoundError):
        Gallery.open(gallery_uri("none"), CONTRACT, create=False)
    with pytest.raises(GalleryError, match="contract"):
        Gallery.open(gallery_uri("new"))
    if gallery_uri.kind == "sqlite":
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "gallery.sqlite3").write_bytes(b"not a database at all" * 100)
        with pytest.raises(GalleryError, match="not a usable gallery"):
            Gallery.open(tmp_path / "junk", CONTRACT)


def test_reopen_persistence_and_process_crash_durability(gallery_uri, tmp_path):
    rng = np.random.default_rng(5)
    v = unit(rng)
    where = gallery_uri()
    with Gallery.open(where, CONTRACT) as g:
        a = g.add_identity("a", {"k": 1})
        g.add_face(a, v, CONTRACT.id)
    with Gallery.open(where) as g:
        assert g.count() == 1 and g.search(v, 1)[0].name == "a" and g.get_identity(a).metadata == {"k": 1}
    # Another process adds a face and dies without closing: the acknowledged write must be there.
    w = unit(rng)
    np.save(tmp_path / "w.npy", w)
    code = (
        "import os, sys, numpy as np\n"
        "from arcface.gallery import Gallery\n"
        "g = Gallery.open(sys.argv[1])\n"
        "b = g.add_identity('b')\n"
        "g.add_face(b, np.load(sys.argv[2]), g.contract_id)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, where, str(tmp_path / "w.npy")], check=True, timeout=120)
    with Gallery.open(where) as g:
        assert g.count() == 2 and g.search(w, 1)[0].name == "b"


def test_writes_of_another_connection_are_seen(gallery_uri):
    rng = np.random.default_rng(6)
    v = unit(rng)
    where = gallery_uri()
    with Gallery.open(where, CONTRACT) as reader, Gallery.open(where, CONTRACT) as writer:
        assert reader.search(v) == []
        writer.add_face(writer.add_identity("late"), v, CONTRACT.id)
        assert reader.search(v, 1)[0].name == "late"


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_corrupted_or_stale_index_cache_is_rebuilt(tmp_path, kind, caplog):
    rng = np.random.default_rng(7)
    people = unit(rng, 20)
    with Gallery.open(tmp_path, CONTRACT, index=kind) as g:
        for i, v in enumerate(people):
            g.add_face(g.add_identity(f"p{i}"), v, CONTRACT.id)
        g.remove_identity(1)  # p0: masked in the cached index
    cache = tmp_path / f"index.{kind}.faiss"
    assert cache.is_file()

    def check(rebuilt: bool, cached: bool = False) -> None:
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="arcface.gallery")
        with Gallery.open(tmp_path, index=kind) as g:
            for i, v in enumerate(people[1:], start=1):
                top = g.search(v, 1)[0]
                assert top.name == f"p{i}" and top.similarity == pytest.approx(1.0, abs=1e-4)
            assert all(m.name != "p0" for m in g.search(people[0], 5))
        assert ("unusable" in caplog.text) == rebuilt
        assert ("loaded from the cache" in caplog.text) == cached

    check(rebuilt=False, cached=True)
    cache.write_bytes(b"garbage" * 1000)
    check(rebuilt=True)
    data = bytearray(cache.read_bytes())  # rewritten on close: now flip a byte of its payload
    data[-100] ^= 0xFF
    cache.write_bytes(bytes(data))
    check(rebuilt=True)
    cache.write_bytes(cache.read_bytes()[:-50])  # truncated
    check(rebuilt=True)
    check(rebuilt=False, cached=True)  # the rebuilt index was cached again on close
    cache.unlink()
    check(rebuilt=False)
    # Stale: the database changed behind the cache (a writer that keeps no cache).
    with Gallery.open(tmp_path, index=kind, cache=False) as g:
        g.remove_identity(2)
    with Gallery.open(tmp_path, index=kind) as g:
        assert all(m.name != "p1" for m in g.search(people[1], 5))
        assert g.search(people[2], 1)[0].name == "p2"


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_agrees_with_exact_on_a_small_set(tmp_path, kind):
    rng = np.random.default_rng(8)
    people = unit(rng, 60)
    queries = np.stack([near(v, rng) for v in people])
    with Gallery.open(tmp_path / "e", CONTRACT) as exact, Gallery.open(tmp_path / kind, CONTRACT, index=kind) as approx:
        for i, v in enumerate(people):
            for g in (exact, approx):
                ident = g.add_identity(f"p{i}")
                g.add_face(ident, v, CONTRACT.id)
                g.add_face(ident, near(v, rng, 0.5), CONTRACT.id)
        for q in queries:
            assert approx.search(q, 1)[0].name == exact.search(q, 1)[0].name
        for i in range(0, 60, 3):  # removal masks (HNSW cannot remove), then rebuilds
            approx.remove_identity(i + 1)
            exact.remove_identity(i + 1)
        for i, q in enumerate(queries):
            if i % 3:  # the queries of people still enrolled
                assert approx.search(q, 1)[0].name == exact.search(q, 1)[0].name == f"p{i}"
    with Gallery.open(tmp_path / kind, index=kind) as approx:
        assert approx.search(queries[1], 1)[0].name == "p1"


def test_concurrent_add_face_from_threads(gallery_uri):
    rng = np.random.default_rng(9)
    vecs = unit(rng, 200)
    errors: list[BaseException] = []
    where = gallery_uri()
    with Gallery.open(where, CONTRACT) as g:
        ids = [g.add_identity(f"t{t}") for t in range(8)]

        def work(t: int) -> None:
            try:
                for j in range(25):
                    g.add_face(ids[t], vecs[t * 25 + j], CONTRACT.id, source=str(t * 25 + j))
                    if j % 5 == 0:
                        g.search(vecs[t * 25], 3)
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert g.count() == 200
        for n, v in enumerate(vecs):
            top = g.search(v, 1)[0]
            assert top.identity_id == ids[n // 25] and top.similarity == pytest.approx(1.0, abs=1e-4)
    with Gallery.open(where) as g:
        assert g.count() == 200 and sorted(int(f.source) for f in g.list_faces()) == list(range(200))


def test_closed_gallery_refuses(gallery_uri):
    g = Gallery.open(gallery_uri(), CONTRACT)
    ident = g.add_identity("early")
    face = g.add_face(ident, np.ones(D), CONTRACT.id)
    g.close()
    g.close()  # idempotent
    calls = (g.count, g.count_identities, g.list_identities, g.list_faces, lambda: g.add_identity("late"),
             lambda: g.search(np.ones(D)), lambda: g.get_identity(ident), lambda: g.find_identities("early"),
             lambda: g.add_face(ident, np.ones(D), CONTRACT.id), lambda: g.get_embedding(face),
             lambda: g.remove_face(face), lambda: g.remove_identity(ident))  # fmt: skip
    for call in calls:
        with pytest.raises(GalleryError, match="closed"):
            call()


def test_a_write_is_whole_or_nothing(gallery_uri):
    """A refused add_faces leaves none of its faces; remove_identity takes every face with it, out of every answer."""
    rng = np.random.default_rng(21)
    with Gallery.open(gallery_uri(), CONTRACT) as g:
        ann, bob = g.add_identity("ann"), g.add_identity("bob")
        g.add_face(bob, unit(rng), CONTRACT.id)
        good = unit(rng, 3)
        for bad_rows, sources in ((np.vstack([good, np.full((1, D), np.nan)]), None),
                                  (np.vstack([good, np.zeros((1, D))]), None),
                                  (good, ["a.jpg", "b.jpg", "c\x00.jpg"]),
                                  (good, ["a.jpg"])):  # fmt: skip
            with pytest.raises(ValueError):
                g.add_faces(ann, bad_rows, CONTRACT.id, sources)
            assert g.count() == 1 and g.list_faces(ann) == [] and g.get_identity(ann).faces == 0
        with pytest.raises(GalleryContractError):
            g.add_faces(ann, good, OTHER.id)
        faces = g.add_faces(ann, good, CONTRACT.id)
        assert g.count() == 4 and g.get_identity(ann).faces == 3
        assert g.remove_identity(ann) == 3
        assert g.count() == 1 and g.list_faces(ann) == [] and g.find_identities("ann") == []
        assert [i.id for i in g.list_identities()] == [bob]
        for f in faces:
            with pytest.raises(KeyError):
                g.get_embedding(f)
        with pytest.raises(KeyError):
            g.get_embeddings([faces[0]])
        with pytest.raises(KeyError):
            g.add_faces(ann, good, CONTRACT.id)
        assert g.count() == 1
        assert all(m.identity_id == bob for m in g.search(good[0], 5))


def test_a_removal_is_seen_by_every_connection_at_once(gallery_uri):
    """Once remove_identity/remove_face return, another connection (its own index, pool or client) never answers
    what was removed: not by search, get, list or find."""
    rng = np.random.default_rng(22)
    v, w = unit(rng, 2)
    where = gallery_uri()
    with Gallery.open(where, CONTRACT) as writer, Gallery.open(where) as reader:
        ann, bob = writer.add_identity("ann"), writer.add_identity("bob")
        writer.add_face(ann, v, CONTRACT.id)
        kept = writer.add_face(bob, w, CONTRACT.id)
        gone = writer.add_face(bob, v, CONTRACT.id)
        assert reader.search(v, 1)[0].identity_id == ann  # the reader has read the gallery (built its index)
        writer.remove_identity(ann)
        writer.remove_face(gone)
        assert [m.identity_id for m in reader.search(v, 5)] == [bob]
        assert reader.search(v, 5)[0].face_id == kept
        with pytest.raises(KeyError):
            reader.get_identity(ann)
        with pytest.raises(KeyError):
            reader.get_embedding(gone)
        assert reader.find_identities("ann") == [] and [i.id for i in reader.list_identities()] == [bob]
        assert [f.id for f in reader.list_faces()] == [kept] and reader.get_identity(bob).faces == 1
