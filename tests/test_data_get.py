"""``arcface data get / list`` against a real HTTP server on 127.0.0.1 serving fixture archives built here.

The server (threaded ``http.server``) honours ``Range`` with 206 + ``Content-Range`` and can be told to drop a
connection mid-body once, to ignore ranges, or to answer 404/500. A fixture dataset (a tiny fake LFW: a few
generated JPEGs in ``lfw-deepfunneled/NAME/NAME_000N.jpg`` plus pair files) is registered under a name of its
own with the fixtures' checksums; its published sources point at a closed local port, so only ``--mirror``
reaches the server. Nothing here touches the internet.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arcface.data import downloads
from arcface.data.downloads import PUBLIC_DATASETS, Dataset, Item, Source
from conftest import run_cli

PEOPLE = {"Ada_Example": 2, "Bo_Example": 3, "Cy_Example": 1}
PAIRS = {
    "pairsDevTrain.txt": "1\nAda_Example\t1\t2\nAda_Example\t1\tBo_Example\t1\n",
    "pairsDevTest.txt": "1\nBo_Example\t1\t3\nBo_Example\t2\tCy_Example\t1\n",
    "pairs.txt": "1\t1\nBo_Example\t2\t3\nAda_Example\t2\tCy_Example\t1\n",
}
_names = itertools.count()


# --------------------------------------------------------------------------------------------------
# fixtures: archives and a server


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def fake_lfw_archive() -> bytes:
    """``lfw-deepfunneled/NAME/NAME_000N.jpg`` for PEOPLE, gzip tar (about 10 KB)."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(_dir("lfw-deepfunneled"), None)]
    seed = 0
    for name, n in PEOPLE.items():
        members.append((_dir(f"lfw-deepfunneled/{name}"), None))
        for i in range(1, n + 1):
            seed += 1
            members.append((_file(f"lfw-deepfunneled/{name}/{name}_{i:04d}.jpg"), _jpeg(seed)))
    return _tar(members)


def _digests(data: bytes) -> dict[str, str]:
    return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(files: dict[str, bytes], *, n_images: int | None = None, archive: str = "lfw-deepfunneled.tgz") -> str:
    """Register a fixture dataset whose checksums are those of ``files``; returns its (unique) name."""
    dead = f"http://127.0.0.1:{_closed_port()}/"  # the "published" source: never reached when a mirror is given
    items = [Item(n, n, (Source(dead + n, _digests(files[n])),), size=len(files[n])) for n in PAIRS if n in files]
    if archive in files:
        items.append(Item(archive, "lfw-deepfunneled", (Source(dead + archive, _digests(files[archive])),),
                          archive=True, images=n_images))  # fmt: skip
    name = f"lfw-fixture-{next(_names)}"
    ds = Dataset(name, "lfw", "fixture LFW", "fixture terms: for tests only", tuple(items))
    PUBLIC_DATASETS.register(name, obj=lambda: ds)
    return name


@dataclass
class Server:
    """What the test server serves and how it misbehaves; ``requests`` records (path, Range header)."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)
    honour_range: bool = True
    wrong_range_once: set[str] = field(default_factory=set)
    stream: dict[str, int] = field(default_factory=dict)  # name -> bytes sent with no Content-Length, lazily
    sent: dict[str, int] = field(default_factory=dict)  # name -> bytes of a stream the client took
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    def count(self, name: str) -> int:
        return sum(p == "/" + name for p, _ in self.requests)


class _Handler(BaseHTTPRequestHandler):
    state: Server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        st = self.state
        rng = self.headers.get("Range")
        st.requests.append((self.path, rng))
        name = self.path.lstrip("/")
        if name in st.status:
            self.send_error(st.status[name])
            return
        if name in st.stream:  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            st.sent[name] = 0
            block = b"\0" * 65536
            try:
                while st.sent[name] < st.stream[name]:
                    self.wfile.write(block)
                    st.sent[name] += len(block)
            except OSError:  # the client hung up
                pass
            self.close_connection = True
            return
        if name not in st.files:
            self.send_error(404)
            return
        data = st.files[name]
        start = 0
        if rng and st.honour_range and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            shown = start
            if name in st.wrong_range_once:  # claims a range the client did not ask for
                st.wrong_range_once.discard(name)
                shown = 0
                start = 0
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {shown}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if name in st.drop_once:  # half the body, then the connection goes away
            st.drop_once.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    state = Server()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def fixture_files() -> dict[str, bytes]:
    files = {n: t.encode() for n, t in PAIRS.items()}
    files["lfw-deepfunneled.tgz"] = fake_lfw_archive()
    return files


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("ARCFACE_MIRROR", raising=False)
    monkeypatch.setenv("ARCFACE_PROGRESS", "lines")
    monkeypatch.setattr(downloads.time, "sleep", lambda s: None)  # no back-off wait between resumes


def _leftovers(root: Path) -> list[str]:
    """Anything half-done under root: temporary folders, .part files, the download folder."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.name.startswith((".tmp-", ".old-")) or p.suffix == ".part" or p.name == ".download"
    )  # fmt: skip


N_IMAGES = sum(PEOPLE.values())


# --------------------------------------------------------------------------------------------------
# a good download


def test_get_installs_verifies_and_is_found(server, fixture_files, tmp_path, capsys, monkeypatch):
    server.files = fixture_files
    name = register(fixture_files, n_images=N_IMAGES)
    rc, out, err = run_cli(capsys, "data", "get", name, "--dir", tmp_path, "--mirror", server.url)
    assert rc == 0, err
    lfw = tmp_path / "lfw"
    assert (lfw / "lfw-deepfunneled" / "Bo_Example" / "Bo_Example_0003.jpg").is_file()
    assert len(list((lfw / "lfw-deepfunneled").rglob("*.jpg"))) == N_IMAGES
    for n, text in PAIRS.items():
        assert (lfw / n).read_text() == text
    assert "fixture terms" in out and out.count("fixture terms") == 1
    assert "md5+sha256 verified" in out
    assert _leftovers(tmp_path) == []
    assert not (lfw / "lfw-deepfunneled.tgz").exists()  # the archive is removed once installed
    assert {p for p, _ in server.requests} == {"/" + n for n in fixture_files}

    # a second run finds everything in place: no request, no terms again
    before = len(server.requests)
    rc, out, _ = run_cli(capsys, "data", "get", name, "--dir", tmp_path, "--mirror", server.url)
    assert rc == 0 and len(server.requests) == before
    assert "fixture terms" not in out and "present" in out

    rc, out, _ = run_cli(capsys, "data", "list", "--dir", tmp_path)
    assert rc == 0
    block = out.split(f"{name}:")[1].split("\nlfw")[0]
    assert f"{N_IMAGES:,} files" in block and "as installed" in block
    assert block.count(" ok ") == 4, block

    # the lookup the demo, tests and benchmarks use finds it
    from arcface.data.locations import find_lfw

    monkeypatch.setenv("ARCFACE_DATA", str(tmp_path))
    assert find_lfw() == lfw


def test_list_notices_a_changed_tree(server, fixture_files, tmp_path, capsys):
    server.files = fixture_files
    name = register(fixture_files, n_images=N_IMAGES)
    downloads.get(name, tmp_path, mirror=server.url, progress=False, out=io.StringIO())
    (tmp_path / "lfw" / "lfw-deepfunneled" / "Ada_Example" / "Ada_Example_0001.jpg").unlink()
    (tmp_path / "lfw" / "pairs.txt").write_text("tampered\n")
    states = {s.item.target: s.state for s in downloads.status(name, tmp_path)}
    assert states == {
        "pairsDevTrain.txt": "ok", "pairsDevTest.txt": "ok", "pairs.txt": "bad", "lfw-deepfunneled": "bad",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# resuming


def test_interrupted_transfer_resumes_with_a_range_request(server, fixture_files, tmp_path, capsys):
    server.files = fixture_files
    server.drop_once = {"lfw-deepfunneled.tgz"}
    name = register(fixture_files, n_images=N_IMAGES)
    rc, out, err = run_cli(capsys, "data", "get", name, "--dir", tmp_path, "--mirror", server.url)
    assert rc == 0, err
    ranges = [r for p, r in server.requests if p == "/lfw-deepfunneled.tgz"]
    half = len(fixture_files["lfw-deepfunneled.tgz"]) // 2
    assert ranges == [None, f"bytes={half}-"]
    assert "resuming" in out
    assert len(list((tmp_path / "lfw" / "lfw-deepfunneled").rglob("*.jpg"))) == N_IMAGES
    assert _leftovers(tmp_path) == []


def test_a_rerun_continues_the_part_file(server, fixture_files, tmp_path):
    server.files = fixture_files
    server.drop_once = {"lfw-deepfunneled.tgz"}
    name = register(fixture_files, n_images=N_IMAGES)
    with pytest.raises(downloads.DownloadError, match=r"interrupted .*run the command again to resume") as e:
        downloads.get(name, tmp_path, mirror=server.url, attempts=1, progress=False, out=io.StringIO())
    assert "\n" not in str(e.value) and server.url in str(e.value)
    part = tmp_path / "lfw" / ".download" / "lfw-deepfunneled.tgz.part"
    half = len(fixture_files["lfw-deepfunneled.tgz"]) // 2
    assert part.stat().st_size == half
    assert not (tmp_path / "lfw" / "lfw-deepfunneled").exists()
    assert [s.state for s in downloads.status(name, tmp_path)][-1] == "partial"

    downloads.get(name, tmp_path, mirror=server.url, progress=False, out=io.StringIO())
    assert server.requests[-1] == ("/lfw-deepfunneled.tgz", f"bytes={half}-")
    assert len(list((tmp_path / "lfw" / "lfw-deepfunneled").rglob("*.jpg"))) == N_IMAGES
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("misbehaviour", ["ignores_range", "wrong_range"])
def test_a_server_that_does_not_resume_properly_restarts_cleanly(misbehaviour, server, fixture_files, tmp_path):
    server.files = fixture_files
    server.drop_once = {"lfw-deepfunneled.tgz"}
    if misbehaviour == "ignores_range":
        server.honour_range = False  # answers 200 with the whole file
    else:
        server.wrong_range_once = {"lfw-deepfunneled.tgz"}  # 206 from byte 0
    name = register(fixture_files, n_images=N_IMAGES)
    downloads.get(name, tmp_path, mirror=server.url, progress=False, out=io.StringIO())
    assert server.count("lfw-deepfunneled.tgz") == (2 if misbehaviour == "ignores_range" else 3)
    assert len(list((tmp_path / "lfw" / "lfw-deepfunneled").rglob("*.jpg"))) == N_IMAGES
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# refusals: one line, exit 1, nothing left behind


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_a_corrupted_archive_is_refused_and_leaves_nothing(server, fixture_files, tmp_path, capsys):
    name = register(fixture_files, n_images=N_IMAGES)  # the checksums of the good archive
    bad = bytearray(fixture_files["lfw-deepfunneled.tgz"])
    bad[len(bad) // 2] ^= 0xFF
    server.files = {**fixture_files, "lfw-deepfunneled.tgz": bytes(bad)}
    rc, _, err = run_cli(capsys, "data", "get", name, "--dir", tmp_path, "--mirror", server.url)
    assert rc == 1
    line = _one_line(err)
    assert "checksum mismatch" in line and server.url + "lfw-deepfunneled.tgz" in line
    lfw = tmp_path / "lfw"
    assert not (lfw / "lfw-deepfunneled").exists()
    assert list(lfw.rglob("*.jpg")) == []
    assert _leftovers(tmp_path) == []
    # the pair files that did verify are installed; a re-run fetches only the archive again
    assert (lfw / "pairs.txt").read_text() == PAIRS["pairs.txt"]


def test_wrong_image_count_is_refused(server, fixture_files, tmp_path, capsys):
    server.files = fixture_files
    name = register(fixture_files, n_images=N_IMAGES + 1)
    rc, _, err = run_cli(capsys, "data", "get", name, "--dir", tmp_path, "--mirror", server.url)
    assert rc == 1
    assert f"{N_IMAGES} images, expected {N_IMAGES + 1}" in _one_line(err)
    assert not (tmp_path / "lfw" / "lfw-deepfunneled").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [404, 500])
def test_http_errors_are_one_line(code, server, fixture_files, tmp_path, capsys):
    server.files = fixture_files
    server.status = {"pairsDevTrain.txt": code}
    name = register(fixture_files, n_images=N_IMAGES)
    rc, _, err = run_cli(capsys, "data", "get", name, "--dir", tmp_path, "--mirror", server.url)
    assert rc == 1
    line = _one_line(err)
    assert f"{server.url}pairsDevTrain.txt: HTTP {code}" in line
    assert server.count("pairsDevTrain.txt") == 1  # an HTTP error is not retried
    assert _leftovers(tmp_path) == []


def test_unreachable_mirror_is_one_line_and_counts_as_offline(fixture_files, tmp_path, capsys):
    name = register(fixture_files, n_images=N_IMAGES)
    mirror = f"http://127.0.0.1:{_closed_port()}/"
    assert downloads.probe(name, mirror=mirror).startswith("cannot reach 127.0.0.1:")
    with pytest.raises(downloads.Unreachable):
        downloads.get(name, tmp_path, mirror=mirror, progress=False, out=io.StringIO())
    rc, _, err = run_cli(capsys, "data", "get", name, "--dir", tmp_path, "--mirror", mirror)
    assert rc == 1 and "cannot connect" in _one_line(err)


def test_unknown_dataset_names_the_known_ones(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "data", "get", "imagenet", "--dir", tmp_path)
    assert rc == 1 and "lfw" in _one_line(err)


UNSAFE = {
    "dotdot": lambda: [(_file("lfw-deepfunneled/../../evil.txt"), b"x")],
    "absolute": lambda: [(_file("/tmp/arcface-evil.txt"), b"x")],
    "symlink": lambda: [(_link("lfw-deepfunneled/a/link.jpg", "/etc/passwd", tarfile.SYMTYPE), None)],
    "hardlink": lambda: [(_link("lfw-deepfunneled/a/hard.jpg", "/etc/passwd", tarfile.LNKTYPE), None)],
    "device": lambda: [(_dev("lfw-deepfunneled/a/dev"), None)],
    "outside": lambda: [(_file("elsewhere/x.jpg"), b"x")],
}


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _dev(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize("data_filter", [True, False], ids=["data-filter", "own-checks-only"])
@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_unsafe_archive_members_are_refused(kind, data_filter, server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(downloads, "_HAS_DATA_FILTER", data_filter and downloads._HAS_DATA_FILTER)
    members = [(_dir("lfw-deepfunneled"), None), (_dir("lfw-deepfunneled/a"), None),
               (_file("lfw-deepfunneled/a/a_0001.jpg"), _jpeg(1)), *UNSAFE[kind]()]  # fmt: skip
    archive = _tar(members)
    server.files = {"lfw-deepfunneled.tgz": archive}
    name = register(server.files)  # its checksum matches: only the extraction can refuse it
    work = tmp_path / "data"
    rc, _, err = run_cli(capsys, "data", "get", name, "--dir", work, "--mirror", server.url)
    assert rc == 1
    assert "refused member" in _one_line(err)
    assert not (work / "lfw" / "lfw-deepfunneled").exists()
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()
    assert not Path("/tmp/arcface-evil.txt").exists()
    assert _leftovers(work) == []


def test_plain_extraction_without_the_data_filter(server, fixture_files, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "_HAS_DATA_FILTER", False)
    server.files = fixture_files
    name = register(fixture_files, n_images=N_IMAGES)
    downloads.get(name, tmp_path, mirror=server.url, progress=False, out=io.StringIO())
    jpgs = sorted((tmp_path / "lfw" / "lfw-deepfunneled").rglob("*.jpg"))
    assert len(jpgs) == N_IMAGES and all(os.path.getsize(p) > 0 for p in jpgs)


# --------------------------------------------------------------------------------------------------
# the real LFW checksums, through a mirror (pair files only: small; the copies in ../shared)


def test_real_lfw_pair_files_verify_through_a_mirror_and_a_tampered_one_does_not(server, tmp_path, capsys, shared):
    lfw = shared("data/lfw")
    server.files = {n: (lfw / n).read_bytes() for n in PAIRS}
    rc, out, err = run_cli(capsys, "data", "get", "lfw-pairs", "--dir", tmp_path / "ok", "--mirror", server.url)
    assert rc == 0, err
    assert out.count("md5+sha256 verified") == 3
    assert "Labeled Faces in the Wild" in out  # the terms, once

    server.files["pairs.txt"] = server.files["pairs.txt"].replace(b"\t1\t", b"\t2\t", 1)
    rc, _, err = run_cli(capsys, "data", "get", "lfw-pairs", "--dir", tmp_path / "bad", "--mirror", server.url)
    assert rc == 1 and "pairs.txt" in _one_line(err) and "checksum mismatch" in err
    assert not (tmp_path / "bad" / "lfw" / "pairs.txt").exists()


# --------------------------------------------------------------------------------------------------
# the demo's use of it (the fixture standing in for "lfw")


@pytest.fixture
def lfw_is_fixture(monkeypatch, tmp_path):
    """``get_dataset("lfw")`` answers the fixture named by the returned setter; data goes to tmp_path."""
    real = downloads.get_dataset
    current = {}
    monkeypatch.setattr(downloads, "get_dataset", lambda n: real(current.get(n, n)))
    monkeypatch.setenv("ARCFACE_DATA", str(tmp_path))
    monkeypatch.setenv("ARCFACE_NO_SHARED_LOOKUP", "1")
    monkeypatch.setenv("ARCFACE_SHARED", str(tmp_path / "no-shared"))
    return lambda name: current.update(lfw=name)


def test_demo_downloads_lfw_when_absent_saying_what_and_how_big(server, fixture_files, tmp_path, capsys,
                                                                 monkeypatch, lfw_is_fixture):  # fmt: skip
    from arcface.cli._demo import get_lfw

    server.files = fixture_files
    lfw_is_fixture(register(fixture_files, n_images=N_IMAGES))
    monkeypatch.setenv("ARCFACE_MIRROR", server.url)
    assert get_lfw() == tmp_path / "lfw"
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("LFW is not on this machine: downloading it into") and "3 files" in first
    assert (tmp_path / "lfw" / "lfw-deepfunneled" / "Ada_Example" / "Ada_Example_0002.jpg").is_file()


def test_demo_falls_back_in_one_line_when_the_download_fails(server, fixture_files, tmp_path, capsys,
                                                              monkeypatch, lfw_is_fixture):  # fmt: skip
    from arcface.cli._demo import get_lfw

    server.files = fixture_files
    server.status = {"lfw-deepfunneled.tgz": 404}
    lfw_is_fixture(register(fixture_files, n_images=N_IMAGES))
    monkeypatch.setenv("ARCFACE_MIRROR", server.url)
    assert get_lfw() is None
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("LFW could not be downloaded") and "HTTP 404" in last
    assert not (tmp_path / "lfw" / "lfw-deepfunneled").exists()


def test_a_stale_part_file_that_does_not_verify_is_fetched_again(server, fixture_files, tmp_path):
    """A .part left by an earlier run of another copy: the resumed file fails its checksum, so it starts over."""
    server.files = fixture_files
    name = register(fixture_files, n_images=N_IMAGES)
    part = tmp_path / "lfw" / ".download" / "lfw-deepfunneled.tgz.part"
    part.parent.mkdir(parents=True)
    stale = b"not the start of this archive"
    part.write_bytes(stale)
    out = io.StringIO()
    downloads.get(name, tmp_path, mirror=server.url, progress=False, out=out)
    ranges = [r for p, r in server.requests if p == "/lfw-deepfunneled.tgz"]
    assert ranges == [f"bytes={len(stale)}-", None]
    assert "downloading it again from the start" in out.getvalue()
    assert len(list((tmp_path / "lfw" / "lfw-deepfunneled").rglob("*.jpg"))) == N_IMAGES
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# size caps


def test_a_file_announced_bigger_than_published_is_refused_before_its_body(server, fixture_files, tmp_path):
    name = register(fixture_files)  # pairs.txt is published with its exact size
    server.files = {**fixture_files, "pairs.txt": fixture_files["pairs.txt"] + b"x" * 300_000}
    with pytest.raises(downloads.DownloadError, match=r"announces 300,\d+ bytes, more than the \d+ bytes published"):
        downloads.get(name, tmp_path, mirror=server.url, progress=False, out=io.StringIO())
    assert _leftovers(tmp_path) == [] and not (tmp_path / "lfw" / "pairs.txt").exists()


def test_a_stream_longer_than_published_is_cut_off_early(server, fixture_files, tmp_path):
    name = register(fixture_files)
    total = 256 * 1024 * 1024  # far more than socket buffers hold: the server could only send it all if read
    server.files = fixture_files
    server.stream = {"pairs.txt": total}
    with pytest.raises(downloads.DownloadError, match=r"more than \d[\d,]* bytes arrived.*published.*refused") as e:
        downloads.get(name, tmp_path, mirror=server.url, progress=False, out=io.StringIO())
    assert "\n" not in str(e.value)
    assert server.sent["pairs.txt"] < total  # refused as the bytes arrived, not after downloading it in full
    assert _leftovers(tmp_path) == []


def test_an_estimated_size_caps_at_a_multiple_of_the_estimate():
    exact = Item("a", "a", (), size=100)
    approx = Item("b", "b", (), approx_size=100)
    assert downloads.size_cap(exact) == 100
    assert downloads.size_cap(approx) == 100 * downloads.APPROX_SIZE_SLACK
    assert downloads.size_cap(Item("c", "c", ())) is None


def test_a_local_mirror_reads_only_regular_files(fixture_files, tmp_path):
    name = register(fixture_files)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for n in PAIRS:
        (mirror / n).write_bytes(fixture_files[n])
    (mirror / "pairs.txt").unlink()
    os.mkfifo(mirror / "pairs.txt")  # opening it for reading would wait for a writer forever
    with pytest.raises(downloads.DownloadError, match=r"FIFO.*refused"):
        downloads.get(name, tmp_path / "data", mirror=str(mirror), progress=False, out=io.StringIO())


def test_list_does_not_block_on_a_fifo_in_place_of_a_file(server, fixture_files, tmp_path, capsys):
    server.files = fixture_files
    name = register(fixture_files)
    downloads.get(name, tmp_path, mirror=server.url, progress=False, out=io.StringIO())
    (tmp_path / "lfw" / "pairs.txt").unlink()
    os.mkfifo(tmp_path / "lfw" / "pairs.txt")
    states = {s.item.target: (s.state, s.detail) for s in downloads.status(name, tmp_path)}
    assert states["pairs.txt"][0] == "bad" and "FIFO" in states["pairs.txt"][1]
