"""Wrap a model whose ``forward`` takes tensors so that it takes the engine's input dict."""

from __future__ import annotations

import torch


class InputAdapter(torch.nn.Module):
    """``forward(batch)`` -> ``net(*[batch[k] for k in keys])``.

    The wrapped module is ``self.net`` (state-dict keys gain a ``net.`` prefix); capabilities such
    as embeddings or penalties are declared on the plugin's ``ModelSpec`` and reach the net
    through ``model.net``.
    """

    def __init__(self, net: torch.nn.Module, keys: tuple[str, ...] = ("x",)):
        super().__init__()
        self.net = net
        self.keys = keys

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(*[batch[k] for k in self.keys])

    def inputs(self, batch: dict) -> list:
        """The tensors ``net`` takes, from an input dict (for ``embed``-style calls)."""
        return [batch[k] for k in self.keys]
