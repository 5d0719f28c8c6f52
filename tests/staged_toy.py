"""A toy plugin with a fit schedule, registered in tests through the plugin API only.

Model: per-channel composition of the one-hot input (B, C) -> ``feature = composition . w`` ->
``head(feature) = a * feature + b``. Schedule:

1. ``features`` (L-BFGS): ``w`` with the head profiled (``before_objective`` solves ``a, b``
   by weighted least squares), ``after``: ``w`` scaled to unit norm with ``a`` rescaled (the
   predictions do not change);
2. ``flip`` (greedy, L-BFGS): proposes ``w -> -w`` twice (memory counts the proposals), then
   has nothing to propose;
3. ``wild`` (the run's optimizer at a learning rate far too high, one epoch, ``undo_if_worse``):
   makes the validation loss worse and is undone;
4. ``all`` (the run's optimizer, minibatches): ``w`` and the head together.
"""

from __future__ import annotations

from dataclasses import dataclass

from biolm.core.hookspecs import ModelSpec, PluginConfig, Stage, hookimpl, opt

TRAIN = {"fine-tune"}


@dataclass
class ToyStagedSchema:
    staged: bool = opt(True, "Train in stages.", modes=TRAIN)


def _build(model_cfg, info):
    import torch

    class Toy(torch.nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.w = torch.nn.Parameter(0.1 * torch.randn(channels))
            self.head = torch.nn.Linear(1, 1)

        def feature(self, batch):
            x, n = batch["x"], batch["lengths"].clamp(min=1).to(batch["x"].dtype)
            return (x.sum(1) / n[:, None]) @ self.w

        def forward(self, batch):
            return self.head(self.feature(batch)[:, None])

    return Toy(info.in_channels)


def _profile_head(ctx):
    import torch

    feats, ys, ws = [], [], []
    for _, inp, y, w in ctx.batches():
        feats.append(ctx.model.feature(inp))
        ys.append(y)
        ws.append(w)
    f, y, w = torch.cat(feats).double(), torch.cat(ys).double(), torch.cat(ws).double()
    design = torch.stack([f, torch.ones_like(f)], 1)
    gram = design.T @ (design * w[:, None]) + 1e-9 * torch.eye(2, dtype=f.dtype)
    a, b = torch.linalg.solve(gram, design.T @ (w * y))
    ctx.model.head.weight.fill_(float(a))
    ctx.model.head.bias.fill_(float(b))


def _unit_norm(ctx):
    import torch

    with torch.no_grad():
        norm = ctx.model.w.norm()
        ctx.model.w.div_(norm)
        ctx.model.head.weight.mul_(norm)
    ctx.memory.setdefault("normalised", 0)
    ctx.memory["normalised"] += 1


def _flip(ctx):
    import torch

    tried = ctx.memory.setdefault("flips", 0)
    if tried >= 2:
        return False
    ctx.memory["flips"] = tried + 1
    with torch.no_grad():
        ctx.model.w.neg_()
    return True


def _schedule(model, model_cfg, info):
    if not model_cfg.staged:
        return None
    return [
        Stage("features", trainable=("^w$",), before_objective=_profile_head, after=_unit_norm, max_epochs=8, batchsize=1000),
        Stage("flip", trainable=("^w$",), before=_flip, before_objective=_profile_head, greedy=True, max_epochs=3),
        Stage("wild", trainable=("^w$", r"^head\."), optimizer="settings", lr=100.0, max_epochs=1, undo_if_worse=True),
        Stage("all", trainable=("^w$", r"^head\."), optimizer="settings", lr=0.01, max_epochs=3),
    ]


@hookimpl
def register_config(register):
    register(PluginConfig(name="toystaged", description="toy plugin with a fit schedule", model_schema=ToyStagedSchema, training_defaults=dict(batchsize=16, blocksize=64, nepochs=5, patience=50)))


@hookimpl
def register_model(register):
    register("toystaged", ModelSpec(build=_build, fit_schedule=_schedule))
