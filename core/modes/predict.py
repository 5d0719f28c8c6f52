"""``predict`` mode: apply a fine-tuned model (a fold, or every fold of a CV parent) to new data."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import metrics as M
from ..ensemble import input_batches, load_ensemble, model_encoding, open_store, run_ensemble, selected_indices, tokenizer_spec
from ..outputs import write_json
from ..publish import publication
from ..results import write_predictions
from ..scaling import LabelEncoder, parse_float_labels

# what a predict run publishes (an earlier run's set is replaced as a whole)
RESULTS = ("test_predictions.csv", "rank_deltas.csv", "test_results.json", "embeddings.h5")


def execute(run: Any) -> dict:
    from ..batching import check_batch_memory
    from ..engine import resolve_device

    env = run.cfg.settings.environment
    device = resolve_device(env)
    ens = load_ensemble(run, device)
    store = open_store(run, ens)
    idx = selected_indices(run, store)
    encoding = model_encoding(run, ens)
    check_batch_memory(lambda b: tokenizer_spec(run, ens).make_input(ens.tokenizer, b, encoding), ens.tokenizer.n_modifiers, run.cfg.settings.training.batchsize, encoding.blocksize, device)
    batches = input_batches(run, store, ens, device)
    per_fold, combined = run_ensemble(ens, batches, idx, device, env.precision)
    ids = [store.ids[i] for i in idx]
    raw = [store.labels[i] for i in idx]
    labelled = bool(run.source.labelpos or run.source.labelcolumn) and all(r not in (None, "") for r in raw)
    y = None
    if labelled:  # bad labels stop the run before anything is written
        y = parse_float_labels(raw, str(run.source.filepath)) if ens.task == "regression" else LabelEncoder(ens.classes).transform(raw, str(run.source.filepath))
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
        if run.cfg.inference_model.saveembeddings:
            save_embeddings(run, ens, batches, idx, ids, staging / "embeddings.h5")
    shown = {k: v for k, v in out_metrics.items() if isinstance(v, float)}
    return {"metrics": shown, "lines": [f"predictions: {run.modedir / 'test_predictions.csv'} ({len(ids)} sequences)"]}


def save_embeddings(run: Any, ens: Any, batches: Any, idx: np.ndarray, ids: list, path: Any) -> None:
    """``embeddings.h5``: ``ids`` and one (N, D) dataset ``fold_<name>`` per fold model."""
    import h5py
    import torch

    from ..outputs import atomic_hdf5

    embed = run.model_spec.embed
    if embed is None:
        run.log.warning("saveembeddings: the %s model has no embeddings; nothing written", run.plugin.name)
        return
    pos = {int(i): k for k, i in enumerate(idx)}
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for bidx, inp, _, _ in batches(idx, shuffle=False):
            rows = [pos[int(i)] for i in bidx]
            for f in ens.folds:
                e = embed(f.model, inp).float().cpu().numpy()
                if f.path.name not in arrays:
                    arrays[f.path.name] = np.zeros((len(idx), e.shape[-1]), dtype=np.float32)
                arrays[f.path.name][rows] = e
    with atomic_hdf5(path) as (f, _):
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        for name, arr in arrays.items():
            f.create_dataset(f"fold_{name}", data=arr, compression="gzip")
    run.log.info("embeddings of %d records computed (published as %s)", len(ids), run.modedir / path.name)
