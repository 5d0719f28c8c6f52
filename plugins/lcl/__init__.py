"""The ``lcl`` plugin: EIR's locally connected network ("genome-local-net", eir-dl 0.25.0).

Two inputs, the tokenizer kind chosen from the data file: one-hot sequences of a fixed block
size (``atomic``; delimited text), or EIR's array input (``array``; ``.npy``/``.npz``, channels
first, e.g. one-hot genotypes of shape (4, n_snps)), normalised as EIR does (``normalization``,
fitted on each fold's training split and saved with it). The input (L, C) is flattened position
by position and fed to the LCL feature extractor, then to a small regression/classification head.
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
    normalization: str = opt("channel", "Array input: EIR's normalization fitted on the training split: channel, element or none.", choices=("channel", "element", "none"), modes=TRAIN)
    adaptive_normalization_max_samples: int | None = opt(None, "Array input: fit the normalization on at most this many (random) training samples; unset = all.", parse=parsers.INT, minimum=1, modes=TRAIN)

    def network_options(self) -> dict:
        """The keyword arguments of :class:`~.network.LCLPredictor` (the input options removed)."""
        kw = dataclasses.asdict(self)
        del kw["normalization"], kw["adaptive_normalization_max_samples"]
        return kw


def _build(model_cfg: LCLSchema, info):
    from biolm.core.hookspecs import ArrayNormalization, InputAdapter

    from .network import LCLPredictor

    norm = ArrayNormalization(info.blocksize, info.in_channels, model_cfg.normalization) if info.input_kind == "array" else None
    try:
        net = LCLPredictor(info.blocksize, info.in_channels, info.n_outputs, input_normalization=norm, **model_cfg.network_options())
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    return InputAdapter(net, ("x",))


def _fit_inputs(model, batches, train_idx, model_cfg: LCLSchema):
    """EIR's array normalization, fitted on the fold's training split (array input only)."""
    if model.net.input_norm is not None:
        model.net.input_norm.fit(batches, train_idx, model_cfg.adaptive_normalization_max_samples)


def _penalty(model):
    """L1 on the first locally connected layer (``l1``; zero when 0)."""
    return model.net.l1_penalty()


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="lcl",
            description="EIR's locally connected network (genome-local-net) on fixed-length one-hot sequences or .npy arrays.",
            model_schema=LCLSchema,
            training_defaults=dict(lr=1e-3, weightdecay=1e-4, batchsize=32, blocksize=1024, optimizer="adamw"),
            modes=("tokenize", "fine-tune", "predict", "interpret"),
            tokenizers=("atomic", "array"),
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
    register("lcl", ModelSpec(build=_build, penalty=_penalty, fit_inputs=_fit_inputs, fast_loo=_fast_loo))
