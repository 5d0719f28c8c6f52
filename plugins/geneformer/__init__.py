"""The ``geneformer`` plugin: Geneformer (Theodoris et al. 2023) as in cellarium-ml, on single-cell
expression data.

Hook implementations only; the model and the rank-value tokenizer live in
:mod:`biolm.plugins.geneformer.model` (parity-tested against cellarium-ml) and are imported when
a tokenizer or model is used, so listing plugins stays cheap (no torch at import).

Tokenizer kind ``generank``
---------------------------
- ``.h5ad`` input (``X``, dense or CSR, read in chunks with h5py): the vocabulary is the ``var``
  index of the tokenizing file; each gene's scale is its non-zero median of
  ``NormalizeTotal(10,000)`` over the cells (``tokenization: samplesize`` fits it on a seeded
  random subsample). A cell becomes its expressed vocabulary genes sorted by
  ``NormalizeTotal(x) / median`` (descending; ties by gene index).
- Plain text (the reference's delimited format; the sequence column lists gene tokens already in
  rank order, e.g. ``CD3E,IL7R,...``): the vocabulary is the sorted set of distinct tokens, and
  there are no medians (such a tokenizer cannot rank ``.h5ad`` counts). A gene repeated in a row
  keeps its first (highest) rank; ``lefttailing`` does not apply (the top ranks are kept).
- Input genes that are not in the vocabulary are counted, reported once per file and ignored
  (they still count towards a cell's library size).

What is stored: the store keeps, per cell, the gene indices ``0..G-1`` (token = index + 2) of the
top ``blocksize + 1`` expressed genes — one more than the model reads, so that an in-silico
deletion (``looscores: handletokens: remove``) lets the next-ranked gene move into the sentence,
exactly as re-tokenising with the gene's count set to zero does. ``orig_lengths`` holds the
number of expressed vocabulary genes. The model reads the first ``max_position_embeddings``
(= ``blocksize``, checked) tokens.

Modes: ``tokenize``, ``pre-train`` (masked-gene LM, 15 % with 80/10/10), ``fine-tune`` (mean- or
first-token-pooled head, starting from ``OUTPUTPATH/pre-train`` when it exists), ``predict``
(``saveembeddings`` writes the pooled cell embeddings), ``interpret`` (``remove`` = in-silico
deletion, ``mask`` = MASK token in place, ``activate`` = gene moved to rank 1, ``replace``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from biolm.core.hookspecs import BiolmError, ConfigError, DataError, ModelSpec, PluginConfig, TokenizerSpec, hookimpl, opt, parsers

TRAIN = {"pre-train", "fine-tune"}
KIND = "generank"
_CHUNK_CELLS = 512


@dataclass
class GeneformerSchema:
    hidden_size: int = opt(256, "Width of the BERT encoder (embedding and hidden size).", minimum=1, modes=TRAIN)
    num_hidden_layers: int = opt(6, "Transformer layers.", minimum=1, modes=TRAIN)
    num_attention_heads: int = opt(4, "Attention heads per layer (must divide hidden_size).", minimum=1, modes=TRAIN)
    intermediate_size: int = opt(512, "Width of each layer's feed-forward block.", minimum=1, modes=TRAIN)
    hidden_act: str = opt("relu", "Feed-forward activation.", choices=("relu", "gelu"), modes=TRAIN)
    hidden_dropout_prob: float = opt(0.02, "Dropout on embeddings and layer outputs.", minimum=0.0, maximum=1.0, modes=TRAIN)
    attention_probs_dropout_prob: float = opt(0.02, "Dropout on attention probabilities.", minimum=0.0, maximum=1.0, modes=TRAIN)
    max_position_embeddings: int = opt(2048, "Genes read per cell (the top ranks); must equal settings.training.blocksize.", minimum=1, modes=TRAIN)
    layer_norm_eps: float = opt(1e-12, "LayerNorm epsilon.", minimum=0.0, modes=TRAIN)
    initializer_range: float = opt(0.02, "Standard deviation of the normal weight initialisation.", minimum=0.0, modes=TRAIN)
    pooling: str = opt("mean", "fine-tune: cell representation = mean over gene tokens, or the first (top-ranked) token.", choices=("mean", "first"), modes=TRAIN)
    head_dropout: float | None = opt(None, "fine-tune: dropout before the output layer; unset = hidden_dropout_prob.", parse=parsers.FLOAT, minimum=0.0, maximum=1.0, modes=TRAIN)


# ============================================================================ tokenizer


class GenerankTokenizer:
    """The ``generank`` tokenizer biolm's core sees: a :class:`~.model.GeneRankTokenizer` plus the
    attributes the core uses (``vocab``, ``n_channels``, ``n_modifiers``, ``sha``, ``save``).

    Store ids are gene indices ``0..G-1`` (``vocab[i]`` is the gene name); model tokens are
    ``index + 2`` (PAD = 0, MASK = 1).

    Parameters
    ----------
    core : GeneRankTokenizer
    has_medians : False for a tokenizer learned on rank-ordered text (its scales are all 1 and it
        cannot rank counts).
    """

    positional = False  # a cell is a set of genes (in rank order): plots show the top genes

    def __init__(self, core: Any, has_medians: bool = True):
        self.core = core
        self.has_medians = bool(has_medians)
        self.vocab: list[str] = [str(v) for v in core.var_names.tolist()]
        self.n_channels = len(self.vocab)
        self.n_modifiers = 0

    def to_dict(self) -> dict:
        return dict(self.core.to_dict(), kind=KIND, has_medians=self.has_medians)

    def sha(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        from biolm.core.hookspecs import write_text

        write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GenerankTokenizer":
        from .model import GeneRankTokenizer

        try:
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
            core = GeneRankTokenizer.from_dict(d)
        except FileNotFoundError:
            raise BiolmError(f"{path}: no tokenizer (run tokenize first)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(str(path), f"not a generank tokenizer ({exc}); re-run tokenize with tokenization: encoding: generank") from None
        return cls(core, d.get("has_medians", True))

    def __repr__(self) -> str:
        return f"GenerankTokenizer({len(self.vocab)} genes, medians={self.has_medians})"


def _is_h5ad(source: Any) -> bool:
    from biolm.core.hookspecs import is_h5ad

    return is_h5ad(source.filepath)


def _reader(path: str, unique_genes: bool = False):
    """An :class:`H5adReader`; ``unique_genes``: the gene names become a vocabulary, so they
    must not repeat (when encoding, only repeats of vocabulary genes are an error)."""
    import numpy as np

    from biolm.core.hookspecs import H5adReader

    reader = H5adReader(path)
    if unique_genes:
        uniq, counts = np.unique(reader.var_names, return_counts=True)
        if np.any(counts > 1):
            raise DataError(path, f"gene names (var index) repeat: {', '.join(uniq[counts > 1][:5])}; the vocabulary needs unique names (e.g. Ensembl ids)")
    return reader


def _fit(source: Any, cfg: Any, log: Any) -> GenerankTokenizer:
    import numpy as np

    from .model import GeneRankTokenizer

    blocksize = cfg.settings.training.blocksize
    path = str(source.filepath)
    if _is_h5ad(source):
        reader = _reader(path, unique_genes=True)
        if reader.n_obs == 0 or reader.n_vars == 0:
            raise DataError(path, f"no cells or no genes ({reader.n_obs} x {reader.n_vars})")
        n = cfg.tokenization.samplesize
        keep = None
        if n and n < reader.n_obs:
            keep = np.zeros(reader.n_obs, dtype=bool)
            keep[np.random.default_rng(cfg.seed).choice(reader.n_obs, size=n, replace=False)] = True
            log.info("fitting the gene medians on a random subsample of %d of %d cells (samplesize)", n, reader.n_obs)

        def chunks() -> Iterator[np.ndarray]:
            for lo, x in reader.iter_chunks(_CHUNK_CELLS):
                yield x if keep is None else x[keep[lo : lo + len(x)]]

        try:
            core = GeneRankTokenizer.fit(chunks(), reader.var_names, max_len=blocksize)
        except ValueError as exc:
            raise DataError(path, str(exc)) from None
        n_never = int(np.sum(core.n_nonzero_g == 0)) if core.n_nonzero_g is not None else 0
        log.info("gene-rank tokenizer: %d genes (%s%s), non-zero medians of NormalizeTotal(%g) over %d cells%s", core.n_genes, ", ".join(core.var_names[:8]), ", ..." if core.n_genes > 8 else "", core.target_count, core.n_cells_fit, f"; {n_never} gene(s) never expressed" if n_never else "")
        return GenerankTokenizer(core, has_medians=True)
    # plain text: rows of gene tokens already in rank order
    from biolm.core.hookspecs import ReadStats, delimited_options, read_records

    if cfg.tokenization.samplesize:
        log.info("samplesize is ignored for rank-ordered text: the vocabulary is every distinct gene token")
    stats = ReadStats()
    genes: set[str] = set()
    n_rows = 0
    for rec in read_records(delimited_options(source, label_kind="none"), stats):
        genes.update(rec.tokens)
        n_rows += 1
    if stats.n_skipped:
        log.warning("%s: skipped %d malformed row(s); first: %s", path, stats.n_skipped, "; ".join(stats.reasons))
    if not genes:
        raise DataError(path, "no gene tokens found")
    vocab = sorted(genes)
    core = GeneRankTokenizer(vocab, np.ones(len(vocab), dtype=np.float32), max_len=blocksize, n_cells_fit=n_rows)
    log.info("gene-rank tokenizer from rank-ordered text: %d distinct genes over %d cells (no medians)", len(vocab), n_rows)
    return GenerankTokenizer(core, has_medians=False)


def _load(path: Any) -> GenerankTokenizer:
    return GenerankTokenizer.load(path)


def _encode(tok: GenerankTokenizer, source: Any, encoding: Any, log: Any, label_kind: str | None):
    from biolm.core.hookspecs import obs_strings, section_of

    blocksize = int(encoding.blocksize)
    keep = blocksize + 1
    path = str(source.filepath)
    section = section_of(source)
    if _is_h5ad(source):
        if not tok.has_medians:
            raise ConfigError("tokenization.encoding", f"the tokenizer was learned on rank-ordered text (no per-gene medians) and cannot rank the counts of {path}; learn it on an .h5ad file (tokenize)")
        labelcolumn = getattr(source, "labelcolumn", None) if label_kind != "none" else None
        splitcolumn = getattr(source, "splitcolumn", None)
        if label_kind in ("float", "str") and not labelcolumn:
            raise ConfigError(f"{section}.labelcolumn", f"required for .h5ad input: the obs column holding the labels of {path}")
        options = {"format": "h5ad", "blocksize": blocksize, "stored_genes": keep, "labelcolumn": labelcolumn, "splitcolumn": splitcolumn, "label_kind": label_kind, "tokenizer": tok.sha()}
        reader = _reader(path)  # fail early (before the store build starts) on a bad file
        try:
            order = tok.core.gene_order(reader.var_names)
        except ValueError as exc:
            raise DataError(path, str(exc)) from None
        if order.n_unknown == reader.n_vars:
            raise DataError(path, f"none of its {reader.n_vars} genes is in the tokenizer's vocabulary (e.g. {', '.join(order.unknown_examples[:5])}); was the tokenizer learned on other data?")
        labels = obs_strings(reader, labelcolumn, label_kind, f"{section}.labelcolumn") if labelcolumn else None
        splits = obs_strings(reader, splitcolumn, None, f"{section}.splitcolumn") if splitcolumn else None
        return _h5ad_records(tok, reader, order, labels, splits, keep, log), options
    from biolm.core.hookspecs import delimited_options

    opts = delimited_options(source, label_kind=label_kind)
    options = dict(opts.parsing_options(), format="ranked-text", blocksize=blocksize, stored_genes=keep, tokenizer=tok.sha())
    return _text_records(tok, opts, keep, log, path), options


def _h5ad_records(tok: GenerankTokenizer, reader: Any, order: Any, labels: list | None, splits: list | None, keep: int, log: Any) -> Iterator[Any]:
    import numpy as np

    from biolm.core.hookspecs import EncodedRecord

    if not order.identity:
        log.warning("%s: %s", reader.path, order.describe())
    obs = reader.obs_names
    empty = 0
    core = tok.core
    for lo, x in reader.iter_chunks(_CHUNK_CELLS):
        try:
            z = core.normalize(x, None if order.identity else order)
        except ValueError as exc:
            raise DataError(reader.path, f"cells {lo + 1}..{lo + len(x)}: {exc}") from None
        nnz = (z > 0).sum(dim=1).numpy()
        ids, _ = core.rank(z, max_len=keep)
        ids = ids.numpy()
        for r in range(len(x)):
            i = lo + r
            n = int(min(nnz[r], keep))
            empty += nnz[r] == 0
            genes = (ids[r, :n] - 2).astype(np.int32)
            yield EncodedRecord(str(obs[i]), genes, np.zeros((n, 0), dtype=np.float32), labels[i] if labels else None, None, splits[i] if splits else None, 0, int(nnz[r]))
    if empty:
        log.warning("%s: %d cell(s) express no vocabulary gene (empty sentences)", reader.path, empty)


def _text_records(tok: GenerankTokenizer, opts: Any, keep: int, log: Any, path: str) -> Iterator[Any]:
    import numpy as np

    from biolm.core.hookspecs import EncodedRecord, ReadStats, read_records

    index = {g: i for i, g in enumerate(tok.vocab)}
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
        n = len(ids)
        arr = np.asarray(ids[:keep], dtype=np.int32)
        yield EncodedRecord(rec.id, arr, np.zeros((len(arr), 0), dtype=np.float32), rec.label, rec.weight, rec.split, 0, n)
    if stats.n_skipped:
        log.warning("%s: skipped %d malformed row(s); first: %s", path, stats.n_skipped, "; ".join(stats.reasons))
    if unknown:
        common = ", ".join(f"{g!r} x{c}" for g, c in unknown.most_common(10))
        log.warning("%s: %d gene token(s) (%d distinct) not in the vocabulary, ignored: %s", path, sum(unknown.values()), len(unknown), common)
    if repeated:
        log.warning("%s: %d repeated gene token(s) within a cell ignored (a gene keeps its first rank)", path, repeated)


def _make_input(tok: GenerankTokenizer, batch: dict, encoding: Any) -> dict:
    """Store ids (-1 padding, -2 masked) -> ``input_ids`` (gene + 2, MASK 1, PAD 0) of at most
    ``blocksize`` (= max_position_embeddings) tokens, and ``attention_mask``."""
    import torch

    ids = batch["ids"][:, : int(encoding.blocksize)]
    if ids.shape[1] == 0:  # a batch of empty cells: one PAD column keeps the encoder's shapes valid
        ids = torch.full((ids.shape[0], 1), -1, dtype=ids.dtype, device=ids.device)
    input_ids = torch.where(ids >= 0, ids + 2, torch.where(ids == -2, torch.ones_like(ids), torch.zeros_like(ids)))
    return {"input_ids": input_ids, "attention_mask": input_ids != 0}


# ============================================================================ model

_CLASSES: tuple | None = None


def _model_classes() -> tuple:
    """The torch modules, defined on first use (torch is not imported with the plugin)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    from .model import GeneformerClassifier, GeneformerMLM, load_hf_bert_weights

    class GeneformerPretrainModel(GeneformerMLM):
        """:class:`GeneformerMLM` (same state-dict keys) taking the input dict.

        ``forward(batch)``: with ``batch["labels"]`` the masked-LM loss (the head runs at scored
        positions only), else the logits ``(B, L, V)``."""

        def __init__(self, config: Any, mlm_probability: float) -> None:
            super().__init__(config)
            self.mlm_probability = float(mlm_probability)

        def forward(self, batch: dict):  # type: ignore[override]
            if "labels" in batch:
                return GeneformerMLM.forward(self, batch["input_ids"], batch["attention_mask"], batch["labels"], return_logits=False).loss
            return GeneformerMLM.forward(self, batch["input_ids"], batch["attention_mask"]).logits

    class GeneformerFinetuneModel(GeneformerClassifier):
        """:class:`GeneformerClassifier` (keys ``bert.*``, ``head.*``) taking the input dict;
        ``embed(batch)`` is the pooled cell embedding, ``load_pretrained(path)`` loads the encoder."""

        def __init__(self, config: Any, num_outputs: int, pooling: str, head_dropout: float | None, vocab: list[str]) -> None:
            super().__init__(config, num_outputs, pooling, head_dropout)
            self.vocab = list(vocab)
            self.pretrained_from: str | None = None
            self.pretrained_report: dict | None = None

        def embed(self, batch: dict):  # type: ignore[override]
            return GeneformerClassifier.embed(self, batch["input_ids"], batch["attention_mask"])

        def forward(self, batch: dict):  # type: ignore[override]
            return self.head(GeneformerClassifier.embed(self, batch["input_ids"], batch["attention_mask"]))

        def load_pretrained(self, path: str | os.PathLike) -> dict:
            """Encoder weights from a ``pre-train`` folder (``pytorch_model.bin``), a folder or file
            of Hugging Face / cellarium BERT weights; the head keeps its initialisation."""
            key = "settings.training.pretrainedweights"
            p = Path(path)
            if p.is_dir():
                weights = p / "pytorch_model.bin"
                if not weights.exists():
                    other = [q.name for q in p.iterdir() if q.suffix in (".bin", ".pt", ".ckpt", ".npz", ".safetensors")]
                    hint = f" (found {', '.join(other)}: pass the file itself; safetensors are not supported)" if other else ""
                    raise ConfigError(key, f"{p} holds no pytorch_model.bin{hint}")
                tj = p / "tokenizer.json"
                if tj.exists():
                    try:
                        with open(tj, encoding="utf-8") as fh:
                            theirs = json.load(fh).get("var_names")
                    except (OSError, ValueError):
                        theirs = None
                    if theirs is not None and list(theirs) != self.vocab:
                        raise ConfigError(key, f"{p} was pre-trained on another gene vocabulary ({len(theirs)} genes vs {len(self.vocab)} here); fine-tune with the pre-training's tokenizer (OUTPUTPATH/tokenizer.json)")
            elif p.is_file():
                weights = p
            else:
                raise ConfigError(key, f"{p} does not exist")
            try:
                report = load_hf_bert_weights(self, weights)
            except ValueError as exc:
                raise ConfigError(key, f"{weights}: {exc}") from None
            except Exception as exc:  # unreadable / not a torch file (torch's own text advises unsafe loading: not shown)
                raise DataError(str(weights), f"cannot read the weights: not a state dict of tensors, truncated, or damaged ({type(exc).__name__})") from None
            self.pretrained_from = str(weights)
            self.pretrained_report = report
            return report

    for c in (GeneformerPretrainModel, GeneformerFinetuneModel):
        c.__module__ = __name__
        globals()[c.__name__] = c
    _CLASSES = (GeneformerPretrainModel, GeneformerFinetuneModel)
    return _CLASSES


def _build(model_cfg: GeneformerSchema, info: Any):
    from .model import GeneformerConfig

    tok = info.tokenizer
    if not isinstance(tok, GenerankTokenizer):
        raise ConfigError("tokenization.encoding", f"geneformer needs the '{KIND}' tokenizer, got {type(tok).__name__}: set tokenization: encoding: {KIND} and re-run tokenize")
    if int(info.blocksize) != int(model_cfg.max_position_embeddings):
        raise ConfigError("settings.training.blocksize", f"{info.blocksize} differs from model.max_position_embeddings ({model_cfg.max_position_embeddings}); geneformer reads the top max_position_embeddings genes of a cell: set both to the same value")
    try:
        gcfg = GeneformerConfig(
            vocab_size=len(tok.vocab) + 2,
            hidden_size=model_cfg.hidden_size,
            num_hidden_layers=model_cfg.num_hidden_layers,
            num_attention_heads=model_cfg.num_attention_heads,
            intermediate_size=model_cfg.intermediate_size,
            hidden_act=model_cfg.hidden_act,
            hidden_dropout_prob=model_cfg.hidden_dropout_prob,
            attention_probs_dropout_prob=model_cfg.attention_probs_dropout_prob,
            max_position_embeddings=model_cfg.max_position_embeddings,
            initializer_range=model_cfg.initializer_range,
            layer_norm_eps=model_cfg.layer_norm_eps,
        )
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    pretrain_cls, finetune_cls = _model_classes()
    if info.task == "pre-train":
        return pretrain_cls(gcfg, info.extra.get("mlmprobability", 0.15))
    return finetune_cls(gcfg, max(1, int(info.n_outputs)), model_cfg.pooling, model_cfg.head_dropout, tok.vocab)


def _pretrain_loss(model: Any, batch: dict, generator: Any):
    """Masked-gene LM: BERT masking (``mlm_probability`` of the gene tokens; 80 % MASK, 10 %
    random gene, 10 % unchanged) and the mean cross-entropy at the selected positions.

    Returns ``(loss, n_scored)``."""
    from .model import mlm_mask

    net = getattr(model, "module", model)
    masked, labels = mlm_mask(batch["input_ids"], batch["attention_mask"], net.config.vocab_size, net.mlm_probability, generator=generator)
    loss = model({"input_ids": masked, "attention_mask": batch["attention_mask"], "labels": labels})
    return loss, (labels != -100).sum()


# ============================================================================ hooks


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="geneformer",
            description="Geneformer BERT (cellarium-ml) on rank-value encoded single-cell expression; masked-gene pre-training.",
            model_schema=GeneformerSchema,
            # no LR schedule in the engine: a constant 1e-4 (Geneformer's fine-tuning range; its
            # pre-training peaks at 1e-3 after warm-up), AdamW with weight decay 0.01 as cellarium
            training_defaults=dict(lr=1e-4, weightdecay=0.01, batchsize=16, blocksize=2048, optimizer="adamw", clipnorm=1.0),
            modes=("tokenize", "pre-train", "fine-tune", "predict", "interpret"),
            tokenizer=KIND,
            fixed_length=False,
            max_blocksize=1 << 16,  # genes read per cell: more than any transcriptome has
        )
    )


@hookimpl
def register_tokenizer(register):
    register(KIND, TokenizerSpec(fit=_fit, load=_load, encode=_encode, make_input=_make_input))


@hookimpl
def register_model(register):
    register("geneformer", ModelSpec(build=_build, pretrain_loss=_pretrain_loss, embed=_embed, load_pretrained=_load_pretrained, architecture=_architecture))


def _embed(model: Any, inp: dict):
    """The pooled cell embedding (B, hidden)."""
    return model.embed(inp)


def _load_pretrained(model: Any, path: Any):
    return model.load_pretrained(path)


def _architecture(model: Any) -> dict:
    """The BERT configuration (hidden size, layers, positions, vocabulary, ...)."""
    return model.config.to_dict()
