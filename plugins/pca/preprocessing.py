"""Single-cell preprocessing of raw counts, fitted on a fold's training split and saved with it.

The steps, each with its scanpy / cellarium-ml meaning:

1. ``normalize_total`` (target sum, default 10,000): each cell's counts scaled to sum to the
   target (``sc.pp.normalize_total``; cellarium's ``NormalizeTotal``); a cell without counts
   stays zero. Unset = off.
2. ``log1p``: ``log(1 + x)`` (``sc.pp.log1p``; cellarium's ``Log1p``).
3. ``n_top_genes``: keep the most variable genes, fitted on the training split only, by
   scanpy's default ``highly_variable_genes(flavor="seurat")``: per gene, mean and variance
   (ddof 1) of the normalised, not yet log-transformed values; dispersion = variance / mean,
   log-dispersion normalised within 20 equal-width bins of ``log1p(mean)`` (bin mean and sample
   std; a bin of one gene keeps its dispersion as its score); the genes with the highest
   normalised dispersion, exactly ``n_top_genes`` of them (ties by gene order; scanpy may keep
   tied genes beyond the count).
4. ``zscore``: per-gene ``(x - mean) / std`` with the training split's mean and population std
   (ddof 0, cellarium's ``OnePassMeanVarStd``; ``sc.pp.scale`` without clipping); a gene without
   variance in training is only centred.

Steps 3-4 are the fitted part: their statistics are buffers of :class:`ExpressionPreprocessing`
(saved in the fold's weights) and applied unchanged at predict. A knockout (a count set to zero)
is made on the raw counts, before step 1, as an in-silico deletion should be.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ExpressionPreprocessing", "seurat_hvg"]

N_BINS = 20


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int) -> np.ndarray:
    """Indices of the ``n_top`` most variable genes by scanpy's ``flavor="seurat"``.

    Parameters
    ----------
    mean, var : (G,) mean and sample variance (ddof 1) of the normalised (non-log) expression.
    n_top : genes to keep (``<= G``).

    Returns
    -------
    np.ndarray : (n_top,) int64 gene indices, in increasing order.
    """
    mean = np.where(mean == 0, 1e-12, np.asarray(mean, dtype=np.float64))
    disp = np.asarray(var, dtype=np.float64) / mean
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(np.where(disp == 0, np.nan, disp))
    mlog = np.log1p(mean)
    lo, hi = mlog.min(), mlog.max()
    bins = np.zeros(len(mlog), dtype=np.int64)
    if hi > lo:  # pandas.cut(x, 20): equal-width right-closed bins, the lowest edge 0.1 % lower
        edges = np.linspace(lo, hi, N_BINS + 1)
        edges[0] = lo - (hi - lo) * 0.001
        bins = np.clip(np.searchsorted(edges, mlog, side="left") - 1, 0, N_BINS - 1)
    score = np.full(len(disp), np.nan)
    for b in np.unique(bins):
        members = bins == b
        vals = disp[members]
        ok = vals[~np.isnan(vals)]
        if len(ok) >= 2:
            m, s = ok.mean(), ok.std(ddof=1)
        else:  # scanpy: a bin with one gene gets mean 0 and its own dispersion as the std
            m, s = 0.0, (ok[0] if len(ok) else np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            score[members] = (vals - m) / s
    order = np.lexsort((np.arange(len(score)), -np.nan_to_num(score, nan=-np.inf)))
    return np.sort(order[:n_top]).astype(np.int64)


class ExpressionPreprocessing(nn.Module):
    """Raw counts -> normalised, log-transformed, gene-selected, z-scored values.

    Parameters
    ----------
    n_genes : G, genes of the input (the tokenizer's gene list).
    normalize_total : target sum per cell, or ``None`` (off).
    log1p : apply ``log(1 + x)``.
    n_top_genes : keep this many highly variable genes (fitted); ``None`` = all.
    zscore : per-gene z-scoring (fitted).
    gene_names : the G gene ids, for reports (not saved in the state dict).

    Buffers: ``genes`` (K,) int64 selected gene indices (all genes until fitted), ``zmean`` and
    ``zstd`` (K,) (zeros / ones without ``zscore``), ``fitted`` bool.

    Shapes: ``forward`` (B, G) or (B, G, 1) counts -> (B, K).
    """

    genes: torch.Tensor
    zmean: torch.Tensor
    zstd: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, n_genes: int, normalize_total: float | None = 1e4, log1p: bool = True, n_top_genes: int | None = None, zscore: bool = False, gene_names: list | None = None) -> None:
        super().__init__()
        self.n_genes = int(n_genes)
        self.gene_names = gene_names
        self.normalize_total = None if normalize_total is None else float(normalize_total)
        self.log1p = bool(log1p)
        self.n_top_genes = n_top_genes
        self.zscore = bool(zscore)
        self.n_out = min(int(n_top_genes), self.n_genes) if n_top_genes else self.n_genes
        self.register_buffer("genes", torch.arange(self.n_out, dtype=torch.int64))
        self.register_buffer("zmean", torch.zeros(self.n_out))
        self.register_buffer("zstd", torch.ones(self.n_out))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}, normalize_total={self.normalize_total}, log1p={self.log1p}, n_top_genes={self.n_top_genes}, zscore={self.zscore}"

    @property
    def needs_fit(self) -> bool:
        return bool(self.n_top_genes) or self.zscore

    def _counts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).float()
        if x.shape[1] != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes per cell, got input of shape {tuple(x.shape)}")
        return x

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1 only: (B, G) counts scaled to ``normalize_total`` (unchanged when off)."""
        x = self._counts(x)
        if self.normalize_total is None:
            return x
        total = x.sum(dim=1, keepdim=True)
        return x * (self.normalize_total / torch.where(total > 0, total, torch.ones_like(total)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G) or (B, G, 1) raw counts -> (B, K) model features."""
        y = self.normalized(x)
        if self.log1p:
            y = torch.log1p(y)
        if self.n_top_genes:
            y = y.index_select(1, self.genes)
        if self.zscore:
            y = (y - self.zmean) / self.zstd
        return y

    @torch.no_grad()
    def fit(self, batches: Any, train_idx: np.ndarray, key: str = "x") -> "ExpressionPreprocessing":
        """Fit the gene selection and z-scores on the training split: one pass, DDP-merged.

        ``batches(indices, shuffle)`` yields ``(indices, input, y, w)`` with ``input[key]`` the
        counts (B, G, 1).
        """
        from biolm.core.hookspecs import OnePassMeanVarStd, rank_share

        if not self.needs_fit:
            self.fitted.fill_(True)
            return self
        raw = OnePassMeanVarStd(self.n_genes, algorithm="shifted_data")
        logged = OnePassMeanVarStd(self.n_genes, algorithm="shifted_data")
        for _, inp, _, _ in batches(rank_share(train_idx), shuffle=False):
            y = self.normalized(inp[key])
            raw.partial_fit(y)
            logged.partial_fit(torch.log1p(y) if self.log1p else y)
        raw.merge_distributed()
        logged.merge_distributed()
        n = int(raw.x_size)
        if self.n_top_genes:
            var = raw.var_g.double().cpu().numpy() * (n / max(n - 1, 1))
            genes = seurat_hvg(raw.mean_g.double().cpu().numpy(), var, self.n_out)
            self.genes.copy_(torch.as_tensor(genes))
        if self.zscore:
            sel = self.genes.cpu()
            std = logged.std_g.cpu()[sel]
            self.zmean.copy_(logged.mean_g.cpu()[sel])
            self.zstd.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        self.fitted.fill_(True)
        return self
