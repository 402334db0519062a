"""The CPU allocator setting: in effect once per process, switchable off, and harmless to call again."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = "from arcface.runtime.memory import retain_freed_memory as r; print(r(), r())"


def _run(env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "ARCFACE_MALLOC_TUNING"}
    if env_value is not None:
        env["ARCFACE_MALLOC_TUNING"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is set on Linux (glibc) only")
def test_in_effect_on_linux_and_idempotent():
    assert _run(None).split() == ["True", "True"]


def test_environment_switches_it_off():
    assert _run("0").split() == ["False", "False"]


def test_embedder_turns_it_on():
    code = (
        "import arcface.runtime.memory as m; from arcface import Embedder; from arcface.models import create_model\n"
        "Embedder.from_module(create_model('mbf', num_features=64), 'fp32', 'torch'); print(m._state)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'done'" in out
