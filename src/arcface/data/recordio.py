"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx``) in pure Python, no mxnet.

File layout (dmlc-core ``recordio.h``, little-endian), one record after another::

    uint32 magic = 0xced7230a
    uint32 lrecord          upper 3 bits: cflag, lower 29 bits: length of this part
    byte   data[length]     then zero padding up to a multiple of 4

A record whose payload contains the magic word at a 4-byte aligned position is split there into
parts (cflag 1 = first, 2 = middle, 3 = last; 0 = whole record); the reader joins the parts with the
magic word put back. The ``.idx`` file is text, one ``key<TAB>offset`` line per record
(``MXIndexedRecordIO``).

A payload (``mx.recordio.pack``) is an ``IRHeader`` struct ``'IfQQ'`` (flag, label, id, id2, 24 bytes),
then ``flag`` float32 labels when flag > 0 (the scalar label is then unused), then the encoded image.

insightface layout: record 0 is a header whose labels are ``(N + 1, N + 1 + C)`` for N images with
keys 1..N and C identity records with keys N+1..N+C, each holding the ``[first, end)`` key range of
one identity's images. Image records carry the class as a float label (flag 0) or as the first of
their float labels (flag > 0). Images decode to RGB.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from arcface.data.base import DATASETS, FaceDataset, Transform
from arcface.io.images import load_image
from arcface.runtime.untrusted import BadFileError, reading

__all__ = [
    "MAGIC",
    "IRHeader",
    "RecordIODataset",
    "RecordIOError",
    "RecordIOReader",
    "RecordIOWriter",
    "pack",
    "unpack",
]

logger = logging.getLogger("arcface.data")

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2 (24 bytes, same as native 'IfQQ' on x86/arm)
_LEN_MASK = (1 << 29) - 1
_HAS_PREAD = hasattr(os, "pread")


class RecordIOError(BadFileError):
    """A malformed RecordIO file, record, or index."""


#: Most identities a RecordIO dataset may declare: more than any public face dataset, few enough that a crafted
#: header cannot make the classifier (one row per identity) allocate without bound.
MAX_CLASSES = 10_000_000


class IRHeader(NamedTuple):
    """The image-record header of ``mx.recordio`` (``'IfQQ'``).

    ``label`` is a float when ``flag == 0`` and a float32 array of ``flag`` values otherwise.
    """

    flag: int
    label: Any
    id: int
    id2: int


# --------------------------------------------------------------------------------------------
# payloads (mx.recordio.pack / unpack)
# --------------------------------------------------------------------------------------------
def pack(header: IRHeader | tuple[Any, Any, int, int], data: bytes) -> bytes:
    """Pack a header and image bytes into one record payload, as ``mx.recordio.pack`` does.

    A scalar label is stored in the struct (flag 0); a sequence of labels is stored as float32
    values after the struct, with flag = their count.
    """
    flag, label, id_, id2 = header
    if np.ndim(label) == 0:
        head = _IR.pack(0, float(label), int(id_), int(id2))
        return head + bytes(data)
    labels = np.asarray(label, dtype="<f4").ravel()
    head = _IR.pack(int(labels.size), 0.0, int(id_), int(id2))
    return head + labels.tobytes() + bytes(data)


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split a record payload into its ``IRHeader`` and the remaining (image) bytes.

    Raises:
        RecordIOError: the payload is shorter than its header says.
    """
    if len(payload) < _IR.size:
        raise RecordIOError(f"record payload of {len(payload)} bytes is shorter than its 24-byte header")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    rest = payload[_IR.size :]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise RecordIOError(f"record header announces {flag} labels but only {len(rest)} bytes follow")
        label = np.frombuffer(rest, dtype="<f4", count=flag).copy()
        rest = rest[4 * flag :]
    return IRHeader(flag, label, id_, id2), rest


def _frame(payload: bytes) -> bytes:
    """Frame a payload as dmlc's ``RecordIOWriter::WriteRecord`` does (split at aligned magics)."""
    n = len(payload)
    if n >= 1 << 29:
        raise RecordIOError(f"a RecordIO record holds less than 2^29 bytes, got {n}")
    words = np.frombuffer(payload, dtype="<u4", count=n // 4)
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    out = bytearray()
    start = 0
    for cut in cuts:
        out += _FRAME.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (cut - start))
        out += payload[start:cut]
        start = cut + 4
    out += _FRAME.pack(MAGIC, ((3 if cuts else 0) << 29) | (n - start))
    out += payload[start:]
    out += b"\0" * (-n % 4)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _read_index(path_idx: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``key<TAB>offset`` lines into (keys, offsets) int64 arrays, in file order."""
    with reading(path_idx, "not a RecordIO index of integer 'key offset' lines", RecordIOError):
        fields = np.array(path_idx.read_bytes().split())
        table = fields.astype(np.int64)
    if table.size % 2:
        raise RecordIOError(f"{path_idx}: odd number of fields; expected 'key<TAB>offset' lines")
    table = table.reshape(-1, 2)
    if table.size and table[:, 1].min() < 0:
        raise RecordIOError(f"{path_idx}: a negative record offset {int(table[:, 1].min())}")
    return table[:, 0].copy(), table[:, 1].copy()


def _label(header: IRHeader) -> int:
    """The class label of an image record: a whole number in ``[0, MAX_CLASSES)``."""
    value = float(header.label if header.flag == 0 else header.label[0])
    if not (0 <= value < MAX_CLASSES and value.is_integer()):
        raise RecordIOError(f"record label {value!r} is not a class number in [0, {MAX_CLASSES})")
    return int(value)


class RecordIOReader:
    """Random access to the records of an indexed RecordIO file (``MXIndexedRecordIO`` 'r').

    The file is opened lazily in the process that reads, and reopened after a fork; pickling
    carries only the paths and the index, so the reader can go to DataLoader workers.

    Args:
        path_rec: the ``.rec`` file.
        path_idx: its ``.idx`` file; default ``path_rec`` with the suffix ``.idx``.

    Attributes:
        keys: int64 array of the record keys, in ``.idx`` order.
        offsets: int64 array of the matching byte offsets.
    """

    def __init__(self, path_rec: str | os.PathLike[str], path_idx: str | os.PathLike[str] | None = None):
        self.path_rec = Path(path_rec)
        self.path_idx = Path(path_idx) if path_idx is not None else self.path_rec.with_suffix(".idx")
        if not self.path_rec.is_file():
            raise FileNotFoundError(f"RecordIO file {self.path_rec} does not exist")
        if not self.path_idx.is_file():
            raise FileNotFoundError(
                f"RecordIO index {self.path_idx} does not exist (pass path_idx, or create it when packing)"
            )
        self.keys, self.offsets = _read_index(self.path_idx)
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._sorted_offsets = self.offsets[order]
        self._file_size = self.path_rec.stat().st_size
        self._fh: IO[bytes] | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (int, np.integer)):
            return False
        try:
            self.offset(int(key))
        except KeyError:
            return False
        return True

    def offset(self, key: int) -> int:
        """Byte offset of record ``key``; KeyError when the index lacks it."""
        pos = int(np.searchsorted(self._sorted_keys, key))
        if pos >= len(self._sorted_keys) or self._sorted_keys[pos] != key:
            raise KeyError(f"record key {key} is not in {self.path_idx}")
        return int(self._sorted_offsets[pos])

    # file handling: one handle per process; os.pread keeps reads thread-safe without a lock.
    def _file(self) -> IO[bytes]:
        pid = os.getpid()
        if self._fh is None or self._pid != pid:
            self._fh = open(self.path_rec, "rb", buffering=0)  # noqa: SIM115 (kept open across reads)
            self._pid = pid
        return self._fh

    def _pread(self, n: int, offset: int) -> bytes:
        fh = self._file()
        if _HAS_PREAD:
            return os.pread(fh.fileno(), n, offset)
        with self._lock:
            fh.seek(offset)
            return fh.read(n)

    def read_at(self, offset: int) -> bytes:
        """Read the record payload that starts at byte ``offset`` (parts joined).

        Raises:
            RecordIOError: bad magic, a truncated record, or inconsistent part flags.
        """
        parts: list[bytes] = []
        pos = offset
        while True:
            head = self._pread(_FRAME.size, pos)
            if len(head) < _FRAME.size:
                raise RecordIOError(f"truncated record header at offset {pos} of {self.path_rec}")
            magic, lrec = _FRAME.unpack(head)
            if magic != MAGIC:
                raise RecordIOError(
                    f"bad magic 0x{magic:08x} at offset {pos} of {self.path_rec} (expected 0x{MAGIC:08x})"
                )
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag not in ((0, 1) if not parts else (2, 3)):
                raise RecordIOError(
                    f"unexpected part flag {cflag} at offset {pos} of {self.path_rec}"
                    + (" (a record must start with flag 0 or 1)" if not parts else " (inside a split record)")
                )
            if pos + _FRAME.size + length > self._file_size:
                raise RecordIOError(
                    f"truncated record at offset {pos} of {self.path_rec}: {length} bytes announced, "
                    f"{max(0, self._file_size - pos - _FRAME.size)} left in the file"
                )
            data = self._pread(length, pos + _FRAME.size)
            if len(data) < length:
                raise RecordIOError(
                    f"truncated record at offset {pos} of {self.path_rec}: {len(data)} of {length} bytes"
                )
            parts.append(data)
            pos += _FRAME.size + length + (-length % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def read_idx(self, key: int) -> bytes:
        """Read the payload of record ``key`` (``MXIndexedRecordIO.read_idx``).

        Raises:
            RecordIOError: the key is not indexed, or the record is malformed.
        """
        try:
            offset = self.offset(key)
        except KeyError as e:
            raise RecordIOError(str(e.args[0])) from None
        return self.read_at(offset)

    def close(self) -> None:
        """Close the file handle of this process (reopened on the next read)."""
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None and getattr(self, "_pid", None) == os.getpid():
            fh.close()


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
class RecordIOWriter:
    """Write an indexed RecordIO file (``MXIndexedRecordIO`` 'w'): ``.rec`` plus ``.idx``.

    Use as a context manager; each :meth:`write_idx` appends one record and one index line.

    Args:
        path_rec: the ``.rec`` file to create (overwritten).
        path_idx: its ``.idx`` file; default ``path_rec`` with the suffix ``.idx``.
    """

    def __init__(self, path_rec: str | os.PathLike[str], path_idx: str | os.PathLike[str] | None = None):
        self.path_rec = Path(path_rec)
        self.path_idx = Path(path_idx) if path_idx is not None else self.path_rec.with_suffix(".idx")
        self._rec = open(self.path_rec, "wb")  # noqa: SIM115 (closed in close())
        self._idx = open(self.path_idx, "w", encoding="ascii")  # noqa: SIM115
        self._offsets: dict[int, tuple[int, int]] = {}  # key -> (offset, framed size)

    def write_idx(self, key: int, payload: bytes) -> int:
        """Append ``payload`` as record ``key``; return its byte offset.

        Raises:
            ValueError: ``key`` was written before.
        """
        key = int(key)
        if key in self._offsets:
            raise ValueError(f"record key {key} written twice to {self.path_rec}")
        offset = self._rec.tell()
        framed = _frame(payload)
        self._rec.write(framed)
        self._idx.write(f"{key}\t{offset}\n")
        self._offsets[key] = (offset, len(framed))
        return offset

    def overwrite(self, key: int, payload: bytes) -> None:
        """Replace the payload of the already written record ``key`` in place.

        The new record must frame to exactly the old size (e.g. a header written first as a
        placeholder and filled in once the counts are known).

        Raises:
            KeyError: ``key`` was not written.
            ValueError: the new record has another size.
        """
        key = int(key)
        if key not in self._offsets:
            raise KeyError(f"record key {key} was not written to {self.path_rec}")
        offset, size = self._offsets[key]
        framed = _frame(payload)
        if len(framed) != size:
            raise ValueError(f"record {key} is {size} bytes on disk; the new one would be {len(framed)}")
        end = self._rec.tell()
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(end)

    def close(self) -> None:
        """Flush and close both files."""
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------
@DATASETS.register("recordio")
class RecordIODataset(FaceDataset):
    """Images in an insightface RecordIO pair (``train.rec`` + ``train.idx``), read without mxnet.

    When record 0 is an insightface header (flag > 0, labels, no image bytes), the images are keys
    ``1 .. header.label[0] - 1``; otherwise every key of the ``.idx`` is an image, in index order.

    Args:
        path_rec: the ``.rec`` file, or a folder holding ``train.rec`` and ``train.idx``.
        path_idx: the ``.idx`` file; default ``path_rec`` with the suffix ``.idx``.
        image_size: resize to (image_size, image_size) when an image differs; None keeps its size.
        center_crop: side of the central square cut before resizing; None keeps the whole image.
        transform: uint8 (H, W, 3) RGB -> tensor; default the standard train transform.
        num_classes: number of identities; default from the header's identity range
            (``label[1] - label[0]``), else ``max(label) + 1`` over all records (reads every header).

    Attributes:
        reader: the :class:`RecordIOReader`.
        header0: ``(label[0], label[1])`` of the insightface header record, or None.
        imgidx: int64 array; ``imgidx[i]`` is the record key of item ``i``.
    """

    def __init__(
        self,
        path_rec: str | os.PathLike[str],
        path_idx: str | os.PathLike[str] | None = None,
        image_size: int | None = 112,
        center_crop: int | None = None,
        transform: Transform | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(image_size=image_size, center_crop=center_crop, transform=transform)
        if Path(path_rec).is_dir():
            folder = Path(path_rec)
            path_rec = folder / "train.rec"
            path_idx = folder / "train.idx" if path_idx is None else path_idx
        self.reader = RecordIOReader(path_rec, path_idx)
        self.header0: tuple[int, int] | None = None
        with reading(self.reader.path_rec, "not a readable RecordIO dataset", RecordIOError):
            header = self._read_header0()
            if header is not None:
                self.header0 = self._header_range(header)
                self.imgidx = np.arange(1, self.header0[0], dtype=np.int64)
            else:
                self.imgidx = self.reader.keys.copy()
            if len(self.imgidx) == 0:
                raise ValueError(f"{self.reader.path_rec} holds no image records")
            if num_classes is None:
                num_classes = self._infer_num_classes()
        self.num_classes = int(num_classes)

    def _header_range(self, header: IRHeader) -> tuple[int, int]:
        """insightface's header record ``(first identity key, end)``, checked against the index before any array
        is sized by it: images are keys ``1 .. first - 1`` and identities ``first .. end - 1``, all indexed."""
        labels = np.atleast_1d(header.label).astype(np.float64)
        first = float(labels[0])
        end = float(labels[1]) if labels.size > 1 else first
        n = len(self.reader)
        if not (np.isfinite([first, end]).all() and first.is_integer() and end.is_integer() and 1 <= first <= end):
            raise RecordIOError(f"{self.reader.path_rec}: header record 0 has a bad identity range ({first}, {end})")
        if first - 1 > n or end - first > n:
            raise RecordIOError(
                f"{self.reader.path_rec}: header record 0 announces {int(first) - 1} images and {int(end - first)} "
                f"identities, more than the {n} records in {self.reader.path_idx}"
            )
        return int(first), int(end)

    def _read_header0(self) -> IRHeader | None:
        if 0 not in self.reader:
            return None
        try:
            header, rest = unpack(self.reader.read_idx(0))
        except RecordIOError as e:
            logger.warning("%s: record 0 is unreadable (%s); treating every key as an image", self.reader.path_rec, e)
            return None
        # insightface's header has labels and no image; an image record 0 (plain im2rec) has bytes
        if header.flag == 0 or rest or header.label[0] < 1:
            return None
        return header

    def _infer_num_classes(self) -> int:
        if self.header0 is not None and self.header0[1] > self.header0[0]:
            return self.header0[1] - self.header0[0]
        logger.info("%s: no identity records; reading every record header for num_classes", self.reader.path_rec)
        top = -1
        for key in self.imgidx.tolist():
            try:
                header, _ = unpack(self.reader.read_idx(key))
            except RecordIOError:
                continue  # reported when the item is read
            try:
                top = max(top, _label(header))
            except RecordIOError:
                continue  # reported when the item is read
        if top < 0:
            raise ValueError(f"{self.reader.path_rec}: no readable record to infer num_classes from")
        return top + 1

    def __len__(self) -> int:
        return len(self.imgidx)

    def _source(self, index: int) -> str:
        key = int(self.imgidx[index])
        try:
            where = f"offset {self.reader.offset(key)}"
        except KeyError:
            where = "not in the index"
        return f"{self.reader.path_rec} record {key} ({where})"

    def _read(self, index: int) -> tuple[np.ndarray, int]:
        header, img = unpack(self.reader.read_idx(int(self.imgidx[index])))
        label = _label(header)
        if not img:
            raise RecordIOError("record holds no image bytes (an identity or header record?)")
        return load_image(img, name=f"record {int(self.imgidx[index])}"), label

    def identity_ranges(self) -> list[tuple[int, int]]:
        """The ``[first, end)`` image-key range of every identity, from insightface's identity records.

        Returns an empty list when the file has no header or no identity records.
        """
        if self.header0 is None:
            return []
        ranges = []
        with reading(self.reader.path_rec, "not a readable identity record", RecordIOError):
            for key in range(self.header0[0], self.header0[1]):
                header, _ = unpack(self.reader.read_idx(key))
                labels = np.atleast_1d(header.label)
                ranges.append((int(labels[0]), int(labels[1])))
        return ranges

    def __repr__(self) -> str:
        return (
            f"RecordIODataset(path_rec={str(self.reader.path_rec)!r}, images={len(self)}, "
            f"classes={self.num_classes}, image_size={self.image_size}, center_crop={self.center_crop})"
        )
