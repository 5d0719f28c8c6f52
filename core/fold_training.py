"""Build a plugin's model and train it: one fold of fine-tune, or the pre-training split.

The steps every training mode shares — seeding, building through the plugin's ``ModelSpec``,
DDP wrapping, batches, optimizer, the engine's loop with progress, and what is saved about the
model (``config.json``, ``trainer_state.json``) — so that each mode only says what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import BiolmError, ConfigError
from .hookspecs import Encoding, ModelInfo
from .outputs import write_json


def check_blocksize(run: Any) -> None:
    """``blocksize`` within the plugin's bounds (``PluginConfig.min_blocksize``/``max_blocksize``),
    checked before anything is read or allocated."""
    bs = run.cfg.settings.training.blocksize
    if bs < run.plugin.min_blocksize:
        raise ConfigError("settings.training.blocksize", f"{run.plugin.name} needs at least {run.plugin.min_blocksize} tokens, got {bs}")
    if run.plugin.max_blocksize is not None and bs > run.plugin.max_blocksize:
        raise ConfigError("settings.training.blocksize", f"{run.plugin.name} reads at most {run.plugin.max_blocksize} tokens per record, got {bs}")


def build_model(run: Any, info: ModelInfo, device: Any):
    """The plugin's model for ``info``, initialised from the run's seed, on ``device``."""
    import torch

    torch.manual_seed(run.cfg.seed)
    np.random.seed(run.cfg.seed % (2**32))
    return run.model_spec.build(run.cfg.model, info).to(device)


def make_batches(run: Any, store: Any, tokenizer: Any, device: Any, encoding: Encoding, y: np.ndarray | None = None, weights: np.ndarray | None = None, tokenizer_spec: Any = None):
    """:class:`~biolm.core.batching.Batches` of ``store`` for this plugin's model."""
    from .batching import Batches, loader_factory

    spec = tokenizer_spec or run.tokenizer_spec
    pad_to = encoding.blocksize if run.plugin.fixed_length else None
    env = run.cfg.settings.environment
    loader = loader_factory(store, run.cfg.settings.training.batchsize, pad_to, env.numworkers)
    return Batches(loader, lambda b: spec.make_input(tokenizer, b, encoding), device, y, weights)


def wrap_distributed(model: Any, device: Any) -> Any:
    """DistributedDataParallel when launched with several processes, else the model itself."""
    from .distributed import is_distributed

    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@dataclass
class Trained:
    """What training produced besides the weights (restored to the best epoch in the model).

    ``runtime``: seconds of this process; ``resumed_after``: epochs done by earlier runs when this
    one resumed (0 = trained from the start here); ``kept_epoch``: the epoch whose weights are
    kept, counted from 1; ``stages``: what each stage of a staged fit did."""

    history: list
    best_val_loss: float | None
    runtime: float
    resumed_after: int = 0
    kept_epoch: int | None = None
    stages: list | None = None

    @property
    def total_runtime(self) -> float:
        """Training time of every run that contributed: this process's whole time (work between
        epochs included, e.g. a fit schedule's stage actions) plus, after a resume, the epochs the
        earlier runs trained."""
        return self.runtime + sum(h.get("seconds", 0.0) for h in self.history[: self.resumed_after])


def fit_schedule(run: Any, model: Any, info: ModelInfo) -> list | None:
    """The plugin's fit schedule for this model and ``model:`` section (``ModelSpec.fit_schedule``),
    or None for the engine's single loop."""
    make = run.model_spec.fit_schedule
    return make(model, run.cfg.model, info) if make is not None else None


def train_model(run: Any, model: Any, batches: Any, *, fold: str, folddir: Path, task: Any, train_idx: np.ndarray, val_idx: np.ndarray, device: Any, val_metrics: Callable | None = None, loss_fn: Callable | None = None, fingerprint: dict | None = None, schedule: list | None = None) -> Trained:
    """Gradient-descent training through the engine (early stopping, checkpoints, resume, DDP);
    ``fingerprint`` (:func:`fingerprint`) ties the fold's checkpoints to what produced them; in
    the stages of ``schedule`` when one is given (:mod:`biolm.core.staged_training`)."""
    from .engine import make_optimizer, train
    from .progress import Progress

    tr, env = run.cfg.settings.training, run.cfg.settings.environment
    wrapped = wrap_distributed(model, device)
    optimizer = None if schedule else make_optimizer([p for p in wrapped.parameters() if p.requires_grad], tr)
    t0 = time.perf_counter()
    with Progress(run.log, run.quiet) as progress:
        state = train(
            pm=run.registry.pm, plugin=run.plugin.name, fold=fold, folddir=folddir, model=wrapped, optimizer=optimizer,
            task=task, batches=batches, train_idx=train_idx, val_idx=val_idx, nepochs=tr.nepochs, patience=tr.patience,
            gradacc=tr.gradacc, clipnorm=tr.clipnorm, seed=run.cfg.seed, device=device, precision=env.precision,
            resume=tr.resume, log=run.log, val_metrics=val_metrics, progress=progress, loss_fn=loss_fn,
            penalty=run.model_spec.penalty, fingerprint=fingerprint, schedule=schedule, settings_optimizer=lambda params, lr: make_optimizer(params, tr, lr),
        )
    kept = state.best_epoch + 1 if state.best_epoch >= 0 else None
    return Trained(state.history, state.best_val_loss, time.perf_counter() - t0, state.resumed_after, kept, state.schedule.get("summary"))


def fit_inputs(run: Any, model: Any, batches: Any, train_idx: np.ndarray) -> None:
    """Input statistics fitted on the fold's training split before training
    (``ModelSpec.fit_inputs``; kept in the model's buffers, so saved with the fold)."""
    if run.model_spec.fit_inputs is not None:
        run.model_spec.fit_inputs(model, batches, train_idx, run.cfg.model)


def fit_one_pass(run: Any, model: Any, batches: Any, train_idx: np.ndarray, task: Any) -> Trained:
    """Models fitted in one pass (``ModelSpec.fit``, e.g. incremental PCA + closed-form head)."""
    t0 = time.perf_counter()
    run.model_spec.fit(model, batches, train_idx, task, run.cfg.model)
    return Trained([], None, time.perf_counter() - t0)


def start_from_pretrained(run: Any, model: Any) -> str:
    """fine-tune from pre-trained weights when the plugin can load them (``ModelSpec.load_pretrained``).

    The rule (core's, for every plugin): ``settings: training: pretrainedweights`` if set (it
    must exist, and a folder with a ``config.json`` must hold a pre-training, not a fine-tuned
    model), else ``OUTPUTPATH/pre-train`` when it holds weights; none with ``fromscratch``.
    fine-tune reads only its own keys: ``inference model: pretrainedmodel`` is predict's and
    interpret's. Weights named by the plugin's own ``model:`` section (``ModelSpec.pretrained_weights``,
    e.g. a published checkpoint) take the place of ``pretrainedweights`` (setting both is an
    error). Returns what the weights started from, for the checkpoint fingerprint."""
    key = "settings.training.pretrainedweights"
    spec = run.model_spec
    loader = spec.load_pretrained
    tr = run.cfg.settings.training
    if tr.fromscratch:
        return "random"
    own = spec.pretrained_weights(run.cfg.model) if spec.pretrained_weights is not None else None
    if loader is None:
        if tr.pretrainedweights:
            raise ConfigError(key, f"the {run.plugin.name} model cannot start from pre-trained weights (it has no load_pretrained)")
        return "random"
    if own:
        if tr.pretrainedweights:
            raise ConfigError(key, f"the model section already names the weights to start from ({own}); set one of the two")
        path = Path(own)
        if not path.exists():
            raise ConfigError("model", f"{path} (the weights to start from) does not exist")
    elif tr.pretrainedweights:
        path = Path(tr.pretrainedweights)
        if not path.exists():
            raise ConfigError(key, f"{path} does not exist")
        if path.is_dir() and (path / "config.json").exists():
            from .modelio import read_json_file

            task = read_json_file(path / "config.json", "the model's description").get("task")
            if task != "pre-train":
                raise ConfigError(key, f"{path} holds a {task} model, not pre-trained weights (e.g. OUTPUTPATH/pre-train)")
    else:
        default = run.outdir / "pre-train"
        if not (default / "pytorch_model.bin").exists():
            return "random"
        path = default
    run.log.info("starting from pre-trained weights in %s", path)
    try:
        report = loader(model, path)
    except BiolmError:
        raise
    except Exception as e:  # noqa: BLE001 - a plugin's reader failing on the user's file
        raise BiolmError(f"cannot load pre-trained weights from {path}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}") from None
    if report:
        run.log.info("pre-trained weights: %s", report if isinstance(report, str) else ", ".join(f"{k} {len(v) if hasattr(v, '__len__') and not isinstance(v, str) else v}" for k, v in report.items()))
    weights = next((path / n for n in ("pytorch_model.bin", "model.safetensors") if (path / n).exists()), path) if path.is_dir() else path
    st = weights.stat() if weights.exists() else None
    return f"{weights.resolve()}:{st.st_size}:{st.st_mtime_ns}" if st else str(path.resolve())


def fingerprint(run: Any, store: Any, info: ModelInfo, train_idx: np.ndarray, val_idx: np.ndarray, targets: tuple = (), init: str = "random") -> dict:
    """What a training run's result depends on, one digest per part: the encoded data (the
    store's hash: input bytes, parsing options, tokenizer, cutting), the split, the targets
    (labels after scaling, sample and class weights), the model (plugin, ``model:`` section,
    input facts), the training options that change the result, and the starting weights.

    ``nepochs`` and ``patience`` are left out on purpose: they say when to stop, so a resumed
    run may train longer than the one it continues."""
    cfg, tr, env = run.cfg, run.cfg.settings.training, run.cfg.settings.environment
    from .distributed import world

    def digest(*parts: Any) -> str:
        h = hashlib.sha256()
        for part in parts:
            if hasattr(part, "detach"):
                part = part.detach().cpu().numpy()
            if isinstance(part, np.ndarray):
                h.update(str((part.dtype, part.shape)).encode())
                h.update(np.ascontiguousarray(part).tobytes())
            else:
                h.update(json.dumps(part, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    model_section = dataclasses.asdict(cfg.model) if cfg.model is not None and dataclasses.is_dataclass(cfg.model) else {}
    training = {k: getattr(tr, k) for k in ("lr", "weightdecay", "optimizer", "beta1", "beta2", "gradacc", "clipnorm", "batchsize")}
    training.update(seed=cfg.seed, precision=env.precision, processes=world()[1])
    if info.task == "pre-train":
        training["mlmprobability"] = tr.mlmprobability
    return {
        "data": str(store.meta["source_hash"]),
        "split": digest(np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)),
        "targets": digest(*[t for t in targets if t is not None]),
        "model": digest(run.plugin.name, model_section, info.task, info.n_outputs, info.in_channels, info.blocksize),
        "training": digest(training),
        "init": init,
    }


def model_meta(run: Any, model: Any, info: ModelInfo, **fields: Any) -> dict:
    """``config.json`` of a trained model: what rebuilds it (plugin, task, encoding, input length,
    ``model:`` section, architecture) and where it came from."""
    cfg = run.cfg
    arch = run.model_spec.architecture
    meta = {
        "plugin": run.plugin.name,
        "task": info.task,
        "encoding": cfg.tokenization.encoding,
        "n_outputs": info.n_outputs,
        "in_channels": info.in_channels,
        "blocksize": info.blocksize,
        "lefttailing": cfg.tokenization.lefttailing,
        "centertoken": cfg.settings.data_preprocessing.centertoken,
        "fixed_length": run.plugin.fixed_length,
        "model": dataclasses.asdict(cfg.model) if cfg.model is not None and dataclasses.is_dataclass(cfg.model) else {},
        "architecture": arch(_unwrap(model)) if arch is not None else None,
        "extra": info.extra,
    }
    meta.update(fields)
    meta.update({"seed": cfg.seed, "versions": run.versions()})
    return meta


def best_epoch(history: list) -> int | None:
    """The epoch (counted from 1) with the lowest validation loss: the one whose weights are kept."""
    return int(np.argmin([h["val_loss"] for h in history])) + 1 if history else None


def write_trainer_state(folddir: Path, history: list, best_val_loss: float | None, nepochs: int, kept_epoch: int | None = None, **extra: Any) -> None:
    """``trainer_state.json``: per-epoch history, the best epoch (weights kept: ``kept_epoch``,
    else the lowest validation loss) and why training ended; epochs are counted from 1, as on screen."""
    numbered = [{**h, "epoch": h["epoch"] + 1} for h in history]
    kept = kept_epoch if kept_epoch is not None else best_epoch(history)
    write_json(folddir / "trainer_state.json", {"history": numbered, "best_epoch": kept, "best_val_loss": best_val_loss, **extra, "epochs_run": len(history), "nepochs": nepochs, "stopped_early": bool(history) and len(history) < nepochs})


def loss_name(task: Any, scaling: str = "none") -> str:
    """What the training loss is, for plot axes."""
    if task.kind == "regression":
        return "MSE" + (f" ({scaling}-scaled labels)" if scaling != "none" else " (labels)")
    if task.kind == "classification":
        return "cross-entropy" + (" (class-weighted)" if task.class_weights is not None else "")
    return "loss per scored token (cross-entropy)"


def _unwrap(model: Any) -> Any:
    from .distributed import unwrap

    return unwrap(model)
