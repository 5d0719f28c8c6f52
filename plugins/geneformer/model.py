"""Geneformer as in cellarium-ml 0.0.15, in plain torch, with its rank-value tokenizer.

Geneformer (Theodoris et al., Nature 2023) turns a cell into a sentence of gene tokens: counts
are scaled to 10,000 per cell, each gene is divided by its non-zero median over a reference
corpus (so that ubiquitously high genes such as housekeeping genes rank lower than genes that
are unusually high *for them*), and the genes are sorted by that value. The sentence feeds a
BERT encoder trained by masked-gene prediction.

This module reproduces cellarium-ml's ``Geneformer`` (which wraps Hugging Face
``BertForMaskedLM``) without ``transformers``; parameter names are HF BERT's, so cellarium and
HF checkpoints load with :func:`load_hf_bert_weights`. Parity with cellarium-ml 0.0.15 is
checked in ``tests/test_geneformer_model.py`` against golden outputs of the real model.

Tokens: PAD = 0, MASK = 1, gene ``var_names[i]`` -> ``i + 2``.

Differences from cellarium, all deliberate:

- Ties between equal normalised values are broken by gene index (a stable sort), where
  cellarium's ``torch.argsort`` breaks them arbitrarily; the order is therefore reproducible
  across devices and runs. Tie-free inputs give identical tokens.
- Perturbations (``feature_deletion`` / ``feature_activation``) never modify the caller's array;
  cellarium writes the deletion into the tensor passed to ``predict``.
- MLM random replacement draws gene tokens from ``[2, vocab_size)``; cellarium draws from
  ``[0, n_genes)``, which can produce PAD/MASK and never the last two genes.
- A batch in which no position was selected for masking gets one masked position, so the MLM
  loss is never NaN (HF returns NaN for a batch with no scored position).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PAD_TOKEN_ID",
    "MASK_TOKEN_ID",
    "N_SPECIAL_TOKENS",
    "normalize_total",
    "NonzeroMedianAccumulator",
    "GeneOrder",
    "GeneRankTokenizer",
    "activate_tokens",
    "trim_padding",
    "mlm_mask",
    "GeneformerConfig",
    "EncoderOutput",
    "MLMOutput",
    "GeneformerEncoder",
    "GeneformerMLM",
    "GeneformerClassifier",
    "GeneformerPredictor",
    "mean_pool",
    "load_hf_bert_weights",
]

PAD_TOKEN_ID = 0
MASK_TOKEN_ID = 1
N_SPECIAL_TOKENS = 2
_IGNORE_INDEX = -100


# ============================================================================ normalisation
def normalize_total(counts: torch.Tensor, target_count: float = 10_000, eps: float = 1e-6) -> torch.Tensor:
    """cellarium's ``NormalizeTotal``: ``y = (target_count * x) / (sum_g x + eps)``.

    Parameters
    ----------
    counts
        ``(n, G)`` float32 counts.

    Returns
    -------
    torch.Tensor
        ``(n, G)`` float32. The float32 multiply comes before the division and ``eps`` is added
        to the float32 total, exactly as cellarium does, so results are bit-identical.
    """
    total = counts.sum(dim=-1)
    return target_count * counts / (total[:, None] + eps)


class NonzeroMedianAccumulator:
    """Exact per-gene median of the non-zero values, fitted over streamed chunks.

    cellarium estimates these medians with a t-digest, which is exact while a gene has at most
    ~100 values and approximate beyond. The exact median needs every non-zero value, so they are
    kept: **memory is 4 bytes per non-zero entry while streaming and up to 8 bytes per non-zero
    entry while finalising** (e.g. 100,000 cells with 2,000 expressed genes each: 0.8 GB, then
    1.6 GB briefly). For larger corpora fit on a random subsample of cells; the median of a few
    hundred values per gene is already a stable scale.

    Parameters
    ----------
    n_genes
        Number of columns ``G`` of every chunk.
    """

    def __init__(self, n_genes: int) -> None:
        self.n_genes = int(n_genes)
        self.n_cells = 0
        self._values: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        """Bytes held for the values seen so far."""
        return sum(v.nbytes + c.nbytes for v, c in zip(self._values, self._counts, strict=True))

    def update(self, y: np.ndarray) -> None:
        """Add a chunk of normalised values, ``(n, G)`` float32 (zeros are ignored)."""
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] != self.n_genes:
            raise ValueError(f"expected a chunk of shape (n, {self.n_genes}), got {y.shape}")
        # nonzero() on the transposed view walks gene by gene, so each chunk's values arrive
        # grouped by gene and finalize() can place them with one vectorised scatter
        yt = y.T
        g_idx, c_idx = np.nonzero(yt)
        self._values.append(yt[g_idx, c_idx].astype(np.float32, copy=False))
        self._counts.append(np.bincount(g_idx, minlength=self.n_genes).astype(np.int64))
        self.n_cells += y.shape[0]

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Compute the medians and release the stored values.

        Returns
        -------
        median_g : np.ndarray
            ``(G,)`` float64; the middle value for an odd count, the mean of the two middle values
            (in float64) for an even count, NaN for a gene with no non-zero value.
        n_nonzero_g : np.ndarray
            ``(G,)`` int64, the number of non-zero values per gene.
        """
        g = self.n_genes
        n_nonzero = np.sum(self._counts, axis=0, dtype=np.int64) if self._counts else np.zeros(g, np.int64)
        offsets = np.concatenate([[0], np.cumsum(n_nonzero)])
        buf = np.empty(int(offsets[-1]), dtype=np.float32)
        fill = offsets[:-1].copy()
        while self._values:
            vals, counts = self._values.pop(0), self._counts.pop(0)
            chunk_starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            dest = np.repeat(fill - chunk_starts, counts) + np.arange(len(vals), dtype=np.int64)
            buf[dest] = vals
            fill += counts
        median = np.full(g, np.nan, dtype=np.float64)
        for gene in np.flatnonzero(n_nonzero):
            seg = buf[offsets[gene] : offsets[gene + 1]]
            k = len(seg)
            if k % 2:
                median[gene] = float(np.partition(seg, k // 2)[k // 2])
            else:
                part = np.partition(seg, [k // 2 - 1, k // 2])
                median[gene] = (float(part[k // 2 - 1]) + float(part[k // 2])) / 2.0
        return median, n_nonzero


# ============================================================================ tokenizer
@dataclass
class GeneOrder:
    """How the genes (columns) of an input file map onto a tokenizer's vocabulary.

    Attributes
    ----------
    input_to_vocab : np.ndarray
        ``(G_in,)`` int64: vocabulary gene index of each input column, -1 for genes the
        vocabulary does not know (they count towards the cell's total but are never tokens).
    n_unknown : int
        Input genes not in the vocabulary.
    unknown_examples : list[str]
        Up to 10 of them, for messages.
    n_missing : int
        Vocabulary genes absent from the input (treated as not expressed).
    identity : bool
        The input columns are exactly the vocabulary, in order.
    """

    input_to_vocab: np.ndarray
    n_unknown: int
    unknown_examples: list[str]
    n_missing: int
    identity: bool

    def describe(self) -> str:
        """One line for logs and warnings."""
        if self.identity:
            return "input genes match the vocabulary"
        msg = f"{self.n_unknown} input gene(s) not in the vocabulary (ignored)"
        if self.unknown_examples:
            msg += f", e.g. {', '.join(self.unknown_examples)}"
        return msg + f"; {self.n_missing} vocabulary gene(s) absent from the input (treated as zero)"


def _as_str_array(names: Any) -> np.ndarray:
    arr = np.asarray(names)
    if arr.dtype.kind != "U":
        arr = arr.astype(str)
    return arr


class GeneRankTokenizer:
    """Rank-value encoding of expression profiles (Geneformer, cellarium-ml semantics).

    For each cell: ``y = NormalizeTotal(10,000)(counts)``, ``z_g = y_g / (scale_g + eps)`` with
    ``scale_g`` the gene's non-zero median on the fitting corpus, then the genes sorted by
    descending ``z`` become tokens ``gene index + 2``; zeros become PAD and are masked out.

    Ties between equal non-zero values are broken by gene index (stable sort by descending value,
    then ascending gene index), so encoding is deterministic.

    Parameters
    ----------
    var_names
        ``(G,)`` vocabulary gene names, in token order.
    scale_g
        ``(G,)`` per-gene scales (float32 non-zero medians; genes never seen expressed carry
        ``1 / eps``).
    target_count, eps
        NormalizeTotal target and the eps of NormalizeTotal and DivideByScale.
    max_len
        Default sequence length cap (the model's ``max_position_embeddings``).
    n_nonzero_g
        Optional ``(G,)`` fit statistics: cells in which each gene was expressed.
    n_cells_fit
        Optional number of cells the medians were fitted on.
    """

    pad_token_id = PAD_TOKEN_ID
    mask_token_id = MASK_TOKEN_ID
    FORMAT = "biolm-gene-rank-tokenizer"
    VERSION = 1

    def __init__(
        self,
        var_names: Sequence[str] | np.ndarray,
        scale_g: Sequence[float] | np.ndarray,
        target_count: float = 10_000,
        eps: float = 1e-6,
        max_len: int = 2048,
        n_nonzero_g: Sequence[int] | np.ndarray | None = None,
        n_cells_fit: int | None = None,
    ) -> None:
        self.var_names = _as_str_array(var_names)
        self.scale_g = np.asarray(scale_g, dtype=np.float32)
        if self.var_names.ndim != 1 or self.scale_g.shape != self.var_names.shape:
            raise ValueError(
                f"var_names {self.var_names.shape} and scale_g {self.scale_g.shape} must be 1-D and of equal length"
            )
        if not np.all(np.isfinite(self.scale_g)) or np.any(self.scale_g < 0):
            raise ValueError("scale_g must be finite and non-negative")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.target_count = float(target_count)
        self.eps = float(eps)
        self.max_len = int(max_len)
        self.n_nonzero_g = None if n_nonzero_g is None else np.asarray(n_nonzero_g, dtype=np.int64)
        self.n_cells_fit = None if n_cells_fit is None else int(n_cells_fit)
        self._index: dict[str, int] | None = None

    # ------------------------------------------------------------------ basics
    @property
    def n_genes(self) -> int:
        return int(self.var_names.shape[0])

    @property
    def vocab_size(self) -> int:
        """``n_genes + 2`` (PAD and MASK)."""
        return self.n_genes + N_SPECIAL_TOKENS

    def seq_len(self, max_len: int | None = None) -> int:
        """Length ``L = min(G, max_len)`` of every encoded sequence."""
        return min(self.n_genes, self.max_len if max_len is None else int(max_len))

    def _gene_index(self) -> dict[str, int]:
        if self._index is None:
            index: dict[str, int] = {}
            dups = []
            for i, name in enumerate(self.var_names.tolist()):
                if name in index:
                    dups.append(name)
                index.setdefault(name, i)
            if dups:
                raise ValueError(
                    f"the tokenizer vocabulary has duplicate gene names ({', '.join(sorted(set(dups))[:5])}); "
                    "genes cannot be matched by name — make var_names unique"
                )
            self._index = index
        return self._index

    def token_ids(self, genes: Iterable[str]) -> np.ndarray:
        """Token ids of gene names; unknown names raise ``KeyError`` naming them."""
        index = self._gene_index()
        genes = list(genes)
        unknown = [g for g in genes if g not in index]
        if unknown:
            raise KeyError(f"gene(s) not in the tokenizer vocabulary: {', '.join(map(str, unknown[:10]))}")
        return np.array([index[g] + N_SPECIAL_TOKENS for g in genes], dtype=np.int64)

    def decode(self, input_ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """Gene names of token ids (``"<pad>"``, ``"<mask>"`` for the special tokens), same shape."""
        ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
        names = np.concatenate([np.array(["<pad>", "<mask>"]), self.var_names]).astype(object)
        return names[ids].astype(str)

    def gene_order(self, var_names: Sequence[str] | np.ndarray) -> GeneOrder:
        """Match an input file's genes to the vocabulary by name.

        Raises
        ------
        ValueError
            If two input columns carry the same vocabulary gene (which one to use is ambiguous).
        """
        names = _as_str_array(var_names)
        if names.shape == self.var_names.shape and np.array_equal(names, self.var_names):
            return GeneOrder(np.arange(self.n_genes, dtype=np.int64), 0, [], 0, True)
        index = self._gene_index()
        mapped = np.array([index.get(n, -1) for n in names.tolist()], dtype=np.int64)
        known = mapped[mapped >= 0]
        uniq, counts = np.unique(known, return_counts=True)
        if np.any(counts > 1):
            dup = self.var_names[uniq[counts > 1]][:5]
            raise ValueError(f"input genes repeat vocabulary gene(s) {', '.join(dup)}; make the input var_names unique")
        unknown = names[mapped < 0]
        return GeneOrder(
            input_to_vocab=mapped,
            n_unknown=int(unknown.size),
            unknown_examples=unknown[:10].tolist(),
            n_missing=int(self.n_genes - uniq.size),
            identity=False,
        )

    # ------------------------------------------------------------------ fitting
    @staticmethod
    def _check_counts(x: torch.Tensor) -> None:
        if x.numel() and (not bool(torch.isfinite(x).all()) or bool((x < 0).any())):
            raise ValueError("expression counts must be finite and non-negative")

    @classmethod
    def fit(
        cls,
        data: np.ndarray | Iterable[np.ndarray] | Iterable[tuple[int, np.ndarray]],
        var_names: Sequence[str] | np.ndarray,
        *,
        target_count: float = 10_000,
        eps: float = 1e-6,
        max_len: int = 2048,
    ) -> GeneRankTokenizer:
        """Fit the per-gene non-zero medians of ``NormalizeTotal(target_count)`` data.

        Parameters
        ----------
        data
            ``(n, G)`` counts, or an iterable of such chunks, or of ``(start, chunk)`` pairs as
            yielded by :meth:`biolm.core.h5ad.H5adReader.iter_chunks`. Memory: see
            :class:`NonzeroMedianAccumulator`.
        var_names
            ``(G,)`` gene names; they become the vocabulary.

        Returns
        -------
        GeneRankTokenizer
            With ``scale_g = float32(median_g)``; genes never expressed get ``1 / eps``.
        """
        names = _as_str_array(var_names)
        acc = NonzeroMedianAccumulator(len(names))
        chunks: Iterable[Any] = [data] if isinstance(data, (np.ndarray, torch.Tensor)) else data
        for item in chunks:
            chunk = item[1] if isinstance(item, tuple) else item
            x = torch.as_tensor(np.asarray(chunk, dtype=np.float32))
            if x.ndim != 2 or x.shape[1] != len(names):
                raise ValueError(f"expected count chunks of shape (n, {len(names)}), got {tuple(x.shape)}")
            cls._check_counts(x)
            acc.update(normalize_total(x, target_count, eps).numpy())
        median, n_nonzero = acc.finalize()
        scale = np.where(np.isnan(median), 1.0 / eps, median).astype(np.float32)
        return cls(names, scale, target_count, eps, max_len, n_nonzero_g=n_nonzero, n_cells_fit=acc.n_cells)

    # ------------------------------------------------------------------ encoding
    def normalize(
        self, counts: np.ndarray | torch.Tensor, gene_order: GeneOrder | Sequence[str] | np.ndarray | None = None
    ) -> torch.Tensor:
        """Counts -> the values that are ranked, ``z = NormalizeTotal(x) / (scale + eps)``.

        Parameters
        ----------
        counts
            ``(n, G_in)`` counts.
        gene_order
            ``None`` when the columns are the vocabulary; otherwise the input's gene names or a
            :class:`GeneOrder` from :meth:`gene_order`. The cell total is taken over **all** input
            columns, known or not (it is the cell's library size), then the columns are moved to
            vocabulary order; vocabulary genes absent from the input are 0.

        Returns
        -------
        torch.Tensor
            ``(n, G)`` float32 in vocabulary order, on the device of ``counts``.
        """
        x = torch.as_tensor(counts)
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if x.ndim != 2:
            raise ValueError(f"expected counts of shape (n, genes), got {tuple(x.shape)}")
        self._check_counts(x)
        y = normalize_total(x, self.target_count, self.eps)
        scale = torch.as_tensor(self.scale_g, device=x.device)
        order = self._resolve_order(gene_order, x.shape[1])
        if order is None or order.identity:
            return y / (scale + self.eps)
        known = torch.as_tensor(np.flatnonzero(order.input_to_vocab >= 0), device=x.device)
        vocab_idx = torch.as_tensor(order.input_to_vocab[order.input_to_vocab >= 0], device=x.device)
        z = torch.zeros((x.shape[0], self.n_genes), dtype=torch.float32, device=x.device)
        z[:, vocab_idx] = y[:, known] / (scale[vocab_idx] + self.eps)
        return z

    def _resolve_order(self, gene_order: Any, n_cols: int) -> GeneOrder | None:
        if gene_order is None:
            if n_cols != self.n_genes:
                raise ValueError(
                    f"counts have {n_cols} genes but the vocabulary has {self.n_genes}; pass gene_order "
                    "(the input's gene names) to match them by name"
                )
            return None
        order = gene_order if isinstance(gene_order, GeneOrder) else self.gene_order(gene_order)
        if order.input_to_vocab.shape[0] != n_cols:
            raise ValueError(f"gene_order describes {order.input_to_vocab.shape[0]} genes, counts have {n_cols}")
        return order

    def rank(self, z: torch.Tensor, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank-value tokens of normalised values.

        Parameters
        ----------
        z
            ``(n, G)`` non-negative values in vocabulary order.
        max_len
            Length cap (default: the tokenizer's ``max_len``).

        Returns
        -------
        input_ids : torch.Tensor
            ``(n, L)`` int64 with ``L = min(G, max_len)``: genes by descending value (ties by
            gene index), PAD where the value is 0. PADs always form a suffix.
        attention_mask : torch.Tensor
            ``(n, L)`` bool, True at gene tokens.
        """
        length = self.seq_len(max_len)
        order = torch.sort(z, dim=1, descending=True, stable=True).indices[:, :length]
        mask = torch.gather(z, 1, order) != 0
        ids = torch.where(mask, order + N_SPECIAL_TOKENS, torch.zeros_like(order))
        return ids, mask

    def encode(
        self,
        counts: np.ndarray | torch.Tensor,
        max_len: int | None = None,
        gene_order: GeneOrder | Sequence[str] | np.ndarray | None = None,
        feature_deletion: Sequence[str] | None = None,
        feature_activation: Sequence[str] | None = None,
        feature_map: Mapping[str, int] | None = None,
    ) -> tuple[Any, Any]:
        """Counts -> ``(input_ids, attention_mask)``, optionally with in-silico perturbations.

        Parameters
        ----------
        counts
            ``(n, G_in)`` raw counts (numpy or torch).
        max_len
            Length cap (default: the tokenizer's ``max_len``); ``L = min(G, max_len)``.
        gene_order
            See :meth:`normalize`.
        feature_deletion
            Genes set to 0 before ranking: they leave the sentence, later genes move up one
            position and the next-ranked gene enters at the end (cellarium semantics). Applies
            to every cell.
        feature_activation
            Genes moved to the top ranks before ranking, the first listed at rank 1 (cellarium
            sets them above the batch maximum). An unexpressed gene enters the sentence.
        feature_map
            ``{gene: token_id}`` applied after ranking (e.g. ``MASK_TOKEN_ID`` to mask a gene in
            place; the attention mask is unchanged, as in cellarium).

        Returns
        -------
        input_ids, attention_mask
            ``(n, L)`` int64 and bool — numpy arrays for numpy input, torch tensors (on the input's
            device) for torch input.

        Raises
        ------
        ValueError
            For negative / non-finite counts, or a gene-count mismatch without ``gene_order``.
        KeyError
            For perturbation genes that are not in the vocabulary.
        """
        is_numpy = not isinstance(counts, torch.Tensor)
        z = self.normalize(counts, gene_order)
        if feature_deletion:
            z[:, torch.as_tensor(self.token_ids(feature_deletion) - N_SPECIAL_TOKENS, device=z.device)] = 0
        if feature_activation:
            top = z.max() if z.numel() else torch.zeros((), device=z.device)
            genes = self.token_ids(feature_activation) - N_SPECIAL_TOKENS
            # cellarium: value max + i + 1 for the i-th gene of the reversed list
            for i, g in enumerate(genes[::-1].tolist()):
                z[:, g] = top + i + 1
        ids, mask = self.rank(z, max_len)
        if feature_map:
            for gene, target in feature_map.items():
                tok = int(self.token_ids([gene])[0])
                ids = torch.where(ids == tok, torch.full_like(ids, int(target)), ids)
        if is_numpy:
            return ids.cpu().numpy(), mask.cpu().numpy()
        return ids, mask

    def encode_ranked(
        self, rows: Iterable[Sequence[str]], max_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Encode cells given as gene names already in rank order (the plain-text form).

        Parameters
        ----------
        rows
            One sequence of gene names per cell, highest rank first.

        Returns
        -------
        input_ids : np.ndarray
            ``(n, L)`` int64, ``L = max_len`` (default: the tokenizer's), right-padded with PAD.
        attention_mask : np.ndarray
            ``(n, L)`` bool.
        n_unknown : int
            Gene names not in the vocabulary; they are skipped (the following genes move up).
        """
        length = self.max_len if max_len is None else int(max_len)
        index = self._gene_index()
        rows = list(rows)
        ids = np.zeros((len(rows), length), dtype=np.int64)
        n_unknown = 0
        for r, genes in enumerate(rows):
            toks = [index[g] + N_SPECIAL_TOKENS for g in genes if g in index]
            n_unknown += len(genes) - len(toks)
            toks = toks[:length]
            ids[r, : len(toks)] = toks
        return ids, ids != PAD_TOKEN_ID, n_unknown

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "version": self.VERSION,
            "pad_token_id": PAD_TOKEN_ID,
            "mask_token_id": MASK_TOKEN_ID,
            "gene_token_offset": N_SPECIAL_TOKENS,
            "tie_break": "descending value, then ascending gene index (stable sort)",
            "target_count": self.target_count,
            "eps": self.eps,
            "max_len": self.max_len,
            "n_cells_fit": self.n_cells_fit,
            "var_names": self.var_names.tolist(),
            # float32 -> Python float is exact, and so is the way back
            "scale_g": [float(v) for v in self.scale_g],
            "n_nonzero_g": None if self.n_nonzero_g is None else self.n_nonzero_g.tolist(),
        }

    def to_json(self) -> str:
        """JSON text that :meth:`from_json` restores bit for bit."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneRankTokenizer:
        if d.get("format") != cls.FORMAT:
            raise ValueError(f"not a gene-rank tokenizer (format {d.get('format')!r}, expected {cls.FORMAT!r})")
        if int(d.get("version", 0)) > cls.VERSION:
            raise ValueError(
                f"tokenizer format version {d['version']} is newer than this biolm supports ({cls.VERSION})"
            )
        return cls(
            d["var_names"],
            d["scale_g"],
            target_count=d["target_count"],
            eps=d["eps"],
            max_len=d["max_len"],
            n_nonzero_g=d.get("n_nonzero_g"),
            n_cells_fit=d.get("n_cells_fit"),
        )

    @classmethod
    def from_json(cls, text: str) -> GeneRankTokenizer:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        from biolm.core.hookspecs import write_text

        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> GeneRankTokenizer:
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read())

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: the tokenizer hash for dataset-store cache keys."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"GeneRankTokenizer(n_genes={self.n_genes}, max_len={self.max_len}, n_cells_fit={self.n_cells_fit})"


# ============================================================================ token-level perturbations
def activate_tokens(input_ids: torch.Tensor, tokens: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Move one gene per sentence to rank 1 (``feature_activation`` on token ids).

    Parameters
    ----------
    input_ids
        ``(B, K)`` rank-ordered tokens (PAD suffix).
    tokens
        ``(B,)`` gene token per sentence (>= 2). A token absent from the sentence enters at rank 1
        and the last gene drops out when the sentence is full.
    max_len
        Output length (default ``K``).

    Returns
    -------
    torch.Tensor
        ``(B, max_len)`` int64.
    """
    length = input_ids.shape[1] if max_len is None else int(max_len)
    tokens = tokens.to(input_ids.device).long().view(-1, 1)
    drop = input_ids == tokens
    # a stable sort on the drop flag compacts the kept tokens without reordering them
    order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices
    kept = torch.gather(input_ids, 1, order)
    kept = torch.where(torch.gather(drop, 1, order), torch.zeros_like(kept), kept)
    out = torch.cat([tokens, kept], dim=1)[:, :length]
    if out.shape[1] < length:
        out = torch.cat([out, out.new_zeros(out.shape[0], length - out.shape[1])], dim=1)
    return out


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are PAD in every sentence of the batch.

    Exact for everything computed at non-PAD positions (PAD keys are masked out and positions keep
    their indices), so pooled outputs and predictions are unchanged while short cells run faster.

    Returns ``(B, L')`` views with ``L'`` the longest sentence in the batch (at least 1).
    """
    length = max(int(attention_mask.sum(dim=1).max()), 1) if attention_mask.numel() else 1
    return input_ids[:, :length], attention_mask[:, :length]


def mlm_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vocab_size: int,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    ensure_one: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking for masked-gene pre-training.

    Each non-PAD position is selected with probability ``mlm_probability``; a selected position
    becomes MASK with probability 0.8, a random gene token (uniform on ``[2, vocab_size)``, never
    PAD or MASK) with probability 0.1, and stays unchanged otherwise.

    Parameters
    ----------
    input_ids, attention_mask
        ``(B, L)`` int64 tokens and bool mask.
    vocab_size
        ``n_genes + 2``.
    generator
        Optional ``torch.Generator`` on ``input_ids.device`` for reproducible masks.
    ensure_one
        If no position of the batch was selected, select its valid position with the smallest
        random draw, so the loss is defined.

    Returns
    -------
    masked_ids : torch.Tensor
        ``(B, L)`` int64 model input.
    labels : torch.Tensor
        ``(B, L)`` int64: the original token at selected positions, -100 elsewhere.
    """
    dev = input_ids.device
    u_sel = torch.rand(input_ids.shape, generator=generator, device=dev)
    u_kind = torch.rand(input_ids.shape, generator=generator, device=dev)
    random_tokens = torch.randint(
        N_SPECIAL_TOKENS, vocab_size, input_ids.shape, generator=generator, device=dev, dtype=input_ids.dtype
    )
    valid = attention_mask.bool()
    selected = (u_sel < mlm_probability) & valid
    if ensure_one:
        # without a host sync: flag the valid position with the smallest draw and keep it only
        # when nothing else was selected (and only if it is valid: a batch of empty cells stays empty)
        flat = u_sel.masked_fill(~valid, 2.0).reshape(-1).argmin()
        fallback = torch.zeros(selected.numel(), dtype=torch.bool, device=dev)
        fallback[flat] = True
        selected = selected | (fallback.view_as(selected) & valid & ~selected.any())
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, _IGNORE_INDEX))
    to_mask = selected & (u_kind < 0.8)
    to_random = selected & (u_kind >= 0.8) & (u_kind < 0.9)
    masked = torch.where(to_mask, torch.full_like(input_ids, MASK_TOKEN_ID), input_ids)
    masked = torch.where(to_random, random_tokens, masked)
    return masked, labels


# ============================================================================ model
_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class GeneformerConfig:
    """BERT hyperparameters with cellarium-ml's Geneformer defaults.

    ``vocab_size`` is ``n_genes + 2``. Only absolute position embeddings are implemented
    (cellarium's default).
    """

    vocab_size: int
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.02
    attention_probs_dropout_prob: float = 0.02
    max_position_embeddings: int = 2048
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    pad_token_id: int = PAD_TOKEN_ID

    def __post_init__(self) -> None:
        if self.vocab_size <= N_SPECIAL_TOKENS:
            raise ValueError(f"vocab_size must exceed {N_SPECIAL_TOKENS} (PAD, MASK), got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"only position_embedding_type='absolute' is implemented, got {self.position_embedding_type!r}"
            )
        for name in ("num_hidden_layers", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneformerConfig:
        """Build from a dict, ignoring keys that are not fields (e.g. a full HF ``config.json``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EncoderOutput:
    """Encoder results.

    Attributes
    ----------
    last_hidden_state : torch.Tensor
        ``(B, L, H)``.
    hidden_states : tuple[torch.Tensor, ...] | None
        ``num_hidden_layers + 1`` tensors ``(B, L, H)``: the embedding output, then each layer's.
    attentions : tuple[torch.Tensor, ...] | None
        ``num_hidden_layers`` tensors ``(B, heads, L, L)`` of attention probabilities.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MLMOutput(EncoderOutput):
    """:class:`EncoderOutput` plus ``logits`` ``(B, L, V)`` (None when not requested) and ``loss``."""

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class _Embeddings(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        # Geneformer has a single segment: token type 0 everywhere, positions 0..L-1
        e = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings.weight[0]
            + self.position_embeddings.weight[:length]
        )
        return self.dropout(self.LayerNorm(e))


class _SelfAttention(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.head_dim = c.head_dim
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout_p = c.attention_probs_dropout_prob

    def forward(
        self, h: torch.Tensor, key_mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, length, hidden = h.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(h)), heads(self.key(h)), heads(self.value(h))
        p = self.dropout_p if self.training else 0.0
        scale = self.head_dim**-0.5
        if need_weights:
            # the explicit path exists only to expose the probabilities (HF's "eager")
            s = (q @ k.transpose(-1, -2)) * scale
            s = s.masked_fill(~key_mask, torch.finfo(s.dtype).min)
            probs = torch.softmax(s, dim=-1)
            ctx = F.dropout(probs, p, self.training) @ v
        else:
            probs = None
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p, scale=scale)
        return ctx.transpose(1, 2).reshape(b, length, hidden), probs


class _DenseLayerNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: HF's BertSelfOutput / BertOutput."""

    def __init__(self, n_in: int, c: GeneformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseLayerNorm(c.hidden_size, c)


class _Intermediate(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _ACTIVATIONS[c.hidden_act]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(h))


class _Layer(nn.Module):
    """Post-LN transformer layer."""

    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseLayerNorm(c.intermediate_size, c)

    def forward(
        self, h: torch.Tensor, key_mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attention.self(h, key_mask, need_weights)
        h = self.attention.output(a, h)
        return self.output(self.intermediate(h), h), probs


class _LayerStack(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


def _init_bert_weights(module: nn.Module, std: float) -> None:
    """HF BERT initialisation: N(0, std) weights, zero biases, zero PAD embedding, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GeneformerEncoder(nn.Module):
    """BERT encoder (HF ``BertModel`` without pooler); parameter names as in HF.

    Parameters
    ----------
    config
        :class:`GeneformerConfig`.
    """

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _LayerStack(config)
        _init_bert_weights(self, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Encode token sentences.

        Parameters
        ----------
        input_ids
            ``(B, L)`` int64, ``L <= max_position_embeddings``.
        attention_mask
            ``(B, L)`` bool (or 0/1), True at real tokens; default ``input_ids != PAD``. It masks
            keys only: PAD query rows still get (unused) outputs, as in HF.
        output_hidden_states, output_attentions
            Also return every layer's hidden states / attention probabilities (the latter uses
            an explicit softmax instead of fused attention, so it is slower).

        Returns
        -------
        EncoderOutput
            ``last_hidden_state`` ``(B, L, H)`` and optionally the per-layer tensors.
        """
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        mask = (input_ids != self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        # a cell without any expressed gene would leave every key masked and softmax would give
        # NaN; let such rows attend everywhere (their outputs are meaningless either way)
        mask = mask | ~mask.any(dim=1, keepdim=True)
        key_mask = mask[:, None, None, :]
        h = self.embeddings(input_ids)
        all_h = [h] if output_hidden_states else None
        all_a = [] if output_attentions else None
        for layer in self.encoder.layer:
            h, probs = layer(h, key_mask, output_attentions)
            if all_h is not None:
                all_h.append(h)
            if all_a is not None:
                all_a.append(probs)
        return EncoderOutput(
            last_hidden_state=h,
            hidden_states=tuple(all_h) if all_h is not None else None,
            attentions=tuple(all_a) if all_a is not None else None,
        )


class _PredictionHeadTransform(nn.Module):
    def __init__(self, c: GeneformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.act = _ACTIVATIONS[c.hidden_act]
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(h)))


class _LMPredictionHead(nn.Module):
    def __init__(self, c: GeneformerConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = _PredictionHeadTransform(c)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        # tied as in HF: both names appear in state_dict and hold the same tensors
        self.decoder.weight = word_embeddings.weight
        self.decoder.bias = self.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(h))


class _MLMHead(nn.Module):
    def __init__(self, c: GeneformerConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = _LMPredictionHead(c, word_embeddings)


class GeneformerMLM(nn.Module):
    """Encoder + masked-gene head (HF ``BertForMaskedLM``); what cellarium's Geneformer trains.

    State-dict keys are HF's: ``bert.embeddings.*``, ``bert.encoder.layer.{i}.*``,
    ``cls.predictions.*`` (the decoder is tied to the word embeddings).
    """

    def __init__(self, config: GeneformerConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = GeneformerEncoder(config)
        self.cls = _MLMHead(config, self.bert.embeddings.word_embeddings)
        _init_bert_weights(self.cls, config.initializer_range)
        with torch.no_grad():
            self.cls.predictions.bias.zero_()
            # the head init above re-drew the tied matrix; restore the PAD row's zero
            self.bert.embeddings.word_embeddings.weight[config.pad_token_id].zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        return_logits: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MLMOutput:
        """Run the encoder and the MLM head.

        Parameters
        ----------
        input_ids, attention_mask
            ``(B, L)``, see :meth:`GeneformerEncoder.forward`.
        labels
            ``(B, L)`` int64 with -100 at unscored positions (from :func:`mlm_mask`). The loss is
            the mean cross-entropy over scored positions (HF's loss).
        return_logits
            With ``False`` (and labels), the head runs only at scored positions: the ``(B, L, V)``
            logits are never built, which saves most of the memory of pre-training with a
            large gene vocabulary. The loss is the same.

        Returns
        -------
        MLMOutput
            ``logits`` ``(B, L, V)`` or None, ``loss`` (scalar) or None, encoder outputs.
        """
        enc = self.bert(input_ids, attention_mask, output_hidden_states, output_attentions)
        head = self.cls.predictions
        logits = loss = None
        if return_logits or labels is None:
            logits = head(enc.last_hidden_state)
        if labels is not None:
            scored = labels != _IGNORE_INDEX
            target = labels[scored]
            sel_logits = logits[scored] if logits is not None else head(enc.last_hidden_state[scored])
            if target.numel():
                loss = F.cross_entropy(sel_logits.float(), target)
            else:
                # keep the graph connected so an empty batch is a zero step, not NaN
                loss = sel_logits.sum() * 0.0
        return MLMOutput(
            last_hidden_state=enc.last_hidden_state,
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
            logits=logits,
            loss=loss,
        )


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, L, H)`` over positions where ``attention_mask`` ``(B, L)`` is True.

    Returns ``(B, H)`` float32; a sentence without tokens pools to zeros.
    """
    # float32 accumulation: under bf16 autocast a count above 256 is no longer exact in bf16
    m = attention_mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class GeneformerClassifier(nn.Module):
    """Encoder + pooled head for fine-tuning (classification or regression).

    The encoder's keys are ``bert.*`` exactly as in :class:`GeneformerMLM`, so a pre-trained
    checkpoint loads with :meth:`load_encoder_weights`. cellarium has no fine-tuning head; this
    one follows HF's ``BertForSequenceClassification`` (dropout, then a linear layer) but pools
    by the mean over gene tokens, since BERT's [CLS] token does not exist in Geneformer.

    Parameters
    ----------
    config
        Encoder configuration.
    num_outputs
        Number of outputs (classes, or regression targets).
    pooling
        ``"mean"`` (over non-PAD tokens) or ``"first"`` (the top-ranked gene).
    head_dropout
        Dropout before the linear layer (default: ``config.hidden_dropout_prob``).
    """

    def __init__(
        self, config: GeneformerConfig, num_outputs: int, pooling: str = "mean", head_dropout: float | None = None
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "first"):
            raise ValueError(f"pooling must be 'mean' or 'first', got {pooling!r}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.config = config
        self.pooling = pooling
        self.bert = GeneformerEncoder(config)
        p = config.hidden_dropout_prob if head_dropout is None else head_dropout
        self.head = nn.Sequential(nn.Dropout(p), nn.Linear(config.hidden_size, num_outputs))
        _init_bert_weights(self.head, config.initializer_range)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled cell embedding, ``(B, H)``."""
        mask = (input_ids != self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        h = self.bert(input_ids, mask).last_hidden_state
        return h[:, 0] if self.pooling == "first" else mean_pool(h, mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L)`` tokens -> ``(B, num_outputs)`` outputs (logits or regression values)."""
        return self.head(self.embed(input_ids, attention_mask))

    def load_encoder_weights(self, weights: Mapping[str, Any] | str | os.PathLike) -> dict[str, list[str]]:
        """Load the encoder from an MLM / cellarium / HF checkpoint; the head keeps its init."""
        return load_hf_bert_weights(self, weights)


GeneformerPredictor = GeneformerClassifier


# ============================================================================ checkpoints
_WORD = "embeddings.word_embeddings.weight"
_HEAD_PROBE = "cls.predictions.transform.dense.weight"
_IGNORED_SUFFIXES = ("position_ids", "token_type_ids", "feature_ids")


def _load_weight_file(path: str | os.PathLike) -> dict[str, Any]:
    path = str(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # lightning / cellarium checkpoint
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def load_hf_bert_weights(
    model: GeneformerEncoder | GeneformerMLM | GeneformerClassifier,
    weights: Mapping[str, Any] | str | os.PathLike,
    strict: bool = True,
) -> dict[str, list[str]]:
    """Copy HF-BERT-named weights into one of this module's models.

    Accepts the key layouts met in practice: HF ``BertForMaskedLM`` (``bert.*``, ``cls.*``),
    HF ``BertModel`` (``embeddings.*``, ``encoder.*``), cellarium's ``Geneformer`` module
    (``bert.bert.*``, ``bert.cls.*``) and its lightning checkpoints (``model.bert.bert.*`` under
    ``state_dict``), and this module's own state dicts. Buffers (``position_ids``, ...) and HF's
    unused pooler are skipped; a missing tied key (decoder weight/bias) is filled from its twin.

    Parameters
    ----------
    model
        Target model.
    weights
        ``{name: array or tensor}``, or a path to a ``.npz`` or a torch state-dict file.
    strict
        Raise on target parameters that the weights do not provide (except a classifier's
        ``head.*``) and on source weights that have no target.

    Returns
    -------
    dict
        ``{"loaded": [...], "skipped": [...], "missing": [...]}`` (target names).

    Raises
    ------
    ValueError
        On shape mismatches (e.g. a different gene vocabulary), or in strict mode on missing or
        unexpected keys; the message lists them.
    """
    src = _load_weight_file(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)
    word_keys = [k for k in src if k.endswith(_WORD)]
    if not word_keys:
        raise ValueError(f"no '*{_WORD}' in the weights; not a BERT checkpoint")
    enc_prefix = min(word_keys, key=len)[: -len(_WORD)]
    head_keys = [k for k in src if k.endswith(_HEAD_PROBE)]
    head_prefix = min(head_keys, key=len)[: -len(_HEAD_PROBE)] if head_keys else None

    if isinstance(model, GeneformerEncoder):
        target_enc, has_head = "", False
    else:
        target_enc, has_head = "bert.", isinstance(model, GeneformerMLM)

    mapped: dict[str, Any] = {}
    skipped: list[str] = []
    for key, value in src.items():
        if key.endswith(_IGNORED_SUFFIXES) or ".pooler." in f".{key}":
            skipped.append(key)
        elif key.startswith(enc_prefix + "embeddings.") or key.startswith(enc_prefix + "encoder."):
            mapped[target_enc + key[len(enc_prefix) :]] = value
        elif head_prefix is not None and key.startswith(head_prefix + "cls."):
            if has_head:
                mapped[key[len(head_prefix) :]] = value
            else:
                skipped.append(key)
        else:
            mapped[key] = value  # reported as unexpected below

    if has_head:
        tied = {
            "cls.predictions.decoder.weight": "bert." + _WORD,
            "cls.predictions.decoder.bias": "cls.predictions.bias",
        }
        for a, b in tied.items():
            if a not in mapped and b in mapped:
                mapped[a] = mapped[b]
            elif b not in mapped and a in mapped:
                mapped[b] = mapped[a]

    own = model.state_dict()
    unexpected = sorted(k for k in mapped if k not in own)
    optional = ("head.",) if isinstance(model, GeneformerClassifier) else ()
    missing = sorted(k for k in own if k not in mapped and not k.startswith(optional))
    if strict and (unexpected or missing):
        raise ValueError(
            "weights do not match the model: "
            + (f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "")
        )
    bad = []
    tensors = {}
    for k, v in mapped.items():
        if k not in own:
            continue
        t = torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
        if tuple(t.shape) != tuple(own[k].shape):
            bad.append(f"{k}: checkpoint {tuple(t.shape)} vs model {tuple(own[k].shape)}")
        tensors[k] = t
    if bad:
        raise ValueError("shape mismatch (different vocabulary or architecture?): " + "; ".join(bad[:8]))
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))
        params.update(dict(model.named_buffers(remove_duplicate=False)))
        for k, t in tensors.items():
            params[k].copy_(t.to(dtype=params[k].dtype, device=params[k].device))
    return {"loaded": sorted(tensors), "skipped": sorted(skipped), "missing": missing}
