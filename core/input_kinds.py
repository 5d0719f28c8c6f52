"""Which tokenizer kind reads a data file: the input types core knows, and the choice of a
plugin's kind for a run.

A file is recognised by its first bytes (and a folder by its ``.npy`` files), never by its name
alone: ``.h5ad`` (HDF5), ``.npy`` / ``.npz`` (NumPy), anything else is delimited text. A plugin
that reads several kinds (``PluginConfig.tokenizers``) gets the first kind whose
``TokenizerSpec.accepts`` takes the mode's data file; a file it cannot read is one error line
saying what the file is and what the plugin reads — not a parse failure deep in a reader.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError, DataError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError:
        return b""


def file_type(path: str | os.PathLike) -> str:
    """``"folder"``, ``"h5ad"`` (any HDF5 file), ``"npy"``, ``"npz"`` or ``"text"``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "folder"
    head = _head(path)
    if head.startswith(HDF5_MAGIC):
        return "h5ad"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC) and path.endswith(".npz"):
        return "npz"
    return "text"


_DESCRIPTIONS = {"folder": "a folder", "h5ad": "an HDF5 (.h5ad) file", "npy": "a NumPy .npy file", "npz": "a NumPy .npz file", "text": "a text file"}


def describe_file(path: str | os.PathLike) -> str:
    """``"a folder"``, ``"an HDF5 (.h5ad) file"``, ... for messages."""
    return _DESCRIPTIONS[file_type(path)]


def reads_text(path: str) -> bool:
    """The ``atomic`` kind: delimited text (plain or gzip)."""
    return file_type(path) == "text"


def reads_h5ad(path: str) -> bool:
    """The ``expression`` kind: an AnnData ``.h5ad`` file."""
    return file_type(path) == "h5ad"


def reads_arrays(path: str) -> bool:
    """The ``array`` kind: a ``.npy``/``.npz`` file or a folder of ``.npy`` files."""
    return file_type(path) in ("npy", "npz", "folder")


def choose_kind(registry: Any, plugin: Any, requested: str, path: str | None) -> str:
    """The tokenizer kind of a run: ``requested`` (checked against the file), or with ``auto``
    the first of the plugin's kinds that reads ``path``.

    Raises
    ------
    ConfigError : ``requested`` is not a kind the plugin reads.
    DataError : the file is missing, or no chosen kind reads it (the message says what the file
        is and what the plugin reads).
    """
    kinds = plugin.kinds
    if requested != "auto" and requested not in kinds:
        return requested  # config resolution already refused a wrong kind; a plugin's own kinds pass
    if not path:
        return kinds[0] if requested == "auto" else requested
    if not os.path.exists(path):
        raise DataError(path, "no such file or folder")
    specs = {k: registry.tokenizer(k) for k in kinds}
    reads = {k: s.accepts is None or s.accepts(path) for k, s in specs.items()}
    what = describe_file(path)
    listing = "; ".join(f"{s.inputs or 'its input'} ({k})" for k, s in specs.items())
    if requested != "auto" and len(kinds) > 1:
        if not reads[requested]:
            others = [k for k in kinds if reads[k]]
            hint = f"; set tokenization: encoding: {others[0]} (or auto)" if others else f"; {plugin.name} reads: {listing}"
            raise DataError(path, f"{what}, but tokenization: encoding: {requested} reads {specs[requested].inputs or 'other input'}{hint}")
        return requested
    for k in kinds:
        if reads[k] and requested in ("auto", k):
            return k
    raise DataError(path, f"{what}, which {plugin.name} cannot read; it reads: {listing}")


def check_kind_setting(plugin: Any, encoding: str, source: str | None) -> None:
    """Config resolution: ``tokenization: encoding`` must be a kind the plugin reads (or ``auto``
    when it reads several)."""
    kinds = plugin.kinds
    if encoding in kinds or (encoding == "auto" and len(kinds) > 1):
        return
    if len(kinds) == 1:
        raise ConfigError("tokenization.encoding", f"{plugin.name} uses the {kinds[0]!r} tokenizer, got {encoding!r}", source)
    raise ConfigError("tokenization.encoding", f"{plugin.name} reads {', '.join(map(repr, kinds))} or 'auto' (chosen from the data file), got {encoding!r}", source)


def input_shape(feature_shape: tuple[int, ...]) -> tuple[int, int]:
    """(L, C) of the model input made from records of ``feature_shape``: the first axis is the
    channels (EIR's / PyTorch's channels-first layout; 1 for a 1-D record such as an expression
    profile), the product of the other axes the positions."""
    shape = tuple(int(d) for d in feature_shape)
    if len(shape) <= 1:
        return (shape[0] if shape else 1), 1
    n = 1
    for d in shape[1:]:
        n *= d
    return n, shape[0]
