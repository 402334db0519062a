"""The one safe way to walk a folder a user hands us and to open the files in it.

Every file under a folder (or named by a list) is untrusted input. The walker keeps only what can be read as a
file, without blocking and without leaving the folder:

* **regular files only**: a FIFO, a socket or a device is never opened (opening a FIFO for reading waits for a
  writer forever, a device can be endless); it is recorded as skipped with reason ``not_regular``;
* **links stay inside the root**: a symbolic link whose target lies outside the folder being walked is skipped
  (reason ``link_outside``) unless the caller follows links (``--follow-links``); a broken link is ``missing``;
  linked folders are walked only when following links, each real folder once (a link loop ends);
* **a size cap per file** (:data:`DEFAULT_MAX_FILE_BYTES`, configurable, ``None`` for none): a bigger file is
  skipped with reason ``too_large`` before a byte of it is read.

Each skipped file is a :class:`Skipped` record (path, reason code, one line for a person) that the commands put in
their failure report and summarise on stderr. The checks run on ``lstat``/``stat`` while walking; the file is opened
later (often in another process), so :func:`open_regular` checks again on the opened descriptor (``fstat``), which
closes the window in which a checked file is swapped for a FIFO or a bigger file.

    >>> walk = walk_files("photos", accept=is_image_name)  # arcface.io.files.is_image_name; default FilePolicy()
    >>> walk.files      # [Path, ...] sorted
    >>> walk.skipped    # [Skipped(path, reason, message), ...]
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

__all__ = [
    "DEFAULT_MAX_FILE_BYTES", "FilePolicy", "FileRefused", "SkipReason", "Skipped", "Walk", "check_file",
    "describe_mode", "open_regular", "parse_size", "summarise_skipped", "walk_files",
]  # fmt: skip

#: Largest file a walk keeps by default: far above any photo (a 40 MP uncompressed 8-bit TIFF fits), far below a
#: file that would fill memory when read.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024

SkipReason = Literal["not_regular", "link_outside", "too_large", "missing", "unreadable"]
"""Why a file was skipped: not a regular file, a link leaving the root, over the size cap, a broken link or a file
that vanished, or one whose metadata cannot be read."""


@dataclass(frozen=True)
class FilePolicy:
    """What a walk and an open accept.

    Attributes:
        follow_links: follow symbolic links that lead outside the root (and walk linked folders).
        max_bytes: largest file accepted, in bytes; None: no cap.
    """

    follow_links: bool = False
    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES

    def __post_init__(self) -> None:
        if self.max_bytes is not None and (isinstance(self.max_bytes, bool) or self.max_bytes < 1):
            raise ValueError(f"the file size cap must be a positive number of bytes, got {self.max_bytes}")


@dataclass(frozen=True)
class Skipped:
    """A file a walk (or an open) left out.

    Attributes:
        path: the file as the walk named it.
        reason: a :data:`SkipReason` code.
        message: one line for a person, naming the file.
    """

    path: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The record as a JSON-ready dict."""
        return asdict(self)


class FileRefused(OSError):
    """:func:`open_regular` refused a file; ``skipped`` says which and why, ``str(error)`` is its one line."""

    def __init__(self, skipped: Skipped) -> None:
        self.skipped = skipped
        super().__init__(skipped.message)

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.skipped,))


@dataclass
class Walk:
    """What :func:`walk_files` found: the files kept (sorted) and the ones skipped, with their reasons."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def describe_mode(mode: int) -> str:
    """What a file that is not a regular one is, for a message (``"a FIFO (named pipe)"``, ``"a socket"``, ...)."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")  # fmt: skip


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_file(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
               policy: FilePolicy | None = None) -> Skipped | None:  # fmt: skip
    """Why ``path`` must be skipped, or None when it may be read (:class:`Skipped` reasons).

    A file that does not exist is not refused here (None): its reader reports it as missing.

    Args:
        path: the file.
        root: the folder the file was found in (links must stay inside it); None: the folder holding ``path``.
        policy: what is accepted (default :class:`FilePolicy`).
    """
    policy = policy or FilePolicy()
    name = os.fspath(path)
    try:
        lst = os.lstat(name)
    except FileNotFoundError:
        return None
    except OSError as e:
        return Skipped(name, "unreadable", f"{name}: cannot read its metadata ({e.strerror or e})")
    if stat.S_ISLNK(lst.st_mode):
        if not policy.follow_links:
            base = os.path.realpath(root if root is not None else os.path.dirname(os.path.abspath(name)))
            if not _inside(os.path.realpath(name), base):
                message = f"{name}: a link to a file outside {base} (pass --follow-links to follow it)"
                return Skipped(name, "link_outside", message)
        try:
            st = os.stat(name)
        except OSError:
            return Skipped(name, "missing", f"{name}: a broken link")
    else:
        st = lst
    return _check_stat(name, st, policy)


def _check_stat(name: str, st: os.stat_result, policy: FilePolicy) -> Skipped | None:
    if not stat.S_ISREG(st.st_mode):
        return Skipped(name, "not_regular", f"{name}: {describe_mode(st.st_mode)}, not a regular file")
    if policy.max_bytes is not None and st.st_size > policy.max_bytes:
        return Skipped(name, "too_large", f"{name}: {_size_text(st.st_size)} exceeds the file size cap of "
                                          f"{_size_text(policy.max_bytes)} (--max-file-size)")  # fmt: skip
    return None


def walk_files(
    root: str | os.PathLike,
    *,
    accept: Callable[[str], bool] | None = None,
    policy: FilePolicy | None = None,
    exclude: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    within: str | os.PathLike | None = None,
) -> Walk:
    """The files under ``root``, recursively, sorted, and the ones skipped (see the module); hidden files and
    folders (a leading dot) are left out silently, as are names ``accept`` refuses.

    Args:
        root: the folder to walk.
        accept: which file names to consider (e.g. :func:`arcface.io.files.is_image_name`); None: all.
        policy: links and size cap (default :class:`FilePolicy`).
        exclude: folders inside ``root`` that are not walked (e.g. an output folder nested in the input).
        within: the folder links must stay inside, when it is wider than ``root`` (a person's folder walked as part
            of a folder of people); default ``root``.
    """
    policy = policy or FilePolicy()
    if exclude is None:
        excluded: set[str] = set()
    elif isinstance(exclude, (str, os.PathLike)):
        excluded = {os.path.realpath(exclude)}
    else:
        excluded = {os.path.realpath(e) for e in exclude}
    base = os.path.realpath(within if within is not None else root)
    walk = Walk()
    seen: set[tuple[int, int]] = set()  # real folders walked (a link loop ends)

    def unreadable(error: OSError) -> None:
        name = error.filename or root
        walk.skipped.append(Skipped(os.fspath(name), "unreadable", f"{name}: cannot list the folder "
                                    f"({error.strerror or error})"))  # fmt: skip

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=policy.follow_links):
        with contextlib.suppress(OSError):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if d.startswith(".") or os.path.realpath(here / d) in excluded:
                continue
            if os.path.islink(here / d) and not policy.follow_links:
                # not descended; a link to a folder inside the root is walked there already
                if not _inside(os.path.realpath(here / d), base):
                    walk.skipped.append(Skipped(str(here / d), "link_outside", f"{here / d}: a link to a folder "
                                                f"outside {base} (pass --follow-links to follow it)"))  # fmt: skip
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            if f.startswith(".") or (accept is not None and not accept(f)):
                continue
            why = check_file(here / f, root=base, policy=policy)
            if why is None:
                walk.files.append(here / f)
            else:
                walk.skipped.append(why)
    walk.files.sort()
    walk.skipped.sort(key=lambda s: s.path)
    return walk


def open_regular(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 policy: FilePolicy | None = None) -> BinaryIO:  # fmt: skip
    """Open ``path`` for reading without ever blocking on it, and only if it is a regular file within the policy.

    The file is opened with ``O_NONBLOCK`` (a FIFO does not wait for a writer) and, unless links are followed,
    after checking that a link stays inside ``root`` (:func:`check_file`); the opened descriptor is then checked
    again with ``fstat`` (regular, within the size cap), so a file swapped after the check is still refused. The
    returned file reads in blocking mode, as usual.

    Args:
        path: the file.
        root: the folder links must stay inside (None: the folder holding ``path``); unused when following links.
        policy: links and size cap (default :class:`FilePolicy`).

    Raises:
        FileRefused: not a regular file, a link leaving ``root``, or over the size cap (``.skipped`` says which).
        OSError: the file cannot be opened (``FileNotFoundError``, ``PermissionError``, ...).
    """
    policy = policy or FilePolicy()
    name = os.fspath(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not policy.follow_links:
        why = check_file(name, root=root, policy=policy)
        if why is not None:
            raise FileRefused(why)
        if not os.path.islink(name):
            flags |= getattr(os, "O_NOFOLLOW", 0)  # a link put in its place after the check fails to open
    fd = os.open(name, flags)
    try:
        why = _check_stat(str(name), os.fstat(fd), policy)
        if why is not None:
            raise FileRefused(why)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return open(fd, "rb")  # noqa: SIM115  (the caller closes it)
    except BaseException:
        os.close(fd)
        raise


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}  # fmt: skip


def parse_size(text: str) -> int | None:
    """A size such as ``"300M"``, ``"2G"``, ``"4096"`` (bytes; binary units), or ``"none"`` (no cap: None).

    Raises:
        ValueError: not such a size, or not positive.
    """
    t = text.strip().upper().replace(" ", "")
    if t in ("NONE", "0"):
        return None
    number = t.rstrip("KMGIB")
    unit = t[len(number) :]
    if unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 300M, 2G or 4096)")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 300M, 2G or 4096)") from None
    if not value >= 1 or value != value or value == float("inf"):
        raise ValueError(f"a size must be positive, got {text!r}")
    return int(value)


def summarise_skipped(skipped: Iterable[Skipped]) -> str:
    """One line counting skipped files by reason (``"skipped 2 files: 1 not_regular, 1 link_outside"``); "" for
    none."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    total = sum(counts.values())
    if not total:
        return ""
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    return f"skipped {total} file{'s' if total != 1 else ''} ({parts})"
