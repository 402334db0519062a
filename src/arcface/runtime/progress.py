"""Progress of long jobs, on a terminal and off it.

On a terminal, a tqdm bar on stderr. When stderr is a file or a pipe (a CI log, ``make demo > log``), a bar is
invisible, so :class:`Progress` writes a plain line instead: at most one every ``interval`` seconds (default
10 s) and one at each tenth of the total, with the rate and the time left, plus a closing line. Jobs shorter
than ``quiet_for`` seconds (2 s) print nothing off a terminal.

    >>> for path in progress(paths, total=len(paths), desc="align"):
    ...     work(path)
    align: 1,200/7,701 (16%)  45.1 img/s  2m24s left

``ARCFACE_PROGRESS=0`` turns every report off; ``ARCFACE_PROGRESS=lines`` forces plain lines on a terminal.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

__all__ = ["Progress", "format_duration", "progress"]

T = TypeVar("T")

#: Seconds between two progress lines off a terminal.
LINE_INTERVAL = 10.0
#: A job that ends sooner than this prints no progress line off a terminal.
QUIET_FOR = 2.0


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``3725`` -> ``"1h02m"``; under a minute ``"42s"`` (or ``"4.2s"``)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _count(n: float, unit: str) -> str:
    if unit == "B":
        for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if n >= scale:
                return f"{n / scale:,.1f} {name}"
        return f"{n:,.0f} B"
    return f"{n:,.0f}"


class Progress:
    """A progress report for ``total`` units of work (None when unknown); a context manager.

    Args:
        total: the amount of work, or None.
        desc: what is being done ("align", "embed", a file name).
        unit: the unit of :meth:`update` ("img", "B" for bytes: shown as MiB/GiB, "step").
        enabled: False prints nothing at all.
        stream: where to write (stderr).
        interval: seconds between lines off a terminal.
        initial: work already done (a resumed download).
    """

    def __init__(
        self,
        total: float | None = None,
        desc: str = "",
        *,
        unit: str = "img",
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float = LINE_INTERVAL,
        initial: float = 0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self.n = float(initial)
        self._initial = float(initial)
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._last_tenth = self._tenth(self.n)
        self._printed = False
        self._closed = False
        self._postfix = ""
        mode = os.environ.get("ARCFACE_PROGRESS", "").lower()
        self.enabled = bool(enabled) and mode not in ("0", "off", "no", "false")
        self._bar = None
        if self.enabled and mode != "lines" and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, initial=initial, file=self.stream, leave=False, dynamic_ncols=True,
                unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
            )  # fmt: skip

    def _tenth(self, n: float) -> int:
        if not self.total:
            return 0
        return int(10 * n / self.total)

    def update(self, n: float = 1) -> None:
        """Record ``n`` more units done."""
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        tenth = self._tenth(self.n)
        due = now - self._last_line >= self.interval or tenth > self._last_tenth
        if due and now - self._t0 >= QUIET_FOR:
            self._line(now)
            self._last_line, self._last_tenth = now, tenth

    def set_description(self, desc: str) -> None:
        """Change what the report says is being done."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def set_postfix(self, **values: object) -> None:
        """Show ``key=value`` pairs after the counts (the latest loss, say)."""
        self._postfix = "  ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def rate(self) -> float:
        """Units per second since the start (not counting ``initial``)."""
        return (self.n - self._initial) / max(time.monotonic() - self._t0, 1e-9)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self._t0
        rate = (self.n - self._initial) / max(elapsed, 1e-9)
        unit = self.unit if self.unit != "B" else ""
        per = f"{_count(rate, self.unit)}{' ' + unit if unit else ''}/s"
        head = f"{self.desc}: " if self.desc else ""
        if final:
            text = f"{head}done, {_count(self.n, self.unit)} {unit} in {format_duration(elapsed)} ({per})"
        elif self.total:
            left = (self.total - self.n) / rate if rate > 0 else math.inf
            pct = 100.0 * self.n / self.total
            text = (f"{head}{_count(self.n, self.unit)}/{_count(self.total, self.unit)} ({pct:.0f}%)  {per}  "
                    f"{format_duration(left)} left")  # fmt: skip
        else:
            text = f"{head}{_count(self.n, self.unit)} {unit}  {per}  {format_duration(elapsed)} so far"
        if self._postfix and not final:
            text = f"{text}  {self._postfix}"
        print(" ".join(text.split()), file=self.stream, flush=True)
        self._printed = True

    def close(self) -> None:
        """End the report: closes the bar, or prints the closing line if any line was printed."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and (self._printed or time.monotonic() - self._t0 >= QUIET_FOR):
            self._line(time.monotonic(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "img", enabled: bool = True
) -> Iterator[T]:
    """Iterate over ``items`` while reporting progress (see :class:`Progress`); ``total`` defaults to ``len``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, enabled=enabled) as p:
        for item in items:
            yield item
            p.update(1)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
