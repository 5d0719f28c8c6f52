"""PCA + linear head: incremental PCA on flattened inputs, then ridge / logistic regression on the
component scores, fitted deterministically (closed form / full-batch L-BFGS in float64).

Shape suffixes follow cellarium's convention: ``n`` rows, ``k`` components, ``t`` regression
targets, ``c`` classes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .ipca import IncrementalPCA

__all__ = ["PCAPredictor"]

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
    preprocess : nn.Module, optional
        Applied to every input first (fitted input statistics: single-cell preprocessing, EIR's
        array normalization); ``n_features`` is then the width of its output. Without one the
        state dict is exactly IPCA + head.

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
        preprocess: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
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
        if self.preprocess is not None:
            x = self.preprocess(x)
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
