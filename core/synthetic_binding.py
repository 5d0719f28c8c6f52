"""Synthetic protein-DNA binding data whose true model is a PSAM, and how a learned motif
compares with the planted one (numpy only).

Truth: one or more energy matrices ``E_m`` (width 8-12, ``E[k, c] >= 0`` in kT, 0 for the
consensus letter); the binding score of a sequence is summed over motifs, both strands and all
windows in affinity space::

    noiseless = scale * log sum_m sum_{strand, x} exp(-E_m(window(S, x, strand))) + offset
    label     = noiseless + N(0, sigma^2),      sigma = noise_ratio * sd(noiseless)

A window's energy is the sum of ``E_m[k, letter]`` over its positions; the reverse strand scores
the reverse complement of the window (A<->T, C<->G), as a PSAM with ``score_reverse`` does, so
the learned betas should equal ``-E_m`` up to a constant per position. Random sequences almost
never contain a near-consensus site, so sites are planted: each sequence gets, for each motif with
probability ``site_prob``, one site drawn letter by letter from ``P(c) ~ exp(-E[k, c] /
site_temp)`` on a random strand at a random place that overlaps no other planted site. The noise
ceiling is the Pearson correlation of the labels with the noiseless values: what a perfect model
reaches. Everything is determined by ``seed``.

Used by the psam example data (``python -m biolm.core.exampledata OUTDIR --binding``), the
recovery tests and ``benchmarks/psam_fit.py``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LETTERS = "ACGT"


def reverse_complement(matrix: np.ndarray) -> np.ndarray:
    """(w, 4) matrix as read from the other strand: positions reversed, letters complemented."""
    return np.asarray(matrix)[::-1, ::-1].copy()


def window_energies(codes: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Energies of every window of ``codes`` (N, L) on both strands: (N, 2, L - w + 1)."""
    w = energy.shape[0]
    win = np.lib.stride_tricks.sliding_window_view(codes, w, axis=1)
    k = np.arange(w)
    return np.stack([energy[k, win].sum(-1), reverse_complement(energy)[k, win].sum(-1)], axis=1)


def log_affinity(codes: np.ndarray, energies: list[np.ndarray]) -> np.ndarray:
    """(N,) log of the summed affinity over motifs, strands and windows."""
    scores = np.concatenate([(-window_energies(codes, e)).reshape(len(codes), -1) for e in energies], axis=1)
    top = scores.max(1, keepdims=True)
    return top[:, 0] + np.log(np.exp(scores - top).sum(1))


def random_energy_matrix(rng: np.random.Generator, width: int, low: float = 0.6, high: float = 3.0, weak_share: float = 0.2) -> np.ndarray:
    """(width, 4) energies: a random consensus letter at 0, the others U(low, high) kT; a share
    of the inner positions is weakly specific (energies x 0.25). Redrawn until the consensus is
    not close to its own reverse complement, so that the strands differ."""
    while True:
        e = rng.uniform(low, high, size=(width, 4))
        consensus = rng.integers(0, 4, size=width)
        e[np.arange(width), consensus] = 0.0
        weak = rng.random(width) < weak_share
        weak[[0, -1]] = False  # specific ends: the motif's width is well defined
        e[weak] *= 0.25
        if (consensus != 3 - consensus[::-1]).sum() >= width // 3:
            return e


@dataclass
class BindingData:
    """A synthetic data set (see the module docstring)."""

    codes: np.ndarray  # (N, L) letters 0..3 (A, C, G, T)
    labels: np.ndarray  # (N,)
    noiseless: np.ndarray  # (N,)
    energies: list  # the planted (w_m, 4) energy matrices; their betas are -E
    sites: list  # per sequence: [(motif, start, strand 0 = forward / 1 = reverse), ...]
    noise_ceiling: float
    params: dict = field(default_factory=dict)

    @property
    def sequences(self) -> list[str]:
        letters = np.array(list(LETTERS))
        return ["".join(row) for row in letters[self.codes]]

    def subset(self, rows: slice | np.ndarray) -> "BindingData":
        """The data of some sequences (the noise ceiling recomputed on them)."""
        idx = np.arange(len(self.labels))[rows]
        return BindingData(self.codes[idx], self.labels[idx], self.noiseless[idx], self.energies, [self.sites[i] for i in idx], float(np.corrcoef(self.labels[idx], self.noiseless[idx])[0, 1]), self.params)

    def write(self, path: Path, first: int = 0) -> Path:
        """Tab-separated ``id, label, sequence`` (ids ``seq<n>`` counted from ``first``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"seq{first + i:05d}\t{label:.5f}\t{seq}\n" for i, (label, seq) in enumerate(zip(self.labels, self.sequences))]
        path.write_text("".join(lines), encoding="utf-8")
        return path


def make_binding_data(n: int = 4000, length: int = 100, n_motifs: int = 1, widths: int | list[int] = 10, site_prob: float = 0.5, site_temp: float = 1.0, noise_ratio: float = 0.35, scale: float = 1.0, offset: float = 0.0, seed: int = 0, energies: list[np.ndarray] | None = None) -> BindingData:
    """Draw a data set.

    Parameters
    ----------
    n, length : number and length of the sequences.
    n_motifs : planted energy matrices; ``widths`` their widths (one for all, or one each).
    site_prob : chance that a sequence holds a site of each motif.
    site_temp : temperature of the letter-by-letter sampling of planted sites (1: Boltzmann).
    noise_ratio : noise sd over the sd of the noiseless label (0.35: ceiling about 0.944).
    scale, offset : label = scale * log-affinity + offset (+ noise).
    seed : everything is determined by it.
    energies : plant these matrices instead of drawing ``n_motifs`` new ones.
    """
    rng = np.random.default_rng(seed)
    ws = [widths] * n_motifs if isinstance(widths, int) else list(widths)
    energies = [np.asarray(e, float) for e in energies] if energies is not None else [random_energy_matrix(rng, w) for w in ws]
    ws = [len(e) for e in energies]
    codes = rng.integers(0, 4, size=(n, length))
    sites: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    for m, e in enumerate(energies):
        w = len(e)
        p = np.exp(-e / site_temp)
        cum = (p / p.sum(1, keepdims=True)).cumsum(1)
        for i in np.nonzero(rng.random(n) < site_prob)[0]:
            site = (rng.random(w)[:, None] > cum).sum(1).clip(0, 3)
            strand = int(rng.integers(0, 2))
            if strand:
                site = 3 - site[::-1]
            for _ in range(50):
                start = int(rng.integers(0, length - w + 1))
                if all(start + w <= s or s + len(energies[mm]) <= start for mm, s, _ in sites[i]):
                    break
            else:
                continue
            codes[i, start : start + w] = site
            sites[i].append((m, start, strand))
    noiseless = scale * log_affinity(codes, energies) + offset
    labels = noiseless + rng.normal(0.0, noise_ratio * float(noiseless.std()), size=n)
    params = dict(n=n, length=length, n_motifs=len(energies), widths=ws, site_prob=site_prob, site_temp=site_temp, noise_ratio=noise_ratio, scale=scale, offset=offset, seed=seed)
    return BindingData(codes, labels, noiseless, energies, sites, float(np.corrcoef(labels, noiseless)[0, 1]), params)


def consensus(energy: np.ndarray) -> str:
    return "".join(LETTERS[i] for i in np.asarray(energy).argmin(1))


def motif_similarity(learned: np.ndarray, energy: np.ndarray) -> tuple[float, int, int]:
    """How well learned betas (K, 4) match a planted energy matrix (w, 4).

    Both are centred per position (betas are defined up to a constant per position) and
    zero-padded to a common frame, so positions of one that fall outside the other count as
    zeros; the Pearson correlation of the two, at the best shift and strand, is returned with
    that shift (where learned position 0 lies on the planted one) and strand (1 = reverse)."""
    truth = -np.asarray(energy, float)
    truth = truth - truth.mean(1, keepdims=True)
    best = (-1.0, 0, 0)
    for strand, mat in enumerate((np.asarray(learned, float), reverse_complement(learned))):
        mat = mat - mat.mean(1, keepdims=True)
        k, w = len(mat), len(truth)
        for shift in range(-(k - 1), w):
            lo, hi = min(0, shift), max(w, shift + k)
            a, b = np.zeros((hi - lo, 4)), np.zeros((hi - lo, 4))
            a[-lo : -lo + w] = truth
            b[shift - lo : shift - lo + k] = mat
            if b.any():
                r = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
                if r > best[0]:
                    best = (r, shift, strand)
    return best


def match_motifs(learned: list[np.ndarray], energies: list[np.ndarray]) -> list[float]:
    """Similarity of each planted motif to its learned PSAM, under the best one-to-one pairing."""
    sims = np.array([[motif_similarity(m, e)[0] for m in learned] for e in energies])
    pairing = max(itertools.permutations(range(len(learned)), len(energies)), key=lambda perm: sum(sims[t, p] for t, p in enumerate(perm)))
    return [float(sims[t, p]) for t, p in enumerate(pairing)]


def strong_sites(data: BindingData, max_energy: float = 2.0, dominance: float = 0.5) -> list[int]:
    """Sequences with a planted site of at most ``max_energy`` kT that carries at least
    ``dominance`` of the sequence's whole affinity: there, a leave-one-out score should peak."""
    rows = []
    for i, planted in enumerate(data.sites):
        total = sum(np.exp(-window_energies(data.codes[i : i + 1], e)).sum() for e in data.energies)
        for m, start, strand in planted:
            e = data.energies[m] if strand == 0 else reverse_complement(data.energies[m])
            energy = float(e[np.arange(len(e)), data.codes[i, start : start + len(e)]].sum())
            if energy <= max_energy and np.exp(-energy) / total >= dominance:
                rows.append(i)
                break
    return rows


def write_example(outdir: Path, n_train: int = 1500, n_predict: int = 100, length: int = 100, seed: int = 11) -> dict[str, Path]:
    """The psam example: ``dna_binding_train.txt`` (``id, label, sequence``; one planted 10-bp
    motif in half the sequences), ``dna_binding_predict.txt`` (the same motif planted once in
    every sequence, drawn at half the temperature, so closer to its consensus: sites whose
    leave-one-out scores stand out) and ``dna_binding_truth.json`` (the planted energies and
    betas, the consensus, the noise ceilings and the predict file's sites)."""
    from .outputs import write_json

    outdir = Path(outdir)
    train = make_binding_data(n=n_train, length=length, n_motifs=1, widths=10, seed=seed)
    predict = make_binding_data(n=n_predict, length=length, site_prob=1.0, site_temp=0.5, seed=seed + 1, energies=train.energies)
    paths = {"train": train.write(outdir / "dna_binding_train.txt"), "predict": predict.write(outdir / "dna_binding_predict.txt", first=n_train)}
    truth = {
        "what": "planted motif of the psam example (biolm.core.synthetic_binding); betas = -energies",
        "energies": [e.round(4).tolist() for e in train.energies],
        "betas": [(-e).round(4).tolist() for e in train.energies],
        "consensus": [consensus(e) for e in train.energies],
        "noise_ceiling": {"train": round(train.noise_ceiling, 4), "predict": round(predict.noise_ceiling, 4)},
        "predict_sites": {f"seq{n_train + i:05d}": [list(map(int, s)) for s in sites] for i, sites in enumerate(predict.sites)},
        "params": {"train": train.params, "predict": predict.params},
    }
    paths["truth"] = write_json(outdir / "dna_binding_truth.json", truth)
    return paths
