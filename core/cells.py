"""Cells of an ``.h5ad`` data source: the one reader every expression plugin uses.

:func:`open_cells` opens the ``.h5ad`` file of a data-source section and streams it as chunks
of cells (:class:`CellChunk`), each with its cell ids and — from ``obs`` columns named in the
section — labels, split ids and weights, as delimited text gives them (strings; ``None`` =
missing). The counts come dense or as CSR parts, in bounded memory either way.
:func:`match_genes` puts a file's genes into the order of a gene list fixed earlier (a
tokenizer's, a trained model's): by id, never by position.

Section keys read (all optional but ``filepath``): ``layer`` (``X`` by default, ``raw`` or a
name under ``layers/``), ``genecolumn`` (a ``var`` column holding the gene ids; default the
``var`` index, or the column a plugin's convention names, e.g. Geneformer's ``ensembl_id``),
``labelcolumn``, ``splitcolumn``, ``weightcolumn``. Other per-cell numbers a model needs (a
library size, a filter flag) come from :meth:`Cells.obs_numbers`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["Cells", "CellChunk", "GeneMatch", "open_cells", "match_genes"]


@dataclass
class CellChunk:
    """Consecutive cells of the file.

    Attributes
    ----------
    start : index of the first cell in the file.
    ids : (n,) str, the cell ids (``obs`` index).
    x : (n, G) float32 counts (``chunks(sparse=False)``), else ``None``.
    csr : ``(indptr (n + 1,) int64 from 0, indices int64, data float32)`` of the non-zeros
        (``chunks(sparse=True)``), else ``None``.
    labels, splits, weights : one string (or ``None`` = missing) per cell, or ``None`` when the
        section names no such column.
    """

    start: int
    ids: np.ndarray
    x: np.ndarray | None
    csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    labels: list | None
    splits: list | None
    weights: list | None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Cells:
    """An opened ``.h5ad`` data source (see :func:`open_cells`).

    Attributes
    ----------
    path : the file.
    reader : its :class:`~biolm.core.h5ad.H5adReader`.
    genes : (G,) str, the gene ids in matrix column order (``var`` index or ``genecolumn``).
    labels, splits, weights : per-cell strings (``None`` = missing), or ``None`` (no column).
    options : every option that fixes what is read (for a store's content hash).
    """

    path: str
    reader: Any
    genes: np.ndarray
    labels: list | None
    splits: list | None
    weights: list | None
    options: dict

    @property
    def n_cells(self) -> int:
        return self.reader.n_obs

    @property
    def is_sparse(self) -> bool:
        """The file stores the matrix as CSR (some arithmetic, e.g. Geneformer's, depends on it)."""
        return bool(self.reader.is_sparse)

    def obs_numbers(self, column: str) -> np.ndarray | None:
        """``(n_cells,)`` float64 values of a numeric ``obs`` column (missing = NaN, booleans
        0/1), or ``None`` when the file has no such column."""
        if column not in self.reader.obs_columns:
            return None
        values = self.reader.obs_column(column)
        if values.dtype.kind not in "fiub":
            raise DataError(self.path, f"obs column '{column}' holds text, expected numbers")
        return values.astype(np.float64)

    def chunks(self, size: int = 512, sparse: bool = False) -> Iterator[CellChunk]:
        """Stream the cells in file order, ``size`` at a time (``sparse``: CSR parts instead of
        dense rows, so memory follows the non-zeros)."""
        ids = self.reader.obs_names

        def part(values, lo, hi):
            return None if values is None else values[lo:hi]

        for lo, x in self.reader.iter_chunks(size, sparse=sparse):
            n = len(x[0]) - 1 if sparse else len(x)
            hi = lo + n
            yield CellChunk(lo, ids[lo:hi], None if sparse else x, x if sparse else None, part(self.labels, lo, hi), part(self.splits, lo, hi), part(self.weights, lo, hi))


def open_cells(source: Any, label_kind: str | None, unique_genes: bool = False, default_genecolumn: tuple[str, str] | None = None) -> Cells:
    """Open the ``.h5ad`` file of a data-source section for reading cells.

    Parameters
    ----------
    source : a data-source config section (``filepath``, and the optional keys of the module
        docstring; a section without a key reads as if it were unset), or a file path (every key
        unset).
    label_kind : ``"float"`` (regression) or ``"str"`` (classification): ``labelcolumn`` is
        required and every cell needs a label; ``None``: labels when ``labelcolumn`` is set,
        missing ones kept as ``None``; ``"none"``: no labels.
    unique_genes : the gene ids must not repeat (they become a vocabulary).
    default_genecolumn : ``(column, config key naming it)``: the ``var`` column of gene ids when
        the section sets no ``genecolumn`` (a plugin's convention); ``None``: the ``var`` index.

    Returns
    -------
    Cells

    Raises
    ------
    DataError, ConfigError : an unreadable file, a missing or incomplete column, repeated gene
        ids — one line naming the file or the key.

    Examples
    --------
    How an expression tokenizer streams a source into store records::

        cells = open_cells(source, label_kind)
        for chunk in cells.chunks(512):            # chunk.x: (n, G) float32 counts
            for r in range(len(chunk)):
                ... chunk.ids[r], chunk.x[r], chunk.labels and chunk.labels[r] ...
    """
    from .h5ad import H5adReader, obs_strings
    from .schema import section_of

    if isinstance(source, (str, os.PathLike)):
        source = SimpleNamespace(filepath=source)
    path = str(source.filepath)
    section = section_of(source)
    layer = getattr(source, "layer", None)
    reader = H5adReader(path, layer)
    genecolumn, named_by = getattr(source, "genecolumn", None), f"{section}.genecolumn"
    if not genecolumn and default_genecolumn:
        genecolumn, named_by = default_genecolumn
    if genecolumn and genecolumn not in reader.var_columns:
        raise DataError(path, f"no var column '{genecolumn}' holding the gene ids (named by {named_by}; var columns: {', '.join(reader.var_columns) or 'none'}); set {section}.genecolumn to the one holding them")
    genes = reader.var_names if not genecolumn else np.asarray([str(g) for g in reader.var_column(genecolumn)])
    if unique_genes:
        uniq, counts = np.unique(genes, return_counts=True)
        if np.any(counts > 1):
            what = f"var column '{genecolumn}'" if genecolumn else "the var index"
            raise DataError(path, f"gene ids repeat in {what}: {', '.join(uniq[counts > 1][:5])}; a gene list needs unique ids (e.g. Ensembl ids; see genecolumn)")
    labelcolumn = getattr(source, "labelcolumn", None) if label_kind != "none" else None
    if label_kind in ("float", "str") and not labelcolumn:
        raise ConfigError(f"{section}.labelcolumn", f"required for .h5ad input: the obs column holding the labels of {path}")
    columns = {"labelcolumn": labelcolumn, "splitcolumn": getattr(source, "splitcolumn", None), "weightcolumn": getattr(source, "weightcolumn", None)}
    kinds = {"labelcolumn": None if label_kind == "none" else label_kind, "splitcolumn": None, "weightcolumn": None}
    values = {key: obs_strings(reader, col, kinds[key], f"{section}.{key}") if col else None for key, col in columns.items()}
    options = {"format": "h5ad", "layer": layer, "genecolumn": genecolumn, **columns, "label_kind": label_kind}
    return Cells(path, reader, genes, values["labelcolumn"], values["splitcolumn"], values["weightcolumn"], options)


@dataclass
class GeneMatch:
    """Where a file's genes go in a fixed gene list.

    Attributes
    ----------
    n_wanted : G, the length of the gene list.
    column : (G_file,) int64: position of each file gene in the list, -1 = not in it (ignored).
    missing : the listed genes absent from the file (their values are zeros).
    n_extra : file genes not in the list.
    identity : the file has exactly the list's genes in the list's order.
    """

    n_wanted: int
    column: np.ndarray
    missing: list
    n_extra: int
    identity: bool

    def describe(self) -> str:
        """One line for the log: counts and a few examples of missing genes."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of the model's {self.n_wanted} genes are missing and read as zeros (e.g. {', '.join(map(str, self.missing[:5]))})")
        if self.n_extra:
            parts.append(f"{self.n_extra} gene(s) unknown to the model ignored")
        if not parts:
            parts.append("genes reordered to the model's gene order")
        return "; ".join(parts)

    def sparse_row(self, indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One cell's non-zeros in file columns -> (list positions, values), unknown genes dropped."""
        if self.identity:
            return indices, values
        pos = self.column[indices]
        keep = pos >= 0
        return pos[keep], values[keep]

    def dense(self, x: np.ndarray) -> np.ndarray:
        """(n, G_file) -> (n, G) in list order; missing genes are zero columns."""
        if self.identity:
            return x
        out = np.zeros((x.shape[0], self.n_wanted), dtype=x.dtype)
        src = np.flatnonzero(self.column >= 0)
        out[:, self.column[src]] = x[:, src]
        return out


def match_genes(file_genes: Any, wanted: Any, path: str = "") -> GeneMatch:
    """Match a file's gene ids to a gene list, by id.

    Parameters
    ----------
    file_genes : (G_file,) the file's gene ids, in column order.
    wanted : (G,) the gene list (unique ids), e.g. a tokenizer's vocabulary.
    path : the file, for messages.

    Returns
    -------
    GeneMatch

    Raises
    ------
    DataError : a listed gene occurs more than once in the file, or no listed gene occurs.
    """
    wanted = [str(g) for g in wanted]
    file_genes = [str(g) for g in file_genes]
    index = {g: i for i, g in enumerate(wanted)}
    column = np.fromiter((index.get(g, -1) for g in file_genes), dtype=np.int64, count=len(file_genes))
    hits = column[column >= 0]
    if len(hits) == 0 and len(wanted):
        raise DataError(path, f"none of its {len(file_genes)} genes is in the model's gene list of {len(wanted)} (e.g. {', '.join(wanted[:3])}); are the gene ids of the same kind (see genecolumn)?")
    counts = np.bincount(hits, minlength=len(wanted))
    if counts.max(initial=0) > 1:
        dup = [wanted[i] for i in np.flatnonzero(counts > 1)[:5]]
        raise DataError(path, f"gene ids occur more than once: {', '.join(dup)}")
    missing = [wanted[i] for i in np.flatnonzero(counts == 0)]
    identity = len(file_genes) == len(wanted) and bool(np.array_equal(column, np.arange(len(wanted))))
    return GeneMatch(len(wanted), column, missing, int(np.sum(column < 0)), identity)
