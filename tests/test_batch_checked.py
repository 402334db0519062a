"""A resumed batch job checks what it reads back from its job folder: shards forged with NaN or huge embeddings, or
truncated, are computed again with a line saying so, and the output holds only finite unit rows.

The job runs through the real CLI (``arcface embed --engine ray --job-dir``) with the Ray engine's cluster part
replaced by the same per-image work in this process, so no Ray head is started here (``test_batch_ray.py`` runs the
real cluster)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import require_module, run_cli

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "arcface" / "samples"


@pytest.fixture
def local_ray(monkeypatch):
    """The Ray engine with its shards computed by a Worker in this process (no cluster)."""
    require_module("pyarrow", "the ray extra")
    require_module("ray", "the ray extra")
    from arcface.batch import ray_engine
    from arcface.batch.jobs import Worker
    from arcface.batch.shards import rows_to_table

    def compute(ray, job, todo, settings, options, report, progress_bar):
        worker = Worker(settings)
        for shard in todo:
            job.write(shard, rows_to_table(worker.run(job.items_of(shard)), shard.start))
            report.shards_computed += 1

    monkeypatch.setattr(ray_engine, "_connect", lambda ray, address: False)
    monkeypatch.setattr(ray_engine, "_compute", compute)


def _scale(path: Path, factor: float, *, forge_digest: bool) -> None:
    """Scale a shard's embeddings, index and paths kept; with ``forge_digest`` the forged file's digest is recorded as
    its own (so only the value checks can notice), else the recorded digest is left as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    i = table.schema.get_field_index("embedding")
    values = [None if v is None else [x * factor for x in v] for v in table.column("embedding").to_pylist()]
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(values, pa.list_(pa.float32()))), path)
    if forge_digest:
        record = path.with_suffix(".json")
        doc = json.loads(record.read_text())
        doc["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        record.write_text(json.dumps(doc))


def test_nan_huge_and_truncated_shards_are_computed_again(local_ray, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("grace_hopper_1.jpg", "grace_hopper_2.jpg", "eileen_collins.jpg", "x.jpg"):
        shutil.copy(SAMPLES / name if name != "x.jpg" else SAMPLES / "grace_hopper_1.jpg", photos / name)
    job = tmp_path / "job"
    args = ("embed", photos, "--engine", "ray", "--job-dir", job, "--shard-size", "1", "--no-progress")
    rc, out, err = run_cli(capsys, *args, "--out", tmp_path / "first.npz")
    assert rc == 0, err
    first = np.load(tmp_path / "first.npz")
    assert len(first["paths"]) == 4

    shards = sorted(job.glob("shard-*.parquet"))
    _scale(shards[0], float("nan"), forge_digest=True)
    _scale(shards[1], 1e30, forge_digest=True)
    _scale(shards[2], float("nan"), forge_digest=False)
    shards[3].write_bytes(shards[3].read_bytes()[:100])  # truncated

    rc, out, err = run_cli(capsys, *args, "--out", tmp_path / "again.npz")
    assert rc == 0, err
    lines = [line for line in err.splitlines() if "computing it again" in line]
    assert len(lines) == 4, err
    assert "shard-00000.parquet: an embedding holds a value that is not finite" in lines[0]
    assert "shard-00001.parquet: an embedding is not of unit norm" in lines[1]
    assert "shard-00002.parquet: its digest differs" in lines[2]
    assert "shard-00003.parquet: its digest differs" in lines[3]
    assert "4 shard(s) failed their check and were computed again" in out
    again = np.load(tmp_path / "again.npz")
    e = again["embeddings"]
    assert len(e) == 4 and np.isfinite(e).all()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(e, first["embeddings"], atol=1e-5)

    # a third run finds every shard sound: nothing computed, nothing said
    rc, out, err = run_cli(capsys, *args, "--out", tmp_path / "third.npz")
    assert rc == 0 and "computing it again" not in err and "all done earlier" in out


def test_align_resumes_only_from_crops_that_pass_their_check(tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos" / "p"
    photos.mkdir(parents=True)
    for name in ("grace_hopper_1.jpg", "grace_hopper_2.jpg", "eileen_collins.jpg"):
        shutil.copy(SAMPLES / name, photos / name)
    dst = tmp_path / "crops"
    rc, out, err = run_cli(capsys, "align", photos.parent, dst, "--workers", "1", "--no-progress")
    assert rc == 0 and "aligned 3 of 3" in out, err
    a, b, c = (dst / "p" / f"{n}.png" for n in ("eileen_collins", "grace_hopper_1", "grace_hopper_2"))
    a.write_bytes(a.read_bytes()[:200])  # truncated
    Image.new("RGB", (50, 50)).save(b)  # another size
    before = c.stat().st_mtime_ns

    rc, out, err = run_cli(capsys, "align", photos.parent, dst, "--workers", "1", "--no-progress")
    assert rc == 0, err
    assert "aligned 2 of 3" in out and "1 already done" in out
    assert f"{a}: not a finished crop" in err and f"{b}: not a finished crop (50x50 pixels, not 112x112)" in err
    for p in (a, b):
        with Image.open(p) as im:
            assert im.size == (112, 112)
    assert c.stat().st_mtime_ns == before
