"""Progress reports off a terminal: plain lines with the rate and the time left (arcface.runtime.progress)."""

from __future__ import annotations

import io

import pytest

from arcface.runtime import progress as P


@pytest.fixture
def clock(monkeypatch):
    """A fake monotonic clock: ``clock[0]`` seconds."""
    now = [1000.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: now[0])
    monkeypatch.delenv("ARCFACE_PROGRESS", raising=False)
    return now


def test_lines_off_a_terminal_with_rate_and_time_left(clock):
    out = io.StringIO()
    with P.Progress(100, "align", stream=out, interval=5) as p:
        for _ in range(100):
            clock[0] += 0.5  # 2 images per second
            p.update(1)
    lines = out.getvalue().splitlines()
    assert lines, "no progress line was written to a non-terminal stream"
    assert lines[0].startswith("align: ") and "/100 (" in lines[0] and "img/s" in lines[0] and "left" in lines[0]
    assert "2 img/s" in lines[0]
    assert lines[-1].startswith("align: done, 100 img in 50s")
    # one line per tenth or per 5 s, whichever comes first: never one line per item
    assert 5 <= len(lines) <= 15


def test_short_jobs_print_nothing_and_switch_off(clock, monkeypatch):
    out = io.StringIO()
    with P.Progress(10, "quick", stream=out) as p:
        for _ in range(10):
            clock[0] += 0.01
            p.update(1)
    assert out.getvalue() == ""
    monkeypatch.setenv("ARCFACE_PROGRESS", "0")
    with P.Progress(10, "off", stream=out) as p:
        for _ in range(10):
            clock[0] += 5
            p.update(1)
    assert out.getvalue() == ""


def test_bytes_unknown_total_and_postfix(clock):
    out = io.StringIO()
    with P.Progress(None, "lfw.tgz", unit="B", stream=out, interval=1) as p:
        p.set_postfix(loss="1.25")
        for _ in range(4):
            clock[0] += 1
            p.update(3 << 20)
    text = out.getvalue()
    assert "MiB" in text and "so far" in text and "loss=1.25" in text


def test_progress_wraps_an_iterable_and_keeps_items(clock):
    assert list(P.progress([1, 2, 3], desc="x")) == [1, 2, 3]


@pytest.mark.parametrize(("s", "text"), [(4.24, "4.2s"), (42, "42s"), (75.2, "1m15s"), (3725, "1h02m")])
def test_format_duration(s, text):
    assert P.format_duration(s) == text
