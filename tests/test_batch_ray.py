"""``--engine ray`` against a real Ray head node on 127.0.0.1, started once for this module.

The jobs run through the real console (``python -m arcface ... --engine ray --address 127.0.0.1:PORT``) in their own
processes, so a test can kill an actor's process or the driver itself, by PID:

* the output equals the single-process run (cosine >= 0.9999, same paths, same failures) on 300 LFW photos;
* an actor killed mid-run loses and duplicates no row (its shards are handed out again; 150 of the photos);
* a driver killed mid-run is resumed by the same command: only the missing shards are computed (120 photos);
* ``gallery enroll`` and ``align`` give what the local engine gives (on the package's sample photos, no ../shared).

The head gets its own temporary folder and free ports (nothing fixed, nothing beyond 127.0.0.1: the node's address is
loopback), and is stopped at the end by killing its processes by PID (``ray stop`` would stop every Ray on the
machine). Ray and pyarrow come with the [ray] extra that ``make test`` installs: skipped without them, failed under
CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from arcface.cli import main
from conftest import require_module, require_shared

LFW = "data/lfw/lfw-deepfunneled"
N_PHOTOS = 300
SAMPLES = Path(__file__).resolve().parents[1] / "src" / "arcface" / "samples"
ACTOR_TITLE = "ray::ArcfaceBatchActor"

pytestmark = pytest.mark.slow


def _needs_ray() -> None:
    require_module("pyarrow", "the ray extra")
    require_module("ray", "the ray extra")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Processes, by PID


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a for a in raw.decode(errors="replace").split("\0") if a]


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _started(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot), or -1."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Head:
    address: str
    temp: Path
    env: dict[str, str]

    def processes(self) -> list[int]:
        """The head's own processes (their command lines name its temporary folder or its address) and their
        children."""
        own = {pid for pid in _pids() if any(str(self.temp) in a or self.address in a for a in _cmdline(pid))}
        return sorted(own | {pid for pid in _pids() if _ppid(pid) in own})

    def actors(self, driver: int) -> list[int]:
        """PIDs of the batch actors that the job of ``driver`` (a PID) runs on this head: children of its raylet,
        titled after the actor class, started after the driver (not the last job's actors on their way out)."""
        raylets = {pid for pid in _pids() if (cmd := _cmdline(pid)) and cmd[0].endswith("raylet")
                   and any(str(self.temp) in a for a in cmd)}  # fmt: skip
        since = _started(driver)
        return [pid for pid in _pids() if _ppid(pid) in raylets and _alive(pid) and _started(pid) >= since
                and " ".join(_cmdline(pid)).startswith(ACTOR_TITLE)]  # fmt: skip


@pytest.fixture(scope="module")
def head():
    """A Ray head node on 127.0.0.1 with 2 CPUs, its own temp folder and free ports; stopped by PID at the end."""
    _needs_ray()
    temp = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           # the node's address is loopback (else Ray picks the machine's outward address for the node)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # token authentication with a token of this head's own, whatever ~/.ray/auth_token holds
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--ray-client-server-port", str(_free_port()), "--dashboard-port", str(_free_port()),
        "--dashboard-agent-listen-port", str(_free_port()), "--num-cpus", "2", "--include-dashboard=false",
        "--disable-usage-stats", "--temp-dir", str(temp), "--object-store-memory", str(200 * 1024 * 1024),
    ]  # fmt: skip
    h = Head(f"127.0.0.1:{port}", temp, env)
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, f"ray start failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        yield h
    finally:
        _stop(h)
        shutil.rmtree(temp, ignore_errors=True)


def _stop(h: Head) -> None:
    pids = h.processes()
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# Jobs


def _console(h: Head, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "arcface", *map(str, args), "--engine", "ray", "--address", h.address,
           "--no-progress"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=h.env, cwd=cwd, timeout=timeout)


def _start(h: Head, *args, cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "arcface", *map(str, args), "--engine", "ray", "--address", h.address,
           "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=h.env, cwd=cwd)


def _wait_for_shards(job: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shards = sorted(job.glob("shard-*.parquet"))
        if len(shards) >= n:
            return shards
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended before {n} shards were written:\n{out}\n{err}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {n} shards in {job} within {timeout} s")


def _shard_indices(job: Path) -> list[int]:
    import pyarrow.parquet as pq

    tables = [pq.read_table(f, columns=["index"]) for f in sorted(job.glob("shard-*.parquet"))]
    return [i for t in tables for i in t["index"].to_pylist()]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A list file of 300 LFW photos plus a text file named .jpg and a missing file (failures on both engines)."""
    lfw = require_shared(LFW)
    root = tmp_path_factory.mktemp("ray_photos")
    paths = sorted(lfw.rglob("*.jpg"))[:N_PHOTOS]
    broken = root / "broken.jpg"
    broken.write_text("this is not a photo\n")
    paths[7:7] = [broken]
    paths[150:150] = [root / "missing.jpg"]
    lst = root / "photos.txt"
    lst.write_text("".join(f"{p}\n" for p in paths))
    return lst, paths


@pytest.fixture(scope="module")
def local_npz(photos, tmp_path_factory) -> Path:
    """The single-process run (today's ``arcface embed``, the local engine) of the same photos: the reference. In a
    process of its own with one thread, as each actor runs (two OpenMP threads on two busy cores crawl)."""
    out = tmp_path_factory.mktemp("ray_local") / "local.npz"
    cmd = [sys.executable, "-m", "arcface", "embed", str(photos[0]), "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def _assert_same_embeddings(ray_npz: Path, local_npz: Path, subset: list[str] | None = None) -> None:
    with np.load(ray_npz) as r, np.load(local_npz) as loc:
        ref = dict(zip(loc["paths"].tolist(), loc["embeddings"]))
        ref_errors = {tuple(e) for e in loc["errors"].tolist()}
        paths = r["paths"].tolist()
        expected = [p for p in loc["paths"].tolist() if subset is None or p in subset]
        assert paths == expected  # same photos, same order, each once
        cos = np.einsum("nd,nd->n", r["embeddings"], np.stack([ref[p] for p in paths]))
        assert float(cos.min()) >= 0.9999, f"min cosine {cos.min():.6f}"
        errors = {tuple(e) for e in r["errors"].tolist()}
        assert errors == {e for e in ref_errors if subset is None or e[0] in subset}
        assert r["contract"] == loc["contract"] and r["options"] == loc["options"]


# --------------------------------------------------------------------------------------------------
# Tests


def test_embed_on_ray_equals_the_single_process_run(head, photos, local_npz, tmp_path):
    lst, paths = photos
    job = tmp_path / "job"
    r = _console(head, "embed", lst, "--out", tmp_path / "ray.npz", "--job-dir", job, "--actors", "2",
                 "--shard-size", "25", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert f"embedded {N_PHOTOS} of {N_PHOTOS + 2} images" in r.stdout
    assert "13 shards" in r.stdout and "0 done earlier, 13 computed by 2 actor(s)" in r.stdout
    _assert_same_embeddings(tmp_path / "ray.npz", local_npz)
    assert sorted(_shard_indices(job)) == list(range(len(paths)))

    # The shards hold every row: detector score and landmarks for the photos, the failure for the others.
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(job.glob("shard-*.parquet"))[0])
    assert table.column_names == ["index", "path", "identity", "embedding", "score", "landmarks", "faces", "output",
                                  "error", "message"]  # fmt: skip
    row = table.slice(0, 1).to_pylist()[0]
    assert row["error"] is None and len(row["embedding"]) == 192 and len(row["landmarks"]) == 10
    assert 0.5 < row["score"] <= 1.0 and row["faces"] >= 1
    bad = table.slice(7, 1).to_pylist()[0]
    assert bad["path"].endswith("broken.jpg") and bad["error"] == "not_image" and bad["embedding"] is None

    # Again: every shard is there, nothing is computed, the same file comes out. Other settings in the same job
    # folder (another shard size) are refused, with one line.
    r = _console(head, "embed", lst, "--out", tmp_path / "again.npz", "--job-dir", job, cwd=tmp_path)
    assert r.returncode == 1 and "holds another job (different shard size)" in r.stderr
    assert r.stderr.count("\n") == 1
    r = _console(head, "embed", lst, "--out", tmp_path / "again.npz", "--job-dir", job, "--shard-size", "25",
                 cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and "all done earlier" in r.stdout, r.stdout + r.stderr
    _assert_same_embeddings(tmp_path / "again.npz", local_npz)

    # Shards are checked, not trusted: one rewritten with NaN rows (index and paths kept), one with 1e30 rows and a
    # digest record forged to match, are computed again on the cluster, each with a line; the output is the same.
    from test_batch_checked import _scale  # the same forgery as the local engine's test

    shards = sorted(job.glob("shard-*.parquet"))
    _scale(shards[0], float("nan"), forge_digest=False)
    _scale(shards[5], 1e30, forge_digest=True)
    r = _console(head, "embed", lst, "--out", tmp_path / "checked.npz", "--job-dir", job, "--shard-size", "25",
                 cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "shard-00000.parquet: its digest differs" in r.stderr
    assert "shard-00005.parquet: an embedding is not of unit norm" in r.stderr
    assert "11 done earlier, 2 computed" in r.stdout and "2 shard(s) failed their check" in r.stdout
    _assert_same_embeddings(tmp_path / "checked.npz", local_npz)


def test_a_killed_actor_loses_and_duplicates_no_row(head, photos, local_npz, tmp_path):
    _, paths = photos
    subset = paths[:150]
    lst = tmp_path / "subset.txt"
    lst.write_text("".join(f"{p}\n" for p in subset))
    job = tmp_path / "job"
    proc = _start(head, "embed", lst, "--out", tmp_path / "ray.npz", "--job-dir", job, "--actors", "2",
                  "--shard-size", "10", cwd=tmp_path)  # fmt: skip
    try:
        written = _wait_for_shards(job, 2, proc)
        actors = head.actors(proc.pid)
        assert len(actors) == 2, f"expected 2 actor processes, found {actors}"
        os.kill(actors[0], signal.SIGKILL)
        assert len(written) < 15  # killed mid-run
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "handed out again after 1 actor(s) died" in out, out
    indices = _shard_indices(job)
    assert len(indices) == len(subset) and sorted(indices) == list(range(len(subset)))  # no gap, no duplicate
    _assert_same_embeddings(tmp_path / "ray.npz", local_npz, subset=[str(p) for p in subset])


def test_a_killed_driver_resumes_with_the_missing_shards_only(head, photos, local_npz, tmp_path):
    lst, paths = photos
    subset = paths[:120]
    sub = tmp_path / "subset.txt"
    sub.write_text("".join(f"{p}\n" for p in subset))
    job = tmp_path / "job"
    args = ("embed", sub, "--out", tmp_path / "ray.npz", "--job-dir", job, "--actors", "2", "--shard-size", "10")
    proc = _start(head, *args, cwd=tmp_path)
    try:
        _wait_for_shards(job, 3, proc)
        proc.send_signal(signal.SIGKILL)  # the driver, mid-run
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in job.glob("shard-*.parquet")}
    assert 3 <= len(before) < 12 and not (tmp_path / "ray.npz").exists()

    r = _console(head, *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    done = int(r.stdout.split(" done earlier")[0].rsplit("(", 1)[1])
    assert done >= len(before) and f"{12 - done} computed" in r.stdout, r.stdout
    for name, stamp in before.items():  # the shards written before the kill were not computed again
        f = job / name
        assert (f.stat().st_ino, f.stat().st_mtime_ns) == stamp
    assert sorted(_shard_indices(job)) == list(range(len(subset)))
    _assert_same_embeddings(tmp_path / "ray.npz", local_npz, subset=[str(p) for p in subset])


@pytest.fixture
def people(tmp_path) -> Path:
    """Two people from the package's sample photos (no ../shared), and a broken file."""
    root = tmp_path / "people"
    for name, files in (("Grace_Hopper", ["grace_hopper_1.jpg", "grace_hopper_2.jpg"]),
                        ("Eileen_Collins", ["eileen_collins.jpg"])):  # fmt: skip
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(SAMPLES / f, root / name / f)
    (root / "Eileen_Collins" / "broken.jpg").write_text("this is not a photo\n")
    return root


def test_enroll_and_align_on_ray_match_the_local_engine(head, people, tmp_path):
    from arcface.gallery import Gallery

    # enroll: the same identities and faces (cosine >= 0.9999 by source); a second run enrols nothing new.
    assert main(["gallery", "enroll", str(people), "--gallery", str(tmp_path / "local"), "--no-progress"]) == 0
    r = _console(head, "gallery", "enroll", people, "--gallery", tmp_path / "ray", "--shard-size", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "enrolled 3 face(s) of 4 photo(s)" in r.stdout and "2 new identities" in r.stdout and "1 failed" in r.stdout
    assert "broken.jpg" in r.stderr and (tmp_path / ".arcface-jobs").is_dir()  # the default job folder
    with Gallery.open(tmp_path / "local", create=False) as a, Gallery.open(tmp_path / "ray", create=False) as b:
        people_a = sorted((i.name, i.faces) for i in a.list_identities())
        assert people_a == sorted((i.name, i.faces) for i in b.list_identities())
        ea = {f.source: a.get_embedding(f.id) for f in a.list_faces()}
        eb = {f.source: b.get_embedding(f.id) for f in b.list_faces()}
        assert sorted(ea) == sorted(eb) == ["Eileen_Collins/eileen_collins.jpg", "Grace_Hopper/grace_hopper_1.jpg",
                                            "Grace_Hopper/grace_hopper_2.jpg"]  # fmt: skip
        assert min(float(ea[s] @ eb[s]) for s in ea) >= 0.9999
    r = _console(head, "gallery", "enroll", people, "--gallery", tmp_path / "ray", cwd=tmp_path)
    assert r.returncode == 0 and "enrolled 0 face(s)" in r.stdout and "3 already enrolled" in r.stdout, r.stdout

    # align: the same crops (same pixels up to rounding) and the same report; the shards name each crop.
    assert main(["align", str(people), str(tmp_path / "a_local"), "--workers", "1", "--no-progress"]) == 0
    job = tmp_path / "align_job"
    r = _console(head, "align", people, tmp_path / "a_ray", "--job-dir", job, "--shard-size", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "aligned 3 of 4 images" in r.stdout and "1 failed" in r.stdout
    from PIL import Image

    for crop in sorted((tmp_path / "a_local").rglob("*.png")):
        other = tmp_path / "a_ray" / crop.relative_to(tmp_path / "a_local")
        with Image.open(crop) as x, Image.open(other) as y:
            diff = np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16))
        assert diff.mean() < 0.5, f"{crop.name}: mean difference {diff.mean():.2f}"
    rep_local = json.loads((tmp_path / "a_local" / "align_report.json").read_text())
    rep_ray = json.loads((tmp_path / "a_ray" / "align_report.json").read_text())
    assert rep_local["counts"] == rep_ray["counts"] and rep_local["failures"] == rep_ray["failures"]
    import pyarrow.parquet as pq

    outputs = [o for f in sorted(job.glob("shard-*.parquet")) for o in pq.read_table(f)["output"].to_pylist()]
    assert sorted(o for o in outputs if o) == sorted(str(p) for p in (tmp_path / "a_ray").rglob("*.png"))
