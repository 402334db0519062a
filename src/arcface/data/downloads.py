"""Public evaluation data (LFW): download, resume, verify and install it (``arcface data get / list``).

Each dataset in :data:`PUBLIC_DATASETS` names its files, the mirrors that serve them and their published
checksums (MD5 from the LFW site, as torchvision checks them; SHA-256 from the figshare copies scikit-learn
uses). :func:`get` installs a dataset under a data folder (``$ARCFACE_DATA``, else :func:`default_data_dir`):

- a transfer goes to ``DIR/<folder>/.download/NAME.part``; an interrupted one keeps its ``.part`` and the next
  attempt (up to ``attempts`` in one run, or a later run) asks for the rest with an HTTP ``Range`` header. The
  rest is appended only when the server answers 206 with a ``Content-Range`` starting where the ``.part`` ends;
  a 200 (range ignored) or a mismatched range starts the file again from nothing;
- a complete file is checked against the published checksum before anything reads it; a mismatch deletes it
  (nothing of it stays behind) and raises :class:`ChecksumError` naming the file and the URL;
- an archive is extracted member by member into a temporary sibling folder, refusing absolute paths, ``..``,
  links, devices and anything outside its top folder (and through :mod:`tarfile`'s ``data`` filter where the
  Python has it); the file count is checked, and only then is the folder moved into place with
  :func:`os.replace`, so a half-extracted tree is never visible. The archive is deleted after installation
  and a manifest (``.arcface-data.json``: source, checksums, file count and bytes) lets :func:`status` check
  the installed tree later;
- the data's terms are printed the first time a dataset is fetched into a folder (a ``.terms-shown`` marker);
- a transfer is capped at the item's published size (:func:`size_cap`): a server that announces more, or sends
  more, is refused as soon as it does, and what arrived is deleted; nothing is downloaded in full to be refused
  afterwards. A local mirror's file is read only when it is a regular file within that cap (never a FIFO).

``--mirror URL`` (``ARCFACE_MIRROR``) replaces every source by ``URL/NAME`` (the same file names, for a local or
air-gapped copy); what it serves must match one of the published checksums. Errors are :class:`DataError`
(an ``OSError``) with one line naming the URL or file; :class:`Unreachable` marks "no network" (DNS failure,
refused or timed-out connection), which callers such as the demo treat as offline.

This module is a low layer: the standard library, :mod:`arcface.registry`, :mod:`arcface.runtime` and
:mod:`arcface.io` only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from arcface.io.walk import FilePolicy, check_file, open_regular
from arcface.registry import Registry
from arcface.runtime.progress import Progress

__all__ = [
    "APPROX_SIZE_SLACK",
    "PUBLIC_DATASETS",
    "ChecksumError",
    "DataError",
    "Dataset",
    "DownloadError",
    "Item",
    "ItemStatus",
    "Source",
    "UnsafeArchiveError",
    "Unreachable",
    "default_data_dir",
    "describe",
    "get",
    "get_dataset",
    "iter_datasets",
    "missing",
    "probe",
    "size_cap",
    "status",
]

#: Seconds to wait for a connection (a machine without network answers at once or within this).
CONNECT_TIMEOUT = 10.0
#: Seconds a started transfer may stall before it counts as interrupted (and is resumed).
READ_TIMEOUT = 60.0
#: Tries per file in one run; each after the first resumes from the ``.part`` file.
ATTEMPTS = 3
MANIFEST = ".arcface-data.json"
TERMS_MARKER = ".terms-shown"
_CHUNK = 1 << 16
#: An item whose size is only estimated may arrive up to this many times that estimate before it is refused.
APPROX_SIZE_SLACK = 2
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python 3.12, and 3.10.12 / 3.11.4 backports


class DataError(OSError):
    """A dataset could not be fetched, verified or installed; the message is one line naming the URL or file."""


class DownloadError(DataError):
    """The server refused (HTTP 4xx/5xx), answered oddly, or the transfer broke off."""


class Unreachable(DownloadError):
    """No connection at all (DNS failure, refused, timed out): the machine is probably offline."""


class ChecksumError(DataError):
    """A downloaded file does not match its published checksum (or an archive holds the wrong files)."""


class UnsafeArchiveError(DataError):
    """An archive member would land outside its folder, or is a link or a device."""


@dataclass(frozen=True)
class Source:
    """One place a file can be fetched from, with the published checksums of what it serves.

    ``digests`` maps hashlib names to hex digests (``{"md5": ...}``, ``{"sha256": ...}``); all must match.
    """

    url: str
    digests: Mapping[str, str]


@dataclass(frozen=True)
class Item:
    """One file of a dataset: a plain file installed as ``target``, or an archive whose top folder is ``target``.

    Args:
        filename: the file's name on a mirror (``--mirror URL`` fetches ``URL/filename``).
        target: where it lands, relative to the dataset folder (``pairs.txt``, ``lfw-deepfunneled``).
        sources: the published copies, tried in order.
        archive: a tar archive (any compression) holding ``target/...``.
        size: the exact size in bytes, where known.
        approx_size: an estimate for messages when ``size`` is unknown.
        images: for an archive, the number of ``.jpg`` files it installs (checked after extraction; other files
            such as a stray README are allowed, and counted in the manifest).
    """

    filename: str
    target: str
    sources: tuple[Source, ...]
    archive: bool = False
    size: int | None = None
    approx_size: int | None = None
    images: int | None = None

    def expected_size(self) -> int | None:
        """The exact size, else the estimate, else None."""
        return self.size if self.size is not None else self.approx_size


@dataclass(frozen=True)
class Dataset:
    """A public dataset: the items installed under ``DIR/folder`` and the terms printed before the first fetch."""

    name: str
    folder: str
    description: str
    terms: str
    items: tuple[Item, ...]
    #: Item targets whose presence means the dataset is usable (what :func:`missing` reports on).
    needs: tuple[str, ...] = field(default=())


#: Public datasets by name; each factory returns a :class:`Dataset`.
PUBLIC_DATASETS: Registry[Callable[[], Dataset]] = Registry("public dataset")

_UMASS = "http://vis-www.cs.umass.edu/lfw/"
_FIGSHARE = "https://ndownloader.figshare.com/files/"
LFW_TERMS = (
    "Labeled Faces in the Wild (UMass Amherst) is made available for research. Its photos were collected from "
    "news sites on the web; their rights stay with their owners. Cite: G. B. Huang, M. Ramesh, T. Berg, "
    "E. Learned-Miller, 'Labeled Faces in the Wild: A Database for Studying Face Recognition in Unconstrained "
    "Environments', UMass Amherst TR 07-49, 2007 (deep-funneled images: G. B. Huang, M. Mattar, H. Lee, "
    "E. Learned-Miller, 'Learning to Align from Scratch', NIPS 2012). The LFW authors note that results on LFW "
    "do not show that an algorithm is fit for any commercial purpose. http://vis-www.cs.umass.edu/lfw/"
)


def _pair_file(name: str, figshare_id: str, md5: str, sha256: str, size: int) -> Item:
    # The LFW site's MD5 (torchvision) and figshare's SHA-256 (scikit-learn) describe the same bytes: both
    # match the copies in shared/data/lfw, so every source must match both.
    digests = {"md5": md5, "sha256": sha256}
    return Item(
        name, name, (Source(_FIGSHARE + figshare_id, digests), Source(_UMASS + name, digests)), size=size
    )


_LFW_PAIRS = (
    _pair_file(
        "pairsDevTrain.txt", "5976012", "4f27cbf15b2da4a85c1907eb4181ad21",
        "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa", 56_579,
    ),
    _pair_file(
        "pairsDevTest.txt", "5976009", "5132f7440eb68cf58910c8a45a2ac10b",
        "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c", 26_002,
    ),
    _pair_file(
        "pairs.txt", "5976006", "9f1ba174e4e1c508ff7cdf10ac338a7d",
        "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592", 155_335,
    ),
)  # fmt: skip

#: 13,233 images of 5,749 people. The size is an estimate (a tar + gzip -6 of the extracted tree is 108.7 MB);
#: the server's Content-Length gives the exact figure.
_LFW_DEEPFUNNELED = Item(
    "lfw-deepfunneled.tgz", "lfw-deepfunneled",
    (Source(_UMASS + "lfw-deepfunneled.tgz", {"md5": "68331da3eb755a505a502b5aacb3c201"}),),
    archive=True, approx_size=110_000_000, images=13_233,
)  # fmt: skip

#: The original (not aligned) images. Figshare's SHA-256 (scikit-learn) and the LFW site's MD5 (torchvision)
#: were each published for their own copy; a copy matching either is accepted.
_LFW_ORIGINAL = Item(
    "lfw.tgz", "lfw",
    (
        Source(_FIGSHARE + "5976018", {"sha256": "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0"}),
        Source(_UMASS + "lfw.tgz", {"md5": "a17d05bd522c52d84eca14327a23d494"}),
    ),
    archive=True, images=13_233,
)  # fmt: skip


@PUBLIC_DATASETS.register("lfw")
def _lfw() -> Dataset:
    return Dataset(
        "lfw", "lfw",
        "LFW deep-funneled images (13,233 of 5,749 people) + View 1/2 pair files (pairsDevTrain/DevTest, pairs)",
        LFW_TERMS, (*_LFW_PAIRS, _LFW_DEEPFUNNELED),
        needs=("lfw-deepfunneled", "pairs.txt", "pairsDevTest.txt", "pairsDevTrain.txt"),
    )  # fmt: skip


@PUBLIC_DATASETS.register("lfw-original")
def _lfw_original() -> Dataset:
    return Dataset(
        "lfw-original", "lfw", "LFW original (unaligned) images, installed beside the deep-funneled ones as lfw/lfw",
        LFW_TERMS, (_LFW_ORIGINAL,), needs=("lfw",),
    )  # fmt: skip


@PUBLIC_DATASETS.register("lfw-pairs")
def _lfw_pairs() -> Dataset:
    return Dataset("lfw-pairs", "lfw", "LFW pair files only (View 1 and View 2)", LFW_TERMS, _LFW_PAIRS)


def get_dataset(name: str) -> Dataset:
    """The dataset registered as ``name`` (KeyError naming the known ones otherwise)."""
    return PUBLIC_DATASETS.build(name)


def default_data_dir() -> Path:
    """Where data goes by default: ``$ARCFACE_DATA``, else ``$XDG_DATA_HOME/arcface``, else
    ``~/.local/share/arcface``."""
    if os.environ.get("ARCFACE_DATA"):
        return Path(os.environ["ARCFACE_DATA"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "arcface"


def _mirror(mirror: str | None) -> str | None:
    mirror = mirror if mirror is not None else os.environ.get("ARCFACE_MIRROR") or None
    if mirror is None:
        return None
    if "://" not in mirror:  # a local folder
        mirror = Path(mirror).resolve().as_uri()
    return mirror if mirror.endswith("/") else mirror + "/"


def _sources(item: Item, mirror: str | None) -> tuple[tuple[str, list[Mapping[str, str]]], ...]:
    """(url, accepted digest sets) to try in order: the mirror's copy, or each published source."""
    if mirror is not None:
        return ((urllib.parse.urljoin(mirror, item.filename), [s.digests for s in item.sources]),)
    return tuple((s.url, [s.digests]) for s in item.sources)


# --------------------------------------------------------------------------------------------------
# checksums


def _digests(path: Path, algorithms: Sequence[str]) -> dict[str, str]:
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open_regular(path, policy=FilePolicy(follow_links=True, max_bytes=None)) as f:  # never blocks on a FIFO
        while chunk := f.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _matches(path: Path, accepted: Sequence[Mapping[str, str]]) -> tuple[bool, str]:
    """Whether ``path`` matches one of the ``accepted`` digest sets; and a short account of the comparison."""
    algorithms = sorted({a for d in accepted for a in d})
    got = _digests(path, algorithms)
    for want in accepted:
        if all(got[a] == v.lower() for a, v in want.items()):
            return True, "+".join(sorted(want)) + " verified"
    want = accepted[0]
    first = sorted(want)[0]
    return False, f"{first} {got[first]}, expected {want[first]}"


# --------------------------------------------------------------------------------------------------
# transfers


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", e)
    if isinstance(r, OSError) and r.strerror:
        return r.strerror
    return str(r) or type(r).__name__


_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.EADDRNOTAVAIL}


def _unreachable(e: BaseException) -> bool:
    """Whether a connection failure means "no network" (rather than a server that answered badly)."""
    r = getattr(e, "reason", e)
    if isinstance(r, ssl.SSLError):
        return False
    return isinstance(r, (socket.gaierror, ConnectionRefusedError, TimeoutError)) or (
        isinstance(r, OSError) and r.errno in _NO_ROUTE
    )


def _set_read_timeout(resp: object, seconds: float) -> None:
    # urlopen's timeout covers the connection; a transfer may pause longer. http.client keeps the socket in
    # resp.fp.raw._sock (SocketIO); where that is absent the connect timeout stays in force.
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(seconds)


class _Interrupted(Exception):
    """The connection broke off mid-body; the ``.part`` file holds what arrived."""


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    """``bytes 100-199/200`` -> (100, 200); ``bytes 100-199/*`` -> (100, None); anything else None."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, total = value[6:].split("/")
        start = int(span.split("-")[0])
        return start, None if total.strip() == "*" else int(total)
    except ValueError:
        return None


def size_cap(item: Item) -> int | None:
    """The most bytes a transfer of ``item`` may bring: its exact published size, else :data:`APPROX_SIZE_SLACK`
    times its estimate, else None (no cap)."""
    if item.size is not None:
        return item.size
    return None if item.approx_size is None else item.approx_size * APPROX_SIZE_SLACK


def _too_big(url: str, part: Path, what: str, limit: int) -> DownloadError:
    """Delete what arrived of an oversized transfer; the error that says so."""
    part.unlink(missing_ok=True)
    return DownloadError(f"{url}: {what}, more than the {limit:,} bytes published for this file; refused")


def _check_local(url: str, limit: int | None) -> None:
    """A ``file://`` source is read only when it is a regular file within ``limit`` (a FIFO would block)."""
    if urllib.parse.urlsplit(url).scheme != "file":
        return
    path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    why = check_file(path, policy=FilePolicy(follow_links=True, max_bytes=limit))
    if why is not None:
        raise DownloadError(f"{url}: {why.message.removeprefix(path + ': ')}; refused")


def _fetch_once(url: str, part: Path, *, desc: str, size: int | None, progress: bool, timeout: float,
                read_timeout: float, limit: int | None = None) -> str:  # fmt: skip
    """One request for ``url`` into ``part`` (continuing it when non-empty); returns "done" or "restart".

    ``limit``: the most bytes the whole file may have (:func:`size_cap`); more announced or received raises
    :class:`DownloadError` at once and deletes ``part``.
    """
    have = part.stat().st_size if part.exists() else 0
    _check_local(url, limit)
    headers = {"User-Agent": "arcface-data/1", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # nothing after what we hold: the .part may be complete (the checksum says)
            return "done"
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError):  # a file:// mirror without this file
            raise DownloadError(f"{url}: no such file") from None
        cls = Unreachable if _unreachable(e) else DownloadError
        raise cls(f"{url}: cannot connect ({_reason(e)})") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        cls = Unreachable if _unreachable(e) else DownloadError
        raise cls(f"{url}: cannot connect ({_reason(e)})") from None
    with resp:
        _set_read_timeout(resp, read_timeout)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        code = getattr(resp, "status", None) or 200  # a file:// response has no status
        if have and code == 206:
            rng = _content_range_start(resp.headers.get("Content-Range"))
            if rng is None or rng[0] != have:  # not the range we asked for: start again cleanly
                part.unlink()
                return "restart"
            total = rng[1] if rng[1] is not None else (have + length if length is not None else size)
            mode = "ab"
        elif code == 200:
            have, mode, total = 0, "wb", length if length is not None else size  # the range was ignored
        else:
            raise DownloadError(f"{url}: unexpected HTTP {code} {getattr(resp, 'reason', '')}")
        announced = have + length if length is not None else total
        if limit is not None and announced is not None and announced > limit:
            raise _too_big(url, part, f"the server announces {announced:,} bytes", limit)
        with open(part, mode) as f, Progress(total, desc, unit="B", initial=have, enabled=progress) as bar:
            got = 0
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (http.client.HTTPException, OSError) as e:  # IncompleteRead, reset, timed out
                    raise _Interrupted(f"after {have + got:,} bytes ({_reason(e) or type(e).__name__})") from None
                if not chunk:
                    break
                if limit is not None and have + got + len(chunk) > limit:
                    f.close()
                    raise _too_big(url, part, f"more than {have + got:,} bytes arrived", limit)
                f.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        if length is not None and got < length:
            raise _Interrupted(f"after {have + got:,} of {have + length:,} bytes")
    return "done"


def _download(url: str, part: Path, *, desc: str, size: int | None, progress: bool, attempts: int,
              timeout: float, read_timeout: float, say: Callable[[str], None],
              limit: int | None = None) -> None:  # fmt: skip
    """Fetch ``url`` into ``part``, resuming up to ``attempts - 1`` times after a broken-off transfer."""
    part.parent.mkdir(parents=True, exist_ok=True)
    tries = 0
    while True:
        tries += 1
        try:
            state = _fetch_once(url, part, desc=desc, size=size, progress=progress, timeout=timeout,
                                read_timeout=read_timeout, limit=limit)  # fmt: skip
        except _Interrupted as e:
            if tries >= attempts:
                raise DownloadError(
                    f"{url}: transfer interrupted {e}; run the command again to resume from {part}"
                ) from None
            say(f"{desc}: transfer interrupted {e}; resuming")
            time.sleep(min(2.0 * tries, 5.0))
            continue
        if state == "restart":
            if tries >= attempts:
                raise DownloadError(f"{url}: the server answered a resumed request with the wrong range")
            continue
        return


# --------------------------------------------------------------------------------------------------
# archives


def _check_member(m: tarfile.TarInfo, root: str, archive: Path) -> str:
    """The member's clean relative name, or UnsafeArchiveError."""
    name = m.name
    while name.startswith("./"):
        name = name[2:]
    p = PurePosixPath(name)
    if name.startswith(("/", "\\")) or p.is_absolute() or (p.parts and ":" in p.parts[0]):
        raise UnsafeArchiveError(f"{archive}: refused member {m.name!r} (an absolute path)")
    if ".." in p.parts or "\\" in name:
        raise UnsafeArchiveError(f"{archive}: refused member {m.name!r} ('..' would leave the folder)")
    if m.issym() or m.islnk():
        raise UnsafeArchiveError(f"{archive}: refused member {m.name!r} (a link to {m.linkname!r})")
    if not (m.isfile() or m.isdir()):
        raise UnsafeArchiveError(f"{archive}: refused member {m.name!r} (a device, FIFO or other special file)")
    if not p.parts and m.isdir():  # the archive's own "." entry
        return ""
    if not p.parts or p.parts[0] != root:
        raise UnsafeArchiveError(f"{archive}: refused member {m.name!r} (outside {root}/)")
    return str(p)


def _extract(archive: Path, root: str, into: Path) -> tuple[int, int]:
    """Extract ``archive`` (all of it under ``root/``) into the folder ``into``; returns (files, bytes, images)."""
    files = total = images = 0
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed by the with below; open errors are ours)
    except (tarfile.TarError, OSError) as e:
        raise ChecksumError(f"{archive}: not a readable tar archive ({e})") from None
    with tar:
        try:
            for m in tar:
                name = _check_member(m, root, archive)
                if not name:
                    continue
                if _HAS_DATA_FILTER:
                    tar.extract(m, into, filter="data")
                else:  # our own checks above; write plain files with default permissions and no owner
                    dest = into / name
                    if m.isdir():
                        dest.mkdir(parents=True, exist_ok=True)
                    else:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(m) as src, open(dest, "wb") as out:  # type: ignore[union-attr]
                            shutil.copyfileobj(src, out)
                if m.isfile():
                    files += 1
                    total += m.size
                    images += name.lower().endswith(".jpg")
        except tarfile.FilterError as e:
            raise UnsafeArchiveError(f"{archive}: refused member ({e})") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, DataError):
                raise
            raise ChecksumError(f"{archive}: the archive is damaged ({e})") from None
    if not (into / root).is_dir():
        raise ChecksumError(f"{archive}: holds no {root}/ folder")
    return files, total, images


def _tree_size(folder: Path) -> tuple[int, int, int]:
    """(files, bytes, .jpg files) under ``folder``."""
    files = total = images = 0
    for dirpath, _dirs, names in os.walk(folder):
        for n in names:
            files += 1
            total += os.stat(os.path.join(dirpath, n)).st_size
            images += n.lower().endswith(".jpg")
    return files, total, images


def _install_tree(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target`` in one rename (an old ``target`` is moved aside first)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# manifest and status


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)


@dataclass(frozen=True)
class ItemStatus:
    """What :func:`status` found for one item: ``state`` is "ok", "absent", "partial" or "bad"."""

    item: Item
    path: Path
    state: str
    detail: str


def _item_status(item: Item, folder: Path, manifest: dict, *, deep: bool = True) -> ItemStatus:
    path = folder / item.target
    part = folder / ".download" / f"{item.filename}.part"
    if not path.exists():
        if part.exists():
            return ItemStatus(item, path, "partial", f"{part.stat().st_size:,} bytes downloaded (resumable)")
        return ItemStatus(item, path, "absent", "not downloaded")
    if not item.archive:
        if not deep:
            return ItemStatus(item, path, "ok", "present")
        try:
            ok, how = _matches(path, [s.digests for s in item.sources])
        except OSError as e:  # a FIFO or another special file in its place, an unreadable file
            return ItemStatus(item, path, "bad", f"cannot be read: {e}")
        return ItemStatus(item, path, "ok" if ok else "bad", how if ok else f"checksum mismatch: {how}")
    files, total, images = _tree_size(path)
    rec = manifest.get(item.target) or {}
    if isinstance(rec.get("files"), int) and isinstance(rec.get("bytes"), int):
        if (files, total) == (rec["files"], rec["bytes"]):
            return ItemStatus(item, path, "ok", f"{files:,} files, {total / 1e6:,.1f} MB, as installed "
                              f"({rec.get('verified', 'verified')})")  # fmt: skip
        return ItemStatus(item, path, "bad", f"{files:,} files / {total:,} bytes, but {rec['files']:,} files / "
                          f"{rec['bytes']:,} bytes were installed")  # fmt: skip
    if item.images is not None:
        if images == item.images:
            return ItemStatus(item, path, "ok", f"{images:,} images (count matches; not installed by arcface data get)")
        return ItemStatus(item, path, "bad", f"{images:,} images, expected {item.images:,}")
    return ItemStatus(item, path, "ok", f"{files:,} files (nothing recorded to compare with)")


def status(name: str, root: str | os.PathLike | None = None, *, deep: bool = True) -> list[ItemStatus]:
    """The state of each item of dataset ``name`` under ``root`` (default :func:`default_data_dir`).

    Plain files are checked against their checksums (``deep=False``: presence only); archive folders by the
    file count and bytes recorded when they were installed, or by the expected file count.
    """
    ds = get_dataset(name)
    folder = Path(root if root is not None else default_data_dir()) / ds.folder
    manifest = _read_manifest(folder)
    return [_item_status(it, folder, manifest, deep=deep) for it in ds.items]


def missing(name: str, root: str | os.PathLike | None = None) -> list[Item]:
    """The items of ``name`` not yet installed under ``root`` (presence only; no checksums computed)."""
    return [s.item for s in status(name, root, deep=False) if s.state != "ok"]


def _host_port(url: str) -> tuple[str, int] | None:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        return None
    proxy = urllib.request.getproxies().get(u.scheme)
    if proxy and not urllib.request.proxy_bypass(u.hostname):
        return _host_port(proxy if "://" in proxy else f"http://{proxy}")
    return u.hostname, u.port or (443 if u.scheme == "https" else 80)


def probe(name: str, *, mirror: str | None = None, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when some source of ``name`` accepts a connection; else one line saying why none does.

    A connection only (or to the proxy that would carry it): no request is sent. For a caller that
    wants to say "offline" in one line before announcing a download.
    """
    ds = get_dataset(name)
    base = _mirror(mirror)
    reasons = []
    seen = set()
    for item in ds.items:
        for url, _ in _sources(item, base):
            hp = _host_port(url)
            if hp is None:  # file:// mirror or another scheme: nothing to probe
                return None
            if hp in seen:
                continue
            seen.add(hp)
            try:
                socket.create_connection(hp, timeout=timeout).close()
                return None
            except OSError as e:
                reasons.append(f"{hp[0]}:{hp[1]}: {_reason(e)}")
    return "cannot reach " + "; ".join(reasons)


# --------------------------------------------------------------------------------------------------
# get


def _print_terms_once(ds: Dataset, folder: Path, say: Callable[[str], None]) -> None:
    marker = folder / TERMS_MARKER
    if marker.exists():
        return
    say(f"Terms of {ds.name}: {ds.terms}")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(ds.terms + "\n")


def _fetch_item(item: Item, folder: Path, mirror: str | None, *, progress: bool, attempts: int,
                timeout: float, read_timeout: float, say: Callable[[str], None]) -> dict:  # fmt: skip
    """Download, verify and install one item; returns its manifest record."""
    part = folder / ".download" / f"{item.filename}.part"
    errors: list[DownloadError] = []
    for url, accepted in _sources(item, mirror):
        stale = part.exists()  # left by an earlier run: perhaps of another copy of the file
        try:
            _download(url, part, desc=item.filename, size=item.size, progress=progress, attempts=attempts,
                      timeout=timeout, read_timeout=read_timeout, say=say, limit=size_cap(item))  # fmt: skip
            ok, how = _matches(part, accepted)
            if not ok and stale:
                say(f"{item.filename}: the resumed download does not verify; downloading it again from the start")
                part.unlink()
                _download(url, part, desc=item.filename, size=item.size, progress=progress, attempts=attempts,
                          timeout=timeout, read_timeout=read_timeout, say=say, limit=size_cap(item))  # fmt: skip
                ok, how = _matches(part, accepted)
        except DownloadError as e:
            errors.append(e)
            continue
        if not ok:
            part.unlink()
            _tidy(folder)
            raise ChecksumError(f"{item.filename} from {url}: checksum mismatch ({how}); the download was deleted")
        record = {"source": url, "verified": how, "digests": dict(accepted[0])}
        if item.archive:
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{item.target}-", dir=folder))
            try:
                files, total, images = _extract(part, item.target, tmp)
                if item.images is not None and images != item.images:
                    raise ChecksumError(f"{item.filename} from {url}: {images:,} images, expected {item.images:,}")
                _install_tree(tmp / item.target, folder / item.target)
            except DataError:
                part.unlink(missing_ok=True)  # verified yet unusable: do not resume it
                _tidy(folder)
                raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            part.unlink()
            record.update(files=files, bytes=total, images=images)
        else:
            os.replace(part, folder / item.target)
        _tidy(folder)
        return record
    _tidy(folder)
    if len(errors) == 1:
        raise errors[0]
    cls = Unreachable if all(isinstance(e, Unreachable) for e in errors) else DownloadError
    raise cls(f"{item.filename}: no source worked: " + "; ".join(str(e) for e in errors))


def _tidy(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (folder / ".download").rmdir()  # only when empty: a resumable .part stays


def get(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
    attempts: int = ATTEMPTS,
    timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    out: IO[str] | None = None,
) -> Path:
    """Download, verify and install dataset ``name`` under ``root``; returns ``root/<folder>``.

    Args:
        name: a name in :data:`PUBLIC_DATASETS` ("lfw", "lfw-original", "lfw-pairs").
        root: the data folder (default :func:`default_data_dir`).
        mirror: a base URL (or folder) serving the same file names; default ``$ARCFACE_MIRROR``.
        force: fetch items again even when they are installed and verify.
        progress: show a progress report for each transfer (on stderr).
        attempts: tries per file in this run (each resumes the ``.part``).
        timeout: seconds to wait for a connection; read_timeout: for a stalled transfer.
        out: where the one-line messages go (stdout).

    Raises:
        DataError: (one line) :class:`Unreachable` when no source can be reached, :class:`DownloadError`
            for HTTP errors and broken transfers, :class:`ChecksumError` for a wrong file (deleted),
            :class:`UnsafeArchiveError` for an archive that would write outside its folder.
    """
    stream = out if out is not None else sys.stdout

    def say(msg: str) -> None:
        print(msg, file=stream, flush=True)

    ds = get_dataset(name)
    folder = Path(root if root is not None else default_data_dir()).expanduser() / ds.folder
    base = _mirror(mirror)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(folder)
    todo = []
    for item in ds.items:
        st = _item_status(item, folder, manifest)
        if st.state == "ok" and not force:
            say(f"{item.target}: present, {st.detail}")
        else:
            todo.append(item)
    if not todo:
        return folder
    _print_terms_once(ds, folder, say)
    for item in todo:
        manifest[item.target] = _fetch_item(
            item, folder, base, progress=progress, attempts=attempts, timeout=timeout,
            read_timeout=read_timeout, say=say,
        )  # fmt: skip
        _write_manifest(folder, manifest)
        extra = f", {manifest[item.target]['images']:,} images" if item.archive else ""
        say(f"{item.target}: installed in {folder} ({manifest[item.target]['verified']}{extra})")
    return folder


def describe(items: Sequence[Item]) -> str:
    """What ``items`` weigh, for a message: ``lfw-deepfunneled.tgz (about 110 MB) + 3 pair files (0.24 MB)``."""
    parts = []
    for it in items:
        if it.archive:
            n = it.expected_size()
            size = "size from the server" if n is None else f"{'' if it.size is not None else 'about '}{_mb(n)}"
            parts.append(f"{it.filename} ({size})")
    small = [it for it in items if not it.archive]
    if small:
        sizes = [it.expected_size() for it in small]
        total = f" ({_mb(sum(sizes))})" if None not in sizes else ""  # type: ignore[arg-type]
        names = small[0].filename if len(small) == 1 else f"{len(small)} files: {', '.join(i.filename for i in small)}"
        parts.append(names + total)
    return " + ".join(parts) if parts else "nothing"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:,.2f} MB"


def iter_datasets() -> Iterator[Dataset]:
    """Every registered dataset, by name."""
    for n in PUBLIC_DATASETS.names():
        yield get_dataset(n)
