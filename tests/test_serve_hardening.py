"""The hardened service over real HTTP: ``arcface serve`` processes on 127.0.0.1, probed as an attacker would.

- bodies: no key -> 401 before the body is read (a chunked 300 MB upload), with a key a chunked 120 MB body -> 413
  before 30 MB, server memory flat, ``/health`` still answering (the acceptance case);
- every error JSON: ids past int64, metadata depth and size, names with control/bidi characters, paging, repeated
  and unknown parts, a raw image body (415), a busy database (503 + Retry-After, readers not blocked), a fault in a
  stored row (JSON 500 with the request id, traceback in the log), and a fuzz of >= 200 malformed requests: no 5xx;
- slow clients and many connections: header and body timeouts, the per-client connection cap, the per-key rate limit;
- operator controls: security headers, Swagger UI served from the service itself, --no-docs, /health details only
  with a key, search's match by the identification threshold;
- erasure: after a removal (running, then stopped) no file of the gallery folder holds the removed name or a float32
  run close to the removed embedding; modes 0700/0600; an index cache rewritten by someone else is refused;
- a full disk (507) and a gallery made read-only before the shutdown (the shutdown still succeeds), on a small tmpfs
  mounted in a user namespace (skipped where ``unshare`` is not allowed).

Every client call and every wait is bounded; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO, require_shared
from served import Served, chunked_upload, float32_runs_near, raw_exchange, status_of

LFW = "data/lfw/lfw-deepfunneled"
SAMPLES = REPO / "src" / "arcface" / "samples"
EILEEN = SAMPLES / "eileen_collins.jpg"
"""Bundled photos: the tests that need a real face but not several people run without ../shared."""
KEY = "hardening-key-0123456789"
RATE_KEY = "rate-limited-key-0123456789"
INT64_MAX = 2**63 - 1
MiB = 1024 * 1024


def _photo(lfw: Path, person: str, n: int) -> bytes:
    return (lfw / person / f"{person}_{n:04d}.jpg").read_bytes()


def _json_error(r: httpx.Response, status: int | None = None, code: str | None = None) -> dict:
    """Assert the documented error shape; returns the error object."""
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.headers, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def _create(c: httpx.Client, name: str, metadata: dict | None = None) -> int:
    r = c.post("/v1/identities", json={"name": name, "metadata": metadata or {}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _enrol(c: httpx.Client, ident: int, data: bytes, name: str = "face.jpg") -> httpx.Response:
    return c.post(f"/v1/identities/{ident}/faces", files={"image": (name, data, "image/jpeg")})


def _search(c: httpx.Client, data: bytes, k: int = 3) -> dict:
    r = c.post("/v1/search", params={"k": k}, files={"image": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Served]:
    """Default limits, no rate limit (the fuzz sends hundreds of requests), docs on."""
    folder = tmp_path_factory.mktemp("hardened")
    s = Served(folder / "gallery", folder / "server.log", KEY, settings={"rate_limit": 0})
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture(scope="module")
def tight(tmp_path_factory) -> Iterator[Served]:
    """Short timeouts, 4 connections per client, a tight rate limit, --no-docs; two keys (two buckets)."""
    folder = tmp_path_factory.mktemp("tight")
    settings = {
        "header_timeout": 2, "body_timeout": 2, "max_connections_per_client": 4, "rate_limit": 0.001,
        "rate_burst": 5, "api_keys": [RATE_KEY],
    }  # fmt: skip
    s = Served(folder / "gallery", folder / "server.log", KEY, settings=settings, args=["--no-docs"])
    try:
        yield s
    finally:
        s.kill()


# --------------------------------------------------------------------------------------------------
# Acceptance: no unauthenticated work, limits on bytes received


def test_bodies_are_refused_before_they_are_read_and_memory_stays_flat(server):
    baseline = server.rss_mib()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.rss_mib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # No key: 401 from the headers; the client had sent almost nothing when the answer came.
        status, at_answer, sent, head = chunked_upload(server.port, "/v1/search", 300 * MiB)
        assert status == 401, head
        assert at_answer < 2 * MiB and sent < 4 * MiB, (at_answer, sent)
        numbers = [f"401 after {at_answer:,} B (of 300 MiB; {sent:,} B sent in all)"]
        assert b"connection: close" in head.lower()
        status, at_answer, _, head = chunked_upload(server.port, "/v1/identities", 300 * MiB,
                                                    content_type="application/json")  # fmt: skip
        assert status == 401 and at_answer < 2 * MiB, (head, at_answer)
        # A key, a chunked 120 MB upload: 413 at the upload limit (10 MiB), long before 30 MB.
        auth = [("Authorization", f"Bearer {KEY}")]
        part = b'--BoUnDaRy\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
        status, at_answer, sent, head = chunked_upload(server.port, "/v1/search", 120 * MiB, headers=auth, first=part)
        assert status == 413, head
        assert at_answer < 30 * MiB and sent < 32 * MiB, (at_answer, sent)
        numbers.append(f"413 after {at_answer:,} B (of 120 MiB upload)")
        assert b"connection: close" in head.lower()
        # ... and a chunked 120 MB "JSON" body: 413 at the JSON limit.
        status, at_answer, _, head = chunked_upload(server.port, "/v1/identities", 120 * MiB, headers=auth,
                                                    content_type="application/json")  # fmt: skip
        assert status == 413 and at_answer < 30 * MiB, (head, at_answer)
        numbers.append(f"413 after {at_answer:,} B (of 120 MiB JSON)")
        # ... and a body of many parts: refused at the second part, not parsed to the end.
        many = b"".join(b'--BoUnDaRy\r\nContent-Disposition: form-data; name="image"\r\n\r\nx\r\n' for _ in range(2000))
        status, at_answer, _, head = chunked_upload(server.port, "/v1/search", 200 * MiB, headers=auth, first=many)
        assert status == 422 and at_answer < 30 * MiB, (head, at_answer)
        with server.client() as c:
            assert c.get("/health").status_code == 200
    finally:
        done.set()
        sampler.join(10)
    growth = peak[0] - baseline
    print(f"\n{'; '.join(numbers)}; RSS {baseline:.0f} MiB, peak {peak[0]:.0f} MiB (+{growth:.1f})")
    assert growth < 50, f"the server grew by {growth:.0f} MiB"


# --------------------------------------------------------------------------------------------------
# Every error is JSON


def test_ids_past_int64_and_bad_ids_are_json_errors(server):
    with server.client() as c:
        ident = _create(c, "id-probe")
        for bad in (str(2**63), str(2**64), "99999999999999999999999999", "0", "-1", "1e3", "abc", "0x10"):
            for method, url in (("GET", f"/v1/identities/{bad}"), ("DELETE", f"/v1/identities/{bad}"),
                                ("DELETE", f"/v1/faces/{bad}")):  # fmt: skip
                _json_error(c.request(method, url), 422, "invalid_request")
            r = c.post(f"/v1/identities/{bad}/faces", files={"image": ("a.jpg", b"x", "image/jpeg")})
            _json_error(r, 422, "invalid_request")
        for method, url in (("GET", f"/v1/identities/{INT64_MAX}"), ("DELETE", f"/v1/faces/{INT64_MAX}")):
            _json_error(c.request(method, url), 404, "not_found")
        assert c.get(f"/v1/identities/{ident}").status_code == 200


def test_names_metadata_and_paging(server):
    with server.client() as c:
        bad_names = ("a\x00b", "evil\x1b[2J", "two\nlines", "right\u202eto-left", "iso\u2066late", " ", "x" * 257)
        for name in bad_names:
            _json_error(c.post("/v1/identities", json={"name": name}), 422, "invalid_request")
        r = c.post("/v1/identities", content=b'{"name": "\\ud800"}', headers={"Content-Type": "application/json"})
        _json_error(r, 422, "invalid_request")  # a lone surrogate (JSON allows the escape; Unicode does not)
        deep: dict = {}
        node = deep
        for _ in range(8):  # 9 levels in all
            node["k"] = {}
            node = node["k"]
        _json_error(c.post("/v1/identities", json={"name": "deep", "metadata": deep}), 422, "invalid_request")
        _json_error(c.post("/v1/identities", json={"name": "big", "metadata": {"x": "y" * 17000}}), 422)
        very_deep = "[" * 5000 + "]" * 5000  # deeper than Python's JSON parser goes
        r = c.post("/v1/identities", content=f'{{"name": "n", "metadata": {{"a": {very_deep}}}}}',
                   headers={"Content-Type": "application/json"})  # fmt: skip
        assert 400 <= r.status_code < 500, r.text
        _json_error(r)
        ok_deep = deep["k"]  # 8 levels: accepted, and listed and read back without a 500
        ident = _create(c, "Zoë Ünicode 名前", ok_deep)
        assert c.get(f"/v1/identities/{ident}").json()["metadata"] == ok_deep
        r = c.post("/v1/identities", content=json.dumps({"name": "plain"}), headers={"Content-Type": "text/plain"})
        _json_error(r, 415, "unsupported_media_type")
        # paging: every identity once, in id order, whatever the page size
        made = [_create(c, f"page-{i}") for i in range(5)]
        seen, after = [], 0
        while True:
            page = c.get("/v1/identities", params={"limit": 2, "after": after}).json()
            assert len(page["identities"]) <= 2
            seen += [i["id"] for i in page["identities"]]
            if page["next_after"] is None:
                break
            after = page["next_after"]
        assert seen == sorted(seen) and set(made) | {ident} <= set(seen) and len(seen) == len(set(seen))
        for params in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"after": 2**63}):
            _json_error(c.get("/v1/identities", params=params), 422, "invalid_request")


def test_upload_parts_and_content_types(server):
    photo = EILEEN.read_bytes()
    with server.client() as c:
        ident = _create(c, "parts")
        two = [("image", ("a.jpg", photo, "image/jpeg")), ("image", ("b.jpg", photo, "image/jpeg"))]
        for url in ("/v1/search", f"/v1/identities/{ident}/faces"):
            msg = _json_error(c.post(url, files=two), 422, "invalid_request")["message"]
            assert "more than once" in msg
            r = c.post(url, content=photo, headers={"Content-Type": "image/jpeg"})
            _json_error(r, 415, "unsupported_media_type")
            _json_error(c.post(url, files={"photo": ("a.jpg", photo, "image/jpeg")}), 422, "invalid_request")
            r = c.post(url, files=[("image", ("a.jpg", photo, "image/jpeg")), ("extra", ("x", b"1", "text/plain"))])
            _json_error(r, 422, "invalid_request")
        r = c.post("/v1/verify", files=[("image1", ("a.jpg", photo, "image/jpeg")),
                                        ("image1", ("b.jpg", photo, "image/jpeg"))])  # fmt: skip
        _json_error(r, 422, "invalid_request")
        assert c.get(f"/v1/identities/{ident}").json()["faces"] == 0
        # a good enrolment: the client's file name is not kept (store_filenames is off)
        r = _enrol(c, ident, photo, "eileen_collins.jpg")
        assert r.status_code == 201, r.text
    db = sqlite3.connect(f"file:{server.gallery / 'gallery.sqlite3'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT COUNT(*) FROM faces WHERE source IS NOT NULL").fetchone()[0] == 0
    finally:
        db.close()


def test_a_busy_database_is_503_and_readers_are_not_blocked(server):
    with server.client() as c:
        ident = _create(c, "busy-probe")
        assert _enrol(c, ident, EILEEN.read_bytes()).status_code == 201
        other = sqlite3.connect(server.gallery / "gallery.sqlite3", timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            r = c.post("/v1/identities", json={"name": "blocked"})
            _json_error(r, 503, "busy")
            assert int(r.headers["retry-after"]) >= 1
            # while the lock is held: lists, reads and searches answer (they never wait for a writer)
            assert c.get("/v1/identities", params={"limit": 5}).status_code == 200
            assert c.get(f"/v1/identities/{ident}").status_code == 200
            assert _search(c, EILEEN.read_bytes(), k=1)["matches"][0]["similarity"] > 0.99  # the enrolled photo
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert c.post("/v1/identities", json={"name": "after"}).status_code == 201


def test_an_unexpected_failure_is_a_json_500_with_a_request_id(server):
    """A row the code cannot read (stored metadata that is not JSON) makes a real fault inside a route."""
    db = sqlite3.connect(server.gallery / "gallery.sqlite3", timeout=10, isolation_level=None)
    try:
        row = db.execute("INSERT INTO identities (name, metadata, created) VALUES ('broken', '{not json', 0)")
        broken = row.lastrowid
    finally:
        db.close()
    with server.client() as c:
        r = c.get(f"/v1/identities/{broken}")
        err = _json_error(r, 500, "internal")
        rid = r.headers["x-request-id"]
        assert rid and rid in err["message"]
        assert c.delete(f"/v1/identities/{broken}").status_code == 200
    log = server.log.read_text()
    assert f"request {rid}" in log and "Traceback" in log and "JSONDecodeError" in log


# --------------------------------------------------------------------------------------------------
# Operator controls


def test_headers_docs_and_health(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        page = c.get("/")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer" and page.headers["x-request-id"]
        docs = c.get("/docs")
        assert docs.status_code == 200 and "content-security-policy" in docs.headers
        assert "http://" not in docs.text and "https://" not in docs.text and "//cdn" not in docs.text
        for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/static/docs.js"):
            r = c.get(asset)
            assert r.status_code == 200 and len(r.content) > 100, asset
        assert c.get("/redoc").status_code == 404
        assert c.get("/docs/assets/index.html").status_code == 404  # the package's demo page is not served
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/health").json() == {"status": "ok"}
        detail = c.get("/health", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert {"model", "contract", "threshold", "identification_threshold"} <= set(detail)


def test_search_reports_the_identification_threshold(server):
    with server.client() as c:
        thr = c.get("/health").json()["identification_threshold"]
        assert thr is not None and thr > c.get("/health").json()["threshold"]
        ident = _create(c, "Grace_Hopper")  # the only person of the module with her photos
        assert _enrol(c, ident, (SAMPLES / "grace_hopper_1.jpg").read_bytes()).status_code == 201
        found = _search(c, (SAMPLES / "grace_hopper_2.jpg").read_bytes(), k=3)
        assert found["threshold"] == thr and found["threshold_kind"] == "identification"
        for m in found["matches"]:
            assert m["match"] is (m["similarity"] > thr)
        assert found["matches"][0]["identity_id"] == ident and found["matches"][0]["match"] is True


def test_no_docs_slow_clients_connection_cap_and_rate_limit(tight):
    with httpx.Client(base_url=tight.url, timeout=30) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404

    # Header timeout: one header line every 0.3 s; the server cuts the connection (408) long before the end.
    lines = [b"X-Slow-%d: 1\r\n" % i for i in range(100)]  # 30 s at this pace
    with socket.create_connection(("127.0.0.1", tight.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        sent, answer = 0, b""
        sock.settimeout(0.3)
        for line in lines:
            try:
                sock.sendall(line)
                sent += 1
                answer += sock.recv(4096)
                if answer or sent == len(lines):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        assert sent < len(lines), "the server kept a connection whose headers never ended"
        assert status_of(answer) == 408, answer

    # Body timeout: a declared 400-byte JSON body sent one byte every 0.2 s: 408 before it is all there.
    with socket.create_connection(("127.0.0.1", tight.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/identities HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n".encode())  # fmt: skip
        sock.settimeout(0.2)
        answer, sent = b"", 0
        while sent < 400 and not answer:
            try:
                sock.sendall(b" ")
                sent += 1
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        assert sent < 400 and status_of(answer) == 408, (sent, answer)

    # Connections per client: 4 open (idle) ones are allowed, a fifth is answered 429 and closed at once.
    idle = [socket.create_connection(("127.0.0.1", tight.port), timeout=10) for _ in range(4)]
    try:
        fifth = raw_exchange(tight.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        assert status_of(fifth) == 429, fifth
        assert b'"too_many_connections"' in fifth
    finally:
        for s in idle:
            s.close()

    # Rate limit per key: RATE_KEY's burst of 5, then 429 with Retry-After; KEY has its own bucket.
    deadline = time.monotonic() + 30
    while raw_exchange(tight.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 429"):
        assert time.monotonic() < deadline, "the closed connections were never counted out"
        time.sleep(0.1)  # the server has not seen the idle sockets close yet
    with httpx.Client(base_url=tight.url, timeout=30, headers={"Authorization": f"Bearer {RATE_KEY}"}) as c:
        codes = []
        while len(codes) < 8 and time.monotonic() < deadline:
            try:
                codes.append(c.get("/v1/identities").status_code)
            except httpx.TransportError:  # the cap's 4 idle sockets may still be closing
                time.sleep(0.1)
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes
        r = c.get("/v1/identities")
        _json_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
    with tight.client() as c:
        assert c.get("/v1/identities").status_code == 200


# --------------------------------------------------------------------------------------------------
# Fuzz: >= 200 malformed requests across every route, no 5xx


def _fuzz_cases(ident: int, face: int, photo: bytes) -> list[tuple[str, str, dict]]:
    """(method, url, httpx request kwargs) of malformed requests."""
    cases: list[tuple[str, str, dict]] = []
    bad_ids = ["0", "-1", str(INT64_MAX), str(2**63), "1e3", "abc", "%00", "%ff", "١٢٣", "1.0", "0x1f", "+1",
               " 1", "1%20", "99999999999999999999999", "%2e%2e", "null", "[]"]  # fmt: skip
    for b in bad_ids:
        upload = {"files": {"image": ("a.jpg", b"x", "image/jpeg")}}
        cases += [("GET", f"/v1/identities/{b}", {}), ("DELETE", f"/v1/identities/{b}", {}),
                  ("DELETE", f"/v1/faces/{b}", {}), ("POST", f"/v1/identities/{b}/faces", upload)]  # fmt: skip
    bodies = ['', '{', '[]', '"x"', '1e999', 'null', '{"name": 1}', '{"name": null}', '{"name": ["a"]}',
              '{"name": "ok", "metadata": []}', '{"name": "ok", "metadata": "x"}', '{"name": "ok", "metadata": NaN}',
              '{"name": "\\ud800"}', '{"name": "a", "name": "\\u0000"}', '{"name": "' + "x" * 5000 + '"}',
              '{"name": "ok", "metadata": {"a": 1e309}}', '{"name": "ok", "extra": ' + "[" * 3000 + "]" * 3000 + "}",
              '\xff\xfe', '{"name": "ok"} trailing']  # fmt: skip
    for body in bodies:
        cases.append(("POST", "/v1/identities", {"content": body.encode("utf-8", "surrogatepass"),
                                                 "headers": {"Content-Type": "application/json"}}))  # fmt: skip
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        cases.append(("POST", "/v1/identities", {"content": b'{"name": "x"}', "headers": {"Content-Type": ctype}}))
    mp = "multipart/form-data; boundary=B"
    parts = {
        "no-boundary": (b"--B\r\n\r\n", "multipart/form-data"),
        "long-boundary": (b"", "multipart/form-data; boundary=" + "b" * 300),
        "no-end": (b'--B\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nabc', mp),
        "no-name": (b"--B\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--B--\r\n", mp),
        "not-form-data": (b'--B\r\nContent-Disposition: attachment; name="image"\r\n\r\nabc\r\n--B--\r\n', mp),
        "garbage": (os.urandom(3000), mp),
        "huge-part-header": (b"--B\r\nX-Pad: " + b"p" * 20000 + b'\r\nContent-Disposition: form-data; name="image"'
                             b"\r\n\r\nabc\r\n--B--\r\n", mp),  # fmt: skip
        "five-parts": (b"".join(b'--B\r\nContent-Disposition: form-data; name="p%d"\r\n\r\nx\r\n' % i for i in range(5))
                       + b"--B--\r\n", mp),  # fmt: skip
        "text-field": (b'--B\r\nContent-Disposition: form-data; name="image"\r\n\r\nnot an image\r\n--B--\r\n', mp),
        "control-filename": (b'--B\r\nContent-Disposition: form-data; name="image"; filename="\x1b[31m\x00.jpg"\r\n\r\n'
                             b"abc\r\n--B--\r\n", mp),  # fmt: skip
        "traversal-filename": (b'--B\r\nContent-Disposition: form-data; name="image"; filename="../../etc/passwd"'
                               b"\r\n\r\n" + photo[:500] + b"\r\n--B--\r\n", mp),  # fmt: skip
        "empty": (b'--B\r\nContent-Disposition: form-data; name="image"; filename="e.jpg"\r\n\r\n\r\n--B--\r\n', mp),
        "raw-jpeg": (photo, "image/jpeg"),
        "json": (b'{"image": "x"}', "application/json"),
        "no-type": (photo, ""),
    }
    for url in ("/v1/search", "/v1/verify", f"/v1/identities/{ident}/faces"):
        for body, ctype in parts.values():
            cases.append(("POST", url, {"content": body, "headers": {"Content-Type": ctype} if ctype else {}}))
    for q in ("k=0", "k=-1", "k=abc", "k=101", f"k={2**70}", "k=1.5", "k=", "k=1&k=2", "k=%00"):
        cases.append(("POST", f"/v1/search?{q}", {"files": {"image": ("a.jpg", photo, "image/jpeg")}}))
    for q in ("limit=0", "limit=-5", "limit=abc", "after=-1", f"after={2**64}", "limit=1e3", "after=x"):
        cases.append(("GET", f"/v1/identities?{q}", {}))
    for method in ("PUT", "PATCH", "OPTIONS", "TRACE"):
        for url in ("/v1/identities", f"/v1/identities/{ident}", f"/v1/faces/{face}", "/v1/search", "/health", "/"):
            cases.append((method, url, {}))
    for url in ("/v1", "/v1/", "/v1/identities/1/faces/2", "/v1/%ff", "/static/../pyproject.toml",
                "/static/%2e%2e/app.py", "/docs/assets/../../app.py", "/" + "a" * 5000,
                "/v1/identities/" + "9" * 3000):  # fmt: skip
        cases.append(("GET", url, {}))
    return cases


def _raw_cases(port: int) -> list[bytes]:
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    return [
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"POST /v1/identities HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n" + auth + b"\r\n",
        b"POST /v1/identities HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n" + auth
        + b"\r\n0\r\n\r\n",
        b"POST /v1/identities HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + auth + b"\r\nzz\r\nabc\r\n",
        b"GET /v1/identities HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        b"GET /v1/identities HTTP/1.1\r\nHost: x\r\n" + auth + b"Authorization: Bearer other\r\n\r\n",
        b"GET /v1/identities HTTP/1.1\r\nHost: x\r\nAuthorization: bearer  " + KEY.encode() + b"  \r\n\r\n",
        b"GET /v1/identities HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + KEY.encode() + b"\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW /v1/identities HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200),  # a TLS hello
        os.urandom(500),
        b"GET /health HTTP/1.1\r\n\r\n",  # no Host
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n" + auth
        + b"Content-Type: multipart/form-data; boundary=B\r\n\r\n",
    ]


def test_fuzz_every_route_no_5xx(server):
    photo = EILEEN.read_bytes()
    with server.client() as c:
        ident = _create(c, "fuzz-target")
        r = _enrol(c, ident, photo)
        assert r.status_code == 201, r.text
        face = r.json()["id"]
        cases = _fuzz_cases(ident, face, photo)
        failures, sent = [], 0
        deadline = time.monotonic() + 240
        for method, url, kwargs in cases:
            assert time.monotonic() < deadline, f"the fuzz took too long ({sent} requests)"
            try:
                r = c.request(method, url, **kwargs)
            except httpx.TransportError:  # a refused body closes the connection: reconnect, that is fine
                continue
            finally:
                sent += 1
            if r.status_code >= 500:
                failures.append(f"{method} {url[:80]} -> {r.status_code} {r.text[:200]}")
            elif r.status_code >= 400:
                try:
                    _json_error(r)
                except (AssertionError, ValueError) as e:
                    failures.append(f"{method} {url[:80]} -> {r.status_code} not the JSON error shape: {e}")
        raw = _raw_cases(server.port)
        for data in raw:
            answer = raw_exchange(server.port, data, timeout=20)
            sent += 1
            code = status_of(answer)
            if code is not None and code >= 500:
                failures.append(f"raw {data[:60]!r} -> {answer[:200]!r}")
            if code is not None and code >= 400 and b"application/json" not in answer.split(b"\r\n\r\n")[0]:
                failures.append(f"raw {data[:60]!r} -> not JSON: {answer[:200]!r}")
        assert sent >= 200, sent
        assert not failures, "\n".join(failures[:20])
        assert c.get("/health").status_code == 200 and c.get(f"/v1/identities/{ident}").json()["faces"] == 1
    assert "Traceback" not in server.log.read_text().split("JSONDecodeError")[-1]  # no unexpected failure since


# --------------------------------------------------------------------------------------------------
# Erasure and the index cache


def _scan(folder: Path, name: str, embedding: np.ndarray) -> list[str]:
    """Every file under ``folder`` that holds ``name`` or a float32 run close to ``embedding``."""
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if name.encode() in data:
            hits.append(f"{path.name}: the name")
        offsets = float32_runs_near(data, embedding)
        if offsets:
            hits.append(f"{path.name}: the embedding at {offsets[:3]}")
    return hits


def test_removed_identity_leaves_no_trace_in_any_file(lfw, tmp_path):
    gallery, log = tmp_path / "gallery", tmp_path / "server.log"
    people = ("Colin_Powell", "Tony_Blair", "George_W_Bush")
    removed = "Tony_Blair"
    server = Served(gallery, log, KEY)
    try:
        with server.client() as c:
            ids = {}
            for p in people:
                ids[p] = _create(c, p, {"note": f"{p} enrolled for the erasure test"})
                assert _enrol(c, ids[p], _photo(lfw, p, 1), f"{p}_0001.jpg").status_code == 201
            assert _enrol(c, ids[removed], _photo(lfw, removed, 3), f"{removed}_0003.jpg").status_code == 201
            db = sqlite3.connect(f"file:{gallery / 'gallery.sqlite3'}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT embedding FROM faces WHERE identity_id = ?", (ids[removed],)).fetchall()
            finally:
                db.close()
            embeddings = [np.frombuffer(r[0], "<f4") for r in rows]
            assert len(embeddings) == 2
            assert _scan(gallery, removed, embeddings[0]), "the scan must see the face before its removal"
            r = c.delete(f"/v1/identities/{ids[removed]}")
            assert r.status_code == 200 and r.json()["removed_faces"] == 2
            for e in embeddings:  # while the service runs
                assert _scan(gallery, removed, e) == []
            top = _search(c, _photo(lfw, removed, 2), k=3)["matches"]
            assert all(m["identity_id"] != ids[removed] for m in top)
        server.stop()
    finally:
        server.kill()
    for e in embeddings:  # after a clean stop (which writes the index cache)
        assert _scan(gallery, removed, e) == []
    assert (gallery / "index.exact.faiss").is_file()
    assert stat.S_IMODE(gallery.stat().st_mode) == 0o700
    for path in gallery.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    server = Served(gallery, log, KEY)
    try:
        with server.client() as c:
            for p in ("Colin_Powell", "George_W_Bush"):
                assert _search(c, _photo(lfw, p, 2), k=1)["matches"][0]["identity_id"] == ids[p], p
        server.stop()
    finally:
        server.kill()


def test_an_index_cache_rewritten_by_someone_else_is_refused(lfw, tmp_path):
    """Swap two people's vectors in the cache and give it a fresh plain SHA-256: the photo must not match the wrong
    person (the cache's MAC is keyed by the database, which the forger does not have)."""
    import hashlib

    gallery, log = tmp_path / "gallery", tmp_path / "server.log"
    a, b = "Colin_Powell", "Tony_Blair"
    server = Served(gallery, log, KEY)
    try:
        with server.client() as c:
            ids = {p: _create(c, p) for p in (a, b)}
            for p in (a, b):
                assert _enrol(c, ids[p], _photo(lfw, p, 1)).status_code == 201
        server.stop()
    finally:
        server.kill()
    cache = gallery / "index.exact.faiss"
    raw = cache.read_bytes()
    magic_end = raw.index(b"\n") + 1
    end = raw.index(b"\n", magic_end)
    header = json.loads(raw[magic_end:end])
    body = raw[end + 1 : end + 1 + header["index_bytes"]]
    ids_raw = np.frombuffer(raw[end + 1 + header["index_bytes"] :], "<i8")[::-1].copy()  # a <-> b
    payload = body + ids_raw.tobytes()
    header["sha256"] = hashlib.sha256(payload).hexdigest()
    header["mac"] = hashlib.sha256(b"a guess" + payload).hexdigest()
    cache.write_bytes(raw[:magic_end] + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)

    server = Served(gallery, log, KEY)
    try:
        with server.client() as c:
            for p in (a, b):
                top = _search(c, _photo(lfw, p, 2), k=1)["matches"][0]
                assert top["identity_id"] == ids[p], (p, top)
        server.stop()
    finally:
        server.kill()
    assert "is unusable" in log.read_text()


# --------------------------------------------------------------------------------------------------
# A full disk, then a read-only one at shutdown (a tmpfs in a user and mount namespace)


def _unshare_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_full_disk_is_507_and_a_read_only_gallery_stops_cleanly(tmp_path):
    if not _unshare_available():
        pytest.skip("unshare -rm (user and mount namespaces) is not allowed here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pid_file, ro_request, ro_done = tmp_path / "server.pid", tmp_path / "ro.request", tmp_path / "ro.done"
    # In a private mount namespace: a 1 MiB tmpfs for the gallery; the server runs in the background; when the test
    # asks, a read-only bind mount covers the gallery (as root, chmod would not stop the server from writing).
    script = (
        'm="$0"; p="$1"; q="$2"; d="$3"; shift 3; set -e; mount -t tmpfs -o size=1m tmpfs "$m"; "$@" & '
        'echo $! > "$p"; while [ ! -e "$q" ]; do sleep 0.1; done; '
        'mount --bind "$m" "$m"; mount -o remount,ro,bind "$m"; touch "$d"; wait'
    )  # (a read-only bind mount on top: files the server opens from now on are read-only; open ones stay writable)
    prefix = ["unshare", "-rm", "sh", "-c", script, str(mnt), str(pid_file), str(ro_request), str(ro_done)]
    server = Served(mnt / "g", tmp_path / "server.log", KEY, prefix=prefix, pid_file=pid_file)
    try:
        with server.client() as c:
            kept = _create(c, "before-the-disk-filled")
            filler = {"pad": "x" * 15000}
            codes = []
            for i in range(200):
                r = c.post("/v1/identities", json={"name": f"filler-{i}", "metadata": filler})
                codes.append(r.status_code)
                if r.status_code != 201:
                    break
            assert codes[-1] == 507, codes[-5:]
            _json_error(r, 507, "storage_full")
            assert c.get("/health").status_code == 200
            assert c.get(f"/v1/identities/{kept}").json()["name"] == "before-the-disk-filled"
            assert c.get("/v1/identities", params={"limit": 3}).status_code == 200
            ro_request.touch()
            deadline = time.monotonic() + 20
            while not ro_done.exists():
                assert time.monotonic() < deadline, "the gallery was not made read-only"
                time.sleep(0.05)
            r = c.post("/v1/identities", json={"name": "on a read-only disk"})
            assert r.status_code in (201, 503, 507), r.text
        server.stop()  # asserts "Application shutdown complete" and no "Application shutdown failed"
    finally:
        ro_request.touch()
        server.kill()
