"""The ``pca`` plugin: cellarium-ml's incremental PCA on flattened one-hot sequences, then a
linear head (ridge regression / multinomial logistic regression) on the components.

``fine-tune`` fits the PCA in one pass over the training split (batch-wise low-rank SVD updates,
merged exactly), then the head in closed form / by L-BFGS — no gradient-descent epochs.
``predict --saveembeddings`` writes the component scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from biolm.core.hookspecs import ConfigError, ModelSpec, PluginConfig, hookimpl, opt

TRAIN = {"fine-tune"}


@dataclass
class PCASchema:
    n_components: int = opt(16, "Principal components kept.", minimum=1, modes=TRAIN)
    svd_lowrank_niter: int = opt(2, "Subspace iterations of each low-rank SVD update.", minimum=0, modes=TRAIN)
    perform_mean_correction: bool = opt(True, "Correct the running mean in each update (False: data assumed centred).", modes=TRAIN)
    ridge_alpha: float = opt(1.0, "L2 strength of the linear head (ridge / logistic regression).", minimum=0.0, modes=TRAIN)
    standardize: bool = opt(True, "Fit the head on standardised component scores.", modes=TRAIN)


def _build(model_cfg: PCASchema, info):
    from biolm.core.hookspecs import InputAdapter

    from .model import PCAPredictor

    n_features = info.blocksize * info.in_channels
    if model_cfg.n_components > n_features:
        raise ConfigError("model.n_components", f"{model_cfg.n_components} components from {n_features} input features (blocksize x channels)")
    task = "classification" if info.task == "classification" else "regression"
    net = PCAPredictor(n_features, model_cfg.n_components, info.n_outputs, task=task, svd_lowrank_niter=model_cfg.svd_lowrank_niter, perform_mean_correction=model_cfg.perform_mean_correction)
    return InputAdapter(net, ("x",))


def _fit(model, batches, train_idx, task, model_cfg: PCASchema):
    """One pass of IPCA updates over the training split, then the closed-form / L-BFGS head."""
    import torch

    net = model.net
    k = net.n_components
    if len(train_idx) < k:
        raise ConfigError("model.n_components", f"{k} components need at least {k} training samples, the split has {len(train_idx)}")
    with torch.no_grad():
        pending = []
        n_pending = 0
        for _, inp, _, _ in batches(train_idx, shuffle=False):
            # an SVD update needs at least k rows: small batches are pooled first
            pending.append(inp["x"])
            n_pending += len(inp["x"])
            if n_pending >= k:
                net.partial_fit(torch.cat(pending))
                pending, n_pending = [], 0
        if pending:
            net.partial_fit(torch.cat(pending))
        net.merge_distributed()
        zs, ys, ws = [], [], []
        for _, inp, y, w in batches(train_idx, shuffle=False):
            zs.append(net.embed(inp["x"]).cpu())
            ys.append(y.cpu())
            ws.append(w.cpu())
    net.fit_head(torch.cat(zs), torch.cat(ys), task=task.kind, ridge_alpha=model_cfg.ridge_alpha, sample_weight=torch.cat(ws), standardize=model_cfg.standardize)


def _embed(model, inp):
    """The component scores (B, n_components)."""
    return model.net.embed(inp["x"])


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="pca",
            description="Incremental PCA (cellarium-ml) + ridge/logistic head on flattened one-hot sequences.",
            model_schema=PCASchema,
            training_defaults=dict(batchsize=64, blocksize=512),
            modes=("tokenize", "fine-tune", "predict", "interpret"),
            fixed_length=True,
            max_blocksize=1 << 16,  # blocksize x channels input features, each a column of every component
        )
    )


def _fast_loo(model, inp, n, positions, rows):
    """Exact single-position leave-one-out in closed form (the model is linear in its input)."""
    from .fastloo import fast_loo

    return fast_loo(model, inp, n, positions, rows)


@hookimpl
def register_model(register):
    register("pca", ModelSpec(build=_build, fit=_fit, embed=_embed, fast_loo=_fast_loo))
