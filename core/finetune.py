"""``fine-tune`` mode: splits, per-fold training and the per-fold / cross-validation outputs."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .dataset import load_or_fit_tokenizer, open_source_store
from .errors import ConfigError, DataError
from .outputs import write_json, write_text
from .scaling import LabelEncoder, LabelScaler, parse_float_labels, parse_weights
from .distributed import is_main
from .splits import make_folds


def execute(run: Any) -> dict:
    from .engine import resolve_device

    cfg, src, tr = run.cfg, run.cfg.finetuning_source, run.cfg.settings.training
    if src.labelpos is None and not src.labelcolumn:
        raise ConfigError("fine-tuning data source.labelpos", "fine-tune needs labels: set the label column")
    check_blocksize(run)
    from .distributed import init, main_first

    device = resolve_device(cfg.settings.environment)
    init(device.type)
    with main_first():  # rank 0 learns the tokenizer / builds the store, the others reuse them
        tokenizer = load_or_fit_tokenizer(run)
        store = open_source_store(run, tokenizer, src, "float" if run.task == "regression" else "str")
    n = len(store)
    split_ids = list(store.splits) if (src.splitpos or src.splitcolumn) else None
    folds = make_folds(n, split_ids, crossvalidation=src.crossvalidation, splitratio=src.splitratio, devsplits=src.devsplits, testsplits=src.testsplits, cvscheme=src.cvscheme, seed=cfg.seed)
    weights = parse_weights(list(store.weights), tr.qualityweights, src.filepath) if src.weightpos else None
    if weights is not None and run.task != "regression":
        run.log.warning("weightpos is used for regression only; ignored for classification")
        weights = None
    run.log.info("%d records, %d fold(s), device %s", n, len(folds), device)
    results = []
    for fold in folds:
        results.append(fit_fold(run, store, tokenizer, fold, weights, device))
    summary_metrics = results[0]
    cv = M.summarize_folds(results)
    if is_main():
        write_json(run.modedir / "cv_results.json", {"folds": [f.name for f in folds], "sizes": [f.sizes() for f in folds], "metrics": cv})
    shown = {k: v["mean"] for k, v in cv.items() if not k.startswith("scaled_")} if len(folds) > 1 else {k: v for k, v in summary_metrics.items() if isinstance(v, float) and not k.startswith("scaled_")}
    return {"metrics": shown, "lines": [f"folds: {', '.join(str(run.modedir / f.name) for f in folds)}"]}


def check_blocksize(run: Any) -> None:
    bs = run.cfg.settings.training.blocksize
    if bs < run.plugin.min_blocksize:
        raise ConfigError("settings.training.blocksize", f"{run.plugin.name} needs at least {run.plugin.min_blocksize} tokens, got {bs}")


def make_loader_fn(run: Any, store: Any, pad_to: int | None):
    from .store import make_loader

    bs = run.cfg.settings.training.batchsize
    workers = run.cfg.settings.environment.numworkers

    def loader(indices: np.ndarray, shuffle: bool, seed: int = 0):
        return make_loader(store, indices, batch_size=bs, shuffle=shuffle, seed=seed, pad_to=pad_to, drop_last=False, num_workers=workers)

    return loader


def fit_fold(run: Any, store: Any, tokenizer: Any, fold: Any, weights: np.ndarray | None, device: Any) -> dict:
    import torch

    from .engine import Batches, Task, evaluate, make_optimizer, train
    from .modelio import save_fold
    from .spec import ModelInfo

    cfg, tr, env = run.cfg, run.cfg.settings.training, run.cfg.settings.environment
    folddir = run.modedir / fold.name
    folddir.mkdir(parents=True, exist_ok=True)
    src_name = str(cfg.finetuning_source.filepath)
    raw = list(store.labels)
    scaler = encoder = None
    if run.task == "regression":
        y_label = parse_float_labels(raw, src_name)
        scaler = LabelScaler(tr.scaling).fit(y_label[fold.train], src_name)
        y = scaler.transform(y_label, src_name).astype(np.float32)
        n_outputs = 1
        task = Task("regression", 1)
    else:
        encoder = LabelEncoder().fit([raw[i] for i in fold.train])
        y = encoder.transform(raw, f"{src_name} (fold {fold.name}: classes of validation/test must occur in training)")
        n_outputs = len(encoder.classes)
        if n_outputs < 2:
            raise DataError(src_name, f"fold {fold.name}: classification needs at least 2 classes in the training split, found {encoder.classes}")
        cw = None
        if tr.classweights:
            counts = np.bincount(y[fold.train], minlength=n_outputs).astype(np.float64)
            cw = torch.tensor(len(fold.train) / (n_outputs * np.maximum(counts, 1)), dtype=torch.float32)
        task = Task("classification", n_outputs, cw)
    info = ModelInfo(task=run.task, n_outputs=n_outputs, in_channels=tokenizer.n_channels, blocksize=tr.blocksize, tokenizer=tokenizer, extra={"vocab_size": len(getattr(tokenizer, "vocab", []))})
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    model_spec = run.registry.model(run.plugin.name)
    model = model_spec.build(cfg.model, info).to(device)
    load_pretrained(run, model)
    trained = wrap_distributed(model, device) if model_spec.fit is None else model
    tok_spec = run.tokenizer_spec
    pad_to = tr.blocksize if run.plugin.fixed_length else None
    batches = Batches(make_loader_fn(run, store, pad_to), lambda b: tok_spec.make_input(tokenizer, b, cfg), device, y, weights)
    t0 = time.perf_counter()
    if model_spec.fit is not None:  # one-pass models (e.g. incremental PCA + closed-form head)
        model_spec.fit(model, batches, fold.train, task, cfg)
        history: list = []
        best_val = None
    else:
        optimizer = make_optimizer(trained, tr)
        val_metrics = _metric_fn(run.task, y, fold.val, scaler, n_outputs)
        progress = _progress(run)
        with progress if progress is not None else _nullctx():
            state = train(
                pm=run.registry.pm, plugin=run.plugin.name, fold=fold.name, folddir=folddir, model=trained, optimizer=optimizer,
                task=task, batches=batches, train_idx=fold.train, val_idx=fold.val, nepochs=tr.nepochs, patience=tr.patience,
                gradacc=tr.gradacc, clipnorm=tr.clipnorm, seed=cfg.seed, device=device, precision=env.precision,
                resume=tr.resume, log=run.log, val_metrics=val_metrics, progress=progress,
            )
        history = state.history
        best_val = state.best_val_loss
    runtime = time.perf_counter() - t0
    results: dict = {}
    parts = {"train": fold.train, "eval": fold.val}
    if len(fold.test):
        parts["test"] = fold.test
    outputs = {}
    for part, idx in parts.items():
        out, loss = evaluate(model, batches, idx, task, device, env.precision)
        outputs[part] = out
        results[part] = {f"{part}_loss": loss, **{f"{part}_{k}": v for k, v in _metrics(run.task, y, idx, out, scaler, n_outputs).items()}}
    results["train"].update({"train_runtime": runtime, "train_samples": len(fold.train), "train_samples_per_second": len(fold.train) * max(len(history), 1) / max(runtime, 1e-9), "epochs": len(history)})
    meta = {
        "plugin": run.plugin.name,
        "task": run.task,
        "encoding": cfg.tokenization.encoding,
        "n_outputs": n_outputs,
        "in_channels": tokenizer.n_channels,
        "blocksize": tr.blocksize,
        "fixed_length": run.plugin.fixed_length,
        "model": _model_dict(cfg.model),
        "extra": info.extra,
        "fold": fold.name,
        "best_val_loss": best_val if best_val is not None else results["eval"]["eval_loss"],
        "seed": cfg.seed,
        "versions": run.versions(),
    }
    pred_part = "test" if "test" in parts else "eval"
    if not is_main():
        return {k[len(pred_part) + 1 :]: v for k, v in results[pred_part].items() if isinstance(v, float)}
    save_fold(folddir, model, meta, run.outdir / "tokenizer.json", scaler, encoder)
    if model_spec.export is not None:
        model_spec.export(model, folddir)
    write_json(folddir / "trainer_state.json", {"history": history, "best_epoch": int(np.argmin([h["val_loss"] for h in history])) if history else None, "best_val_loss": meta["best_val_loss"], "epochs_run": len(history), "nepochs": tr.nepochs, "stopped_early": bool(history) and len(history) < tr.nepochs})
    write_json(folddir / "train_results.json", results["train"])
    write_json(folddir / "eval_results.json", results["eval"])
    if "test" in results:
        write_json(folddir / "test_results.json", results["test"])
    all_results = {k: v for part in results.values() for k, v in part.items()}
    write_json(folddir / "all_results.json", all_results)
    write_predictions(folddir, run.task, [store.ids[i] for i in parts[pred_part]], [raw[i] for i in parts[pred_part]], outputs[pred_part], scaler, encoder, split=pred_part)
    _plots(folddir, history, run.task, y, parts[pred_part], outputs[pred_part], scaler, encoder, results[pred_part], pred_part)
    run.log.info("fold %s: %s", fold.name, "  ".join(f"{k} {v:.4g}" for k, v in results[pred_part].items() if isinstance(v, float)))
    key = pred_part
    return {k[len(key) + 1 :]: v for k, v in results[key].items() if isinstance(v, float)}


def wrap_distributed(model: Any, device: Any) -> Any:
    """DistributedDataParallel when launched with several processes, else the model itself."""
    from .distributed import is_distributed

    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def load_pretrained(run: Any, model: Any) -> None:
    """fine-tune from pre-trained weights when the model supports it (``load_pretrained(path)``)."""
    loader = getattr(model, "load_pretrained", None)
    if loader is None or run.cfg.settings.training.fromscratch:
        return
    path = run.cfg.inference_model.pretrainedmodel
    if path and (Path(path) / "config.json").exists():
        from .outputs import read_json

        if read_json(Path(path) / "config.json").get("task") != "pre-train":
            run.log.info("inference model.pretrainedmodel %s is a fine-tuned model (for predict/interpret), not pre-trained weights: ignored", path)
            path = None
    default = run.outdir / "pre-train"
    if not path and (default / "pytorch_model.bin").exists():
        path = default
    if path:
        run.log.info("starting from pre-trained weights in %s", path)
        report = loader(Path(path))
        if report:
            run.log.info("pre-trained weights: %s", report if isinstance(report, str) else ", ".join(f"{k} {len(v) if hasattr(v, '__len__') and not isinstance(v, str) else v}" for k, v in report.items()))


def _model_dict(model_cfg: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(model_cfg) if model_cfg is not None and dataclasses.is_dataclass(model_cfg) else {}


def _metric_fn(task: str, y: np.ndarray, idx: np.ndarray, scaler: LabelScaler | None, n_outputs: int):
    def fn(out: np.ndarray) -> dict:
        return _metrics(task, y, idx, out, scaler, n_outputs, scaled=False)

    return fn


def probabilities(out: np.ndarray) -> np.ndarray:
    z = out - out.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _metrics(task: str, y: np.ndarray, idx: np.ndarray, out: np.ndarray, scaler: LabelScaler | None, n_outputs: int, scaled: bool = True) -> dict:
    if task == "regression":
        ys, ps = y[idx].astype(np.float64), out[:, 0].astype(np.float64)
        m = M.regression(scaler.inverse(ys), scaler.inverse(ps))
        if scaled:
            m.update({f"scaled_{k}": v for k, v in M.regression(ys, ps).items()})
        return m
    return M.classification(y[idx], probabilities(out), n_outputs)


def write_predictions(folddir: Path, task: str, ids: list, labels: list, out: np.ndarray, scaler: LabelScaler | None, encoder: LabelEncoder | None, split: str | None = None, extra_columns: dict | None = None) -> None:
    """``test_predictions.csv`` (+ ``rank_deltas.csv`` for labelled regression)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra_columns = extra_columns or {}
    has_labels = any(lab not in (None, "") for lab in labels)
    if task == "regression":
        pred = scaler.inverse(out[:, 0]) if scaler is not None else out[:, 0]
        w.writerow(["sequence", "label", "prediction", *extra_columns, *(["split"] if split else [])])
        for i, (sid, lab, p) in enumerate(zip(ids, labels, pred)):
            w.writerow([sid, lab if lab is not None else "", f"{p:.6g}", *(f"{v[i]:.6g}" for v in extra_columns.values()), *([split] if split else [])])
    else:
        prob = probabilities(out)
        classes = encoder.classes
        w.writerow(["sequence", "label", "prediction", *[f"prob_{c}" for c in classes], *extra_columns, *(["split"] if split else [])])
        for i, (sid, lab) in enumerate(zip(ids, labels)):
            w.writerow([sid, lab if lab is not None else "", classes[int(prob[i].argmax())], *(f"{v:.6g}" for v in prob[i]), *(f"{v[i]:.6g}" for v in extra_columns.values()), *([split] if split else [])])
    write_text(folddir / "test_predictions.csv", buf.getvalue())
    if task == "regression" and has_labels:
        rows = M.rank_deltas(ids, [float(x) for x in labels], pred)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["sequence", "label", "label_rank", "prediction", "prediction_rank", "rank_delta"])
        for r in rows:
            w.writerow([r[0], f"{r[1]:.6g}", f"{r[2]:g}", f"{r[3]:.6g}", f"{r[4]:g}", f"{r[5]:g}"])
        write_text(folddir / "rank_deltas.csv", buf.getvalue())


def _plots(folddir: Path, history: list, task: str, y: np.ndarray, idx: np.ndarray, out: np.ndarray, scaler: Any, encoder: Any, results: dict, part: str) -> None:
    from . import plots

    if history:
        plots.learning_curves(history, folddir / "learning_curves.png")
    if task == "regression":
        yt, yp = scaler.inverse(y[idx]), scaler.inverse(out[:, 0])
        plots.scatter(yt, yp, {k.split("_", 1)[1]: v for k, v in results.items() if "_" in k}, folddir / f"{part}_scatter.png", title=part)
    else:
        plots.confusion(results[f"{part}_confusion_matrix"], encoder.classes, folddir / f"{part}_confusion_matrix.png", title=part)


def _progress(run: Any):
    if run.quiet or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
