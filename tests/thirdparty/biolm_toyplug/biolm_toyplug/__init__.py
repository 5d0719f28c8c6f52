"""``toyplug``: a tiny third-party biolm plugin.

The model averages the one-hot (+ modifier) channels over the real positions of each sequence and
feeds the mean to one linear layer. Cheap to import: torch is imported inside ``build`` only.

Setting the environment variable ``TOYPLUG_EPOCH_LOG`` to a file path makes the plugin append the
(0-based) epoch number to that file after every training epoch (the ``on_epoch_end`` event).
``TOYPLUG_FAIL_BUILD=1`` makes building the model fail with a RuntimeError (tests of exit code 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from biolm.core.hookspecs import BIOLM_PLUGIN_API, ModelSpec, PluginConfig, hookimpl, opt

if BIOLM_PLUGIN_API != 2:  # refuse an API this plugin was not written for
    raise ImportError(f"biolm-toyplug needs BIOLM_PLUGIN_API 2, found {BIOLM_PLUGIN_API}")

TRAIN = {"fine-tune"}


@dataclass
class ToySchema:
    bias: bool = opt(True, "Give the linear layer a bias.", modes=TRAIN)
    init_scale: float = opt(1.0, "Multiply the initial weights by this.", minimum=0.0, modes=TRAIN)


def _build(model_cfg: ToySchema, info):
    if os.environ.get("TOYPLUG_FAIL_BUILD"):
        raise RuntimeError("toyplug: model build failed on purpose (TOYPLUG_FAIL_BUILD)")
    import torch

    from biolm.core.hookspecs import InputAdapter

    class MeanLinear(torch.nn.Module):
        """``x`` (B, L, C) one-hot + modifiers, ``lengths`` (B,) -> (B, n_outputs)."""

        def __init__(self, channels: int, n_outputs: int):
            super().__init__()
            self.linear = torch.nn.Linear(channels, n_outputs, bias=model_cfg.bias)
            with torch.no_grad():
                self.linear.weight.mul_(model_cfg.init_scale)

        def forward(self, x, lengths):
            mean = x.sum(dim=1) / lengths.clamp(min=1).to(x.dtype)[:, None]
            return self.linear(mean)

    return InputAdapter(MeanLinear(info.in_channels, info.n_outputs), ("x", "lengths"))


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="toyplug",
            description="Toy third-party plugin: mean one-hot composition -> linear layer.",
            model_schema=ToySchema,
            training_defaults=dict(lr=1e-2, batchsize=8, blocksize=256, nepochs=3, patience=2),
            modes=("tokenize", "fine-tune", "predict", "interpret"),
            version="0.0.1",
        )
    )


@hookimpl
def register_model(register):
    register("toyplug", ModelSpec(build=_build))


@hookimpl
def on_epoch_end(state):
    path = os.environ.get("TOYPLUG_EPOCH_LOG")
    if path and state.plugin == "toyplug":
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{state.epoch}\n")
