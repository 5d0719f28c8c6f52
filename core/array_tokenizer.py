"""The ``array`` tokenizer kind: EIR's array input — numeric arrays of one shape, labels by id.

The data-source ``filepath`` is one of

- a folder of ``.npy`` files of one shape; a sample's id is its file name without ``.npy``;
- one ``.npy`` of shape (N, ...) holding every sample, with ``idfile`` (one id per line, in row
  order);
- one ``.npz`` with an ``ids`` array (N,) and one data array (N, ...).

Labels, split ids and weights come from ``labelfile``, a delimited file keyed by id (``idpos``,
``labelpos``, ``splitpos``, ``weightpos``; ``columnsep``, ``stripheader`` as for sequence files).
The layout is EIR's, channels first: a genotype array is (4, n_snps), one one-hot channel per
genotype; the model input is channels last, (L, C) = (n_snps, 4) (:mod:`.feature_tokenizer`).

Checked, with one error line naming the file: a shape other than the tokenizer's, NaN or
infinite values, non-numeric arrays, repeated ids; when labels are required, samples without a
label and labels without a sample (``on_bad_row: skip`` skips those instead, and the log counts
them). Normalisation (EIR's ``channel``/``element``) is the model's, fitted per fold.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np

from .errors import ConfigError, DataError
from .feature_tokenizer import FeatureTokenizer
from .input_kinds import file_type

KIND = "array"


class ArraySet:
    """The arrays of one data source, read lazily (``.npy`` files are memory-mapped).

    Attributes
    ----------
    path : the folder or file.
    ids : list[str], one per sample, in reading order.
    shape : the shape of one sample.
    """

    def __init__(self, source: Any):
        from .schema import section_of

        self.path = str(source.filepath)
        kind = file_type(self.path)
        self._files: list[str] | None = None
        self._stack: Any = None
        if kind == "folder":
            names = sorted(n for n in os.listdir(self.path) if n.endswith(".npy"))
            if not names:
                raise DataError(self.path, "holds no .npy files (array input: one .npy file per sample, named by its id)")
            self._files = [os.path.join(self.path, n) for n in names]
            self.ids = [n[: -len(".npy")] for n in names]
            self.shape = tuple(self._load(self._files[0]).shape)
        elif kind == "npz":
            self._stack, self.ids = self._npz()
        elif kind == "npy":
            self._stack = self._load(self.path)
            idfile = getattr(source, "idfile", None)
            if not idfile:
                raise ConfigError(f"{section_of(source)}.idfile", f"{self.path} holds all samples in one array: name a text file with one id per line, in row order")
            self.ids = _read_ids(idfile)
            if len(self.ids) != len(self._stack):
                raise DataError(idfile, f"{len(self.ids)} ids for the {len(self._stack)} rows of {self.path}")
        else:
            raise DataError(self.path, "expected a folder of .npy files, a .npy or a .npz file")
        if self._stack is not None:
            if self._stack.ndim < 2:
                raise DataError(self.path, f"expected an array of shape (samples, ...), got shape {self._stack.shape}")
            self.shape = tuple(self._stack.shape[1:])
        dup = _repeated(self.ids)
        if dup:
            raise DataError(self.path, f"sample ids repeat: {', '.join(dup[:5])}")

    def _load(self, path: str) -> Any:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(path, f"not a readable .npy array ({exc})") from None

    def _npz(self) -> tuple[Any, list[str]]:
        try:
            z = np.load(self.path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(self.path, f"not a readable .npz file ({exc})") from None
        data_keys = [k for k in z.files if k != "ids"]
        if "ids" not in z.files or len(data_keys) != 1:
            raise DataError(self.path, f"expected an 'ids' array and one data array, found {', '.join(z.files) or 'nothing'}")
        ids = [str(i) for i in z["ids"].tolist()]
        data = z[data_keys[0]]
        if len(ids) != len(data):
            raise DataError(self.path, f"{len(ids)} ids for {len(data)} arrays")
        return data, ids

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, k: int) -> np.ndarray:
        """Sample ``k`` as float32, checked: numeric, the set's shape, finite."""
        where = self._files[k] if self._files is not None else f"{self.path} (row {k + 1}, id {self.ids[k]})"
        a = self._load(self._files[k]) if self._files is not None else self._stack[k]
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DataError(where, f"not a numeric array (dtype {a.dtype})")
        if tuple(a.shape) != self.shape:
            raise DataError(where, f"shape {tuple(a.shape)}, expected {self.shape} (every array must have one shape)")
        a = np.asarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise DataError(where, f"{int(np.sum(~np.isfinite(a)))} NaN or infinite value(s); array input must be finite")
        return a


def _read_ids(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise DataError(path, f"cannot read the id file: {exc.strerror or exc}") from None


def _repeated(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]


def read_labels(source: Any, label_kind: str | None, log: Any) -> dict | None:
    """id -> (label, weight, split) from the source's ``labelfile``; ``None`` without one."""
    from .delimited import ReadStats, delimited_options, log_skipped, read_records
    from .schema import section_of

    labelfile = getattr(source, "labelfile", None)
    if not labelfile:
        if label_kind in ("float", "str"):
            raise ConfigError(f"{section_of(source)}.labelfile", "required for array input: the delimited file of sample ids and labels")
        return None
    # a label file has no sequence column: the id column stands in for it
    opts = dataclasses.replace(delimited_options(source, label_kind), filepath=labelfile, seqpos=source.idpos, tokensep=None, specifiersep=None)
    stats = ReadStats()
    out: dict = {}
    for rec in read_records(opts, stats):
        if rec.id in out:
            raise DataError(labelfile, f"sample id {rec.id!r} appears twice", line=rec.line)
        out[rec.id] = (rec.label, rec.weight, rec.split)
    log_skipped(stats, log, labelfile)
    return out


def fit(source: Any, cfg: Any, log: Any) -> FeatureTokenizer:
    """The array shape of the tokenizing source."""
    arrays = ArraySet(source)
    arrays.get(0)
    log.info("array tokenizer: %d samples of shape %s in %s", len(arrays), arrays.shape, arrays.path)
    return FeatureTokenizer(KIND, arrays.shape)


def load(path: Any) -> FeatureTokenizer:
    return FeatureTokenizer.load(path, KIND)


def encode(tok: FeatureTokenizer, source: Any, encoding: Any, log: Any, label_kind: str | None):
    """Every sample with a label (or every sample, when labels are optional) as a feature record."""
    from .store import file_sha256

    arrays = ArraySet(source)
    if arrays.shape != tok.shape:
        raise DataError(arrays.path, f"arrays of shape {arrays.shape}; the tokenizer (and a model trained with it) reads shape {tok.shape}")
    labels = read_labels(source, label_kind, log)
    keep = list(range(len(arrays)))
    if labels is not None:
        keep = _pair(arrays, labels, source, label_kind, log)
    options = {"format": "arrays", "labelfile_sha256": file_sha256(source.labelfile) if labels is not None else None, "idfile_sha256": file_sha256(source.idfile) if getattr(source, "idfile", None) else None, "label_kind": label_kind, "idpos": source.idpos, "labelpos": getattr(source, "labelpos", None), "weightpos": getattr(source, "weightpos", None), "splitpos": getattr(source, "splitpos", None), "columnsep": source.columnsep, "stripheader": source.stripheader, "tokenizer": tok.sha()}
    return _records(arrays, labels, keep), options


def _pair(arrays: ArraySet, labels: dict, source: Any, label_kind: str | None, log: Any) -> list[int]:
    """The samples to encode: arrays and labels matched by id; unmatched ones are an error when
    labels are required (or skipped and counted with ``on_bad_row: skip``), counted otherwise."""
    have = set(arrays.ids)
    unlabelled = [i for i, sid in enumerate(arrays.ids) if sid not in labels]
    orphans = [sid for sid in labels if sid not in have]
    strict = label_kind in ("float", "str")
    if strict and source.on_bad_row == "error":
        if unlabelled:
            ex = ", ".join(arrays.ids[i] for i in unlabelled[:5])
            raise DataError(source.labelfile, f"{len(unlabelled)} of the {len(arrays)} samples of {arrays.path} have no row here (e.g. {ex}); add them, or set on_bad_row: skip to leave them out")
        if orphans:
            raise DataError(source.labelfile, f"{len(orphans)} labelled id(s) have no array in {arrays.path} (e.g. {', '.join(orphans[:5])}); remove them, or set on_bad_row: skip")
    if unlabelled:
        log.warning("%s: %d sample(s) without a row in %s %s", arrays.path, len(unlabelled), source.labelfile, "skipped" if strict else "kept without a label")
    if orphans:
        log.warning("%s: %d labelled id(s) without an array in %s ignored", source.labelfile, len(orphans), arrays.path)
    if not strict:
        return list(range(len(arrays)))
    skip = set(unlabelled)
    return [i for i in range(len(arrays)) if i not in skip]


def _records(arrays: ArraySet, labels: dict | None, keep: list[int]) -> Iterator[Any]:
    from .store import feature_record

    for k in keep:
        sid = arrays.ids[k]
        label, weight, split = labels.get(sid, (None, None, None)) if labels is not None else (None, None, None)
        yield feature_record(sid, arrays.get(k), None, label, weight, split)


def position_names(path: str | os.PathLike | None, n: int) -> list[str] | None:
    """Names of the n positions from a text file (one per line; ``looscores: positionnames``)."""
    if not path:
        return None
    names = _read_ids(str(path))
    if len(names) != n:
        raise DataError(str(path), f"{len(names)} position names for the model's {n} positions")
    return names

