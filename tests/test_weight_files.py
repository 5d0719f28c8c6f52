"""Core's readers of untrusted files (``biolm.core.safe_pickle``, ``biolm.core.weight_files``):
malicious pickles are refused before anything runs, damaged safetensors and PyTorch state dicts
fail with one ``not a ... file: PATH (reason)`` line, safetensors round-trip every dtype.

The good files are the Geneformer fixtures (``fixtures/geneformer_hf/``: Geneformer's pickled
dictionaries, a ``transformers``-written ``model.safetensors`` and a ``torch.save``d state dict).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from biolm.core.errors import BiolmError, FileFormatError
from biolm.core.hookspecs import SafetensorsFile, UnsafePickleError, load_plain_pickle, read_safetensors, read_torch_state_dict, write_safetensors
from biolm.core.safe_pickle import loads_plain_pickle

FIX = Path(__file__).parent / "fixtures" / "geneformer_hf"
SAFETENSORS = FIX / "checkpoints" / "v2_like_safetensors" / "model.safetensors"
STATE_DICT = FIX / "checkpoints" / "v1_like_bin" / "pytorch_model.bin"


class Evil:
    """Unpickling this runs ``touch target`` (through ``os.system``)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilPopen(Evil):
    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.target],))


def _one_line_error(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    assert isinstance(exc, BiolmError)
    return msg


def _refused(tmp_path: Path, good: Path, make, reader, what: str, reason: str) -> None:
    """``make(good bytes, tmp_path)`` written as a file: ``reader`` refuses it in one line."""
    path = tmp_path / good.name
    path.write_bytes(make(good.read_bytes(), tmp_path))
    with pytest.raises(FileFormatError) as ei:
        reader(path)
    msg = _one_line_error(ei.value)
    assert msg.startswith(f"not a {what} file: {path} (") and reason in msg, msg


# ============================================================================ pickles
def test_geneformer_dictionaries_load_through_the_restricted_unpickler():
    for p in sorted(FIX.glob("geneformer_dicts/**/*.pkl")):
        with open(p, "rb") as fh:
            trusted = pickle.load(fh)  # our own fixture; compare the restricted result with it
        got = load_plain_pickle(p)
        assert got == trusted
        assert all(type(k) is str for k in got)  # numpy.str_ keys became str


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, protocol):
    sentinel = tmp_path / "pwned"
    for evil in (Evil(str(sentinel)), _EvilPopen(str(sentinel))):
        path = tmp_path / "token_dictionary_gc104M.pkl"
        path.write_bytes(pickle.dumps({"<pad>": 0, "ENSG1": evil}, protocol=protocol))
        with pytest.raises(UnsafePickleError) as ei:
            load_plain_pickle(path)
        msg = _one_line_error(ei.value)
        assert str(path) in msg and "refused" in msg and ("system" in msg or "Popen" in msg)
    assert not sentinel.exists()


def test_pickle_refuses_arrays_and_odd_dtypes():
    for obj in (np.zeros(3), np.datetime64("2020-01-01"), np.void(b"ab")):
        with pytest.raises(UnsafePickleError):
            loads_plain_pickle(pickle.dumps(obj))
    plain = {"a": np.float64(1.5), np.str_("b"): [np.int64(2), {1}, b"x", None, True, (1.0,)]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        got = loads_plain_pickle(pickle.dumps(plain, protocol=protocol))
        assert got == plain and type(got["a"]) is float and type(next(iter(got))) is str


@pytest.mark.parametrize("data", [b"", b"not a pickle at all", pickle.dumps({"a": 1})[:-4]])
def test_garbage_pickle_is_a_clean_error(data):
    with pytest.raises(FileFormatError) as ei:
        loads_plain_pickle(data, "x.pkl")
    assert _one_line_error(ei.value).startswith("not a pickle file: x.pkl (")


# ============================================================================ safetensors
def _header(entries) -> bytes:
    raw = json.dumps(entries).encode()
    return struct.pack("<Q", len(raw)) + raw


def damaged_safetensors(good: bytes, tmp: Path) -> bytes:
    """A truncated copy (for tests elsewhere that need one damaged file)."""
    return good[: len(good) // 2]


@pytest.mark.parametrize(
    "make, reason",
    [
        (damaged_safetensors, "truncated"),
        (lambda good, tmp: good[:-1], "truncated"),
        (lambda good, tmp: good + b"\0" * 8, "bytes after the last tensor"),
        (lambda good, tmp: b"", "too short"),
        (lambda good, tmp: b"\x00" * 3, "too short"),
        (lambda good, tmp: os.urandom(4096), "header length"),
        (lambda good, tmp: struct.pack("<Q", 10) + b"\xff" * 10 + b"\0" * 8, "not UTF-8 JSON"),
        (lambda good, tmp: _header([1, 2]), "not an object"),
        (lambda good, tmp: _header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}) + b"\0" * 4, "needs 8 bytes"),
        (lambda good, tmp: _header({"w": {"dtype": "F4", "shape": [1], "data_offsets": [0, 4]}}) + b"\0" * 4, "unsupported dtype"),
        (lambda good, tmp: _header({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}) + b"\0" * 4, "invalid shape"),
        (lambda good, tmp: _header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}) + b"\0" * 8, "overlaps"),
    ],
)
def test_damaged_safetensors_is_a_clean_error(tmp_path, make, reason):
    _refused(tmp_path, SAFETENSORS, make, SafetensorsFile, "safetensors", reason)


def test_safetensors_dtypes_round_trip(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "f64": torch.randn(2).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "i32": torch.arange(3, dtype=torch.int32),
        "u8": torch.arange(4, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
    }
    p = tmp_path / "t.safetensors"
    write_safetensors(p, tensors, {"format": "pt"})
    f = SafetensorsFile(p)
    assert f.metadata == {"format": "pt"} and sorted(f.keys()) == sorted(tensors)
    for k, t in tensors.items():
        got = f.get(k)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), k
    # the reference writer's files load too (the fixture was written by transformers)
    assert len(read_safetensors(SAFETENSORS)) == 42


# ============================================================================ PyTorch state dicts
def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def damaged_bin(good: bytes, tmp: Path) -> bytes:
    """A state dict whose unpickling would run ``touch tmp/pwned`` (torch refuses it)."""
    return _torch_bytes({"a": Evil(str(tmp / "pwned"))})


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda good, tmp: good[: len(good) // 2], "failed reading zip archive"),
        (lambda good, tmp: b"", "empty file"),
        (lambda good, tmp: b"garbage garbage garbage", "neither a zip archive nor a pickle"),
        (lambda good, tmp: pickle.dumps([1, 2]), "weights-only"),
        (lambda good, tmp: _torch_bytes([torch.zeros(2)]), "not a dict of tensors"),
        (damaged_bin, "posix.system"),
    ],
)
def test_damaged_state_dict_is_a_clean_error(tmp_path, make, reason):
    _refused(tmp_path, STATE_DICT, make, read_torch_state_dict, "PyTorch state-dict", reason)
    assert not (tmp_path / "pwned").exists()


def test_state_dicts_and_lightning_checkpoints_load(tmp_path):
    sd = read_torch_state_dict(STATE_DICT)
    assert len(sd) == 44 and all(isinstance(v, torch.Tensor) for v in sd.values())
    path = tmp_path / "lightning.ckpt"
    path.write_bytes(_torch_bytes({"state_dict": {"w": torch.ones(2)}}))
    assert list(read_torch_state_dict(path)) == ["w"]
