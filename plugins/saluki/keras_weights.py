"""Loading the Keras weights of calico/basenji's Saluki into :class:`~.model.Saluki`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .model import Saluki


def _keras_gru_to_torch(m: np.ndarray, hid: int) -> np.ndarray:
    """Keras (in, 3H) columns [z | r | h] -> torch (3H, in) rows [r | z | n]."""
    z, r, h = m[..., :hid], m[..., hid: 2 * hid], m[..., 2 * hid:]
    return np.concatenate([r, z, h], axis=-1).T


def load_keras_weights(model: Saluki, weights: Mapping[str, np.ndarray]) -> None:
    """Copy weights of the Keras ``RnaNN`` (fixture names, Keras layouts) into ``model``.

    Parameters
    ----------
    model : Saluki
    weights : mapping
        ``conv0.kernel`` (K, C_in, F); ``block{i}.ln.gamma|beta`` (F,); ``block{i}.conv.kernel``
        (K, F, F) and ``.bias`` (F,); ``final_ln.gamma|beta``; ``gru.kernel`` and
        ``gru.recurrent_kernel`` (F, 3F) with gate columns z, r, h; ``gru.bias`` (2, 3F) with
        rows input bias, recurrent bias; ``bn{1,2}.gamma|beta|moving_mean|moving_variance``;
        ``dense1.kernel`` (F, F), ``dense1.bias``; ``head.kernel`` (F, outputs), ``head.bias``.
        Keys starting with ``_`` are ignored.

    Raises
    ------
    KeyError
        A weight is missing or unexpected.
    ValueError
        A shape does not match the model.
    """
    hid = model.filters
    targets: dict[str, tuple[torch.Tensor, np.ndarray]] = {}

    def put(key: str, tensor: torch.Tensor, value: np.ndarray) -> None:
        targets[key] = (tensor, value)

    def conv(k: np.ndarray) -> np.ndarray:  # Keras (K, in, out) -> torch (out, in, K)
        return np.transpose(k, (2, 1, 0))

    w = {k: np.asarray(v) for k, v in weights.items() if not k.startswith("_")}
    get = w.__getitem__
    put("conv0.kernel", model.conv0.weight, conv(get("conv0.kernel")))
    for i, blk in enumerate(model.blocks):
        put(f"block{i}.ln.gamma", blk.ln.weight, get(f"block{i}.ln.gamma"))
        put(f"block{i}.ln.beta", blk.ln.bias, get(f"block{i}.ln.beta"))
        put(f"block{i}.conv.kernel", blk.conv.weight, conv(get(f"block{i}.conv.kernel")))
        put(f"block{i}.conv.bias", blk.conv.bias, get(f"block{i}.conv.bias"))
    put("final_ln.gamma", model.final_ln.weight, get("final_ln.gamma"))
    put("final_ln.beta", model.final_ln.bias, get("final_ln.beta"))
    put("gru.kernel", model.gru.weight_ih_l0, _keras_gru_to_torch(get("gru.kernel"), hid))
    put("gru.recurrent_kernel", model.gru.weight_hh_l0, _keras_gru_to_torch(get("gru.recurrent_kernel"), hid))
    bias = get("gru.bias")
    if bias.shape != (2, 3 * hid):
        raise ValueError(f"gru.bias: expected shape (2, {3 * hid}) (reset_after=True), got {bias.shape}")
    targets["gru.bias[0]"] = (model.gru.bias_ih_l0, _keras_gru_to_torch(bias[0], hid))
    targets["gru.bias[1]"] = (model.gru.bias_hh_l0, _keras_gru_to_torch(bias[1], hid))
    for name, bn in (("bn1", model.bn1), ("bn2", model.bn2)):
        put(f"{name}.gamma", bn.weight, get(f"{name}.gamma"))
        put(f"{name}.beta", bn.bias, get(f"{name}.beta"))
        put(f"{name}.moving_mean", bn.running_mean, get(f"{name}.moving_mean"))
        put(f"{name}.moving_variance", bn.running_var, get(f"{name}.moving_variance"))
    put("dense1.kernel", model.dense1.weight, get("dense1.kernel").T)
    put("dense1.bias", model.dense1.bias, get("dense1.bias"))
    put("head.kernel", model.head.weight, get("head.kernel").T)
    put("head.bias", model.head.bias, get("head.bias"))

    used = {k.split("[")[0] for k in targets}
    extra = sorted(set(w) - used)
    if extra:
        raise KeyError(f"unexpected Keras weights for this Saluki configuration: {extra}")
    for key, (tensor, value) in targets.items():
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(f"{key}: Keras shape {value.shape} maps to {tuple(value.shape)}, "
                             f"model expects {tuple(tensor.shape)}")
    with torch.no_grad():
        for tensor, value in targets.values():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(tensor.dtype))
