"""The oracle every fast leave-one-out routine is tested against: full forward passes of the
perturbed one-hot inputs (what the core's fallback computes), batched."""

from __future__ import annotations

import torch


def full_forward_loo(model, inp: dict, positions, rows, batch: int = 128) -> torch.Tensor:
    """Outputs (P, n_outputs) of ``model`` for copies of ``inp["x"]`` (1, L, C) with row
    ``positions[j]`` replaced by ``rows[j]`` (C,); ``inp["lengths"]`` is passed on when present.

    Each copy is built with a one-hot position mask (independently of how the plugins' own
    routines index their inputs)."""
    x = inp["x"]
    lengths = inp.get("lengths")
    pos = torch.as_tensor(positions, device=x.device).long().reshape(-1)
    rows = torch.as_tensor(rows, device=x.device).to(x.dtype)
    chunks = []
    with torch.no_grad():
        for part in torch.split(torch.arange(len(pos), device=x.device), batch):
            at = torch.nn.functional.one_hot(pos[part], x.shape[1]).bool()[:, :, None]  # (B, L, 1)
            copies = torch.where(at, rows[part][:, None, :], x)
            extra = {} if lengths is None else {"lengths": lengths.expand(len(part))}
            chunks.append(model({"x": copies, **extra}))
    return torch.cat(chunks)
