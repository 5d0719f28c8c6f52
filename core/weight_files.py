"""Weight files read safely: ``.safetensors`` (validated, read tensor by tensor) and PyTorch
state dicts (``torch.load(weights_only=True)``), with one-line errors for damaged files.

safetensors, with torch and the standard library only
----------------------------------------------------

The format (https://github.com/huggingface/safetensors, "Format"):

- bytes 0..7: ``N``, the header length, unsigned 64-bit little-endian;
- bytes 8..8+N: a UTF-8 JSON object (possibly padded with trailing spaces) mapping each tensor
  name to ``{"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}``, plus an
  optional ``"__metadata__"`` object of string -> string;
- the rest: the data buffer. Offsets are relative to its start; each tensor is stored
  C-contiguous, little-endian, in ``end - begin = prod(shape) * itemsize`` bytes; the tensors
  tile the buffer without gaps or overlaps.

:class:`SafetensorsFile` checks all of this when it opens a file (before reading any tensor), so
truncated or garbage files fail with one :class:`~biolm.core.errors.FileFormatError` line. Tensors are
then read one at a time (each ``get`` reads exactly its bytes), so loading a checkpoint into a
model needs the model plus one tensor of memory, not two copies of the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from .errors import DataError, FileFormatError, first_line
from .outputs import write_atomic

__all__ = ["SAFETENSORS_DTYPES", "SafetensorsFile", "read_safetensors", "write_safetensors", "read_torch_state_dict"]

#: safetensors dtype name -> torch dtype (those torch can hold on every platform)
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
_NAMES_BY_DTYPE = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit
_WHAT = "safetensors"


class SafetensorsFile:
    """A validated ``.safetensors`` file whose tensors are read on demand.

    Parameters
    ----------
    path
        The file.

    Attributes
    ----------
    path : str
    metadata : dict[str, str]
        The ``__metadata__`` entry (empty when absent).
    entries : dict[str, tuple[str, tuple[int, ...], int, int]]
        ``name -> (dtype name, shape, begin, end)`` with absolute byte offsets into the file.

    Raises
    ------
    FileFormatError
        ``not a safetensors file: PATH (reason)`` when the file is too short, the header length is
        impossible, the header is not a JSON object of valid entries, a dtype is unsupported, a
        tensor's byte range disagrees with its shape, or the ranges overlap, leave gaps or do not
        end exactly at the end of the file (truncation).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    self._fail(f"{size} bytes, too short for the 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if n < 2 or n > _MAX_HEADER or n > size - 8:
                    self._fail(f"header length {n} is impossible for a file of {size} bytes")
                raw = fh.read(n)
        except OSError as exc:
            raise FileFormatError(self.path, _WHAT, f"cannot read: {exc.strerror or exc}") from None
        if len(raw) != n:
            self._fail("file ends inside the header")
        self.data_start = 8 + n
        self.metadata: dict[str, str] = {}
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        self._parse_header(raw, size - self.data_start)

    # ------------------------------------------------------------------ validation
    def _fail(self, reason: str) -> None:
        raise FileFormatError(self.path, _WHAT, reason)

    def _parse_header(self, raw: bytes, data_len: int) -> None:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._fail(f"header is not UTF-8 JSON: {str(exc).splitlines()[0]}")
        if not isinstance(header, dict):
            self._fail(f"header is a JSON {type(header).__name__}, not an object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            self._fail("__metadata__ must map strings to strings")
        self.metadata = dict(meta)
        spans = []
        for name, entry in header.items():
            dtype, shape, begin, end = self._check_entry(name, entry)
            spans.append((begin, end, name))
            self.entries[name] = (dtype, shape, self.data_start + begin, self.data_start + end)
        spans.sort()
        pos = 0
        for begin, end, name in spans:
            if begin != pos:
                what = "overlaps the previous tensor" if begin < pos else f"leaves a gap of {begin - pos} bytes"
                self._fail(f"tensor '{name}' starts at {begin} and {what}")
            pos = end
        if pos != data_len:
            if pos > data_len:
                self._fail(f"truncated: the header needs {pos} data bytes, the file has {data_len}")
            self._fail(f"{data_len - pos} bytes after the last tensor")

    def _check_entry(self, name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            self._fail(f"entry '{name}' must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            self._fail(f"tensor '{name}' has unsupported dtype {dtype!r} (supported: {', '.join(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            self._fail(f"tensor '{name}' has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            self._fail(f"tensor '{name}' has invalid data_offsets {offsets!r}")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            self._fail(f"tensor '{name}' {dtype}{shape} needs {nbytes} bytes but data_offsets span {offsets[1] - offsets[0]}")
        return dtype, tuple(shape), offsets[0], offsets[1]

    # ------------------------------------------------------------------ access
    def keys(self) -> list[str]:
        """Tensor names, in header order."""
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor (no data read)."""
        return self.entries[name][1]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor.

        Returns
        -------
        torch.Tensor
            A new CPU tensor (it owns its memory) with the stored dtype and shape.

        Raises
        ------
        KeyError
            If there is no such tensor.
        FileFormatError
            If the file changed on disk and the bytes are no longer there.
        """
        dtype_name, shape, begin, end = self.entries[name]
        dtype = SAFETENSORS_DTYPES[dtype_name]
        nbytes = end - begin
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(nbytes)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(begin)
                got = fh.readinto(buf)
        except OSError as exc:
            raise FileFormatError(self.path, _WHAT, f"cannot read tensor '{name}': {exc.strerror or exc}") from None
        if got != nbytes:
            self._fail(f"truncated inside tensor '{name}'")
        if sys.byteorder != "little" and dtype.itemsize > 1:  # pragma: no cover - big-endian hosts
            swapped = np.frombuffer(buf, dtype=f"<u{dtype.itemsize}").astype(f"=u{dtype.itemsize}")
            buf = bytearray(swapped.tobytes())
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def read_safetensors(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read tensors of a ``.safetensors`` file into a dict.

    Parameters
    ----------
    path
        The file.
    names
        Tensors to read (default: all). Unknown names raise ``KeyError``.

    Returns
    -------
    dict[str, torch.Tensor]
        ``name -> tensor`` on the CPU, stored dtype and shape.
    """
    f = SafetensorsFile(path)
    return {n: f.get(n) for n in (f.keys() if names is None else names)}


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors as a ``.safetensors`` file (same layout as the reference implementation).

    Parameters
    ----------
    path
        Output file (replaced atomically).
    tensors
        ``name -> tensor`` of a dtype in :data:`SAFETENSORS_DTYPES`; shared storage is written
        twice (callers drop tied duplicates first, as ``transformers`` does).
    metadata
        Optional ``__metadata__`` (strings only).
    """
    if sys.byteorder != "little":  # pragma: no cover - no big-endian host runs biolm's CI
        raise ValueError("safetensors are little-endian; writing them on a big-endian host is not supported")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    pos = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _NAMES_BY_DTYPE:
            raise ValueError(f"tensor '{name}': dtype {t.dtype} cannot be written to safetensors")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _NAMES_BY_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + len(data)]}
        blobs.append(data)
        pos += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer aligns the data buffer to 8 bytes

    def write(fh: Any) -> None:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for data in blobs:
            fh.write(data)

    write_atomic(path, write, mode="wb")


def _torch_load_reason(exc: BaseException) -> str:
    """One line out of torch.load's multi-line errors (drop the advice, keep the cause)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        rest = [ln for ln in lines[1:] if not ln.startswith(("Please file an issue", "Check the documentation"))]
        cause = rest[0] if rest else "refused"
        if "WeightsUnpickler error:" in lines[0] + " ".join(lines[1:2]):
            cause = cause.split("WeightsUnpickler error:")[-1].strip() or cause
        return f"refused by torch's weights-only unpickler: {cause}"
    reason = first_line(exc)
    if "PytorchStreamReader" in reason and ". " in reason:
        reason = reason.split(". ")[0]  # drop miniz's advice sentences
    return f"{type(exc).__name__}: {reason}"


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` of a state dict, with one-line errors.

    A Lightning checkpoint (the state dict under ``"state_dict"``) gives its state dict.

    Returns
    -------
    dict[str, torch.Tensor]
        CPU tensors (tied entries may share storage).

    Raises
    ------
    FileFormatError
        ``not a PyTorch state-dict file: PATH (reason)`` for empty, truncated, garbage or
        malicious files (torch's weights-only unpickler refuses non-tensor globals; nothing is
        executed) and for files that hold something other than ``{str: tensor}``.
    """
    path = str(path)
    what = "PyTorch state-dict"
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    if not magic:
        raise FileFormatError(path, what, "empty file")
    # torch >= 1.6 writes zip archives; older torch a pickle stream (protocol 2: b"\x80\x02")
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise FileFormatError(path, what, f"neither a zip archive nor a pickle stream (starts with {magic!r})")
    try:
        with warnings.catch_warnings():
            # a protocol-4 pickle makes torch warn before it refuses or loads it; the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, ...
        raise FileFormatError(path, what, _torch_load_reason(exc)) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise FileFormatError(path, what, f"holds a {type(obj).__name__}, not a dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise FileFormatError(path, what, f"entry {bad[0]!r} is not a named tensor")
    return obj
