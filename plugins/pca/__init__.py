"""The ``pca`` plugin: cellarium-ml's incremental PCA, then a linear head (ridge regression /
multinomial logistic regression) on the components.

Three inputs, the tokenizer kind chosen from the data file:

- one-hot sequences (``atomic``; delimited text) of a fixed block size, flattened;
- single-cell expression (``expression``; ``.h5ad``): raw counts -> ``normalize_total`` ->
  ``log1p`` -> ``n_top_genes`` highly variable genes -> ``zscore`` (:mod:`.preprocessing`; the
  gene selection and z-scores are fitted on the fold's training split and saved with it);
- numeric arrays (``array``; ``.npy``/``.npz``), normalised as EIR does (``normalization``,
  fitted on the training split), flattened.

``fine-tune`` fits the PCA in one pass over the training split (batch-wise low-rank SVD updates,
merged exactly), then the head in closed form / by L-BFGS — no gradient-descent epochs.
``predict --saveembeddings`` writes the component scores; ``interpret`` scores genes (knockout)
or array positions (masking).
"""

from __future__ import annotations

from dataclasses import dataclass

from biolm.core.hookspecs import ConfigError, ModelSpec, PluginConfig, hookimpl, opt, parsers

TRAIN = {"fine-tune"}


@dataclass
class PCASchema:
    n_components: int = opt(16, "Principal components kept.", minimum=1, modes=TRAIN)
    svd_lowrank_niter: int = opt(8, "Subspace iterations of each low-rank SVD update (cellarium: 2; with svd_oversample 30 an update is practically exact).", minimum=0, modes=TRAIN)
    svd_oversample: int = opt(30, "Extra columns of each randomised SVD, for accuracy (cellarium: 0).", minimum=0, modes=TRAIN)
    update_rows: int | None = opt(None, "Training rows pooled into one SVD update: more = closer to an exact PCA (each update keeps only the top components of its rows); unset = as many as fit in 256 MB, at most 8192.", parse=parsers.INT, minimum=1, modes=TRAIN)
    perform_mean_correction: bool = opt(True, "Correct the running mean in each update (False: data assumed centred).", modes=TRAIN)
    ridge_alpha: float = opt(1.0, "L2 strength of the linear head (ridge / logistic regression).", minimum=0.0, modes=TRAIN)
    standardize: bool = opt(True, "Fit the head on standardised component scores.", modes=TRAIN)
    normalize_total: float | None = opt(10000.0, "Expression input: scale each cell's counts to this total (scanpy normalize_total); unset/False = off.", parse=parsers.FLOAT, false_is_unset=True, minimum=0.0, modes=TRAIN)
    log1p: bool = opt(True, "Expression input: log(1 + x) after normalize_total.", modes=TRAIN)
    n_top_genes: int | None = opt(None, "Expression input: keep this many highly variable genes (scanpy flavor 'seurat'), chosen on the training split; unset = all genes.", parse=parsers.INT, minimum=1, modes=TRAIN)
    zscore: bool = opt(False, "Expression input: z-score each gene with the training split's mean and std (saved with the model).", modes=TRAIN)
    normalization: str = opt("channel", "Array input: EIR's normalization fitted on the training split: channel, element or none.", choices=("channel", "element", "none"), modes=TRAIN)
    adaptive_normalization_max_samples: int | None = opt(None, "Array input: fit the normalization on at most this many (random) training samples; unset = all.", parse=parsers.INT, minimum=1, modes=TRAIN)


def _build(model_cfg: PCASchema, info):
    from biolm.core.hookspecs import InputAdapter

    from .pipeline import build_pipeline

    try:
        net = build_pipeline(model_cfg, info)
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    return InputAdapter(net, ("x",))


def _fit_inputs(model, batches, train_idx, model_cfg: PCASchema):
    """Gene selection and z-scores (expression) or EIR's normalization (arrays), on the training split."""
    from .pipeline import fit_inputs

    fit_inputs(model.net, batches, train_idx, model_cfg.adaptive_normalization_max_samples)


def _fit(model, batches, train_idx, task, model_cfg: PCASchema):
    """One pass of IPCA updates over the training split, then the closed-form / L-BFGS head."""
    import torch

    net = model.net
    k = net.n_components
    if len(train_idx) < k:
        raise ConfigError("model.n_components", f"{k} components need at least {k} training samples, the split has {len(train_idx)}")
    # each update keeps only the top components of its rows, so small updates lose the variance
    # spread beyond them: batches are pooled into large updates (measured on the PBMC-like example:
    # 128-row updates kept 75 % of the exact top-16 variance, one 840-row update 99 %)
    rows = model_cfg.update_rows or min(8192, 64_000_000 // net.n_features)
    rows = max(k, rows)
    with torch.no_grad():
        pending = []
        n_pending = 0
        for _, inp, _, _ in batches(train_idx, shuffle=False):
            pending.append(inp["x"])
            n_pending += len(inp["x"])
            if n_pending >= rows:
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


def _export(model, folddir):
    """``preprocessing.json`` next to an expression model: the steps and the genes it reads."""
    from .pipeline import export

    export(model.net, folddir)


@hookimpl
def register_config(register):
    register(
        PluginConfig(
            name="pca",
            description="Incremental PCA (cellarium-ml) + ridge/logistic head on one-hot sequences, .h5ad expression or .npy arrays.",
            model_schema=PCASchema,
            training_defaults=dict(batchsize=64, blocksize=512),
            modes=("tokenize", "fine-tune", "predict", "interpret"),
            tokenizers=("atomic", "expression", "array"),
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
    register("pca", ModelSpec(build=_build, fit=_fit, fit_inputs=_fit_inputs, embed=_embed, export=_export, fast_loo=_fast_loo))
