"""``arcface demo`` on a fresh machine: no ../shared, no LFW, no network.

The real console in a fresh interpreter, with ``ARCFACE_SHARED`` an empty folder, ``ARCFACE_DATA`` and ``HOME``
empty temporary folders, the ../shared search switched off (``ARCFACE_NO_SHARED_LOOKUP=1``: this checkout has
a ../shared beside it), a working directory with no ../shared, and ``ARCFACE_MIRROR`` at a closed local port,
so the download fails at once, as it does offline. Nothing here touches the internet.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_without_data_or_network_verifies_the_shipped_photos(tmp_path):
    for d in ("shared", "data", "home", "work/cwd"):
        (tmp_path / d).mkdir(parents=True)
    cwd = tmp_path / "work" / "cwd"
    assert not (cwd.parent.parent / "shared" / "data").exists()
    env = {
        **os.environ,
        "ARCFACE_SHARED": str(tmp_path / "shared"),
        "ARCFACE_DATA": str(tmp_path / "data"),
        "HOME": str(tmp_path / "home"),
        "ARCFACE_NO_SHARED_LOOKUP": "1",
        "ARCFACE_MIRROR": f"http://127.0.0.1:{_closed_port()}/",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("XDG_DATA_HOME", None)
    r = subprocess.run([sys.executable, "-m", "arcface", "demo"], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    # one line says what is missing and what happens instead, then the table starts
    start = next(i for i, x in enumerate(lines) if x.startswith("photo to identity"))
    assert len(lines[:start]) == 1, r.stdout
    assert "LFW" in lines[0] and "cannot be downloaded" in lines[0] and "photos this package ships" in lines[0]
    # then the verification table of the shipped photos, every decision right
    rows = {}
    for x in lines:
        f = x.split()
        if len(f) == 5 and f[3] in ("same", "different"):
            rows[(f[0], f[1])] = (float(f[2]), f[3], f[4])
    assert set(rows) == {
        ("grace_hopper_1", "grace_hopper_2"), ("eileen_collins", "grace_hopper_1"),
        ("eileen_collins", "grace_hopper_2"),
    }  # fmt: skip
    assert all(decision == truth for _, decision, truth in rows.values()), r.stdout
    assert rows[("grace_hopper_1", "grace_hopper_2")][1] == "same"
    assert "3/3 right" in r.stdout
    assert not any(Path(tmp_path / "data").iterdir())  # nothing half-downloaded


def test_table_columns_fit_long_names(tmp_path, capsys, monkeypatch):
    """Names longer than the old fixed 28 characters keep the columns aligned (cut with '...' past 40)."""
    from arcface.cli import _demo

    long_a = tmp_path / ("A" * 35 + "_0001.jpg")
    very_long_b = tmp_path / ("B" * 60 + "_0001.jpg")
    pairs = [(long_a, very_long_b, False), (tmp_path / "x_0001.jpg", tmp_path / "y_0001.jpg", True)]

    class FakeRec:
        threshold = 0.4

        def __init__(self, **options):  # the demo's --threads reaches FaceRecognizer(threads=...)
            pass

        class contract:  # noqa: N801
            architecture, embedding_size, calibrated_on = "mbf", 192, "test"

        def verify(self, a, b):
            from types import SimpleNamespace

            return SimpleNamespace(similarity=0.9 if a.stem.startswith("x") else 0.1, same=a.stem.startswith("x"))

    monkeypatch.setattr(_demo, "FaceRecognizer", FakeRec)
    _demo._verify_table(pairs, "test")
    out = capsys.readouterr().out.splitlines()
    header = next(x for x in out if "cosine" in x)
    rows = [x for x in out if x.endswith(("same", "different")) and "cosine" not in x]
    assert len(rows) == 2
    end = header.index("cosine") + len("cosine")
    for row, cos in zip(rows, ("0.100", "0.900")):
        assert row.index(cos) + len(cos) == end, (header, row)  # the columns line up
    assert rows[0].split()[0] == "A" * 35 + "_0001"  # fits: shown whole
    b = rows[0].split()[1]
    assert b.endswith("...") and len(b) == _demo.MAX_NAME  # too long: cut
