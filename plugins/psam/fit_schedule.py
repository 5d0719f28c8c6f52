"""How the psam plugin fits from scratch: PyProBound's staged procedure as an engine fit schedule.

Modes are fitted one at a time (the others frozen; a mode not yet fitted is switched off), each
stage with full-batch L-BFGS to convergence (the engine's :class:`~biolm.core.hookspecs.Stage`):

``seed-i``
    no training; mode ``i`` is seeded from the data (:mod:`.seeding`: the k-mer most associated
    with the label, for later modes with what the fitted modes leave unexplained) on top of its
    random initial betas, unless ``model: seeds`` gave it a motif; with the affinity combine it
    starts with 20% of the modes' summed affinity.
``psam-i``
    the betas of mode ``i`` (and its log activity, for ``i > 0`` with the affinity combine), the
    head profiled (:mod:`.head_fit`: set to its exact optimum before every evaluation); then the
    gauge is fixed (:func:`.footprint.fix_gauge`).
``recenter-i``, ``shift-i``
    greedy: the motif moved to the kernel's centre of information, or one position towards an
    uninformative edge, refitted, and kept only if the objective improves by 0.1%.
``pairwise-i``, ``extra-i``
    only when the model has them: pairwise betas, then position bias, Hill coefficient, trained
    PSAM bias; undone when they make the validation loss worse (more parameters than the data
    support).
``psam-i-again``, ``recenter-i-again``, ``shift-i-again``
    with several modes, once all are in: each mode refitted and moved again against the others
    (a mode fitted early may have taken in parts of a motif that a later mode explains).
``all``
    every fitted parameter of every mode and the head together (head free); gauge fixed; undone
    when it makes the validation loss worse.

The objective is the engine's training loss over the whole training split (MSE on the scaled
labels, or the class-weighted cross-entropy) plus :func:`penalty` (PyProBound's defaults: an L2
term of 1e-6 and an exponential barrier at |beta| = 40), in float32. Stage limits come from
``settings: training``: ``nepochs`` epochs per stage (an epoch is one L-BFGS step of 20
iterations) and ``patience`` epochs without a better validation loss end a stage early.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .footprint import fix_gauge, recenter, shift_edge
from .head_fit import solve_head
from .predictor import PSAMInput
from .seeding import explained_by, seed_matrix

L2 = 1e-6
BARRIER = 40.0
KMER = 6
NEW_MODE_SHARE = 0.2  # of the summed affinity a new mode starts with (PyProBound: 0.05)
OFF = -1e3  # log activity of a mode not fitted yet (affinity combine): exp(OFF) adds nothing
FULL_BATCH = 4096  # sequences per forward pass over the training split


def penalty(model: PSAMInput) -> torch.Tensor:
    """L2 and exponential barrier on the trained PSAM parameters (not the head)."""
    total = torch.zeros((), device=model.net.head.weight.device)
    for name, p in model.net.named_parameters():
        if name.startswith("head.") or not p.requires_grad or not p.numel():
            continue
        total = total + L2 * p.square().sum() + (torch.exp(p - BARRIER) + torch.exp(-p - BARRIER)).sum()
    return total


def _param(kind: str, i: int) -> str:
    names = {
        "monomer": "layers\\.0\\.layer_spec\\.monomer",
        "pairwise": "layers\\.0\\.layer_spec\\.pairwise",
        "bias": "layers\\.0\\.layer_spec\\.bias",
        "posbias": "layers\\.0\\.log_posbias",
        "hill": "log_hill",
    }
    return f"^net\\.modes\\.{i}\\.{names[kind]}$"


HEAD = "^net\\.head\\."


def schedule(model: PSAMInput, model_cfg: Any, info: Any) -> list | None:
    """The stages for ``model`` (``ModelSpec.fit_schedule``); None with ``fitting: gradient``."""
    from biolm.core.hookspecs import Stage

    if model_cfg.fitting != "staged":
        return None
    net = model.net
    affinity = net.combine == "affinity"
    seeds = list(model_cfg.seeds) if model_cfg.seeds else [None] * net.n_modes
    kw = dict(batchsize=FULL_BATCH, before_objective=_profile)
    stages = []
    for i, mode in enumerate(net.modes):
        psam, conv = mode.psam, mode.layers[0]
        own = [_param("monomer", i)] + ([_param("bias", i)] if affinity and i > 0 else [])
        stages.append(Stage(f"seed-{i}", before=_Seed(i, seeds[i] is not None)))
        stages += _fit_mode(Stage, i, own, kw)
        if psam.pairwise_distance > 0:
            own.append(_param("pairwise", i))
            stages.append(Stage(f"pairwise-{i}", trainable=tuple(own), after=_gauge, undo_if_worse=True, **kw))
        extra = [_param(kind, i) for kind, on in (("posbias", conv.train_posbias), ("hill", mode.train_hill), ("bias", psam.train_bias and not affinity)) if on]
        if extra:
            stages.append(Stage(f"extra-{i}", trainable=tuple(own + extra), after=_gauge, undo_if_worse=True, **kw))
    if net.n_modes > 1:
        # a mode fitted early may have absorbed parts of motifs that later modes explain: once
        # all are in, each is refitted (and moved) alone against the others
        for i in range(net.n_modes):
            own = [_param("monomer", i)] + ([_param("bias", i)] if affinity and i > 0 else [])
            stages += _fit_mode(Stage, i, own, kw, again=True)
    everything = [HEAD]
    for i, mode in enumerate(net.modes):
        psam, conv = mode.psam, mode.layers[0]
        everything += [_param("monomer", i)] + [_param(kind, i) for kind, on in (
            ("pairwise", psam.pairwise_distance > 0), ("posbias", conv.train_posbias), ("hill", mode.train_hill),
            ("bias", (affinity and i > 0) or (psam.train_bias and not affinity))) if on]
    stages.append(Stage("all", trainable=tuple(everything), after=_gauge, batchsize=FULL_BATCH, undo_if_worse=True))
    return stages


def _fit_mode(Stage: Any, i: int, own: list[str], kw: dict, again: bool = False) -> list:
    """Train mode ``i``'s PSAM, then the greedy moves of its footprint (``again``: the refit after
    all modes are in, with its own record of the moves tried)."""
    tag = f"{i}-again" if again else f"{i}"
    return [
        Stage(f"psam-{tag}", trainable=tuple(own), after=_gauge, **kw),
        Stage(f"recenter-{tag}", trainable=tuple(own), before=_Recenter(i, tag), after=_gauge, greedy=True, **kw),
        Stage(f"shift-{tag}", trainable=tuple(own), before=_ShiftEdge(i, tag), after=_gauge, greedy=True, **kw),
    ]


def _gauge(ctx: Any) -> None:
    fix_gauge(ctx.model.net)


def _active(ctx: Any) -> list[int]:
    return ctx.memory.setdefault("active", [])


def _features(ctx: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head inputs (N, F) of the whole training split, with its targets and weights; with the
    linear combine, the columns of modes not fitted yet are 0 (their head weight stays 0)."""
    model, net = ctx.model, ctx.model.net
    feats, ys, ws = [], [], []
    for _, inp, y, w in ctx.batches():
        feats.append(net.head_input(model.log_affinities(inp)))
        ys.append(y)
        ws.append(w)
    f = torch.cat(feats)
    if net.combine == "linear":
        on = torch.zeros(net.n_modes, dtype=torch.bool, device=f.device)
        on[_active(ctx)] = True
        f = f.masked_fill(~on, 0.0)
    return f, torch.cat(ys), torch.cat(ws)


def _profile(ctx: Any) -> None:
    """``before_objective``: the head at its optimum for the current log-affinities."""
    f, y, w = _features(ctx)
    solve_head(ctx.model.net.head, f, y, w, ctx.task, ctx.class_weights)


class _Seed:
    """``before`` of ``seed-i``: switch mode ``i`` on, seeded from the data unless a seed motif
    was given (modes not fitted yet are switched off when the schedule starts)."""

    def __init__(self, i: int, given: bool):
        self.i, self.given = i, given

    def __call__(self, ctx: Any) -> None:
        net, i = ctx.model.net, self.i
        with torch.no_grad():
            if i == 0 and net.combine == "affinity":
                for later in net.modes[1:]:
                    later.psam.bias.fill_(OFF)
            if not self.given:
                self.seed(ctx)
            _active(ctx).append(i)
            if net.combine == "affinity" and i > 0:
                self.share(ctx)

    def seed(self, ctx: Any) -> None:
        net, i = ctx.model.net, self.i
        psam = net.modes[i].psam
        if len(psam.alphabet) != 4 or psam.monomer.shape[1] != 1:
            ctx.log.info("psam: mode %d keeps its random start (data seeding needs a 4-letter alphabet and one motif per mode)", i)
            return
        codes, target, signed = self.target(ctx)
        fitted = [net.modes[j].psam.get_filter(0)[0].T.double().cpu().numpy() for j in _active(ctx)]
        betas, info = seed_matrix(codes, target, psam.kernel_size, KMER, signed=signed, both_strands=psam.score_reverse, exclude=explained_by(fitted) if fitted else None)
        values = psam.monomer.detach().clone()
        for pos in range(psam.kernel_size):
            v = torch.as_tensor(betas[pos], dtype=values.dtype, device=values.device)
            values[int(psam._mono_index[pos]), 0] += v.flip(-1) if bool(psam._mono_flip[pos]) else v
        psam.monomer.copy_(values)
        ctx.memory.setdefault("seeds", {})[str(i)] = info
        ctx.log.info("psam: mode %d seeded with %s (k-mer correlation %.3f, %d occurrences)", i, info["kmer"], info["r"], info["occurrences"])

    def target(self, ctx: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        """Letters (N, L), what the new mode should explain (N, T), and whether only k-mers that
        raise it count: the labels (class indicators) for the first mode; what the fitted modes
        leave for later ones (for the affinity combine, in the direction more affinity moves
        the prediction)."""
        model, net = ctx.model, ctx.model.net
        letters, ys, outs = [], [], []
        for _, inp, y, _ in ctx.batches():
            letters.append(model.letters(inp))
            ys.append(y)
            outs.append(model(inp) if _active(ctx) else None)
        codes = torch.cat(letters).cpu().numpy()
        y = torch.cat(ys)
        if ctx.task == "classification":
            y = torch.nn.functional.one_hot(y.long(), ctx.n_outputs).double()
            y = y[:, 1:] if ctx.n_outputs == 2 else y
        else:
            y = y.double().reshape(len(y), -1)
        if not _active(ctx):
            return codes, y.cpu().numpy(), False
        out = torch.cat(outs).double()
        if ctx.task == "classification":
            resid = y - (out.softmax(-1)[:, 1:] if ctx.n_outputs == 2 else out.softmax(-1))
        else:
            resid = y - out
        if net.combine == "affinity":
            direction = net.head.weight.double()[:, 0]  # (n_outputs,): what more log Z does
            if ctx.task == "classification" and ctx.n_outputs == 2:
                direction = direction[1:] - direction[:1]
            return codes, (resid * torch.sign(direction)).cpu().numpy(), True
        return codes, resid.cpu().numpy(), False

    def share(self, ctx: Any) -> None:
        """Log activity of mode ``i`` such that it holds NEW_MODE_SHARE of the summed affinity."""
        net, i = ctx.model.net, self.i
        la = torch.cat([ctx.model.log_affinities(inp) for _, inp, _, _ in ctx.batches()]).double()
        others = [j for j in _active(ctx) if j != i]
        old = la[:, others].logsumexp(-1)
        target = math.log(NEW_MODE_SHARE / (1 - NEW_MODE_SHARE)) + float(old.logsumexp(0)) - math.log(len(old))
        own = float(la[:, i].logsumexp(0)) - math.log(len(la))
        net.modes[i].psam.bias += (target - own) / float(net.modes[i].log_hill.exp())


class _Recenter:
    """``before`` of ``recenter-i`` (greedy): centre mode ``i``'s information in the kernel."""

    def __init__(self, i: int, tag: str):
        self.i, self.tag = i, tag

    def __call__(self, ctx: Any) -> bool:
        tried = ctx.memory.setdefault(f"recentred-{self.tag}", [])
        moved = recenter(ctx.model.net.modes[self.i].psam, tried)
        if moved:
            ctx.log.info("psam: mode %d moved %+d positions to centre its information", self.i, moved)
        return moved != 0


class _ShiftEdge:
    """``before`` of ``shift-i`` (greedy): move mode ``i`` towards an uninformative edge."""

    def __init__(self, i: int, tag: str):
        self.i, self.tag = i, tag

    def __call__(self, ctx: Any) -> bool:
        offset = ctx.memory.get(f"offset-{self.tag}", 0)
        tried = ctx.memory.setdefault(f"offsets-{self.tag}", [0])
        step = shift_edge(ctx.model.net.modes[self.i].psam, offset, tried)
        if step:
            ctx.memory[f"offset-{self.tag}"] = offset + step
            ctx.log.info("psam: mode %d moved %+d position towards an uninformative edge", self.i, step)
        return step != 0
