"""The dataset store: parsed, tokenized records of one data source in one HDF5 file.

Layout (format version 2: numeric datasets carry a Fletcher-32 checksum per chunk, so a
corrupted chunk is a read error, never silently wrong token ids)::

    /meta            group; attributes: format_version, source_hash, source_hash_parts (JSON),
                     meta (JSON: the caller's dict), n_records, n_tokens, n_modifiers
    /ids             (n,)       utf-8 str   record ids
    /tokens          (T,)       int32       token ids of all records, concatenated (-1 = unknown)
    /offsets         (n + 1,)   int64       record i is tokens[offsets[i]:offsets[i + 1]]
    /modifiers       (T, m)     float32     only when m > 0
    /labels, /weights, /splits  (n,) utf-8 str, "" = missing
    /starts          (n,)       int64       first kept token in the original sequence
    /orig_lengths    (n,)       int64       length of the original sequence

Feature stores (``meta`` attributes ``record_kind = "features"`` and ``feature_shape``, JSON):
a record is a float32 array of one fixed shape (an expression profile of G genes, an array of
shape (C, L), ...), kept as its non-zero entries — ``tokens`` holds their flat (C-order)
indices, ``modifiers`` (T, 1) their values. A sparse count matrix thus stays sparse on disk, and
every path below (streaming writes, merged lazy reads, hashing, splits) serves both kinds.
:meth:`Store.read_features` returns the dense (B, *feature_shape) batch.

Why HDF5 and this layout: training reads random batches lazily, so memory stays bounded as
data grows; flat arrays + offsets hold variable-length sequences without padding; nothing is
ever pickled. The file is written through :func:`~biolm.core.outputs.atomic_path` (a temporary
file renamed on success), so an interrupted build never leaves a half file at ``path``. It is
reused only when the hash of input bytes, parsing options and tokenizer matches and every chunk
reads back with a valid checksum (:func:`open_or_build`); otherwise it is rebuilt, and the log
says why.

h5py and torch are imported inside the functions that need them: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import BiolmError

__all__ = [
    "STORE_FORMAT",
    "EncodedRecord",
    "SourceHash",
    "source_hash",
    "build_store",
    "feature_record",
    "Store",
    "open_or_build",
]

STORE_FORMAT = 2
# Chunks of 8 Ki tokens (32 KiB of int32): a random batch read decompresses little more than it
# needs (measured: 32 random 2,000-token records in 3 ms vs 15 ms with 64 Ki chunks), at a
# compression ratio within 5 % of larger chunks.
_TOKEN_CHUNK = 1 << 13
_RECORD_CHUNK = 1 << 12
# Records are buffered and flushed in blocks of about this many tokens: constant memory.
_FLUSH_TOKENS = 1 << 21
_RDCC_NBYTES = 16 << 20
# Byte-shuffle + lzf: token ids are small ints, so shuffling leaves three near-constant byte
# planes; measured on nucleotide data, 2.5x smaller than plain lzf and 1.6x faster to write than
# gzip level 1 (which is ~30 % smaller still).
_COMPRESSION = {"compression": "lzf", "shuffle": True}
_VERIFY_ROWS = 1 << 22


@dataclass(slots=True)
class EncodedRecord:
    """One record, ready to store.

    Attributes
    ----------
    id : record id.
    ids : np.ndarray, int32, shape (n,): token ids (-1 = unknown) of the kept window.
    mods : np.ndarray, float32, shape (n, m): modifier channels of the kept window.
    label, weight, split : raw strings or ``None`` (stored as "").
    start : index of the first kept token in the original sequence.
    orig_len : length of the original sequence (``None`` = ``len(ids)``, nothing was cut).
    """

    id: str
    ids: np.ndarray
    mods: np.ndarray
    label: str | None = None
    weight: str | None = None
    split: str | None = None
    start: int = 0
    orig_len: int | None = None


def feature_record(id: str, values: np.ndarray, indices: np.ndarray | None = None, label: str | None = None, weight: str | None = None, split: str | None = None) -> EncodedRecord:
    """A feature record (for a store built with ``feature_shape``).

    Parameters
    ----------
    id : record id.
    values : the dense record (any shape; flattened in C order), or with ``indices`` (nnz,) the
        values at those flat indices only (a sparse row, e.g. one cell of a CSR matrix).
    label, weight, split : raw strings or ``None``.

    Returns
    -------
    EncodedRecord : ``ids`` the non-zeros' flat indices (int32), ``mods`` their values (nnz, 1).
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if indices is None:
        indices = np.flatnonzero(values)
        values = values[indices]
    else:
        indices = np.asarray(indices).reshape(-1)
        keep = values != 0
        if not keep.all():
            indices, values = indices[keep], values[keep]
    return EncodedRecord(id, indices.astype(np.int32, copy=False), values[:, None], label, weight, split, 0, None)


class SourceHash(str):
    """A source hash (hex str) that also carries its parts, so a rebuild can say what changed.

    Attributes
    ----------
    parts : dict with ``file`` (sha256 of the file bytes), ``options`` (sha256 of the options'
        canonical JSON) and ``tokenizer`` (the tokenizer's sha).
    """

    parts: dict

    def __new__(cls, value: str, parts: dict):
        obj = super().__new__(cls, value)
        obj.parts = dict(parts)
        return obj


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def file_sha256(filepath: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, streamed; of a folder, over its files' names and hashes."""
    if os.path.isdir(filepath):
        h = hashlib.sha256()
        for name in sorted(os.listdir(filepath)):
            if os.path.isfile(os.path.join(filepath, name)):
                h.update(f"{name}\0{file_sha256(os.path.join(filepath, name), chunk)}\0".encode("utf-8"))
        return h.hexdigest()
    h = hashlib.sha256()
    try:
        with open(filepath, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except FileNotFoundError:
        raise BiolmError(f"{os.fspath(filepath)}: no such file") from None
    return h.hexdigest()


def source_hash(filepath: str | os.PathLike, options: dict, tokenizer_sha: str) -> SourceHash:
    """Content hash deciding whether a store can be reused.

    Parameters
    ----------
    filepath : the data file; its bytes are hashed (not its name or mtime).
    options : every option that changes the stored records (parsing options, blocksize,
        lefttailing, centertoken, ...), JSON-able.
    tokenizer_sha : :meth:`AtomicTokenizer.sha` of the tokenizer used to encode.

    Returns
    -------
    SourceHash : a hex str (sha256 over the three parts), with ``.parts``.
    """
    parts = {
        "file": file_sha256(filepath),
        "options": hashlib.sha256(_canonical(options).encode("utf-8")).hexdigest(),
        "tokenizer": str(tokenizer_sha),
    }
    total = hashlib.sha256(_canonical(parts).encode("utf-8")).hexdigest()
    return SourceHash(total, parts)


def _h5py():
    import h5py

    return h5py


class _Writer:
    """Appends blocks of records to resizable datasets; ``size``: feature records' flat size
    (their indices are checked against it), ``None`` for token records."""

    def __init__(self, f, n_modifiers: int, size: int | None = None):
        h5py = _h5py()
        self.f = f
        self.m = n_modifiers
        self.size = size
        s = h5py.string_dtype("utf-8")
        kw = _COMPRESSION

        def mk(name, dtype, shape=(0,), maxshape=(None,), chunks=(_RECORD_CHUNK,)):
            # HDF5 checksums fixed-size data only (variable-length strings live in a heap)
            checksum = dtype is not s
            return f.create_dataset(name, shape=shape, maxshape=maxshape, dtype=dtype, chunks=chunks, fletcher32=checksum, **kw)

        self.ds_str = {k: mk(k, s) for k in ("ids", "labels", "weights", "splits")}
        self.ds_starts = mk("starts", np.int64)
        self.ds_orig = mk("orig_lengths", np.int64)
        self.ds_tokens = mk("tokens", np.int32, chunks=(_TOKEN_CHUNK,))
        self.ds_offsets = mk("offsets", np.int64)
        self.ds_offsets.resize((1,))
        self.ds_offsets[0] = 0
        self.ds_mods = None
        if n_modifiers:
            rows = max(1, _TOKEN_CHUNK // n_modifiers)
            self.ds_mods = mk("modifiers", np.float32, shape=(0, n_modifiers), maxshape=(None, n_modifiers), chunks=(rows, n_modifiers))
        self.n = 0
        self.t = 0
        self._reset()

    def _reset(self):
        self.b_str = {k: [] for k in self.ds_str}
        self.b_ids, self.b_mods, self.b_len, self.b_start, self.b_orig = [], [], [], [], []
        self.b_tokens = 0

    def add(self, r: EncodedRecord):
        ids = np.asarray(r.ids)
        if ids.ndim != 1:
            raise ValueError(f"record {r.id!r}: ids must be 1-D, got shape {ids.shape}")
        n = len(ids)
        if self.size is not None and n and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"record {r.id!r}: feature indices must lie in [0, {self.size}), got {ids.min()} .. {ids.max()}")
        if self.m:
            mods = np.asarray(r.mods, dtype=np.float32)
            if mods.shape != (n, self.m):
                raise ValueError(f"record {r.id!r}: mods shape {mods.shape}, expected {(n, self.m)}")
            self.b_mods.append(mods)
        self.b_ids.append(ids)
        self.b_len.append(n)
        self.b_start.append(r.start)
        self.b_orig.append(n if r.orig_len is None else r.orig_len)
        b = self.b_str
        b["ids"].append(str(r.id))
        b["labels"].append("" if r.label is None else r.label)
        b["weights"].append("" if r.weight is None else r.weight)
        b["splits"].append("" if r.split is None else r.split)
        self.b_tokens += n
        if self.b_tokens >= _FLUSH_TOKENS or len(self.b_len) >= _RECORD_CHUNK * 4:
            self.flush()

    @staticmethod
    def _append(ds, values):
        n0 = ds.shape[0]
        ds.resize((n0 + len(values),) + ds.shape[1:])
        ds[n0:] = values

    def flush(self):
        k = len(self.b_len)
        if not k:
            return
        tokens = np.concatenate(self.b_ids).astype(np.int32, copy=False)
        self._append(self.ds_tokens, tokens)
        if self.m:
            self._append(self.ds_mods, np.concatenate(self.b_mods))
        offs = self.t + np.cumsum(np.asarray(self.b_len, dtype=np.int64))
        self._append(self.ds_offsets, offs)
        for name, vals in self.b_str.items():
            self._append(self.ds_str[name], np.array(vals, dtype=object))
        self._append(self.ds_starts, np.asarray(self.b_start, dtype=np.int64))
        self._append(self.ds_orig, np.asarray(self.b_orig, dtype=np.int64))
        self.n += k
        self.t += len(tokens)
        self._reset()


def build_store(path: str | os.PathLike, records: Iterable[EncodedRecord], meta: dict, n_modifiers: int, feature_shape: Sequence[int] | None = None) -> None:
    """Write records to an HDF5 store at ``path``, atomically and in constant memory.

    Parameters
    ----------
    path : destination; written through :func:`~biolm.core.outputs.atomic_hdf5` (a temporary
        file renamed on success). On any failure (a full disk: :class:`NoSpaceError`,
        KeyboardInterrupt) the temporary file is removed and an existing ``path`` is untouched.
    records : the encoded records, streamed once.
    meta : JSON-able dict saved in the ``meta`` group; its ``source_hash`` (a str or
        :class:`SourceHash`) is what :func:`open_or_build` compares.
    n_modifiers : m, the modifier channel count (every record's ``mods`` is (n, m)).
    feature_shape : for a feature store, the shape of every record (records made by
        :func:`feature_record`; ``n_modifiers`` is then 1); ``None`` for token records.
    """
    from .outputs import atomic_hdf5

    size = None
    if feature_shape is not None:
        shape = [int(d) for d in feature_shape]
        size = int(np.prod(shape))
        if n_modifiers != 1 or size >= 2**31:
            raise ValueError(f"a feature store holds one value per index (n_modifiers 1, got {n_modifiers}) and fewer than 2**31 entries per record (got {size})")
    with atomic_hdf5(path) as (f, guard):
        g = f.create_group("meta")
        g.attrs["format_version"] = STORE_FORMAT
        sh = meta.get("source_hash", "")
        g.attrs["source_hash"] = str(sh)
        g.attrs["source_hash_parts"] = _canonical(getattr(sh, "parts", {}))
        g.attrs["meta"] = _canonical(meta)
        if size is not None:
            g.attrs["record_kind"] = "features"
            g.attrs["feature_shape"] = json.dumps(shape)
        g.attrs["n_modifiers"] = int(n_modifiers)
        w = _Writer(f, int(n_modifiers), size)
        for r in records:
            w.add(r)
            if guard.error is not None:  # the disk is full: the rest would be dropped anyway
                break
        w.flush()
        g.attrs["n_records"] = w.n
        g.attrs["n_tokens"] = w.t


class Store:
    """Read access to a store file; the HDF5 handle is opened on first use.

    The handle is reopened in a new process (after ``fork`` or unpickling), so a Store can be
    handed to DataLoader workers. Small per-record arrays are read once and cached.

    Parameters
    ----------
    path : the store file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._f = None
        self._pid = None
        self._cache: dict = {}

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _file(self):
        if self._f is None or self._pid != os.getpid():
            h5py = _h5py()
            try:
                self._f = h5py.File(self.path, "r", rdcc_nbytes=_RDCC_NBYTES)
            except FileNotFoundError:
                raise BiolmError(f"{self.path}: no such dataset store") from None
            self._pid = os.getpid()
        return self._f

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _small(self, name: str, kind: str = "num") -> np.ndarray:
        if name not in self._cache:
            with self._reading():
                ds = self._file()[name]
                self._cache[name] = ds.asstr()[:] if kind == "str" else ds[:]
        return self._cache[name]

    @contextlib.contextmanager
    def _reading(self):
        """A damaged store (bad checksum, truncated file) is a one-line error; the next run's
        :func:`open_or_build` finds the damage and rebuilds it."""
        try:
            yield
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            if isinstance(e, BiolmError):
                raise
            raise BiolmError(f"{self.path}: the dataset store is damaged ({type(e).__name__}: {_first_line(e)}); run again to rebuild it") from None

    @property
    def meta(self) -> dict:
        """The caller's meta dict plus ``format_version``, ``source_hash``, ``n_records``,
        ``n_tokens``, ``n_modifiers``."""
        if "meta" not in self._cache:
            with self._reading():
                a = dict(self._file()["meta"].attrs)
            d = json.loads(a["meta"])
            for k in ("format_version", "n_records", "n_tokens", "n_modifiers"):
                d[k] = int(a[k])
            d["source_hash"] = str(a["source_hash"])
            d["source_hash_parts"] = json.loads(a.get("source_hash_parts", "{}"))
            d["record_kind"] = str(a.get("record_kind", "tokens"))
            d["feature_shape"] = json.loads(a["feature_shape"]) if "feature_shape" in a else None
            self._cache["meta"] = d
        return self._cache["meta"]

    @property
    def n_modifiers(self) -> int:
        return self.meta["n_modifiers"]

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        """The shape of every record of a feature store; ``None`` for a token store."""
        shape = self.meta["feature_shape"]
        return None if shape is None else tuple(shape)

    @property
    def offsets(self) -> np.ndarray:
        """int64, shape (n + 1,)."""
        return self._small("offsets")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """int64, shape (n,): stored (windowed) token counts."""
        if "lengths" not in self._cache:
            self._cache["lengths"] = np.diff(self.offsets)
        return self._cache["lengths"]

    @property
    def ids(self) -> np.ndarray:
        """object array of str, shape (n,)."""
        return self._small("ids", "str")

    @property
    def labels(self) -> np.ndarray:
        """object array of str, shape (n,); "" = missing."""
        return self._small("labels", "str")

    @property
    def weights(self) -> np.ndarray:
        return self._small("weights", "str")

    @property
    def splits(self) -> np.ndarray:
        return self._small("splits", "str")

    @property
    def starts(self) -> np.ndarray:
        return self._small("starts")

    @property
    def orig_lengths(self) -> np.ndarray:
        return self._small("orig_lengths")

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Record ``i``: ids int32 (n,), mods float32 (n, m)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n}")
        i %= n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        m = self.n_modifiers
        with self._reading():
            f = self._file()
            ids = f["tokens"][a:b]
            mods = f["modifiers"][a:b] if m else np.zeros((b - a, 0), dtype=np.float32)
        return ids, mods

    def read_batch(self, indices: Sequence[int], pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read records and pad them into a batch, in the order given.

        Sorted, nearby records are read as one contiguous range (one HDF5 read instead of many);
        far-apart ones are read one by one.

        Parameters
        ----------
        indices : record indices, shape (B,).
        pad_to : pad to this length L instead of the longest record (must be >= it).

        Returns
        -------
        ids : int64, shape (B, L), padded with -1.
        mods : float32, shape (B, L, m), padded with 0.
        lengths : int64, shape (B,).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"record indices out of range for a store of {n}")
        offs = self.offsets
        starts, ends = offs[idx], offs[idx + 1]
        lengths = ends - starts
        L = int(lengths.max()) if len(idx) else 0
        if pad_to is not None:
            if pad_to < L:
                raise ValueError(f"pad_to={pad_to} is shorter than the longest record in the batch ({L})")
            L = pad_to
        m = self.n_modifiers
        B = len(idx)
        ids = np.full((B, L), -1, dtype=np.int64)
        mods = np.zeros((B, L, m), dtype=np.float32)
        if not B:
            return ids, mods, lengths
        f = self._file()
        tok_ds = f["tokens"]
        mod_ds = f["modifiers"] if m else None
        order = np.argsort(starts, kind="stable")
        # Merge sorted ranges whose gap is small compared with what is read anyway.
        gap = max(_TOKEN_CHUNK // 4, int(lengths.sum()) // max(B, 1))
        run = [order[0]]
        run_end = ends[order[0]]

        def read_run(run):
            a = int(starts[run[0]])
            b = int(max(ends[j] for j in run))
            t = tok_ds[a:b]
            mm = mod_ds[a:b] if m else None
            for j in run:
                s, e = int(starts[j]) - a, int(ends[j]) - a
                ids[j, : e - s] = t[s:e]
                if m:
                    mods[j, : e - s] = mm[s:e]

        for j in order[1:]:
            if starts[j] - run_end <= gap:
                run.append(j)
                run_end = max(run_end, ends[j])
            else:
                with self._reading():
                    read_run(run)
                run, run_end = [j], ends[j]
        with self._reading():
            read_run(run)
        return ids, mods, lengths

    def read_features(self, indices: Sequence[int]) -> np.ndarray:
        """Records of a feature store as a dense batch, in the order given (one merged read,
        as :meth:`read_batch`).

        Returns
        -------
        np.ndarray : float32, shape (B, *feature_shape).
        """
        shape = self.feature_shape
        if shape is None:
            raise ValueError(f"{self.path} holds token records, not features")
        ids, mods, lengths = self.read_batch(indices)
        out = np.zeros((len(ids), int(np.prod(shape))), dtype=np.float32)
        rows, cols = np.nonzero(np.arange(ids.shape[1])[None, :] < lengths[:, None])
        out[rows, ids[rows, cols]] = mods[rows, cols, 0]
        return out.reshape((len(ids),) + shape)


def _stored_hash(path: str) -> tuple[str | None, dict, int | None, str | None]:
    """(hash, parts, format version, error) of an existing store."""
    try:
        h5py = _h5py()
        with h5py.File(path, "r") as f:
            a = f["meta"].attrs
            return str(a["source_hash"]), json.loads(a.get("source_hash_parts", "{}")), int(a["format_version"]), None
    except Exception as e:  # any unreadable file is simply rebuilt
        return None, {}, None, f"{type(e).__name__}: {_first_line(e)}"


def verify_store(path: str | os.PathLike) -> str | None:
    """Read every dataset of a store back (checksums verified); the first error, or ``None``.

    A store whose hash matches can still be damaged on disk (a bad sector, a copy cut short):
    reading it whole costs about as much as hashing the input file, and turns "every rerun
    fails" into one rebuild.
    """
    try:
        h5py = _h5py()
        with h5py.File(path, "r") as f:
            for name, ds in f.items():
                if not isinstance(ds, h5py.Dataset):
                    continue
                for a in range(0, ds.shape[0], _VERIFY_ROWS):
                    ds[a : a + _VERIFY_ROWS]
            n = int(f["meta"].attrs["n_records"])
            if f["offsets"].shape[0] != n + 1 or int(f["offsets"][-1]) != f["tokens"].shape[0]:
                return f"offsets do not match the {n} records and {f['tokens'].shape[0]} tokens"
    except Exception as e:
        return f"{type(e).__name__}: {_first_line(e)}"
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def open_or_build(
    path: str | os.PathLike,
    expected_hash: str,
    build_fn: Callable[[str], None],
    log: Callable[[str], None] = print,
) -> Store:
    """Reuse the store at ``path`` if its hash matches, else rebuild it with ``build_fn(path)``.

    Parameters
    ----------
    path : store file.
    expected_hash : :func:`source_hash` of the current input (a :class:`SourceHash` lets the
        log say which part changed).
    build_fn : writes the store at the given path (normally via :func:`build_store`).
    log : receives one line saying whether the store was reused or why it is rebuilt
        ("new", "input file changed", "options changed", "tokenizer changed", ...).

    Returns
    -------
    Store

    Notes
    -----
    Under ``torchrun`` build on one rank and wait at a barrier before the others open the store;
    concurrent builders do not corrupt it (each writes its own temporary file and renames it),
    but they do the work several times.
    """
    path = os.fspath(path)
    reason = None
    if not os.path.exists(path):
        reason = "new"
    else:
        stored, parts, version, err = _stored_hash(path)
        if err is not None:
            reason = f"existing store unreadable ({err})"
        elif version != STORE_FORMAT:
            reason = f"store format {version} != {STORE_FORMAT}"
        elif stored == str(expected_hash):
            damage = verify_store(path)
            if damage is not None:
                reason = f"the existing store is damaged ({damage})"
        else:
            want = getattr(expected_hash, "parts", None)
            if want and parts:
                changed = [
                    label
                    for key, label in (("file", "input file changed"), ("options", "options changed"), ("tokenizer", "tokenizer changed"))
                    if parts.get(key) != want.get(key)
                ]
                reason = ", ".join(changed) or "hash changed"
            else:
                reason = "hash changed"
    if reason is None:
        log(f"reusing dataset store {path} (hash matches)")
        return Store(path)
    log(f"building dataset store {path}: {reason}")
    build_fn(path)
    store = Store(path)
    if store.meta["source_hash"] != str(expected_hash):
        raise BiolmError(f"{path}: the store just built does not carry the expected hash (build_fn must pass it in meta)")
    return store
