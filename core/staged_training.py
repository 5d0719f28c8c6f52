"""Staged training: a plugin's fit schedule (``ModelSpec.fit_schedule``) run through the engine.

A schedule is a list of :class:`~biolm.core.hookspecs.Stage`. Each stage trains one selection
of the parameters (the others frozen) with full-batch L-BFGS or the run's own optimizer until
its convergence test, validation early stopping or its epoch limit ends it; actions before and
after a stage may read the training split and edit parameters; a greedy stage keeps its result
only when the training objective improved. Epochs are the engine's (``train.end_epoch``): they
validate, fire ``on_epoch_end`` (early stopping, checkpoint, log, tensorboard and any installed
hook) and count across stages.

Progress lives in ``TrainState.schedule`` (JSON, in every checkpoint's ``state.json``)::

    stage        index of the running stage
    phase        "train" while its epochs run, "done" after its last epoch ("diverged": the
                 objective became NaN/inf; that epoch was undone)
    stage_epoch  epochs run in the stage;  objective  the objective after the last of them
    slow         epochs in a row whose relative improvement was below the stage's tol
    greedy       the objective and kept epoch before the running greedy proposal
    before       (``undo_if_worse``) the validation loss and kept epoch before the stage
    memory       the actions' StageContext.memory
    summary      what each finished stage did (trainer_state.json's ``stages``)

and ``TrainState.schedule_tensors`` (``schedule.pt``): the weights when the stage's training
started ("start", restored if no epoch is kept) and before a greedy proposal
("before_proposal", restored when it is rejected).

Resume: what happens after a checkpoint is a deterministic function of its contents (weights,
optimizer, progress, memory), so a resumed run ends where an uninterrupted one does. A
checkpoint in phase "train" continues the stage's epochs with its restored optimizer; one in
phase "done" (or with early stopping triggered) ends that stage as the uninterrupted run did:
kept weights, ``after``, greedy decision, then the next stage.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .engine import Loop, TrainState, end_epoch, epoch_label, train_epoch
from .errors import ConfigError
from .hookspecs import Stage

OPTIMIZERS = ("lbfgs", "settings")


class FullBatch:
    """The training split held in memory as batches of ``size`` samples, and the objective over it."""

    def __init__(self, loop: Loop, size: int | None):
        self.loop = loop
        self.batches = list(loop.batches(loop.train_idx, shuffle=False, size=size))
        self.weight = float(sum(float(loop.task.weight(y, w)) for _, _, y, w in self.batches))

    def objective(self, model: torch.nn.Module, net: torch.nn.Module, backward: bool) -> tuple[float, float]:
        """(objective, mean loss) at the current weights; ``backward``: accumulate its gradient.

        The objective is the weighted mean loss over the split plus the model's penalty; each
        batch's share is back-propagated on its own, so memory holds one batch's graph."""
        total = 0.0
        with torch.set_grad_enabled(backward):
            for _, inp, y, w in self.batches:
                part, _ = self.loop.task.loss_terms(model(inp), y, w)
                if backward:
                    (part / self.weight).backward()
                total += float(part.detach())
            loss = total / max(self.weight, 1e-12)
            value = loss
            if self.loop.penalty is not None:
                penalty = self.loop.penalty(net)
                if backward and penalty.requires_grad:
                    penalty.backward()
                value += float(penalty.detach())
        return value, loss


@dataclass
class Context:
    """The :class:`~biolm.core.hookspecs.StageContext` of one stage."""

    fit: "StagedFit"
    stage: Stage

    @property
    def model(self) -> Any:
        return self.fit.net

    @property
    def task(self) -> str:
        return self.fit.loop.task.kind

    @property
    def n_outputs(self) -> int:
        return self.fit.loop.task.n_outputs

    @property
    def class_weights(self) -> Any:
        return self.fit.loop.task.class_weights

    @property
    def memory(self) -> dict:
        return self.fit.state.schedule["memory"]

    @property
    def log(self) -> Any:
        return self.fit.loop.log

    def batches(self) -> list:
        return self.fit.data(self.stage).batches

    def objective(self) -> float:
        return self.fit.objective(self.stage)[0]


class StagedFit:
    """Runs ``stages`` on ``state`` (see the module docstring); ``settings_optimizer(params, lr)``
    builds the run's own optimizer for ``optimizer="settings"`` stages."""

    def __init__(self, loop: Loop, state: TrainState, stages: list[Stage], settings_optimizer: Callable[..., Any] | None):
        from .distributed import is_distributed, unwrap

        if is_distributed():
            raise ConfigError("settings.environment.ngpus", f"the {state.plugin} model trains in stages (its fit schedule), which runs in one process: set ngpus to 1")
        for stage in stages:
            if stage.optimizer not in OPTIMIZERS:
                raise ValueError(f"stage {stage.name!r}: optimizer must be one of {OPTIMIZERS}, not {stage.optimizer!r}")
        self.loop, self.state, self.stages = loop, state, list(stages)
        self.settings_optimizer = settings_optimizer
        self.net = unwrap(state.model)
        self.flags = {name: p.requires_grad for name, p in self.net.named_parameters()}
        self.cache: dict[int | None, FullBatch] = {}
        state.optimizer_factory = self.optimizer_for

    # ------------------------------------------------------------------ pieces
    def data(self, stage: Stage) -> FullBatch:
        if stage.batchsize not in self.cache:
            self.cache[stage.batchsize] = FullBatch(self.loop, stage.batchsize)
        return self.cache[stage.batchsize]

    def before_objective(self, stage: Stage) -> None:
        if stage.before_objective is not None and stage.optimizer == "lbfgs":
            with torch.no_grad():
                stage.before_objective(Context(self, stage))

    def objective(self, stage: Stage) -> tuple[float, float]:
        """(objective, mean loss) over the training split, as the stage sees it."""
        self.state.model.eval()
        self.before_objective(stage)
        return self.data(stage).objective(self.state.model, self.net, backward=False)

    def trainable(self, stage: Stage) -> list[torch.nn.Parameter]:
        """Freeze every parameter but the stage's; returns those."""
        patterns = [re.compile(p) for p in stage.trainable]
        chosen = []
        for name, p in self.net.named_parameters():
            on = any(r.search(name) for r in patterns)
            p.requires_grad_(on)
            if on:
                chosen.append(p)
        return chosen

    def optimizer_for(self, progress: dict) -> torch.optim.Optimizer | None:
        """The optimizer of the stage ``progress`` names, over its trainable parameters (None when
        it trains nothing); also used to rebuild it from a checkpoint before its state is loaded."""
        stage = self.stages[progress["stage"]]
        params = self.trainable(stage)
        if not params:
            return None
        if stage.optimizer == "lbfgs":
            return torch.optim.LBFGS(params, lr=stage.lr or 1.0, max_iter=stage.lbfgs_iterations, history_size=stage.lbfgs_history, line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
        return self.settings_optimizer(params, stage.lr)

    def weights(self) -> dict:
        return copy.deepcopy({k: v.detach().cpu() for k, v in self.net.state_dict().items()})

    # ------------------------------------------------------------------ the schedule
    def run(self) -> None:
        st = self.state
        resumed = bool(st.schedule)
        if not resumed:
            st.schedule.update(stage=0, phase="start", memory={}, summary=[])
        try:
            while st.schedule["stage"] < len(self.stages):
                self.run_stage(self.stages[st.schedule["stage"]], resumed)
                resumed = False
                st.schedule.update(stage=st.schedule["stage"] + 1, phase="start")
        finally:
            for name, p in self.net.named_parameters():
                p.requires_grad_(self.flags[name])
            st.stage = None
        st.best_state = None  # the last stage's kept weights, after its actions, are the result

    def run_stage(self, stage: Stage, resumed: bool) -> None:
        """One stage; a greedy one repeats proposal, training and decision until a proposal is
        rejected or there is none."""
        st, sched = self.state, self.state.schedule
        st.stage = stage.name
        ctx = Context(self, stage)
        while True:
            if resumed and sched["phase"] in ("train", "done", "diverged"):
                resumed = False
            else:
                if stage.greedy:
                    st.schedule_tensors["before_proposal"] = self.weights()
                    sched["greedy"] = {"objective": self.objective(stage)[0], "best_epoch": st.best_epoch, "best_val_loss": st.best_val_loss}
                proposed = stage.before(ctx) if stage.before is not None else None
                if stage.greedy and proposed is False:
                    self.net.load_state_dict(st.schedule_tensors.pop("before_proposal"))
                    self.record(stage, "nothing more to propose" if sched.get("accepted") else "nothing to propose")
                    sched.pop("accepted", None)
                    return
                self.start_training(stage)
            outcome = self.train_stage(stage)
            if stage.after is not None:
                stage.after(ctx)
            if not stage.greedy:
                self.record(stage, outcome)
                return
            before, after = sched["greedy"]["objective"], self.objective(stage)[0]
            if after < before - stage.greedy_threshold * abs(before):
                self.loop.log.info("fold %s: %s: proposal kept (objective %.6g -> %.6g)", st.fold, stage.name, before, after)
                sched["accepted"] = sched.get("accepted", 0) + 1
                continue
            self.loop.log.info("fold %s: %s: proposal rejected (objective %.6g -> %.6g)", st.fold, stage.name, before, after)
            self.net.load_state_dict(st.schedule_tensors.pop("before_proposal"))
            st.best_epoch, st.best_val_loss = sched["greedy"]["best_epoch"], sched["greedy"]["best_val_loss"]
            self.record(stage, f"{sched.pop('accepted', 0)} proposal(s) kept, then one rejected")
            return

    def start_training(self, stage: Stage) -> None:
        st, sched = self.state, self.state.schedule
        sched.update(phase="train", stage_epoch=0, slow=0)
        before = {"best_epoch": st.best_epoch, "val_loss": self.validation_loss()} if stage.undo_if_worse else None
        st.best_val_loss, st.best_epoch, st.bad_epochs, st.best_state, st.stop_training = math.inf, -1, 0, None, False
        st.optimizer = self.optimizer_for(sched)
        if st.optimizer is None:
            sched.update(phase="done", objective=None)
            return
        sched["before"] = before
        st.schedule_tensors["start"] = self.weights()
        # a minibatch stage compares the objective of its epochs only; a full-batch one also the start
        sched["objective"] = self.objective(stage)[0] if stage.optimizer == "lbfgs" else None

    def train_stage(self, stage: Stage) -> str:
        """The stage's epochs (from where a checkpoint left them); then its kept weights are in
        place. Returns why it ended."""
        st, sched = self.state, self.state.schedule
        if st.optimizer is None:
            return "actions only"
        limit = stage.max_epochs or self.loop.nepochs
        while sched["phase"] == "train" and not st.stop_training:
            t0 = time.perf_counter()
            if stage.optimizer == "lbfgs":
                before = self.weights()
                value, loss = self.lbfgs_epoch(stage)
            else:
                loss = train_epoch(self.loop, st)
                value = loss + (float(self.loop.penalty(self.net)) if self.loop.penalty is not None else 0.0)
            if not math.isfinite(value):
                # nothing of this epoch is kept (it is not recorded either: a resumed run redoes it)
                if stage.optimizer == "lbfgs":
                    self.net.load_state_dict(before)
                self.loop.log.warning("fold %s: %s: the objective became %s; the stage ends with its best weights before that", st.fold, stage.name, value)
                sched["phase"] = "diverged"
                break
            previous = sched["objective"]
            gain = math.inf if previous is None else (previous - value) / max(abs(previous), 1e-12)
            sched["slow"] = sched["slow"] + 1 if gain < stage.tol else 0
            sched["stage_epoch"] += 1
            sched["objective"] = value
            if sched["slow"] >= stage.converge_epochs or sched["stage_epoch"] >= limit:
                sched["phase"] = "done"
            end_epoch(self.loop, st, loss, t0, objective=value)
        if st.best_state is not None:
            self.net.load_state_dict(st.best_state)
        else:
            self.net.load_state_dict(st.schedule_tensors["start"])
        if sched["phase"] == "diverged":
            outcome = "diverged"
        elif st.stop_training:
            outcome = "early stop"
        else:
            outcome = "converged" if sched["slow"] >= stage.converge_epochs else "epoch limit"
        before = sched.get("before")
        if before and not st.best_val_loss <= before["val_loss"]:
            self.net.load_state_dict(st.schedule_tensors["start"])
            worse = st.best_val_loss
            st.best_val_loss, st.best_epoch = before["val_loss"], before["best_epoch"]
            return f"undone ({outcome}, but validation loss {before['val_loss']:.8g} -> {worse:.8g})"
        return outcome

    def validation_loss(self) -> float:
        """The validation loss at the current weights (as an epoch reports it)."""
        from .engine import evaluate, evaluate_loss

        loop = self.loop
        if loop.loss_fn is not None:
            return evaluate_loss(self.state.model, loop.batches, loop.val_idx, loop.loss_fn, loop.device, loop.precision)
        return evaluate(self.state.model, loop.batches, loop.val_idx, loop.task, loop.device, loop.precision)[1]

    def lbfgs_epoch(self, stage: Stage) -> tuple[float, float]:
        """One full-batch L-BFGS step; returns the (objective, mean loss) after it."""
        st, loop = self.state, self.loop
        optimizer, data = st.optimizer, self.data(stage)
        st.model.eval()
        loop.pm.hook.on_epoch_begin(state=st)
        if loop.progress is not None:
            loop.progress.start(epoch_label(st), len(loop.train_idx))
        st.batch = None
        loop.pm.hook.on_batch_begin(state=st)

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            self.before_objective(stage)
            value, _ = data.objective(st.model, self.net, backward=True)
            loop.pm.hook.on_after_backward(state=st)
            return torch.tensor(value)

        optimizer.step(closure)
        st.step += 1
        value, loss = self.objective(stage)
        st.loss = loss
        loop.pm.hook.on_batch_end(state=st)
        if loop.progress is not None:
            loop.progress.advance(len(loop.train_idx), f"{epoch_label(st)} objective {value:.6g}")
            loop.progress.finish()
        return value, loss

    def record(self, stage: Stage, outcome: str) -> None:
        """A finished stage in the log and the summary; a minibatch stage reports the objective
        of its last epoch, others are evaluated on the whole split."""
        st, sched = self.state, self.state.schedule
        epochs = sum(1 for h in st.history if h.get("stage") == stage.name)
        trained_by_minibatch = stage.optimizer != "lbfgs" and not stage.greedy and not outcome.startswith("undone") and st.optimizer is not None and sched.get("objective") is not None
        objective = sched["objective"] if trained_by_minibatch else self.objective(stage)[0]
        sched["summary"].append({"stage": stage.name, "epochs": epochs, "objective": objective, "outcome": outcome})
        self.loop.log.info("fold %s: stage %s: %s after %d epoch(s) (objective %.6g)", st.fold, stage.name, outcome, epochs, objective)
