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
