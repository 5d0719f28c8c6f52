"""The ``generank`` tokenizer kind as the core uses it (``TokenizerSpec``: fit, load, encode,
make_input), for both vocabularies the plugin knows:

- **fitted** (:class:`GenerankTokenizer`, cellarium-ml semantics): the vocabulary is the gene
  ids (var index, or ``genecolumn``) of the tokenizing ``.h5ad`` and each gene's scale its
  non-zero median of ``NormalizeTotal(10,000)`` there (:mod:`.fitted_tokenizer`); or, for plain text whose sequence
  column lists gene tokens already in rank order, the distinct tokens (no medians). Store ids are
  gene indices ``0..G-1``, model tokens ``index + 2`` (PAD = 0, MASK = 1). The store keeps
  ``blocksize + 1`` genes: a deletion (``remove``) lets the next-ranked gene move in, exactly as
  re-tokenising with the gene's count set to zero does.
- **Geneformer's dictionaries** (:class:`~.dictionary_tokenizer.DictionaryTokenizer`), chosen
  when ``model: dictionaries`` or ``model: pretrained`` is set: Geneformer's own tokenization
  with a release's token, median and Ensembl-mapping dictionaries. Store ids are Geneformer token
  ids; the store keeps the genes the model reads (``blocksize``, or ``blocksize - 2`` between
  ``<cls>`` and ``<eos>`` for V2) and nothing more, so ``remove`` deletes a gene from the
  already truncated cell, as Geneformer's in-silico deletion does.

Input genes that are not in the vocabulary are counted, reported once per file and ignored.
``.h5ad`` files are read through core's shared cells reader (``open_cells``) in both cases, so the
data-source keys ``layer``, ``genecolumn``, ``labelcolumn``, ``splitcolumn`` and ``weightcolumn``
mean what they mean for every expression plugin (with Geneformer's dictionaries an unset
``genecolumn`` means the tokenizer's ``ensemblcolumn``, ``ensembl_id`` by default).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from biolm.core.hookspecs import (
    BiolmError,
    ConfigError,
    DataError,
    EncodedRecord,
    ReadStats,
    delimited_options,
    is_h5ad,
    open_cells,
    read_json,
    read_records,
    write_text,
)

from .dictionary_tokenizer import FORMAT as DICTIONARY_FORMAT
from .dictionary_tokenizer import DictionaryTokenizer
from .fitted_tokenizer import GeneRankTokenizer

KIND = "generank"
_CHUNK_CELLS = 512


class GenerankTokenizer:
    """The fitted ``generank`` tokenizer biolm's core sees: a :class:`GeneRankTokenizer` plus the
    attributes the core uses (``vocab``, ``n_channels``, ``n_modifiers``, ``sha``, ``save``).

    Parameters
    ----------
    core : GeneRankTokenizer
    has_medians : False for a tokenizer learned on rank-ordered text (its scales are all 1 and it
        cannot rank counts).
    """

    positional = False  # a cell is a set of genes (in rank order): plots show the top genes

    def __init__(self, core: GeneRankTokenizer, has_medians: bool = True):
        self.core = core
        self.has_medians = bool(has_medians)
        self.vocab: list[str] = [str(v) for v in core.var_names.tolist()]
        self.n_channels = len(self.vocab)
        self.n_modifiers = 0

    def to_dict(self) -> dict:
        return dict(self.core.to_dict(), kind=KIND, has_medians=self.has_medians)

    def sha(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_dict()))

    def __repr__(self) -> str:
        return f"GenerankTokenizer({len(self.vocab)} genes, medians={self.has_medians})"


def load(path: Any) -> GenerankTokenizer | DictionaryTokenizer:
    """``tokenizer.json`` of either vocabulary."""
    try:
        d = read_json(path)
        if d.get("format") == DICTIONARY_FORMAT:
            return DictionaryTokenizer.from_dict(d)
        return GenerankTokenizer(GeneRankTokenizer.from_dict(d), d.get("has_medians", True))
    except FileNotFoundError:
        raise BiolmError(f"{path}: no tokenizer (run tokenize first)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(str(path), f"not a generank tokenizer ({exc}); re-run tokenize with tokenization: encoding: generank") from None


# ============================================================================ fit


def fit(source: Any, cfg: Any, log: Any) -> GenerankTokenizer | DictionaryTokenizer:
    """Learn the tokenizer: Geneformer's dictionaries when the ``model:`` section names them (or
    a published checkpoint), else medians fitted on ``source``."""
    model_cfg = cfg.model
    if model_cfg.dictionaries or model_cfg.pretrained:
        return _dictionary_tokenizer(model_cfg, log)
    if is_h5ad(source.filepath):
        return _fit_h5ad(source, cfg, log)
    return _fit_ranked_text(source, cfg, log)


def dictionaries_folder(model_cfg: Any) -> Path:
    """``model: dictionaries``, else (with ``model: pretrained``) the first of the checkpoint folder,
    ``../geneformer`` and ``..`` beside it that holds Geneformer dictionaries."""
    if model_cfg.dictionaries:
        folder = Path(model_cfg.dictionaries)
        if not folder.is_dir():
            raise ConfigError("model.dictionaries", f"{folder} is not a folder")
        return folder
    ckpt = Path(model_cfg.pretrained)
    for folder in (ckpt, ckpt.parent / "geneformer", ckpt.parent):
        if any(folder.glob("token_dictionary_gc*.pkl")) or (folder / "gene_dictionaries_30m").is_dir():
            return folder
    raise ConfigError("model.dictionaries", f"no Geneformer dictionaries (token_dictionary_gc104M.pkl, gene_dictionaries_30m/) in {ckpt}, {ckpt.parent / 'geneformer'} or {ckpt.parent}: set it to the folder holding them (Geneformer's geneformer/ package folder)")


def _dictionary_tokenizer(model_cfg: Any, log: Any) -> DictionaryTokenizer:
    from .checkpoint_config import read_checkpoint_config
    from .gene_dictionaries import load_dictionaries

    vocab_size, pad = None, None
    if model_cfg.pretrained:
        ckpt = read_checkpoint_config(model_cfg.pretrained).bert
        vocab_size, pad = ckpt.vocab_size, ckpt.pad_token_id
    folder = dictionaries_folder(model_cfg)
    d = load_dictionaries(folder, vocab_size=vocab_size)
    if vocab_size is not None and (d.vocab_size != vocab_size or d.pad_token_id != pad):
        raise DataError(d.paths["token"], f"the token dictionary ({d.vocab_size} ids, <pad> = {d.pad_token_id}) does not fit {model_cfg.pretrained} (vocab_size {vocab_size}, pad_token_id {pad}); are the dictionaries of another Geneformer version?")
    tok = DictionaryTokenizer.from_dictionaries(d, model_cfg.ensemblcolumn, model_cfg.countscolumn)
    log.info("Geneformer %s dictionaries from %s: %d genes%s; Ensembl ids from %s, library size from obs '%s'", d.version, folder, len(tok.medians), ", cells framed by <cls> ... <eos>" if tok.special_tokens else "", "the var index" if tok.ensembl_column == "index" else f"var column '{tok.ensembl_column}'", tok.counts_column)
    return tok


def _fit_h5ad(source: Any, cfg: Any, log: Any) -> GenerankTokenizer:
    cells = open_cells(source, "none", unique_genes=True)  # the gene ids become the vocabulary
    path, n_cells = cells.path, cells.n_cells
    if n_cells == 0 or len(cells.genes) == 0:
        raise DataError(path, f"no cells or no genes ({n_cells} x {len(cells.genes)})")
    n = cfg.tokenization.samplesize
    keep = None
    if n and n < n_cells:
        keep = np.zeros(n_cells, dtype=bool)
        keep[np.random.default_rng(cfg.seed).choice(n_cells, size=n, replace=False)] = True
        log.info("fitting the gene medians on a random subsample of %d of %d cells (samplesize)", n, n_cells)

    def chunks() -> Iterator[np.ndarray]:
        for chunk in cells.chunks(_CHUNK_CELLS):
            yield chunk.x if keep is None else chunk.x[keep[chunk.start : chunk.start + len(chunk)]]

    try:
        core = GeneRankTokenizer.fit(chunks(), cells.genes, max_len=cfg.settings.training.blocksize)
    except ValueError as exc:
        raise DataError(path, str(exc)) from None
    n_never = int(np.sum(core.n_nonzero_g == 0)) if core.n_nonzero_g is not None else 0
    log.info("gene-rank tokenizer: %d genes (%s%s), non-zero medians of NormalizeTotal(%g) over %d cells%s", core.n_genes, ", ".join(core.var_names[:8]), ", ..." if core.n_genes > 8 else "", core.target_count, core.n_cells_fit, f"; {n_never} gene(s) never expressed" if n_never else "")
    return GenerankTokenizer(core, has_medians=True)


def _fit_ranked_text(source: Any, cfg: Any, log: Any) -> GenerankTokenizer:
    path = str(source.filepath)
    if cfg.tokenization.samplesize:
        log.info("samplesize is ignored for rank-ordered text: the vocabulary is every distinct gene token")
    stats = ReadStats()
    genes: set[str] = set()
    n_rows = 0
    for rec in read_records(delimited_options(source, label_kind="none"), stats):
        genes.update(rec.tokens)
        n_rows += 1
    _log_skipped(log, path, stats)
    if not genes:
        raise DataError(path, "no gene tokens found")
    vocab = sorted(genes)
    core = GeneRankTokenizer(vocab, np.ones(len(vocab), dtype=np.float32), max_len=cfg.settings.training.blocksize, n_cells_fit=n_rows)
    log.info("gene-rank tokenizer from rank-ordered text: %d distinct genes over %d cells (no medians)", len(vocab), n_rows)
    return GenerankTokenizer(core, has_medians=False)


def _log_skipped(log: Any, path: str, stats: Any) -> None:
    if stats.n_skipped:
        log.warning("%s: skipped %d malformed row(s); first: %s", path, stats.n_skipped, "; ".join(stats.reasons))


# ============================================================================ encode


def encode(tok: Any, source: Any, encoding: Any, log: Any, label_kind: str | None):
    """Records of a data source: ``.h5ad`` counts ranked by the tokenizer, or rank-ordered text."""
    blocksize = int(encoding.blocksize)
    dictionary = isinstance(tok, DictionaryTokenizer)
    keep = tok.genes_read(blocksize) if dictionary else blocksize + 1
    if keep < 1:
        raise ConfigError("settings.training.blocksize", f"{blocksize} leaves no gene between <cls> and <eos>; use at least 3")
    path = str(source.filepath)
    if not is_h5ad(path):
        opts = delimited_options(source, label_kind=label_kind)
        options = dict(opts.parsing_options(), format="ranked-text", blocksize=blocksize, stored_genes=keep, tokenizer=tok.sha())
        return _text_records(tok, opts, keep, log, path), options
    if dictionary:
        tokenized = tok.cells(source, keep, label_kind=label_kind)  # reads the gene columns now: a bad file fails before the store build
        cells, records = tokenized.data, _dictionary_records(tokenized, log)
    else:
        cells = open_cells(source, label_kind)
        records = _fitted_records(tok, cells, _fitted_gene_order(tok, cells), keep, log)
    options = dict(cells.options, format="h5ad-geneformer" if dictionary else "h5ad", blocksize=blocksize, stored_genes=keep, tokenizer=tok.sha())
    return records, options


def _fitted_gene_order(tok: GenerankTokenizer, cells: Any) -> Any:
    path, n_genes = cells.path, len(cells.genes)
    if not tok.has_medians:
        raise ConfigError("tokenization.encoding", f"the tokenizer was learned on rank-ordered text (no per-gene medians) and cannot rank the counts of {path}; learn it on an .h5ad file (tokenize)")
    try:
        order = tok.core.gene_order(cells.genes)
    except ValueError as exc:
        raise DataError(path, str(exc)) from None
    if order.n_unknown == n_genes:
        raise DataError(path, f"none of its {n_genes} genes is in the tokenizer's vocabulary (e.g. {', '.join(order.unknown_examples[:5])}); was the tokenizer learned on other data (or another genecolumn)?")
    return order


def _record(rid: str, genes: np.ndarray, label: Any, weight: Any, split: Any, n: int) -> EncodedRecord:
    return EncodedRecord(rid, genes.astype(np.int32), np.zeros((len(genes), 0), dtype=np.float32), label, weight, split, 0, n)


def _at(values: list | None, i: int) -> Any:
    return None if values is None else values[i]


def _fitted_records(tok: GenerankTokenizer, cells: Any, order: Any, keep: int, log: Any) -> Iterator[EncodedRecord]:
    if not order.identity:
        log.warning("%s: %s", cells.path, order.describe())
    empty = 0
    core = tok.core
    for chunk in cells.chunks(_CHUNK_CELLS):
        x = chunk.x
        try:
            z = core.normalize(x, None if order.identity else order)
        except ValueError as exc:
            raise DataError(cells.path, f"cells {chunk.start + 1}..{chunk.start + len(x)}: {exc}") from None
        nnz = (z > 0).sum(dim=1).numpy()
        ids = core.rank(z, max_len=keep)[0].numpy()
        for r in range(len(x)):
            empty += nnz[r] == 0
            yield _record(str(chunk.ids[r]), ids[r, : min(nnz[r], keep)] - 2, _at(chunk.labels, r), _at(chunk.weights, r), _at(chunk.splits, r), int(nnz[r]))
    if empty:
        log.warning("%s: %d cell(s) express no vocabulary gene (empty sentences)", cells.path, empty)


def _dictionary_records(tokenized: Any, log: Any) -> Iterator[EncodedRecord]:
    data = tokenized.data
    for c in tokenized:
        yield _record(c.name, c.gene_ids, _at(data.labels, c.index), _at(data.weights, c.index), _at(data.splits, c.index), c.n_expressed)
    report = tokenized.report
    for line in report.lines():
        (log.warning if report.n_skipped_empty or report.n_skipped_bad_library else log.info)("%s", line)


def _text_records(tok: Any, opts: Any, keep: int, log: Any, path: str) -> Iterator[EncodedRecord]:
    index = {g: i for i, g in enumerate(tok.vocab) if g}
    unknown: Counter = Counter()
    repeated = 0
    stats = ReadStats()
    for rec in read_records(opts, stats):
        seen: set[int] = set()
        ids: list[int] = []
        for g in rec.tokens:
            i = index.get(g)
            if i is None:
                unknown[g] += 1
            elif i in seen:
                repeated += 1
            else:
                seen.add(i)
                ids.append(i)
        yield _record(rec.id, np.asarray(ids[:keep], dtype=np.int64), rec.label, rec.weight, rec.split, len(ids))
    _log_skipped(log, path, stats)
    if unknown:
        common = ", ".join(f"{g!r} x{c}" for g, c in unknown.most_common(10))
        log.warning("%s: %d gene token(s) (%d distinct) not in the vocabulary, ignored: %s", path, sum(unknown.values()), len(unknown), common)
    if repeated:
        log.warning("%s: %d repeated gene token(s) within a cell ignored (a gene keeps its first rank)", path, repeated)


# ============================================================================ model input


def make_input(tok: Any, batch: dict, encoding: Any) -> dict:
    """Store ids (``(B, L)``, -1 padding, -2 masked) -> ``input_ids`` ``(B, T)`` and
    ``attention_mask`` ``(B, T)`` of at most ``blocksize`` tokens.

    Fitted vocabulary: gene + 2, MASK 1, PAD 0. Geneformer's: the token ids themselves, its
    ``<mask>`` and ``<pad>``, and for V2 ``<cls>`` first and ``<eos>`` after the last gene.
    """
    import torch

    blocksize = int(encoding.blocksize)
    if not isinstance(tok, DictionaryTokenizer):
        ids = batch["ids"][:, :blocksize]
        if ids.shape[1] == 0:  # a batch of empty cells: one PAD column keeps the encoder's shapes valid
            ids = torch.full((ids.shape[0], 1), -1, dtype=ids.dtype, device=ids.device)
        input_ids = torch.where(ids >= 0, ids + 2, torch.where(ids == -2, torch.ones_like(ids), torch.zeros_like(ids)))
        return {"input_ids": input_ids, "attention_mask": input_ids != 0}
    width = tok.genes_read(blocksize)
    ids = batch["ids"][:, :width]
    n = batch["lengths"].to(ids.device).clamp(max=ids.shape[1])
    mask_id = tok.mask_token_id if tok.mask_token_id is not None else tok.pad_token_id
    genes = torch.where(ids >= 0, ids, torch.where(ids == -2, torch.full_like(ids, mask_id), torch.full_like(ids, tok.pad_token_id)))
    if not tok.special_tokens:
        if genes.shape[1] == 0:
            genes = torch.full((ids.shape[0], 1), tok.pad_token_id, dtype=ids.dtype, device=ids.device)
        return {"input_ids": genes, "attention_mask": torch.arange(genes.shape[1], device=ids.device)[None, :] < n[:, None]}
    b = ids.shape[0]
    input_ids = torch.full((b, genes.shape[1] + 2), tok.pad_token_id, dtype=ids.dtype, device=ids.device)
    input_ids[:, 0] = tok.cls_token_id
    input_ids[:, 1 : genes.shape[1] + 1] = genes
    input_ids[torch.arange(b, device=ids.device), n + 1] = tok.eos_token_id
    return {"input_ids": input_ids, "attention_mask": torch.arange(input_ids.shape[1], device=ids.device)[None, :] < (n + 2)[:, None]}
