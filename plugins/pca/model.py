"""Incremental PCA (cellarium-ml algorithm), one-pass moments, and a PCA + linear-head predictor.

Shape suffixes follow cellarium's convention: ``n`` rows (samples), ``g`` features, ``k`` components,
``t`` regression targets, ``c`` classes.

The IPCA update is the one of ``cellarium.ml.models.IncrementalPCA`` (Iwen & Ong; Ross et al.): each batch
is reduced to its top-k right singular factors, and two partial results ``(S, V, mean, n)`` are merged by
an SVD of the stacked matrix

    J = [ S_a V_a ;  S_b V_b ;  sqrt(n_a n_b / n) (mean_a - mean_b) ]            ((2k + 1), g)

whose Gram matrix ``J^T J`` equals the scatter matrix of the union of both (rank-k truncated) parts about
the pooled mean. The same merge serves a new batch, another process's model, and DDP ranks.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["IncrementalPCA", "OnePassMeanVarStd", "PCAPredictor"]


# ----------------------------------------------------------------------------------------------------------
# IncrementalPCA
# ----------------------------------------------------------------------------------------------------------


class _Partial(NamedTuple):
    """One partial IPCA result: S (k,), V (k, g), mean (g,), n rows, total sum of squares about mean."""

    S: torch.Tensor
    V: torch.Tensor
    mean: torch.Tensor
    n: int
    ss: float


class IncrementalPCA(nn.Module):
    """Distributed and incremental PCA by batch-wise low-rank SVD with mean correction.

    A port of ``cellarium.ml.models.IncrementalPCA`` (cellarium-ml 0.0.15) to plain torch. With the same
    ``torch.manual_seed``, the same batches and ``svd_oversample=0``, :meth:`partial_fit` makes the same
    ``torch.svd_lowrank`` calls in the same order as cellarium, so it draws the same random test matrices.

    Parameters
    ----------
    n_features : int
        Number of input features ``g``.
    n_components : int
        Number of principal components ``k`` (``1 <= k <= g``).
    svd_lowrank_niter : int
        Subspace (power) iterations of ``torch.svd_lowrank``.
    perform_mean_correction : bool
        If True, every batch is centred on its own mean and the merge adds the mean-correction row, so the
        result is the PCA of the data centred on the pooled mean. If False the data are assumed centred:
        no centring, ``mean_g`` stays zero and :meth:`transform` does not subtract anything.
    svd_oversample : int
        Extra columns of the randomised range finder (``q = k + svd_oversample``). ``0`` reproduces
        cellarium (which has no oversampling, hence its last component can be noticeably off); a few
        extra columns make the batch SVD much closer to exact at little cost.

    Notes
    -----
    Randomness comes from torch's global generator of the device the buffers live on (``svd_lowrank``
    takes no generator), so seed with ``torch.manual_seed`` for a reproducible fit.

    Buffers (all in ``state_dict``): ``V_kg`` (k, g), ``S_k`` (k,), ``x_mean_g`` (g,), ``x_size`` () int64,
    ``x_total_ss`` () float64 (total sum of squares about the mean, for explained-variance ratios).
    """

    V_kg: torch.Tensor
    S_k: torch.Tensor
    x_mean_g: torch.Tensor
    x_size: torch.Tensor
    x_total_ss: torch.Tensor

    def __init__(
        self,
        n_features: int,
        n_components: int,
        svd_lowrank_niter: int = 2,
        perform_mean_correction: bool = True,
        svd_oversample: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= n_components <= n_features:
            raise ValueError(f"n_components must be in [1, n_features={n_features}], got {n_components}")
        if svd_lowrank_niter < 0 or svd_oversample < 0:
            raise ValueError("svd_lowrank_niter and svd_oversample must be >= 0")
        self.n_features = int(n_features)
        self.n_components = int(n_components)
        self.svd_lowrank_niter = int(svd_lowrank_niter)
        self.perform_mean_correction = bool(perform_mean_correction)
        self.svd_oversample = int(svd_oversample)
        k, g = self.n_components, self.n_features
        self.register_buffer("V_kg", torch.zeros(k, g))
        self.register_buffer("S_k", torch.zeros(k))
        self.register_buffer("x_mean_g", torch.zeros(g))
        self.register_buffer("x_size", torch.zeros((), dtype=torch.int64))
        # float64 so that sums over many millions of rows do not lose the variance ratio
        self.register_buffer("x_total_ss", torch.zeros((), dtype=torch.float64))

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, n_components={self.n_components}, "
            f"svd_lowrank_niter={self.svd_lowrank_niter}, "
            f"perform_mean_correction={self.perform_mean_correction}, svd_oversample={self.svd_oversample}"
        )

    # -- state helpers ---------------------------------------------------------------------------------

    @property
    def n_seen(self) -> int:
        """Number of rows fitted so far."""
        return int(self.x_size)

    def reset(self) -> None:
        """Forget everything fitted so far."""
        for name in ("V_kg", "S_k", "x_mean_g", "x_size", "x_total_ss"):
            getattr(self, name).zero_()

    def _partial(self) -> _Partial:
        return _Partial(self.S_k, self.V_kg, self.x_mean_g, int(self.x_size), float(self.x_total_ss))

    @torch.no_grad()
    def _set_partial(self, p: _Partial) -> None:
        # copy_ keeps the buffers' device and dtype whatever the merge computed in
        self.S_k.copy_(p.S)
        self.V_kg.copy_(p.V)
        self.x_mean_g.copy_(p.mean)
        self.x_size.fill_(p.n)
        self.x_total_ss.fill_(p.ss)

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected x of shape (n, {self.n_features}), got {tuple(x.shape)}")
        return x.to(device=self.V_kg.device, dtype=self.V_kg.dtype)

    # -- SVD kernels -----------------------------------------------------------------------------------

    def _pad(self, s: torch.Tensor, v_kg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a block with fewer than k rows has fewer than k singular triples; zero rows carry no weight in J
        k = self.n_components
        s, v_kg = s[:k], v_kg[:k]
        if s.shape[0] < k:
            s = torch.cat([s, s.new_zeros(k - s.shape[0])])
            v_kg = torch.cat([v_kg, v_kg.new_zeros(k - v_kg.shape[0], v_kg.shape[1])])
        return s, v_kg

    def _lowrank_svd(self, a_mg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Randomised top-k SVD of ``a_mg`` (m, g) -> S (k,), V (k, g)."""
        q = min(self.n_components + self.svd_oversample, *a_mg.shape)
        _, s, v_gq = torch.svd_lowrank(a_mg, q=q, niter=self.svd_lowrank_niter)
        return self._pad(s, v_gq.T)

    def _exact_svd(self, a_mg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic top-k SVD of a small matrix ``a_mg`` (m, g) -> S (k,), V (k, g)."""
        _, s, vh = torch.linalg.svd(a_mg, full_matrices=False)
        return self._pad(s, vh)

    def _merge_partials(self, a: _Partial, b: _Partial, exact: bool) -> _Partial:
        """Merge two partial results; either may be empty (n == 0)."""
        if b.n == 0:
            return a
        if a.n == 0:
            return b
        n = a.n + b.n
        rows = [a.S[:, None] * a.V, b.S[:, None] * b.V]
        mean, ss = a.mean, a.ss + b.ss
        if self.perform_mean_correction:
            dmean = a.mean - b.mean
            # the between-part scatter n_a n_b / n * d d^T, written as one extra row of J
            rows.append(math.sqrt(a.n * b.n / n) * dmean[None, :])
            mean = a.mean * a.n / n + b.mean * b.n / n
            ss += a.n * b.n / n * float(dmean.double().square().sum())
        joined = torch.cat(rows, dim=0)
        S, V = self._exact_svd(joined) if exact else self._lowrank_svd(joined)
        return _Partial(S, V, mean, n, ss)

    # -- fitting ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def partial_fit(self, x: torch.Tensor) -> "IncrementalPCA":
        """Fold one batch into the running decomposition.

        Parameters
        ----------
        x : torch.Tensor
            Batch of shape (n, g); cast to the buffers' dtype and device. A batch with fewer than ``k``
            rows is allowed (its SVD is padded with zero singular values).

        Returns
        -------
        IncrementalPCA
            ``self``.
        """
        x_ng = self._check_x(x)
        n_b = x_ng.shape[0]
        if n_b == 0:
            return self
        if self.perform_mean_correction:
            m_g = x_ng.mean(dim=0)
            xc_ng = x_ng - m_g
        else:
            m_g = torch.zeros_like(self.x_mean_g)
            xc_ng = x_ng
        S, V = self._lowrank_svd(xc_ng)
        # a float32 norm is accurate enough for a variance ratio and, unlike a float64 cast, needs no copy
        batch = _Partial(S, V, m_g, n_b, float(torch.linalg.vector_norm(xc_ng)) ** 2)
        # cellarium's merge step uses svd_lowrank too; keeping it preserves the random stream
        self._set_partial(self._merge_partials(self._partial(), batch, exact=False))
        return self

    def fit(self, batches) -> "IncrementalPCA":
        """Call :meth:`partial_fit` on every (n_b, g) tensor of an iterable; returns ``self``."""
        for x in batches:
            self.partial_fit(x)
        return self

    @torch.no_grad()
    def merge(self, other: "IncrementalPCA", exact: bool = True) -> "IncrementalPCA":
        """Merge another partial result into this one, in place.

        Parameters
        ----------
        other : IncrementalPCA
            A model with the same ``n_features``, ``n_components`` and ``perform_mean_correction``,
            fitted on other rows. It is not modified.
        exact : bool
            True (default): deterministic full SVD of the small (2k + 1, g) stacked matrix, i.e. the best
            rank-k truncation of the two partial results, with no randomness (so every DDP rank computes
            the same thing). False: ``torch.svd_lowrank`` exactly as cellarium's ``on_epoch_end`` does.

        Returns
        -------
        IncrementalPCA
            ``self``.
        """
        if (other.n_features, other.n_components, other.perform_mean_correction) != (
            self.n_features,
            self.n_components,
            self.perform_mean_correction,
        ):
            raise ValueError("cannot merge IncrementalPCA models with different shapes or mean correction")
        theirs = other._partial()
        theirs = theirs._replace(
            S=theirs.S.to(self.S_k), V=theirs.V.to(self.V_kg), mean=theirs.mean.to(self.x_mean_g)
        )
        self._set_partial(self._merge_partials(self._partial(), theirs, exact=exact))
        return self

    def _tree_merge(self, parts: list[_Partial], exact: bool) -> _Partial:
        # pairwise levels (0+1, 2+3, ... then again): the topology of cellarium's hierarchical merge,
        # so each row's contribution passes through log2(world) truncations rather than world - 1
        while len(parts) > 1:
            nxt = [self._merge_partials(parts[i], parts[i + 1], exact) for i in range(0, len(parts) - 1, 2)]
            if len(parts) % 2:
                nxt.append(parts[-1])
            parts = nxt
        return parts[0]

    @torch.no_grad()
    def merge_distributed(self, group=None, exact: bool = True) -> "IncrementalPCA":
        """Merge the partial results of all ranks so that every rank ends with the global result.

        A no-op unless ``torch.distributed`` is initialised with more than one rank. Each rank packs its
        state into one float64 vector (``2 + k + k g + g`` numbers, so the row count stays exact up to
        2^53) and a single ``all_gather`` gives every rank all partial results; each then merges them in
        the same pairwise tree as cellarium's hierarchical scheme (ranks 0+1, 2+3, ..., then the pairs of
        those). Unlike cellarium's send/recv chain no rank idles or ends without the result, and the
        traffic is only ``world * (k + 1) * g`` numbers. Rank 0's result is finally broadcast so the
        buffers are bit-identical everywhere even with ``exact=False`` (random) merges.

        Parameters
        ----------
        group : torch.distributed.ProcessGroup, optional
            Process group (default: the world). With NCCL the buffers must be on this rank's GPU.
        exact : bool
            As in :meth:`merge`.

        Returns
        -------
        IncrementalPCA
            ``self``.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size(group)
        if world == 1:
            return self
        packed = self._pack()
        gathered = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(gathered, packed, group=group)
        parts = [self._unpack(p) for p in gathered]
        self._set_partial(self._tree_merge(parts, exact))
        packed = self._pack()
        src = 0 if group is None else dist.get_global_rank(group, 0)
        dist.broadcast(packed, src=src, group=group)
        self._set_partial(self._unpack(packed))
        return self

    def _pack(self) -> torch.Tensor:
        head = torch.tensor([float(self.x_size), float(self.x_total_ss)], dtype=torch.float64)
        return torch.cat(
            [head.to(self.V_kg.device), self.S_k.double(), self.V_kg.double().flatten(), self.x_mean_g.double()]
        )

    def _unpack(self, p: torch.Tensor) -> _Partial:
        k, g = self.n_components, self.n_features
        dt = self.V_kg.dtype
        S = p[2 : 2 + k].to(dt)
        V = p[2 + k : 2 + k + k * g].reshape(k, g).to(dt)
        mean = p[2 + k + k * g :].to(dt)
        return _Partial(S, V, mean, int(round(float(p[0]))), float(p[1]))

    # -- results ---------------------------------------------------------------------------------------

    @property
    def components_kg(self) -> torch.Tensor:
        """Principal axes, shape (k, g); rows orthonormal, sorted by decreasing variance, sign arbitrary."""
        return self.V_kg

    @property
    def singular_values_k(self) -> torch.Tensor:
        """Singular values of the centred data, shape (k,)."""
        return self.S_k

    @property
    def explained_variance_k(self) -> torch.Tensor:
        """Variance along each component, ``S**2 / n`` (ddof 0, as cellarium), shape (k,)."""
        return self.S_k**2 / self.x_size.clamp(min=1).to(self.S_k.dtype)

    @property
    def explained_variance_ratio_k(self) -> torch.Tensor:
        """Fraction of the total variance along each component, shape (k,).

        The total is tracked exactly (not truncated), so the ratios of a rank-k fit sum to < 1.
        """
        total = self.x_total_ss.to(self.S_k.dtype)
        return self.S_k**2 / torch.where(total > 0, total, torch.ones_like(total))

    @property
    def mean_g(self) -> torch.Tensor:
        """Mean of all rows seen, shape (g,) (zeros if ``perform_mean_correction`` is False)."""
        return self.x_mean_g

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Centred projection ``(x - mean_g) @ components_kg.T``.

        Parameters
        ----------
        x : torch.Tensor
            Shape (n, g).

        Returns
        -------
        torch.Tensor
            Shape (n, k).
        """
        if int(self.x_size) == 0:
            raise RuntimeError("IncrementalPCA.transform called before any partial_fit")
        return (self._check_x(x) - self.x_mean_g) @ self.V_kg.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`transform`: (n, g) -> (n, k). Fitting is :meth:`partial_fit`."""
        return self.transform(x)


# ----------------------------------------------------------------------------------------------------------
# OnePassMeanVarStd
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# PCAPredictor
# ----------------------------------------------------------------------------------------------------------

_TASKS = ("regression", "classification")


class PCAPredictor(nn.Module):
    """IPCA on flattened inputs followed by a linear head on the ``k`` component scores.

    Parameters
    ----------
    n_features : int
        Flattened input size ``F`` (``L * C`` for (B, L, C) inputs).
    n_components : int
        Number of principal components ``k``.
    num_outputs : int
        Regression targets ``t``, or number of classes ``c`` (the head always outputs one logit per
        class, also for two classes).
    task : {"regression", "classification"}
        Default task for :meth:`fit_head`; stored in the state dict.
    svd_lowrank_niter, perform_mean_correction, svd_oversample
        Passed to :class:`IncrementalPCA`.

    Notes
    -----
    Workflow: :meth:`partial_fit` on every training batch (then :meth:`merge_distributed` under DDP),
    :meth:`embed` the training inputs, :meth:`fit_head` on those scores, then ``forward``. Everything
    (IPCA buffers, head weights, task, fitted flag) lives in ``state_dict``; to reload, construct with
    the same ``n_features``, ``n_components`` and ``num_outputs``.
    """

    task_code: torch.Tensor
    head_fitted: torch.Tensor

    def __init__(
        self,
        n_features: int,
        n_components: int,
        num_outputs: int = 1,
        task: Literal["regression", "classification"] = "regression",
        svd_lowrank_niter: int = 2,
        perform_mean_correction: bool = True,
        svd_oversample: int = 0,
    ) -> None:
        super().__init__()
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        if num_outputs < 1 or (task == "classification" and num_outputs < 2):
            raise ValueError(f"num_outputs={num_outputs} is invalid for task {task!r}")
        self.ipca = IncrementalPCA(
            n_features, n_components, svd_lowrank_niter, perform_mean_correction, svd_oversample
        )
        self.num_outputs = int(num_outputs)
        self.head = nn.Linear(n_components, num_outputs)
        # zero init: an unfitted head is inert rather than random
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("task_code", torch.tensor(_TASKS.index(task), dtype=torch.int64))
        self.register_buffer("head_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def task(self) -> str:
        """``"regression"`` or ``"classification"``."""
        return _TASKS[int(self.task_code)]

    @property
    def n_features(self) -> int:
        return self.ipca.n_features

    @property
    def n_components(self) -> int:
        return self.ipca.n_components

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.reshape(x.shape[0], -1)
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"expected input (B, {self.n_features}) or (B, L, C) with L*C = {self.n_features}, "
                f"got {tuple(x.shape)}"
            )
        # one-hot inputs may arrive as bool/uint8
        return x.to(dtype=self.ipca.V_kg.dtype)

    def partial_fit(self, x: torch.Tensor) -> "PCAPredictor":
        """Update the IPCA with a batch of shape (B, F) or (B, L, C); returns ``self``."""
        self.ipca.partial_fit(self._flatten(x))
        return self

    def merge_distributed(self, group=None, exact: bool = True) -> "PCAPredictor":
        """Merge the IPCA across DDP ranks (see :meth:`IncrementalPCA.merge_distributed`)."""
        self.ipca.merge_distributed(group=group, exact=exact)
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Component scores: (B, F) or (B, L, C) -> (B, k)."""
        return self.ipca.transform(self._flatten(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Regression values or class logits: (B, F) or (B, L, C) -> (B, num_outputs)."""
        if not bool(self.head_fitted):
            raise RuntimeError("PCAPredictor head is not fitted; call fit_head first")
        return self.head(self.embed(x))

    @torch.no_grad()
    def fit_head(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        task: Literal["regression", "classification"] | None = None,
        ridge_alpha: float = 1.0,
        sample_weight: torch.Tensor | None = None,
        standardize: bool = True,
        max_iter: int = 500,
        tol: float = 1e-9,
    ) -> dict:
        """Fit the linear head on component scores, deterministically (float64 on CPU).

        Regression (ridge, closed form) minimises ``sum_i w_i ||y_i - W z_i - b||^2 + alpha ||W||_F^2``
        (sklearn ``Ridge`` convention; intercept not penalised).
        Classification (multinomial logistic, L2) minimises
        ``sum_i w_i CE(softmax(W z_i + b), y_i) + alpha / 2 ||W||_F^2``, i.e. sklearn
        ``LogisticRegression(C=1/alpha)``; solved by full-batch L-BFGS (strong Wolfe) from zero.

        Parameters
        ----------
        z : torch.Tensor
            Component scores (n, k), e.g. from :meth:`embed`.
        y : torch.Tensor
            Regression targets (n,) or (n, t) with ``t == num_outputs``; or class indices (n,) in
            ``[0, num_outputs)``.
        task : {"regression", "classification"}, optional
            Overrides (and replaces) the task given at construction.
        ridge_alpha : float
            L2 strength ``alpha >= 0`` (for both tasks).
        sample_weight : torch.Tensor, optional
            Non-negative weights (n,); default all ones.
        standardize : bool
            Fit on scores scaled to weighted mean 0 and std 1 (so ``alpha`` penalises all components
            alike although their variances differ by orders of magnitude), then fold the scaling back
            into the head, so ``forward`` still takes raw scores.
        max_iter, tol : int, float
            L-BFGS iteration cap and gradient / change tolerance (classification only).

        Returns
        -------
        dict
            ``objective`` (final value of the objective above) and ``n_iter`` (0 for ridge).
        """
        task = self.task if task is None else task
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        if ridge_alpha < 0:
            raise ValueError(f"ridge_alpha must be >= 0, got {ridge_alpha}")
        k = self.n_components
        z = z.detach().to("cpu", torch.float64)
        if z.dim() != 2 or z.shape[1] != k:
            raise ValueError(f"expected z of shape (n, {k}), got {tuple(z.shape)}")
        n = z.shape[0]
        w = (
            torch.ones(n, dtype=torch.float64)
            if sample_weight is None
            else sample_weight.detach().to("cpu", torch.float64).reshape(-1)
        )
        if w.shape[0] != n or (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError("sample_weight must be (n,), non-negative, with a positive sum")

        wsum = float(w.sum())
        if standardize:
            mu = (w[:, None] * z).sum(0) / wsum
            sd = ((w[:, None] * (z - mu).square()).sum(0) / wsum).sqrt()
            sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
        else:
            mu, sd = torch.zeros(k, dtype=torch.float64), torch.ones(k, dtype=torch.float64)
        zs = (z - mu) / sd

        if task == "regression":
            W, b, obj, n_iter = self._fit_ridge(zs, y, w, ridge_alpha)
        else:
            W, b, obj, n_iter = self._fit_logistic(zs, y, w, ridge_alpha, max_iter, tol)

        # fold the standardisation in: W (z - mu) / sd + b = (W / sd) z + (b - (W / sd) mu)
        W_raw = W / sd
        b_raw = b - W_raw @ mu
        self.head.weight.copy_(W_raw.to(self.head.weight))
        self.head.bias.copy_(b_raw.to(self.head.bias))
        self.task_code.fill_(_TASKS.index(task))
        self.head_fitted.fill_(True)
        return {"objective": obj, "n_iter": n_iter}

    def _fit_ridge(self, z, y, w, alpha):
        y = y.detach().to("cpu", torch.float64)
        y = y[:, None] if y.dim() == 1 else y
        if y.dim() != 2 or y.shape[0] != z.shape[0] or y.shape[1] != self.num_outputs:
            raise ValueError(
                f"regression targets must be (n,) or (n, {self.num_outputs}) with n = {z.shape[0]}, "
                f"got {tuple(y.shape)}"
            )
        k = z.shape[1]
        wsum = w.sum()
        zbar = (w[:, None] * z).sum(0) / wsum
        ybar = (w[:, None] * y).sum(0) / wsum
        zc, yc = z - zbar, y - ybar
        if alpha > 0:
            gram = zc.T @ (w[:, None] * zc) + alpha * torch.eye(k, dtype=torch.float64)
            beta = torch.linalg.solve(gram, zc.T @ (w[:, None] * yc))  # (k, t)
        else:
            # unregularised: least squares copes with collinear or constant components
            sw = w.sqrt()[:, None]
            beta = torch.linalg.lstsq(sw * zc, sw * yc, driver="gelsd").solution
        W = beta.T  # (t, k)
        b = ybar - W @ zbar
        resid = y - z @ W.T - b
        obj = float((w[:, None] * resid.square()).sum() + alpha * W.square().sum())
        return W, b, obj, 0

    def _fit_logistic(self, z, y, w, alpha, max_iter, tol):
        c, k = self.num_outputs, z.shape[1]
        y = y.detach().to("cpu").reshape(-1)
        if y.dtype.is_floating_point:
            if not torch.equal(y, y.round()):
                raise ValueError("classification labels must be integer class indices")
        y = y.long()
        if y.shape[0] != z.shape[0] or (y < 0).any() or (y >= c).any():
            raise ValueError(f"class labels must be (n,) integers in [0, {c}) with n = {z.shape[0]}")
        wsum = float(w.sum())
        with torch.inference_mode(False), torch.enable_grad():
            z, y, w = z.clone(), y.clone(), w.clone()
            W = torch.zeros(c, k, dtype=torch.float64, requires_grad=True)
            b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.LBFGS(
                [W, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                history_size=20, line_search_fn="strong_wolfe",
            )

            def objective():
                logits = z @ W.T + b
                ce = nn.functional.cross_entropy(logits, y, reduction="none")
                # divided by sum(w) only to keep L-BFGS's tolerances scale-free; same minimiser
                return ((w * ce).sum() + 0.5 * alpha * W.square().sum()) / wsum

            def closure():
                opt.zero_grad()
                loss = objective()
                loss.backward()
                return loss

            opt.step(closure)
            n_iter = int(opt.state[W].get("n_iter", 0))
            with torch.no_grad():
                obj = float(objective()) * wsum
        return W.detach(), b.detach(), obj, n_iter
