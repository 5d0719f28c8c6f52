"""``predict`` mode, and the fold ensemble that predict and interpret share."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics as M
from .errors import BiolmError, ConfigError
from .outputs import write_json


class Ensemble:
    """One fold model or every fold of a cross-validation parent, combined.

    Regression outputs are inverse-scaled to label units per fold before they are combined;
    classification combines class probabilities. ``weighting``: ``uniform`` or ``loss``
    (proportional to 1 / validation loss of each fold).
    """

    def __init__(self, folds: list, weighting: str = "uniform"):
        self.folds = folds
        self.task = folds[0].task
        if weighting == "loss" and all(f.val_loss and np.isfinite(f.val_loss) and f.val_loss > 0 for f in folds):
            w = np.asarray([1.0 / f.val_loss for f in folds])
        else:
            w = np.ones(len(folds))
        self.weights = w / w.sum()
        self.tokenizer = folds[0].tokenizer
        self.meta = folds[0].meta
        if self.task == "classification":
            self.classes = folds[0].encoder.classes
            for f in folds[1:]:
                if f.encoder.classes != self.classes:
                    raise BiolmError(f"{f.path}: fold classes {f.encoder.classes} differ from {self.classes} of {folds[0].path}")

    @property
    def names(self) -> list[str]:
        return [f.path.name for f in self.folds]

    def fold_outputs(self, inp: dict):
        """Per-fold outputs as torch tensors: (B,) label units, or (B, C) probabilities."""
        return [self.convert(i, f.model(inp)) for i, f in enumerate(self.folds)]

    def convert(self, i: int, raw):
        """Raw outputs (B, n_out) of fold ``i`` -> (B,) label units or (B, C) probabilities."""
        import torch

        o = raw.float()
        if self.task != "regression":
            return torch.softmax(o, dim=-1)
        scaler = self.folds[i].scaler
        return scaler.inverse(o[:, 0]) if scaler is not None else o[:, 0]

    def combine(self, outs: list):
        total = outs[0] * float(self.weights[0])
        for w, o in zip(self.weights[1:], outs[1:]):
            total = total + o * float(w)
        return total

    def __call__(self, inp: dict):
        return self.combine(self.fold_outputs(inp))


def load_ensemble(run: Any, device: Any) -> Ensemble:
    from .modelio import find_fold_dirs, load_fold

    path = run.cfg.inference_model.pretrainedmodel
    if not path:
        raise ConfigError("inference model.pretrainedmodel", f"{run.mode} needs the fine-tuned model folder (a fold folder or a cross-validation parent)")
    folds = [load_fold(d, run.registry, device) for d in find_fold_dirs(path)]
    for f in folds:
        if f.plugin != run.plugin.name:
            raise BiolmError(f"{f.path} is a {f.plugin} model, not {run.plugin.name}")
        if f.task != run.task:
            raise BiolmError(f"{f.path} was fine-tuned for {f.task}; run with --task {f.task}")
    shas = {f.tokenizer.sha() for f in folds}
    if len(shas) > 1:
        raise BiolmError(f"{path}: the folds use different tokenizers")
    bs = folds[0].meta["blocksize"]
    tr = run.cfg.settings.training
    if tr.blocksize != bs:
        run.log.info("blocksize %d -> %d (the model's)", tr.blocksize, bs)
        tr.blocksize = bs
    if tr.scaling != "none" and folds[0].scaler is not None and tr.scaling != folds[0].scaler.kind:
        run.log.warning("scaling %s in the config ignored: the model was trained with %s (loaded with it)", tr.scaling, folds[0].scaler.kind)
    ens = Ensemble(folds, run.cfg.inference_model.ensembleweighting)
    run.log.info("model: %s (%d fold(s), weights %s)", path, len(folds), ", ".join(f"{w:.3f}" for w in ens.weights))
    return ens


def selected_indices(run: Any, store: Any) -> np.ndarray:
    src = run.source
    idx = np.arange(len(store))
    if getattr(src, "inferenceonsplits", None):
        if not (src.splitpos or src.splitcolumn):
            raise ConfigError("inference data source.inferenceonsplits", "needs splitpos (the column of split ids)")
        keep = set(map(str, src.inferenceonsplits))
        splits = np.asarray([str(s) for s in store.splits])
        idx = idx[np.isin(splits, list(keep))]
        if len(idx) == 0:
            raise ConfigError("inference data source.inferenceonsplits", f"no record has split id {', '.join(sorted(keep))}")
    return idx


def input_batches(run: Any, store: Any, ens: Ensemble, device: Any):
    from .engine import Batches
    from .finetune import make_loader_fn

    tok_spec = run.registry.tokenizer(ens.meta.get("encoding", run.plugin.tokenizer))
    pad_to = ens.meta["blocksize"] if ens.meta.get("fixed_length") else None
    return Batches(make_loader_fn(run, store, pad_to), lambda b: tok_spec.make_input(ens.tokenizer, b, run.cfg), device, None, None)


def run_ensemble(ens: Ensemble, batches: Any, indices: np.ndarray, device: Any, precision: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-fold and combined outputs for ``indices`` (in that order)."""
    import torch

    from .engine import autocast

    pos = {int(i): k for k, i in enumerate(indices)}
    per_fold: list[np.ndarray] | None = None
    combined = None
    with torch.no_grad(), autocast(device, precision):
        for idx, inp, _, _ in batches(indices, shuffle=False):
            outs = ens.fold_outputs(inp)
            comb = ens.combine(outs)
            rows = [pos[int(i)] for i in idx]
            if per_fold is None:
                shape = (len(indices),) + tuple(outs[0].shape[1:])
                per_fold = [np.zeros(shape, dtype=np.float64) for _ in outs]
                combined = np.zeros(shape, dtype=np.float64)
            for arr, o in zip(per_fold, outs):
                arr[rows] = o.float().cpu().numpy()
            combined[rows] = comb.float().cpu().numpy()
    return per_fold or [], combined if combined is not None else np.zeros((0,))


def execute(run: Any) -> dict:
    from .dataset import open_source_store
    from .engine import resolve_device
    from .finetune import write_predictions
    from .scaling import LabelEncoder, parse_float_labels

    env = run.cfg.settings.environment
    device = resolve_device(env)
    ens = load_ensemble(run, device)
    store = open_source_store(run, ens.tokenizer, run.source, None)
    idx = selected_indices(run, store)
    batches = input_batches(run, store, ens, device)
    per_fold, combined = run_ensemble(ens, batches, idx, device, env.precision)
    ids = [store.ids[i] for i in idx]
    raw = [store.labels[i] for i in idx]
    labelled = bool(run.source.labelpos or run.source.labelcolumn) and all(r not in (None, "") for r in raw)
    out_metrics: dict = {}
    y = None
    if labelled:  # bad labels stop the run before anything is written
        y = parse_float_labels(raw, str(run.source.filepath)) if ens.task == "regression" else LabelEncoder(ens.classes).transform(raw, str(run.source.filepath))
    if ens.task == "regression":
        extra = {f"fold_{n}": p for n, p in zip(ens.names, per_fold)} if len(per_fold) > 1 else {}
        write_predictions(run.modedir, "regression", ids, raw if labelled else [None] * len(ids), combined.reshape(-1, 1), None, None, extra_columns=extra)
        if labelled:
            out_metrics = M.regression(y, combined)
    else:
        enc = LabelEncoder(ens.classes)
        logp = np.log(np.clip(combined, 1e-12, None))
        extra = {f"fold_{n}_prob_{c}": p[:, j] for n, p in zip(ens.names, per_fold) for j, c in enumerate(ens.classes)} if len(per_fold) > 1 else {}
        write_predictions(run.modedir, "classification", ids, raw if labelled else [None] * len(ids), logp, None, enc, extra_columns=extra)
        if labelled:
            out_metrics = M.classification(y, combined, len(ens.classes))
    if out_metrics:
        write_json(run.modedir / "test_results.json", {f"test_{k}": v for k, v in out_metrics.items()})
    if run.cfg.inference_model.saveembeddings:
        save_embeddings(run, ens, batches, idx, ids, device)
    shown = {k: v for k, v in out_metrics.items() if isinstance(v, float)}
    return {"metrics": shown, "lines": [f"predictions: {run.modedir / 'test_predictions.csv'} ({len(ids)} sequences)"]}


def save_embeddings(run: Any, ens: Ensemble, batches: Any, idx: np.ndarray, ids: list, device: Any) -> None:
    """``embeddings.h5``: one (N, D) dataset per fold model that has an ``embed`` method."""
    import h5py
    import torch

    from .outputs import atomic_path

    models = [(f.path.name, f.model) for f in ens.folds if hasattr(f.model, "embed")]
    if not models:
        run.log.warning("saveembeddings: the %s model has no embeddings; nothing written", run.plugin.name)
        return
    pos = {int(i): k for k, i in enumerate(idx)}
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for bidx, inp, _, _ in batches(idx, shuffle=False):
            rows = [pos[int(i)] for i in bidx]
            for name, model in models:
                e = model.embed(inp).float().cpu().numpy()
                if name not in arrays:
                    arrays[name] = np.zeros((len(idx), e.shape[-1]), dtype=np.float32)
                arrays[name][rows] = e
    path = run.modedir / "embeddings.h5"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        for name, arr in arrays.items():
            f.create_dataset(f"fold_{name}", data=arr, compression="gzip")
    run.log.info("embeddings written to %s", path)
