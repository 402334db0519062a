"""Helpers of the tests that talk to a real ``arcface serve`` process over 127.0.0.1 (not a test module).

- :class:`Served`: ``python -m arcface serve`` on a free port (optionally with a settings file, extra options, or a
  command prefix such as ``unshare``), waited for by polling ``/health`` (bounded), stopped by its PID;
- :func:`chunked_upload`: a chunked body of any size generated lazily on a raw socket (never in memory), with the
  number of bytes the client had sent when the answer arrived;
- :func:`raw_exchange`: one raw request, the raw answer;
- :func:`rss_mib`: a process's resident memory from ``/proc/PID/status``;
- :func:`float32_runs_near`: offsets in a file's bytes where a float32 run is close (cosine) to an embedding;
- :func:`kill_during_enrolment` and :func:`check_acknowledged`: SIGKILL a server with enrolments in flight, then check
  on a restarted one that every enrolment answered 201 is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO

START_TIMEOUT = 90.0
HTTP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``python -m arcface serve`` on a free port of 127.0.0.1 (log in ``log``).

    Args:
        gallery: the gallery folder.
        log: the server's output.
        key: the API key (``ARCFACE_API_KEY``).
        settings: settings-file values (written as JSON beside the log), or None.
        args: extra command-line options.
        prefix: a command the server runs under (e.g. ``unshare ...``); then ``pid_file`` names the server's PID.
        pid_file: where the prefix writes the server's PID (default: the PID of the started process).
    """

    def __init__(
        self,
        gallery: Path,
        log: Path,
        key: str,
        *,
        settings: dict | None = None,
        args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        pid_file: Path | None = None,
    ) -> None:
        self.gallery = gallery
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        env = {**os.environ, "ARCFACE_API_KEY": key, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1",
               "PYTHONFAULTHANDLER": "1"}  # fmt: skip
        cmd = [sys.executable, "-m", "arcface", "serve", "--gallery", str(gallery),
               "--host", "127.0.0.1", "--port", str(self.port), *args]  # fmt: skip
        if settings is not None:
            path = log.with_suffix(".settings.json")
            path.write_text(json.dumps(settings))
            cmd += ["--settings", str(path)]
        self.pid_file = pid_file
        with open(log, "ab") as f:
            self.proc = subprocess.Popen([*prefix, *cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        """The server process's PID."""
        if self.pid_file is None:
            return self.proc.pid
        return int(self.pid_file.read_text().split()[0])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        with contextlib.suppress(OSError, ValueError):  # faulthandler writes where the server is stuck
            os.kill(self.pid, signal.SIGABRT)
            time.sleep(1.0)
        pytest.fail(f"the server did not answer /health within {START_TIMEOUT:.0f} s:\n{self.log.read_text()[-6000:]}")

    def client(self, **kwargs) -> httpx.Client:
        """An httpx client with the key."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"},
                            timeout=HTTP_TIMEOUT, **kwargs)  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the server (and the prefix process), by their PIDs."""
        if self.pid_file is not None and self.pid_file.is_file():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, the clean shutdown; asserts the app's shutdown ran and did not fail."""
        pid = self.pid
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            if self.proc.poll() is not None and self.pid_file is None:
                break
            time.sleep(0.05)
        if _alive(pid) and (self.pid_file is not None or self.proc.poll() is None):
            self.kill()
            pytest.fail(f"the server did not stop within 30 s of SIGTERM:\n{self.log.read_text()[-3000:]}")
        self.proc.wait(timeout=15)
        text = self.log.read_text()
        assert "Application shutdown complete" in text and "Application shutdown failed" not in text, text[-3000:]

    def rss_mib(self) -> float:
        return rss_mib(self.pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def chunked_upload(
    port: int,
    path: str,
    total: int,
    *,
    headers: Sequence[tuple[str, str]] = (),
    content_type: str = "multipart/form-data; boundary=BoUnDaRy",
    first: bytes = b"",
    piece: int = 64 * 1024,
    timeout: float = 60.0,
) -> tuple[int | None, int, int, bytes]:
    """POST a chunked body of about ``total`` bytes, generated lazily, while reading the answer.

    Returns:
        (HTTP status or None, body bytes the client had sent when the answer's first byte arrived, body bytes sent in
        all, the raw answer head).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # what was sent is close to what was read
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Type: {content_type}\r\n"
    sock.sendall((head + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode())
    sent = [0]
    stop = threading.Event()

    def pieces() -> Iterator[bytes]:
        if first:
            yield first
        block = b"\xa5" * piece
        n = len(first)
        while n < total:
            yield block
            n += len(block)

    def sender() -> None:
        try:
            for data in pieces():
                if stop.is_set():
                    return
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                sent[0] += len(data)
        except OSError:  # the server closed the connection: expected
            pass

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    answer, at_answer = b"", None
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if at_answer is None:
                at_answer = sent[0]
            if not data:
                break
            answer += data
    except OSError:
        pass
    stop.set()
    thread.join(timeout)
    sock.close()
    assert not thread.is_alive(), "the sender did not stop"
    return _status(answer), at_answer if at_answer is not None else sent[0], sent[0], answer


def raw_exchange(port: int, data: bytes, timeout: float = 20.0) -> bytes:
    """Send raw bytes, read until the server closes or the answer's body (Content-Length) is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        out = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
                head, sep, body = out.partition(b"\r\n\r\n")
                if sep:
                    lines = head.split(b"\r\n")
                    length = [ln.split(b":", 1)[1] for ln in lines if ln.lower().startswith(b"content-length:")]
                    if length and len(body) >= int(length[0]):
                        break
        except OSError:
            pass
    return out


def _status(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


def status_of(answer: bytes) -> int | None:
    """The status code of a raw answer (None: no answer)."""
    return _status(answer)


def float32_runs_near(data: bytes, embedding: np.ndarray, min_cosine: float = 0.99) -> list[int]:
    """Byte offsets where ``len(embedding)`` consecutive float32 (either byte alignment) have cosine >= ``min_cosine``
    with ``embedding``: a sliding window over the whole file."""
    e = np.asarray(embedding, np.float64).ravel()
    d = e.size
    e = e / np.linalg.norm(e)
    found = []
    for align in range(4):
        n = (len(data) - align) // 4
        if n < d:
            continue
        with np.errstate(invalid="ignore", over="ignore"):  # arbitrary bytes: NaNs and infinities
            x = np.frombuffer(data, "<f4", count=n, offset=align).astype(np.float64)
            x[~np.isfinite(x) | (np.abs(x) > 1e6)] = 0.0  # unit-vector entries are small; Cauchy-Schwarz still holds
        windows = np.lib.stride_tricks.sliding_window_view(x, d)  # (n - d + 1, d)
        dots = windows @ e
        norms = np.sqrt(np.einsum("ij,ij->i", windows, windows))
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where(norms > 1e-12, dots / norms, 0.0)
        found += [align + 4 * int(i) for i in np.flatnonzero(cos >= min_cosine)]
    return sorted(found)


def kill_during_enrolment(
    server: Served, photos: Sequence[tuple[str, bytes]], *, kill_after: int = 12, wait_s: float = 120.0
) -> tuple[list[tuple[int, str]], list[tuple[int, int, int]]]:
    """3 client threads create identities and enrol ``photos`` ((person, JPEG bytes)) in turn; once ``kill_after``
    enrolments were answered 201 the server is SIGKILLed (by PID) with requests in flight.

    Returns:
        The identities answered 201 as (id, name), and the faces answered 201 as (identity, face, photo index).
    """
    acked_ids: list[tuple[int, str]] = []
    acked_faces: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    stop, enough = threading.Event(), threading.Event()

    def stream(t: int) -> None:
        with server.client() as c:
            i = 0
            while not stop.is_set() and i < 200:
                which = (t + i) % len(photos)
                person, data = photos[which]
                i += 1
                name = f"{person}-{t}-{i}"
                try:
                    r = c.post("/v1/identities", json={"name": name})
                    if r.status_code != 201:
                        continue
                    ident = r.json()["id"]
                    with lock:
                        acked_ids.append((ident, name))
                    files = {"image": ("face.jpg", data, "image/jpeg")}
                    r = c.post(f"/v1/identities/{ident}/faces", files=files)
                    if r.status_code == 201:
                        with lock:
                            acked_faces.append((ident, r.json()["id"], which))
                            if len(acked_faces) >= kill_after:
                                enough.set()
                except httpx.HTTPError:  # the server is gone
                    return

    streams = [threading.Thread(target=stream, args=(t,), daemon=True) for t in range(3)]
    try:
        for th in streams:
            th.start()
        assert enough.wait(timeout=wait_s), f"only {len(acked_faces)} enrolments acknowledged in {wait_s:.0f} s"
        server.kill()  # SIGKILL by PID: the other threads are mid-request
        stop.set()
        for th in streams:
            th.join(timeout=HTTP_TIMEOUT + 5)
        assert not any(th.is_alive() for th in streams)
    finally:
        stop.set()
        server.kill()
    with lock:
        assert len(acked_faces) >= kill_after
        return list(acked_ids), list(acked_faces)


def check_acknowledged(
    c: httpx.Client,
    photos: Sequence[tuple[str, bytes]],
    ids: Sequence[tuple[int, str]],
    faces: Sequence[tuple[int, int, int]],
) -> None:
    """On a restarted server: every identity and face of :func:`kill_during_enrolment`'s answers is there, and an
    acknowledged photo finds an identity it was enrolled under."""
    listed = {i["id"]: i["name"] for i in c.get("/v1/identities", params={"limit": 1000}).json()["identities"]}
    for ident, name in ids:
        assert listed.get(ident) == name, (ident, name)
    by_identity: dict[int, set[int]] = {}
    for ident, face, _ in faces:
        by_identity.setdefault(ident, set()).add(face)
    for ident, want in by_identity.items():
        r = c.get(f"/v1/identities/{ident}")
        assert r.status_code == 200, r.text
        assert want <= set(r.json()["face_ids"]), ident
    person, data = photos[faces[0][2]]
    r = c.post("/v1/search", params={"k": 1}, files={"image": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    top = r.json()["matches"][0]
    assert top["name"].startswith(person) and top["similarity"] > 0.9, top
