"""Long work on a file or pipe (stderr not a terminal): a progress line every ``every`` seconds with
what is done, the rate and the time left; none when quiet, none between intervals."""

from __future__ import annotations

import logging
import time

from biolm.core.progress import Progress, _duration


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _logger() -> tuple[logging.Logger, Lines]:
    log = logging.getLogger(f"test_progress.{time.perf_counter_ns()}")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = Lines()
    log.addHandler(handler)
    return log, handler


def _work(progress: Progress, steps: int, pause: float) -> None:
    progress.start("fold 0 epoch 1/3", 10 * steps)
    for _ in range(steps):
        time.sleep(pause)
        progress.advance(10)
    progress.finish()


def test_a_line_per_interval_with_count_rate_and_eta():
    log, out = _logger()
    with Progress(log, every=0.02, unit="cells") as progress:
        assert progress.bar is None  # pytest's stderr is not a terminal
        _work(progress, steps=5, pause=0.03)
    assert len(out.lines) == 4, out.lines  # each step comes after an interval; none once all is done
    first = out.lines[0]
    assert first.startswith("fold 0 epoch 1/3: 10/50 cells, ") and " cells/s, ETA " in first and first.endswith(" s")
    assert out.lines[-1].startswith("fold 0 epoch 1/3: 40/50 cells")


def test_nothing_between_intervals_or_when_quiet():
    log, out = _logger()
    with Progress(log, every=30.0) as progress:
        _work(progress, steps=5, pause=0.0)
    with Progress(log, quiet=True, every=0.0) as progress:
        _work(progress, steps=5, pause=0.001)
    assert out.lines == []


def test_durations_read_as_people_write_them():
    assert [_duration(s) for s in (4.4, 119, 126, 7199, 7260)] == ["4 s", "119 s", "2 min 06 s", "119 min 59 s", "2 h 01 min"]
