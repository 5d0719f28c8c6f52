"""Wrap a model whose ``forward`` takes tensors so that it takes the engine's input dict."""

from __future__ import annotations

from typing import Any, Callable

import torch


class InputAdapter(torch.nn.Module):
    """``forward(batch)`` -> ``net(*[batch[k] for k in keys])``.

    The wrapped module is ``self.net`` (state-dict keys gain a ``net.`` prefix). Optional
    capabilities of the net (``embed``, ``load_pretrained``) are passed through; ``penalty`` is a
    callable returning an extra loss term (e.g. L1/L2 on kernels), or None.
    """

    def __init__(self, net: torch.nn.Module, keys: tuple[str, ...] = ("x",), penalty: Callable[[], torch.Tensor] | None = None):
        super().__init__()
        self.net = net
        self.keys = keys
        self._penalty = penalty

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(*[batch[k] for k in self.keys])

    def penalty(self) -> torch.Tensor | float:
        return self._penalty() if self._penalty is not None else 0.0

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            net = super().__getattr__("net")
            if name in ("embed", "load_pretrained") and hasattr(net, name):
                attr = getattr(net, name)
                if name == "embed":
                    return lambda batch: attr(*[batch[k] for k in self.keys])
                return attr
            raise
