"""Exact fast leave-one-out (``mask``/``replace``) for the ``pca`` plugin, in closed form.

The model is affine in its flattened input::

    z   = (x_flat - mean) @ V.T                (IncrementalPCA.transform; V (k, L*C))
    out = z @ W.T + b                          (head; the standardisation is folded into W, b)

so changing input row ``p`` from ``x[p]`` to ``r`` (both (C,)) changes the outputs by

    out(r at p) - out(x) = (r - x[p]) @ W_eff[p],      W_eff[p] = V[:, p*C:(p+1)*C].T @ W.T  (C, O)

:func:`fast_loo` evaluates the unperturbed output once with the model itself (so it is the very
value a full forward pass gives) and adds this difference for every (position, new row) pair at
once: one ``(L, C, O)`` contraction for ``W_eff`` and one batched ``(P, C) x (P, C, O)`` product.
``W_eff`` is cached per model (it does not depend on the input); the difference is accumulated in
float64, so besides ``W_eff``'s own float32 product the only rounding left is the model's float32
rounding of the unperturbed output, far below the 1e-5 tolerance of the tests.

:func:`saturation` gives all new rows at all positions as one ``(L, R, O)`` tensor (in-silico
saturation mutagenesis of a whole sequence from one contraction).
"""

from __future__ import annotations

import weakref

import torch

from biolm.core.hookspecs import max_threads

__all__ = ["fast_loo", "saturation", "effective_weights"]


def _net(model):
    """The :class:`~biolm.plugins.pca.predictor.PCAPredictor` inside the plugin's ``InputAdapter``."""
    return getattr(model, "net", model)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # predictor -> (key, W_eff)


def effective_weights(model, length: int, channels: int) -> torch.Tensor:
    """Output change per unit change of each input element.

    Parameters
    ----------
    model : InputAdapter around a ``PCAPredictor`` (``model.net``), or the predictor itself.
    length, channels : int
        ``L`` and ``C`` of the (1, L, C) input; ``L * C`` must equal the model's ``n_features``.

    Returns
    -------
    (L, C, num_outputs) float64 tensor
        ``W_eff[p, c, o] = d out[o] / d x[p, c] = sum_k V[k, p*C + c] * W[o, k]`` (the product in
        the model's dtype, as its forward pass computes it). Cached per predictor until its
        components or head change (tensor versions are part of the key).
    """
    net = _net(model)
    V, W = net.ipca.V_kg, net.head.weight
    if V.shape[1] != length * channels:
        raise ValueError(f"pca fast_loo: input (L={length}, C={channels}) does not match n_features={V.shape[1]}")
    key = (length, channels, V.data_ptr(), V._version, W.data_ptr(), W._version, V.dtype, str(V.device))
    hit = _CACHE.get(net)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        w_eff = (W.detach().to(V.dtype) @ V.detach()).t().reshape(length, channels, W.shape[0]).to(torch.float64)
    _CACHE[net] = (key, w_eff)
    return w_eff


def _base(model, x: torch.Tensor) -> torch.Tensor:
    """The model's own output for the unperturbed input ``x`` (1, L, C) -> (1, O)."""
    net = _net(model)
    with torch.no_grad():
        return net(x)


def fast_loo(model, inp: dict, n: int, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Outputs of ``model`` for copies of one sequence with one input row changed each.

    Parameters
    ----------
    model : InputAdapter around a fitted ``PCAPredictor`` (``model.net``), or the predictor.
    inp : dict
        ``inp["x"]``: (1, L, C) one-hot (+ modifier channels) input; no other key is used.
    n : int
        Real length (unused: padding rows are ordinary features of the flattened input).
    positions : (P,) int
        Rows to change, each in ``[0, L)``; repeats allowed (several new rows per position).
    rows : (P, C)
        The new row for each position (zeros for ``mask``).

    Returns
    -------
    (P, num_outputs) tensor in the model's dtype
        Equal to full forward passes of the perturbed inputs up to float rounding.
    """
    x = inp["x"]
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"pca fast_loo: inp['x'] must hold one sequence (1, L, C), got {tuple(x.shape)}")
    net = _net(model)
    dev = net.ipca.V_kg.device
    out_dtype = net.head.weight.dtype
    _, L, C = x.shape
    pos = torch.as_tensor(positions, device=dev).long().reshape(-1)
    rows = torch.as_tensor(rows, device=dev).reshape(-1, C)
    if rows.shape[0] != pos.shape[0]:
        raise ValueError(f"pca fast_loo: {pos.shape[0]} positions but {rows.shape[0]} rows")
    if pos.numel() == 0:
        return torch.zeros(0, net.num_outputs, dtype=out_dtype, device=dev)
    if int(pos.min()) < 0 or int(pos.max()) >= L:
        raise ValueError(f"pca fast_loo: positions must lie in [0, {L})")
    with torch.no_grad(), max_threads(1):
        x = x.to(dev)
        base = _base(model, x).to(torch.float64)  # (1, O)
        w_eff = effective_weights(model, L, C)  # (L, C, O)
        d = rows.to(torch.float64) - x[0].to(torch.float64).index_select(0, pos)  # (P, C)
        delta = torch.bmm(d.unsqueeze(1), w_eff.index_select(0, pos)).squeeze(1)  # (P, O)
        return (base + delta).to(out_dtype)


def saturation(model, inp: dict, candidate_rows: torch.Tensor) -> torch.Tensor:
    """Outputs for every candidate row at every position (in-silico saturation mutagenesis).

    Parameters
    ----------
    model : InputAdapter around a fitted ``PCAPredictor``, or the predictor.
    inp : dict
        ``inp["x"]``: (1, L, C).
    candidate_rows : (R, C)
        New rows to try at each position (e.g. the one-hot rows of every letter).

    Returns
    -------
    (L, R, num_outputs) tensor
        ``out[p, r]`` = model output with row ``p`` replaced by ``candidate_rows[r]``.
    """
    x = inp["x"]
    net = _net(model)
    _, L, C = x.shape
    with torch.no_grad():
        x = x.to(net.ipca.V_kg.device)
        base = _base(model, x).to(torch.float64)  # (1, O)
        w_eff = effective_weights(model, L, C)  # (L, C, O)
        cand = candidate_rows.to(device=x.device, dtype=torch.float64)
        new = torch.einsum("rc,lco->lro", cand, w_eff)  # (L, R, O)
        old = torch.einsum("lc,lco->lo", x[0].to(torch.float64), w_eff)  # (L, O)
        return (base + new - old.unsqueeze(1)).to(net.head.weight.dtype)
