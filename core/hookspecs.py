"""The plugin author's API: every hook biolm calls, and the spec objects they register.

A plugin is a module listed under the ``biolm`` entry-point group::

    [project.entry-points.biolm]
    myplug = "myplug.plugin"

whose module defines functions marked with :data:`hookimpl`. Three hooks describe a model
(``register_config``, ``register_tokenizer``, ``register_model``); the training-event hooks let any
installed package observe or steer training without touching the engine.

Keep the plugin's entry module cheap to import (no torch at import time): ``biolm --help``
imports every plugin to list it. Import torch inside the ``build`` functions instead.

This module is versioned by :data:`BIOLM_PLUGIN_API`; a plugin may check it and refuse to load
against an API it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

BIOLM_PLUGIN_API = 1

hookspec = pluggy.HookspecMarker("biolm")
hookimpl = pluggy.HookimplMarker("biolm")

MODES = ("tokenize", "pre-train", "fine-tune", "predict", "interpret")


@dataclass(frozen=True)
class PluginConfig:
    """What a plugin is and which configuration it adds.

    Parameters
    ----------
    name : the command name (``biolm NAME ...``); lower case, no spaces.
    description : one line for ``biolm --help`` and ``biolm plugins``.
    model_schema : a dataclass type whose fields (declared with :func:`biolm.core.schema.opt`)
        are the keys of the YAML ``model:`` section, with defaults and help.
    training_defaults : overrides of core defaults for ``settings`` keys
        (e.g. ``{"lr": 1e-4, "batchsize": 64, "blocksize": 12288, "clipnorm": 0.5}``).
    modes : the modes this plugin supports (a subset of :data:`MODES`).
    tokenizer : the tokenizer kind it uses (``"atomic"`` one-hot sequences, or a kind the plugin
        registers itself through ``register_tokenizer``).
    version : the plugin's version, shown by ``biolm plugins``.
    fixed_length : batches are padded to ``blocksize`` (models with a fixed input size), instead
        of to the longest sequence in the batch.
    min_blocksize : the smallest block size the model accepts (checked before training).
    """

    name: str
    description: str
    model_schema: type | None = None
    training_defaults: dict[str, Any] = field(default_factory=dict)
    modes: tuple[str, ...] = ("tokenize", "fine-tune", "predict", "interpret")
    tokenizer: str = "atomic"
    version: str = ""
    fixed_length: bool = False
    min_blocksize: int = 1


@dataclass(frozen=True)
class ModelSpec:
    """How to build and use a plugin's model.

    Parameters
    ----------
    build : ``build(model_cfg, info) -> torch.nn.Module``. ``model_cfg`` is the resolved ``model:``
        section (an instance of the plugin's ``model_schema``); ``info`` is a
        :class:`biolm.core.spec.ModelInfo` (task, number of outputs, input channels, block size,
        tokenizer). The module's ``forward(batch)`` takes the dict made by the tokenizer spec's
        ``make_input`` and returns ``(B, n_outputs)`` (regression values or class logits).
    pretrain_loss : optional ``pretrain_loss(model, batch, generator) -> loss`` or
        ``(loss, n_scored)`` (a scalar tensor and the number of scored tokens) for ``pre-train``
        (masked-LM and the like); ``generator`` is a seeded ``torch.Generator`` for the masking.
    fast_loo : optional ``fast_loo(model, inp, n, positions, rows) -> (P, n_outputs)``: raw outputs
        of ``model`` for P copies of the one-sequence input ``inp`` (``inp["x"]`` is (1, L, C), real
        length ``n``) in which row ``positions[j]`` is replaced by ``rows[j]`` (C,), for
        ``mask``/``replace`` leave-one-out. Must equal the full forward passes (the core's fallback
        and the reference in tests) to within float tolerance.
    fit : optional ``fit(model, batches, train_idx, task, cfg)`` for models that are fitted in one
        pass instead of by gradient descent (e.g. incremental PCA + a closed-form head).
    export : optional ``export(model, folddir)`` writing plugin-specific artefacts next to a
        trained fold (e.g. learned motifs).
    """

    build: Callable[..., Any]
    pretrain_loss: Callable[..., Any] | None = None
    fast_loo: Callable[..., Any] | None = None
    fit: Callable[..., Any] | None = None
    export: Callable[..., Any] | None = None


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer kind: how to learn it, load it, encode a data source and feed the model.

    Parameters
    ----------
    fit : ``fit(source, cfg, log) -> tokenizer`` learns it on a data-source section
        (``cfg.tokenizing_source``); ``log`` is a :class:`logging.Logger`.
    load : ``load(path) -> tokenizer`` reads ``tokenizer.json``.
    encode : ``encode(tokenizer, source, cfg, log, label_kind) -> (records, options)``:
        ``records`` iterates :class:`biolm.core.store.EncodedRecord` (streaming), ``options`` is
        a dict of every parsing option that changes the encoding (hashed to reuse the store).
    make_input : ``make_input(tokenizer, batch, cfg) -> dict`` turns a collated store batch
        (``ids`` (B, L) int64 with -1 for padding/unknown, ``mods`` (B, L, M) float32,
        ``lengths`` (B,)) into the model's input dict, on the batch's device.
    """

    fit: Callable[..., Any]
    load: Callable[..., Any]
    encode: Callable[..., Any]
    make_input: Callable[..., Any]


@hookspec
def register_config(register: Callable[[PluginConfig], None]) -> None:
    """Declare a plugin: call ``register(PluginConfig(...))`` once. Called at start-up; keep it cheap."""


@hookspec
def register_tokenizer(register: Callable[[str, TokenizerSpec], None]) -> None:
    """Offer a tokenizer kind: ``register("kind", TokenizerSpec(...))``. Optional for plugins that use
    core's ``atomic`` tokenizer."""


@hookspec
def register_model(register: Callable[[str, ModelSpec], None]) -> None:
    """Provide the model of plugin ``name``: ``register(name, ModelSpec(...))``."""


# Training events (LUMIN's callback points). ``state`` is a biolm.core.engine.TrainState: it
# carries the plugin name, fold, epoch, step, model, optimizer, current batch, loss and metrics.
# Implementations may read it and set ``state.stop_training = True``.


@hookspec
def on_train_begin(state: Any) -> None:
    """Before the first epoch of a fold."""


@hookspec
def on_epoch_begin(state: Any) -> None:
    """At the start of each training epoch."""


@hookspec
def on_batch_begin(state: Any) -> None:
    """Before the forward pass of a training batch (``state.batch`` is set)."""


@hookspec
def on_after_backward(state: Any) -> None:
    """After ``loss.backward()``, before gradient clipping and the optimizer step."""


@hookspec
def on_batch_end(state: Any) -> None:
    """After the optimizer step (``state.loss`` holds the batch loss)."""


@hookspec
def on_epoch_end(state: Any) -> None:
    """After validation of an epoch (``state.metrics`` holds train and validation figures)."""


@hookspec
def on_train_end(state: Any) -> None:
    """After the last epoch of a fold, with the best weights restored."""
