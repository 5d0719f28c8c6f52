"""A mode's results are published together: all of the new set, or the previous set untouched.

A mode writes its results into a staging folder (``<target>/.staging-<pid>/``, same file system)
and :func:`publication` moves them into ``<target>`` only when every one was written. A run that
fails (bad input, a plot that cannot be drawn, a full disk, Ctrl-C) removes the staging folder and
leaves the previous results as they were; a successful one replaces them, and removes the previous
results it has no counterpart for (``replaces``), so a folder never holds two runs' results mixed.

The move is made crash-safe by a journal: ``<target>/.publish.json`` lists the moves and
removals and is written (atomically) before the first of them; a run killed in between leaves the
journal, and the next run in that folder (:func:`finish_publication`, under the folder's lock)
completes it. Checkpoints, logs, the dataset store and ``config.yaml`` are not results: they stay
where they are written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from .outputs import pid_alive, read_json, write_json

JOURNAL = ".publish.json"
STAGING_PREFIX = ".staging-"


@contextlib.contextmanager
def publication(target: str | os.PathLike, replaces: Iterable[str] = (), enabled: bool = True) -> Iterator[Path]:
    """Yield a staging folder whose files replace ``target``'s results when the block succeeds.

    Parameters
    ----------
    target : the folder the results belong in (a mode folder).
    replaces : glob patterns, relative to ``target``, of the previous results; those matching
        files the new set does not overwrite are removed on publication (hidden files never).
    enabled : ``False`` on processes that write nothing (DDP ranks other than 0): the staging
        folder is neither created nor published.
    """
    target = Path(target)
    staging = target / f"{STAGING_PREFIX}{os.getpid()}"
    if not enabled:
        yield staging
        return
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    new = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    old = {str(p.relative_to(target)) for pattern in replaces for p in target.glob(pattern) if p.is_file() and not p.name.startswith(".")}
    write_json(target / JOURNAL, {"staging": staging.name, "move": new, "remove": sorted(old - set(new))})
    finish_publication(target)


def finish_publication(target: str | os.PathLike) -> bool:
    """Complete a publication a killed run left half done (its journal); remove the staging
    folders of runs that died before publishing. Returns whether a journal was completed."""
    target = Path(target)
    journal = target / JOURNAL
    done = False
    if journal.exists():
        try:
            plan = read_json(journal)
            staging = target / plan["staging"]
            moves, removals = list(plan["move"]), list(plan["remove"])
        except (OSError, ValueError, KeyError, TypeError):
            plan = None  # a journal is written atomically; an unreadable one was never committed
        if plan is not None:
            for rel in removals:
                with contextlib.suppress(FileNotFoundError):
                    (target / rel).unlink()
            for rel in moves:
                src = staging / rel
                if src.exists():
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, target / rel)
            shutil.rmtree(staging, ignore_errors=True)
            done = True
        journal.unlink()
    for d in target.glob(f"{STAGING_PREFIX}*") if target.is_dir() else ():
        pid = d.name[len(STAGING_PREFIX) :]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
    return done
