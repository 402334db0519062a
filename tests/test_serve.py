"""The REST service against the real default model (MobileFaceNet + MTCNN) on LFW photos.

One recognizer and one app (gallery in a temporary folder) serve the whole module; tests that enrol share the
``enrolled`` fixture. Settings and CLI wiring are tested without the model.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from arcface.gallery import Gallery
from arcface.serve import Settings, SettingsError, create_app
from conftest import require_shared
from test_image_io import _png_claiming

LFW = "data/lfw/lfw-deepfunneled"
KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The acceptance case: 12 LFW people enrolled from one photo each, searched with another photo each.
PEOPLE = (
    "Colin_Powell", "Tony_Blair", "George_W_Bush", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon",
    "Hugo_Chavez", "Junichiro_Koizumi", "Jean_Chretien", "John_Ashcroft", "Jacques_Chirac", "Serena_Williams",
)
MAX_BYTES = 2 * 1024 * 1024


def _photo(lfw: Path, person: str, n: int) -> bytes:
    return (lfw / person / f"{person}_{n:04d}.jpg").read_bytes()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _error(r: httpx.Response, status: int, code: str | None = None) -> str:
    """Assert a JSON error answer; returns its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


@pytest.fixture(scope="module")
def lfw() -> Path:
    return require_shared(LFW)


@pytest.fixture(scope="module")
def recognizer():
    from arcface.inference.recognizer import FaceRecognizer

    return FaceRecognizer("default", "mtcnn")


@pytest.fixture(scope="module")
def app(recognizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    settings = Settings(gallery=folder, api_keys=(KEY, "another-key"), max_upload_bytes=MAX_BYTES, workers=2)
    gallery = Gallery.open(folder, recognizer.contract)
    yield create_app(settings, recognizer=recognizer, gallery=gallery)
    gallery.close()


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def enrolled(client, lfw) -> dict[str, int]:
    """The twelve people, one photo each (their _0001), enrolled through the API: name -> identity id."""
    ids = {}
    for person in PEOPLE:
        r = client.post("/v1/identities", json={"name": person, "metadata": {"source": "lfw"}}, headers=AUTH)
        assert r.status_code == 201, r.text
        ids[person] = r.json()["id"]
        files = {"image": (f"{person}_0001.jpg", _photo(lfw, person, 1), "image/jpeg")}
        r = client.post(f"/v1/identities/{ids[person]}/faces", files=files, headers=AUTH)
        assert r.status_code == 201, r.text
        face = r.json()
        x1, y1, x2, y2 = (face["box"][c] for c in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250  # LFW photos are 250x250, face in the middle
        assert face["identity_id"] == ids[person] and face["faces_in_image"] >= 1
    return ids


# --------------------------------------------------------------------------------------------------
# Service basics and auth


def test_health_needs_no_key_and_tells_the_model_only_with_one(client, recognizer):
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}  # nothing about the model for anyone
    assert client.get("/health", headers={"Authorization": "Bearer wrong"}).json() == {"status": "ok"}
    body = client.get("/health", headers=AUTH).json()
    assert body["status"] == "ok" and body["contract"] == recognizer.contract.id
    assert body["threshold"] == pytest.approx(recognizer.threshold)
    assert body["identification_threshold"] == recognizer.identification_threshold


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}],
    ids=["none", "wrong", "not-bearer", "blank"],
)
def test_v1_needs_a_right_key(client, headers):
    for method, url in (("GET", "/v1/identities"), ("POST", "/v1/search"), ("DELETE", "/v1/faces/1")):
        r = client.request(method, url, headers=headers)
        _error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_every_configured_key_works(client):
    assert client.get("/v1/identities", headers={"Authorization": "Bearer another-key"}).status_code == 200


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/health", "/v1/identities", "/v1/search", "/v1/verify", "/v1/faces/{face_id}"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_an_id_has_one_spelling(client):
    """``+1``, `` 1``, ``1%20``, ``01``, ``1.0`` are not identity 1 (pydantic's lax int parsing made them so): a rule
    keyed on the path (a proxy's block list, a log alert) cannot be walked around by spelling an id another way.
    (The second key: its own rate-limit bucket, so the module's other tests keep theirs.)"""
    auth = {"Authorization": "Bearer another-key"}
    ident = client.post("/v1/identities", json={"name": "one-spelling"}, headers=auth).json()["id"]
    probes = [("DELETE", f"/v1/identities/{s}") for s in (f"+{ident}", f"%2B{ident}", f" {ident}", f"{ident}%20",
                                                          f"0{ident}", f"{ident}.0")]  # fmt: skip
    probes += [("GET", f"/v1/identities/+{ident}"), ("DELETE", f"/v1/faces/0{ident}")]
    for method, url in probes:
        r = client.request(method, url, headers=auth)
        assert r.status_code == 422 and "decimal digits" in r.json()["error"]["message"], (method, url, r.text)
    assert client.get(f"/v1/identities/{ident}", headers=auth).json()["name"] == "one-spelling"


def test_unknown_route_is_a_json_error(client):
    _error(client.get("/v1/nothing", headers=AUTH), 404, "not_found")


# --------------------------------------------------------------------------------------------------
# Gallery and recognition


def test_identities_are_listed(client, enrolled):
    r = client.get("/v1/identities", headers=AUTH)
    assert r.status_code == 200
    listed = {i["name"]: i for i in r.json()["identities"]}
    assert set(PEOPLE) <= set(listed)
    one = listed["Tony_Blair"]
    assert one["faces"] == 1 and one["metadata"] == {"source": "lfw"}
    r = client.get(f"/v1/identities/{one['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["name"] == "Tony_Blair" and len(r.json()["face_ids"]) == 1


def test_search_finds_the_right_person(client, enrolled, lfw):
    right = 0
    for person in PEOPLE:
        files = {"image": (f"{person}_0002.jpg", _photo(lfw, person, 2), "image/jpeg")}
        r = client.post("/v1/search", params={"k": 3}, files=files, headers=AUTH)
        assert r.status_code == 200, r.text
        matches = r.json()["matches"]
        assert len(matches) == 3
        assert set(matches[0]) >= {"identity_id", "name", "similarity", "match"}
        sims = [m["similarity"] for m in matches]
        assert sims == sorted(sims, reverse=True)
        right += matches[0]["identity_id"] == enrolled[person] and matches[0]["name"] == person
    assert right >= 11, f"right person first for only {right} of {len(PEOPLE)}"


def test_search_k_is_validated(client, lfw):
    files = {"image": ("a.jpg", _photo(lfw, "Tony_Blair", 2), "image/jpeg")}
    _error(client.post("/v1/search", params={"k": 0}, files=files, headers=AUTH), 422, "invalid_request")


def test_verify_same_and_different(client, lfw, recognizer):
    def verify(a, b):
        files = {"image1": ("a.jpg", a, "image/jpeg"), "image2": ("b.jpg", b, "image/jpeg")}
        r = client.post("/v1/verify", files=files, headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()

    same = verify(_photo(lfw, "Colin_Powell", 1), _photo(lfw, "Colin_Powell", 2))
    other = verify(_photo(lfw, "Colin_Powell", 1), _photo(lfw, "Tony_Blair", 1))
    assert same["same"] is True and other["same"] is False
    assert same["similarity"] > other["similarity"]
    assert same["threshold"] == pytest.approx(recognizer.threshold)


def test_delete_face_and_identity(client, lfw):
    ident = client.post("/v1/identities", json={"name": "Laura_Bush"}, headers=AUTH).json()["id"]
    files = {"image": ("l.jpg", _photo(lfw, "Laura_Bush", 1), "image/jpeg")}
    face = client.post(f"/v1/identities/{ident}/faces", files=files, headers=AUTH).json()["id"]
    assert client.delete(f"/v1/faces/{face}", headers=AUTH).json() == {"id": face}
    _error(client.delete(f"/v1/faces/{face}", headers=AUTH), 404, "not_found")
    assert client.get(f"/v1/identities/{ident}", headers=AUTH).json()["faces"] == 0
    r = client.delete(f"/v1/identities/{ident}", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"id": ident, "removed_faces": 0}
    _error(client.get(f"/v1/identities/{ident}", headers=AUTH), 404, "not_found")
    _error(client.post(f"/v1/identities/{ident}/faces", files=files, headers=AUTH), 404, "not_found")


def test_identity_needs_a_name(client):
    _error(client.post("/v1/identities", json={"name": ""}, headers=AUTH), 422, "invalid_request")
    _error(client.post("/v1/identities", json={"metadata": {}}, headers=AUTH), 422, "invalid_request")


# --------------------------------------------------------------------------------------------------
# Bad uploads: one JSON error that says what was wrong


def _search(client, data: bytes, name: str = "upload.jpg", mime: str = "image/jpeg") -> httpx.Response:
    return client.post("/v1/search", files={"image": (name, data, mime)}, headers=AUTH)


def test_non_image_is_415(client):
    msg = _error(_search(client, b"<html><body>Not Found</body></html>", "photo.jpg"), 415, "not_image")
    assert "photo.jpg" in msg and "HTML" in msg


def test_truncated_jpeg_is_422(client, lfw):
    data = _photo(lfw, "Tony_Blair", 1)
    msg = _error(_search(client, data[: len(data) // 2], "cut.jpg"), 422, "corrupt")
    assert "cut.jpg" in msg and "truncated" in msg


def test_empty_upload_is_400(client):
    _error(_search(client, b"", "empty.jpg"), 400, "empty")


def test_oversize_upload_is_413(client, lfw):
    big = _photo(lfw, "Tony_Blair", 1) + b"\0" * MAX_BYTES
    msg = _error(_search(client, big, "big.jpg"), 413, "too_large")
    assert "max_upload_bytes" in msg
    # Far over the limit: refused from the Content-Length, before the body is parsed.
    _error(_search(client, b"\0" * (3 * MAX_BYTES), "huge.jpg"), 413, "too_large")


def test_pixel_bomb_is_413(client):
    bomb = _png_claiming(30000, 30000)
    assert len(bomb) < 200
    msg = _error(_search(client, bomb, "bomb.png", "image/png"), 413, "too_large")
    assert "bomb.png" in msg and "MP" in msg


def test_flat_grey_image_has_no_face(client):
    grey = np.full((200, 200, 3), 128, np.uint8)
    msg = _error(_search(client, _png(grey), "grey.png", "image/png"), 422, "no_face")
    assert "grey.png" in msg
    files = {"image1": ("grey.png", _png(grey), "image/png"), "image2": ("grey2.png", _png(grey), "image/png")}
    _error(client.post("/v1/verify", files=files, headers=AUTH), 422, "no_face")


def test_missing_upload_field_is_422(client):
    _error(client.post("/v1/search", files={"photo": ("a.jpg", b"x", "image/jpeg")}, headers=AUTH), 422)


# --------------------------------------------------------------------------------------------------
# The event loop stays free while the model works


def test_health_answers_while_a_slow_embedding_runs(app, recognizer, lfw, monkeypatch):
    """/health answers while a search holds the model: the embedding waits until /health has answered (an ordering,
    not a timing: if /health queued behind the model, it would never answer and the test would time out)."""
    started, release = threading.Event(), threading.Event()
    real_embed = recognizer.embed

    def held_embed(*args, **kwargs):
        started.set()
        assert release.wait(20.0), "/health never answered while the model was busy"
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(recognizer, "embed", held_embed)
    files = {"image": ("q.jpg", _photo(lfw, "Tony_Blair", 2), "image/jpeg")}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://arcface.test") as c:
            search = asyncio.create_task(c.post("/v1/search", files=files, headers=AUTH))
            assert await asyncio.to_thread(started.wait, 10.0), "the search never reached the model"
            health = await asyncio.wait_for(c.get("/health"), timeout=10)
            in_flight = not search.done()  # the search is still held in the model
            release.set()
            return health, in_flight, await search

    health, in_flight, found = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert health.status_code == 200 and found.status_code == 200, found.text
    assert in_flight


# --------------------------------------------------------------------------------------------------
# Settings and CLI (no model)


def test_no_key_refuses_to_start(tmp_path):
    settings = Settings(gallery=tmp_path)
    with pytest.raises(SettingsError, match="allow_no_auth"):
        create_app(settings)
    Settings(gallery=tmp_path, allow_no_auth=True).check_auth()  # explicit opt-out passes


def test_settings_from_env_and_file(tmp_path):
    env = {"ARCFACE_API_KEY": "k1, k2"}
    s = Settings.load(env=env, gallery=tmp_path)
    assert s.api_keys == ("k1", "k2") and s.max_upload_bytes == 10 * 1024 * 1024
    assert s.workers is None and s.threads is None  # the thread policy sizes the pool (tests/test_threads.py)
    assert "k1" not in repr(s)
    f = tmp_path / "serve.yaml"
    f.write_text(f"gallery: {tmp_path / 'g'}\napi_keys: [k3]\nmax_pixels: 1000000\n")
    s = Settings.load(f, env=env, workers=4)
    assert s.api_keys == ("k3", "k1", "k2") and s.max_pixels == 1_000_000 and s.workers == 4
    assert s.gallery == tmp_path / "g"
    j = tmp_path / "serve.json"
    j.write_text(json.dumps({"gallery": str(tmp_path), "max_upload_byte": 5}))
    with pytest.raises(SettingsError, match="max_upload_byte"):
        Settings.load(j, env={})
    with pytest.raises(SettingsError, match="workers"):
        Settings.load(env=env, gallery=tmp_path, workers=0)
    with pytest.raises(SettingsError, match="threads must be a positive integer"):
        Settings.load(env=env, gallery=tmp_path, threads=0)
    with pytest.raises(SettingsError, match="gallery"):
        Settings.load(env=env)


def test_cli_serve_refuses_without_key(tmp_path, monkeypatch, capsys):
    from arcface.cli import build_parser, main

    monkeypatch.delenv("ARCFACE_API_KEY", raising=False)
    args = build_parser().parse_args(["serve", "--gallery", str(tmp_path), "--port", "9"])
    assert (args.host, args.port, args.gallery) == ("127.0.0.1", 9, str(tmp_path))
    assert main(["serve", "--gallery", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ARCFACE_API_KEY" in err and "allow_no_auth" in err and "Traceback" not in err
