"""The batch jobs' shards and plan (``arcface.batch.shards``), the engine options, and the one-line errors of
``--engine ray`` that need no cluster. No Ray head here: see ``test_batch_ray.py``."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from arcface.batch.engines import EngineOptions
from arcface.batch.failures import Failure
from arcface.batch.jobs import Item, JobError, JobSettings, Row
from conftest import require_module
from conftest import run_cli as cli

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "arcface" / "samples" / "grace_hopper_1.jpg"


def _needs_pyarrow() -> None:
    """pyarrow comes with the [ray] extra that ``make test`` installs: skip without it, fail under CI."""
    require_module("pyarrow", "the ray extra")


@pytest.fixture
def job(tmp_path):
    _needs_pyarrow()
    from arcface.batch.shards import Plan, open_job_dir

    items = [Item(f"/photos/p{i}.jpg", identity=f"id{i % 3}") for i in range(10)]
    plan = Plan.of(JobSettings("embed"), items, 4, {"contract": "c0ffee"})
    with open_job_dir(tmp_path / "job", plan, items) as j:
        yield j


def _rows(items, d: int = 8) -> list[Row]:
    rng = np.random.default_rng(0)
    rows = []
    for i, it in enumerate(items):
        if i % 4 == 3:
            rows.append(Row(it.path, it.identity, failure=Failure(it.path, "no_face", f"{it.path}: no face found")))
        else:
            e = rng.normal(size=d).astype(np.float32)
            lms = rng.uniform(0, 250, (5, 2)).astype(np.float32)
            rows.append(Row(it.path, it.identity, e / np.linalg.norm(e), 0.99, lms, faces=1 + i % 2))
    return rows


def test_plan_cuts_inputs_into_shards_and_names_them(job):
    plan = job.plan
    assert [(s.name, s.start, s.stop) for s in plan.shards] == [
        ("shard-00000.parquet", 0, 4), ("shard-00001.parquet", 4, 8), ("shard-00002.parquet", 8, 10),
    ]  # fmt: skip
    doc = json.loads((job.path / "plan.json").read_text())
    assert doc["inputs"] == 10 and doc["shard_size"] == 4 and doc["settings"]["contract"] == "c0ffee"
    assert [s["file"] for s in doc["shards"]] == [s.name for s in plan.shards]
    assert (job.path / "inputs.parquet").is_file()
    assert job.missing() == plan.shards
    # Align jobs do not depend on the model; embed jobs do.
    assert "model" not in JobSettings("align").describe() and "model" in JobSettings("embed").describe()


def test_shard_round_trip_is_exact_and_resume_skips_written_shards(job):
    first = job.plan.shards[0]
    rows = _rows(job.items_of(first))
    from arcface.batch.shards import rows_to_table

    job.write(first, rows_to_table(rows, first.start))
    back = job.read(first, reused=True)
    assert [r.path for r in back] == [r.path for r in rows] and all(r.reused for r in back)
    for a, b in zip(rows, back):
        assert a.identity == b.identity and a.faces == b.faces and a.failure == b.failure
        if a.ok:
            np.testing.assert_array_equal(a.embedding, b.embedding)
            np.testing.assert_array_equal(a.landmarks, b.landmarks)
            assert a.score == b.score
        else:
            assert b.embedding is None and b.landmarks is None and b.score is None
    assert job.missing() == job.plan.shards[1:]
    assert not [p for p in job.path.iterdir() if ".tmp" in p.name]  # written atomically


def test_rows_that_are_not_the_shards_inputs_are_refused(job):
    from arcface.batch.shards import rows_to_table

    first, second = job.plan.shards[:2]
    rows = _rows(job.items_of(first))
    with pytest.raises(JobError, match="once each"):
        job.write(first, rows_to_table(rows[:-1], first.start))  # a row lost
    with pytest.raises(JobError, match="once each"):
        job.write(first, rows_to_table(rows + rows[:1], first.start))  # a row twice
    with pytest.raises(JobError):
        job.write(second, rows_to_table(rows, second.start))  # another shard's photos
    assert job.missing() == job.plan.shards


def test_a_folder_holds_one_job_and_one_run(job, tmp_path):
    from arcface.batch.shards import Plan, open_job_dir

    # The same job while a run holds the folder: refused; once it is released, opened again.
    with pytest.raises(JobError, match="in use"):
        open_job_dir(job.path, job.plan, job.items)
    job.close()
    other_items = [Item(f"/photos/q{i}.jpg") for i in range(10)]
    other = Plan.of(JobSettings("embed"), other_items, 4, {"contract": "c0ffee"})
    with pytest.raises(JobError, match="holds another job .*inputs"):
        open_job_dir(job.path, other, other_items)
    bigger = Plan.of(JobSettings("embed"), job.items, 5, {"contract": "c0ffee"})
    with pytest.raises(JobError, match="shard size"):
        open_job_dir(job.path, bigger, job.items)
    stale = job.path / ".shard-00001.parquet.tmp4242.parquet"  # left by a killed run
    stale.write_bytes(b"PAR1 half")
    damaged = job.path / "shard-00002.parquet"
    damaged.write_bytes(b"not parquet")
    with open_job_dir(job.path, job.plan, job.items) as again:
        assert not stale.exists()
        assert again.missing() == again.plan.shards and not damaged.exists()  # a damaged shard is redone


def test_engine_options_are_checked():
    with pytest.raises(ValueError, match="--engine"):
        EngineOptions("spark")
    with pytest.raises(ValueError, match="--address only apply to --engine ray"):
        EngineOptions("local", address="127.0.0.1:6379")
    with pytest.raises(ValueError, match="--actor-cpus"):
        EngineOptions("ray", actor_cpus=0)
    with pytest.raises(ValueError, match="--shard-size"):
        EngineOptions("ray", shard_size=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_engine_errors_are_one_line(capsys, tmp_path, monkeypatch):
    out = tmp_path / "e.npz"
    # Nothing listens at the address: one line naming it, before any model is loaded or Ray is started.
    _needs_pyarrow()
    require_module("ray", "the ray extra")
    addr = f"127.0.0.1:{_free_port()}"
    rc, _, err = cli(capsys, "embed", SAMPLE, "--out", out, "--engine", "ray", "--address", addr, "--no-progress")
    assert rc == 1 and f"--address {addr}" in err and "no Ray cluster answers" in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "embed", SAMPLE, "--out", out, "--engine", "ray", "--address", "nonsense")
    assert rc == 1 and "HOST:PORT" in err and err.count("\n") == 1
    # Ray options without --engine ray.
    rc, _, err = cli(capsys, "embed", SAMPLE, "--out", out, "--address", addr)
    assert rc == 1 and "only apply to --engine ray" in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "align", SAMPLE.parent, tmp_path / "a", "--engine", "ray", "--actors", "0")
    assert rc == 1 and "--actors" in err and err.count("\n") == 1
    # Ray not installed: one line saying what to install (for each batch command).
    monkeypatch.setitem(sys.modules, "ray", None)
    for args in (["embed", SAMPLE, "--out", out], ["align", SAMPLE.parent, tmp_path / "a"],
                 ["gallery", "enroll", tmp_path, "--gallery", tmp_path / "g"]):  # fmt: skip
        if args[0] == "gallery":
            (tmp_path / "Grace_Hopper").mkdir(exist_ok=True)
            (tmp_path / "Grace_Hopper" / SAMPLE.name).write_bytes(SAMPLE.read_bytes())
        rc, _, err = cli(capsys, *args, "--engine", "ray", "--no-progress")
        assert rc == 1 and "pip install 'arcface[ray]'" in err and err.count("\n") == 1, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# Shards read back are checked, not trusted


def _rewrite(path: Path, column: str, fn, *, forge_record: bool = False) -> None:
    """Replace one column of a written shard (index and paths kept); with ``forge_record`` the digest record is
    rewritten to match, so that only the value checks can notice."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i), fn(table.column(column)))
    pq.write_table(table, path)
    if forge_record:
        record = path.with_suffix(".json")
        doc = json.loads(record.read_text())
        doc["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        record.write_text(json.dumps(doc))
    assert pa  # imported for the callers' lambdas' types


def _scaled(factor: float):
    import pyarrow as pa

    def fn(col):
        values = [None if v is None else [x * factor for x in v] for v in col.to_pylist()]
        return pa.array(values, pa.list_(pa.float32()))

    return fn


@pytest.fixture
def sized_job(tmp_path):
    """A job whose plan records an 8-D model (as embed and enroll record their model's size)."""
    _needs_pyarrow()
    from arcface.batch.shards import Plan, open_job_dir, rows_to_table

    items = [Item(f"/photos/p{i}.jpg", identity=f"id{i % 3}") for i in range(10)]
    plan = Plan.of(JobSettings("embed"), items, 4, {"contract": "c0ffee", "embedding_size": 8})
    with open_job_dir(tmp_path / "job", plan, items) as j:
        for shard in plan.shards:
            j.write(shard, rows_to_table(_rows(j.items_of(shard)), shard.start))
        assert j.missing() == [] and j.redone == []
        yield j


@pytest.mark.parametrize(
    ("damage", "forge", "why"),
    [
        (_scaled(float("nan")), False, "digest differs"),
        (_scaled(float("nan")), True, "not finite"),
        (_scaled(1e30), False, "digest differs"),
        (_scaled(1e30), True, "not of unit norm (norm 1e+30)"),
        (_scaled(1e3), True, "not of unit norm"),
        (_scaled(0.0), True, "not of unit norm"),
    ],
)
def test_a_shard_with_forged_embeddings_is_computed_again(sized_job, damage, forge, why):
    path = sized_job.shard_path(sized_job.plan.shards[1])
    _rewrite(path, "embedding", damage, forge_record=forge)
    assert sized_job.missing() == [sized_job.plan.shards[1]]
    assert len(sized_job.redone) == 1 and why in sized_job.redone[0] and "computing it again" in sized_job.redone[0]
    assert not path.exists() and not path.with_suffix(".json").exists()


def test_other_damage_is_computed_again(sized_job):
    import pyarrow as pa

    s0, s1, s2 = sized_job.plan.shards
    p0, p1, p2 = (sized_job.shard_path(s) for s in (s0, s1, s2))
    p0.write_bytes(p0.read_bytes()[: p0.stat().st_size // 2])  # truncated
    _rewrite(p1, "embedding", lambda c: pa.array([None if v is None else v[:7] for v in c.to_pylist()],
                                                  pa.list_(pa.float32())), forge_record=True)  # fmt: skip
    p2.with_suffix(".json").unlink()  # finished by a version that recorded no digest, or the record lost
    assert sized_job.missing() == [s0, s1, s2]
    lines = "\n".join(sized_job.redone)
    assert "shard-00000.parquet: its digest differs" in lines
    assert "shard-00001.parquet: its embeddings have 7 dimensions, the job records 8" in lines
    assert "shard-00002.parquet: no digest was recorded" in lines


def test_a_forged_shard_is_never_read_as_rows(sized_job):
    import pyarrow as pa

    from arcface.batch.shards import rows_to_table

    shard = sized_job.plan.shards[0]
    _rewrite(sized_job.shard_path(shard), "embedding", _scaled(float("nan")), forge_record=True)
    with pytest.raises(JobError, match=r"shard-00000.parquet: .*not finite.*run the job again"):
        sized_job.read(shard)
    n = len(shard)
    forged = {
        "score": (pa.array([float("inf")] * n, pa.float64()), "score is not finite"),
        "landmarks": (pa.array([[0.0] * 9] * n, pa.list_(pa.float32())), "landmarks are not 5 finite points"),
        "faces": (pa.array([-1] * n, pa.int32()), "face count"),
    }
    for column, (values, why) in forged.items():
        sized_job.write(shard, rows_to_table(_rows(sized_job.items_of(shard)), shard.start))
        _rewrite(sized_job.shard_path(shard), column, lambda c, v=values: v, forge_record=True)
        assert why in sized_job.problem(shard)


def test_an_align_shard_names_crops_that_exist(tmp_path):
    _needs_pyarrow()
    from arcface.batch.shards import Plan, open_job_dir, rows_to_table

    items = [Item(f"/photos/p{i}.jpg", output=str(tmp_path / f"crop{i}.png")) for i in range(3)]
    plan = Plan.of(JobSettings("align"), items, 3)
    with open_job_dir(tmp_path / "job", plan, items) as job:
        shard = plan.shards[0]
        rows = [Row(it.path, output=it.output, score=0.9, landmarks=np.zeros((5, 2), np.float32), faces=1)
                for it in items]  # fmt: skip
        for it in items:
            Path(it.output).write_bytes(b"png")
        job.write(shard, rows_to_table(rows, 0))
        assert job.missing() == []
        Path(items[1].output).unlink()  # a crop deleted since: the shard is redone, the crop written again
        assert job.missing() == [shard] and "crop of row 1" in job.redone[0]
