"""Logo-style plot of a saturation mutagenesis scan (as the ISM plots of tangermeme/logomaker).

Top: the reference token's letter at each position, its height the negated mean change over the
position's alternatives (tall letters above the axis: mutating them lowers the prediction; below:
mutations raise it). Bottom: the full position x alternative matrix as a heat map. Drawn with
matplotlib only (letters are glyph outlines stretched to their box). Long sequences are shown as
the ``width``-position window around the strongest position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"A": "tab:green", "C": "tab:blue", "G": "orange", "T": "tab:red", "U": "tab:red"}


def window(scores: np.ndarray, width: int) -> tuple[int, int]:
    """[start, end) of at most ``width`` positions centred on the largest |score|."""
    n = len(scores)
    if n <= width:
        return 0, n
    centre = int(np.nanargmax(np.abs(np.nan_to_num(scores))))
    start = min(max(0, centre - width // 2), n - width)
    return start, start + width


def _letter(ax, ch: str, x: float, bottom: float, height: float, color: str) -> None:
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    path = TextPath((0, 0), ch, size=1, prop=FontProperties(family="DejaVu Sans Mono", weight="bold"))
    box = path.get_extents()
    if box.width <= 0 or box.height <= 0:
        return
    t = Affine2D().translate(-box.x0, -box.y0).scale(0.9 / box.width, height / box.height).translate(x - 0.45, bottom)
    ax.add_patch(PathPatch(t.transform_path(path), facecolor=color, edgecolor="none"))


def ism_logo(tokens: list[str], delta: np.ndarray, alphabet: list[str], path: Path, title: str = "", width: int = 200, start: int = 0) -> None:
    """Draw one sequence's scan.

    Parameters
    ----------
    tokens : (L,) the reference tokens.
    delta : (L, A) change per position and alternative column (NaN: not scored).
    alphabet : (A,) column names.
    path : the PNG to write (atomically).
    start : offset of position 0 in the original sequence (axis labels).
    """
    from .plots import pyplot, save_png

    plt = pyplot()
    with np.errstate(invalid="ignore"):
        height = -np.nanmean(np.where(np.isnan(delta).all(1, keepdims=True), 0.0, delta), axis=1)
    a, b = window(height, width)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(min(18, 3 + (b - a) * 0.09), 4.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for x, p in enumerate(range(a, b)):
        h = float(height[p])
        if h:
            ch = tokens[p][:1] or "?"
            _letter(top, ch, x, min(0.0, h), abs(h), COLORS.get(ch.upper(), "dimgray"))
    lim = float(np.nanmax(np.abs(height[a:b]))) if b > a else 0.0
    top.set_xlim(-0.5, b - a - 0.5)
    top.set_ylim(-(lim or 1) * 1.05, (lim or 1) * 1.05)
    top.axhline(0, color="black", lw=0.5)
    top.set_ylabel("-mean delta")
    top.set_title(title)
    vmax = float(np.nanmax(np.abs(delta[a:b]))) if np.isfinite(delta[a:b]).any() else 1.0
    im = bottom.imshow(delta[a:b].T, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax or 1.0, interpolation="nearest")
    bottom.set_yticks(range(len(alphabet)), alphabet, fontsize=7)
    ticks = np.linspace(0, b - a - 1, num=min(10, b - a), dtype=int) if b > a else []
    bottom.set_xticks(ticks, [str(start + a + int(t)) for t in ticks], fontsize=7)
    bottom.set_xlabel("position")
    fig.colorbar(im, ax=[top, bottom], shrink=0.6, label="delta")
    save_png(fig, path)
    plt.close(fig)
