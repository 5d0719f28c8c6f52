"""cellarium-ml's rank-value tokenizer with per-gene scales fitted on the user's own data.

Geneformer (Theodoris et al., Nature 2023) turns a cell into a sentence of gene tokens: counts
are scaled to 10,000 per cell, each gene is divided by its non-zero median over a reference
corpus (so that ubiquitously high genes such as housekeeping genes rank lower than genes that
are unusually high *for them*), and the genes are sorted by that value. This module fits those
medians on the tokenizing data, as cellarium-ml 0.0.15 does (parity-tested in
``tests/test_geneformer_model.py``); :mod:`.dictionary_tokenizer` uses a published Geneformer
release's medians and vocabulary instead.

Tokens: PAD = 0, MASK = 1, gene ``var_names[i]`` -> ``i + 2``.

Differences from cellarium, all deliberate:

- Ties between equal normalised values are broken by gene index (a stable sort), where
  cellarium's ``torch.argsort`` breaks them arbitrarily; the order is therefore reproducible
  across devices and runs. Tie-free inputs give identical tokens.
- Genes are matched to the vocabulary by name (:class:`GeneOrder`); genes the vocabulary does not
  know still count towards a cell's library size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .bert import MASK_TOKEN_ID, N_SPECIAL_TOKENS, PAD_TOKEN_ID

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

    def __repr__(self) -> str:
        return f"GeneRankTokenizer(n_genes={self.n_genes}, max_len={self.max_len}, n_cells_fit={self.n_cells_fit})"
