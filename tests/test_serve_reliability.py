"""Reliability of the REST service over real HTTP: ``arcface serve`` subprocesses on 127.0.0.1.

- concurrent enrolment and search (8 client threads x 25 requests): nothing lost, every answer right;
- SIGKILL in the middle of a stream of enrolments, then a restart: every enrolment answered 201 is there;
- a corrupted index cache file is rebuilt from the database;
- the security cases over a real socket (missing / wrong key, uploads that are not images).

Every server is a child process on a free port of 127.0.0.1, waited for by polling ``/health`` (bounded), and
killed in a ``finally``. Every client call has a timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import require_shared
from served import HTTP_TIMEOUT, Served, check_acknowledged, kill_during_enrolment

LFW = "data/lfw/lfw-deepfunneled"
KEY = "reliability-key-0123456789"
PEOPLE = (
    "Colin_Powell", "Tony_Blair", "George_W_Bush", "Donald_Rumsfeld", "Gerhard_Schroeder",
    "Ariel_Sharon", "Hugo_Chavez", "Jacques_Chirac", "Junichiro_Koizumi", "Jean_Chretien",
)  # fmt: skip


def _photo(lfw: Path, person: str, n: int) -> bytes:
    return (lfw / person / f"{person}_{n:04d}.jpg").read_bytes()


@contextmanager
def _serve(gallery: Path, log: Path) -> Iterator[Served]:
    """``arcface serve`` on a free port of 127.0.0.1, killed (by PID) at the end. These tests are about concurrency
    and crashes, not throttling: one key sends far more than the default per-key rate on a fast machine
    (test_serve_hardening covers the limiter), so the rate limit is off."""
    server = Served(gallery, log, KEY, settings={"rate_limit": 0})
    try:
        yield server
    finally:
        server.kill()


def _client(server: Served) -> httpx.Client:
    return server.client()


def _create(c: httpx.Client, name: str) -> int:
    r = c.post("/v1/identities", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _enrol(c: httpx.Client, ident: int, data: bytes, name: str = "face.jpg") -> httpx.Response:
    return c.post(f"/v1/identities/{ident}/faces", files={"image": (name, data, "image/jpeg")})


def _search(c: httpx.Client, data: bytes, k: int = 3) -> list[dict]:
    r = c.post("/v1/search", params={"k": k}, files={"image": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()["matches"]


def _face_ids(c: httpx.Client, ident: int) -> set[int]:
    r = c.get(f"/v1/identities/{ident}")
    assert r.status_code == 200, r.text
    return set(r.json()["face_ids"])


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("served")
    with _serve(folder / "gallery", folder / "server.log") as s:
        yield s


# --------------------------------------------------------------------------------------------------
# Security over a real socket


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong", "not-bearer"],
)  # fmt: skip
def test_v1_refuses_a_missing_or_wrong_key(server, headers):
    with httpx.Client(base_url=server.url, headers=headers, timeout=HTTP_TIMEOUT) as c:
        for method, url in (("GET", "/v1/identities"), ("POST", "/v1/identities"), ("POST", "/v1/search")):
            r = c.request(method, url)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/health").status_code == 200  # no key needed


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"%PDF-1.4 not an image at all" * 10, 415, "not_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, 422, "corrupt"),
        (b"", 400, "empty"),
    ],
    ids=["pdf", "truncated-jpeg", "empty"],
)
def test_non_image_uploads_are_json_errors(server, data, status, code):
    with _client(server) as c:
        ident = _create(c, "upload-errors")
        for r in (_enrol(c, ident, data, "x.jpg"), c.post("/v1/search", files={"image": ("x.jpg", data)})):
            assert r.status_code == status, r.text
            body = r.json()
            assert body["error"]["code"] == code and body["error"]["message"], body
        assert _face_ids(c, ident) == set()


# --------------------------------------------------------------------------------------------------
# Concurrency


def test_concurrent_enrolment_and_search(server, lfw):
    """8 threads x 25 requests (identity creation, enrolment, search) at once: nothing lost, every answer right."""
    threads_n, per_thread = 8, 25
    with _client(server) as c:
        ids = {p: _create(c, p) for p in PEOPLE}
        base = {}
        for p in PEOPLE:
            r = _enrol(c, ids[p], _photo(lfw, p, 1), f"{p}_0001.jpg")
            assert r.status_code == 201, r.text
            base[p] = r.json()["id"]
    enrol_photos = {p: [_photo(lfw, p, n) for n in (2, 3)] for p in PEOPLE}
    query_photos = {p: _photo(lfw, p, 4) for p in PEOPLE}

    acked: list[tuple[int, int]] = []  # (identity, face) answered 201
    created: list[tuple[int, str]] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads_n)

    def work(t: int) -> None:
        try:
            with _client(server) as cl:
                start.wait(timeout=30)
                for j in range(per_thread):
                    person = PEOPLE[(t + j) % len(PEOPLE)]
                    if j == 0:  # a new identity (no faces: it must never be a search answer)
                        name = f"extra-{t}"
                        ident = _create(cl, name)
                        with lock:
                            created.append((ident, name))
                    elif j % 2:
                        r = _enrol(cl, ids[person], enrol_photos[person][(t + j) % 2], f"{person}.jpg")
                        if r.status_code != 201:
                            with lock:
                                failures.append(f"enrol {person}: {r.status_code} {r.text}")
                            continue
                        body = r.json()
                        if body["identity_id"] != ids[person]:
                            with lock:
                                failures.append(f"enrol {person}: answered for identity {body['identity_id']}")
                        with lock:
                            acked.append((ids[person], body["id"]))
                    else:
                        matches = _search(cl, query_photos[person])
                        if not matches or matches[0]["identity_id"] != ids[person]:
                            with lock:
                                failures.append(f"search {person}: {matches[:2]}")
        except Exception as e:  # reported below, with the thread
            with lock:
                failures.append(f"thread {t}: {type(e).__name__}: {e}")

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "client threads still running after 120 s"
    assert not failures, failures[:10]

    enrols = sum(1 for j in range(per_thread) if j and j % 2) * threads_n
    assert len(acked) == enrols and len({f for _, f in acked}) == enrols  # every enrolment answered, distinct ids
    assert len(created) == threads_n and len({i for i, _ in created}) == threads_n
    with _client(server) as c:
        for p in PEOPLE:
            want = {base[p]} | {f for i, f in acked if i == ids[p]}
            assert _face_ids(c, ids[p]) == want, p
        listed = {i["id"]: i for i in c.get("/v1/identities").json()["identities"]}
        for ident, name in created:
            assert listed[ident]["name"] == name and listed[ident]["faces"] == 0
        assert sum(listed[ids[p]]["faces"] for p in PEOPLE) == len(PEOPLE) + enrols
        for p in PEOPLE:  # still right after all the enrolments
            assert _search(c, query_photos[p], k=1)[0]["identity_id"] == ids[p]


# --------------------------------------------------------------------------------------------------
# Crash and restart


def test_sigkill_during_enrolment_loses_no_acknowledged_write(lfw, tmp_path):
    """Stream enrolments from 3 threads, SIGKILL the server with requests in flight, restart: every 201 is there."""
    gallery, log = tmp_path / "gallery", tmp_path / "server.log"
    photos = [(p, _photo(lfw, p, n)) for p in PEOPLE[:5] for n in (1, 2)]
    with _serve(gallery, log) as server:
        ids, faces = kill_during_enrolment(server, photos, wait_s=60)
    with _serve(gallery, log) as again, _client(again) as c:
        check_acknowledged(c, photos, ids, faces)


@pytest.mark.parametrize("damage", ["garbage", "flipped-byte"])
def test_corrupted_index_file_is_rebuilt(lfw, tmp_path, damage):
    """A clean stop writes ``index.exact.faiss``; damaged, it is refused (log line) and rebuilt from the database."""
    gallery, log = tmp_path / "gallery", tmp_path / "server.log"
    people = PEOPLE[:4]
    with _serve(gallery, log) as server, _client(server) as c:
        ids = {}
        for p in people:
            ids[p] = _create(c, p)
            assert _enrol(c, ids[p], _photo(lfw, p, 1)).status_code == 201
        server.stop()
    cache = gallery / "index.exact.faiss"
    assert cache.is_file() and cache.stat().st_size > 0, "a clean stop writes the index cache"
    raw = bytearray(cache.read_bytes())
    if damage == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    else:  # header intact, one bit of the FAISS body flipped: only the checksum can tell
        raw[-100] ^= 0x01
    cache.write_bytes(bytes(raw))

    with _serve(gallery, log) as server, _client(server) as c:
        for p in people:
            matches = _search(c, _photo(lfw, p, 2), k=2)
            assert matches[0]["identity_id"] == ids[p], (p, matches)
        assert {i["id"] for i in c.get("/v1/identities").json()["identities"]} == set(ids.values())
        assert "is unusable" in log.read_text(), "the damaged cache was not noticed"
        server.stop()
    assert cache.read_bytes().startswith(b"ARCFACE-GALLERY-INDEX"), "the next clean stop writes a good cache again"
