"""PNG plots written next to the results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib's pyplot with a non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write ``fig`` as a PNG, atomically."""
    from .outputs import write_atomic

    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"), mode="wb")


def learning_curves(history: list[dict], path: Path, title: str = "", loss: str = "loss", best_epoch: int | None = None) -> None:
    """Training and validation loss per epoch (1-based), the best epoch (whose weights were kept) marked.

    ``loss`` names the loss and its scale on the y axis (e.g. "MSE (log-scaled labels)")."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ep = [h["epoch"] + 1 for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], marker=".", label="training")
    ax.plot(ep, [h["val_loss"] for h in history], marker=".", label="validation")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", ls="--", lw=0.8, label=f"best epoch {best_epoch} (weights kept)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss)
    ax.set_title(title or "learning curves")
    ax.legend(fontsize=8)
    save_png(fig, path)
    plt.close(fig)


def scatter(y: np.ndarray, p: np.ndarray, metrics: dict, path: Path, title: str = "") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, p, s=8, alpha=0.6)
    lo, hi = float(min(np.min(y), np.min(p))), float(max(np.max(y), np.max(p)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"{title} r={metrics.get('pearson', float('nan')):.3f} rho={metrics.get('spearman', float('nan')):.3f}")
    save_png(fig, path)
    plt.close(fig)


def confusion(cm: list[list[int]], classes: list[str], path: Path, title: str = "") -> None:
    plt = pyplot()
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
    save_png(fig, path)
    plt.close(fig)


def importance(tokens: list[str], scores: np.ndarray, path: Path, title: str = "", score: str = "loo") -> None:
    """Per-position leave-one-out scores of one sequence.

    Bars coloured by sign (a legend says what the sign means); the tokens as tick labels while they
    are readable (<= 120 positions; every k-th beyond); a smoothed track over the bars for long
    sequences; the coding region shaded when the tokens mark codon starts in upper case (the
    reference's mRNA encoding: CDS from the first to the last upper-case token + 2)."""
    from matplotlib.patches import Patch

    plt = pyplot()
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    fig, ax = plt.subplots(figsize=(min(18.0, 4 + n * 0.1), 3.4))
    upper = [i for i, t in enumerate(tokens) if t[:1].isupper()]
    handles = []
    if upper and len(upper) < n:  # upper-case codon starts: shade the coding region
        ax.axvspan(upper[0] - 0.5, min(n, upper[-1] + 3) - 0.5, color="gold", alpha=0.15, lw=0)
        handles.append(Patch(color="gold", alpha=0.3, label="CDS (upper-case codon starts); UTRs outside"))
    ax.bar(np.arange(n), scores, color=np.where(scores >= 0, "tab:red", "tab:blue"), width=1.0)
    handles += [Patch(color="tab:red", label=f"{score} > 0: prediction rises without the token"), Patch(color="tab:blue", label=f"{score} < 0: prediction falls")]
    if n > 150:
        w = max(5, n // 100)
        smooth = np.convolve(scores, np.ones(w) / w, mode="same")
        ax.plot(np.arange(n), smooth, color="black", lw=1.0)
        handles.append(plt.Line2D([], [], color="black", lw=1.0, label=f"mean over {w} positions"))
    ax.axhline(0, color="black", lw=0.5)
    step = -(-n // 120)
    if step <= 3:  # letters stay readable: every (or every 2nd/3rd) token
        ticks = np.arange(0, n, step)
        ax.set_xticks(ticks, [tokens[i] for i in ticks], fontsize=6 if step == 1 else 7)
    else:  # 1-based positions
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v) + 1}"))
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("position (token)" if step <= 3 else "position")
    ax.set_ylabel(score)
    ax.set_title(title, pad=24)
    ax.legend(handles=handles, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), frameon=False)
    save_png(fig, path)
    plt.close(fig)


def top_features(names: list[str], scores: np.ndarray, path: Path, title: str = "", score: str = "loo", k: int = 30) -> None:
    """The ``k`` features (e.g. genes) with the largest |score| of one sample, as a sorted bar chart
    (for inputs whose order is not a sequence, where per-position plots would be unreadable)."""
    plt = pyplot()
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-np.abs(scores), kind="stable")[:k][::-1]
    fig, ax = plt.subplots(figsize=(5.5, 1.2 + 0.22 * len(order)))
    ax.barh(np.arange(len(order)), scores[order], color=np.where(scores[order] >= 0, "tab:red", "tab:blue"))
    ax.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=7)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel(f"{score} (red: prediction rises without it; blue: it falls)")
    ax.set_title(title or f"top {len(order)} by |{score}|")
    save_png(fig, path)
    plt.close(fig)



def plot_name(how: str, index: int, sid: str) -> str:
    """``loo_<how>_<record index>_<id, sanitised, at most 40 characters>_<8 hex of the id's hash>.png``:
    unique (the index), recognisable (the id) and short enough for any file system, whatever
    the ids are (``a/b`` and ``a_b``, 230 characters, non-ASCII)."""
    import hashlib

    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in str(sid))[:40].strip(".")
    digest = hashlib.sha256(str(sid).encode("utf-8")).hexdigest()[:8]
    return f"loo_{how}_{index:06d}_{safe}_{digest}.png"
