"""The head in closed form: its exact optimum for fixed log-affinities ("profiling").

While a PSAM trains from a random start its log-affinity barely varies between sequences, and a
head trained alongside it by gradient descent shrinks towards 0 within a few epochs, which cuts
the gradient to the PSAM (the model then predicts the mean). Setting the head to its optimum for
the current log-affinities before every evaluation of the objective (variable projection) keeps
the signal: by the envelope theorem the gradient of the profiled objective with respect to the
PSAM is the ordinary gradient at that head, so L-BFGS sees an exact, smooth objective.

Both problems are convex and match the engine's losses exactly (sample and class weights):
weighted least squares (regression) and weighted softmax regression, solved by damped Newton
steps in float64 (classification).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def solve_head(head: torch.nn.Linear, features: Tensor, y: Tensor, w: Tensor, task: str, class_weights: Tensor | None = None, newton_steps: int = 50) -> None:
    """Set ``head`` to its optimum for fixed inputs.

    Parameters
    ----------
    head : Linear(F, n_outputs), changed in place.
    features : (N, F) head inputs; a column that does not vary gets weight 0.
    y : (N,) regression targets or class indices.
    w : (N,) sample weights.
    task : ``"regression"`` (weighted MSE) or ``"classification"`` (weighted cross-entropy).
    class_weights : (C,) class weights of the cross-entropy, or None.
    """
    f, w = features.double(), w.double()
    if task == "regression":
        weight, bias = _least_squares(f, y.double().reshape(len(f), -1), w)
    else:
        cw = class_weights.double().to(f.device)[y.long()] if class_weights is not None else 1.0
        weight, bias = _softmax_regression(f, y.long(), w * cw, head.weight.double(), head.bias.double(), newton_steps)
    head.weight.copy_(weight.to(head.weight.dtype))
    head.bias.copy_(bias.to(head.bias.dtype))


def _live(f: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted column means (F,) and the columns that vary (F,) bool."""
    mean = (w[:, None] * f).sum(0) / w.sum().clamp_min(1e-300)
    spread = (w[:, None] * (f - mean) ** 2).sum(0) / w.sum().clamp_min(1e-300)
    return mean, spread > 1e-14 * max(1.0, float(spread.max()) if len(spread) else 1.0)


def _least_squares(f: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted least squares of y (N, T) on [f, 1]; returns weight (T, F), bias (T,)."""
    mean, live = _live(f, w)
    ymean = (w[:, None] * y).sum(0) / w.sum().clamp_min(1e-300)
    coef = torch.zeros(f.shape[1], y.shape[1], dtype=f.dtype, device=f.device)
    if bool(live.any()):
        fc = (f - mean)[:, live]
        gram = fc.T @ (w[:, None] * fc)
        gram = gram + 1e-12 * (gram.diagonal().mean() + 1e-300) * torch.eye(len(gram), dtype=f.dtype, device=f.device)
        coef[live] = torch.linalg.solve(gram, fc.T @ (w[:, None] * (y - ymean)))
    return coef.T, ymean - mean @ coef


def _softmax_regression(f: Tensor, y: Tensor, w: Tensor, weight: Tensor, bias: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Weighted multinomial logistic regression of y on [f, 1] by Newton steps with backtracking.

    Starts from the current head (weight (C, F), bias (C,)) or from weight 0 and the log class
    frequencies, whichever fits better, so that the result depends on the features only;
    columns of f that do not vary keep weight 0. A small ridge keeps the optimum finite when the
    classes are separable and the Hessian invertible (softmax does not change when one vector is
    added to every class)."""
    _, live = _live(f, w)
    x = torch.cat([f[:, live], torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], 1)  # (N, D)
    n_classes, d = weight.shape[0], x.shape[1]
    onehot = torch.nn.functional.one_hot(y, n_classes).to(f.dtype)
    total = w.sum().clamp_min(1e-300)
    ridge = 1e-6

    def loss(th: Tensor) -> Tensor:
        return -(w * (torch.log_softmax(x @ th.T, -1) * onehot).sum(-1)).sum() / total + ridge * th.square().sum()

    warm = torch.cat([weight[:, live], bias[:, None]], 1)  # (C, D)
    cold = torch.zeros_like(warm)
    cold[:, -1] = torch.log((w[:, None] * onehot).sum(0) / total + 1e-12)
    warm_loss = loss(warm)
    theta = warm if bool(torch.isfinite(warm_loss)) and warm_loss <= loss(cold) else cold
    eye = torch.eye(n_classes * d, dtype=f.dtype, device=f.device)
    for _ in range(steps):
        p = torch.softmax(x @ theta.T, -1)  # (N, C)
        grad = (x.T @ (w[:, None] * (p - onehot))).T / total + 2 * ridge * theta  # (C, D)
        if float(grad.abs().max()) < 1e-10:
            break
        # H[c, a, e, b] = sum_i w_i x_ia x_ib (delta_ce p_ic - p_ic p_ie)
        wx = w[:, None] * x
        hess = torch.diag_embed(torch.einsum("ia,ib,ic->abc", wx, x, p)).permute(2, 0, 3, 1) - torch.einsum("ia,ib,ic,ie->caeb", wx, x, p, p)
        hess = hess.reshape(n_classes * d, n_classes * d) / total + 2 * ridge * eye
        step = torch.linalg.solve(hess, grad.reshape(-1)).reshape(n_classes, d)
        current, t = loss(theta), 1.0
        while t > 1e-6 and not bool(loss(theta - t * step) <= current):  # also refuses NaN
            t *= 0.5
        if t <= 1e-6:
            break
        theta = theta - t * step
    new_weight = torch.zeros_like(weight)
    new_weight[:, live] = theta[:, :-1]
    return new_weight, theta[:, -1]
