"""The CPU thread policy: its decisions for given CPU counts, quotas and overrides (pure functions with injected
inputs), that every CPU entry point applies it (fresh processes, so torch's thread count starts at its default; a fake
cgroup tree stands in for a container's CPU quota), that each entry point decides and applies once while the
objects below it take the plan handed down, and that a photo alone on an idle machine gets an OpenMP team.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from arcface.runtime import threads as tp
from arcface.runtime.workers import process_map, thread_map
from conftest import require_module

REPO = Path(__file__).resolve().parents[1]


def _cgroup_v2(tmp_path: Path, cpu_max: str, rel: str = "") -> tuple[Path, Path]:
    """A fake cgroup v2 mount with ``cpu.max`` in ``rel`` and the /proc/self/cgroup line pointing at it."""
    root = tmp_path / "cgroup"
    (root / rel).mkdir(parents=True, exist_ok=True)
    (root / rel / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::/{rel}\n")
    return root, proc


def _budget(**kw) -> tp.CpuBudget:
    return tp.cpu_budget(env=kw.pop("env", {}), **kw)


# ------------------------------------------------------------------------------------------------------------------
# How many CPUs


def test_affinity_alone_decides_without_a_quota():
    b = _budget(affinity=2, quota=None)
    assert (b.cpus, b.affinity, b.quota, b.legacy) == (2, 2, None, False)
    assert "affinity" in b.source


@pytest.mark.parametrize(("quota", "cpus"), [(1.5, 1), (0.5, 1), (1.0, 1), (2.0, 2), (2.9, 2), (8.0, 4)])
def test_a_fractional_quota_rounds_down_and_never_exceeds_the_affinity(quota, cpus):
    """Floor, at least 1 (the module docstring says why); a quota above the affinity mask changes nothing."""
    assert _budget(affinity=4, quota=quota).cpus == cpus


def test_cgroup_v2_cpu_max_150000_of_100000_is_1_5_cpus_and_one_thread(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "150000 100000")
    assert tp.cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    b = _budget(affinity=2, cgroup_root=root, proc_cgroup=proc)
    assert b.cpus == 1 and b.quota == pytest.approx(1.5) and "quota" in b.source


def test_cgroup_v2_max_is_no_limit(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "max 100000")
    assert tp.cgroup_cpu_limit(root, proc) is None
    assert _budget(affinity=2, cgroup_root=root, proc_cgroup=proc).cpus == 2


def test_cgroup_v2_the_smallest_limit_of_the_cgroup_and_its_ancestors_wins(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "400000 100000", rel="kubepods/pod1")
    (root / "kubepods" / "cpu.max").write_text("200000 100000\n")
    assert tp.cgroup_cpu_limit(root, proc) == pytest.approx(2.0)
    assert _budget(affinity=8, cgroup_root=root, proc_cgroup=proc).cpus == 2


def test_a_cgroup_path_missing_under_the_mount_reads_the_mount_itself(tmp_path):
    """A container with its own cgroup namespace sees its cgroup at the root of the mount."""
    root, proc = _cgroup_v2(tmp_path, "100000 100000")
    proc.write_text("0::/system.slice/elsewhere.scope\n")
    assert tp.cgroup_cpu_limit(root, proc) == pytest.approx(1.0)


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota_and_period(tmp_path, folder):
    d = tmp_path / "cgroup" / folder / "docker" / "abc"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("250000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert tp.cgroup_cpu_limit(tmp_path / "cgroup", proc) == pytest.approx(2.5)
    assert _budget(affinity=4, cgroup_root=tmp_path / "cgroup", proc_cgroup=proc).cpus == 2


def test_cgroup_v1_unlimited_quota_and_no_cgroup_files(tmp_path):
    d = tmp_path / "cgroup" / "cpu"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("1:cpu:/\n")
    assert tp.cgroup_cpu_limit(tmp_path / "cgroup", proc) is None
    assert tp.cgroup_cpu_limit(tmp_path / "nothing", proc) is None


def test_the_environment_points_at_another_cgroup_mount(tmp_path, monkeypatch):
    root, _ = _cgroup_v2(tmp_path, "100000 100000")
    monkeypatch.setenv(tp.CGROUP_ENV, str(root))
    assert tp.cpu_budget(affinity=2, env={}).cpus == 1  # the mount comes from os.environ; the override from env


def test_arcface_threads_overrides_affinity_and_quota():
    b = _budget(affinity=2, quota=1.0, env={"ARCFACE_THREADS": "3"})
    assert b.cpus == 3 and b.source == "ARCFACE_THREADS=3"
    assert _budget(affinity=2, quota=None, env={"ARCFACE_THREADS": "auto"}).cpus == 2


def test_an_explicit_threads_argument_beats_the_environment():
    assert _budget(threads=1, affinity=4, quota=None, env={"ARCFACE_THREADS": "3"}).cpus == 1
    assert _budget(threads="auto", affinity=4, quota=None, env={"ARCFACE_THREADS": "3"}).cpus == 3


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "2 threads"])
def test_an_invalid_override_is_one_clear_error(value):
    with pytest.raises(tp.ThreadsError) as e:
        _budget(affinity=2, quota=None, env={"ARCFACE_THREADS": value})
    msg = str(e.value)
    assert "ARCFACE_THREADS" in msg and repr(value) in msg and "\n" not in msg
    with pytest.raises(tp.ThreadsError, match="--threads"):
        _budget(threads=0, affinity=2, quota=None)


def test_legacy_turns_the_policy_off():
    plan = tp.decide("embed", budget=_budget(affinity=2, quota=None, env={"ARCFACE_THREADS": "legacy"}))
    assert plan.legacy and plan.intra_op is None and plan.onnx_threads is None and plan.item_threads == 1
    service = tp.decide("service", budget=_budget(affinity=2, quota=None, env={"ARCFACE_THREADS": "legacy"}))
    assert service.item_threads == 2  # the pool size the service had before the policy


# ------------------------------------------------------------------------------------------------------------------
# Per workload


def _plan(workload: str, cpus: int, **kw) -> tp.ThreadPlan:
    return tp.decide(workload, budget=_budget(affinity=cpus, quota=None), env=kw.pop("env", {}), **kw)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("workload", tp.WORKLOADS)
def test_by_default_workers_times_threads_never_exceed_the_usable_cpus(workload, cpus):
    plan = _plan(workload, cpus)
    assert plan.intra_op is not None and plan.intra_op >= 1 and plan.item_threads >= 1 and plan.processes >= 1
    assert plan.processes * plan.item_threads * plan.intra_op <= cpus
    assert plan.onnx_threads is not None and 1 <= plan.onnx_threads <= cpus
    assert plan.inter_op == 1


def test_each_workload_gets_its_rule():
    detect = _plan("detect", 4)  # across images: processes of one thread each
    assert (detect.processes, detect.item_threads, detect.intra_op) == (4, 1, 1)
    embed = _plan("embed", 4)  # passes side by side on four threads of one torch thread each
    assert (embed.processes, embed.item_threads, embed.intra_op, embed.onnx_threads) == (1, 4, 1, 4)
    pipe = _plan("pipeline", 4)  # the detector on one thread, photos side by side, embedding batches on four
    assert (pipe.processes, pipe.item_threads, pipe.intra_op, pipe.onnx_threads) == (1, 4, 1, 4)
    assert (_plan("service", 4).item_threads, _plan("service", 4).intra_op) == (4, 1)
    assert (_plan("train", 4).processes, _plan("train", 4).intra_op) == (1, 4)


def test_a_short_detection_job_gets_fewer_processes():
    per = tp.MIN_ITEMS_PER_PROCESS
    assert _plan("detect", 8, items=per - 1).processes == 1
    assert _plan("detect", 8, items=3 * per).processes == 3
    assert _plan("detect", 2, items=100 * per).processes == 2


def test_explicit_workers_are_respected_and_their_threads_shrink():
    assert (_plan("service", 8, workers=2).item_threads, _plan("service", 8, workers=2).intra_op) == (2, 4)
    assert (_plan("service", 2, workers=4).item_threads, _plan("service", 2, workers=4).intra_op) == (4, 1)
    assert _plan("detect", 2, workers=3, items=10).processes == 3


def test_a_request_of_the_service_runs_within_its_share():
    """Each of the service's request threads gets a pipeline plan whose budget is its intra-op threads, spent as one
    team (no threads of its own beside it), so requests x their threads stay within the CPUs."""
    one = _plan("service", 8, workers=2).per_item()
    assert (one.workload, one.cpus, one.processes, one.item_threads, one.intra_op, one.onnx_threads) == (
        "pipeline", 4, 1, 1, 4, 4)
    assert _plan("service", 4).per_item().cpus == 1


def test_training_leaves_a_cpu_per_loader_worker_and_shares_them_between_local_ranks():
    assert _plan("train", 8, loader_workers=2).intra_op == 6
    assert _plan("train", 2, loader_workers=4).intra_op == 1
    plan = _plan("train", 8, loader_workers=1, env={"LOCAL_WORLD_SIZE": "2"})
    assert (plan.processes, plan.intra_op) == (2, 3)


def test_bad_workload_or_workers_are_clear_errors():
    with pytest.raises(tp.ThreadsError, match="unknown workload"):
        _plan("render", 2)
    with pytest.raises(tp.ThreadsError, match="workers"):
        _plan("service", 2, workers=0)


def test_worker_environment_sets_openmp_threads_before_torch_loads():
    assert tp.worker_environment(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert tp.worker_environment(None) == {}


def test_thread_map_keeps_order_and_raises_in_turn():
    assert list(thread_map(lambda x: x * x, range(20), workers=3)) == [x * x for x in range(20)]

    def boom(x):
        if x == 5:
            raise ValueError("five")
        return x

    it = thread_map(boom, range(10), workers=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="five"):
        next(it)


# ------------------------------------------------------------------------------------------------------------------
# Every entry point applies it (fresh interpreters)


def _run(script: str, env_extra: dict[str, str], timeout: float = 600) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", tp.ENV)}
    env.update(env_extra, ARCFACE_PROGRESS="0", PYTHONPATH=str(REPO / "src"))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


ENTRY_POINTS = """
    import json, os, sys, tempfile
    from pathlib import Path
    import numpy as np
    import torch

    from arcface.runtime import threads as tp
    seen = {"start": torch.get_num_threads()}
    samples = sorted((Path("src/arcface/samples")).glob("*.jpg"))

    # detection (CLI): one thread
    from arcface.cli import main
    assert main(["detect", str(samples[0])]) == 0
    seen["detect"] = torch.get_num_threads()

    # the Embedder (load_model): the "embed" plan, torch and onnxruntime
    from arcface.inference.loader import load_model
    emb = load_model("default", precision="fp32", backend="onnx")
    seen["embed"] = torch.get_num_threads()
    seen["embed_onnx"] = emb.runner.session.get_session_options().intra_op_num_threads
    seen["embed_workers"] = load_model("default").pass_threads  # torch: passes side by side

    # the face pipeline: the detector on one thread, photos side by side, onnxruntime for the batches
    from arcface import FaceRecognizer
    rec = FaceRecognizer(precision="fp32", backend="onnx")
    seen["pipeline"] = torch.get_num_threads()
    seen["pipeline_workers"] = rec.thread_plan.item_threads
    seen["pipeline_onnx"] = rec.embedder.runner.session.get_session_options().intra_op_num_threads
    assert rec.embed_batch(samples).shape[0] == len(samples)

    # evaluation: detection (in this process for a short job), then embedding with the "embed" plan
    from arcface.eval.datasets import PairSet
    from arcface.eval.pipeline import embed_pair_set
    import arcface.eval.pipeline as pipeline_module
    import arcface.runtime.workers as workers_module
    calls = []
    real = workers_module.process_map
    def spy(fn, items, **kw):
        calls.append(min(kw["plan"].processes, len(items)))
        return real(fn, items, **kw)
    pipeline_module.process_map = spy
    pairs = PairSet(name="samples", images=[str(p) for p in samples], pairs=np.array([[0, 1], [1, 2]]),
                    labels=np.array([False, True]), folds=np.array([0, 1]), source="samples")
    embed_pair_set(pairs, rec.embedder, progress=False)
    seen["eval"] = torch.get_num_threads()
    seen["eval_detect_workers"] = calls

    # the service: inference workers x torch threads
    from arcface.serve import Settings, create_app
    app = create_app(Settings(gallery=tempfile.mkdtemp(), allow_no_auth=True))
    seen["service"] = torch.get_num_threads()
    seen["service_workers"] = app.state.engine.pool._max_workers
    seen["service_embed_workers"] = app.state.recognizer.embedder.pass_threads  # one request: one thread
    from fastapi.testclient import TestClient
    health = TestClient(app).get("/health").json()
    seen["health"] = [health["workers"], health["threads"]]

    # training: the step's threads (skipped with more threads than CPUs: torch's oneDNN then crashes at exit, in
    # its primitive cache's destructor, whatever set the threads)
    if tp.decide("train").intra_op > len(os.sched_getaffinity(0)):
        print(json.dumps(seen))
        sys.exit(0)
    from arcface.engine.config import load_config
    from arcface.engine.trainer import Trainer
    cfg = load_config("configs/smoke_synthetic.yaml", ["train.max_steps=1"])
    Trainer(cfg, tempfile.mkdtemp(), progress=False).train()
    seen["train"] = torch.get_num_threads()
    print(json.dumps(seen))
"""


def _fake_quota(tmp_path: Path, cpus: float) -> dict[str, str]:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text(f"{int(cpus * 100000)} 100000\n")
    return {tp.CGROUP_ENV: str(root)}


def test_every_entry_point_applies_the_policy_under_a_cpu_quota(tmp_path):
    """A container with a 1-CPU quota on this (multi-core) machine: every torch count is 1, every pool 1 wide,
    although torch itself starts with more threads."""
    require_module("fastapi", "the all extra")
    seen = _run(ENTRY_POINTS, _fake_quota(tmp_path, 1.0))
    expect = {"detect": 1, "embed": 1, "embed_onnx": 1, "embed_workers": 1, "pipeline": 1, "pipeline_workers": 1,
              "pipeline_onnx": 1, "eval": 1, "eval_detect_workers": [1], "service": 1, "service_workers": 1,
              "service_embed_workers": 1, "health": [1, 1], "train": 1}  # fmt: skip
    assert {k: seen[k] for k in expect} == expect, seen


def test_every_entry_point_applies_the_arcface_threads_override(tmp_path):
    """ARCFACE_THREADS=3 beats a 1-CPU quota: onnxruntime gets 3 threads; the embedding, the pipeline and the
    service 3 workers of one torch thread each. (Training is checked where 3 threads fit the machine.)"""
    require_module("fastapi", "the all extra")
    seen = _run(ENTRY_POINTS, {tp.ENV: "3", **_fake_quota(tmp_path, 1.0)})
    expect = {"detect": 1, "embed": 1, "embed_onnx": 3, "embed_workers": 3, "pipeline": 1, "pipeline_workers": 3,
              "pipeline_onnx": 3, "eval": 1, "eval_detect_workers": [1], "service": 1, "service_workers": 3,
              "service_embed_workers": 1, "health": [3, 1]}  # fmt: skip
    if len(os.sched_getaffinity(0)) >= 3:
        expect["train"] = 3
    assert {k: seen[k] for k in expect} == expect, seen


def test_the_cli_threads_option_reaches_the_library():
    """``--threads`` of a computing command (here ``arcface train``) beats ``ARCFACE_THREADS``: it is the budget its
    library call divides."""
    script = """
        import json, tempfile, torch
        from arcface.cli import main
        out = tempfile.mkdtemp()
        assert main(["train", "configs/smoke_synthetic.yaml", "--out", out, "--max-steps", "1", "--no-progress",
                     "--threads", "1"]) == 0
        print(json.dumps({"train": torch.get_num_threads()}))
    """
    assert _run(script, {tp.ENV: "2"})["train"] == 1


def test_process_map_sizes_its_pool_and_each_worker_from_the_policy(monkeypatch):
    """Two usable CPUs (the override), a job long enough for two processes: two workers of one torch thread each,
    whose OpenMP pool was sized before torch loaded."""
    monkeypatch.setenv(tp.ENV, "2")
    monkeypatch.setattr(tp, "MIN_ITEMS_PER_PROCESS", 1)
    out = list(process_map(_worker_report, range(8), chunksize=1))
    assert {threads for _, threads, _ in out} == {1}
    assert {omp for _, _, omp in out} == {"1"}
    assert len({pid for pid, _, _ in out}) == 2


def _worker_report(_: int) -> tuple[int, int, str | None]:
    import time

    import torch

    time.sleep(0.2)  # both workers get items
    return os.getpid(), torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


@pytest.mark.parametrize(("args", "expect"), [(["--threads", "0"], "--threads: must be a positive integer"),
                                              (["--threads", "abc"], "--threads: must be a positive integer")])
def test_cli_bad_threads_is_a_usage_error(capsys, args, expect):
    from arcface.cli import main

    with pytest.raises(SystemExit) as e:
        main(["detect", "x.jpg", *args])
    assert e.value.code == 1  # a usage error exits 1, like every bad argument
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_cli_bad_environment_is_one_line(capsys, monkeypatch, tmp_path):
    from arcface.cli import main

    monkeypatch.setenv(tp.ENV, "abc")
    samples = sorted((REPO / "src/arcface/samples").glob("*.jpg"))
    assert main(["detect", str(samples[0])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["arcface detect: error: ARCFACE_THREADS must be a positive integer, 'auto' or 'legacy', got 'abc'"]


# --------------------------------------------------------------------------------------------------
# One decision per entry point; nothing below re-applies it


@pytest.fixture
def counted(monkeypatch):
    """Counts of :func:`tp.decide` and :func:`tp.apply` calls (the real ones still run)."""
    counts = {"decide": [], "apply": []}
    decide, apply = tp.decide, tp.apply

    def count_decide(workload, **kw):
        counts["decide"].append(workload)
        return decide(workload, **kw)

    def count_apply(plan):
        counts["apply"].append(plan.workload)
        return apply(plan)

    monkeypatch.setattr(tp, "decide", count_decide)
    monkeypatch.setattr(tp, "apply", count_apply)
    return counts


def test_each_entry_object_decides_and_applies_once(counted):
    from arcface import Embedder, FaceRecognizer
    from arcface.inference.loader import load_model
    from arcface.models import create_model

    FaceRecognizer(threads=2)
    assert counted == {"decide": ["pipeline"], "apply": ["pipeline"]}  # its model is built with the same plan
    counted["decide"].clear(), counted["apply"].clear()
    load_model("default", threads=2)
    assert counted == {"decide": ["embed"], "apply": ["embed"]}
    counted["decide"].clear(), counted["apply"].clear()
    Embedder.from_module(create_model("mbf", num_features=64), "fp32", "torch", threads=2)
    assert counted == {"decide": ["embed"], "apply": ["embed"]}


def test_a_plan_handed_down_is_used_and_nothing_is_applied(counted):
    import torch

    from arcface import FaceRecognizer

    plan = tp.decide("service", threads=3, workers=1).per_item()  # a request's share: a team of 3
    counted["decide"].clear()
    before = torch.get_num_threads()
    rec = FaceRecognizer(plan=plan)
    assert counted == {"decide": [], "apply": []} and torch.get_num_threads() == before
    assert rec.thread_plan is plan and rec.embedder.pass_threads == 1
    with pytest.raises(ValueError, match="threads .* or plan"):
        FaceRecognizer(threads=2, plan=plan)


def test_process_map_takes_the_plan_of_its_entry_point(counted):
    plan = tp.decide("detect", threads=2, workers=1)
    counted["decide"].clear()
    assert list(process_map(abs, [-1, -2], plan=plan)) == [1, 2]
    assert counted == {"decide": [], "apply": []}
    with pytest.raises(tp.ThreadsError, match="not both"):
        list(process_map(abs, [-1], plan=plan, workers=2))


# --------------------------------------------------------------------------------------------------
# A lone photo on an idle machine


def test_others_running_counts_runnable_threads_of_other_processes(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self" / "task" / "11").mkdir(parents=True)
    (proc / "self" / "task" / "12").mkdir()
    (proc / "stat").write_text("cpu  1 2 3 4\nprocs_running 4\nprocs_blocked 0\n")
    (proc / "self" / "task" / "11" / "stat").write_text("11 (python (x) y) R 1 2 3\n")  # running: ours
    (proc / "self" / "task" / "12" / "stat").write_text("12 (python) S 1 2 3\n")  # sleeping
    assert tp.others_running(proc) == 3
    (proc / "stat").write_text("cpu  1 2 3 4\n")
    assert tp.others_running(proc) is None  # not a Linux /proc: unknown
    assert tp.others_running(tmp_path / "nothing") is None


def test_openmp_team_is_this_threads_own_and_restored():
    """Also with faiss loaded first: its wheel maps a libgomp of its own before torch's."""
    import threading

    import torch

    require_module("faiss", "the all extra")
    tp._libgomp.cache_clear()
    before = torch.get_num_threads()
    seen = {}
    with tp.openmp_team(3) as team:
        seen["inside"] = torch.get_num_threads()
        t = threading.Thread(target=lambda: seen.update(other=torch.get_num_threads()))
        t.start()
        t.join()
    if team == 1:
        pytest.skip("torch does not run on GNU OpenMP here: the team size cannot be set per thread")
    assert (team, seen["inside"]) == (3, 3)
    assert seen["other"] != 3 and torch.get_num_threads() == before


def test_a_lone_photo_gets_a_team_only_when_alone_and_the_machine_is_idle():
    busy = {"others": 0}
    lone = tp.LoneWork(2, probe=lambda: busy["others"])
    with lone.photo() as team:
        assert team in (1, 2)  # 2 where torch runs on GNU OpenMP
        with lone.photo() as inner:  # nested in the same thread: the outer setting stays
            assert inner == 0
    busy["others"] = 1  # a neighbour is running
    with lone.photo() as team:
        assert team == 1
    busy["others"] = 0
    with lone.batch(), lone.photo() as team:  # photos side by side: none is alone
        assert team == 1
    assert tp.LoneWork(1, probe=lambda: 0).photo().__enter__() == 1  # one usable CPU: nothing to add
    with tp.LoneWork(64, probe=lambda: 0).photo() as team:
        assert team in (1, tp.LoneWork.MAX_TEAM)  # a big machine: a small team


def test_the_recognizer_gives_a_lone_photo_the_team_and_photos_side_by_side_one_thread(monkeypatch):
    import numpy as np
    import torch

    from arcface import FaceRecognizer

    if not tp._libgomp():
        pytest.skip("torch does not run on GNU OpenMP here")
    samples = sorted(Path("src/arcface/samples").glob("*.jpg"))
    rec = FaceRecognizer(threads=2)
    assert rec._lone is not None and rec._lone.cpus == 2  # its own entry point: the plan's CPUs
    rec._lone.probe = lambda: 0  # an idle machine, whatever else this test machine runs
    seen = []
    detect = rec.aligner.detector._detect
    monkeypatch.setattr(rec.aligner.detector, "_detect", lambda image: (seen.append(torch.get_num_threads()),
                                                                         detect(image))[1])  # fmt: skip
    one = rec.embed(samples[0])
    assert seen == [2]
    seen.clear()
    many = rec.embed_batch(samples[:3])
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == 1
    np.testing.assert_allclose(many[0], one, atol=1e-5)  # the same photo, one thread or two
    rec._lone.probe = lambda: 1  # a neighbour
    seen.clear()
    rec.embed(samples[0])
    assert seen == [1]


def test_a_recognizer_handed_a_plan_takes_its_lone_cap_from_lone_threads_else_the_plan():
    from arcface import FaceRecognizer

    plan = tp.decide("service", threads=3).per_item()  # a request's share: one CPU
    assert FaceRecognizer(plan=plan)._lone.cpus == plan.cpus == 1
    assert FaceRecognizer(plan=plan, lone_threads=3)._lone.cpus == 3
    legacy = tp.decide("service", budget=tp.cpu_budget("legacy")).per_item()
    assert FaceRecognizer(plan=legacy, lone_threads=3)._lone is None  # the policy off: nothing changes


def test_the_service_gives_a_lone_request_its_cpus(monkeypatch, tmp_path):
    from arcface.serve import engine
    from arcface.serve.settings import Settings

    made = {}
    monkeypatch.setattr(engine, "FaceRecognizer", lambda *a, **kw: made.update(kw) or object())
    monkeypatch.setattr(tp, "apply", lambda plan: plan)  # the test process keeps its thread settings
    plan, _ = engine.service_threads(Settings(gallery=tmp_path, api_keys=("k",), threads=3), None)
    assert made["lone_threads"] == plan.cpus == 3 and made["plan"].cpus == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_a_bad_lone_threads_is_refused_before_loading(bad):
    from arcface import FaceRecognizer

    with pytest.raises(ValueError, match="lone_threads must be a positive integer"):
        FaceRecognizer("no-such-model", lone_threads=bad)
