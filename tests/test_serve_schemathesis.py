"""Schemathesis against a real ``arcface serve`` process on 127.0.0.1: every operation of the OpenAPI document, its
coverage, fuzzing and stateful phases (sequences of calls following the links it infers, e.g. create an identity,
then read, enrol into and delete it), with every check (no 5xx, statuses, content types, headers and bodies as
documented, schema-valid requests accepted and invalid ones refused, authentication not ignored, ``Allow`` on 405,
no use after delete).

An image part is only "binary" to the document, so on the upload routes a schema-valid request may still be refused
for what the document cannot say (not an image, no face): those statuses are accepted there (``CONFIG``). The gallery
starts with one person enrolled from a bundled photo, so reads and deletes of something that exists are reached too.
The run is bounded in examples per operation and in wall time, with a fixed seed (a failure reproduces).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import REPO
from served import Served

KEY = "schemathesis-key-0123456789"
SAMPLE = REPO / "src" / "arcface" / "samples" / "grace_hopper_1.jpg"
MAX_EXAMPLES = 40
SEED = 20260101
WALL_S = 300
CONFIG = """
[[operations]]
include-name = ["POST /v1/identities/{identity_id}/faces", "POST /v1/search", "POST /v1/verify"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "415", "422"]
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("schemathesis")
    s = Served(folder / "gallery", folder / "server.log", KEY, settings={"rate_limit": 0})
    try:
        with s.client() as c:
            ident = c.post("/v1/identities", json={"name": "Grace Hopper"}).json()["id"]
            files = {"image": ("grace.jpg", SAMPLE.read_bytes(), "image/jpeg")}
            assert c.post(f"/v1/identities/{ident}/faces", files=files).status_code == 201
        yield s
    finally:
        s.kill()


def test_schemathesis_finds_nothing(server: Served, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{server.url}/openapi.json",
        "--header", f"Authorization: Bearer {KEY}", "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--workers", "1", "--request-timeout", "30", "--report-dir", str(tmp_path / "report"),
    ]  # fmt: skip
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=WALL_S, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"schemathesis ran past {WALL_S} s:\n{(e.stdout or b'')[-6000:]!r}")
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found problems (seed {SEED}):\n{out[-12000:]}"
    assert "Stateful" in out and "Fuzzing" in out, out[-3000:]
    with server.client() as c:  # still serving after the run
        assert c.get("/health").status_code == 200
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
