"""Progress of long work: a rich bar on a terminal; on a file or pipe, a log line every ~30 s.

One :class:`Progress` serves a whole mode; each stretch of work (an epoch, a LOO pass) is
``start(description, total)``, ``advance(n)``, ``finish()``.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Reports how far a stretch of work has got.

    Parameters
    ----------
    log : the run's logger (used when stderr is not a terminal).
    quiet : report nothing.
    every : seconds between log lines when stderr is not a terminal.
    unit : what is counted (``samples``, ``sequences``).
    """

    def __init__(self, log: Any, quiet: bool = False, every: float = 30.0, unit: str = "samples"):
        self.log = log
        self.quiet = quiet
        self.every = every
        self.unit = unit
        self.bar = None
        self._task = None
        if not quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)

    def __enter__(self) -> "Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.stop()
        return False

    def start(self, description: str, total: int) -> None:
        self.description, self.total, self.done = description, int(total), 0
        self.t0 = self.last = time.perf_counter()
        if self.bar is not None:
            self._task = self.bar.add_task(description, total=total)

    def advance(self, n: int, description: str | None = None) -> None:
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(self._task, advance=n, description=description or self.description)
            return
        now = time.perf_counter()
        if not self.quiet and now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            self.log.info("%s: %d/%d %s, %.0f %s/s, ETA %s", description or self.description, self.done, self.total, self.unit, rate, self.unit, _duration(eta))

    def finish(self) -> None:
        if self.bar is not None and self._task is not None:
            self.bar.remove_task(self._task)
            self._task = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
