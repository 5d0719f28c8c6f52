"""Errors a user can fix: shown as one readable line, exit code 2, no traceback."""

from __future__ import annotations


class BiolmError(Exception):
    """A usage, configuration or input-data error (exit code 2)."""


class ConfigError(BiolmError):
    """A configuration key has a wrong name, type or value.

    `key` is the dotted YAML path (e.g. ``settings.training.batchsize``).
    """

    def __init__(self, key: str, msg: str, source: str | None = None):
        self.key = key
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {msg}")


class DataError(BiolmError):
    """A data file has a bad row or is unreadable; names file, line and column where known."""

    def __init__(self, file: str, msg: str, line: int | None = None, column: int | None = None):
        self.file = str(file)
        self.line = line
        self.column = column
        self.msg = msg
        where = self.file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {msg}")


class NoSpaceError(BiolmError):
    """The disk (or quota) filled up while writing ``path``; the partial file was removed."""

    def __init__(self, path: str):
        self.path = str(path)
        super().__init__(f"no space left writing {self.path} (the partial file was removed; free some space and run again)")


# errno values a user fixes in their environment, not in biolm
_NO_SPACE = {28, 122}  # ENOSPC, EDQUOT
_FS_MESSAGES = {13: "permission denied", 1: "operation not permitted", 30: "read-only file system", 36: "file name too long", 20: "not a folder", 21: "is a folder", 24: "too many open files"}


def as_user_error(exc: BaseException) -> BiolmError | None:
    """A user-fixable :class:`BiolmError` for an environment failure, else ``None``.

    Disk full or over quota (also when HDF5 reports it as a RuntimeError), permission denied,
    read-only file system, a path component that is a file, and running out of memory are the
    user's to fix: exit code 2 with one line naming the file, never a traceback.
    """
    if isinstance(exc, BiolmError):
        return exc
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE or "No space left on device" in text or "errno = 28" in text:
        return NoSpaceError(getattr(exc, "filename", None) or "(a file)")
    if isinstance(exc, OSError) and exc.errno in _FS_MESSAGES:
        where = exc.filename if exc.filename else "a file"
        return BiolmError(f"{where}: {_FS_MESSAGES[exc.errno]}")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text:
        return BiolmError("out of memory: lower settings.training.batchsize (or blocksize, or looscores.maxpositions for interpret)")
    return None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (torch and pickle add multi-line advice), capped;
    the exception's type name when the message is empty."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class FileFormatError(DataError, ValueError):
    """A file is not a valid ``what`` file (weights, pickles, configs).

    ``str(exc)`` is one line: ``not a {what} file: {path} ({reason})``.
    """

    def __init__(self, path: str, what: str, reason: str):
        self.file = str(path)
        self.line = None
        self.column = None
        self.what = what
        self.reason = reason
        self.msg = f"not a {what} file ({reason})"
        BiolmError.__init__(self, f"not a {what} file: {self.file} ({reason})")
