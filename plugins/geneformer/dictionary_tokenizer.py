"""Geneformer's own rank-value tokenization, with a published release's gene dictionaries.

What Geneformer does (``TranscriptomeTokenizer.tokenize_anndata`` + ``create_dataset``) and how
this module does the same:

1. **Genes.** The var column of Ensembl ids (the data source's ``genecolumn``; unset: the
   tokenizer's ``ensembl_column``, ``ensembl_id`` by default, ``index`` = the var index) is upper-cased and mapped through the Ensembl mapping dictionary (restricted to targets in the
   token dictionary). Genes that map nowhere are dropped (counted in the report). Several columns
   mapping to one gene are summed. Column order decides how exact ties are broken (numpy's
   default, unstable ``argsort``), so it follows Geneformer: kept genes in file order; when genes
   were collapsed, the uncollapsed genes in file order followed by the collapsed ones in order of
   first appearance.
2. **Library size.** obs ``n_counts`` (not recomputed; Geneformer requires it). When the column is
   absent, biolm computes it as the sum of the cell's counts over *all* genes (Geneformer would
   stop); the report says which was used. Cells whose library size is not finite and > 0 are
   skipped and reported (Geneformer would rank NaNs).
3. **Scores.** ``counts / n_counts * 10,000 / median`` in float64, with Geneformer's operation
   order on scipy 1.17: a CSR matrix is scaled by reciprocals (``x * (1 / n) * 10000 *
   (1 / median)``), a dense one divided (``x / n * 10000 / median``). The two differ in the last
   bit at most and matter only for exact ties.
4. **Ranking.** Zeros dropped, then ``tokens[np.argsort(-scores)]`` (descending).
5. **Cells.** Optional obs ``filter_pass``: only cells with value 1 are tokenized. Cells with no
   vocabulary gene expressed are skipped and reported.
6. **Format.** Without special tokens (V1): the first ``size`` tokens. With ``<cls>``/``<eos>``
   in the vocabulary (V2): ``[<cls>] + first (size - 2) + [<eos>]``, ``size`` being the model
   input length (biolm's ``blocksize``; Geneformer's 2048 / 4096).

The file is read through core's shared cells reader (``open_cells``, as every expression plugin):
the matrix streamed in chunks of cells (float32 rows: exact for raw counts below 2**24 per entry),
``layer`` choosing it, the data source's ``genecolumn`` overriding the Ensembl-id column, and
the obs labels, splits and weights alongside. The tokenizer is saved whole in ``tokenizer.json``
(token dictionary, the medians of vocabulary genes, the mapping), so a trained model needs no
pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biolm.core.hookspecs import DataError, open_cells, write_text

from .gene_dictionaries import SPECIAL_TOKENS, GeneformerDictionaries, TokenIds

__all__ = ["TARGET_SUM", "GenePlan", "TokenizedCell", "TokenizationReport", "DictionaryTokenizer"]

TARGET_SUM = 10_000
FORMAT = "biolm-geneformer-dictionary-tokenizer"
_EXAMPLES = 10
_CHUNK_CELLS = 256


@dataclass
class GenePlan:
    """How the columns of one input file become Geneformer gene slots.

    Attributes
    ----------
    col_slot : np.ndarray
        ``(G_in,)`` int64: the slot of each input column, -1 for dropped columns.
    slot_tokens : np.ndarray
        ``(K,)`` int64 token id of each slot.
    slot_medians : np.ndarray
        ``(K,)`` float64 median of each slot's gene.
    slot_first_col : np.ndarray
        ``(K,)`` int64: the first input column feeding each slot.
    n_dropped : int
        Input columns whose gene is not in the vocabulary; ``dropped_examples`` up to 10 of them.
    n_collapsed : int
        Input columns summed into a slot that another column also feeds.
    """

    col_slot: np.ndarray
    slot_tokens: np.ndarray
    slot_medians: np.ndarray
    slot_first_col: np.ndarray
    n_dropped: int
    dropped_examples: list[str]
    n_collapsed: int

    @property
    def n_slots(self) -> int:
        return int(self.slot_tokens.shape[0])


@dataclass
class TokenizedCell:
    """One tokenized cell.

    Attributes
    ----------
    index : int
        Row of the cell in the file; ``name`` its obs name.
    gene_ids : np.ndarray
        ``(G,)`` int64 the gene tokens the model reads (without ``<cls>``/``<eos>``): what the
        store keeps (token id == index into the tokenizer's ``vocab``).
    n_expressed : int
        Vocabulary genes expressed (ranked) before truncation.
    ranked_tokens, ranked_scores : np.ndarray | None
        ``(R,)`` the full ranking (int64 tokens, float64 scores), when asked for.
    """

    index: int
    name: str
    gene_ids: np.ndarray
    n_expressed: int
    ranked_tokens: np.ndarray | None = None
    ranked_scores: np.ndarray | None = None


@dataclass
class TokenizationReport:
    """What happened to the genes and cells of one file (complete once iteration ends)."""

    path: str
    n_cells: int = 0
    n_tokenized: int = 0
    n_filtered: int = 0
    n_truncated: int = 0
    skipped_empty: list[str] = field(default_factory=list)
    n_skipped_empty: int = 0
    skipped_bad_library: list[str] = field(default_factory=list)
    n_skipped_bad_library: int = 0
    library_size_source: str = ""
    n_genes_input: int = 0
    n_genes_kept: int = 0
    n_genes_dropped: int = 0
    dropped_examples: list[str] = field(default_factory=list)
    n_genes_collapsed: int = 0

    def lines(self) -> list[str]:
        """Human-readable summary lines for logs."""
        out = [
            f"{self.path}: {self.n_tokenized} of {self.n_cells} cells tokenized"
            + (f", {self.n_filtered} excluded by filter_pass" if self.n_filtered else "")
            + (f", {self.n_truncated} truncated to the model input size" if self.n_truncated else ""),
            f"genes: {self.n_genes_kept} of {self.n_genes_input} columns in the Geneformer vocabulary"
            + (f", {self.n_genes_dropped} dropped (e.g. {', '.join(self.dropped_examples)})" if self.n_genes_dropped else "")
            + (f", {self.n_genes_collapsed} summed into another column's gene" if self.n_genes_collapsed else ""),
            f"library size: {self.library_size_source}",
        ]
        if self.n_skipped_empty:
            out.append(f"{self.n_skipped_empty} cell(s) skipped: no vocabulary gene expressed (e.g. {', '.join(self.skipped_empty)})")
        if self.n_skipped_bad_library:
            out.append(f"{self.n_skipped_bad_library} cell(s) skipped: library size not finite and > 0 (e.g. {', '.join(self.skipped_bad_library)})")
        return out


def _note(names: list[str], name: str) -> None:
    if len(names) < _EXAMPLES:
        names.append(name)


class DictionaryTokenizer(TokenIds):
    """Geneformer's tokenizer for one release's dictionaries; the tokenizer biolm's core sees for
    published checkpoints (``vocab``, ``n_channels``, ``n_modifiers``, ``sha``, ``save``).

    Store ids are Geneformer token ids (``vocab[i]`` is the name of token ``i``: an Ensembl id or
    ``<pad>``, ``<mask>``, ``<cls>``, ``<eos>``).

    Parameters
    ----------
    token_dict
        Ensembl id (and special token) -> token id.
    medians
        Ensembl id -> non-zero median, for the vocabulary genes.
    mapping
        Ensembl id (upper case) -> the vocabulary gene it is collapsed onto; ``None``: identity.
    version
        ``"V1"``, ``"V2"`` or ``"custom"`` (for messages).
    ensembl_column
        var column with Ensembl ids; ``"index"`` = the var index.
    counts_column
        obs column with library sizes (computed from the matrix when the file lacks it).
    """

    positional = False  # a cell is a set of genes (in rank order): plots show the top genes

    def __init__(self, token_dict: dict[str, int], medians: dict[str, float], mapping: dict[str, str] | None = None, version: str = "custom", ensembl_column: str = "ensembl_id", counts_column: str = "n_counts") -> None:
        self.token_dict = dict(token_dict)
        genes = {k: v for k, v in self.token_dict.items() if k not in SPECIAL_TOKENS}
        self.medians = {g: float(medians[g]) for g in genes if g in medians}
        mapping = mapping if mapping is not None else {g: g for g in genes}
        # as Geneformer: keep only mappings whose target is a vocabulary gene
        self.mapping = {k: v for k, v in mapping.items() if v in genes}
        self.version = version
        self.ensembl_column = ensembl_column
        self.counts_column = counts_column
        self._genes = genes
        self.vocab: list[str] = self.vocabulary()
        self.n_channels = len(self.vocab)
        self.n_modifiers = 0
        self._sha: str | None = None

    @classmethod
    def from_dictionaries(cls, d: GeneformerDictionaries, ensembl_column: str = "ensembl_id", counts_column: str = "n_counts") -> DictionaryTokenizer:
        for g in d.token_dict:
            if g not in SPECIAL_TOKENS and g in d.median_dict:
                d.gene_median(g)  # raises for a median that is not finite and > 0
        return cls(d.token_dict, d.median_dict, d.mapping_dict, d.version, ensembl_column, counts_column)

    # ------------------------------------------------------------------ tokens
    def genes_read(self, input_size: int) -> int:
        """Gene tokens of an input of ``input_size`` tokens (V2: 2 fewer for ``<cls>``/``<eos>``)."""
        return input_size - 2 if self.special_tokens else input_size

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "generank",
            "format": FORMAT,
            "version": self.version,
            "ensembl_column": self.ensembl_column,
            "counts_column": self.counts_column,
            "token_dict": self.token_dict,
            "medians": self.medians,
            "mapping": self.mapping,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DictionaryTokenizer:
        return cls(d["token_dict"], d["medians"], d["mapping"], d["version"], d["ensembl_column"], d["counts_column"])

    def sha(self) -> str:
        if self._sha is None:
            self._sha = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()
        return self._sha

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_dict()))

    def __repr__(self) -> str:
        return f"DictionaryTokenizer(Geneformer {self.version}, {len(self._genes)} genes, special tokens {self.special_tokens})"

    # ------------------------------------------------------------------ genes
    def gene_plan(self, ensembl_ids: np.ndarray | list[str], where: str = "median dictionary") -> GenePlan:
        """Map an input file's gene ids onto vocabulary slots (step 1 of the module docstring).

        Raises
        ------
        DataError
            If a kept gene has no median.
        """
        ids = [str(g) for g in np.asarray(ensembl_ids).tolist()]
        mapped = [self.mapping.get(g.upper()) for g in ids]
        uses = Counter(m for m in mapped if m is not None)
        # Geneformer's column order: without collapsing, file order; with, the genes fed by one
        # column in file order, then the collapsed genes in order of first appearance
        order = list(dict.fromkeys(m for m in mapped if m is not None and uses[m] == 1))
        order += list(dict.fromkeys(m for m in mapped if m is not None and uses[m] > 1))
        no_median = [g for g in order if g not in self.medians]
        if no_median:
            raise DataError(where, f"no median for vocabulary gene(s) {', '.join(no_median[:5])}")
        slot_of = {gene: i for i, gene in enumerate(order)}
        col_slot = np.array([slot_of[m] if m is not None else -1 for m in mapped], dtype=np.int64)
        first_col = np.full(len(order), -1, dtype=np.int64)
        for col in range(len(ids) - 1, -1, -1):
            if col_slot[col] >= 0:
                first_col[col_slot[col]] = col
        dropped = [g for g, m in zip(ids, mapped) if m is None]
        return GenePlan(
            col_slot=col_slot,
            slot_tokens=np.array([self._genes[g] for g in order], dtype=np.int64),
            slot_medians=np.array([self.medians[g] for g in order], dtype=np.float64),
            slot_first_col=first_col,
            n_dropped=len(dropped),
            dropped_examples=dropped[:_EXAMPLES],
            n_collapsed=sum(c - 1 for c in uses.values()),
        )

    # ------------------------------------------------------------------ cells
    @staticmethod
    def rank_rows(x: np.ndarray, library: np.ndarray, plan: GenePlan, sparse: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """Rank the cells of one chunk (steps 3-4).

        Parameters
        ----------
        x
            ``(n, G_in)`` counts (float32 rows of the file).
        library
            ``(n,)`` float64 library sizes (finite, > 0).
        plan
            From :meth:`gene_plan` for this file.
        sparse
            The file stores the matrix as CSR (Geneformer's arithmetic then uses reciprocals).

        Returns
        -------
        list[tuple[np.ndarray, np.ndarray]]
            Per cell, ``(tokens, scores)``: ``(R,)`` int64 gene tokens by descending score and
            their ``(R,)`` float64 scores; empty arrays for a cell without vocabulary genes.
        """
        kept = np.flatnonzero(plan.col_slot >= 0)
        z = np.zeros((x.shape[0], plan.n_slots), dtype=np.float64)
        # columns collapsed onto one gene are summed (in column order)
        np.add.at(z.T, plan.col_slot[kept], x[:, kept].T.astype(np.float64))
        out = []
        for r in range(x.shape[0]):
            slots = np.flatnonzero(z[r])
            if sparse:
                s = z[r, slots] * (1.0 / library[r]) * TARGET_SUM * (1.0 / plan.slot_medians[slots])
            else:
                s = z[r, slots] / library[r] * TARGET_SUM / plan.slot_medians[slots]
            keep = s != 0
            slots, s = slots[keep], s[keep]
            order = np.argsort(-s)  # numpy's default kind, exactly as Geneformer's rank_genes
            out.append((plan.slot_tokens[slots][order], s[order]))
        return out

    def cells(self, source: Any, n_genes: int, keep_ranked: int | None = 0, chunk_size: int = _CHUNK_CELLS, label_kind: str | None = "none") -> H5adCells:
        """Stream the cells of an ``.h5ad`` file as :class:`TokenizedCell` s.

        Parameters
        ----------
        source
            A data-source section (``filepath``, ``layer``, ``genecolumn``, ``labelcolumn``,
            ``splitcolumn``, ``weightcolumn``) or a file path; raw counts, all genes, no feature
            selection.
        n_genes
            Gene tokens kept per cell (:meth:`genes_read` of the model input length).
        keep_ranked
            0: no ranking kept beyond ``gene_ids``; None: the full ranking and scores; ``k``: the top ``k``.
        label_kind
            As core's ``open_cells``: which labels are read (``"none"``: none).

        Raises
        ------
        DataError
            Missing columns, no vocabulary gene in the file, a bad matrix layout.
        """
        genecolumn = None if self.ensembl_column == "index" else (self.ensembl_column, "model.ensemblcolumn (kept in the tokenizer; 'index' = the var index)")
        return H5adCells(self, open_cells(source, label_kind, default_genecolumn=genecolumn), n_genes, keep_ranked, chunk_size)


class H5adCells:
    """One ``.h5ad`` file being tokenized; iterate for :class:`TokenizedCell` s.

    Attributes
    ----------
    data : core's ``Cells`` of the file (ids, labels, splits, weights by cell index, options)
    plan : GenePlan
    report : TokenizationReport
        Complete once iteration has ended.
    """

    def __init__(self, tok: DictionaryTokenizer, data: Any, n_genes: int, keep_ranked: int | None, chunk_size: int) -> None:
        self.tok = tok
        self.data = data
        self.n_genes = int(n_genes)
        self.keep_ranked = keep_ranked
        self.chunk_size = int(chunk_size)
        path, n_vars = data.path, len(data.genes)
        where = f"var column '{data.options['genecolumn']}'" if data.options["genecolumn"] else "var index"
        self.plan = tok.gene_plan(data.genes)
        if self.plan.n_slots == 0:
            raise DataError(path, f"none of the {n_vars} genes of the {where} is in the Geneformer vocabulary (e.g. {', '.join(self.plan.dropped_examples[:5])}); Ensembl ids are needed")
        self.library = data.obs_numbers(tok.counts_column)
        source = f"obs column '{tok.counts_column}'" if self.library is not None else f"computed from the matrix (sum over all genes; obs has no '{tok.counts_column}')"
        flags = data.obs_numbers("filter_pass")
        self.selected = np.ones(data.n_cells, dtype=bool) if flags is None else flags == 1
        p = self.plan
        self.report = TokenizationReport(
            path=path,
            n_cells=data.n_cells,
            n_filtered=int((~self.selected).sum()),
            library_size_source=source,
            n_genes_input=n_vars,
            n_genes_kept=int((p.col_slot >= 0).sum()),
            n_genes_dropped=p.n_dropped,
            dropped_examples=p.dropped_examples,
            n_genes_collapsed=p.n_collapsed,
        )

    def __iter__(self) -> Iterator[TokenizedCell]:
        rep = self.report
        for chunk in self.data.chunks(self.chunk_size):
            lo, x, names = chunk.start, chunk.x, chunk.ids
            n = x.shape[0]
            library = self.library[lo : lo + n] if self.library is not None else x.sum(axis=1, dtype=np.float64)
            good = np.isfinite(library) & (library > 0)
            ranked = self.tok.rank_rows(x, np.where(good, library, 1.0), self.plan, self.data.is_sparse)
            for r in range(n):
                i = lo + r
                if not self.selected[i]:
                    continue
                if not good[r]:
                    rep.n_skipped_bad_library += 1
                    _note(rep.skipped_bad_library, str(names[r]))
                    continue
                tokens, scores = ranked[r]
                if tokens.size == 0:
                    rep.n_skipped_empty += 1
                    _note(rep.skipped_empty, str(names[r]))
                    continue
                rep.n_tokenized += 1
                rep.n_truncated += int(tokens.size > self.n_genes)
                cell = TokenizedCell(index=i, name=str(names[r]), gene_ids=tokens[: self.n_genes].copy(), n_expressed=int(tokens.size))
                if self.keep_ranked != 0:
                    k = tokens.size if self.keep_ranked is None else int(self.keep_ranked)
                    cell.ranked_tokens, cell.ranked_scores = tokens[:k], scores[:k]
                yield cell
