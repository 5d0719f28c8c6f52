"""PyProBound weights in and out: ``Mode.state_dict()`` values under PyProBound's names.

PyProBound keeps one 0-d parameter per beta (``layers.0.layer_spec.betas.3-2``,
``betas.1-2-7``); biolm's :class:`~.psam.PSAM` keeps them in the ``monomer`` / ``pairwise``
tensors. All other names (``layers.0.layer_spec.bias``, ``layers.0.log_posbias``, ``log_hill``,
the length buffers) are PyProBound's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .convolution import Mode
from .psam import parse_key

__all__ = ["load_pyprobound_weights", "pyprobound_state_dict"]


def _as_tensor(value: Any) -> Tensor:
    return value.detach().clone() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))


@torch.no_grad()
def load_pyprobound_weights(
    mode: Mode, weights: Mapping[str, Any], prefix: str = "", strict: bool = True
) -> None:
    """Load PyProBound ``Mode.state_dict()`` values (names as PyProBound writes them).

    Parameters
    ----------
    mode : Mode
        Built with the same kernel, alphabet, symmetry, pairwise distance and input shape.
    weights : mapping of str to array or Tensor
        For example ``np.load("weights.npz")``; helper keys (``derived/...``,
        ``materialised/...``) and keys outside ``prefix`` are ignored.
    prefix : str, default ""
        Prefix of the mode's keys in ``weights`` (``"binding.0."``).
    strict : bool, default True
        Raise on missing or unexpected keys and on buffer mismatches.
    """
    conv = mode.layers[0]
    psam = conv.layer_spec
    n_letters = psam.in_channels
    mono_row = {k: r for r, k in enumerate(psam.monomer_keys)}
    pair_row = {k: r for r, k in enumerate(psam.pairwise_keys)}
    beta_prefix = "layers.0.layer_spec.betas."
    expected = set(pyprobound_state_dict(mode))
    seen: set[str] = set()
    unexpected = []
    for full_key, value in weights.items():
        if not full_key.startswith(prefix) or "/" in full_key:
            continue
        key = full_key[len(prefix) :]
        tensor = _as_tensor(value)
        if key.startswith(beta_prefix):
            positions, j = parse_key(key[len(beta_prefix) :])
            if len(positions) == 1 and positions[0] in mono_row:
                psam.monomer.view(len(psam.monomer_keys), -1)[mono_row[positions[0]], j] = tensor
            elif len(positions) == 2 and tuple(sorted(positions)) in pair_row:
                o, rest = divmod(j, n_letters * n_letters)
                a, b = divmod(rest, n_letters)
                psam.pairwise[pair_row[tuple(sorted(positions))], o, a, b] = tensor
            else:
                unexpected.append(key)
                continue
        elif key == "layers.0.layer_spec.bias":
            psam.bias.copy_(tensor.view_as(psam.bias))
        elif key == "layers.0.log_posbias":
            if tensor.shape != conv.log_posbias.shape:
                raise ValueError(
                    f"log_posbias shape {tuple(tensor.shape)} != {tuple(conv.log_posbias.shape)}"
                )
            conv.log_posbias.copy_(tensor)
        elif key == "log_hill":
            mode.log_hill.copy_(tensor.view_as(mode.log_hill))
        elif key in ("layers.0.layer_spec.symmetry", "layers.0._input_shape"):
            # Buffers that fix the parameter layout must agree; length bounds are informative.
            own = psam.symmetry if key.endswith("symmetry") else conv._input_shape
            if strict and not torch.equal(own.cpu(), tensor.to(own.dtype).view_as(own)):
                raise ValueError(f"{key}: model has {own.tolist()}, weights have {tensor.tolist()}")
        elif key in ("layers.0._min_input_length", "layers.0._max_input_length"):
            if conv.length_specific_bias:
                own = getattr(conv, key.split(".")[-1])
                if strict and int(own) != int(tensor):
                    raise ValueError(f"{key}: model has {int(own)}, weights have {int(tensor)}")
        else:
            unexpected.append(key)
            continue
        seen.add(key)
    missing = sorted(expected - seen - {"layers.0._min_input_length", "layers.0._max_input_length"})
    if strict and (missing or unexpected):
        raise KeyError(
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}; unexpected {unexpected[:8]}"
        )


@torch.no_grad()
def pyprobound_state_dict(mode: Mode) -> dict[str, Tensor]:
    """The mode's parameters under PyProBound's ``Mode.state_dict()`` names (0-d beta tensors)."""
    conv = mode.layers[0]
    psam = conv.layer_spec
    out: dict[str, Tensor] = {"log_hill": mode.log_hill.detach().clone()}
    out["layers.0.log_posbias"] = conv.log_posbias.detach().clone()
    out["layers.0._input_shape"] = conv._input_shape.clone()
    out["layers.0._min_input_length"] = conv._min_input_length.clone()
    out["layers.0._max_input_length"] = conv._max_input_length.clone()
    out["layers.0.layer_spec.bias"] = psam.bias.detach().clone()
    out["layers.0.layer_spec.symmetry"] = psam.symmetry.clone()
    for r, v in enumerate(psam.monomer_keys):
        for j, value in enumerate(psam.monomer[r].detach().flatten()):
            out[f"layers.0.layer_spec.betas.{v}-{j}"] = value.clone()
    for r, (p, q) in enumerate(psam.pairwise_keys):
        for j, value in enumerate(psam.pairwise[r].detach().flatten()):
            out[f"layers.0.layer_spec.betas.{p}-{q}-{j}"] = value.clone()
    return out
