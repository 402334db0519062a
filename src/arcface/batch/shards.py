"""A batch job's folder: its plan (which inputs each shard covers) and its Parquet shards. What makes a killed job
resumable and its rows exactly-once.

    JOB_DIR/
      plan.json             kind, settings, input count and digest, shard size, each shard's input range
      inputs.parquet        the inputs in order (path, identity, output): row i is input i
      shard-00000.parquet   the rows of inputs [0, 256): index, path, identity, embedding, score, landmarks, faces,
      shard-00001.parquet   output, error, message (one row per input; see SCHEMA)
      shard-00000.json      the SHA-256 and row count of its shard, recorded when the shard was finished
      ...

* A shard is written under a temporary name, synced, and renamed: a shard that exists is complete, and a re-run
  computes only the missing ones (a killed job resumes).
* Before a shard is written its rows are checked to be exactly its inputs, once each, in order, so the union of the
  shards is the job's inputs, each exactly once, however often a shard was computed.
* A folder that holds another job (other inputs, settings or shard size) is refused, never mixed.
* A shard is checked, not trusted, whenever it is read back: its digest against the one recorded when it was
  finished, its columns and types, its rows against the plan's inputs, and its values (an embedding job's rows:
  the recorded dimension, finite values, unit norm within :data:`NORM_TOLERANCE`; landmarks and scores finite;
  an align job's crop files present). A shard that fails is deleted and computed again, with a line saying why
  (:attr:`JobDir.redone`); a damaged, truncated or forged shard never reaches the output.

pyarrow is an optional dependency (the ``[ray]`` extra): it is imported where a shard is read or written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arcface.batch.failures import Failure
from arcface.batch.jobs import EMBEDDING_NORM_TOLERANCE, Item, JobError, JobSettings, Row
from arcface.io.files import atomic_path, write_bytes_atomic
from arcface.io.walk import FilePolicy, open_regular

__all__ = [
    "FORMAT", "INPUTS_NAME", "JOBS_DIR", "NORM_TOLERANCE", "PLAN_NAME", "SCHEMA", "JobDir", "Plan", "Shard",
    "open_job_dir", "rows_to_table", "table_to_rows",
]  # fmt: skip

log = logging.getLogger(__name__)

FORMAT = "arcface-batch-job/1"
PLAN_NAME = "plan.json"
INPUTS_NAME = "inputs.parquet"
#: Where jobs go by default (under the current folder): ``.arcface-jobs/KIND-DIGEST``.
JOBS_DIR = ".arcface-jobs"
# Files of the job folder are read back as regular files only (a shard has no size cap; a digest record is tiny).
_JOB_FILE = FilePolicy(follow_links=True, max_bytes=None)
_RECORD_FILE = FilePolicy(follow_links=True, max_bytes=1 << 16)
#: How far an embedding's L2 norm read back from a shard may be from 1 (the bound the workers keep).
NORM_TOLERANCE = EMBEDDING_NORM_TOLERANCE

#: The columns of a shard: name, Arrow type, what it holds.
SCHEMA: tuple[tuple[str, str, str], ...] = (
    ("index", "int64", "the input's position in the plan (inputs.parquet row)"),
    ("path", "string", "the photo"),
    ("identity", "string", "enroll: the person (folder name); else empty"),
    ("embedding", "list<float32>", "the main face's unit embedding; null for align and on failure"),
    ("score", "float64", "the main face's detector score; null on failure and for aligned crops"),
    ("landmarks", "list<float32>", "the main face's 5 (x, y) landmarks, x1 y1 ... x5 y5; null as score"),
    ("faces", "int32", "faces found in the photo (0 on failure)"),
    ("output", "string", "align: the crop file written; else empty"),
    ("error", "string", "null, or the failure's reason code (no_face, corrupt, missing, ...)"),
    ("message", "string", "null, or the failure's one-line message"),
)


def _pa():
    # optional heavy dependency (the [ray] extra): only jobs with shards need it
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise JobError("batch jobs with shards need pyarrow: pip install 'arcface[ray]'") from None
    return pa, pq


def _arrow_schema(pa):
    types = {"int64": pa.int64(), "int32": pa.int32(), "float64": pa.float64(), "string": pa.string(),
             "list<float32>": pa.list_(pa.float32())}  # fmt: skip
    return pa.schema([(name, types[kind]) for name, kind, _ in SCHEMA])


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Shard:
    """Inputs ``[start, stop)`` of a job, written as one Parquet file."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        """The shard's file name."""
        return f"shard-{self.index:05d}.parquet"

    @property
    def record_name(self) -> str:
        """The file recording the shard's digest when it was finished."""
        return f"shard-{self.index:05d}.json"

    def __len__(self) -> int:
        return self.stop - self.start


def _inputs_digest(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.path}\t{it.identity}\t{it.output}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a job is: its kind and settings, its inputs (count and digest) and how they are cut into shards."""

    kind: str
    settings: dict[str, Any]
    inputs: int
    inputs_sha256: str
    shard_size: int

    @classmethod
    def of(cls, settings: JobSettings, items: Sequence[Item], shard_size: int, extra: dict | None = None) -> Plan:
        """The plan of ``items`` under ``settings``; ``extra`` adds settings that make shards differ (the model
        contract's id)."""
        if shard_size < 1:
            raise ValueError(f"--shard-size must be positive, got {shard_size}")
        return cls(settings.kind, {**settings.describe(), **(extra or {})}, len(items), _inputs_digest(items),
                   int(shard_size))  # fmt: skip

    @property
    def digest(self) -> str:
        """A hash of the whole plan (names the default job folder)."""
        doc = json.dumps([self.kind, self.settings, self.inputs, self.inputs_sha256, self.shard_size], sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()

    @property
    def shards(self) -> list[Shard]:
        """The shards, in input order."""
        n, s = self.inputs, self.shard_size
        return [Shard(i, start, min(start + s, n)) for i, start in enumerate(range(0, n, s))]

    def default_dir(self) -> Path:
        """``.arcface-jobs/KIND-DIGEST`` under the current folder: the same command from there resumes."""
        return Path(JOBS_DIR) / f"{self.kind}-{self.digest[:12]}"

    def to_dict(self) -> dict[str, Any]:
        """The manifest (``plan.json``)."""
        return {
            "format": FORMAT, "kind": self.kind, "settings": self.settings, "inputs": self.inputs,
            "inputs_sha256": self.inputs_sha256, "shard_size": self.shard_size,
            "shards": [{"file": s.name, "start": s.start, "stop": s.stop} for s in self.shards],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Plan:
        """Read a manifest back (KeyError, TypeError on a broken one)."""
        if doc.get("format") != FORMAT:
            raise KeyError("format")
        return cls(doc["kind"], doc["settings"], int(doc["inputs"]), doc["inputs_sha256"], int(doc["shard_size"]))


# --------------------------------------------------------------------------------------------------
# Rows <-> Arrow tables


def rows_to_table(rows: Sequence[Row], start: int):
    """The shard table of ``rows`` (inputs ``start``, ``start + 1``, ...)."""
    pa, _ = _pa()

    def lists(values: list[np.ndarray | None]):
        present = [np.asarray(v, np.float32).ravel() for v in values if v is not None]
        sizes = [0 if v is None else np.asarray(v).size for v in values]
        offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
        flat = np.concatenate(present) if present else np.zeros(0, np.float32)
        mask = pa.array([v is None for v in values])
        return pa.ListArray.from_arrays(offsets, pa.array(flat, pa.float32()), mask=mask)

    columns = [
        pa.array(np.arange(start, start + len(rows), dtype=np.int64)),
        pa.array([r.path for r in rows], pa.string()),
        pa.array([r.identity for r in rows], pa.string()),
        lists([r.embedding for r in rows]),
        pa.array([r.score for r in rows], pa.float64()),
        lists([r.landmarks for r in rows]),
        pa.array([r.faces for r in rows], pa.int32()),
        pa.array([r.output for r in rows], pa.string()),
        pa.array([None if r.failure is None else r.failure.reason for r in rows], pa.string()),
        pa.array([None if r.failure is None else r.failure.message for r in rows], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=_arrow_schema(pa))


def table_to_rows(table, *, reused: bool = False) -> list[Row]:
    """The rows of a shard table."""
    cols = {name: table.column(name).to_pylist() for name, _, _ in SCHEMA if name not in ("embedding", "landmarks")}
    emb = table.column("embedding").to_pylist()
    lms = table.column("landmarks").to_pylist()
    rows = []
    for i in range(table.num_rows):
        error = cols["error"][i]
        rows.append(Row(
            path=cols["path"][i], identity=cols["identity"][i] or "",
            embedding=None if emb[i] is None else np.asarray(emb[i], np.float32),
            score=cols["score"][i],
            landmarks=None if lms[i] is None else np.asarray(lms[i], np.float32).reshape(5, 2),
            faces=int(cols["faces"][i]), output=cols["output"][i] or "",
            failure=None if error is None else Failure(cols["path"][i], error, cols["message"][i] or ""),
            reused=reused,
        ))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------
# The job folder


class JobDir:
    """An opened job folder (see :func:`open_job_dir`)."""

    def __init__(self, path: Path, plan: Plan, items: Sequence[Item], lock: Any = None) -> None:
        self.path, self.plan, self.items = path, plan, items
        self._lock = lock
        #: one line per shard that failed its check in :meth:`missing` and is computed again
        self.redone: list[str] = []

    def close(self) -> None:
        """Release the folder for another run."""
        if self._lock is not None:
            self._lock.close()  # closing the file releases its flock
            self._lock = None

    def __enter__(self) -> JobDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shard_path(self, shard: Shard) -> Path:
        """Where ``shard`` is (or will be) written."""
        return self.path / shard.name

    def record_path(self, shard: Shard) -> Path:
        """Where the digest of ``shard`` is recorded."""
        return self.path / shard.record_name

    def done(self, shard: Shard) -> bool:
        """The shard exists (it is then checked before it is used: :meth:`problem`)."""
        return self.shard_path(shard).is_file()

    def missing(self) -> list[Shard]:
        """The shards still to compute, in order. A shard file that fails its check (:meth:`problem`: a damaged
        disk, a hand edit, a forged value) is removed and counted as missing; :attr:`redone` gets one line for each,
        naming the file and why."""
        todo = []
        for shard in self.plan.shards:
            if not self.shard_path(shard).is_file():
                todo.append(shard)
                continue
            why = self.problem(shard)
            if why is not None:
                line = f"{self.shard_path(shard)}: {why}; computing it again"
                log.info("%s", line)
                self.redone.append(line)
                self.shard_path(shard).unlink(missing_ok=True)
                self.record_path(shard).unlink(missing_ok=True)
                todo.append(shard)
        return todo

    def items_of(self, shard: Shard) -> list[Item]:
        """The inputs of ``shard``."""
        return list(self.items[shard.start : shard.stop])

    def check(self, shard: Shard, table) -> None:
        """Raise :class:`JobError` unless ``table`` holds exactly the shard's inputs, once each, in order."""
        items = self.items_of(shard)
        index = table.column("index").to_numpy()
        if table.num_rows != len(items) or not np.array_equal(index, np.arange(shard.start, shard.stop)):
            raise JobError(f"{shard.name}: the rows are not inputs {shard.start}..{shard.stop - 1} once each")
        if table.column("path").to_pylist() != [it.path for it in items]:
            raise JobError(f"{shard.name}: the rows name other photos than the plan's inputs")
        if table.column("identity").to_pylist() != [it.identity for it in items]:
            raise JobError(f"{shard.name}: the rows name other identities than the plan's inputs")

    def write(self, shard: Shard, table) -> Path:
        """Check ``table`` (:meth:`check`) and write it as the shard, atomically (temporary name, fsync, rename),
        recording its digest first (so a shard in place always has its record)."""
        _, pq = _pa()
        self.check(shard, table)
        path = self.shard_path(shard)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            record = {"format": FORMAT, "file": shard.name, "rows": table.num_rows, "sha256": _sha256(tmp)}
            write_bytes_atomic(self.record_path(shard), (json.dumps(record) + "\n").encode())
        return path

    def problem(self, shard: Shard) -> str | None:
        """Why the shard on disk cannot be used (None when it passes every check): no digest recorded, a digest that
        differs from the recorded one, an unreadable file, other columns or types, rows that are not the shard's
        inputs, or values an honest run never writes (see the module)."""
        try:
            self._verified(shard)
        except JobError as e:
            return str(e).removeprefix(f"{shard.name}: ")
        return None

    def read_table(self, shard: Shard):
        """The shard's table, checked (:meth:`problem`).

        Raises:
            JobError: the shard fails a check (one line naming the file and why).
        """
        try:
            return self._verified(shard)
        except JobError as e:
            raise JobError(f"{self.shard_path(shard)}: {str(e).removeprefix(f'{shard.name}: ')}; delete it and run "
                           "the job again") from None  # fmt: skip

    def read(self, shard: Shard, *, reused: bool = False) -> list[Row]:
        """The shard's rows."""
        return table_to_rows(self.read_table(shard), reused=reused)

    def _verified(self, shard: Shard):
        """Read the shard and run every check; raises :class:`JobError` ("NAME: why")."""
        pa, pq = _pa()
        path = self.shard_path(shard)
        try:
            with open_regular(self.record_path(shard), policy=_RECORD_FILE) as f:
                record = json.loads(f.read().decode("utf-8"))
            digest = record["sha256"]
            if not isinstance(digest, str):
                raise TypeError("sha256")
        except (OSError, ValueError, KeyError, TypeError):
            raise JobError(f"{shard.name}: no digest was recorded when it was finished") from None
        try:
            if _sha256(path) != digest:
                raise JobError(f"{shard.name}: its digest differs from the one recorded when it was finished")
            table = pq.read_table(path)
        except JobError:
            raise
        except Exception as e:  # pyarrow's errors vary by damage (and span lines): one line naming the file
            raise JobError(f"{shard.name}: unreadable ({type(e).__name__}: {' '.join(str(e).split())})") from None
        if not table.schema.equals(_arrow_schema(pa), check_metadata=False):
            raise JobError(f"{shard.name}: its columns or their types are not a shard's")
        self.check(shard, table)
        why = _value_problem(table, self.plan, self.items_of(shard))
        if why is not None:
            raise JobError(f"{shard.name}: {why}")
        return table


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path, policy=_JOB_FILE) as f:  # never blocks on a FIFO put in the folder
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _list_values(column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list<float32> column as (null mask, lengths, the non-null lists' values flattened, float64)."""
    arr = column.combine_chunks()
    nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    lengths = np.asarray(arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), np.int64)
    values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float64)
    return nulls, lengths, values


def _value_problem(table, plan: Plan, items: Sequence[Item]) -> str | None:
    """What in a shard's values an honest run never writes, or None."""
    errors = table.column("error").to_pylist()
    failed = np.array([e is not None for e in errors], bool)
    if any(e is not None and not e for e in errors):
        return "a failed row without a reason"
    nulls, lengths, values = _list_values(table.column("embedding"))
    if plan.kind == "align":
        if not nulls.all():
            return "an align job's row holds an embedding"
        outputs = table.column("output").to_pylist()
        for i, item in enumerate(items):
            if not failed[i] and (outputs[i] != item.output or not os.path.isfile(item.output)):
                return f"the crop of row {i} ({item.output}) is missing or not the plan's"
    else:
        if (nulls != failed).any():
            return "an embedding is missing from a row that did not fail, or present in one that did"
        size = plan.settings.get("embedding_size")
        ok_lengths = lengths[~nulls]
        if ok_lengths.size and (ok_lengths.min() < 1 or ok_lengths.min() != ok_lengths.max()):
            return "its embeddings have different dimensions"
        if size is not None and ok_lengths.size and ok_lengths[0] != size:
            return f"its embeddings have {ok_lengths[0]} dimensions, the job records {size}"
        if not np.isfinite(values).all():
            return "an embedding holds a value that is not finite (NaN or infinite)"
        if ok_lengths.size:
            norms = np.linalg.norm(values.reshape(ok_lengths.size, -1), axis=1)
            if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
                return f"an embedding is not of unit norm (norm {norms[np.argmax(np.abs(norms - 1.0))]:.6g})"
    lm_nulls, lm_lengths, lm_values = _list_values(table.column("landmarks"))
    if (lm_lengths[~lm_nulls] != 10).any() or not np.isfinite(lm_values).all():
        return "a row's landmarks are not 5 finite points"
    scores = table.column("score").combine_chunks()
    present = ~np.asarray(scores.is_null().to_numpy(zero_copy_only=False), bool)
    if not np.isfinite(np.asarray(scores.to_numpy(zero_copy_only=False), np.float64)[present]).all():
        return "a detector score is not finite"
    faces = np.asarray(table.column("faces").to_numpy(zero_copy_only=False))
    if (faces < 0).any() or (faces[~failed] < 1).any():
        return "a row's face count is not possible"
    return None


def open_job_dir(path: str | os.PathLike, plan: Plan, items: Sequence[Item]) -> JobDir:
    """Open the job folder ``path`` for ``plan``: create it (writing ``inputs.parquet`` then ``plan.json``) or check
    that the job it holds is this one; remove temporaries that a killed run left. The folder is locked until the
    returned :class:`JobDir` is closed (a context manager), so two runs never write one job.

    Raises:
        JobError: the folder holds another job, its plan cannot be read, or another run holds it.
    """
    pa, pq = _pa()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    try:
        job = _open(folder, plan, items, pa, pq)
    except BaseException:
        lock.close()
        raise
    job._lock = lock
    return job


def _lock(folder: Path):
    """An exclusive lock on ``folder/.lock`` (released by the kernel when the process dies)."""
    f = open(folder / ".lock", "a+")  # noqa: SIM115  (held open for the job's life; closed by JobDir.close)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise JobError(f"{folder} is in use by another run of this job; wait for it or stop it") from None
    return f


def _open(folder: Path, plan: Plan, items: Sequence[Item], pa, pq) -> JobDir:
    _remove_temporaries(folder)
    plan_file = folder / PLAN_NAME
    if plan_file.is_file():
        try:
            old = Plan.from_dict(json.loads(plan_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            raise JobError(f"{plan_file}: not a job plan this version reads; remove {folder} or pass another "
                           "--job-dir") from None  # fmt: skip
        if old != plan:
            what = [name for name, a, b in (("kind", old.kind, plan.kind), ("settings", old.settings, plan.settings),
                    ("inputs", (old.inputs, old.inputs_sha256), (plan.inputs, plan.inputs_sha256)),
                    ("shard size", old.shard_size, plan.shard_size)) if a != b]  # fmt: skip
            raise JobError(f"{folder} holds another job (different {', '.join(what)}): pass another --job-dir, or "
                           "remove that folder to start over")  # fmt: skip
        if not (folder / INPUTS_NAME).is_file():
            raise JobError(f"{folder}: {INPUTS_NAME} is missing; remove the folder to start over")
        return JobDir(folder, plan, items)
    table = pa.table({
        "path": pa.array([it.path for it in items], pa.string()),
        "identity": pa.array([it.identity for it in items], pa.string()),
        "output": pa.array([it.output for it in items], pa.string()),
    })  # fmt: skip
    with atomic_path(folder / INPUTS_NAME) as tmp:
        pq.write_table(table, tmp)
    write_bytes_atomic(plan_file, (json.dumps(plan.to_dict(), indent=1) + "\n").encode())
    return JobDir(folder, plan, items)


def _remove_temporaries(folder: Path) -> None:
    """Delete what a killed run was writing (``.NAME.tmpPID.SUFFIX``, see ``atomic_path``)."""
    pattern = re.compile(r"^\..+\.tmp\d+\.(parquet|json)$")
    for f in folder.iterdir():
        if pattern.match(f.name):
            with contextlib.suppress(OSError):
                f.unlink()
