"""The pca plugin's model for each input kind: :class:`~.predictor.PCAPredictor` with the
preprocessing its input needs, and that preprocessing's fitting and export.

Which preprocessing depends on the input kind (``ModelInfo.input_kind``): single-cell
preprocessing for ``expression`` (:mod:`.preprocessing`), EIR's array normalization for
``array``, none for one-hot sequences (the state dict is then exactly IPCA + head). Fitted
statistics are buffers, so a fold's weights carry them and predict applies them unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biolm.core.hookspecs import ConfigError

from .predictor import PCAPredictor
from .preprocessing import ExpressionPreprocessing


def build_pipeline(model_cfg: Any, info: Any) -> PCAPredictor:
    """The predictor for ``info`` (input kind, positions L = ``blocksize``, channels C)."""
    from biolm.core.hookspecs import ArrayNormalization

    kind, L, C = info.input_kind, int(info.blocksize), int(info.in_channels)
    prep: Any = None
    if kind == "expression":
        genes = list(getattr(info.tokenizer, "vocab", None) or []) or None
        prep = ExpressionPreprocessing(L * C, model_cfg.normalize_total, model_cfg.log1p, model_cfg.n_top_genes, model_cfg.zscore, genes)
        n_features, what = prep.n_out, f"{prep.n_out} genes"
    elif kind == "array":
        prep, n_features, what = ArrayNormalization(L, C, model_cfg.normalization), L * C, f"{L} positions x {C} channels"
    else:
        n_features, what = L * C, "blocksize x channels"
    if model_cfg.n_components > n_features:
        raise ConfigError("model.n_components", f"{model_cfg.n_components} components from {n_features} input features ({what})")
    task = "classification" if info.task == "classification" else "regression"
    return PCAPredictor(n_features, model_cfg.n_components, info.n_outputs, task=task, svd_lowrank_niter=model_cfg.svd_lowrank_niter, perform_mean_correction=model_cfg.perform_mean_correction, svd_oversample=model_cfg.svd_oversample, preprocess=prep)


def fit_inputs(net: PCAPredictor, batches: Any, train_idx: np.ndarray, max_samples: int | None) -> None:
    """Fit the preprocessing's statistics on the training split (a no-op for one-hot input)."""
    if isinstance(net.preprocess, ExpressionPreprocessing):
        net.preprocess.fit(batches, train_idx)
    elif net.preprocess is not None:
        net.preprocess.fit(batches, train_idx, max_samples)


def export(net: PCAPredictor, folddir: Any) -> None:
    """``preprocessing.json`` for an expression model: its steps and the genes it reads."""
    p = net.preprocess
    if not isinstance(p, ExpressionPreprocessing):
        return
    from biolm.core.hookspecs import write_json

    used = p.genes.tolist()
    selected = [p.gene_names[i] for i in used] if p.gene_names else used
    write_json(folddir / "preprocessing.json", {"normalize_total": p.normalize_total, "log1p": p.log1p, "n_top_genes": p.n_top_genes, "zscore": p.zscore, "n_genes_in": p.n_genes, "genes_used": selected})
