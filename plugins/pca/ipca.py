"""Incremental PCA (cellarium-ml algorithm): batch-wise low-rank SVD updates with an exact merge.

Shape suffixes follow cellarium's convention: ``n`` rows (samples), ``g`` features, ``k`` components.

The IPCA update is the one of ``cellarium.ml.models.IncrementalPCA`` (Iwen & Ong; Ross et al.): each batch
is reduced to its top-k right singular factors, and two partial results ``(S, V, mean, n)`` are merged by
an SVD of the stacked matrix

    J = [ S_a V_a ;  S_b V_b ;  sqrt(n_a n_b / n) (mean_a - mean_b) ]            ((2k + 1), g)

whose Gram matrix ``J^T J`` equals the scatter matrix of the union of both (rank-k truncated) parts about
the pooled mean. The same merge serves a new batch, another process's model, and DDP ranks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["IncrementalPCA"]


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
