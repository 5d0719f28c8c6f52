"""The ``expression`` tokenizer kind: cells of an ``.h5ad`` file as feature records over a gene list.

``tokenize`` learns the gene list (the ``var`` index, or ``genecolumn``, of the tokenizing file;
ids must be unique). Encoding stores each cell's raw values of those genes, in the list's
order, sparse (zeros are not stored): genes are matched by id, never by position — a gene of
the list that the file lacks reads as zero (a warning counts them), a gene the list lacks is
ignored. Normalisation (library size, log1p, z-scores, gene selection) belongs to the model
that reads the records, so that it is fitted on a fold's training split and saved with it, and
an in-silico knockout (a count set to zero) happens before it.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .errors import DataError
from .feature_tokenizer import FeatureTokenizer

KIND = "expression"
_CHUNK_CELLS = 1024


def fit(source: Any, cfg: Any, log: Any) -> FeatureTokenizer:
    """The gene list of the tokenizing ``.h5ad`` file."""
    from .cells import open_cells

    cells = open_cells(source, "none", unique_genes=True)
    if cells.n_cells == 0 or len(cells.genes) == 0:
        raise DataError(cells.path, f"no cells or no genes ({cells.n_cells} x {len(cells.genes)})")
    genes = [str(g) for g in cells.genes]
    log.info("expression tokenizer: %d genes (%s%s) of %s (%d cells)", len(genes), ", ".join(genes[:8]), ", ..." if len(genes) > 8 else "", cells.path, cells.n_cells)
    return FeatureTokenizer(KIND, (len(genes),), genes, {"layer": cells.options["layer"], "genecolumn": cells.options["genecolumn"]})


def load(path: Any) -> FeatureTokenizer:
    return FeatureTokenizer.load(path, KIND)


def encode(tok: FeatureTokenizer, source: Any, encoding: Any, log: Any, label_kind: str | None):
    """Every cell as a sparse feature record over the tokenizer's genes (matched by id)."""
    from .cells import match_genes, open_cells

    cells = open_cells(source, label_kind)
    match = match_genes(cells.genes, tok.vocab, cells.path)
    if not match.identity:
        log.warning("%s: %s", cells.path, match.describe())
    options = dict(cells.options, tokenizer=tok.sha())
    return _records(cells, match), options


def _records(cells: Any, match: Any) -> Iterator[Any]:
    from .store import feature_record

    def at(values, i):
        return None if values is None else values[i]

    for chunk in cells.chunks(_CHUNK_CELLS, sparse=True):
        indptr, cols, data = chunk.csr
        if not np.isfinite(data).all():
            bad = int(np.searchsorted(indptr, int(np.flatnonzero(~np.isfinite(data))[0]), side="right")) - 1
            raise DataError(cells.path, f"cell #{chunk.start + bad + 1} ({chunk.ids[bad]}) has NaN or infinite values; expression input must be finite counts")
        for r in range(len(chunk)):
            a, b = indptr[r], indptr[r + 1]
            idx, val = match.sparse_row(cols[a:b], data[a:b])
            yield feature_record(str(chunk.ids[r]), val, idx, at(chunk.labels, r), at(chunk.weights, r), at(chunk.splits, r))
