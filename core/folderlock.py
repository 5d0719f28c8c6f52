"""One run at a time per output folder: a lock file naming its holder (pid, host, command).

Two runs writing the same folder would mix their checkpoints and results, so each run holds
``<folder>/.biolm.lock`` while it works there, and a second run stops at once (exit code 2)
naming the holder. The lock is an ``flock`` on that file: the kernel releases it when the
holding process ends, however it ends, so a lock left by a killed run (``kill -9``, a node that
went down) is stale by construction and simply taken over — with a line in the log saying whose
it was. The file's content (pid, host, start time, command) only serves the messages.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path

from .errors import BiolmError

LOCK_NAME = ".biolm.lock"


class FolderLock:
    """The lock of one output folder; :meth:`acquire` it, :meth:`release` it when done.

    Attributes
    ----------
    path : the lock file.
    previous : the holder recorded by a run that ended without releasing the lock (it was
        killed), or ``None``; set by :meth:`acquire`.
    """

    def __init__(self, folder: str | os.PathLike, command: str = ""):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command or " ".join(["biolm", *sys.argv[1:]])
        self.previous: dict | None = None
        self._fd: int | None = None

    def acquire(self, warn=None) -> "FolderLock":
        """Take the lock or raise :class:`BiolmError` naming the run that holds it.

        ``warn(msg)`` receives one line when the file system cannot lock (the run goes on
        unprotected)."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            if warn:
                warn(f"cannot lock {self.path} on this system: a second run into {self.folder} would not be detected")
            return self
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                raise BiolmError(f"{self.folder} is in use by another biolm run ({holder}); wait for it to end, or write to another outputpath") from None
            except OSError as exc:  # a file system without locks (some network mounts)
                os.close(fd)
                if warn:
                    warn(f"cannot lock {self.path} ({exc.strerror}): a second run into {self.folder} would not be detected")
                return self
            # a run that just finished unlinks the file it held: lock the file that is there now
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.previous = _read(fd) or None
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _dt.datetime.now().isoformat(timespec="seconds"), "command": self.command}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
            except OSError:  # a full disk: the lock holds all the same, only unnamed
                pass
            self._fd = fd
            return self
        raise BiolmError(f"{self.path}: could not take the lock (other runs keep replacing it)")

    def stale_message(self) -> str | None:
        """One line about the holder a killed run left behind, if any."""
        if not self.previous:
            return None
        return f"a previous run ({_describe(self.previous)}) ended without releasing {self.path}; it no longer runs, so the lock was taken over"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: nobody can have locked this file meanwhile
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    parts = [str(holder.get("command") or "biolm"), f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return ", ".join(parts)
