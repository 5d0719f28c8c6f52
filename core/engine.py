"""The training engine shared by every plugin: plain torch, seeded, resumable, event-driven.

Training events are pluggy hooks (see :mod:`biolm.core.hookspecs`); early stopping,
checkpointing and the progress log are ordinary hook implementations registered per fold, so a
user's package can add its own next to them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .batching import Batches
from .hookspecs import hookimpl
from .outputs import read_json, save_torch, write_json


def resolve_device(env: Any) -> torch.device:
    if env.device == "cpu":
        return torch.device("cpu")
    if env.device == "cuda":
        if not torch.cuda.is_available():
            from .errors import ConfigError

            raise ConfigError("settings.environment.device", "cuda requested but no CUDA device is visible")
        return torch.device("cuda", _local_rank())
    return torch.device("cuda", _local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def _local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", 0))


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default; float32 on CPU unless bf16 is asked for."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class TrainState:
    """What training-event hooks see. Set ``stop_training = True`` to stop after this epoch.

    A staged fit (:mod:`biolm.core.staged_training`) also keeps here the running ``stage``'s
    name, its progress ``schedule`` (JSON values) and ``schedule_tensors`` (e.g. the weights
    before a greedy proposal), both saved in checkpoints, and ``optimizer_factory``, which
    rebuilds the stage's optimizer from a checkpoint's ``schedule`` before its state is loaded."""

    plugin: str
    fold: str
    folddir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    nepochs: int
    epoch: int = 0
    step: int = 0
    batch: dict | None = None
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    stop_training: bool = False
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict | None = None
    log: Any = None
    resumed_after: int = 0  # epochs done by earlier runs when this one resumed (0 = fresh)
    stage: str | None = None
    schedule: dict = field(default_factory=dict)
    schedule_tensors: dict = field(default_factory=dict)
    optimizer_factory: Callable[[dict], torch.optim.Optimizer] | None = None


class EarlyStopping:
    """Keeps the best weights (lowest validation loss) and stops after ``patience`` bad epochs."""

    def __init__(self, patience: int):
        self.patience = patience

    @hookimpl(tryfirst=True)
    def on_epoch_end(self, state: TrainState) -> None:
        val = state.metrics.get("val_loss", math.inf)
        if val < state.best_val_loss:
            state.best_val_loss = val
            state.best_epoch = state.epoch
            state.bad_epochs = 0
            from .distributed import unwrap

            state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in unwrap(state.model).state_dict().items()})
        else:
            state.bad_epochs += 1
            if state.bad_epochs >= self.patience:
                state.stop_training = True  # EpochLog says so, after this epoch's line


class Checkpointer:
    """``checkpoint-<epoch>/`` after every epoch: model, optimizer, RNG and loop state, for ``resume``.

    ``state.json`` (written last: a checkpoint without it is incomplete and ignored) records the
    run's ``fingerprint`` (:func:`biolm.core.fold_training.fingerprint`), so that ``resume``
    continues only a run made with the same data, splits, model and training options."""

    keep = 2

    def __init__(self, fingerprint: dict | None = None):
        self.fingerprint = fingerprint

    @hookimpl(trylast=True)
    def on_epoch_end(self, state: TrainState) -> None:
        import shutil

        from .distributed import is_main

        if not is_main():
            return
        d = state.folddir / f"checkpoint-{state.epoch}"
        shutil.rmtree(d, ignore_errors=True)  # never a new checkpoint's files beside an old state.json
        try:
            self._write(d, state)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)  # a full disk: no half checkpoint either
            raise
        for _, p in completed_checkpoints(state.folddir)[: -self.keep]:
            shutil.rmtree(p, ignore_errors=True)

    def _write(self, d: Path, state: TrainState) -> None:
        from .distributed import unwrap

        d.mkdir(parents=True, exist_ok=True)
        save_torch(d / "model.pt", {k: v.detach().cpu() for k, v in unwrap(state.model).state_dict().items()})
        save_torch(d / "optimizer.pt", state.optimizer.state_dict())
        save_torch(d / "best.pt", state.best_state or {})
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        save_torch(d / "rng.pt", rng)
        if state.schedule:
            save_torch(d / "schedule.pt", state.schedule_tensors)
        write_json(
            d / "state.json",
            {
                "epoch": state.epoch,
                "step": state.step,
                "best_val_loss": state.best_val_loss,
                "best_epoch": state.best_epoch,
                "bad_epochs": state.bad_epochs,
                "stop_training": state.stop_training,
                "history": state.history,
                "scheduler": None,
                "fingerprint": self.fingerprint,
                "schedule": state.schedule or None,
            },
        )


class EpochLog:
    """One line per epoch, then why training stopped and which epoch's weights are kept (epochs
    counted from 1 in everything a user reads)."""

    @hookimpl
    def on_epoch_end(self, state: TrainState) -> None:
        if not state.log:
            return
        m = state.metrics
        extra = "  ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in ("train_loss", "val_loss") and isinstance(v, float))
        where = f"epoch {state.epoch + 1}/{state.nepochs}" if state.stage is None else f"epoch {state.epoch + 1} ({state.stage})"
        state.log.info("%s %s: train loss %.5g  val loss %.5g  %s", _what(state.fold), where, m.get("train_loss", float("nan")), m.get("val_loss", float("nan")), extra)
        if state.stop_training:
            state.log.info("%s: early stop%s after epoch %d (no better validation loss for %d epochs)", _what(state.fold), "" if state.stage is None else f" of {state.stage}", state.epoch + 1, state.bad_epochs)

    @hookimpl
    def on_train_end(self, state: TrainState) -> None:
        if state.log and state.best_epoch >= 0:
            state.log.info("%s: keeping the weights of epoch %d (best validation loss %.5g)", _what(state.fold), state.best_epoch + 1, state.best_val_loss)


def _what(fold: str) -> str:
    return "pre-training" if fold == "pre-train" else f"fold {fold}"


class TensorBoard:
    """Epoch metrics as tensorboard events in ``<fine-tune dir>/tboard/<fold>`` (when installed)."""

    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

        self.writer = SummaryWriter(str(logdir))

    @hookimpl
    def on_epoch_end(self, state: TrainState) -> None:
        for k, v in state.metrics.items():
            if isinstance(v, float) and math.isfinite(v):
                self.writer.add_scalar(k, v, state.epoch)
        self.writer.add_scalar("lr", state.optimizer.param_groups[0]["lr"], state.epoch)
        self.writer.flush()

    @hookimpl
    def on_train_end(self, state: TrainState) -> None:
        self.writer.close()


def completed_checkpoints(folddir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folddir.glob("checkpoint-*"):
        if (p / "state.json").exists():
            try:
                out.append((int(p.name.split("-", 1)[1]), p))
            except ValueError:
                continue
    return sorted(out)


def clear_checkpoints(folddir: Path) -> int:
    """Remove every ``checkpoint-*`` of a fold (a fresh run must not leave an earlier run's
    checkpoints for pruning or a later ``resume`` to mix with its own)."""
    import shutil

    old = [p for p in folddir.glob("checkpoint-*") if p.is_dir()]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return len(old)


# fingerprint part -> how a mismatch is named in the log
_FINGERPRINT_PARTS = {"data": "input data", "split": "splits", "targets": "labels/scaling/weights", "model": "model", "training": "training options", "init": "starting weights"}


def fingerprint_changes(saved: Any, current: dict | None) -> str | None:
    """What differs between a checkpoint's fingerprint and the run's (None: they match)."""
    if current is None:
        return None
    if not isinstance(saved, dict):
        return "no fingerprint (made by an older biolm)"
    changed = [_FINGERPRINT_PARTS.get(k, k) for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    return ", ".join(changed) if changed else None


def resume_training(state: TrainState, fingerprint: dict | None) -> bool:
    """Continue from the newest usable checkpoint of ``state.folddir``; False = start fresh.

    A checkpoint is used only when its fingerprint matches the run's; one that cannot be read
    (truncated, or made for a model of another shape) is skipped for the one before it. Each
    decision is one log line."""
    log, fold = state.log, state.fold
    done = completed_checkpoints(state.folddir)
    if not done:
        log.info("%s: resume asked, but no checkpoint in %s: starting fresh", _what(fold), state.folddir)
        return False
    try:
        newest = read_json(done[-1][1] / "state.json")
    except (OSError, ValueError):
        newest = {}
    changed = fingerprint_changes(newest.get("fingerprint"), fingerprint)
    if changed:
        log.warning("%s: not resuming from %s: it was made with other %s; starting fresh", _what(fold), done[-1][1].name, changed)
        return False
    initial = _snapshot(state)
    for k, (epoch, path) in enumerate(reversed(done)):
        try:
            restore_checkpoint(state, path, fingerprint)
        except Exception as exc:  # noqa: BLE001 - any damage means: not this checkpoint
            _restore_snapshot(state, initial)
            more = "; trying the one before" if k + 1 < len(done) else "; starting fresh"
            log.warning("%s: %s is unusable (%s: %s)%s", _what(fold), path.name, type(exc).__name__, (str(exc).strip().splitlines() or [""])[0][:200], more)
            continue
        log.info("%s: resumed from %s (epoch %d done)", _what(fold), path.name, epoch + 1)
        state.resumed_after = epoch + 1
        return True
    return False


def _snapshot(state: TrainState) -> dict:
    from .distributed import unwrap

    return {
        "model": copy.deepcopy({k: v.detach().cpu() for k, v in unwrap(state.model).state_dict().items()}),
        "optimizer": state.optimizer,
        "optimizer_state": copy.deepcopy(state.optimizer.state_dict()) if state.optimizer is not None else None,
        "rng": torch.get_rng_state(),
    }


def _restore_snapshot(state: TrainState, snap: dict) -> None:
    from .distributed import unwrap

    unwrap(state.model).load_state_dict(snap["model"])
    state.optimizer = snap["optimizer"]
    if state.optimizer is not None:
        state.optimizer.load_state_dict(snap["optimizer_state"])
    torch.set_rng_state(snap["rng"])
    state.epoch, state.step, state.history, state.best_state = 0, 0, [], None
    state.best_val_loss, state.best_epoch, state.bad_epochs, state.stop_training = math.inf, -1, 0, False
    state.schedule, state.schedule_tensors = {}, {}


def restore_checkpoint(state: TrainState, path: Path, fingerprint: dict | None = None) -> None:
    """Load a checkpoint into ``state``; every file is read before anything is changed. A staged
    fit's checkpoint also restores its progress, and its stage's optimizer is rebuilt
    (``state.optimizer_factory``) before that optimizer's state is loaded."""
    from .distributed import unwrap

    s = read_json(path / "state.json")
    if fingerprint_changes(s.get("fingerprint"), fingerprint):
        raise ValueError(f"made with other {fingerprint_changes(s.get('fingerprint'), fingerprint)}")
    if bool(s.get("schedule")) != (state.optimizer_factory is not None):
        raise ValueError("made by a staged fit" if s.get("schedule") else "not made by a staged fit")
    model = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    schedule_tensors = torch.load(path / "schedule.pt", map_location="cpu", weights_only=True) if s.get("schedule") else {}
    best = torch.load(path / "best.pt", map_location="cpu", weights_only=True)
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    own = unwrap(state.model).state_dict()
    if best and (set(best) != set(own) or any(tuple(best[k].shape) != tuple(v.shape) for k, v in own.items())):
        raise ValueError("its best weights do not fit the model")
    optimizer = state.optimizer_factory(s["schedule"]) if s.get("schedule") else state.optimizer
    unwrap(state.model).load_state_dict(model)
    if optimizer is not None:
        optimizer.load_state_dict(optim)
    state.optimizer = optimizer
    state.schedule, state.schedule_tensors = s.get("schedule") or {}, schedule_tensors
    state.best_state = best or None
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state.epoch = s["epoch"] + 1
    state.step = s["step"]
    state.best_val_loss = s["best_val_loss"]
    state.best_epoch = s["best_epoch"]
    state.bad_epochs = s["bad_epochs"]
    state.stop_training = s["stop_training"]
    state.history = s["history"]


@dataclass
class Task:
    """How outputs become a loss: regression (weighted MSE on scaled labels) or classification."""

    kind: str
    n_outputs: int
    class_weights: torch.Tensor | None = None

    def loss(self, out: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Weighted mean loss of a batch: ``out`` (B, n_outputs), ``y`` (B,), ``w`` (B,)."""
        total, weight = self.loss_terms(out, y, w)
        return total / weight.clamp_min(1e-12)

    def loss_terms(self, out: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted sum of the per-sample losses, sum of the weights): summed over batches,
        their ratio is the mean over a whole split."""
        out = out.float()
        if self.kind == "regression":
            per = ((out.view(len(y), -1) - y.view(-1, 1)) ** 2).mean(1)
            return (per * w).sum(), w.sum()
        cw = self.class_weights.to(out.device) if self.class_weights is not None else None
        per = torch.nn.functional.cross_entropy(out, y.long(), weight=cw, reduction="none")
        return (per * w).sum(), self.weight(y, w)

    def weight(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The loss weight of a batch (the second term of :meth:`loss_terms`): the sample
        weights, times the class weights for classification."""
        if self.kind == "classification" and self.class_weights is not None:
            return (self.class_weights.to(w.device)[y.long()] * w).sum()
        return w.sum()


def evaluate(model: torch.nn.Module, batches: Batches, indices: np.ndarray, task: Task | None, device: torch.device, precision: str) -> tuple[np.ndarray, float]:
    """Outputs (N, n_outputs) in the order of ``indices`` and the mean loss (NaN without labels).

    Distributed: each process evaluates its share; outputs and loss sums are gathered, so every
    process returns the same full result."""
    from .distributed import all_gather_objects, is_distributed, unwrap, world

    model = unwrap(model)
    if is_distributed():
        rank, size = world()
        mine = np.asarray(indices)[rank::size]
        out, loss_sum, weight = _evaluate(model, batches, mine, task, device, precision)
        parts = all_gather_objects((mine, out, loss_sum, weight))
        full = np.zeros((len(indices), max(p[1].shape[1] for p in parts if p[1].ndim == 2)), dtype=np.float32)
        pos = {int(i): k for k, i in enumerate(indices)}
        for m, o, _, _ in parts:
            if len(m):
                full[[pos[int(i)] for i in m]] = o
        total = sum(p[2] for p in parts)
        w = sum(p[3] for p in parts)
        return full, (total / w if w else float("nan"))
    out, total, w = _evaluate(model, batches, indices, task, device, precision)
    return out, (total / w if w else float("nan"))


def evaluate_loss(model: torch.nn.Module, batches: Batches, indices: np.ndarray, loss_fn: Callable[..., torch.Tensor], device: torch.device, precision: str) -> float:
    """Sample-weighted mean of ``loss_fn`` over ``indices`` (all processes agree)."""
    from .distributed import all_gather_objects, is_distributed, unwrap, world

    model = unwrap(model)
    model.eval()
    mine = np.asarray(indices)[world()[0] :: world()[1]] if is_distributed() else indices
    total, n = 0.0, 0
    with torch.no_grad(), autocast(device, precision):
        for idx, inp, y, w in batches(mine, shuffle=False):
            total += float(loss_fn(model, inp, y, w)) * len(idx)
            n += len(idx)
    parts = all_gather_objects((total, n))
    t, m = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return t / m if m else float("nan")


def _evaluate(model, batches, indices, task, device, precision):
    model.eval()
    pos = {int(i): k for k, i in enumerate(indices)}
    out = None
    total, weight = 0.0, 0.0
    with torch.no_grad(), autocast(device, precision):
        for idx, inp, y, w in batches(indices, shuffle=False):
            o = model(inp).float()
            if out is None:
                out = np.zeros((len(indices), o.shape[-1]), dtype=np.float32)
            rows = [pos[int(i)] for i in idx]
            out[rows] = o.cpu().numpy().reshape(len(idx), -1)
            if task is not None and y is not None:
                total += float(task.loss(o, y, w)) * float(w.sum())
                weight += float(w.sum())
    if out is None:
        out = np.zeros((0, task.n_outputs if task else 1), dtype=np.float32)
    return out, total, weight


@dataclass
class Loop:
    """What every epoch of one training run uses (the arguments of :func:`train`)."""

    pm: Any
    task: Task
    batches: Batches
    train_idx: np.ndarray
    val_idx: np.ndarray
    nepochs: int
    patience: int
    gradacc: int
    clipnorm: float | None
    seed: int
    device: torch.device
    precision: str
    log: Any
    val_metrics: Callable[[np.ndarray], dict] | None = None
    progress: Any = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None


def train(
    *,
    pm: Any,
    plugin: str,
    fold: str,
    folddir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    task: Task,
    batches: Batches,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    nepochs: int,
    patience: int,
    gradacc: int,
    clipnorm: float | None,
    seed: int,
    device: torch.device,
    precision: str,
    resume: bool,
    log: Any,
    val_metrics: Callable[[np.ndarray], dict] | None = None,
    progress: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    fingerprint: dict | None = None,
    schedule: list | None = None,
    settings_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
) -> TrainState:
    """Train one fold; returns the state with the best weights restored into ``model``.

    ``loss_fn(model, inp, y, w) -> loss`` replaces ``task.loss(model(inp), y, w)`` for objectives
    that are not a function of the outputs alone (masked-LM pre-training); validation then
    reports the mean of ``loss_fn`` and no outputs. ``penalty(model)`` (the plugin's
    ``ModelSpec.penalty``) is added to every training batch's loss. ``fingerprint`` identifies
    what the run trains on and with (saved in every checkpoint; ``resume`` continues only a
    checkpoint with the same one, see :func:`resume_training`); a run that starts fresh first
    removes the fold's earlier checkpoints. ``schedule`` (a list of
    :class:`~biolm.core.hookspecs.Stage`) trains in stages (:mod:`biolm.core.staged_training`)
    instead of ``nepochs`` epochs with ``optimizer``; ``settings_optimizer(params, lr)`` then
    builds the run's own optimizer for the stages that use it.
    """
    from .distributed import is_main, unwrap

    loop = Loop(pm, task, batches, train_idx, val_idx, nepochs, patience, gradacc, clipnorm, seed, device, precision, log, val_metrics, progress, loss_fn, penalty)
    state = TrainState(plugin, fold, folddir, model, optimizer, nepochs, log=log)
    staged = None
    if schedule:
        from .staged_training import StagedFit

        staged = StagedFit(loop, state, schedule, settings_optimizer)
    resumed = resume and resume_training(state, fingerprint)
    if not resumed and is_main() and clear_checkpoints(folddir):
        log.info("%s: removed the checkpoints of an earlier run from %s", _what(fold), folddir)
    internal = [EarlyStopping(patience), Checkpointer(fingerprint), EpochLog()]
    if is_main():
        try:
            internal.append(TensorBoard(folddir.parent / "tboard" / fold))
        except ImportError:
            pass
    for obj in internal:
        pm.register(obj)
    try:
        if state.epoch == 0 or not state.history:
            pm.hook.on_train_begin(state=state)
        if staged is not None:
            staged.run()
        while staged is None and state.epoch < nepochs and not state.stop_training:
            t0 = time.perf_counter()
            train_loss = train_epoch(loop, state)
            end_epoch(loop, state, train_loss, t0)
        if state.best_state is not None:
            unwrap(model).load_state_dict(state.best_state)
        pm.hook.on_train_end(state=state)
    finally:
        for obj in internal:
            pm.unregister(obj)
    return state


def epoch_label(state: TrainState) -> str:
    """How the progress display names the running epoch."""
    what = "pre-train" if state.fold == "pre-train" else f"fold {state.fold}"
    return f"{what} epoch {state.epoch + 1}" + (f"/{state.nepochs}" if state.stage is None else f" ({state.stage})")


def train_epoch(loop: Loop, state: TrainState) -> float:
    """One pass of shuffled minibatches with ``state.optimizer``; returns the mean training loss."""
    from .distributed import unwrap

    model, optimizer, gradacc = state.model, state.optimizer, loop.gradacc
    model.train()
    loop.pm.hook.on_epoch_begin(state=state)
    total, n_seen = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    # the shuffle depends only on (seed, fold, epoch): a resumed run sees the same order
    fold = state.fold
    epoch_seed = int(np.random.SeedSequence([loop.seed, int(fold) if fold.isdigit() else 0, state.epoch]).generate_state(1)[0])
    n_batches = 0
    label = epoch_label(state)
    if loop.progress is not None:
        loop.progress.start(label, len(loop.train_idx))
    for k, (idx, inp, y, w) in enumerate(loop.batches(loop.train_idx, shuffle=True, seed=epoch_seed, shard=True)):
        if len(idx) == 1 and k > 0:
            # BatchNorm cannot normalise a single sample in training mode; the next epoch's
            # shuffle puts another sample last, so every sample is still trained on
            continue
        state.batch = inp
        loop.pm.hook.on_batch_begin(state=state)
        with autocast(loop.device, loop.precision):
            loss = loop.loss_fn(model, inp, y, w) if loop.loss_fn is not None else loop.task.loss(model(inp), y, w)
            if loop.penalty is not None:
                loss = loss + loop.penalty(unwrap(model))
        (loss / gradacc).backward()
        loop.pm.hook.on_after_backward(state=state)
        n_batches += 1
        if n_batches % gradacc == 0:
            _step(model, optimizer, loop.clipnorm)
            state.step += 1
        state.loss = float(loss.detach())
        total += state.loss * len(idx)
        n_seen += len(idx)
        loop.pm.hook.on_batch_end(state=state)
        if loop.progress is not None:
            loop.progress.advance(len(idx), f"{label} loss {state.loss:.4g}")
    if n_batches % gradacc:
        _step(model, optimizer, loop.clipnorm)
        state.step += 1
    if loop.progress is not None:
        loop.progress.finish()
    return total / max(n_seen, 1)


def end_epoch(loop: Loop, state: TrainState, train_loss: float, t0: float, **extra: float) -> None:
    """Validate, record the epoch (``extra``: more training figures), fire ``on_epoch_end``
    (early stopping, checkpoint, log) and count the epoch."""
    model = state.model
    if loop.loss_fn is not None:
        val_loss = evaluate_loss(model, loop.batches, loop.val_idx, loop.loss_fn, loop.device, loop.precision)
    else:
        out, val_loss = evaluate(model, loop.batches, loop.val_idx, loop.task, loop.device, loop.precision)
    state.metrics = {"train_loss": train_loss, "val_loss": val_loss, **extra}
    if loop.val_metrics is not None and loop.loss_fn is None:
        state.metrics.update({f"val_{k}": v for k, v in loop.val_metrics(out).items() if isinstance(v, float)})
    state.metrics["seconds"] = time.perf_counter() - t0
    state.history.append({"epoch": state.epoch, **({"stage": state.stage} if state.stage is not None else {}), **state.metrics})
    loop.pm.hook.on_epoch_end(state=state)
    state.epoch += 1


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, clipnorm: float | None) -> None:
    if clipnorm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clipnorm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(params: list, training: Any, lr: float | None = None) -> torch.optim.Optimizer:
    """The run's optimizer (``settings: training: optimizer``) over ``params``; ``lr`` replaces
    the configured learning rate."""
    betas = (training.beta1, training.beta2)
    lr = training.lr if lr is None else lr
    if training.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=training.weightdecay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=training.weightdecay)
