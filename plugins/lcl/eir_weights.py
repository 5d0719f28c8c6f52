"""Loading EIR 0.25.0 ``LCLModel`` weights into :class:`~.network.LCLModel` (same names and shapes)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .network import LCLModel, LCLPredictor

__all__ = ["load_eir_weights"]


def load_eir_weights(
    model: LCLModel | LCLPredictor, weights: Mapping[str, np.ndarray | torch.Tensor]
) -> None:
    """Copy an EIR 0.25.0 ``LCLModel`` state dict into ``model``.

    Parameter names are identical to EIR's, so this is a strict ``load_state_dict`` (into
    ``model.body`` for an :class:`LCLPredictor`, whose head stays as it is). Names from a whole EIR
    model (``...feature_extractor.fc_0.weight``) are cut after their last ``feature_extractor.``;
    pass only the one input's extractor weights.
    Values are cast to the model's dtype; missing, unexpected or mis-shaped entries raise.

    Parameters
    ----------
    model : LCLModel or LCLPredictor
    weights : mapping of str to array
        EIR names such as ``fc_0.weight`` (``(O, C, K)``) or ``lcl_blocks.0.ls.gamma``.
    """
    target = model.body if isinstance(model, LCLPredictor) else model
    own = target.state_dict()
    state: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        key = name
        if key not in own and "feature_extractor." in key:
            key = key.rsplit("feature_extractor.", 1)[1]
        tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if key in own:
            ref = own[key]
            if tuple(tensor.shape) != tuple(ref.shape):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match {tuple(ref.shape)}")
            tensor = tensor.to(dtype=ref.dtype, device=ref.device)
        state[key] = tensor
    target.load_state_dict(state, strict=True)
