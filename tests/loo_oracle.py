"""The oracle every fast leave-one-out routine is tested against: full forward passes of the
perturbed one-hot inputs (what the core's fallback computes), batched."""

from __future__ import annotations

import torch


def full_forward_loo(model, inp: dict, positions, rows, batch: int = 128) -> torch.Tensor:
    """Outputs (P, n_outputs) of ``model`` for copies of ``inp["x"]`` (1, L, C) with row
    ``positions[j]`` replaced by ``rows[j]`` (C,); ``inp["lengths"]`` is passed on when present."""
    x = inp["x"]
    lengths = inp.get("lengths")
    pos = torch.as_tensor(positions, device=x.device).long().reshape(-1)
    rows = torch.as_tensor(rows, device=x.device).to(x.dtype)
    outs = []
    with torch.no_grad():
        for s in range(0, len(pos), batch):
            p = pos[s: s + batch]
            xb = x.repeat(len(p), 1, 1)
            xb[torch.arange(len(p), device=x.device), p] = rows[s: s + batch]
            b = {"x": xb} if lengths is None else {"x": xb, "lengths": lengths.repeat(len(p))}
            outs.append(model(b))
    return torch.cat(outs)
