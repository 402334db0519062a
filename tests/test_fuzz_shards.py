"""Fuzz the batch jobs' Parquet shards as read back from a job folder (``arcface.batch.shards``): truncations,
garbage bytes, flipped bytes, wrong column types and NaN values. Whatever is on disk, reading it back gives either
a shard that passes every check (and then only finite unit rows) or one line saying why it is computed again;
never a traceback. Bounded: a few dozen examples per property, each a few milliseconds."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import require_module

hypothesis = require_module("hypothesis", "the dev extra")
pa = require_module("pyarrow", "the ray extra")
pq = require_module("pyarrow.parquet", "the ray extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from arcface.batch.failures import Failure  # noqa: E402
from arcface.batch.jobs import Item, JobError, JobSettings, Row  # noqa: E402
from arcface.batch.shards import Plan, open_job_dir, rows_to_table  # noqa: E402

DIM = 8
N = 6
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
ITEMS = [Item(f"/photos/p{i}.jpg", identity=f"id{i % 2}") for i in range(N)]
PLAN = Plan.of(JobSettings("embed"), ITEMS, N, {"contract": "c0ffee", "embedding_size": DIM})
SHARD = PLAN.shards[0]


def _rows() -> list[Row]:
    rng = np.random.default_rng(0)
    rows = []
    for i, it in enumerate(ITEMS):
        if i == 3:
            rows.append(Row(it.path, it.identity, failure=Failure(it.path, "no_face", f"{it.path}: no face found")))
            continue
        e = rng.normal(size=DIM).astype(np.float32)
        lms = rng.uniform(0, 250, (5, 2)).astype(np.float32)
        rows.append(Row(it.path, it.identity, e / np.linalg.norm(e), 0.99, lms, faces=1))
    return rows


def _good_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.parquet"
        pq.write_table(rows_to_table(_rows(), 0), path)
        return path.read_bytes()


GOOD = _good_bytes()


def _check(data: bytes, *, record: bool = True) -> str | None:
    """Put ``data`` in a job folder as the shard (with a matching digest record when ``record``: the forger's best
    case, so the parser and the value checks are what is tested) and read it back the ways a job does."""
    with tempfile.TemporaryDirectory() as d, open_job_dir(Path(d) / "job", PLAN, ITEMS) as job:
        path = job.shard_path(SHARD)
        path.write_bytes(data)
        if record:
            doc = {"sha256": hashlib.sha256(data).hexdigest(), "rows": N}
            job.record_path(SHARD).write_text(json.dumps(doc))
        why = job.problem(SHARD)
        assert why is None or (isinstance(why, str) and "\n" not in why and why)
        if why is None:
            rows = job.read(SHARD)
            e = np.stack([r.embedding for r in rows if r.ok])
            assert np.isfinite(e).all() and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3)
            assert job.missing() == []
        else:
            with pytest.raises(JobError) as err:
                job.read(SHARD)
            assert "\n" not in str(err.value) and SHARD.name in str(err.value)
            assert job.missing() == [SHARD] and "computing it again" in job.redone[0]
            assert not path.exists()  # removed, to be computed again
        return why


def _table_bytes(table) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.parquet"
        pq.write_table(table, path)
        return path.read_bytes()


def test_the_good_shard_passes():
    assert _check(GOOD) is None


@FUZZ
@given(st.integers(min_value=0, max_value=len(GOOD) - 1))
def test_truncated(n):
    assert _check(GOOD[:n]) is not None


@FUZZ
@given(st.binary(max_size=4096), st.booleans())
def test_garbage(data, parquet_magic):
    if parquet_magic:
        data = b"PAR1" + data + b"PAR1"
    assert _check(data) is not None


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_flipped_bytes(flips):
    data = bytearray(GOOD)
    for pos, mask in flips:
        data[pos] ^= mask
    _check(bytes(data))  # passes (a harmless flip) or is redone: never a traceback, never a bad row
    assert _check(bytes(data), record=False) is not None  # without a forged digest: always caught


_COLUMN_TYPES = {
    "index": [pa.int32(), pa.string(), pa.float64()],
    "path": [pa.large_string(), pa.binary()],
    "embedding": [pa.list_(pa.float64()), pa.list_(pa.int32()), pa.large_list(pa.float32()), pa.string()],
    "score": [pa.float32(), pa.string()],
    "landmarks": [pa.list_(pa.float64())],
    "faces": [pa.int64(), pa.float64()],
    "error": [pa.large_string()],
}


@FUZZ
@given(st.sampled_from(sorted((c, i) for c, ts in _COLUMN_TYPES.items() for i in range(len(ts)))))
def test_wrong_types(case):
    column, k = case
    table = rows_to_table(_rows(), 0)
    i = table.schema.get_field_index(column)
    target = _COLUMN_TYPES[column][k]
    try:
        values = table.column(column).cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = pa.array([None] * table.num_rows, target)
    table = table.set_column(i, pa.field(column, target), values)
    assert "columns or their types" in _check(_table_bytes(table))


@FUZZ
@given(st.sampled_from(["index", "path", "identity", "embedding", "landmarks", "error"]), st.booleans())
def test_missing_or_extra_column(column, drop):
    table = rows_to_table(_rows(), 0)
    if drop:
        table = table.remove_column(table.schema.get_field_index(column))
    else:
        table = table.append_column(column + "_extra", table.column(column))
    assert _check(_table_bytes(table)) is not None


_SPECIAL = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, 0.0, 3.4e38])


@FUZZ
@given(st.sampled_from(["embedding", "landmarks", "score"]), st.integers(0, N - 1), st.integers(0, 9), _SPECIAL)
def test_special_values(column, row, k, value):
    rows = _rows()
    if rows[row].failure is not None:
        row = 0
    r = rows[row]
    if column == "embedding":
        r.embedding = r.embedding.copy()
        r.embedding[k % DIM] = value
    elif column == "landmarks":
        r.landmarks = r.landmarks.copy()
        r.landmarks.reshape(-1)[k] = value
    else:
        r.score = value
    why = _check(_table_bytes(rows_to_table(rows, 0)))
    finite = np.isfinite(value)
    if column == "embedding":
        assert why is not None  # a changed coordinate: not finite or not unit norm
    elif not finite:
        assert why is not None
