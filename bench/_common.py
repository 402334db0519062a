"""Shared bench helpers: the machine description, a printed table, the JSON result file, and earlier code of this
repository loaded from git as a baseline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from unittest import mock

from arcface.registry import Registry
from arcface.runtime.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, str | int]:
    """CPU model and flags, core count and library versions, for every result table (and torch's threads)."""
    info = machine_info()
    try:
        import torch

        info["threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def print_table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """Print (and return) a markdown table."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in r) + " |")
    m = machine()
    lines += ["", f"machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, "
              f"onnxruntime {m.get('onnxruntime', '-')}; {time.strftime('%Y-%m-%d')}"]
    text = "\n".join(lines)
    print(text)
    return text


def save(name: str, payload: dict) -> Path:
    """Write ``bench/results/NAME.json`` with the machine and date added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def module_at_revision(rev: str, path: str, name: str) -> ModuleType:
    """Import ``path`` (a file of this repository) as it was at the git revision ``rev``, as the module ``name``.

    A benchmark's baseline can so be the earlier code itself, pinned by its revision, rather than a copy of it in the
    tree. The old module imports today's package for everything else; the registrations it makes
    (``Registry.register``) are not kept, so its classes do not clash with today's of the same name.

    Raises:
        SystemExit: with one line, when git or the revision is not available (a shallow clone, an exported tree).
    """
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise SystemExit(f"the baseline {path} at revision {rev} is not available from git: {detail.strip()}") from None

    def no_registration(self, name=None, obj=None):
        return obj if obj is not None else (lambda o: o)

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{name}.py"
        file.write_text(source)
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        with mock.patch.object(Registry, "register", no_registration):
            spec.loader.exec_module(module)
    return module
