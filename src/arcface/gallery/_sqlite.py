"""SQLite and file helpers of the SQLite gallery: its connections and their errors, transactions, private files."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from arcface.gallery.rules import GalleryBusyError, GalleryFullError, GalleryStorageError

__all__ = ["DIR_MODE", "FILE_MODE", "Connections", "Read", "Transaction", "disk_full", "make_private_dir",
           "suppress_os", "suppress_sqlite", "warn_if_shared"]  # fmt: skip

logger = logging.getLogger(__name__)

FILE_MODE = 0o600
"""Mode of every file of a gallery (SQLite gives its -wal and -shm files the database file's mode)."""
DIR_MODE = 0o700
"""Mode of a gallery folder."""


class Connections:
    """The connections of one SQLite gallery: one writer (its lock held around each write) and a read-only connection
    per thread (WAL: a reader sees the last commit and never waits for a writer).

    Args:
        path: the database file.
        busy_timeout: seconds a statement waits for a lock held by another connection.
        check_open: raises when the gallery is closed (called before a reader is lent).
    """

    def __init__(self, path: Path, busy_timeout: float, check_open: Callable[[], None]) -> None:
        self.path = path
        self.busy_timeout = float(busy_timeout)
        self.write_lock = threading.RLock()
        self.erasure_pending = False
        self._check_open = check_open
        self._readers_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = False
        self.writer = self._connect()

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        if read_only:
            db.execute("PRAGMA query_only=ON")
        return db

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection."""
        self._check_open()
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect(read_only=True)
            with self._readers_lock:
                if self._closed:
                    db.close()
                    self._check_open()
                self._readers.append(db)
            self._local.db = db
        return db

    def close(self) -> None:
        """Close every connection (errors ignored: nothing is left to write)."""
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for db in readers:
            with suppress_sqlite():
                db.close()
        with suppress_sqlite():
            self.writer.close()

    @contextmanager
    def storage(self) -> Iterator[None]:
        """SQLite's busy, full, read-only and I/O errors as :class:`GalleryBusyError`, :class:`GalleryFullError` and
        :class:`GalleryStorageError`."""
        where = self.path.parent
        try:
            yield
        except sqlite3.OperationalError as e:
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            text = str(e)
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in text:
                raise GalleryBusyError(
                    f"the gallery {where} is busy: another connection held its lock for more than "
                    f"{self.busy_timeout:g} s; retry later",
                    retry_after=max(1.0, self.busy_timeout),
                ) from None
            full = code == sqlite3.SQLITE_FULL or "disk is full" in text
            if full or (code == sqlite3.SQLITE_IOERR and disk_full(where)):
                raise GalleryFullError(f"the disk of the gallery {where} is full ({text})") from None
            if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
                raise GalleryStorageError(f"the gallery {where} cannot be written now ({text})") from None
            raise

    def checkpoint(self) -> None:
        """``wal_checkpoint(TRUNCATE)``: the WAL's frames go into the database file and the WAL to zero bytes (so a
        deleted row's old content is in no file). When a reader keeps the WAL busy, :attr:`erasure_pending` stays set
        and the next write tries again."""
        try:
            busy, _, _ = self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as e:
            logger.warning("gallery %s: WAL checkpoint failed (%s); retried at the next write", self.path.parent, e)
            return
        if busy:
            logger.warning("gallery %s: a reader kept the WAL busy; it is truncated at the next write",
                           self.path.parent)  # fmt: skip
        else:
            self.erasure_pending = False


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error, the commit's included); yields a cursor.

    A committed write transaction also bumps the ``generation`` counter in ``meta`` (unless ``bump=False``: writes
    that do not touch faces, which the index does not depend on).
    """

    def __init__(self, db: sqlite3.Connection, *, bump: bool = True) -> None:
        self._db = db
        self._bump = bump

    def __enter__(self) -> sqlite3.Cursor:
        self._cur = self._db.cursor()
        self._cur.execute("BEGIN IMMEDIATE")
        return self._cur

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self._bump:  # the generation tells the index (and its cache) whether it is current
                    self._cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                    row = self._cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
                    self.generation = int(row[0])
                self._cur.execute("COMMIT")
        finally:
            if self._db.in_transaction:  # an error, or a COMMIT that failed (disk full): nothing is kept
                with suppress_sqlite():
                    self._db.execute("ROLLBACK")
            self._cur.close()


class Read:
    """A read transaction (``BEGIN`` ... ``COMMIT``): every SELECT inside sees one snapshot."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, *exc: object) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")


@contextmanager
def suppress_sqlite() -> Iterator[None]:
    """Ignore a SQLite error (closing, rolling back: the first error is the one reported)."""
    try:
        yield
    except sqlite3.Error as e:
        logger.debug("ignored SQLite error: %s", e)


@contextmanager
def suppress_os() -> Iterator[None]:
    """Ignore an OSError (removing a temporary file after another error)."""
    try:
        yield
    except OSError as e:
        logger.debug("ignored OS error: %s", e)


def disk_full(directory: Path) -> bool:
    """Less than 1 MiB free for this user under ``directory`` (an I/O error then means a full disk)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024 * 1024


def make_private_dir(directory: Path) -> None:
    """Create the gallery folder 0700 (its parents as the umask says); tighten an empty one that exists."""
    if directory.is_dir():
        if not any(directory.iterdir()):
            os.chmod(directory, DIR_MODE)
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return
    os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask; 0700 whatever it is


def warn_if_shared(directory: Path, db: Path) -> None:
    """A gallery made before files were private, or opened up by hand: say so once (the modes are left as they are)."""
    try:
        loose = [p for p in (directory, db) if p.stat().st_mode & 0o077]
    except OSError:
        return
    if loose:
        logger.warning(
            "gallery %s: %s readable by other users (chmod 700 the folder, 600 its files)",
            directory, ", ".join(str(p) for p in loose),
        )  # fmt: skip
