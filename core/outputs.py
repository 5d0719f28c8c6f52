"""Atomic writes: a file appears complete or not at all, never half written.

Every output goes through :func:`atomic_path`: the data are written to a temporary file
``.<name>.tmp-<pid>-<random>`` next to the target and renamed over it. A failure (disk full,
KeyboardInterrupt, an exception in the writer) removes the temporary and leaves an existing target
as it was; a full disk is reported as :class:`~biolm.core.errors.NoSpaceError` naming the target.
A process killed outright (``kill -9``) cannot clean up: its temporaries carry its pid, and
:func:`remove_stale_temporaries` deletes those of dead processes at the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import BiolmError, NoSpaceError, as_user_error

# ".<name>.tmp-<pid>-<random>" (atomic_path) and "<name>.tmp-<pid>" (stores of earlier versions)
_TEMPORARY = re.compile(r"^(?:\..+\.tmp-(\d+)-[A-Za-z0-9_]+|.+\.tmp-(\d+))$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on any
    failure (KeyboardInterrupt included) it is removed and an existing ``path`` is untouched.

    A full disk or quota while writing raises :class:`~biolm.core.errors.NoSpaceError` naming
    ``path``; other environment failures (permission denied, read-only file system) a
    :class:`~biolm.core.errors.BiolmError` naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix="", dir=path.parent)
    except OSError as exc:
        raise _located(exc, path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        # some writers report a full disk without its errno (torch: "unexpected pos"): look at
        # the disk while the failed temporary still fills it
        full = isinstance(exc, Exception) and not isinstance(exc, BiolmError) and _nearly_full(path.parent)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if full:
            raise NoSpaceError(str(path)) from None
        if isinstance(exc, BiolmError) and not isinstance(exc, NoSpaceError):
            raise
        translated = _located(exc, path)
        if translated is exc:
            raise
        raise translated from None


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB left for this user on the file system of ``folder``."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _located(exc: BaseException, path: Path) -> BaseException:
    """``exc`` as a user error naming ``path`` when the environment is at fault, else ``exc``."""
    err = as_user_error(exc)
    if isinstance(err, NoSpaceError):
        return NoSpaceError(str(path))
    if err is not None and isinstance(exc, OSError):
        return BiolmError(f"cannot write {path}: {exc.strerror or err}")
    return exc


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False, log: Callable[[str], None] | None = None, min_age: float = 0.0) -> int:
    """Delete the temporaries of :func:`atomic_path` left in ``folder`` by processes that no
    longer run (a ``kill -9`` during a write); returns how many were removed.

    ``min_age`` (seconds since the last write) spares the temporaries of runs on other machines
    sharing the folder, whose pids mean nothing here (a folder no lock covers)."""
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for p in folder.rglob("*") if recursive else folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m.group(1) or m.group(2))
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            st = p.stat()
            if now - st.st_mtime < min_age:
                continue
            size = st.st_size
            p.unlink()
        except OSError:
            continue
        removed += 1
        if log:
            log(f"removed {p} ({size / 2**20:.1f} MiB) left by an interrupted run (pid {pid})")
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def write_atomic(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = "w") -> Path:
    """Call ``writer(fh)`` on a temporary file next to ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {})) as fh:
            writer(fh)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda fh: fh.write(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _jsonable(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return write_atomic(path, lambda fh: torch.save(obj, fh), mode="wb")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike) -> Iterator[tuple[Any, "GuardedFile"]]:
    """``(h5py.File, its GuardedFile)`` written atomically to ``path``: a full disk is a
    :class:`~biolm.core.errors.NoSpaceError` naming ``path``, never a crashed interpreter; a long
    writer may stop early once ``guard.error`` is set."""
    import h5py

    with atomic_path(path) as tmp, GuardedFile(tmp) as fh:
        f = h5py.File(fh, "w")
        try:
            yield f, fh
        except BaseException:
            close_quietly(f)
            raise
        f.close()


class GuardedFile:
    """A file for HDF5 to write through (``h5py.File(GuardedFile(tmp), "w")``).

    HDF5 does not survive a failed write (a full disk: its objects can no longer be freed, and
    the interpreter crashes on exit), so after the first failure this file accepts and drops
    every further write — HDF5 finishes and closes cleanly — and :meth:`raise_error` (also
    called on leaving the ``with`` block) reports the failure; ``error`` tells a long writer to
    stop early. Use it inside :func:`atomic_path`, which removes the file."""

    def __init__(self, path: str | os.PathLike):
        self.fh = open(path, "w+b")
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.error is None:
            try:
                return self.fh.write(data)
            except OSError as e:
                self.error = e
        return len(memoryview(data))

    def flush(self) -> None:
        if self.error is None:
            try:
                self.fh.flush()
            except OSError as e:
                self.error = e

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)

    def readinto(self, buf) -> int:
        return self.fh.readinto(buf)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.fh.seek(pos, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.fh.truncate(size)
            except OSError as e:
                self.error = e
        return self.fh.tell() if size is None else size

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "GuardedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
        try:
            self.fh.close()
        except OSError as e:
            self.error = self.error or e
        if exc[0] is None:
            self.raise_error()


def close_quietly(f) -> None:
    """Close a file being written after an error, without replacing that error."""
    try:
        f.close()
    except Exception:
        pass
