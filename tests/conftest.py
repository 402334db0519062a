"""Shared fixtures. Tests that need ../shared skip where it is absent, but fail under CI.

Every test that reads ../shared carries the ``shared`` marker, set here at collection: a test is marked when its
function, one of its fixtures, or a module-level helper either of them calls (transitively) uses
:func:`require_shared` or the ``shared`` fixture. So ``pytest -m "not shared"`` is a complete offline suite. As a
check of that rule, :func:`require_shared` fails a test that reaches it without the marker.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_CURRENT: dict[str, pytest.Item] = {}


def shared_root() -> Path:
    """Where the shared material lives: $ARCFACE_SHARED, else ../shared beside the repo."""
    return Path(os.environ.get("ARCFACE_SHARED", REPO.parent / "shared"))


def require_shared(rel: str) -> Path:
    """Return ``shared_root()/rel``; skip the test when it is missing (fail under CI=true)."""
    item = _CURRENT.get("item")
    if item is not None and item.get_closest_marker("shared") is None:
        pytest.fail(f"{item.nodeid} reads ../shared but was not marked 'shared' at collection (see conftest.py)")
    path = shared_root() / rel
    if not path.exists():
        msg = f"shared material {path} is absent (set ARCFACE_SHARED or place ../shared)"
        if under_ci():
            pytest.fail(msg + "; CI has it, so this is a failure")
        pytest.skip(msg)
    return path


def under_ci() -> bool:
    """True under ``CI=true``, where everything ``make test`` installs must be there: a missing piece fails."""
    return os.environ.get("CI", "").lower() == "true"


def require_module(name: str, extra: str) -> ModuleType:
    """Import ``name``, which comes with the ``extra`` extra (or a side install named there); where it is absent,
    skip (the whole module when called at module level), but fail under ``CI=true``: ``make test`` installs every
    extra, so there a missing one is a broken install, not an optional part. Use this, never
    ``pytest.importorskip``, whose skip would hide that failure."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        msg = f"needs {name} ({extra}): {e}"
        if under_ci():
            pytest.fail(msg + "; make test installs it, so under CI this is a failure", pytrace=False)
        pytest.skip(msg, allow_module_level=True)


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


def plain_fp32(crops, flip: bool = False, model: str = "default"):
    """A torch model file run as it is (eager float32, NCHW, no fast path): the reference numbers, (N, D) unit rows."""
    import numpy as np

    from arcface.inference.files import read_model_file
    from arcface.inference.runners import l2_normalise, preprocess
    from arcface.inference.zoo import resolve_model_path

    read = read_model_file(resolve_model_path(model))
    module, contract = read.module.float().eval(), read.contract
    with torch.inference_mode():
        out = module(torch.from_numpy(preprocess(crops, contract))).numpy().astype(np.float64)
        if flip:
            out += module(torch.from_numpy(preprocess(np.ascontiguousarray(crops[:, :, ::-1]), contract))).numpy()
    return l2_normalise(out)


def photo(lfw: Path, name: str, i: int) -> Path:
    """LFW's i-th photo of ``name`` (1-based, as the pair files count)."""
    return lfw / name / f"{name}_{i:04d}.jpg"


# --------------------------------------------------------------------------------------------------
# The ``shared`` marker, set automatically


def embed_or_none(rec, paths: list[Path]) -> list:
    """What ``rec.embed`` gives each photo, None where it finds no face (any other failure is raised), with the photos
    side by side as ``rec.embed_batch`` runs them (faster than one ``rec.embed`` call after another)."""
    from arcface.inference.recognizer import NoFaceError

    crops = list(rec.main_crops(paths))
    for c in crops:
        if isinstance(c, Exception) and not isinstance(c, NoFaceError):
            raise c
    found = [c for c in crops if not isinstance(c, Exception)]
    rows = iter(rec.embedder.embed(found) if found else [])
    return [None if isinstance(c, Exception) else next(rows) for c in crops]


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


@functools.cache
def _shared_functions(path: str) -> frozenset[str]:
    """Names of a test module's functions that reach ``require_shared`` / the ``shared`` fixture, transitively."""
    tree = ast.parse(Path(path).read_text())
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    uses = {name: _names_used(f) | {a.arg for a in f.args.args} for name, f in funcs.items()}
    reach = {"require_shared", "shared"}
    changed = True
    while changed:
        changed = False
        for name, used in uses.items():
            if name not in reach and used & reach:
                reach.add(name)
                changed = True
    return frozenset(reach)


def _reads_shared(item: pytest.Item) -> bool:
    fn = getattr(item, "function", None)
    if fn is None:
        return False
    module_file = inspect.getsourcefile(fn)
    reach = _shared_functions(module_file) | {"shared"}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    if _names_used(tree) & reach:
        return True
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        if name in reach:
            return True
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            try:
                src = inspect.getsourcefile(fixturedef.func)
            except TypeError:
                continue
            if src and src.endswith(".py") and fixturedef.func.__name__ in _shared_functions(src):
                return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _reads_shared(item):
            item.add_marker(pytest.mark.shared)


def pytest_runtest_setup(item):
    _CURRENT["item"] = item


def pytest_runtest_teardown(item):
    _CURRENT.pop("item", None)


# --------------------------------------------------------------------------------------------------
# Real database servers for the gallery backends (session-scoped; see dbservers.py)

from dbservers import gallery_uri, milvus_server, postgres_server  # noqa: E402, F401
