"""The plugin author's API — everything a biolm plugin uses is in this one file.

A plugin is a module listed under the ``biolm`` entry-point group::

    [project.entry-points.biolm]
    myplug = "myplug.plugin"

whose module defines functions marked with :data:`hookimpl`. Three hooks describe a model:

- ``register_config``: the plugin's name, description, ``model:`` section and defaults
  (:class:`PluginConfig`);
- ``register_tokenizer`` (optional): a tokenizer kind of its own (:class:`TokenizerSpec`);
  sequence models use core's ``atomic`` one-hot tokenizer;
- ``register_model``: how to build and use the model (:class:`ModelSpec`).

The training-event hooks (``on_train_begin`` ... ``on_train_end``) let any installed package
observe or steer training without touching the engine.

What a plugin may implement is declared here, never probed: the objects it hands to the core
follow :class:`Tokenizer` and :class:`Model`, and every optional capability (embeddings,
pre-trained weights, a loss penalty, a fast leave-one-out routine, extra leave-one-out scores,
one-pass fitting, a staged fit schedule, exports) is a field of :class:`ModelSpec` that is either
set or ``None``.

The helpers at the end (config ``opt``, errors, atomic writes, data readers, ``InputAdapter``)
are the rest of core's public API; a plugin imports nothing else from ``biolm.core``.

Keep the plugin's entry module cheap to import (no torch at import time): ``biolm --help``
imports every plugin to list it. Import torch inside the ``build`` functions instead.

This module is versioned by :data:`BIOLM_PLUGIN_API`; a plugin may check it and refuse to load
against an API it does not know. Version 2 (this one): ``ModelInfo`` moved here; model
capabilities are ``ModelSpec`` fields (``embed``, ``load_pretrained``, ``penalty``,
``architecture``) instead of methods looked up on the model; ``TokenizerSpec.encode`` and
``make_input`` receive an :class:`Encoding` instead of the whole config. Added since, without
breaking version 2 (defaults keep older plugins working): ``ModelSpec.pretrained_weights`` and
``ModelSpec.perturbation_scores``; ``PluginConfig.tokenizers`` (several input kinds),
``TokenizerSpec.accepts`` / ``inputs`` / ``feature_shape`` (which files a kind reads; fixed-shape
feature records), ``ModelSpec.fit_inputs`` (input statistics fitted per fold), ``ModelInfo.input_kind`` and
``ModelSpec.fit_schedule`` (staged training, with :class:`Stage` and :class:`StageContext`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import pluggy

from .modes import MODE_NAMES

BIOLM_PLUGIN_API = 2

hookspec = pluggy.HookspecMarker("biolm")
hookimpl = pluggy.HookimplMarker("biolm")

MODES = MODE_NAMES

# ============================================================================ spec objects


@dataclass(frozen=True)
class PluginConfig:
    """What a plugin is and which configuration it adds.

    Parameters
    ----------
    name : the command name (``biolm NAME ...``); lower case, no spaces. Unique: a second plugin
        registering an existing name is refused.
    description : one line for ``biolm --help`` and ``biolm plugins``.
    model_schema : a dataclass type whose fields (declared with :func:`opt`) are the keys of the
        YAML ``model:`` section, with defaults and help.
    training_defaults : overrides of core defaults for ``settings`` keys
        (e.g. ``{"lr": 1e-4, "batchsize": 64, "blocksize": 12288, "clipnorm": 0.5}``).
    modes : the modes this plugin supports (a subset of :data:`MODES`).
    tokenizer : the tokenizer kind it uses (``"atomic"`` one-hot sequences, or a kind the plugin
        registers itself through ``register_tokenizer``).
    tokenizers : every kind the plugin reads, when it reads more than one input type (e.g.
        ``("atomic", "expression", "array")``: one-hot sequences, ``.h5ad`` cells, ``.npy``
        arrays); ``tokenizer`` must be among them. The kind of a run is then chosen from the
        mode's data file — the first kind whose ``TokenizerSpec.accepts`` takes it — unless
        ``tokenization: encoding`` names one; a file no kind takes is a one-line error listing
        what the plugin reads. Empty = ``tokenizer`` only.
    version : the plugin's version, shown by ``biolm plugins``.
    fixed_length : batches are padded to ``blocksize`` (models with a fixed input size), instead
        of to the longest sequence in the batch.
    min_blocksize : the smallest block size the model accepts (checked before training).
    max_blocksize : the largest block size (tokens per record) the model is meant to read,
        checked before anything is read or allocated (``None`` = no bound). Set it to what the
        architecture can use: a fixed-length model's weights grow with it. Below the bound the
        core still estimates the memory of one batch's input (``batchsize x blocksize`` tokens,
        as ``make_input`` builds them) and refuses a batch that would not fit.
    """

    name: str
    description: str
    model_schema: type | None = None
    training_defaults: dict[str, Any] = field(default_factory=dict)
    modes: tuple[str, ...] = ("tokenize", "fine-tune", "predict", "interpret")
    tokenizer: str = "atomic"
    tokenizers: tuple[str, ...] = ()
    version: str = ""
    fixed_length: bool = False
    min_blocksize: int = 1
    max_blocksize: int | None = 1 << 20

    @property
    def kinds(self) -> tuple[str, ...]:
        """The tokenizer kinds this plugin reads (``tokenizers``, or just ``tokenizer``)."""
        return self.tokenizers or (self.tokenizer,)


@dataclass
class ModelInfo:
    """Facts a model needs to build itself (the second argument of ``ModelSpec.build``).

    Attributes
    ----------
    task : ``"regression"``, ``"classification"`` or ``"pre-train"``.
    n_outputs : regression targets (1) or number of classes (0 for pre-training).
    in_channels : channels C of the model input (one-hot vocabulary + modifier channels; for
        feature inputs the array's first axis, 1 for expression).
    blocksize : maximum (or, for fixed-length models, exact) tokens per sequence: the one value
        that sizes the input; it is saved with a trained model and read back from it. For
        feature inputs, the positions L per record (genes; an array's trailing axes).
    tokenizer : the fitted tokenizer (a :class:`Tokenizer`).
    extra : facts for the model (``vocab_size``; ``mlmprobability`` when pre-training).
    architecture : ``None`` when building a new model; when rebuilding a saved one (predict,
        interpret), what ``ModelSpec.architecture`` returned at save time.
    input_kind : the tokenizer kind the input comes from (``"atomic"`` one-hot sequences,
        ``"expression"`` cells x genes counts, ``"array"`` numeric arrays, or a plugin's kind):
        a model that reads several kinds preprocesses by it.
    """

    task: str
    n_outputs: int
    in_channels: int
    blocksize: int
    tokenizer: Any = None
    extra: dict = field(default_factory=dict)
    architecture: dict | None = None
    input_kind: str = "atomic"


@dataclass(frozen=True)
class Encoding:
    """How records are cut to the model's input: owned by the core (from the config when
    training, from the trained model's ``config.json`` when predicting).

    Attributes
    ----------
    blocksize : tokens the model reads per record.
    lefttailing : longer records keep their right end (True) or left end (False).
    centertoken : centre longer records on the first token whose base letter is this (or None).
    """

    blocksize: int
    lefttailing: bool = True
    centertoken: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How to build and use a plugin's model. Only ``build`` is required.

    Parameters
    ----------
    build : ``build(model_cfg, info) -> Model``. ``model_cfg`` is the resolved ``model:`` section
        (an instance of the plugin's ``model_schema``); ``info`` is a :class:`ModelInfo`.
    pretrain_loss : ``pretrain_loss(model, batch, generator) -> loss`` or ``(loss, n_scored)``
        (a scalar tensor and the number of scored tokens) for ``pre-train``; ``generator`` is a
        seeded ``torch.Generator`` for the random draws (e.g. which tokens are masked).
    fast_loo : ``fast_loo(model, inp, n, positions, rows) -> (P, n_outputs)``: raw outputs of
        ``model`` for P copies of the one-sequence input ``inp`` (``inp["x"]`` is (1, L, C), real
        length ``n``) in which row ``positions[j]`` is replaced by ``rows[j]`` (C,), for
        ``mask``/``replace``/``saturate`` leave-one-out and single-token variants. Positions
        may repeat (``saturate`` passes every alternative of a position as its own pair). Must
        equal the core's batched full forward passes (its fallback, and the oracle in tests) to
        within float tolerance.
    fit : ``fit(model, batches, train_idx, task, model_cfg)`` for models fitted in one pass
        instead of by gradient descent (e.g. incremental PCA + a closed-form head).
        ``batches(indices, shuffle)`` yields ``(indices, input, y, weights)``.
    fit_inputs : ``fit_inputs(model, batches, train_idx, model_cfg)`` fits input statistics on
        the training split before ``fit`` or gradient-descent training, once per fold (e.g.
        EIR's array normalization, per-feature z-scoring). Keep the statistics in the model's
        buffers: they are then saved with the fold and reapplied unchanged by predict and
        interpret. Under DDP read this rank's part (:func:`rank_share` of ``train_idx``) and
        merge the ranks' sums (:class:`OnePassMeanVarStd` ``.merge_distributed``), so every
        rank holds the statistics of the whole split.
    export : ``export(model, folddir)`` writes plugin-specific artefacts next to a trained fold
        (e.g. learned motifs).
    embed : ``embed(model, input) -> (B, D)`` per-sample embeddings (``predict`` with
        ``saveembeddings``).
    load_pretrained : ``load_pretrained(model, path) -> report`` loads pre-trained weights when
        ``fine-tune`` starts (from ``settings: training: pretrainedweights``, else from
        ``OUTPUTPATH/pre-train`` when it holds weights; never from predict's ``inference model:
        pretrainedmodel``), or from the weights the plugin's own ``model:`` section names
        (``pretrained_weights``); the report (a string or a dict of name -> list) is logged.
    penalty : ``penalty(model) -> scalar tensor`` added to the training loss (e.g. L1/L2 on
        kernels).
    architecture : ``architecture(model) -> dict`` saved in a trained model's ``config.json``
        and handed back as ``ModelInfo.architecture`` when the model is rebuilt, for
        architectures not fully given by the ``model:`` section (e.g. a checkpoint's).
    pretrained_weights : ``pretrained_weights(model_cfg) -> path or None``: weights named in the
        plugin's own ``model:`` section (e.g. geneformer's ``model: pretrained``, a published
        checkpoint) that ``fine-tune`` starts from through ``load_pretrained``. When it gives a
        path, that path is used instead of ``OUTPUTPATH/pre-train`` (setting ``settings:
        training: pretrainedweights`` as well is an error); ``fromscratch`` skips it like any
        other pre-trained weights. ``build`` reads the architecture from it when needed.
    perturbation_scores : ``perturbation_scores(model, base_input, perturbed_input, positions,
        how) -> (outputs, scores)`` for ``interpret`` by full forward passes (``remove``,
        ``activate``): ``outputs`` are the raw outputs ``(P, n_outputs)`` of ``perturbed_input``
        (as ``model(perturbed_input)`` gives them); ``scores`` maps a column name to ``(P,)``
        extra per-perturbation scores written after ``loo`` in the CSV (e.g. geneformer's
        embedding cosine similarity), ``{}`` when there are none. ``base_input`` is the
        unperturbed one-sequence input (batch of 1); ``positions`` ``(P,)`` the perturbed
        positions. Scores of several fold models are averaged with the ensemble weights.
    fit_schedule : ``fit_schedule(model, model_cfg, info) -> list[Stage] | None``: train
        ``fine-tune`` in stages (:class:`Stage`) instead of the engine's single loop, e.g. one
        group of parameters at a time, each to convergence with full-batch L-BFGS, with actions
        between stages that read the training data. ``None`` (for this configuration) = the
        single loop. Runs through the engine: event hooks, early stopping (per stage),
        checkpoints (which record the stage: ``resume`` continues mid-schedule to the same
        result), cross-validation. One process only (refused under DDP).
    """

    build: Callable[..., Any]
    pretrain_loss: Callable[..., Any] | None = None
    fast_loo: Callable[..., Any] | None = None
    fit: Callable[..., Any] | None = None
    fit_inputs: Callable[..., Any] | None = None
    export: Callable[..., Any] | None = None
    embed: Callable[..., Any] | None = None
    load_pretrained: Callable[..., Any] | None = None
    penalty: Callable[..., Any] | None = None
    architecture: Callable[..., Any] | None = None
    pretrained_weights: Callable[..., Any] | None = None
    perturbation_scores: Callable[..., Any] | None = None
    fit_schedule: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Stage:
    """One stage of a fit schedule (``ModelSpec.fit_schedule``); the engine runs them in order.

    In a stage only the parameters whose names (``model.named_parameters()`` of the model
    ``build`` returned) match one of ``trainable`` are trained; all others are frozen
    (``requires_grad`` is restored when the schedule ends). A stage trains until it has
    converged (``converge_epochs`` epochs in a row whose relative improvement of the training
    objective is below ``tol``), until validation early stopping (``settings: training:
    patience``) ends it, or for ``max_epochs`` epochs; then the stage's best weights (lowest
    validation loss) are kept. Epochs are counted across stages; every epoch is checkpointed.

    The *training objective* is the sample-weighted mean loss over the whole training split
    (the task's loss, as in the single loop) plus ``ModelSpec.penalty(model)``.

    Parameters
    ----------
    name : shown in the log, the epoch history (``trainer_state.json``) and checkpoints.
    trainable : regular expressions (``re.search``) over parameter names; empty: nothing is
        trained (a stage of actions only, no epochs).
    optimizer : ``"lbfgs"``: full batch. The training split is held in memory (in batches of
        ``batchsize``) and one epoch is one ``torch.optim.LBFGS.step(closure)`` of
        ``lbfgs_iterations`` iterations with a strong-Wolfe line search, whose closure
        evaluates the objective over the whole split, in float32 without autocast or
        clipping, with the model in eval mode (deterministic: no dropout). ``"settings"``: the
        run's optimizer (adam/adamw, ``lr``, ``gradacc``, ``clipnorm``) on shuffled minibatches,
        one pass per epoch, as the single loop.
    lr : learning rate; ``None`` = 1.0 for ``lbfgs``, ``settings: training: lr`` otherwise.
    max_epochs : ``None`` = ``settings: training: nepochs``.
    tol, converge_epochs : the convergence test above.
    lbfgs_iterations, lbfgs_history : ``max_iter`` and ``history_size`` of L-BFGS.
    batchsize : samples per forward pass when the whole training split is evaluated (L-BFGS
        and the objective); ``None`` = ``settings: training: batchsize``. Only memory and
        speed depend on it.
    before : ``before(ctx)`` runs before the stage's first epoch (a :class:`StageContext`),
        e.g. to initialise parameters from the data.
    after : ``after(ctx)`` runs after its last epoch, with the kept weights in place (e.g. to
        fix a gauge, or move a constant between parameters).
    before_objective : ``before_objective(ctx)`` runs (without gradients) before every
        evaluation of the objective in an ``lbfgs`` stage; it may set parameters this stage
        does not train to their exact optimum for the current ones (e.g. a linear head solved
        in closed form: "variable projection").
    greedy : ``before`` is a proposal (it returns ``False`` when it has nothing to propose);
        after the stage's training the result is kept only if the objective fell by more than
        ``greedy_threshold`` (relative) below the objective before the proposal, and then the
        proposal is tried again; otherwise the weights before the proposal are restored and
        the stage ends.
    greedy_threshold : see ``greedy``.
    undo_if_worse : a validation guard: when the stage's best validation loss is worse than the
        validation loss before it, the stage is undone (its starting weights restored), e.g. for
        optional extra terms that may only fit noise.
    """

    name: str
    trainable: tuple[str, ...] = ()
    optimizer: str = "lbfgs"
    lr: float | None = None
    max_epochs: int | None = None
    tol: float = 1e-6
    converge_epochs: int = 2
    lbfgs_iterations: int = 20
    lbfgs_history: int = 100
    batchsize: int | None = None
    before: Callable[..., Any] | None = None
    after: Callable[..., Any] | None = None
    before_objective: Callable[..., Any] | None = None
    greedy: bool = False
    greedy_threshold: float = 1e-3
    undo_if_worse: bool = False


class StageContext(Protocol):
    """What a :class:`Stage`'s actions receive.

    Attributes
    ----------
    model : the model ``build`` returned (not the DDP wrapper).
    stage : the running :class:`Stage`.
    task : ``"regression"`` or ``"classification"``.
    n_outputs : regression targets or classes.
    class_weights : (n_classes,) tensor of the classification loss's class weights, or None.
    memory : a dict shared by all stages of the schedule, for what the actions must remember
        (e.g. which proposals were tried); JSON values only: it is saved with every checkpoint
        and restored on ``resume``.
    log : the run's :class:`logging.Logger`.
    """

    model: Any
    stage: Stage
    task: str
    n_outputs: int
    class_weights: Any
    memory: dict
    log: Any

    def batches(self) -> list:
        """The training split as ``[(indices, input, y, w), ...]`` in a fixed order, held in
        memory: ``input`` as ``TokenizerSpec.make_input`` makes it, ``y`` the training targets
        ((B,) float for regression, (B,) class indices), ``w`` (B,) sample weights."""

    def objective(self) -> float:
        """The training objective at the current weights (no gradients; in an ``lbfgs`` stage
        after ``before_objective``)."""


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer kind: how to learn it, load it, encode a data source and feed the model.

    Parameters
    ----------
    fit : ``fit(source, cfg, log) -> Tokenizer`` learns it on a data-source section (the
        tokenizing source; ``cfg`` is the run's config, ``log`` a :class:`logging.Logger`).
    load : ``load(path) -> Tokenizer`` reads ``tokenizer.json``.
    encode : ``encode(tokenizer, source, encoding, log, label_kind) -> (records, options)``:
        ``records`` iterates :class:`EncodedRecord` (streaming), ``options`` is a dict of every
        parsing option that changes the encoding (hashed to reuse the store). ``encoding`` is an
        :class:`Encoding`; ``label_kind``: ``"float"`` (regression), ``"str"`` (classification),
        ``None`` (labels optional, kept as text) or ``"none"`` (no labels).
    make_input : ``make_input(tokenizer, batch, encoding) -> dict`` turns a collated store batch
        (``ids`` (B, L) int64 with -1 for padding/unknown and -2 for "masked", ``mods`` (B, L, M)
        float32, ``lengths`` (B,); for feature kinds ``features`` (B, *feature_shape) float32)
        into the model's input dict, on the batch's device.
    accepts : ``accepts(path) -> bool``: whether this kind reads the data file (or folder) at
        ``path`` — how a plugin with several kinds picks one, and how a file the kind cannot
        read becomes a clear error instead of a parse failure. ``None`` = any file.
    inputs : a few words naming what the kind reads, for messages ("delimited text sequences").
    records : what one record of this kind is called in messages, plural (``"sequences"``,
        ``"cells"``, ``"samples"``): "60 sequences" after predicting, "80 cells" after interpreting.
    feature_shape : ``feature_shape(tokenizer) -> tuple`` for kinds whose records are
        fixed-shape float arrays instead of tokens (``encode`` yields :func:`feature_record`
        records): the shape of one record. The model input is then (B, L, C) with C the first
        axis (1 for a 1-D record) and L the product of the others, and L, not
        ``settings.training.blocksize``, sizes the model (``ModelInfo.blocksize``).
    """

    fit: Callable[..., Any]
    load: Callable[..., Any]
    encode: Callable[..., Any]
    make_input: Callable[..., Any]
    accepts: Callable[..., Any] | None = None
    inputs: str = ""
    records: str = "sequences"
    feature_shape: Callable[..., Any] | None = None


# ============================================================================ protocols


class Tokenizer(Protocol):
    """What the core reads of a fitted tokenizer.

    ``vocab[i]`` is the name of token id ``i`` (store ids index it; -1 = unknown/padding);
    ``n_channels`` the input channels a model sees (vocabulary + modifiers for one-hot models);
    ``n_modifiers`` the per-token float channels kept in the store; ``positional``: the tokens of
    a record form a sequence whose positions mean something (interpret draws scores along it),
    rather than a set of named features such as genes (interpret draws the top-scoring ones).
    """

    vocab: list[str]
    n_channels: int
    n_modifiers: int
    positional: bool

    def sha(self) -> str:
        """Content hash: a changed tokenizer rebuilds every store encoded with it."""

    def save(self, path: Any) -> None:
        """Write ``tokenizer.json`` (atomically, e.g. with :func:`write_text`)."""


class Model(Protocol):
    """A ``torch.nn.Module`` whose ``forward(input)`` takes the dict made by
    ``TokenizerSpec.make_input`` and returns ``(B, n_outputs)`` (regression values or class
    logits); for pre-training, whatever its ``pretrain_loss`` expects. Saved and restored through
    ``state_dict()`` / ``load_state_dict()``."""

    def __call__(self, batch: dict) -> Any: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


# ============================================================================ hooks


@hookspec
def register_config(register: Callable[[PluginConfig], None]) -> None:
    """Declare a plugin: call ``register(PluginConfig(...))`` once. Called at start-up; keep it cheap."""


@hookspec
def register_tokenizer(register: Callable[[str, TokenizerSpec], None]) -> None:
    """Offer a tokenizer kind: ``register("kind", TokenizerSpec(...))``. Optional for plugins that use
    core's ``atomic`` tokenizer. Kinds are unique across plugins."""


@hookspec
def register_model(register: Callable[[str, ModelSpec], None]) -> None:
    """Provide the model of plugin ``name``: ``register(name, ModelSpec(...))``."""


# Training events (LUMIN's callback points). ``state`` is a biolm.core.engine.TrainState: it
# carries the plugin name, fold, epoch (0-based), step, model, optimizer, current batch, loss and
# metrics, and in a staged fit (ModelSpec.fit_schedule) the running stage's name (``state.stage``).
# Implementations may read it and set ``state.stop_training = True`` (in a staged fit: end the
# running stage). In a full-batch (L-BFGS) stage an epoch is one optimizer step over the whole
# training split: ``on_batch_begin`` fires before it (``state.batch`` is None),
# ``on_after_backward`` after each gradient evaluation of its closure, ``on_batch_end`` after it.


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


# ============================================================================ helpers for plugins
#
# The rest of core's public API, importable from here. Loaded on first use, so importing this
# module stays cheap (no torch, no h5py):
#
#   opt, parsers                             declare a ``model:`` key (biolm.core.schema.opt) and
#                                            the value parsers for ``opt(parse=...)`` (e.g. parsers.INT_LIST)
#   section_of                               the YAML section a data-source object came from (messages)
#   BiolmError, ConfigError, DataError       user-fixable errors: one line, exit code 2
#   FileFormatError                          "not a {what} file: PATH (reason)" (a DataError)
#   load_plain_pickle, UnsafePickleError     unpickle untrusted plain data (dicts, lists, strings,
#                                            numbers, numpy scalars) with an allow-list; code refused
#   SafetensorsFile, read_safetensors,       .safetensors read validated and tensor by tensor, and
#   write_safetensors                        written (imports torch)
#   read_torch_state_dict                    torch.load(weights_only=True) with one-line errors (imports torch)
#   write_text, write_json, atomic_path,     atomic writes (a file appears complete or not at all),
#   read_json                                and reading JSON back
#   EncodedRecord, feature_record            one record as TokenizerSpec.encode yields it (tokens;
#                                            a fixed-shape feature array)
#   DelimitedOptions, ReadStats,             the delimited-text reader: options from a data-source
#   delimited_options, read_records          section, rows as records, skipped-row counts
#   is_h5ad                                  is a data file AnnData (.h5ad)?
#   open_cells, match_genes                  THE .h5ad reader of every expression plugin: a data
#                                            source (layer, genecolumn) as chunks of cells (dense
#                                            or CSR) with ids, labels, splits, weights, other
#                                            numeric obs columns; genes matched by id
#   OnePassMeanVarStd, ArrayNormalization,   per-feature statistics fitted in one pass with their
#   rank_share                               DDP merge; EIR's array normalization; a rank's part of
#                                            the training split (imports torch)
#   InputAdapter                             wrap a module whose forward takes tensors (imports torch)
#   max_threads                              cap torch's intra-op threads for loops of small ops
#   onehot                                   store ids + modifiers -> one-hot input (imports torch)

_HELPERS = {
    "opt": "schema",
    "section_of": "schema",
    "parsers": "parsers",
    "BiolmError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "FileFormatError": "errors",
    "load_plain_pickle": "safe_pickle",
    "UnsafePickleError": "safe_pickle",
    "SafetensorsFile": "weight_files",
    "read_safetensors": "weight_files",
    "write_safetensors": "weight_files",
    "read_torch_state_dict": "weight_files",
    "write_text": "outputs",
    "write_json": "outputs",
    "atomic_path": "outputs",
    "read_json": "outputs",
    "EncodedRecord": "store",
    "feature_record": "store",
    "DelimitedOptions": "delimited",
    "ReadStats": "delimited",
    "delimited_options": "delimited",
    "read_records": "delimited",
    "is_h5ad": "h5ad",
    "open_cells": "cells",
    "match_genes": "cells",
    "OnePassMeanVarStd": "input_statistics",
    "ArrayNormalization": "input_statistics",
    "rank_share": "input_statistics",
    "InputAdapter": "adapters",
    "max_threads": "threads",
    "onehot": "atomic_tokenizer",
}

__all__ = [
    "BIOLM_PLUGIN_API", "hookspec", "hookimpl", "MODES", "PluginConfig", "ModelInfo", "Encoding",
    "ModelSpec", "Stage", "StageContext", "TokenizerSpec", "Tokenizer", "Model", *_HELPERS,
]


def __getattr__(name: str) -> Any:
    if name in _HELPERS:
        module = importlib.import_module(f"{__package__}.{_HELPERS[name]}")
        return module if name == _HELPERS[name] else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
