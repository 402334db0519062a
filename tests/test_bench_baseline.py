"""A benchmark's baseline may be earlier code of this repository, read from git at a pinned revision
(``bench/_common.module_at_revision``) instead of a copy kept in the tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pinned_revision() -> str:
    tree = ast.parse((REPO / "bench" / "mtcnn_speed.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "BASELINE_REVISION" for t in targets):
                return node.value.value
    raise AssertionError("bench/mtcnn_speed.py has no BASELINE_REVISION")


def _have_revision(rev: str) -> bool:
    r = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    yield
    sys.modules.pop("_mtcnn_baseline", None)


def test_the_old_mtcnn_loads_from_its_revision_beside_todays(bench_path):
    rev = _pinned_revision()
    if not _have_revision(rev):  # an exported tree or a shallow clone has no history
        pytest.skip(f"revision {rev} is not in this clone's history")
    from _common import module_at_revision
    from arcface.align.detection import DETECTORS
    from arcface.align.mtcnn import MTCNN

    old = module_at_revision(rev, "src/arcface/align/mtcnn.py", "_mtcnn_baseline")
    assert old.MTCNN is not MTCNN and issubclass(old.MTCNN, old.FaceDetector)
    assert DETECTORS.get("mtcnn") is MTCNN  # the old module's registration did not replace today's


def test_a_missing_revision_is_one_line(bench_path):
    from _common import module_at_revision

    with pytest.raises(SystemExit, match="is not available from git"):
        module_at_revision("0" * 40, "src/arcface/align/mtcnn.py", "_mtcnn_baseline")
