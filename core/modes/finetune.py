"""``fine-tune`` mode: splits, one trained model per fold, per-fold and cross-validation results."""

from __future__ import annotations

import glob
from typing import Any

import numpy as np

from .. import metrics as M
from ..errors import ConfigError, DataError
from ..fold_training import build_model, check_blocksize, fingerprint, fit_inputs, fit_one_pass, fit_schedule, loss_name, make_batches, model_meta, start_from_pretrained, train_model, write_trainer_state
from ..hookspecs import ModelInfo
from ..outputs import write_json
from ..publish import publication
from ..results import metric_fn, metrics, plot_fold, write_predictions, write_result_files
from ..scaling import LabelEncoder, LabelScaler, parse_float_labels, parse_weights
from ..splits import make_folds


def execute(run: Any) -> dict:
    from ..distributed import init, is_main, main_first
    from ..engine import resolve_device

    cfg, src, tr = run.cfg, run.cfg.finetuning_source, run.cfg.settings.training
    if src.labelpos is None and not src.labelcolumn:
        raise ConfigError("fine-tuning data source.labelpos", "fine-tune needs labels: set the label column")
    check_blocksize(run)
    device = resolve_device(cfg.settings.environment)
    init(device.type)
    with main_first():  # rank 0 learns the tokenizer / builds the store, the others reuse them
        tokenizer = run.tokenizer()
        store = run.store(tokenizer, "float" if run.task == "regression" else "str")
    split_ids = list(store.splits) if (src.splitpos or src.splitcolumn) else None
    folds = make_folds(len(store), split_ids, crossvalidation=src.crossvalidation, splitratio=src.splitratio, devsplits=src.devsplits, testsplits=src.testsplits, cvscheme=src.cvscheme, seed=cfg.seed)
    weights = parse_weights(list(store.weights), tr.qualityweights, src.filepath) if (src.weightpos or src.weightcolumn) else None
    if weights is not None and run.task != "regression":
        run.log.warning("weightpos is used for regression only; ignored for classification")
        weights = None
    run.log.info("%d %s, %d fold(s), device %s", len(store), run.tokenizer_spec.records, len(folds), device)
    # every fold's results and cv_results.json appear together when all folds are done (the
    # checkpoints stay in the fold folders, so a failed run can be resumed)
    with publication(run.modedir, replaces=previous_results(run.modedir), enabled=is_main()) as staging:
        results = [fit_fold(run, store, tokenizer, fold, weights, device, staging / fold.name) for fold in folds]
        cv = M.summarize_folds(results)
        if is_main():
            write_json(staging / "cv_results.json", {"folds": [f.name for f in folds], "sizes": [f.sizes() for f in folds], "metrics": cv})
    values = {k: v["mean"] for k, v in cv.items()} if len(folds) > 1 else results[0]
    split = "test" if all(len(f.test) for f in folds) else "validation"
    title = f"{run.plugin.name} fine-tune: {split} split" + (f", mean over {len(folds)} folds" if len(folds) > 1 else "")
    return {"metrics": summary_metrics(values, tr.scaling), "title": title, "lines": [f"folds: {', '.join(str(run.modedir / f.name) for f in folds)}"]}


def summary_metrics(values: dict, scaling: str) -> dict:
    """The figures printed at the end: label-unit metrics, and the same on the scaled labels the
    model was trained on (labelled with the scaling) when the labels were scaled."""
    out = {k: v for k, v in values.items() if isinstance(v, float) and not k.startswith("scaled_")}
    if scaling != "none":
        out.update({f"{k[len('scaled_'):]} ({scaling}-scaled)": v for k, v in values.items() if k.startswith("scaled_") and isinstance(v, float)})
    return out


def previous_results(modedir: Any) -> list[str]:
    """Glob patterns of an earlier fine-tune's results: ``cv_results.json`` and the files of
    every fold folder and of its subfolders (a plugin's exports), not its checkpoints; so a run
    with fewer folds leaves no old fold for a cross-validation parent's predict to pick up."""
    patterns = ["cv_results.json"]
    for d in sorted(modedir.iterdir()) if modedir.is_dir() else ():
        if d.is_dir() and ((d / "config.json").exists() or any(d.glob("checkpoint-*"))):
            patterns.append(f"{glob.escape(d.name)}/*")
            patterns += [f"{glob.escape(d.name)}/{glob.escape(sub.name)}/*" for sub in d.iterdir() if sub.is_dir() and not sub.name.startswith("checkpoint-")]
    return patterns


def targets(run: Any, raw: list, fold: Any):
    """Training targets of one fold: (y, scaler, encoder, task) — the scaler or label encoder is
    fitted on the fold's training split only."""
    import torch

    from ..engine import Task

    src_name = str(run.cfg.finetuning_source.filepath)
    if run.task == "regression":
        labels = parse_float_labels(raw, src_name)
        scaler = LabelScaler(run.cfg.settings.training.scaling).fit(labels[fold.train], src_name)
        y = scaler.transform(labels, src_name).astype(np.float32)
        return y, scaler, None, Task("regression", 1)
    encoder = LabelEncoder().fit([raw[i] for i in fold.train])
    y = encoder.transform(raw, f"{src_name} (fold {fold.name}: classes of validation/test must occur in training)")
    n = len(encoder.classes)
    if n < 2:
        raise DataError(src_name, f"fold {fold.name}: classification needs at least 2 classes in the training split, found {encoder.classes}")
    cw = None
    if run.cfg.settings.training.classweights:
        counts = np.bincount(y[fold.train], minlength=n).astype(np.float64)
        cw = torch.tensor(len(fold.train) / (n * np.maximum(counts, 1)), dtype=torch.float32)
    return y, None, encoder, Task("classification", n, cw)


def fit_fold(run: Any, store: Any, tokenizer: Any, fold: Any, weights: np.ndarray | None, device: Any, outdir: Any) -> dict:
    """Train one fold (its checkpoints in ``<modedir>/<fold>``) and write its results to
    ``outdir`` (staged for publication); returns the reported split's metrics (test, else validation)."""
    from ..batching import check_batch_memory
    from ..distributed import is_main
    from ..engine import evaluate
    from ..modelio import save_fold

    tr = run.cfg.settings.training
    folddir = run.modedir / fold.name  # its checkpoints (the results go to outdir)
    raw = list(store.labels)
    y, scaler, encoder, task = targets(run, raw, fold)
    encoding = run.encoding(tokenizer)
    info = ModelInfo(task=run.task, n_outputs=task.n_outputs, in_channels=tokenizer.n_channels, blocksize=encoding.blocksize, tokenizer=tokenizer, extra={"vocab_size": len(tokenizer.vocab)}, input_kind=run.cfg.tokenization.encoding)
    check_batch_memory(lambda b: run.tokenizer_spec.make_input(tokenizer, b, encoding), tokenizer.n_modifiers, tr.batchsize, encoding.blocksize, device)
    model = build_model(run, info, device)
    init = start_from_pretrained(run, model)
    batches = make_batches(run, store, tokenizer, device, encoding, y, weights)
    fit_inputs(run, model, batches, fold.train)
    if run.model_spec.fit is not None:
        trained = fit_one_pass(run, model, batches, fold.train, task)
    else:
        val = metric_fn(run.task, y, fold.val, scaler, task.n_outputs)
        fp = fingerprint(run, store, info, fold.train, fold.val, (y, weights, task.class_weights), init)
        trained = train_model(run, model, batches, fold=fold.name, folddir=folddir, task=task, train_idx=fold.train, val_idx=fold.val, device=device, val_metrics=val, fingerprint=fp, schedule=fit_schedule(run, model, info))
    parts = {"train": fold.train, "eval": fold.val, **({"test": fold.test} if len(fold.test) else {})}
    results, outputs = {}, {}
    for part, idx in parts.items():
        outputs[part], loss = evaluate(model, batches, idx, task, device, run.cfg.settings.environment.precision)
        results[part] = {f"{part}_loss": loss, **{f"{part}_{k}": v for k, v in metrics(run.task, y, idx, outputs[part], scaler, task.n_outputs).items()}}
    n_epochs = len(trained.history)
    runtime = trained.total_runtime
    results["train"].update({"train_runtime": runtime, "train_samples": len(fold.train), "train_samples_per_second": len(fold.train) * max(n_epochs, 1) / max(runtime, 1e-9), "epochs": n_epochs})
    if trained.resumed_after:
        results["train"].update({"resumed_after_epoch": trained.resumed_after, "train_runtime_this_run": trained.runtime})
    shown = "test" if "test" in parts else "eval"
    headline = {k[len(shown) + 1 :]: v for k, v in results[shown].items() if isinstance(v, float)}
    if not is_main():
        return headline
    best = trained.best_val_loss if trained.best_val_loss is not None else results["eval"]["eval_loss"]
    meta = model_meta(run, model, info, fold=fold.name, best_val_loss=best)
    save_fold(outdir, model, meta, run.outdir / "tokenizer.json", scaler, encoder)
    if run.model_spec.export is not None:
        run.model_spec.export(model, outdir)
    write_trainer_state(outdir, trained.history, best, tr.nepochs, trained.kept_epoch, **({"stages": trained.stages} if trained.stages else {}))
    write_result_files(outdir, results)
    idx = parts[shown]
    write_predictions(outdir, run.task, [store.ids[i] for i in idx], [raw[i] for i in idx], outputs[shown], scaler, encoder, split=shown)
    plot_fold(outdir, trained.history, run.task, y, idx, outputs[shown], scaler, encoder, results[shown], shown, title=f"{run.plugin.name} fold {fold.name}: learning curves", loss=loss_name(task, tr.scaling), best_epoch=trained.kept_epoch)
    run.log.info("fold %s: %s", fold.name, "  ".join(f"{k} {v:.4g}" for k, v in results[shown].items() if isinstance(v, float)))
    return headline
