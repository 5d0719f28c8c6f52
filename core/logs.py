"""Per-run log files (``OUTPUTPATH/<mode>/logs/<timestamp>.log``) and console output."""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from pathlib import Path


def setup_logger(logdir: Path, name: str, quiet: bool = False, debug: bool = False, suffix: str = "") -> tuple[logging.Logger, Path]:
    """A logger writing everything to a new timestamped file and INFO+ to stderr (unless quiet)."""
    logdir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + suffix
    path = logdir / f"{stamp}.log"
    n = 1
    while path.exists():
        path = logdir / f"{stamp}_{n}.log"
        n += 1
    logger = logging.getLogger(f"biolm.run.{name}.{stamp}.{n}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    fh = _FileHandler(path, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    fh.setLevel(logging.DEBUG)
    logger.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        sh.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.addHandler(sh)
    # library warnings (warnings.warn) go to the run's log, not as multi-line text to the console
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(fh)
    return logger, path


class _FileHandler(logging.FileHandler):
    """A log file that never interrupts the run: a full disk or a vanished folder loses log
    lines, not results (the logging module would print a traceback to stderr instead)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass


def close_logger(logger: logging.Logger) -> None:
    warn = logging.getLogger("py.warnings")
    for h in list(logger.handlers):
        h.close()
        logger.removeHandler(h)
        if h in warn.handlers:
            warn.removeHandler(h)
    if not warn.handlers:
        logging.captureWarnings(False)
