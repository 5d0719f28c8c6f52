"""Trained models applied to new data: one fold model, or every fold of a cross-validation parent.

Shared by ``predict`` and ``interpret``. A trained model brings everything it was trained with
(tokenizer, scaler or classes, the input length it reads); nothing is refitted and the run's
config is never changed to match it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BiolmError, ConfigError, DataError
from .hookspecs import Encoding


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
        self.classes = None
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
    """The model named by ``inference model: pretrainedmodel``, checked against the run."""
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
    if len({f.tokenizer.sha() for f in folds}) > 1:
        raise BiolmError(f"{path}: the folds use different tokenizers")
    if len({f.meta["blocksize"] for f in folds}) > 1:
        raise BiolmError(f"{path}: the folds read different input lengths (blocksize)")
    tr = run.cfg.settings.training
    if tr.blocksize != folds[0].meta["blocksize"] and run.registry.tokenizer(folds[0].meta.get("encoding", run.plugin.tokenizer)).feature_shape is None:
        run.log.info("blocksize %d of the model is used (the config says %d)", folds[0].meta["blocksize"], tr.blocksize)
    if tr.scaling != "none" and folds[0].scaler is not None and tr.scaling != folds[0].scaler.kind:
        run.log.warning("scaling %s in the config ignored: the model was trained with %s (loaded with it)", tr.scaling, folds[0].scaler.kind)
    ens = Ensemble(folds, run.cfg.inference_model.ensembleweighting)
    run.log.info("model: %s (%d fold(s), weights %s)", path, len(folds), ", ".join(f"{w:.3f}" for w in ens.weights))
    return ens


def model_encoding(run: Any, ens: Ensemble) -> Encoding:
    """How this run's records are cut for the trained model: its input length; the run's
    ``lefttailing``/``centertoken`` (which end of a long sequence to score is the user's choice)."""
    return Encoding(int(ens.meta["blocksize"]), run.cfg.tokenization.lefttailing, run.cfg.settings.data_preprocessing.centertoken)


def tokenizer_spec(run: Any, ens: Ensemble) -> Any:
    return run.registry.tokenizer(ens.meta.get("encoding", run.plugin.tokenizer))


def open_store(run: Any, ens: Ensemble, label_kind: str | None = None, encoding: Encoding | None = None):
    """The run's data source encoded for the trained model (which must read that kind of file),
    cut as ``encoding`` says (default: the model's)."""
    from .input_kinds import describe_file

    spec, path = tokenizer_spec(run, ens), str(run.source.filepath)
    if spec.accepts is not None and not spec.accepts(path):
        raise DataError(path, f"{describe_file(path)}, but the model was trained on {spec.inputs or 'other input'} ({ens.meta.get('encoding')} tokenizer)")
    return run.store(ens.tokenizer, label_kind, encoding or model_encoding(run, ens), spec)


def selected_indices(run: Any, store: Any) -> np.ndarray:
    """The store records to score: all, or those in ``inferenceonsplits``."""
    src = run.source
    if len(store) == 0:
        from .errors import DataError

        raise DataError(str(src.filepath), f"no records to {run.mode} (the file is empty, or every row was skipped)")
    idx = np.arange(len(store))
    if src.inferenceonsplits:
        if not (src.splitpos or src.splitcolumn):
            raise ConfigError("inference data source.inferenceonsplits", "needs splitpos (the column of split ids)")
        keep = set(map(str, src.inferenceonsplits))
        splits = np.asarray([str(s) for s in store.splits])
        idx = idx[np.isin(splits, list(keep))]
        if len(idx) == 0:
            raise ConfigError("inference data source.inferenceonsplits", f"no record has split id {', '.join(sorted(keep))}")
    return idx


def input_batches(run: Any, store: Any, ens: Ensemble, device: Any):
    """Batches of ``store`` as the trained model reads them."""
    from .batching import Batches, loader_factory

    spec = tokenizer_spec(run, ens)
    encoding = model_encoding(run, ens)
    pad_to = encoding.blocksize if ens.meta.get("fixed_length") else None
    loader = loader_factory(store, run.cfg.settings.training.batchsize, pad_to, run.cfg.settings.environment.numworkers)
    return Batches(loader, lambda b: spec.make_input(ens.tokenizer, b, encoding), device, None, None)


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
