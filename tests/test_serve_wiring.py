"""How the service is put together, without a model: the app around a small fake engine (any
:class:`~arcface.serve.engine.Recognizer`), body limits derived from the routes, ``Allow`` on a 405, every status a
route returns in its OpenAPI responses, and no function in ``src/arcface/serve`` over :data:`MAX_LINES` lines."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from arcface.align.face import Face
from arcface.gallery import Gallery
from arcface.inference.contract import ModelContract
from arcface.inference.recognizer import NoFaceError, Verification
from arcface.serve import Settings, create_app
from arcface.serve.app import MULTIPART_FRAMING, body_limits
from arcface.serve.engine import Recognizer
from conftest import REPO

KEY = "wiring-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
D = 8
MAX_LINES = 60
SERVE = REPO / "src" / "arcface" / "serve"


class FakeRecognizer:
    """A recognizer without a model: an image's embedding is a unit vector seeded by its pixels (the same photo, the
    same vector); a flat image has no face."""

    contract = ModelContract("r50", D)
    threshold = 0.5
    identification_threshold = 0.6

    def __init__(self) -> None:
        self.calls = 0

    def identified(self, similarity: float) -> bool | None:
        return similarity > self.identification_threshold

    def embed(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        if image.min() == image.max():
            raise NoFaceError("<array>")
        v = np.random.default_rng(int(image.astype(np.int64).sum())).standard_normal(D).astype(np.float32)
        return v / np.linalg.norm(v)

    def analyze(self, image: np.ndarray, *, max_faces: int | None = None) -> list[Face]:
        if image.min() == image.max():
            return []
        h, w = image.shape[:2]
        return [Face((0, 0, w, h), 0.9, np.zeros((5, 2)), embedding=self.embed(image))]

    def verify(self, a: np.ndarray, b: np.ndarray) -> Verification:
        sim = float(np.dot(a, b))
        return Verification(similarity=sim, same=sim > self.threshold, threshold=self.threshold)


def _png(seed: int, flat: bool = False) -> bytes:
    rgb = np.full((32, 32, 3), 128, np.uint8) if flat else np.random.default_rng(seed).integers(0, 255, (32, 32, 3))
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fake() -> FakeRecognizer:
    return FakeRecognizer()


@pytest.fixture(scope="module")
def app(fake, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    gallery = Gallery.open(folder, fake.contract)
    yield create_app(Settings(gallery=folder, api_keys=(KEY,), workers=1, max_k=7), recognizer=fake, gallery=gallery)
    gallery.close()


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def test_the_fake_is_a_recognizer(fake):
    assert isinstance(fake, Recognizer)


def test_the_app_runs_around_a_fake_engine(client, fake):
    health = client.get("/health", headers=AUTH).json()
    assert health["contract"] == fake.contract.id and health["identification_threshold"] == 0.6
    ident = client.post("/v1/identities", json={"name": "Ada"}, headers=AUTH).json()["id"]
    r = client.post(f"/v1/identities/{ident}/faces", files={"image": ("a.png", _png(1), "image/png")}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["box"]["x2"] == 32
    r = client.post("/v1/search", params={"k": 1}, files={"image": ("a.png", _png(1), "image/png")}, headers=AUTH)
    top = r.json()["matches"][0]
    assert top["identity_id"] == ident and top["similarity"] == pytest.approx(1.0, abs=1e-5) and top["match"]
    files = {"image1": ("a.png", _png(1), "image/png"), "image2": ("b.png", _png(2), "image/png")}
    v = client.post("/v1/verify", files=files, headers=AUTH).json()
    assert v["threshold"] == 0.5 and v["same"] == (v["similarity"] > 0.5)
    r = client.post("/v1/search", files={"image": ("g.png", _png(0, flat=True), "image/png")}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_face"
    assert fake.calls >= 4
    r = client.post("/v1/search", params={"k": 8}, files={"image": ("a.png", _png(1), "image/png")}, headers=AUTH)
    assert r.status_code == 422  # over the settings' max_k


def test_body_limits_come_from_the_routes(app):
    settings = app.state.settings
    limit = body_limits(app.state.routes, settings)
    one = settings.max_upload_bytes + MULTIPART_FRAMING
    assert limit("POST", "/v1/search") == one
    assert limit("POST", "/v1/identities/12/faces") == one
    assert limit("POST", "/v1/verify") == 2 * settings.max_upload_bytes + MULTIPART_FRAMING
    for method, path in [("POST", "/v1/identities"), ("GET", "/v1/search"), ("DELETE", "/v1/faces/3"), ("GET", "/")]:
        assert limit(method, path) == settings.max_json_bytes, (method, path)


def test_a_405_names_every_method_of_the_path(client):
    r = client.request("PUT", "/v1/identities", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST" and r.json()["error"]["code"]
    assert client.request("PUT", "/v1/identities/1", headers=AUTH).headers["allow"] == "DELETE, GET"


def test_every_status_a_route_returns_is_documented(client):
    spec = client.get("/openapi.json").json()
    id_param = spec["paths"]["/v1/faces/{face_id}"]["delete"]["parameters"][0]["schema"]
    assert id_param["minimum"] == 1 and id_param["maximum"] == 2**63 - 1
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            documented = set(op["responses"])
            if path.startswith("/v1/"):
                assert {"401", "422", "429"} <= documented, (method, path)
            if "{" in path:
                assert "404" in documented, (method, path)
            if "requestBody" in op:
                assert {"408", "413", "415"} <= documented, (method, path)
    assert spec["paths"]["/v1/search"]["post"]["parameters"][0]["schema"]["maximum"] == 7


# --------------------------------------------------------------------------------------------------
# No function in the service over MAX_LINES lines


def long_functions(source: str, name: str, most: int = MAX_LINES) -> list[str]:
    """``name:line function (n lines)`` for every function of ``source`` longer than ``most`` lines (decorators
    included), nested ones counted on their own and inside their parent."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > most:
                found.append(f"{name}:{first} {node.name} ({lines} lines)")
    return found


def test_the_checker_finds_a_long_function():
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_LINES))
    source = f"def short():\n    return 1\n\n\nclass A:\n    async def long(self):\n{body}        return 0\n"
    assert long_functions(source, "synthetic.py") == [f"synthetic.py:6 long ({MAX_LINES + 2} lines)"]
    assert long_functions(source, "synthetic.py", most=MAX_LINES + 2) == []


def test_no_function_in_the_service_is_over_60_lines():
    files = sorted(SERVE.rglob("*.py"))
    assert len(files) > 5
    found = [f for p in files for f in long_functions(p.read_text(), str(Path(p).relative_to(REPO)))]
    assert not found, found
