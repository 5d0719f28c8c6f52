"""Example data in the reference format, with a planted, learnable signal.

``python -m biolm.core.exampledata OUTDIR`` writes:

- ``rna_train.txt``: tab-separated ``id, split, halflife, stability, quality, sequence``;
  the sequence is comma-separated tokens: lower-case nucleotides, the first nucleotide of every
  codon of the CDS in upper case, ``ej`` appended to exon-junction nucleotides (``gej``), as
  the users' files have them.
- ``rna_predict.txt``: more sequences from the same generator (labels included).

The planted signal: every AU-rich element ``attta`` in the 3' UTR lowers the half-life, a longer
CDS raises it, and ``attta`` copies in the 5' UTR or CDS are decoys without effect — so a
bag-of-k-mers model sees a diluted signal while a model that knows where it is reading sees it
whole. ``stability`` is the half-life thresholded at its median (classification);
``quality`` is STRONG/GOOD/WEAK/POOR (weighted regression).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

NT = np.array(list("acgt"))
STOPS = ("taa", "tag", "tga")
MOTIF = "attta"
QUALITY = ("STRONG", "GOOD", "WEAK", "POOR")


def _random_nt(rng: np.random.Generator, n: int) -> list[str]:
    return list(NT[rng.integers(0, 4, n)])


def _insert(seq: list[str], rng: np.random.Generator, lo: int, hi: int, count: int) -> None:
    for _ in range(count):
        if hi - lo <= len(MOTIF):
            return
        at = int(rng.integers(lo, hi - len(MOTIF)))
        seq[at : at + len(MOTIF)] = list(MOTIF)


def transcript(rng: np.random.Generator, min_len: int = 300, max_len: int = 1800, modifiers: bool = False) -> tuple[list[str], float]:
    """One tokenized transcript and its noiseless half-life."""
    total = int(rng.integers(min_len, max_len + 1))
    utr5 = int(rng.integers(20, max(21, total // 8)))
    n_codons = int(rng.integers(max(10, total // 6), max(11, total // 2))) // 1
    cds_len = 3 * n_codons
    utr3 = max(30, total - utr5 - cds_len)
    seq = _random_nt(rng, utr5)
    cds = ["a", "t", "g"]
    for _ in range(n_codons - 2):
        codon = _random_nt(rng, 3)
        while "".join(codon) in STOPS:
            codon = _random_nt(rng, 3)
        cds += codon
    cds += list(STOPS[int(rng.integers(0, 3))])
    seq += cds
    seq += _random_nt(rng, utr3)
    cds_start, cds_end = utr5, utr5 + cds_len
    n_decoy = int(rng.poisson(1.0))
    n_are = int(rng.poisson(1.5))
    _insert(seq, rng, 0, cds_end, n_decoy)
    _insert(seq, rng, cds_end, len(seq), n_are)
    # count what is really there (insertions can overlap or create motifs by chance)
    text = "".join(seq)
    are = sum(1 for i in range(cds_end, len(text) - 4) if text.startswith(MOTIF, i))
    tokens = [c.upper() if cds_start <= i < cds_end and (i - cds_start) % 3 == 0 else c for i, c in enumerate(seq)]
    n_ej = int(rng.integers(0, 6))
    for pos in rng.choice(np.arange(1, len(tokens) - 1), size=min(n_ej, len(tokens) - 2), replace=False):
        tokens[int(pos)] = tokens[int(pos)] + "ej"
    if modifiers:
        tokens = [f"{t}#{rng.random():.2f}" if rng.random() < 0.3 else t for t in tokens]
    halflife = float(np.exp(1.2 - 0.45 * are + 0.6 * cds_len / 1000.0))
    return tokens, halflife


def write_dataset(path: Path, n: int, seed: int, min_len: int = 300, max_len: int = 1800, n_splits: int = 5, modifiers: bool = False, noise: float = 0.1) -> Path:
    """Write ``n`` records; returns the path. ``.gz`` suffix -> gzip."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tokens, hl = transcript(rng, min_len, max_len, modifiers)
        hl *= float(np.exp(rng.normal(0, noise)))
        rows.append((f"ENST{seed:03d}{i:07d}", str(i % n_splits + 1), hl, ",".join(tokens)))
    median = float(np.median([r[2] for r in rows]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for rid, split, hl, seq in rows:
            stability = "stable" if hl >= median else "unstable"
            quality = QUALITY[int(rng.integers(0, 4))]
            fh.write(f"{rid}\t{split}\t{hl:.5f}\t{stability}\t{quality}\t{seq}\n")
    return path


def write_examples(outdir: Path, n_train: int = 600, n_predict: int = 60, seed: int = 7, min_len: int = 200, max_len: int = 900) -> dict[str, Path]:
    outdir = Path(outdir)
    return {
        "train": write_dataset(outdir / "rna_train.txt", n_train, seed, min_len, max_len),
        "predict": write_dataset(outdir / "rna_predict.txt", n_predict, seed + 1, min_len, max_len),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-predict", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--min-len", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=900)
    a = ap.parse_args(argv)
    for name, p in write_examples(a.outdir, a.n_train, a.n_predict, a.seed, a.min_len, a.max_len).items():
        print(f"{name}: {p}")


if __name__ == "__main__":
    main()
