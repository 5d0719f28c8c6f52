"""The ``lcl`` plugin: EIR's locally connected network ("genome-local-net", eir-dl 0.25.0).

The one-hot sequence of a fixed block size is flattened position by position and fed to the
LCL feature extractor, then to a small regression/classification head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from biolm.core.hookspecs import ConfigError, ModelSpec, PluginConfig, hookimpl, opt, parsers

TRAIN = {"fine-tune"}


@dataclass
class LCLSchema:
    layers: list | None = opt(None, "Residual blocks per stage, e.g. [2, 2]; unset = automatic setup from cutoff.", parse=parsers.INT_LIST, false_is_unset=True, modes=TRAIN)
    kernel_width: int = opt(12, "Width of each locally connected kernel on the flattened input (12 = 12/C positions).", minimum=1, modes=TRAIN)
    first_kernel_expansion: int = opt(-2, "First kernel = kernel_width x this (negative: divided by it).", modes=TRAIN)
    channel_exp_base: int = opt(2, "Weight sets per layer = 2**channel_exp_base.", minimum=0, modes=TRAIN)
    first_channel_expansion: int = opt(1, "Factor on the first layer's weight sets (negative: divided).", modes=TRAIN)
    num_lcl_chunks: int | None = opt(None, "Number of chunks of the first layer (sets the kernel width when kernel_width is unset).", parse=parsers.INT, minimum=1, modes=TRAIN)
    rb_do: float = opt(0.1, "Dropout in the residual blocks.", minimum=0.0, maximum=1.0, modes=TRAIN)
    stochastic_depth_p: float = opt(0.0, "Stochastic depth probability.", minimum=0.0, maximum=1.0, modes=TRAIN)
    l1: float = opt(0.0, "L1 penalty on the first layer's weights.", minimum=0.0, modes=TRAIN)
    cutoff: int = opt(1024, "Automatic setup adds blocks until the feature size drops below this.", minimum=1, modes=TRAIN)
    direction: str = opt("down", "down: representations shrink through the network; up: they grow.", choices=("down", "up"), modes=TRAIN)
    attention_inclusion_cutoff: int | None = opt(None, "Add attention blocks once the length dimension is at most this; unset = none.", parse=parsers.INT, minimum=1, modes=TRAIN)
    head_hidden: int = opt(256, "Hidden width of the regression/classification head.", minimum=1, modes=TRAIN)
    head_dropout: float = opt(0.1, "Dropout in the head.", minimum=0.0, maximum=1.0, modes=TRAIN)


def _build(model_cfg: LCLSchema, info):
    from biolm.core.hookspecs import InputAdapter

    from .model import LCLPredictor

    kw = dataclasses.asdict(model_cfg)
    try:
        net = LCLPredictor(info.blocksize, info.in_channels, info.n_outputs, **kw)
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    return InputAdapter(net, ("x",))


def _penalty(model):
    """L1 on the first locally connected layer (``l1``; zero when 0)."""
    return model.net.l1_penalty()


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="lcl",
            description="EIR's locally connected network (genome-local-net) on fixed-length one-hot sequences.",
            model_schema=LCLSchema,
            training_defaults=dict(lr=1e-3, weightdecay=1e-4, batchsize=32, blocksize=1024, optimizer="adamw"),
            modes=("tokenize", "fine-tune", "predict", "interpret"),
            fixed_length=True,
            max_blocksize=1 << 17,  # its first layer's weights grow with the input length
        )
    )


def _fast_loo(model, inp, n, positions, rows):
    """Exact single-position leave-one-out: the change runs sparsely through the first locally connected layers."""
    from .fastloo import fast_loo

    return fast_loo(model, inp, n, positions, rows)


@hookimpl
def register_model(register):
    register("lcl", ModelSpec(build=_build, penalty=_penalty, fast_loo=_fast_loo))
