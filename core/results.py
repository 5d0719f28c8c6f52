"""What a trained or applied model reports: metrics, prediction tables, result JSON and plots.

Shared by ``fine-tune`` (per fold) and ``predict``. File layouts follow the reference tool:
``test_predictions.csv`` (``sequence,label,prediction`` + class probabilities), ``rank_deltas.csv``
for labelled regression, ``{train,eval,test,all}_results.json``, and PNG plots.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .outputs import write_json, write_text
from .scaling import LabelEncoder, LabelScaler


def probabilities(out: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of raw outputs (N, C)."""
    z = out - out.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def metrics(task: str, y: np.ndarray, idx: np.ndarray, out: np.ndarray, scaler: LabelScaler | None, n_outputs: int, scaled: bool = True) -> dict:
    """Metrics of raw outputs ``out`` (N, n_outputs) against targets ``y[idx]``: regression in label
    units (and ``scaled_*`` on the scaled values), classification on the softmax probabilities."""
    if task == "regression":
        ys, ps = y[idx].astype(np.float64), out[:, 0].astype(np.float64)
        m = M.regression(scaler.inverse(ys), scaler.inverse(ps))
        if scaled:
            m.update({f"scaled_{k}": v for k, v in M.regression(ys, ps).items()})
        return m
    return M.classification(y[idx], probabilities(out), n_outputs)


def metric_fn(task: str, y: np.ndarray, idx: np.ndarray, scaler: LabelScaler | None, n_outputs: int):
    """``fn(outputs) -> metrics`` for the validation split (the engine reports it every epoch)."""

    def fn(out: np.ndarray) -> dict:
        return metrics(task, y, idx, out, scaler, n_outputs, scaled=False)

    return fn


def write_predictions(folder: Path, task: str, ids: list, labels: list, out: np.ndarray, scaler: LabelScaler | None, encoder: LabelEncoder | None, split: str | None = None, extra_columns: dict | None = None) -> None:
    """``test_predictions.csv`` (+ ``rank_deltas.csv`` for labelled regression).

    ``out``: raw outputs (N, 1) for regression (inverse-scaled with ``scaler``), log-probabilities
    or logits (N, C) for classification; ``extra_columns``: name -> (N,) values appended."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra_columns = extra_columns or {}
    has_labels = any(lab not in (None, "") for lab in labels)
    tail = ["split"] if split else []
    if task == "regression":
        pred = scaler.inverse(out[:, 0]) if scaler is not None else out[:, 0]
        w.writerow(["sequence", "label", "prediction", *extra_columns, *tail])
        for i, (sid, lab, p) in enumerate(zip(ids, labels, pred)):
            w.writerow([sid, lab if lab is not None else "", f"{p:.6g}", *(f"{v[i]:.6g}" for v in extra_columns.values()), *([split] if split else [])])
    else:
        prob = probabilities(out)
        classes = encoder.classes
        w.writerow(["sequence", "label", "prediction", *[f"prob_{c}" for c in classes], *extra_columns, *tail])
        for i, (sid, lab) in enumerate(zip(ids, labels)):
            w.writerow([sid, lab if lab is not None else "", classes[int(prob[i].argmax())], *(f"{v:.6g}" for v in prob[i]), *(f"{v[i]:.6g}" for v in extra_columns.values()), *([split] if split else [])])
    write_text(folder / "test_predictions.csv", buf.getvalue())
    if task == "regression" and has_labels:
        rows = M.rank_deltas(ids, [float(x) for x in labels], pred)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["sequence", "label", "label_rank", "prediction", "prediction_rank", "rank_delta"])
        for r in rows:
            w.writerow([r[0], f"{r[1]:.6g}", f"{r[2]:g}", f"{r[3]:.6g}", f"{r[4]:g}", f"{r[5]:g}"])
        write_text(folder / "rank_deltas.csv", buf.getvalue())


def write_result_files(folder: Path, results: dict[str, dict]) -> None:
    """``<part>_results.json`` for each part (train, eval, test) and ``all_results.json``."""
    for part, values in results.items():
        write_json(folder / f"{part}_results.json", values)
    write_json(folder / "all_results.json", {k: v for part in results.values() for k, v in part.items()})


def plot_fold(folder: Path, history: list, task: str, y: np.ndarray, idx: np.ndarray, out: np.ndarray, scaler: Any, encoder: Any, results: dict, part: str, title: str = "", loss: str = "loss", best_epoch: int | None = None) -> None:
    """Learning curves and, for the reported split, a scatter plot or a confusion matrix."""
    from . import plots

    if history:
        plots.learning_curves(history, folder / "learning_curves.png", title=title, loss=loss, best_epoch=best_epoch)
    if task == "regression":
        yt, yp = scaler.inverse(y[idx]), scaler.inverse(out[:, 0])
        plots.scatter(yt, yp, {k.split("_", 1)[1]: v for k, v in results.items() if "_" in k}, folder / f"{part}_scatter.png", title=part)
    else:
        plots.confusion(results[f"{part}_confusion_matrix"], encoder.classes, folder / f"{part}_confusion_matrix.png", title=part)
