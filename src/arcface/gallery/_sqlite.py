"""SQLite and file helpers of the gallery store: transactions, private files, a full disk."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "Read", "Transaction", "disk_full", "make_private_dir", "suppress_os",
           "suppress_sqlite", "warn_if_shared"]  # fmt: skip

logger = logging.getLogger("arcface.gallery.store")

FILE_MODE = 0o600
"""Mode of every file of a gallery (SQLite gives its -wal and -shm files the database file's mode)."""
DIR_MODE = 0o700
"""Mode of a gallery folder."""


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
