"""Exports of learned PSAMs: JSON, the MEME motif format, energy logo plots and the fitted
position bias; every file is written atomically (complete or not at all)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .alphabet import Alphabet, get_alphabet
from .convolution import Mode
from .predictor import PSAMPredictor
from .psam import PSAM

__all__ = ["psam_matrix", "to_json", "to_meme", "draw_logo", "plot_logo", "plot_position_bias", "export_psams"]


def psam_matrix(psam: PSAM | Mode, channel: int = 0) -> np.ndarray:
    """Monomer betas of one forward motif as (kernel_size, A), symmetry applied.

    Parameters
    ----------
    psam : PSAM or Mode
    channel : int, default 0
        Unique motif index (forward-strand channel).
    """
    if isinstance(psam, Mode):
        psam = psam.psam
    with torch.no_grad():
        return psam.get_filter(0)[channel].T.detach().cpu().double().numpy().copy()


def _letters(alphabet: str | Sequence[str] | Alphabet | None) -> tuple[str, ...]:
    return get_alphabet(alphabet).letters


def to_json(
    psam: PSAM | Mode | np.ndarray,
    path: str | os.PathLike[str] | None = None,
    alphabet: str | Sequence[str] | Alphabet | None = None,
    name: str = "psam",
) -> dict[str, Any]:
    """Describe a PSAM (or a (K, A) beta matrix) as JSON.

    Returns the dict (and writes it to ``path`` when given): ``name``, ``alphabet``,
    ``kernel_size``, ``monomer`` (K x A betas per motif, forward strand), plus for a PSAM
    ``symmetry``, ``score_reverse``, ``dilation``, ``bias`` and ``pairwise``
    (``{"d": [motif][a][b][k]}``, ``a`` at ``k``, ``b`` at ``k + d``).
    """
    if isinstance(psam, Mode):
        psam = psam.psam
    if isinstance(psam, PSAM):
        n_motifs = psam.out_channels // psam.n_strands
        with torch.no_grad():
            doc: dict[str, Any] = {
                "name": name,
                "alphabet": list(psam.alphabet.letters),
                "kernel_size": psam.kernel_size,
                "symmetry": psam.symmetry.tolist(),
                "score_reverse": psam.score_reverse,
                "dilation": psam.dilation,
                "bias": psam.bias.detach().double().flatten().tolist(),
                "monomer": [psam_matrix(psam, o).tolist() for o in range(n_motifs)],
                "pairwise": {
                    str(d): psam.get_filter(d)[:n_motifs].detach().double().tolist()
                    for d in range(1, psam.pairwise_distance + 1)
                },
            }
    else:
        matrix = np.asarray(psam, dtype=float)
        letters = _letters(alphabet)
        if matrix.ndim != 2 or matrix.shape[1] != len(letters):
            raise ValueError(f"matrix must be (kernel_size, {len(letters)}), got {matrix.shape}")
        doc = {
            "name": name,
            "alphabet": list(letters),
            "kernel_size": matrix.shape[0],
            "monomer": [matrix.tolist()],
        }
    if path is not None:
        _write_text(path, json.dumps(doc, indent=1))
    return doc


def _probabilities(matrix: np.ndarray) -> np.ndarray:
    shifted = matrix - matrix.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=1, keepdims=True)


def to_meme(
    matrices: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray],
    path: str | os.PathLike[str] | None = None,
    alphabet: str | Sequence[str] | Alphabet | None = "ACGT",
    names: Sequence[str] | None = None,
    nsites: int = 20,
) -> str:
    """Write beta matrices in the MEME minimal motif format.

    The betas are ``-ddG / RT`` so the relative affinity of letter ``c`` at position ``k`` is
    ``exp(beta[k, c])``; the letter-probability row is ``exp(beta[k]) / sum_c exp(beta[k, c])``
    (the Boltzmann distribution of a single position, uniform background).

    Parameters
    ----------
    matrices : (K, A) array, sequence of them, or mapping name -> array
    path : path, optional
        Where to write; the text is returned either way.
    alphabet : str, sequence of str or Alphabet, default "ACGT"
    names : sequence of str, optional
        Motif names (default ``psam_0``, ``psam_1``, ...).
    nsites : int, default 20
        Nominal site count (MEME requires one; it does not change the probabilities).
    """
    if isinstance(matrices, Mapping):
        names = list(matrices)
        mats = [np.asarray(m, dtype=float) for m in matrices.values()]
    elif isinstance(matrices, np.ndarray) and matrices.ndim == 2:
        mats = [matrices.astype(float)]
    else:
        mats = [np.asarray(m, dtype=float) for m in matrices]
    names = list(names) if names is not None else [f"psam_{i}" for i in range(len(mats))]
    alpha = get_alphabet(alphabet)
    letters = alpha.letters
    lines = ["MEME version 4", "", f"ALPHABET= {''.join(letters)}", ""]
    if alpha.complement:
        lines += ["strands: + -", ""]
    background = " ".join(f"{c} {1 / len(letters):.6f}" for c in letters)
    lines += ["Background letter frequencies", background, ""]
    for name, mat in zip(names, mats):
        if mat.ndim != 2 or mat.shape[1] != len(letters):
            raise ValueError(f"matrix {name} must be (kernel_size, {len(letters)}), got {mat.shape}")
        probs = _probabilities(mat)
        lines.append(f"MOTIF {name}")
        lines.append(
            f"letter-probability matrix: alength= {len(letters)} w= {mat.shape[0]} nsites= {nsites} E= 0"
        )
        lines += [" " + " ".join(f"{p:.6f}" for p in row) for row in probs]
        lines.append("")
    text = "\n".join(lines)
    if path is not None:
        _write_text(path, text)
    return text


_LOGO_COLOURS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839", "U": "#D62839"}


def draw_logo(ax: Any, matrix: np.ndarray | Tensor, alphabet: str | Sequence[str] | Alphabet | None, title: str | None = None) -> None:
    """Draw the energy logo of a (K, A) beta matrix on a matplotlib axis.

    Letter heights are ``beta - mean_c(beta)`` per position: letters above the axis raise the
    affinity, those below lower it, stacked from the axis outwards by size."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    mat = matrix.detach().cpu().double().numpy() if isinstance(matrix, Tensor) else np.asarray(matrix, dtype=float)
    letters = _letters(alphabet)
    if mat.ndim != 2 or mat.shape[1] != len(letters):
        raise ValueError(f"matrix must be (kernel_size, {len(letters)}), got {mat.shape}")
    heights = mat - mat.mean(axis=1, keepdims=True)
    font = FontProperties(family="DejaVu Sans", weight="bold")
    palette = dict(_LOGO_COLOURS)
    cycle = ["#6A4C93", "#1982C4", "#8AC926", "#FF595E", "#FFCA3A", "#5C5C5C"]
    for i, letter in enumerate(letters):
        palette.setdefault(letter, cycle[i % len(cycle)])
    for k, row in enumerate(heights):
        up, down = 0.0, 0.0
        for c in np.argsort(np.abs(row)):
            h = float(row[c])
            if h == 0.0:
                continue
            glyph = TextPath((0, 0), letters[c], size=1, prop=font)
            box = glyph.get_extents()
            base = up if h > 0 else down - abs(h)
            transform = Affine2D().translate(-box.x0, -box.y0).scale(0.9 / box.width, abs(h) / box.height).translate(k + 0.05, base)
            ax.add_patch(PathPatch(transform.transform_path(glyph), color=palette[letters[c]], lw=0))
            if h > 0:
                up += h
            else:
                down -= abs(h)
    ax.set_xlim(0, mat.shape[0])
    lows = np.where(heights < 0, heights, 0).sum(axis=1)
    highs = np.where(heights > 0, heights, 0).sum(axis=1)
    ax.set_ylim(min(float(lows.min()), -1e-3) * 1.05, max(float(highs.max()), 1e-3) * 1.05)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(mat.shape[0]) + 0.5)
    ax.set_xticklabels([str(i + 1) for i in range(mat.shape[0])])
    ax.set_ylabel("beta - position mean")
    if title:
        ax.set_title(title)


def plot_logo(
    matrix: np.ndarray | Tensor,
    alphabet: str | Sequence[str] | Alphabet | None,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> str:
    """Energy logo of a (K, A) beta matrix (:func:`draw_logo`) as an image.

    Parameters
    ----------
    matrix : (K, A) array
    alphabet : str, sequence of str or Alphabet
    path : path
        Output image (format from the suffix, e.g. ``.png``, ``.pdf``).
    title : str, optional

    Returns
    -------
    str
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shape = np.shape(matrix)
    fig = Figure(figsize=(max(3.0, 0.5 * shape[0] + 1), 2.5))
    FigureCanvasAgg(fig)
    draw_logo(fig.add_subplot(1, 1, 1), matrix, alphabet, title)
    fig.tight_layout()
    _save_figure(fig, path)
    return os.fspath(path)


def plot_position_bias(mode: Mode, path: str | os.PathLike[str], title: str | None = None) -> str:
    """The fitted position bias ``omega(x)`` of a mode: one line per strand/motif channel over
    the window start (for a length-specific bias, one panel row per 10th length).

    Parameters
    ----------
    mode : Mode
    path : output image (format from the suffix).

    Returns
    -------
    str
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conv = mode.layers[0]
    with torch.no_grad():
        bias = conv.get_log_posbias().detach().cpu().double().numpy()  # (n_lengths, C, W)
    rows = list(range(0, bias.shape[0], max(1, bias.shape[0] // 10)))
    fig = Figure(figsize=(7.0, 2.2 + 0.4 * (len(rows) > 1) * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n_strands = conv.layer_spec.n_strands
    for r in rows:
        for c in range(bias.shape[1]):
            strand = "forward" if c < bias.shape[1] // n_strands else "reverse"
            name = f"{strand} strand" + (f", length {conv.min_input_length + r}" if conv.length_specific_bias else "")
            ax.plot(np.arange(1, bias.shape[2] + 1), bias[r, c], lw=1.2, label=name)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("window start (position in the input)")
    ax.set_ylabel("log position bias")
    if bias.shape[0] * bias.shape[1] <= 12:
        ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)
    return os.fspath(path)


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    from biolm.core.hookspecs import write_text

    write_text(path, text)


def _save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    from biolm.core.hookspecs import atomic_path

    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix)


def export_psams(model: PSAMPredictor | Mode | PSAM, out_dir: str | os.PathLike[str], prefix: str = "psam") -> list[str]:
    """Write every motif of a model as ``<prefix>_<i>.json``, ``<prefix>_<i>_logo.png`` and one
    ``<prefix>.meme``, and each trained position bias as ``<prefix>_<i>_position_bias.png``;
    returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(model, PSAMPredictor):
        modes: list[Mode | None] = list(model.modes)
    elif isinstance(model, Mode):
        modes = [model]
    else:
        modes = [None]
    psams = [m.psam if m is not None else model for m in modes]
    written: list[str] = []
    matrices: dict[str, np.ndarray] = {}
    for i, (mode, psam) in enumerate(zip(modes, psams)):
        name = f"{prefix}_{i}"
        json_path = os.path.join(out_dir, f"{name}.json")
        to_json(psam, json_path, name=name)
        written.append(json_path)
        for o in range(psam.out_channels // psam.n_strands):
            label = name if psam.out_channels == psam.n_strands else f"{name}_{o}"
            matrices[label] = psam_matrix(psam, o)
            written.append(plot_logo(matrices[label], psam.alphabet, os.path.join(out_dir, f"{label}_logo.png"), label))
        if mode is not None and mode.layers[0]._posbias_in_use():
            written.append(plot_position_bias(mode, os.path.join(out_dir, f"{name}_position_bias.png"), f"{name}: fitted position bias"))
    meme_path = os.path.join(out_dir, f"{prefix}.meme")
    to_meme(matrices, meme_path, alphabet=psams[0].alphabet)
    written.append(meme_path)
    return written
