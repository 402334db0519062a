"""Several ``arcface serve`` replicas over one PostgreSQL gallery, and a SIGKILL mid-enrolment against PostgreSQL.

Real parts only: a PostgreSQL server with pgvector (dbservers.py, one per session), ``arcface serve`` processes on
127.0.0.1 (served.py) with the default model, LFW photos. Every client call has a timeout; servers are stopped (or
killed) by their PIDs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from conftest import require_shared
from dbservers import unique_name
from served import Served, check_acknowledged, kill_during_enrolment

LFW = "data/lfw/lfw-deepfunneled"
KEY = "replica-key-0123456789"
PEOPLE = ("Colin_Powell", "Tony_Blair", "George_W_Bush", "Donald_Rumsfeld", "Gerhard_Schroeder")


def _photo(lfw: Path, person: str, n: int) -> bytes:
    return (lfw / person / f"{person}_{n:04d}.jpg").read_bytes()


def _search(c: httpx.Client, data: bytes, k: int = 3) -> list[dict]:
    r = c.post("/v1/search", params={"k": k}, files={"image": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()["matches"]


def _enrol(c: httpx.Client, ident: int, data: bytes) -> httpx.Response:
    return c.post(f"/v1/identities/{ident}/faces", files={"image": ("face.jpg", data, "image/jpeg")})


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


def _start_both(uri: str, tmp_path: Path) -> list[Served]:
    """Two replicas started at once (they race to create the gallery: one creates, the other binds)."""
    servers: dict[str, Served] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            servers[name] = Served(uri, tmp_path / f"{name}.log", KEY)  # type: ignore[arg-type]
        except BaseException as e:  # pytest.fail inside a thread: reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers.values():
            s.kill()
        raise errors[0]
    return [servers["a"], servers["b"]]


def test_two_replicas_over_one_postgres_gallery(postgres_server, lfw, tmp_path):
    """Enrol through A, found through B at the next request; remove through B, gone from A's next search."""
    uri = f"{postgres_server.uri}?gallery={unique_name()}"
    a, b = _start_both(uri, tmp_path)
    try:
        with a.client() as ca, b.client() as cb:
            for c in (ca, cb):
                health = c.get("/health").json()
                assert health["gallery_backend"] == "postgresql" and "***" in health["gallery"]
                assert postgres_server.password not in str(health)
            ids = {}
            for p in PEOPLE:  # through A only
                ids[p] = ca.post("/v1/identities", json={"name": p}).json()["id"]
                assert _enrol(ca, ids[p], _photo(lfw, p, 1)).status_code == 201
            for p in PEOPLE:  # through B, each at once
                top = _search(cb, _photo(lfw, p, 2), k=1)[0]
                assert top["identity_id"] == ids[p] and top["name"] == p, (p, top)
            listed = {i["id"] for i in cb.get("/v1/identities").json()["identities"]}
            assert listed == set(ids.values())

            gone = ids["Tony_Blair"]
            assert cb.delete(f"/v1/identities/{gone}").json() == {"id": gone, "removed_faces": 1}
            assert gone not in [m["identity_id"] for m in _search(ca, _photo(lfw, "Tony_Blair", 2), k=5)]
            assert ca.get(f"/v1/identities/{gone}").status_code == 404
            # a face enrolled through B is found through A as well
            late = cb.post("/v1/identities", json={"name": "Tony_Blair"}).json()["id"]
            assert _enrol(cb, late, _photo(lfw, "Tony_Blair", 3)).status_code == 201
            assert _search(ca, _photo(lfw, "Tony_Blair", 2), k=1)[0]["identity_id"] == late
    finally:
        for s in (a, b):
            s.stop()
    for s in (a, b):
        assert postgres_server.password not in s.log.read_text()


def test_sigkill_during_enrolment_against_postgres_loses_no_acknowledged_face(postgres_server, lfw, tmp_path):
    """3 client threads enrol; ``arcface serve`` is SIGKILLed with requests in flight; a new one over the same
    PostgreSQL gallery has every identity and face that was answered 201."""
    uri = f"{postgres_server.uri}?gallery={unique_name()}"
    photos = [(p, _photo(lfw, p, n)) for p in PEOPLE for n in (1, 2)]
    server = Served(uri, tmp_path / "server.log", KEY)  # type: ignore[arg-type]
    ids, faces = kill_during_enrolment(server, photos)
    again = Served(uri, tmp_path / "again.log", KEY)  # type: ignore[arg-type]
    try:
        with again.client() as c:
            check_acknowledged(c, photos, ids, faces)
    finally:
        again.stop()
