"""The ``saluki`` plugin: Saluki (Agarwal & Kelley 2022), a CNN + GRU for mRNA half-life.

Hook implementations only; the model lives in :mod:`biolm.plugins.saluki.model` and is imported
when a model is built, so listing plugins stays cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from biolm.core.hookspecs import ConfigError, ModelSpec, PluginConfig, hookimpl, opt

TRAIN = {"fine-tune"}


@dataclass
class SalukiSchema:
    filters: int = opt(64, "Convolution filters and GRU units.", minimum=1, modes=TRAIN)
    kernel_size: int = opt(5, "Convolution kernel width.", minimum=1, modes=TRAIN)
    num_layers: int = opt(6, "Number of LayerNorm-ReLU-Conv-Dropout-MaxPool blocks.", minimum=0, modes=TRAIN)
    dropout: float = opt(0.3, "Dropout after each block's convolution and after the dense layer.", minimum=0.0, maximum=1.0, modes=TRAIN)
    ln_epsilon: float = opt(0.007, "LayerNorm epsilon (added to the variance).", minimum=0.0, modes=TRAIN)
    bn_momentum: float = opt(0.9, "BatchNorm moving-average momentum, Keras convention (torch momentum = 1 - this).", minimum=0.0, maximum=1.0, modes=TRAIN)
    augment_shift: int = opt(3, "Training-only random shift augmentation of 0..augment_shift positions.", minimum=0, modes=TRAIN)
    go_backwards: bool = opt(True, "The GRU reads from the 3' end to the 5' end (as the original).", modes=TRAIN)
    l2_scale: float = opt(1e-3, "L2 penalty on convolution and dense kernels (added to the loss).", minimum=0.0, modes=TRAIN)


def _build(model_cfg: SalukiSchema, info):
    from biolm.core.hookspecs import InputAdapter

    from .model import Saluki

    try:
        net = Saluki(in_channels=info.in_channels, seq_length=info.blocksize, num_outputs=info.n_outputs, **dataclasses.asdict(model_cfg))
    except ValueError as exc:
        raise ConfigError("settings.training.blocksize", str(exc)) from None
    return InputAdapter(net, ("x", "lengths"))


def _penalty(model):
    """Keras-style L2 on the kernels (``l2_scale``)."""
    return model.net.l2_penalty()


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="saluki",
            description="Saluki CNN+GRU (Agarwal & Kelley 2022) for mRNA sequences, e.g. half-life.",
            model_schema=SalukiSchema,
            training_defaults=dict(lr=1e-4, beta1=0.9, beta2=0.998, clipnorm=0.5, batchsize=64, blocksize=12288, optimizer="adam", weightdecay=0.0),
            modes=("tokenize", "fine-tune", "predict", "interpret"),
            fixed_length=True,
            min_blocksize=1,
            max_blocksize=1 << 17,  # 131,072 nt: longer than any mRNA; the paper reads 12,288
        )
    )


def _fast_loo(model, inp, n, positions, rows):
    """Exact single-position leave-one-out reusing the unperturbed activations (fastISM's idea)."""
    from .fastloo import fast_loo

    return fast_loo(model, inp, n, positions, rows)


@hookimpl
def register_model(register):
    register("saluki", ModelSpec(build=_build, fast_loo=_fast_loo, penalty=_penalty))
