"""Evaluation metrics (numpy/scipy; no sklearn)."""

from __future__ import annotations

import numpy as np


def _rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def regression(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """mse, rmse, mae, pearson r, spearman rho, r2 of predictions ``p`` against labels ``y``."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    err = p - y
    mse = float(np.mean(err**2))
    out = {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err)))}
    if len(y) > 1 and np.std(y) > 0 and np.std(p) > 0:
        out["pearson"] = float(np.corrcoef(y, p)[0, 1])
        out["spearman"] = float(np.corrcoef(_rank(y), _rank(p))[0, 1])
    else:
        out["pearson"] = float("nan")
        out["spearman"] = float("nan")
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    out["r2"] = float(1 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan")
    return out


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) formula; ties count half."""
    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank(np.asarray(score, dtype=np.float64))
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification(y: np.ndarray, prob: np.ndarray, n_classes: int) -> dict:
    """accuracy, balanced accuracy, macro precision/recall/F1, AUROC (binary / one-vs-rest macro),
    and the confusion matrix (rows = true class, columns = predicted)."""
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    pred = prob.argmax(1)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1).astype(float)
    predicted = cm.sum(0).astype(float)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    out = {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "precision_macro": float(precision[present].mean()) if present.any() else float("nan"),
        "recall_macro": float(recall[present].mean()) if present.any() else float("nan"),
        "f1_macro": float(f1[present].mean()) if present.any() else float("nan"),
    }
    if n_classes == 2:
        out["auroc"] = auroc(y == 1, prob[:, 1])
    else:
        scores = [auroc(y == c, prob[:, c]) for c in range(n_classes) if present[c] and (~(y == c)).any()]
        out["auroc"] = float(np.mean(scores)) if scores else float("nan")
    out["confusion_matrix"] = cm.tolist()
    return out


def summarize_folds(results: list[dict]) -> dict:
    """mean and sd over folds of every numeric metric."""
    keys = [k for k in results[0] if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in results)]
    out = {}
    for k in keys:
        vals = np.asarray([r[k] for r in results], dtype=np.float64)
        out[k] = {"mean": float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan"), "sd": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 and not np.all(np.isnan(vals)) else 0.0, "folds": vals.tolist()}
    return out


def rank_deltas(ids, labels, preds) -> list[tuple]:
    """Per sequence: id, label, label rank, prediction, prediction rank, rank delta (pred - label).

    Ranks are 1-based average ranks (ties share a rank), computed separately for labels and
    predictions but kept on the same row, so every row is one sequence.
    """
    lr = _rank(np.asarray(labels, dtype=np.float64))
    pr = _rank(np.asarray(preds, dtype=np.float64))
    return [(i, float(l), float(a), float(p), float(b), float(b - a)) for i, l, a, p, b in zip(ids, labels, lr, preds, pr)]
