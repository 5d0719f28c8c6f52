"""``predict`` mode: apply a fine-tuned model (a fold, or every fold of a CV parent) to new data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from ..ensemble import input_batches, load_ensemble, model_encoding, open_store, run_ensemble, selected_indices, tokenizer_spec
from ..outputs import write_json
from ..publish import publication
from ..results import write_predictions
from ..scaling import LabelEncoder, parse_float_labels
from ..sharding import Shards, concat_h5

# what a predict run publishes (an earlier run's set is replaced as a whole)
RESULTS = ("test_predictions.csv", "rank_deltas.csv", "test_results.json", "embeddings.h5")


def execute(run: Any) -> dict:
    from ..engine import resolve_device

    device = resolve_device(run.cfg.settings.environment)
    with Shards(run.modedir, device.type) as shards:
        return predict(run, shards, device)


def predict(run: Any, shards: Shards, device: Any) -> dict:
    """Every process predicts a contiguous share; rank 0 writes the tables from every share."""
    from ..batching import check_batch_memory

    env = run.cfg.settings.environment
    ens = load_ensemble(run, device)
    with shards.main_first():
        store = open_store(run, ens)
    idx = selected_indices(run, store)
    ids = [store.ids[i] for i in idx]
    raw = [store.labels[i] for i in idx]
    labelled = bool(run.source.labelpos or run.source.labelcolumn) and all(r not in (None, "") for r in raw)
    y = None
    if labelled:  # bad labels stop the run before anything is written
        y = parse_float_labels(raw, str(run.source.filepath)) if ens.task == "regression" else LabelEncoder(ens.classes).transform(raw, str(run.source.filepath))
    encoding = model_encoding(run, ens)
    check_batch_memory(lambda b: tokenizer_spec(run, ens).make_input(ens.tokenizer, b, encoding), ens.tokenizer.n_modifiers, run.cfg.settings.training.batchsize, encoding.blocksize, device)
    mine = idx[shards.block(len(idx), store.lengths[idx])]
    batches = input_batches(run, store, ens, device)
    save_share(shards.part("predictions.npz"), *run_ensemble(ens, batches, mine, device, env.precision))
    if run.cfg.inference_model.saveembeddings:
        save_embeddings(run, ens, batches, mine, [store.ids[i] for i in mine], shards.part("embeddings.h5"))
    shards.wait()
    if not shards.main:
        return {"metrics": {}, "lines": []}
    per_fold, combined = load_shares(shards.parts("predictions.npz"))
    labels = raw if labelled else [None] * len(ids)
    several = len(per_fold) > 1
    with publication(run.modedir, replaces=RESULTS) as staging:
        if ens.task == "regression":
            extra = {f"fold_{n}": p for n, p in zip(ens.names, per_fold)} if several else {}
            write_predictions(staging, "regression", ids, labels, combined.reshape(-1, 1), None, None, extra_columns=extra)
            out_metrics = M.regression(y, combined) if labelled else {}
        else:
            extra = {f"fold_{n}_prob_{c}": p[:, j] for n, p in zip(ens.names, per_fold) for j, c in enumerate(ens.classes)} if several else {}
            write_predictions(staging, "classification", ids, labels, np.log(np.clip(combined, 1e-12, None)), None, LabelEncoder(ens.classes), extra_columns=extra)
            out_metrics = M.classification(y, combined, len(ens.classes)) if labelled else {}
        if out_metrics:
            write_json(staging / "test_results.json", {f"test_{k}": v for k, v in out_metrics.items()})
        if run.cfg.inference_model.saveembeddings and run.model_spec.embed is not None:
            concat_h5(shards.parts("embeddings.h5"), staging / "embeddings.h5")
            run.log.info("embeddings of %d %s computed (published as %s)", len(ids), tokenizer_spec(run, ens).records, run.modedir / "embeddings.h5")
    shards.cleanup()
    shown = {k: v for k, v in out_metrics.items() if isinstance(v, float)}
    return {"metrics": shown, "lines": [f"predictions: {run.modedir / 'test_predictions.csv'} ({len(ids)} {tokenizer_spec(run, ens).records})"]}


def save_share(path: Path, per_fold: list[np.ndarray], combined: np.ndarray) -> None:
    """One process's predictions: per fold and combined, (n,) or (n, C) each."""
    with open(path, "wb") as fh:
        np.savez(fh, combined=combined, **{f"fold{k}": p for k, p in enumerate(per_fold)})


def load_shares(parts: list[Path]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every process's predictions, concatenated in rank (= input) order."""
    shares = []
    for p in parts:
        with np.load(p) as z:
            n_folds = len(z.files) - 1
            shares.append(([z[f"fold{k}"] for k in range(n_folds)], z["combined"]))
    shares = [s for s in shares if s[0]] or shares[:1]  # a process with no sequence has no shape
    per_fold = [np.concatenate([s[0][k] for s in shares]) for k in range(len(shares[0][0]))]
    return per_fold, np.concatenate([s[1] for s in shares])


def save_embeddings(run: Any, ens: Any, batches: Any, idx: np.ndarray, ids: list, path: Path) -> None:
    """``embeddings.h5`` (one process's part): ``ids`` and one (N, D) dataset ``fold_<name>``
    per fold model, streamed batch by batch."""
    import h5py
    import torch

    from ..sharding import append_rows, create_rows, part_h5

    embed = run.model_spec.embed
    if embed is None:
        run.log.warning("saveembeddings: the %s model has no embeddings; nothing written", run.plugin.name)
        return
    dim = {}
    with part_h5(path) as f, torch.no_grad():
        append_rows(create_rows(f, "ids", (0,), h5py.string_dtype()), np.asarray(ids, dtype=object))
        for _, inp, _, _ in batches(idx, shuffle=False):
            for fold in ens.folds:
                e = embed(fold.model, inp).float().cpu().numpy()
                name = f"fold_{fold.path.name}"
                if name not in dim:
                    dim[name] = create_rows(f, name, (0, e.shape[-1]), np.float32)
                append_rows(dim[name], e)
