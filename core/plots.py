"""PNG plots written next to the results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from .outputs import write_atomic

    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"), mode="wb")


def learning_curves(history: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ep = [h["epoch"] + 1 for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def scatter(y: np.ndarray, p: np.ndarray, metrics: dict, path: Path, title: str = "") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, p, s=8, alpha=0.6)
    lo, hi = float(min(np.min(y), np.min(p))), float(max(np.max(y), np.max(p)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"{title} r={metrics.get('pearson', float('nan')):.3f} rho={metrics.get('spearman', float('nan')):.3f}")
    _save(fig, path)
    plt.close(fig)


def confusion(cm: list[list[int]], classes: list[str], path: Path, title: str = "") -> None:
    plt = _plt()
    cm_a = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(cm_a, cmap="Blues")
    for i in range(cm_a.shape[0]):
        for j in range(cm_a.shape[1]):
            ax.text(j, i, str(cm_a[i, j]), ha="center", va="center")
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def importance(tokens: list[str], scores: np.ndarray, path: Path, title: str = "") -> None:
    """Per-position leave-one-out scores of one sequence (bars; token letters when short)."""
    plt = _plt()
    n = len(scores)
    fig, ax = plt.subplots(figsize=(min(18, 3 + n * 0.12), 3))
    colors = np.where(np.asarray(scores) >= 0, "tab:red", "tab:blue")
    ax.bar(np.arange(n), scores, color=colors, width=1.0)
    if n <= 80:
        ax.set_xticks(range(n), tokens, fontsize=7)
    ax.set_xlabel("position")
    ax.set_ylabel("loo")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)
