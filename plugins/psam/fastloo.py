"""Exact fast leave-one-out (``mask``/``replace``) for the ``psam`` plugin (PyProBound PSAM).

Per binding mode the model computes, for every window start ``s`` and strand/motif channel ``c``,

    T[c, s] = hill * (R[c, s] + omega[c, s] + bias[c])        (-inf if a tap of ``s`` is padding)
    R[c, s] = sum_k beta_k . xe[s + k*dil] + sum_d sum_k xe[s+k]^T B_{d,k} xe[s+k+d]
    log_affinity = logsumexp_{c, s} T[c, s]

then the head on the modes' combination (``PSAMPredictor.head_input``: the floored log-sum-exp
over modes, or the floored per-mode log-affinities). ``xe`` is the input after the vocabulary
projection with the ``unknown`` rule applied (padding rows and ``unknown="pad"`` rows -> 0 and
flagged as padding; all-zero rows -> ``1/A`` per letter for ``"mean"``, 0 for ``"zero"``).

Changing row ``p`` only changes the ``span`` windows ``s = p - j`` (``j = 0 .. span-1``; with
dilation only those with ``j % dil == 0``). :func:`fast_loo`

1. runs the unperturbed sequence once (float64): raw scores ``R``, the number of padding taps of
   every window, per-window channel log-sum-exp ``w[s]``, and its prefix / suffix log-sum-exps
   ``pre[i] = LSE(w[:i])``, ``suf[i] = LSE(w[i:])`` (``torch.logcumsumexp``, which is stable);
2. for every perturbation, the log-sum-exp over all windows *except* ``p - span + 1 .. p`` is
   ``logaddexp(pre[lo], suf[hi + 1])`` - exact, no exp terms are ever subtracted (no catastrophic
   cancellation);
3. the ``span`` changed windows are the cached ``R`` plus the change of the taps on ``p``
   (monomer: ``(xe_new - xe_old)[p] . beta_k``; pairwise: the two pairs that contain ``p`` with
   their unchanged partner rows ``xe[p +- d]``), and their validity the cached padding-tap count
   corrected for ``p``'s old and new padding status (``unknown="pad"`` makes a masked row padding);
4. the log-affinity is the log-sum-exp of step 2's value and the changed windows' scores; then the
   floor and the linear head.

Everything is computed in float64 (the work per perturbation is ``span * channels * A`` numbers),
so the result differs from the model's float32 forward pass only by that pass's own rounding.
All ops are small and run single-threaded (an OpenMP team per op costs more than it saves).
All options of :class:`~biolm.plugins.psam.predictor.PSAMPredictor` are supported: several modes (of
different kernel sizes), both strands, pairwise terms, dilation, symmetry, normalisation,
channel/same/reverse, binned and length-specific position biases, Hill coefficients, the three
``unknown`` rules, padding (``lengths`` < L), non-finite (``-inf``) padding rows, and the dense
(``one_hot=False``) scoring path (mathematically identical for one-hot inputs).
"""

from __future__ import annotations

import torch

from biolm.core.hookspecs import max_threads

__all__ = ["fast_loo"]

_CHUNK = 8192  # perturbations per chunk (the largest temporary is (chunk, channels, span) float64)
_F64 = torch.float64


def _net(model):
    """The :class:`~biolm.plugins.psam.predictor.PSAMPredictor` inside the plugin's input wrapper."""
    return getattr(model, "net", model)


def _project(model, x: torch.Tensor) -> torch.Tensor:
    """Alphabet channels of input rows as the model sees them.

    Parameters
    ----------
    x : (..., C_in) vocabulary one-hot (+ modifier channels) rows.

    Returns
    -------
    (..., A) float64 rows (the plugin wrapper keeps the first ``V`` channels, the predictor
    projects them onto the alphabet).
    """
    net = _net(model)
    proj = net.projection
    if proj is not None:
        v = proj.shape[0]
        if model is not net:  # the plugin wrapper drops the modifier channels first
            x = x[..., :v]
        if x.shape[-1] == v:
            return x.to(_F64) @ proj.to(_F64)
    return x.to(_F64)


def _effective(xa: torch.Tensor, is_pad_pos: torch.Tensor, unknown: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the model's padding / ``unknown`` rules to alphabet rows.

    Parameters
    ----------
    xa : (N, A) float64 alphabet rows.
    is_pad_pos : (N,) bool, the row lies at or beyond the real length.
    unknown : ``"mean"``, ``"zero"`` or ``"pad"``.

    Returns
    -------
    xe : (N, A) float64, the rows the scoring multiplies (padding rows are 0).
    pad : (N,) bool, the row is padding (windows over it score -inf).
    """
    finite = torch.isfinite(xa).all(-1)
    nonzero = (xa != 0).any(-1) & finite
    pad = ~finite | is_pad_pos
    empty = ~nonzero & ~pad
    if unknown == "pad":
        pad = pad | empty
    xe = xa.masked_fill(pad.unsqueeze(-1), 0.0)
    if unknown == "mean":
        xe = torch.where((empty & ~pad).unsqueeze(-1), torch.full_like(xe, 1.0 / xa.shape[-1]), xe)
    return xe, pad


class _Mode:
    """One binding mode's parameters (float64) and its unperturbed window caches.

    Attributes
    ----------
    mono : (Ch, A, K) monomer betas, both strands; pairs : list of (d, (Ch, A, A, K-d)).
    span, dil, n_win : window span, dilation, number of windows ``W = L - span + 1``.
    offset : (Ch, W) position bias + channel bias; hill : float.
    raw : (Ch, W) raw scores R; padtaps : (W,) padding taps per window.
    pre, suf : (W + 1,) LSE of ``w[:i]`` and ``w[i:]``.
    """

    def __init__(self, mode, xe: torch.Tensor, pad: torch.Tensor, length: int):
        conv = mode.layers[0]
        psam = conv.layer_spec
        self.unknown = conv.unknown
        self.k, self.dil, self.span = psam.kernel_size, psam.dilation, psam.span
        L = xe.shape[0]
        self.n_win = W = L - self.span + 1
        if W < 1:
            raise ValueError(f"psam fast_loo: input length {L} is shorter than the kernel span {self.span}")
        self.mono = psam.get_filter(0).detach().to(_F64)  # (Ch, A, K)
        self.pairs = []
        for d in range(1, psam.pairwise_distance + 1):
            pair = psam.get_filter(d).detach()
            if bool(torch.any(pair != 0)):  # the model skips all-zero pair filters too
                self.pairs.append((d, pair.to(_F64)))
        offset = psam.get_bias().detach().to(_F64).expand(-1, W)  # (Ch, W)
        if conv._posbias_in_use():
            if L > conv.input_shape:
                raise ValueError(f"input length {L} exceeds input_shape={conv.input_shape}")
            pb = conv.get_log_posbias().detach().to(_F64)[..., :W]
            row = 0
            if conv.length_specific_bias:
                row = length - conv.min_input_length
                if not 0 <= row < pb.shape[0]:
                    raise ValueError(f"sequence length {length} outside [{conv.min_input_length}, {conv.max_input_length}]"
                                     " for a length-specific position bias")
            offset = offset + pb[row]
        self.offset = offset.contiguous()
        self.hill = float(torch.exp(mode.log_hill.detach().to(_F64)))
        # ---- unperturbed windows
        taps = torch.arange(W, device=xe.device)[:, None] + self.dil * torch.arange(self.k, device=xe.device)
        xw = xe[taps]  # (W, K, A)
        raw = torch.einsum("wka,cak->cw", xw, self.mono)
        for d, pair in self.pairs:
            raw = raw + torch.einsum("wka,wkb,cabk->cw", xw[:, : self.k - d], xw[:, d:], pair)
        self.raw = raw
        self.padtaps = pad[taps].sum(1)  # (W,)
        t = self.hill * (raw + self.offset)
        t = t.masked_fill((self.padtaps > 0).unsqueeze(0), float("-inf"))
        w = torch.logsumexp(t, dim=0)  # (W,)
        ninf = w.new_full((1,), float("-inf"))
        self.pre = torch.cat([ninf, torch.logcumsumexp(w, 0)])
        self.suf = torch.cat([torch.logcumsumexp(w.flip(0), 0).flip(0), ninf])

    def log_affinity(self, xe: torch.Tensor, pad: torch.Tensor, pos: torch.Tensor, xe_new: torch.Tensor,
                     pad_new: torch.Tensor) -> torch.Tensor:
        """Log-affinities of perturbed copies.

        Parameters
        ----------
        xe, pad : (L, A), (L,) unperturbed effective rows and padding flags.
        pos : (P,) changed rows; xe_new, pad_new : (P, A), (P,) their new effective rows / flags.

        Returns
        -------
        (P,) float64, ``-inf`` for a copy without any valid window.
        """
        L, W, K, dil, span = xe.shape[0], self.n_win, self.k, self.dil, self.span
        P = pos.shape[0]
        dev = pos.device
        diff = xe_new - xe.index_select(0, pos)  # (P, A)
        # ---- the windows p - j, j = 0 .. span-1 (tap k of window p - k*dil is p)
        j = torch.arange(span, device=dev)
        s = pos.unsqueeze(1) - j  # (P, span)
        inrange = (s >= 0) & (s < W)
        sc = s.clamp(0, W - 1)
        delta = torch.einsum("pa,cak->pck", diff, self.mono)  # (P, Ch, K): window p - k*dil
        if dil > 1:
            full = delta.new_zeros(P, delta.shape[1], span)
            full[:, :, ::dil] = delta
            delta = full
        else:
            delta = delta.clone()
        for d, pair in self.pairs:  # dilation is 1 with pairwise terms
            after = xe.index_select(0, (pos + d).clamp(max=L - 1))  # partner of tap k at k + d
            before = xe.index_select(0, (pos - d).clamp(min=0))  # partner of tap k at k - d
            # p at tap k of pair (k, k+d) -> window p - k;  p at tap k+d of pair (k, k+d) -> window p - k - d
            delta[:, :, : K - d] += torch.einsum("pa,pb,cabk->pck", diff, after, pair)
            delta[:, :, d:K] += torch.einsum("pa,pb,cabk->pck", before, diff, pair)
        scores = self.raw[:, sc].permute(1, 0, 2) + delta + self.offset[:, sc].permute(1, 0, 2)  # (P, Ch, span)
        is_tap = (j % dil == 0).unsqueeze(0)
        padtaps = self.padtaps[sc] + is_tap * (pad_new.long() - pad.index_select(0, pos).long()).unsqueeze(1)
        valid = inrange & (padtaps == 0)  # (P, span)
        t = (self.hill * scores).masked_fill(~valid.unsqueeze(1), float("-inf"))
        lo = (pos - span + 1).clamp(min=0)
        hi = pos.clamp(max=W - 1)
        rest = torch.logaddexp(self.pre[lo], self.suf[hi + 1])  # (P,) windows not touching p
        return torch.logsumexp(torch.cat([rest.unsqueeze(1), t.flatten(1)], 1), dim=1)


def fast_loo(model, inp: dict, n: int, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Outputs of ``model`` for copies of one sequence with one input row changed each.

    Parameters
    ----------
    model : the psam plugin model (wrapper with ``.net`` a ``PSAMPredictor``), or the predictor.
    inp : dict
        ``inp["x"]`` (1, L, C_in): vocabulary one-hot (+ modifiers, ignored by the model);
        ``inp["lengths"]`` (1,) real length (default ``n``), as the wrapper passes it to the model.
    n : int
        Real length (used when ``inp`` has no ``lengths``).
    positions : (P,) int
        Rows to change, each in ``[0, L)``; repeats allowed (several new rows per position).
    rows : (P, C_in)
        The new input row for each position (zeros for ``mask``).

    Returns
    -------
    (P, num_outputs) tensor in the head's dtype; equal to full forward passes up to rounding.
    """
    net = _net(model)
    x = inp["x"]
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"psam fast_loo: inp['x'] must hold one sequence (1, L, C), got {tuple(x.shape)}")
    head = net.head
    dev = head.weight.device
    L = x.shape[1]
    pos = torch.as_tensor(positions, device=dev).long().reshape(-1)
    rows = torch.as_tensor(rows, device=dev).reshape(-1, x.shape[-1])
    if rows.shape[0] != pos.shape[0]:
        raise ValueError(f"psam fast_loo: {pos.shape[0]} positions but {rows.shape[0]} rows")
    if pos.numel() == 0:
        return torch.zeros(0, net.num_outputs, dtype=head.weight.dtype, device=dev)
    if int(pos.min()) < 0 or int(pos.max()) >= L:
        raise ValueError(f"psam fast_loo: positions must lie in [0, {L})")
    lengths = inp.get("lengths")
    length = int(lengths.reshape(-1)[0]) if lengths is not None else int(n)
    with torch.no_grad(), max_threads(1):
        xa = _project(model, x[0].to(dev))  # (L, A)
        ra = _project(model, rows)  # (P, A)
        beyond = torch.arange(L, device=dev) >= length
        modes = []
        for mode in net.modes:
            unknown = mode.layers[0].unknown
            xe, pad = _effective(xa, beyond, unknown)
            modes.append((_Mode(mode, xe, pad, length), xe, pad))
        outs = []
        for c0 in range(0, pos.shape[0], _CHUNK):
            p = pos[c0: c0 + _CHUNK]
            la = []
            for m, xe, pad in modes:
                xe_new, pad_new = _effective(ra[c0: c0 + _CHUNK], p >= length, m.unknown)
                la.append(m.log_affinity(xe, pad, p, xe_new, pad_new))
            la = torch.stack(la, dim=-1)  # (P, n_modes)
            outs.append(head(net.head_input(la).to(head.weight.dtype)))
        return torch.cat(outs)
