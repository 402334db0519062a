"""Shared fixtures. Tests that need ../shared skip where it is absent, but fail under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """Where the shared material lives: $ARCFACE_SHARED, else ../shared beside the repo."""
    return Path(os.environ.get("ARCFACE_SHARED", REPO.parent / "shared"))


def require_shared(rel: str) -> Path:
    """Return ``shared_root()/rel``; skip the test when it is missing (fail under CI=true)."""
    path = shared_root() / rel
    if not path.exists():
        msg = f"shared material {path} is absent (set ARCFACE_SHARED or place ../shared)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI has it, so this is a failure")
        pytest.skip(msg)
    return path


@pytest.fixture
def shared():
    """A function rel -> Path into ../shared, skipping (or failing under CI) when absent."""
    return require_shared


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``arcface ARGS`` in this process; returns (exit status, stdout, stderr)."""
    from arcface.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def photo(lfw: Path, name: str, i: int) -> Path:
    """LFW's i-th photo of ``name`` (1-based, as the pair files count)."""
    return lfw / name / f"{name}_{i:04d}.jpg"
