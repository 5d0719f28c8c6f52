"""The PSAM's gauge and footprint: edits of a fitted mode that keep or test its predictions.

* :func:`fix_gauge` (PyProBound ``PSAM.fix_gauge``): a PSAM is only defined up to a constant per
  position (adding ``c`` to every letter of a position adds ``c`` to every window score). The
  betas of each position are made mean-zero over letters (pairwise betas: zero row and column
  means, moved into the monomers; the position bias: mean zero), and the removed constant goes
  into the PSAM's own bias, exactly: the predictions do not change.
* :func:`recenter` (PyProBound ``PSAM.shift_heuristic``) and :func:`shift_edge`
  (``shift_footprint``): proposals that move the motif inside the kernel, for the greedy stages
  of the fit schedule, which keep them only if the objective improves.
"""

from __future__ import annotations

import numpy as np
import torch

from .predictor import PSAMPredictor
from .psam import PSAM


@torch.no_grad()
def fix_gauge(net: PSAMPredictor) -> None:
    """Mean-centre every mode's betas and position bias, the constant moved into its bias.

    Skipped for PSAMs with ``normalize`` (centred when used); pairwise centring needs the
    default symmetry (no shared positions)."""
    for mode in net.modes:
        psam, conv = mode.psam, mode.layers[0]
        if psam.normalize:
            continue
        if psam.pairwise_distance and _default_symmetry(psam) and psam.pairwise.numel():
            for r, (p, q) in enumerate(psam.pairwise_keys):
                pair = psam.pairwise[r]  # (O, A, A): letter at p (first), letter at q (second)
                rows = pair.mean(2, keepdim=True)
                pair -= rows
                cols = pair.mean(1, keepdim=True)
                pair -= cols
                psam.monomer[p - 1] += rows[..., 0]
                psam.monomer[q - 1] += cols[:, 0, :]
        uses = torch.bincount(psam._mono_index, minlength=len(psam.monomer_keys)).to(psam.monomer.dtype)
        means = psam.monomer.mean(-1)  # (n_keys, O)
        psam.monomer -= means[..., None]
        shift = (means * uses[:, None]).sum(0)  # (O,): what every window of motif o lost
        if conv.log_posbias.numel() and not conv.normalize and bool(conv.log_posbias.ne(0).any()):
            m = conv.log_posbias.mean()
            conv.log_posbias -= m
            shift = shift + m
        psam.bias += shift[:, None]


def _default_symmetry(psam: PSAM) -> bool:
    return psam.symmetry.tolist() == list(range(1, psam.kernel_size + 1))


def can_move(psam: PSAM) -> bool:
    """Footprint moves apply to one motif of default symmetry without pairwise terms."""
    return _default_symmetry(psam) and psam.monomer.shape[1] == 1 and not bool(psam.pairwise.ne(0).any()) and psam.kernel_size >= 3


def information(betas: np.ndarray) -> np.ndarray:
    """Bits per position of the letter distribution ``softmax(betas)`` of (K, A) betas."""
    p = np.exp(betas - betas.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.log2(betas.shape[1]) + (p * np.log2(np.clip(p, 1e-300, None))).sum(1)


def _move(psam: PSAM, shift: int) -> None:
    """Betas moved ``shift`` positions right (left if negative); positions moved in start at 0."""
    values = torch.zeros_like(psam.monomer)
    if shift > 0:
        values[shift:] = psam.monomer[:-shift]
    else:
        values[:shift] = psam.monomer[-shift:]
    psam.monomer.copy_(values)


@torch.no_grad()
def recenter(psam: PSAM, tried: list[int]) -> int:
    """Move the motif so that the centre of mass of its information sits mid-kernel.

    Returns the shift made (0: none, or one already in ``tried``, which is extended)."""
    if not can_move(psam):
        return 0
    bits = information(psam.monomer[:, 0, :].double().cpu().numpy())
    if bits.sum() <= 0:
        return 0
    centre = float((np.arange(len(bits)) * bits).sum() / bits.sum())
    shift = int(round((len(bits) - 1) / 2 - centre))
    if shift == 0 or shift in tried:
        return 0
    tried.append(shift)
    _move(psam, shift)
    return shift


@torch.no_grad()
def shift_edge(psam: PSAM, offset: int, tried: list[int], threshold: float = 0.3) -> int:
    """Move the motif one position towards an edge position with less than ``threshold`` bits
    (that edge is dropped, a zero position enters on the other side); each total offset is
    tried once. ``offset`` is the total so far; returns the step made (0: none)."""
    if not can_move(psam):
        return 0
    bits = information(psam.monomer[:, 0, :].double().cpu().numpy())
    for edge, step in sorted([(bits[0], -1), (bits[-1], 1)]):
        if edge >= threshold or offset + step in tried:
            continue
        tried.append(offset + step)
        _move(psam, step)
        return step
    return 0
