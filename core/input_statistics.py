"""Input statistics fitted in one pass over a training split, with their merge across DDP ranks.

- :class:`OnePassMeanVarStd`: per-feature mean, variance and standard deviation from running
  sums (cellarium-ml's algorithm), mergeable across processes — the building block;
- :class:`ArrayNormalization`: EIR's array normalization (``channel`` | ``element`` | ``none``)
  of a (B, L, C) input, fitted on the training split and kept in buffers, so that it is saved
  with a trained model and reapplied unchanged at predict.

Both are ``torch.nn.Module`` s whose statistics are buffers (in ``state_dict``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["OnePassMeanVarStd", "ArrayNormalization", "NORMALIZATIONS", "rank_share"]

NORMALIZATIONS = ("channel", "element", "none")


def rank_share(indices: np.ndarray) -> np.ndarray:
    """This process's part of ``indices`` under DDP (every rank a disjoint part; all of them
    together exactly ``indices``, unlike a training sampler's padded shards); all of it otherwise.
    Statistics summed over the parts with ``merge_distributed`` are then those of ``indices``."""
    idx = np.asarray(indices)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return idx[dist.get_rank() :: dist.get_world_size()]
    return idx


class OnePassMeanVarStd(nn.Module):
    """Per-feature mean, variance and standard deviation (ddof 0) from running sums, in one pass.

    Same formulas as ``cellarium.ml.models.OnePassMeanVarStd``: ``naive`` accumulates ``sum x`` and
    ``sum x**2``; ``shifted_data`` accumulates them for ``x - shift`` with ``shift`` the mean of the first
    batch, which avoids most of the float cancellation for data far from zero. Two deliberate
    differences: the sums are kept in float64 (cellarium uses float32), and the variance is clamped at 0
    so that ``std_g`` never turns NaN from rounding.

    Parameters
    ----------
    n_features : int
        Number of features ``g``.
    algorithm : {"naive", "shifted_data"}
        Accumulation scheme.
    """

    x_sums: torch.Tensor
    x_squared_sums: torch.Tensor
    x_size: torch.Tensor
    x_shift: torch.Tensor
    shift_set: torch.Tensor

    def __init__(self, n_features: int, algorithm: Literal["naive", "shifted_data"] = "naive") -> None:
        super().__init__()
        if algorithm not in ("naive", "shifted_data"):
            raise ValueError(f"algorithm must be 'naive' or 'shifted_data', got {algorithm!r}")
        self.n_features = int(n_features)
        self.algorithm = algorithm
        g = self.n_features
        self.register_buffer("x_sums", torch.zeros(g, dtype=torch.float64))
        self.register_buffer("x_squared_sums", torch.zeros(g, dtype=torch.float64))
        self.register_buffer("x_size", torch.zeros((), dtype=torch.int64))
        # stored in the data's precision: the shift is itself a float32 batch mean in cellarium
        self.register_buffer("x_shift", torch.zeros(g))
        # an explicit flag rather than cellarium's "shift == 0" test, which re-triggers for zero-mean data
        self.register_buffer("shift_set", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def partial_fit(self, x: torch.Tensor) -> "OnePassMeanVarStd":
        """Accumulate a batch ``x`` of shape (n, g); returns ``self``."""
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected x of shape (n, {self.n_features}), got {tuple(x.shape)}")
        x = x.to(device=self.x_sums.device)
        if x.shape[0] == 0:
            return self
        if self.algorithm == "shifted_data":
            if not bool(self.shift_set):
                self.x_shift.copy_(x.to(self.x_shift.dtype).mean(dim=0))
                self.shift_set.fill_(True)
            x = x - self.x_shift
        x64 = x.double()
        self.x_sums += x64.sum(dim=0)
        self.x_squared_sums += x64.square().sum(dim=0)
        self.x_size += x.shape[0]
        return self

    @torch.no_grad()
    def merge(self, other: "OnePassMeanVarStd") -> "OnePassMeanVarStd":
        """Add another accumulator's sums into this one (shifts may differ); returns ``self``."""
        if other.n_features != self.n_features or other.algorithm != self.algorithm:
            raise ValueError("cannot merge OnePassMeanVarStd with different n_features or algorithm")
        self._add(
            other.x_sums.to(self.x_sums),
            other.x_squared_sums.to(self.x_sums),
            int(other.x_size),
            other.x_shift.to(self.x_shift),
            bool(other.shift_set),
        )
        return self

    def _add(self, sums, sq, n: int, shift, shift_set: bool) -> None:
        if n == 0:
            return
        if self.algorithm == "shifted_data":
            if not bool(self.shift_set) or int(self.x_size) == 0:
                self.x_shift.copy_(shift)
                self.shift_set.fill_(shift_set)
            else:
                # re-express the other sums about our shift: x - s_a = (x - s_b) + d
                d = (shift.double() - self.x_shift.double())
                sq = sq + 2 * d * sums + n * d.square()
                sums = sums + n * d
        self.x_sums += sums
        self.x_squared_sums += sq
        self.x_size += n

    @torch.no_grad()
    def merge_distributed(self, group=None) -> "OnePassMeanVarStd":
        """Sum the accumulators of all ranks (all_gather, so every rank gets the totals); returns ``self``.

        All-gather rather than all-reduce because with ``shifted_data`` the ranks' shifts generally
        differ and the sums must be re-based before adding.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        g = self.n_features
        head = torch.tensor([float(self.x_size), float(self.shift_set)], dtype=torch.float64)
        packed = torch.cat(
            [head.to(self.x_sums.device), self.x_sums, self.x_squared_sums, self.x_shift.double()]
        )
        gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, packed, group=group)
        for name in ("x_sums", "x_squared_sums", "x_size", "x_shift", "shift_set"):
            getattr(self, name).zero_()
        for p in gathered:
            self._add(
                p[2 : 2 + g], p[2 + g : 2 + 2 * g], int(round(float(p[0]))),
                p[2 + 2 * g :].to(self.x_shift.dtype), bool(p[1] > 0),
            )
        return self

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(int(self.x_size), 1)
        m = self.x_sums / n
        return m, self.x_squared_sums / n - m**2

    @property
    def mean_g(self) -> torch.Tensor:
        """Mean, shape (g,), in the dtype of ``x_shift`` (float32 by default)."""
        m, _ = self._moments()
        if self.algorithm == "shifted_data":
            m = m + self.x_shift.double()
        return m.to(self.x_shift.dtype)

    @property
    def var_g(self) -> torch.Tensor:
        """Population variance (ddof 0), shape (g,)."""
        return self._moments()[1].clamp(min=0).to(self.x_shift.dtype)

    @property
    def std_g(self) -> torch.Tensor:
        """Population standard deviation (ddof 0), shape (g,)."""
        return self._moments()[1].clamp(min=0).sqrt().to(self.x_shift.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x`` (n, g) with the fitted moments (features of zero variance are only centred)."""
        std = self.std_g.to(x.device)
        return (x - self.mean_g.to(x.device)) / torch.where(std > 0, std, torch.ones_like(std))


class ArrayNormalization(nn.Module):
    """EIR's array normalization of a (B, L, C) input: ``(x - mean) / std``.

    Parameters
    ----------
    n_positions, n_channels : L and C of the input.
    kind : ``"channel"`` — one mean and standard deviation per channel, over all training
        samples and positions (population std; EIR's ``ChannelBasedRunningStatistics``);
        ``"element"`` — one per position and channel (sample std, ddof 1; EIR's
        ``ElementBasedRunningStatistics``); ``"none"`` — the identity.

    Notes
    -----
    One deliberate difference from EIR, which divides by ``std + 1e-10``: a statistic with zero
    spread in training (a SNP that never varies) divides by 1, so that a value unseen in training
    stays finite at predict time instead of becoming +-1e10.

    Buffers: ``mean`` and ``std``, shape (C,) (channel), (L, C) (element) or (0,) (none).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_positions: int, n_channels: int, kind: str = "channel") -> None:
        super().__init__()
        if kind not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {kind!r}")
        self.kind = kind
        self.n_positions, self.n_channels = int(n_positions), int(n_channels)
        shape = {"channel": (self.n_channels,), "element": (self.n_positions, self.n_channels), "none": (0,)}[kind]
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, n_positions={self.n_positions}, n_channels={self.n_channels}"

    @torch.no_grad()
    def fit(self, batches: Any, train_idx: np.ndarray, max_samples: int | None = None, seed: int = 0, key: str = "x") -> "ArrayNormalization":
        """Fit on the training split: one pass, summed across DDP ranks.

        Parameters
        ----------
        batches : ``batches(indices, shuffle)`` yielding ``(indices, input, y, w)``
            with ``input[key]`` of shape (B, L, C) (core's :class:`~biolm.core.batching.Batches`).
        train_idx : (N,) the training records.
        max_samples : fit on a seeded random subset of this many of them (EIR's
            ``adaptive_normalization_max_samples``); ``None`` = all.
        seed : seed of that subset.
        """
        if self.kind == "none":
            return self
        idx = np.asarray(train_idx)
        if max_samples is not None and len(idx) > max_samples:
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(max_samples), replace=False))
        width = self.n_channels if self.kind == "channel" else self.n_positions * self.n_channels
        acc = OnePassMeanVarStd(width, algorithm="shifted_data")
        for _, inp, _, _ in batches(rank_share(idx), shuffle=False):
            x = inp[key].float()
            acc.partial_fit(x.reshape(-1, self.n_channels) if self.kind == "channel" else x.reshape(x.shape[0], -1))
        acc.merge_distributed()
        n = int(acc.x_size)
        var = acc.var_g.double()
        if self.kind == "element" and n > 1:
            var = var * n / (n - 1)
        std = var.sqrt()
        self.mean.copy_(acc.mean_g.reshape(self.mean.shape))
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)).reshape(self.std.shape))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C) normalised (unchanged for ``none``)."""
        if self.kind == "none":
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
