"""AnnData ``.h5ad`` expression files, read and written with h5py alone.

biolm does not depend on anndata: an ``.h5ad`` file is an HDF5 file with a documented layout
(anndata's "on-disk format", version 0.8+), and the few parts that expression models need —
the count matrix, gene names, cell ids and per-cell annotation columns — are easy to read
directly. Reading directly also lets us stream rows in chunks with constant memory, which
``anndata.read_h5ad`` does not do unless the file is opened in backed mode.

What is understood
------------------
- ``X`` (or ``layers/<name>``, or ``raw/X``) as a dense 2-D dataset, or as a CSR group
  (``data``, ``indices``, ``indptr``; attrs ``encoding-type="csr_matrix"`` and ``shape``, or the
  pre-0.7 attrs ``h5sparse_format="csr"`` and ``h5sparse_shape``). CSC matrices are refused
  with a hint: streaming rows out of a CSC matrix would re-read the whole matrix per chunk.
- ``obs`` / ``var`` dataframes: the index named by the ``_index`` attribute, plain columns
  (numbers, booleans, strings), categoricals in the anndata >= 0.8 form (a group holding
  ``codes`` and ``categories``) and in the 0.7 form (a codes dataset whose ``categories``
  attribute references ``__categories/<col>``), and nullable integer / boolean columns
  (``values`` + ``mask``).

Missing values
--------------
Categorical code ``-1`` and masked nullable entries are missing. Columns with string values
come back as ``str`` arrays where a missing entry is ``""``; numeric columns come back as
``float64`` with ``NaN`` for missing entries. Callers that treat a column as labels should
reject ``""``/``NaN`` explicitly rather than let them become a class.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from biolm.core.errors import DataError

__all__ = ["H5adError", "H5adReader", "write_h5ad"]


class H5adError(DataError, ValueError):
    """A ``.h5ad`` file is missing, unreadable or not laid out as expected.

    It is a :class:`~biolm.core.errors.DataError` (the CLI shows one line, exit code 2) and a
    ``ValueError`` (what callers outside the CLI expect for bad input). The message starts
    with the file path.
    """


def _decode_str_array(values: np.ndarray) -> np.ndarray:
    """Turn an HDF5 string array (bytes, fixed or variable length) into a numpy ``str`` array."""
    arr = np.asarray(values)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8")
    if arr.dtype.kind == "O":
        out = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
        # an explicit dtype keeps a zero-length result a str array rather than float64
        return np.array(out, dtype=str).reshape(arr.shape)
    raise TypeError(f"not a string array: dtype {arr.dtype}")


def _attr_str(obj: Any, key: str, default: str | None = None) -> str | None:
    if key not in obj.attrs:
        return default
    value = obj.attrs[key]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return str(value)


def _is_string_dtype(dtype: np.dtype) -> bool:
    if dtype.kind in "SU":
        return True
    return dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None


class H5adReader:
    """Read-only, streaming access to an AnnData ``.h5ad`` file.

    The file is opened for each operation and closed again, so a reader can be handed to
    DataLoader worker processes (h5py handles do not survive ``fork``) and never keeps the file
    locked. Gene names are read at construction; everything else is read on demand.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    layer
        ``None`` reads ``X``; ``"raw"`` reads ``raw/X`` (with gene names from ``raw/var``); any
        other name reads ``layers/<name>``. Expression models want raw counts, which some files
        keep in a layer or in ``raw`` while ``X`` holds normalised values.

    Attributes
    ----------
    path : str
    var_names : np.ndarray
        ``(G,)`` str, the gene names (index of ``var``).
    n_obs, n_vars : int
    is_sparse : bool
        True when the matrix is stored as CSR.

    Raises
    ------
    H5adError
        If the file is missing, is not HDF5, or lacks the matrix or the ``var`` index, or if the
        matrix shape disagrees with ``var``.
    """

    def __init__(self, path: str | os.PathLike, layer: str | None = None) -> None:
        self.path = str(path)
        self.layer = layer
        if not os.path.exists(self.path):
            raise H5adError(self.path, "no such file")
        if layer is None:
            self._x_key, self._var_key = "X", "var"
        elif layer == "raw":
            self._x_key, self._var_key = "raw/X", "raw/var"
        else:
            self._x_key, self._var_key = f"layers/{layer}", "var"
        self._obs_names: np.ndarray | None = None
        with self._open() as f:
            self.is_sparse, shape = self._inspect_matrix(f)
            self.n_obs, self.n_vars = shape
            self.var_names = self._read_index(f, self._var_key)
        if len(self.var_names) != self.n_vars:
            raise H5adError(
                self.path,
                f"{self._x_key} has {self.n_vars} columns but {self._var_key} has "
                f"{len(self.var_names)} gene names",
            )

    # ------------------------------------------------------------------ file access
    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise H5adError(self.path, f"not a readable HDF5/.h5ad file ({exc})") from None

    def _fail(self, msg: str) -> H5adError:
        return H5adError(self.path, msg)

    def _inspect_matrix(self, f: h5py.File) -> tuple[bool, tuple[int, int]]:
        if self._x_key not in f:
            parent = self._x_key.rsplit("/", 1)[0] if "/" in self._x_key else ""
            grp = f[parent] if parent and parent in f else f
            available = ", ".join(sorted(grp.keys())) or "none"
            raise self._fail(f"expected an expression matrix at '{self._x_key}' (found: {available})")
        x = f[self._x_key]
        if isinstance(x, h5py.Dataset):
            if x.ndim != 2:
                raise self._fail(f"expected '{self._x_key}' to be a 2-D matrix, got shape {x.shape}")
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise self._fail(f"expected a numeric '{self._x_key}', got dtype {x.dtype}")
            return False, (int(x.shape[0]), int(x.shape[1]))
        enc = _attr_str(x, "encoding-type") or _attr_str(x, "h5sparse_format")
        if enc in ("csc_matrix", "csc"):
            raise self._fail(
                f"'{self._x_key}' is a CSC sparse matrix; rows cannot be streamed from it. "
                "Convert it to CSR first (in Python: adata.X = adata.X.tocsr(); adata.write_h5ad(...))"
            )
        if enc not in ("csr_matrix", "csr"):
            raise self._fail(
                f"expected '{self._x_key}' to be a dense dataset or a csr_matrix group, "
                f"got a group with encoding-type {enc!r}"
            )
        missing = [k for k in ("data", "indices", "indptr") if k not in x]
        if missing:
            raise self._fail(f"CSR matrix '{self._x_key}' lacks dataset(s) {', '.join(missing)}")
        raw_shape = x.attrs.get("shape", x.attrs.get("h5sparse_shape"))
        if raw_shape is None or len(raw_shape) != 2:
            raise self._fail(f"CSR matrix '{self._x_key}' lacks a 2-element 'shape' attribute")
        n, g = int(raw_shape[0]), int(raw_shape[1])
        indptr, data, indices = x["indptr"], x["data"], x["indices"]
        if indptr.shape != (n + 1,):
            raise self._fail(
                f"CSR matrix '{self._x_key}': expected indptr of length n_obs + 1 = {n + 1}, got {indptr.shape}"
            )
        if data.shape != indices.shape or data.ndim != 1:
            raise self._fail(
                f"CSR matrix '{self._x_key}': data {data.shape} and indices {indices.shape} must be 1-D and equal"
            )
        # two scalar reads check the global bounds without loading indptr
        if n >= 0 and (int(indptr[0]) != 0 or int(indptr[n]) != data.shape[0]):
            raise self._fail(
                f"CSR matrix '{self._x_key}': expected indptr to run from 0 to len(data) = {data.shape[0]}, "
                f"got {int(indptr[0])} .. {int(indptr[n])}"
            )
        return True, (n, g)

    def _read_index(self, f: h5py.File, key: str) -> np.ndarray:
        if key not in f or not isinstance(f[key], h5py.Group):
            raise self._fail(f"expected a dataframe group '{key}' holding the names")
        grp = f[key]
        index_key = _attr_str(grp, "_index")
        if index_key is None:
            # before anndata 0.7 the index was commonly a column called 'index'
            for guess in ("_index", "index"):
                if guess in grp:
                    index_key = guess
                    break
        if index_key is None or index_key not in grp:
            raise self._fail(
                f"expected '{key}' to name its index column in the '_index' attribute "
                f"(found columns: {', '.join(sorted(grp.keys())) or 'none'})"
            )
        values = self._read_column(f, key, index_key)
        if values.dtype.kind != "U":
            values = values.astype(str)
        return values

    # ------------------------------------------------------------------ dataframes
    def _read_column(self, f: h5py.File, frame: str, name: str) -> np.ndarray:
        grp = f[frame]
        obj = grp[name]
        where = f"'{frame}/{name}'"
        if isinstance(obj, h5py.Group):
            enc = _attr_str(obj, "encoding-type")
            if enc == "categorical" or ("codes" in obj and "categories" in obj):
                codes = np.asarray(obj["codes"][()]).astype(np.int64)
                cats = self._plain_values(obj["categories"][()], where + "/categories")
                return self._apply_codes(codes, cats, where)
            if enc in ("nullable-integer", "nullable-boolean", "nullable-string-array") or (
                "values" in obj and "mask" in obj
            ):
                values = self._plain_values(obj["values"][()], where)
                mask = np.asarray(obj["mask"][()], dtype=bool)
                if values.dtype.kind == "U":
                    values = values.copy()
                    values[mask] = ""
                    return values
                values = values.astype(np.float64)
                values[mask] = np.nan
                return values
            raise self._fail(f"column {where} has an unsupported encoding {enc!r}")
        # anndata 0.7: codes dataset with an object reference to __categories/<name>
        ref = obj.attrs.get("categories")
        if isinstance(ref, h5py.Reference):
            cats = self._plain_values(f[ref][()], where + " categories")
            return self._apply_codes(np.asarray(obj[()]).astype(np.int64), cats, where)
        if "__categories" in grp and name in grp["__categories"]:
            cats = self._plain_values(grp["__categories"][name][()], where + " categories")
            return self._apply_codes(np.asarray(obj[()]).astype(np.int64), cats, where)
        if obj.ndim != 1:
            raise self._fail(f"column {where} is not one-dimensional (shape {obj.shape})")
        return self._plain_values(obj[()], where)

    def _plain_values(self, raw: np.ndarray, where: str) -> np.ndarray:
        arr = np.asarray(raw)
        if _is_string_dtype(arr.dtype):
            return _decode_str_array(arr)
        if arr.dtype.kind in "biuf":
            return arr.astype(np.float64)
        raise self._fail(f"column {where} has an unsupported dtype {arr.dtype}")

    def _apply_codes(self, codes: np.ndarray, cats: np.ndarray, where: str) -> np.ndarray:
        if codes.size and (codes.max() >= len(cats) or codes.min() < -1):
            raise self._fail(
                f"categorical column {where}: codes must lie in [-1, {len(cats) - 1}], "
                f"got {codes.min()} .. {codes.max()}"
            )
        missing = codes < 0
        out = cats[np.where(missing, 0, codes)] if len(cats) else np.full(codes.shape, "", dtype=str)
        if missing.any():
            out = out.copy()
            out[missing] = "" if out.dtype.kind == "U" else np.nan
        return out

    def _columns(self, f: h5py.File, frame: str) -> list[str]:
        grp = f[frame]
        order = grp.attrs.get("column-order")
        if order is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(order)]
            return [n for n in names if n]
        index_key = _attr_str(grp, "_index")
        return sorted(k for k in grp.keys() if k not in (index_key, "__categories"))

    @property
    def obs_names(self) -> np.ndarray:
        """``(n_obs,)`` str: the cell ids (index of ``obs``)."""
        if self._obs_names is None:
            with self._open() as f:
                self._obs_names = self._read_index(f, "obs")
            if len(self._obs_names) != self.n_obs:
                raise self._fail(
                    f"{self._x_key} has {self.n_obs} rows but obs has {len(self._obs_names)} cell ids"
                )
        return self._obs_names

    @property
    def obs_columns(self) -> list[str]:
        """The names of the ``obs`` columns, in the file's column order."""
        with self._open() as f:
            if "obs" not in f:
                return []
            return self._columns(f, "obs")

    @property
    def var_columns(self) -> list[str]:
        """The names of the ``var`` columns (of ``raw/var`` when reading ``raw``)."""
        with self._open() as f:
            return self._columns(f, self._var_key)

    def _frame_column(self, frame: str, name: str, length: int) -> np.ndarray:
        with self._open() as f:
            if frame not in f:
                raise self._fail(f"expected a dataframe group '{frame}'")
            grp = f[frame]
            available = self._columns(f, frame)
            if name not in grp or name == "__categories":
                raise self._fail(
                    f"no column '{name}' in {frame} (available: {', '.join(available) or 'none'})"
                )
            values = self._read_column(f, frame, name)
        if values.shape != (length,):
            raise self._fail(f"column '{frame}/{name}' has {values.shape[0]} entries, expected {length}")
        return values

    def obs_column(self, name: str) -> np.ndarray:
        """One per-cell annotation column.

        Parameters
        ----------
        name
            Column of ``obs`` (categoricals are decoded to their category values).

        Returns
        -------
        np.ndarray
            ``(n_obs,)``; ``str`` for string-valued columns (missing -> ``""``), ``float64``
            otherwise (missing -> ``NaN``; booleans -> 0/1).

        Raises
        ------
        H5adError
            If the column does not exist; the message lists the available columns.
        """
        return self._frame_column("obs", name, self.n_obs)

    def var_column(self, name: str) -> np.ndarray:
        """One per-gene annotation column (e.g. gene symbols when the index holds Ensembl ids).

        Returns ``(n_vars,)`` with the conventions of :meth:`obs_column`.
        """
        return self._frame_column(self._var_key, name, self.n_vars)

    # ------------------------------------------------------------------ matrix
    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the matrix as a dense array.

        Returns
        -------
        np.ndarray
            ``(stop - start, n_vars)`` float32. For CSR only the matching ``indptr`` slice and
            the non-zeros of those rows are read.
        """
        start, stop = max(0, int(start)), min(self.n_obs, int(stop))
        n = max(0, stop - start)
        with self._open() as f:
            return self._read_rows(f, start, start + n)

    def _read_rows(self, f: h5py.File, start: int, stop: int) -> np.ndarray:
        n, g = stop - start, self.n_vars
        if not self.is_sparse:
            return np.asarray(f[self._x_key][start:stop], dtype=np.float32)
        out = np.zeros((n, g), dtype=np.float32)
        if n == 0:
            return out
        indptr, cols, data = self._read_csr(f, start, stop)
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        # a plain scatter would keep only the last of duplicated (row, col) entries, whereas
        # scipy (and anndata) sum them; canonical CSR (strictly increasing columns per row) has
        # no duplicates, so the slower accumulating path is only taken when needed
        increasing = np.diff(cols) > 0
        same_row = rows[1:] == rows[:-1]
        if np.all(increasing | ~same_row):
            out[rows, cols] = data
        else:
            np.add.at(out, (rows, cols), data)
        return out

    def _read_csr(self, f: h5py.File, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``start:stop`` as CSR parts: indptr (n + 1,) from 0, column indices, values; a
        dense matrix is converted chunk by chunk."""
        if not self.is_sparse:
            dense = np.asarray(f[self._x_key][start:stop], dtype=np.float32)
            rows, cols = np.nonzero(dense)
            indptr = np.zeros(len(dense) + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=len(dense)), out=indptr[1:])
            return indptr, cols.astype(np.int64), dense[rows, cols]
        x, g = f[self._x_key], self.n_vars
        indptr = np.asarray(x["indptr"][start : stop + 1], dtype=np.int64)
        if (np.diff(indptr) < 0).any():
            raise self._fail(f"CSR matrix '{self._x_key}': indptr decreases within rows {start}..{stop - 1}")
        lo, hi = int(indptr[0]), int(indptr[-1])
        data = np.asarray(x["data"][lo:hi], dtype=np.float32)
        cols = np.asarray(x["indices"][lo:hi], dtype=np.int64)
        if cols.size and (cols.min() < 0 or cols.max() >= g):
            raise self._fail(
                f"CSR matrix '{self._x_key}': column indices must lie in [0, {g - 1}], "
                f"got {cols.min()} .. {cols.max()} in rows {start}..{stop - 1}"
            )
        return indptr - lo, cols, data

    def iter_chunks(
        self, chunk_size: int = 1024, start: int = 0, stop: int | None = None, sparse: bool = False
    ) -> Iterator[tuple[int, Any]]:
        """Stream the matrix by rows.

        Parameters
        ----------
        chunk_size
            Rows per chunk. Memory is ``chunk_size * n_vars * 4`` bytes for the dense output plus
            the chunk's non-zeros; it does not grow with ``n_obs``.
        start, stop
            Row range to stream (default: all rows).
        sparse
            Yield each chunk as CSR parts ``(indptr, indices, data)`` instead of a dense array:
            ``indptr`` (n + 1,) int64 from 0, column ``indices`` int64 and ``data`` float32 of
            the non-zeros, row by row in file order (a dense matrix is converted). Memory is then
            the chunk's non-zeros only.

        Yields
        ------
        (int, np.ndarray or tuple)
            The index of the chunk's first row and its rows, ``(n, n_vars)`` float32 with
            ``n <= chunk_size`` (or the CSR parts with ``sparse``).
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        stop = self.n_obs if stop is None else min(int(stop), self.n_obs)
        read = self._read_csr if sparse else self._read_rows
        with self._open() as f:
            for lo in range(max(0, int(start)), stop, chunk_size):
                hi = min(lo + chunk_size, stop)
                yield lo, read(f, lo, hi)

    def read_all(self) -> np.ndarray:
        """The whole matrix, ``(n_obs, n_vars)`` float32 (small files only)."""
        return self.read_rows(0, self.n_obs)

    def __repr__(self) -> str:
        kind = "csr" if self.is_sparse else "dense"
        return f"H5adReader({self.path!r}, {self.n_obs} x {self.n_vars}, {kind}, matrix '{self._x_key}')"


# ---------------------------------------------------------------------- writing
_STR = h5py.string_dtype(encoding="utf-8")


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_h5ad(path: str | os.PathLike) -> bool:
    """True for an ``.h5ad``/``.h5`` name or a file that starts with the HDF5 signature (a
    delimited text file never does); a missing file is a :class:`DataError`."""
    if not path or not os.path.exists(path):
        raise DataError(str(path), "no such file")
    if str(path).endswith((".h5ad", ".h5")):
        return True
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_MAGIC


def obs_strings(reader: H5adReader, column: str, kind: str | None, key: str) -> list[str | None]:
    """An ``obs`` column as per-cell label/split strings, the way delimited text gives them.

    Parameters
    ----------
    reader : the file.
    column : the ``obs`` column (categoricals decoded).
    kind : ``"float"`` every cell needs a finite number; ``"str"`` every cell needs a value;
        ``None`` missing values stay ``None``.
    key : the config key that named the column, for messages (``fine-tuning data source.labelcolumn``).

    Returns
    -------
    One string per cell (integers without ``.0`` unless ``kind == "float"``), ``None`` = missing.
    """
    values = reader.obs_column(column)
    out: list[str | None] = []
    bad = []
    for i, v in enumerate(values.tolist()):
        if isinstance(v, float):
            text = None if not np.isfinite(v) else (str(int(v)) if v.is_integer() and kind != "float" else repr(float(v)))
        else:
            text = str(v) if str(v) != "" else None
            if text is not None and kind == "float":
                try:
                    ok = bool(np.isfinite(float(text)))
                except ValueError:
                    ok = False
                if not ok:
                    bad.append((i, text))
        if text is None and kind in ("float", "str"):
            bad.append((i, "missing"))
        out.append(text)
    if bad:
        i, what = bad[0]
        raise DataError(str(reader.path), f"obs column '{column}' ({key}): {len(bad)} cell(s) without a usable {'numeric ' if kind == 'float' else ''}value, first: cell #{i + 1} ({what})")
    return out


def _set_enc(obj: Any, kind: str, version: str) -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = version


def _write_strings(grp: h5py.Group, name: str, values: np.ndarray) -> None:
    # h5py writes variable-length UTF-8 only from Python str objects, not from numpy 'U' arrays
    data = np.array([str(v) for v in np.asarray(values).ravel()], dtype=object)
    ds = grp.create_dataset(name, data=data, dtype=_STR)
    _set_enc(ds, "string-array", "0.2.0")


def _write_frame(
    f: h5py.File, key: str, index: np.ndarray, columns: Mapping[str, np.ndarray], categorical: set[str]
) -> None:
    grp = f.create_group(key)
    _set_enc(grp, "dataframe", "0.2.0")
    grp.attrs["_index"] = "_index"
    grp.attrs.create("column-order", data=np.array([str(c) for c in columns], dtype=object), dtype=_STR)
    _write_strings(grp, "_index", index)
    for name, raw in columns.items():
        values = np.asarray(raw)
        if values.shape != (len(index),):
            raise ValueError(f"{key} column '{name}' has shape {values.shape}, expected ({len(index)},)")
        if name in categorical:
            cats, codes = np.unique(values, return_inverse=True)
            sub = grp.create_group(name)
            _set_enc(sub, "categorical", "0.2.0")
            sub.attrs["ordered"] = False
            code_dtype = np.int8 if len(cats) < 127 else np.int16 if len(cats) < 32767 else np.int32
            c = sub.create_dataset("codes", data=codes.astype(code_dtype))
            _set_enc(c, "array", "0.2.0")
            if cats.dtype.kind in "USO":
                _write_strings(sub, "categories", cats)
            else:
                cd = sub.create_dataset("categories", data=cats)
                _set_enc(cd, "array", "0.2.0")
        elif values.dtype.kind in "USO":
            _write_strings(grp, name, values)
        else:
            ds = grp.create_dataset(name, data=values)
            _set_enc(ds, "array", "0.2.0")


def write_h5ad(
    path: str | os.PathLike,
    X: Any,
    var_names: Any,
    obs_names: Any,
    obs: Mapping[str, Any] | None = None,
    categorical: set[str] | None = None,
    compression: str | None = "gzip",
    var: Mapping[str, Any] | None = None,
) -> None:
    """Write a small AnnData file in the anndata >= 0.8 encoding.

    anndata itself reads the result (same attributes and layout as ``AnnData.write_h5ad``);
    it exists for tests, examples and the example-data generator, not for large data.

    Parameters
    ----------
    path
        Output file (overwritten).
    X
        ``(n_obs, n_vars)``: a dense array, or a scipy CSR matrix/array (written as
        ``csr_matrix``). Its dtype is kept.
    var_names, obs_names
        ``(n_vars,)`` gene names and ``(n_obs,)`` cell ids.
    obs
        Per-cell columns, each ``(n_obs,)``: strings, numbers or booleans.
    categorical
        Names of ``obs`` columns to store as categoricals (sorted categories, ``int8`` codes
        when they fit) — how anndata stores string columns by default.
    compression
        HDF5 filter for the matrix ("gzip", "lzf" or None).
    var
        Per-gene columns, each ``(n_vars,)`` (e.g. Ensembl ids beside gene symbols).
    """
    obs = dict(obs or {})
    categorical = set(categorical or ())
    unknown = categorical - set(obs)
    if unknown:
        raise ValueError(f"categorical names columns that are not in obs: {sorted(unknown)}")
    var_names = np.asarray(var_names)
    obs_names = np.asarray(obs_names)
    is_csr = hasattr(X, "indptr") and getattr(X, "format", None) == "csr"
    if hasattr(X, "format") and not is_csr:
        raise ValueError(f"X must be dense or CSR, got a sparse matrix in format {X.format!r}")
    shape = tuple(int(s) for s in X.shape)
    if len(shape) != 2 or shape != (len(obs_names), len(var_names)):
        raise ValueError(f"X has shape {shape}, expected (len(obs_names), len(var_names)) = "
                         f"({len(obs_names)}, {len(var_names)})")
    from .outputs import atomic_hdf5

    with atomic_hdf5(path) as (f, _):
        _set_enc(f, "anndata", "0.1.0")
        if is_csr:
            grp = f.create_group("X")
            _set_enc(grp, "csr_matrix", "0.1.0")
            grp.attrs["shape"] = np.array(shape, dtype=np.int64)
            grp.create_dataset("data", data=np.asarray(X.data), compression=compression)
            grp.create_dataset("indices", data=np.asarray(X.indices), compression=compression)
            grp.create_dataset("indptr", data=np.asarray(X.indptr))
        else:
            ds = f.create_dataset("X", data=np.asarray(X), compression=compression)
            _set_enc(ds, "array", "0.2.0")
        _write_frame(f, "obs", obs_names, obs, categorical)
        _write_frame(f, "var", var_names, dict(var or {}), set())
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            _set_enc(f.create_group(key), "dict", "0.1.0")
