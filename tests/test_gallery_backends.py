"""The gallery's backends beyond the shared CRUD tests: the URI that names one, credentials never shown, concurrent
writers and readers on separate connections, each server's own failure modes (busy, a foreign schema, unreachable),
the embedded Milvus Lite file, and ``arcface gallery copy`` between backends (counts, searches, resume, contracts).

Servers are real (dbservers.py: PostgreSQL with pgvector, a Milvus Lite gRPC server), started once per session.
"""

from __future__ import annotations

import dataclasses
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from arcface.gallery import (
    Gallery,
    GalleryBusyError,
    GalleryContractError,
    GalleryError,
    GalleryStorageError,
    GalleryTarget,
    mask_uri,
)
from arcface.gallery.copy import copy_gallery
from arcface.inference.contract import ModelContract
from conftest import run_cli
from dbservers import free_port, unique_name

D = 16
CONTRACT = ModelContract("r50", D)
OTHER = dataclasses.replace(CONTRACT, mean=0.0, std=255.0)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def with_password(uri: str, password: str) -> str:
    user, rest = uri.split("://", 1)[1].split(":", 1)
    return f"postgresql://{user}:{password}@{rest.split('@', 1)[1]}"


# --------------------------------------------------------------------------------------------------
# Naming a gallery


def test_uri_forms_and_masking(tmp_path):
    t = GalleryTarget.parse(tmp_path / "g")
    assert (t.kind, t.path) == ("sqlite", tmp_path / "g")
    assert GalleryTarget.parse("sqlite:///srv/g").path == Path("/srv/g")
    assert GalleryTarget.parse("relative/g").path == Path("relative/g")
    pg = GalleryTarget.parse("postgresql://ann:s3cr%2Ft@db.example:5433/faces?sslmode=require&gallery=team_a&ef_search=80")
    assert (pg.kind, pg.name, dict(pg.options)) == ("postgresql", "team_a", {"ef_search": 80})
    assert pg.connect == "postgresql://ann:s3cr%2Ft@db.example:5433/faces?sslmode=require"
    assert pg.display == str(pg) == "postgresql://ann:***@db.example:5433/faces?sslmode=require&gallery=team_a&ef_search=80"
    assert "s3cr" not in repr(pg)
    assert GalleryTarget.parse("postgres://h/db").kind == "postgresql"
    assert mask_uri("postgresql://h/db?password=hunter2&user=x") == "postgresql://h/db?password=***&user=x"
    mv = GalleryTarget.parse("milvus://root:Milvus@10.0.0.5:19530/prod?gallery=faces")
    assert (mv.connect, mv.user, mv.password, mv.database, mv.name) == (
        "http://10.0.0.5:19530", "root", "Milvus", "prod", "faces")  # fmt: skip
    assert mv.display == "milvus://root:***@10.0.0.5:19530/prod?gallery=faces"
    assert GalleryTarget.parse("milvus+https://cloud.example").connect == "https://cloud.example:19530"
    lite = GalleryTarget.parse("milvus-lite:///srv/g.db")
    assert (lite.kind, lite.path) == ("milvus-lite", Path("/srv/g.db"))
    for bad, why in (
        ("mysql://u:pw@h/db", "unknown scheme"),
        ("postgresql://u:pw@h/db?gallery=Bad-Name", "gallery="),
        ("postgresql://u:pw@h/db?gallery=x&ef_search=0", "ef_search"),
        ("milvus://u:pw@h:port", "expected milvus://"),
        ("milvus-lite:///srv/g", "*.db"),
        ("sqlite://", "sqlite://"),
    ):
        with pytest.raises(GalleryError, match=why.replace("*", r"\*")) as e:
            GalleryTarget.parse(bad)
        assert "pw" not in str(e.value).replace("pwd", "")


def test_postgres_uri_takes_connection_parameters_only(capsys):
    """A libpq parameter that changes what the session does (``options`` sets server settings such as search_path for
    every statement; ``service`` reads them from a file) is refused with one line naming it; connection ones pass."""
    ok = GalleryTarget.parse("postgresql://u:pw@h/db?sslmode=verify-full&connect_timeout=5&target_session_attrs=any")
    assert ok.connect == "postgresql://u:pw@h/db?sslmode=verify-full&connect_timeout=5&target_session_attrs=any"
    cases = (("options=-c search_path=evil", "options="), ("options=-c%20search_path%3Devil", "options="),
             ("sslmode=require&service=prod", "service="), ("client_encoding=SQL_ASCII", "client_encoding="),
             ("replication=database", "replication="))  # fmt: skip
    for query, param in cases:
        uri = f"postgresql://ann:hunter2secret@127.0.0.1:5/x?{query}"
        with pytest.raises(GalleryError, match=f"URI parameter {param} is not accepted") as e:
            GalleryTarget.parse(uri)
        assert "hunter2secret" not in str(e.value) and "\n" not in str(e.value)
        rc, out, err = run_cli(capsys, "gallery", "list", "--gallery", uri)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and param in err, err
        assert "hunter2secret" not in out + err and "Traceback" not in err


def test_an_option_a_backend_has_no_use_for_is_refused(tmp_path, postgres_server, milvus_server):
    """``cache`` is the SQLite store's index cache: a server backend refuses it, naming it; ``busy_timeout`` means
    something on every backend."""
    for uri in (f"{postgres_server.uri}?gallery={unique_name()}", f"{milvus_server.uri}?gallery={unique_name()}"):
        for cache in (True, False):
            with pytest.raises(GalleryError, match="cache= has no meaning"):
                Gallery.open(uri, CONTRACT, cache=cache)
        with Gallery.open(uri, CONTRACT, busy_timeout=0.5) as g:
            assert g.count() == 0
    with Gallery.open(tmp_path / "g", CONTRACT, cache=False, busy_timeout=0.5) as g:
        assert g.count() == 0


def test_milvus_write_refused_by_its_rate_limiter_is_busy(milvus_server, monkeypatch):
    """Milvus has no locks: what makes a write wait is its rate limiter. A write it keeps refusing is retried for
    busy_timeout seconds, then GalleryBusyError (retry later), with nothing written."""
    from pymilvus.exceptions import MilvusException

    rng = np.random.default_rng(13)
    with Gallery.open(f"{milvus_server.uri}?gallery={unique_name()}", CONTRACT, busy_timeout=0.3) as g:
        ident = g.add_identity("ann")
        calls = []

        def refused(*args, **kwargs):
            calls.append(kwargs.get("retry_on_rate_limit"))
            raise MilvusException(code=8, message="rate limit exceeded")

        monkeypatch.setattr(g._client, "insert", refused)
        with pytest.raises(GalleryBusyError, match="busy") as e:
            g.add_face(ident, unit(rng, 1)[0], CONTRACT.id)
        assert e.value.retry_after >= 1 and len(calls) > 1 and set(calls) == {False}
        monkeypatch.undo()
        assert g.count() == 0
        g.add_face(ident, unit(rng, 1)[0], CONTRACT.id)
        assert g.count() == 1


def test_bad_or_unreachable_uri_is_one_line_without_the_password(capsys, tmp_path):
    port = free_port()  # nothing listens there
    for uri in (f"postgresql://ann:hunter2secret@127.0.0.1:{port}/x", "mysql://ann:hunter2secret@h/db",
                f"milvus://ann:hunter2secret@127.0.0.1:{port}"):  # fmt: skip
        rc, out, err = run_cli(capsys, "gallery", "list", "--gallery", uri)
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        assert "hunter2secret" not in out + err and "***" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Every backend


def test_concurrent_writers_and_readers_on_separate_connections(gallery_uri):
    """3 writers (each its own connection) enrol and remove while 2 readers search: every acknowledged face is there,
    every removed identity gone, and no search ever answers a name that is not its identity's."""
    rng = np.random.default_rng(10)
    where = gallery_uri()
    with Gallery.open(where, CONTRACT, busy_timeout=30):
        pass
    vecs = unit(rng, 3 * 8 * 2)
    kept: dict[int, tuple[str, list[int]]] = {}
    removed: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    writing = threading.Event()
    writing.set()

    def writer(w: int) -> None:
        try:
            with Gallery.open(where, busy_timeout=30) as g:
                for i in range(8):
                    name = f"w{w}-{i}"
                    ident = g.add_identity(name)
                    faces = g.add_faces(ident, vecs[(w * 8 + i) * 2 : (w * 8 + i) * 2 + 2], CONTRACT.id)
                    if i % 4 == 3:
                        assert g.remove_identity(ident) == 2
                        with lock:
                            removed.append(ident)
                    else:
                        with lock:
                            kept[ident] = (name, faces)
        except Exception as e:  # surfaced below
            failures.append(f"writer {w}: {type(e).__name__}: {e}")

    def reader(r: int) -> None:
        try:
            with Gallery.open(where) as g:
                while writing.is_set():
                    for m in g.search(vecs[int(rng.integers(len(vecs)))], 3):
                        with lock:
                            known = kept.get(m.identity_id)
                        if known is not None and known[0] != m.name:
                            failures.append(f"reader {r}: identity {m.identity_id} answered as {m.name}")
        except Exception as e:  # surfaced below
            failures.append(f"reader {r}: {type(e).__name__}: {e}")

    writers = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
    readers = [threading.Thread(target=reader, args=(r,), daemon=True) for r in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(120)
    writing.clear()
    for t in readers:
        t.join(60)
    assert not any(t.is_alive() for t in writers + readers), "threads still running"
    assert not failures, failures[:5]
    with Gallery.open(where) as g:
        assert g.count_identities() == len(kept) == 18 and g.count() == 36
        for ident, (name, faces) in kept.items():
            assert {f.id for f in g.list_faces(ident)} == set(faces) and g.get_identity(ident).name == name
        for ident in removed:
            with pytest.raises(KeyError):
                g.get_identity(ident)
        for w in range(3):  # a removed identity's faces are not found; a kept one's are
            gone, here = vecs[(w * 8 + 3) * 2], vecs[(w * 8) * 2]
            assert all(m.identity_id not in removed for m in g.search(gone, 5))
            assert g.search(here, 1)[0].similarity == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def test_postgres_busy_row_lock_foreign_schema_and_verbatim_names(postgres_server):
    import psycopg

    where = f"{postgres_server.uri}?gallery={unique_name()}"
    rng = np.random.default_rng(11)
    with Gallery.open(where, CONTRACT, busy_timeout=0.3) as g:
        evil = "Robert'); DROP TABLE faces; --"
        ident = g.add_identity(evil, {"sql": "'; DELETE FROM identities; --"})
        g.add_face(ident, unit(rng, 1)[0], CONTRACT.id, source="x'); DROP SCHEMA y; --")
        assert g.find_identities(evil)[0].metadata == {"sql": "'; DELETE FROM identities; --"}
        schema = where.split("gallery=")[1]
        with psycopg.connect(postgres_server.uri) as other:  # another client holds the identity's row
            other.execute(f'SELECT 1 FROM "{schema}".identities WHERE id = %s FOR UPDATE', (ident,))
            with pytest.raises(GalleryBusyError) as e:
                g.add_face(ident, unit(rng, 1)[0], CONTRACT.id)
            assert e.value.retry_after >= 1 and postgres_server.password not in str(e.value)
        assert g.count() == 1  # nothing half-written
        g.remove_identity(ident)
        with psycopg.connect(postgres_server.uri) as c:  # gone from the tables at once (VACUUM frees the pages)
            assert c.execute(f'SELECT count(*) FROM "{schema}".faces').fetchone()[0] == 0
            assert c.execute(f'SELECT count(*) FROM "{schema}".identities').fetchone()[0] == 0
    foreign = unique_name()
    with psycopg.connect(postgres_server.uri, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{foreign}"')
        c.execute(f'CREATE TABLE "{foreign}".meta (k int)')
    with pytest.raises(GalleryError, match="not a gallery|schema"):
        Gallery.open(f"{postgres_server.uri}?gallery={foreign}", CONTRACT)
    with pytest.raises(GalleryStorageError) as e:
        Gallery.open(with_password(postgres_server.uri, "wrong-password-xyz") + "?gallery=x", CONTRACT)
    assert "wrong-password-xyz" not in str(e.value) and "***" in str(e.value)


def test_postgres_hnsw_search_agrees_with_exact_on_a_small_set(postgres_server):
    rng = np.random.default_rng(12)
    people = unit(rng, 80)
    where = f"{postgres_server.uri}?gallery={unique_name()}"
    with Gallery.open(where, CONTRACT) as exact, Gallery.open(where, index="hnsw") as approx:
        ids = [exact.add_identity(f"p{i}") for i in range(80)]
        for ident, v in zip(ids, people, strict=True):
            exact.add_faces(ident, np.stack([v, v + 0.3 * unit(rng, 1)[0]]), CONTRACT.id)
        for i, v in enumerate(people):
            q = v + 0.2 * unit(rng, 1)[0]
            assert approx.search(q, 3) == exact.search(q, 3), i


# --------------------------------------------------------------------------------------------------
# Milvus Lite as an embedded file


def test_milvus_lite_file_keeps_the_gallery(tmp_path):
    pytest.importorskip("pymilvus")
    where = f"milvus-lite://{tmp_path}/g.db?gallery=lite"
    v = unit(np.random.default_rng(13), 2)
    with pytest.raises(FileNotFoundError):
        Gallery.open(where, CONTRACT, create=False)
    with Gallery.open(where, CONTRACT) as g:
        assert stat.S_IMODE((tmp_path / "g.db").stat().st_mode) == 0o700
        a = g.add_identity("a")
        g.add_faces(a, v, CONTRACT.id, ["a1.jpg", None])
        assert g.backend == "milvus-lite" and g.search(v[1], 1)[0].name == "a"
    with Gallery.open(where, create=False) as g:
        assert g.contract == CONTRACT and [f.source for f in g.list_faces(a)] == ["a1.jpg", None]
        with pytest.raises(GalleryContractError):
            Gallery.open(where, OTHER)


# --------------------------------------------------------------------------------------------------
# arcface gallery copy


def _fill(where: str, rng: np.random.Generator, people: int = 12) -> None:
    with Gallery.open(where, CONTRACT) as g:
        for i in range(people):
            ident = g.add_identity(f"person-{i}", {"n": i})
            g.add_faces(ident, unit(rng, 1 + i % 4), CONTRACT.id, [f"{i}/{j}.jpg" for j in range(1 + i % 4)])


def test_copy_sqlite_to_postgres_to_milvus(capsys, tmp_path, postgres_server, milvus_server):
    rng = np.random.default_rng(14)
    sqlite = str(tmp_path / "g")
    pg = f"{postgres_server.uri}?gallery={unique_name()}"
    mv = f"{milvus_server.uri}?gallery={unique_name()}"
    _fill(sqlite, rng)
    rc, out, err = run_cli(capsys, "gallery", "copy", sqlite, pg, "--no-progress")
    assert rc == 0, err
    assert "copied 12 identities and 30 faces" in out and "counts: equal" in out and "30 of 30" in out
    assert postgres_server.password not in out + err and "***" in out
    rc, out, err = run_cli(capsys, "gallery", "copy", pg, mv, "--no-progress", "--sample", "10")
    assert rc == 0 and "10 of 10 sampled searches identical" in out, out + err
    with Gallery.open(sqlite) as a, Gallery.open(mv) as b:
        assert [(i.name, i.metadata, i.faces) for i in a.list_identities()] == [
            (i.name, i.metadata, i.faces) for i in b.list_identities()]  # fmt: skip
        assert sorted(f.source for f in a.list_faces()) == sorted(f.source for f in b.list_faces())
    rc, out, err = run_cli(capsys, "gallery", "copy", pg, pg)
    assert rc == 1 and "both the source and the destination" in err


def test_copy_resumes_and_refuses_another_contract_or_a_foreign_destination(capsys, tmp_path, postgres_server):
    rng = np.random.default_rng(15)
    src = str(tmp_path / "src")
    _fill(src, rng)
    dst = f"{postgres_server.uri}?gallery={unique_name()}"

    class Stop(Exception):
        pass

    def stop_after(done: int, total: int) -> None:
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        copy_gallery(src, dst, progress=stop_after)
    with Gallery.open(dst) as g:
        assert g.count_identities() == 5
    r = copy_gallery(src, dst)
    assert r.resumed_identities == 5 and r.copied_identities == 7 and r.verified
    assert (r.identities, r.faces) == (12, 30)
    r = copy_gallery(src, dst)  # once more: nothing to do, still verified
    assert (r.copied_identities, r.copied_faces, r.verified) == (0, 0, True)

    other = str(tmp_path / "other")
    with Gallery.open(other, OTHER) as g:
        g.add_identity("someone")
    rc, _, err = run_cli(capsys, "gallery", "copy", src, other)
    assert rc == 1 and OTHER.id in err and CONTRACT.id in err and len(err.strip().splitlines()) == 1
    foreign = str(tmp_path / "foreign")
    with Gallery.open(foreign, CONTRACT) as g:
        g.add_identity("not from the source")
    rc, _, err = run_cli(capsys, "gallery", "copy", src, foreign)
    assert rc == 1 and "empty gallery" in err
