"""Example data in the reference format, with a planted, learnable signal.

``python -m biolm.core.exampledata OUTDIR`` writes:

- ``rna_train.txt``: tab-separated ``id, split, halflife, stability, quality, sequence``;
  the sequence is comma-separated tokens: lower-case nucleotides, the first nucleotide of every
  codon of the CDS in upper case, ``ej`` appended to exon-junction nucleotides (``gej``), as
  the users' files have them.
- ``rna_predict.txt``: more sequences from the same generator (labels included).

``python -m biolm.core.exampledata OUTDIR --expression`` writes ``cells.h5ad`` and
``pbmc_like.h5ad`` instead: single-cell counts with cell-type marker genes
(:func:`write_expression_example`, :func:`write_pbmc_example`). ``--arrays`` writes the array
examples: one-hot genotypes with planted causal SNPs (:func:`write_genotype_example`) and
two-channel signals (:func:`write_signal_example`).

``python -m biolm.core.exampledata OUTDIR --binding`` writes the psam example instead: DNA with a
planted binding site (:func:`biolm.core.synthetic_binding.write_example`).

The planted signal: every AU-rich element ``attta`` in the 3' UTR lowers the half-life (copies
in the 5' UTR or CDS are decoys without effect), a longer CDS raises it, and so does codon
optimality — here the GC content of the third codon position, while the first two positions
compensate so that the CDS's overall GC content does not change with it. A bag of k-mers sees
a diluted signal; a model that knows where it is reading, and in which frame (upper-case codon
starts), sees it whole. ``stability`` is the half-life thresholded at its median (classification);
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


def _base(rng: np.random.Generator, p_gc: float) -> str:
    """One nucleotide with GC probability ``p_gc`` (g/c and a/t equally likely within)."""
    if rng.random() < p_gc:
        return "g" if rng.random() < 0.5 else "c"
    return "a" if rng.random() < 0.5 else "t"


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
    optimality = float(rng.random())
    gc12, gc3 = 0.7 - 0.4 * optimality, 0.3 + 0.4 * optimality
    n_gc3 = 0
    for _ in range(n_codons - 2):
        codon = [_base(rng, gc12), _base(rng, gc12), _base(rng, gc3)]
        while "".join(codon) in STOPS:
            codon = [_base(rng, gc12), _base(rng, gc12), _base(rng, gc3)]
        n_gc3 += codon[2] in "gc"
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
    gc3_frac = n_gc3 / max(1, n_codons - 2)
    halflife = float(np.exp(1.0 - 0.45 * are + 0.4 * cds_len / 1000.0 + 1.5 * (gc3_frac - 0.5)))
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


def write_examples(outdir: Path, n_train: int = 2000, n_predict: int = 60, seed: int = 7, min_len: int = 200, max_len: int = 900) -> dict[str, Path]:
    outdir = Path(outdir)
    return {
        "train": write_dataset(outdir / "rna_train.txt", n_train, seed, min_len, max_len),
        "predict": write_dataset(outdir / "rna_predict.txt", n_predict, seed + 1, min_len, max_len),
    }


CELL_TYPE_NAMES = ("T cell", "B cell", "monocyte", "NK cell", "dendritic cell", "erythrocyte", "platelet", "neutrophil")


def write_expression_example(path: Path, n_cells: int = 300, n_genes: int = 200, n_types: int = 3, seed: int = 0, n_markers: int = 10, marker_fold: float = 8.0, program_sd: float = 0.0) -> Path:
    """Write a small single-cell ``.h5ad`` (h5py only) with a planted cell-type signal.

    Counts are negative binomial (gamma-Poisson, dispersion 2) around per-gene means drawn
    log-normally, times a per-cell library size. Each cell type over-expresses (x ``marker_fold``)
    its own ``n_markers`` marker genes (disjoint sets, taken in order after the housekeeping
    genes); with ``program_sd`` > 0 the strength of that programme varies from cell to cell (the
    fold is ``marker_fold ** s``, ``log s ~ N(0, program_sd)``), so some cells are hard to call.
    The first 10 genes are "housekeeping" genes, high in every cell, so that the per-gene median
    normalisation of Geneformer's tokenizer has something to demote. Cell types are imbalanced
    (proportions n_types : n_types-1 : ... : 1), so the majority baseline is well above chance.

    ``obs`` columns: ``cell_type`` (categorical), ``split`` (categorical ``"1"``..``"5"``, balanced),
    ``marker_score`` (float: mean ``log1p`` of the library-normalised (10,000) counts of the
    first type's markers, plus a little noise — a regression target the counts determine) and
    ``n_counts`` (the library size, as Geneformer's tokenizer reads it). ``var`` column
    ``ensembl_id``: ``ENSG00000000001``.. (gene ``j`` -> id ``j``; the ids of the tiny Geneformer
    dictionaries in ``exampleconfigs/data/geneformer/``). ``X`` is a CSR matrix of float32 counts;
    genes are ``gene001``..; cells ``cell0001``...
    """
    import scipy.sparse as sp

    from .h5ad import write_h5ad

    n_housekeeping = 10
    if n_housekeeping + n_types * n_markers > n_genes:
        raise ValueError(f"{n_genes} genes are too few for {n_housekeeping} housekeeping genes and {n_types} x {n_markers} markers")
    rng = np.random.default_rng(seed)
    names = [CELL_TYPE_NAMES[k] if k < len(CELL_TYPE_NAMES) else f"type {k + 1}" for k in range(n_types)]
    weights = np.arange(n_types, 0, -1, dtype=np.float64)
    types = rng.choice(n_types, size=n_cells, p=weights / weights.sum())
    mu = np.exp(rng.normal(-0.4, 0.9, n_genes))
    mu[:n_housekeeping] = np.exp(rng.normal(3.0, 0.3, n_housekeeping))
    fold = np.ones((n_types, n_genes))
    markers = [np.arange(n_housekeeping + k * n_markers, n_housekeeping + (k + 1) * n_markers) for k in range(n_types)]
    for k, m in enumerate(markers):
        fold[k, m] = marker_fold
        mu[m] = np.maximum(mu[m], 0.5)
    size = np.exp(rng.normal(0.0, 0.3, n_cells))
    cell_fold = fold[types]
    if program_sd > 0:  # drawn only then, so the default data stay what they were
        cell_fold = cell_fold ** np.exp(rng.normal(0.0, program_sd, n_cells))[:, None]
    mean = mu[None, :] * cell_fold * size[:, None]
    r = 2.0
    counts = rng.poisson(rng.gamma(r, mean / r)).astype(np.float32)
    norm = 1e4 * counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    score = np.log1p(norm[:, markers[0]]).mean(1) + rng.normal(0.0, 0.05, n_cells)
    split = (rng.permutation(n_cells) % 5 + 1).astype(str)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h5ad(
        path,
        sp.csr_matrix(counts),
        [f"gene{j + 1:03d}" for j in range(n_genes)],
        [f"cell{i + 1:04d}" for i in range(n_cells)],
        obs={"cell_type": np.asarray(names, dtype=object)[types].astype(str), "split": split, "marker_score": np.round(score, 5), "n_counts": counts.sum(1, dtype=np.float64)},
        categorical={"cell_type", "split"},
        var={"ensembl_id": np.asarray([f"ENSG{j + 1:011d}" for j in range(n_genes)])},
    )
    return path


PBMC_TYPES = (
    # name, share, lineage program, own markers (real PBMC marker genes, as in scanpy's pbmc3k tutorial)
    ("CD4 T", 0.34, "T", ("IL7R", "CCR7", "CD4", "LEF1")),
    ("CD8 T", 0.14, "T", ("CD8A", "CD8B", "GZMK", "CCL5")),
    ("B", 0.12, "B", ("MS4A1", "CD79A", "CD79B", "BANK1")),
    ("NK", 0.10, "NK", ("GNLY", "NKG7", "KLRD1", "PRF1")),
    ("CD14 Mono", 0.16, "M", ("CD14", "LYZ", "S100A8", "S100A9")),
    ("FCGR3A Mono", 0.06, "M", ("FCGR3A", "MS4A7", "LST1", "IFITM3")),
    ("DC", 0.05, "M", ("FCER1A", "CST3", "CLEC10A", "HLA-DQA1")),
    ("Platelet", 0.03, "P", ("PPBP", "PF4", "GP9", "ITGA2B")),
)
LINEAGES = {"T": ("CD3E", "CD3D", "CD2", "TRAC"), "B": ("CD19", "PAX5", "CD22", "IGHM"), "NK": ("KLRF1", "NCAM1", "FCGR3B", "SH2D1B"), "M": ("CSF1R", "FCN1", "TYROBP", "FCER1G"), "P": ("TUBB1", "GNG11", "CLU", "SPARC")}


def write_pbmc_example(path: Path, n_cells: int = 1200, n_genes: int = 300, seed: int = 0) -> Path:
    """Write a PBMC-like ``.h5ad``: eight blood cell types with real marker names, raw counts.

    Each type has a lineage programme shared with its relatives (T: CD4 and CD8 T cells;
    monocytes and DCs) at 6x and its own four markers at 8x, so relatives are told apart by a
    few genes only; counts are negative binomial (dispersion 1.5) around log-normal gene means
    times a log-normal library size (sd 0.5), and 20 % of the cells carry a second type's
    programme at a fifth of its strength (doublet-like noise), so a linear classifier on
    principal components is good but not perfect (about 0.9 accuracy). Gene symbols are the ``var`` index (unique), Ensembl-like
    ids the ``gene_ids`` column.

    ``obs``: ``cell_type`` (categorical) and ``split`` (categorical ``train``/``val``/``test``,
    70/15/15 within each cell type: stratified), ``n_counts`` (float).
    """
    import scipy.sparse as sp

    from .h5ad import write_h5ad

    rng = np.random.default_rng(seed)
    named = [g for _, _, _, m in PBMC_TYPES for g in m] + [g for gs in LINEAGES.values() for g in gs]
    genes = named + [f"GENE{j:04d}" for j in range(n_genes - len(named))]
    col = {g: j for j, g in enumerate(genes)}
    shares = np.array([t[1] for t in PBMC_TYPES])
    types = rng.choice(len(PBMC_TYPES), size=n_cells, p=shares / shares.sum())
    mu = np.exp(rng.normal(0.5, 1.2, n_genes))
    fold = np.ones((len(PBMC_TYPES), n_genes))
    for k, (_, _, lineage, own) in enumerate(PBMC_TYPES):
        fold[k, [col[g] for g in LINEAGES[lineage]]] = 6.0
        fold[k, [col[g] for g in own]] = 8.0
    mu[[col[g] for g in named]] = np.maximum(mu[[col[g] for g in named]], 0.4)
    profile = fold[types]
    mixed = rng.random(n_cells) < 0.2
    other = rng.choice(len(PBMC_TYPES), size=n_cells)
    profile[mixed] += 0.2 * (fold[other[mixed]] - 1.0)
    size = np.exp(rng.normal(0.0, 0.5, n_cells))
    r = 1.5
    counts = rng.poisson(rng.gamma(r, mu[None, :] * profile * size[:, None] / r)).astype(np.float32)
    split = np.empty(n_cells, dtype=object)
    for k in range(len(PBMC_TYPES)):
        members = rng.permutation(np.flatnonzero(types == k))
        n_val, n_test = int(round(0.15 * len(members))), int(round(0.15 * len(members)))
        split[members] = "train"
        split[members[:n_val]] = "val"
        split[members[n_val : n_val + n_test]] = "test"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h5ad(
        path,
        sp.csr_matrix(counts),
        genes,
        [f"AAAC{i:06d}-1" for i in range(n_cells)],
        obs={"cell_type": np.asarray([t[0] for t in PBMC_TYPES], dtype=object)[types].astype(str), "split": split.astype(str), "n_counts": counts.sum(1).astype(np.float64)},
        categorical={"cell_type", "split"},
        var={"gene_ids": np.asarray([f"ENSG{100000 + j:011d}" for j in range(n_genes)])},
    )
    return path


GENOTYPE_CHANNELS = ("hom_ref", "het", "hom_alt", "missing")


def _train_val_test(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random split ids: 70 % ``train``, 15 % ``val``, 15 % ``test``."""
    split = np.asarray(["train"] * n, dtype=object)
    order = rng.permutation(n)
    split[order[: int(0.15 * n)]] = "val"
    split[order[int(0.15 * n) : int(0.30 * n)]] = "test"
    return split


def write_genotype_example(outdir: Path, n_samples: int = 1500, n_snps: int = 2000, n_causal: int = 20, heritability: float = 0.9, seed: int = 0) -> dict[str, Path]:
    """Write a synthetic genotype example in EIR's array layout, with planted causal SNPs.

    Genotypes (0, 1, 2 alternative alleles) are drawn per SNP with minor allele frequencies
    uniform in [0.1, 0.5] and 0.5 % missing calls, one-hot encoded as EIR does: an int8 array
    (4, n_snps) per sample, channels hom-ref / het / hom-alt / missing. ``n_causal`` SNPs (spread
    over the genome) have additive effects on the dosage (random sign, size uniform in [0.5, 1]); the phenotype is their
    sum (missing = the SNP's mean dosage) standardised to the wanted ``heritability``, plus
    noise. A ridge regression on dosages recovers most of it; a mean predictor none.

    Files in ``outdir``: ``genotypes.npz`` (``ids`` (N,) and ``genotypes`` (N, 4, n_snps) int8),
    ``genotypes_labels.tsv`` (``id, split, phenotype, case`` with a header line; ``split``
    ``train``/``val``/``test`` 70/15/15; ``case`` = phenotype above its median),
    ``genotypes_snps.txt`` (the SNP names ``rs...``, one per line, for ``positionnames``) and
    ``genotypes_causal.txt`` (the causal SNPs' indices and effects, for checking interpret).
    """
    rng = np.random.default_rng(seed)
    maf = rng.uniform(0.1, 0.5, n_snps)
    dosage = rng.binomial(2, maf[None, :], size=(n_samples, n_snps)).astype(np.int64)
    missing = rng.random((n_samples, n_snps)) < 0.005
    causal = np.sort(rng.choice(n_snps, size=n_causal, replace=False))
    beta = rng.choice([-1.0, 1.0], n_causal) * rng.uniform(0.5, 1.0, n_causal)
    filled = np.where(missing, 2 * maf[None, :], dosage)[:, causal]
    g = (filled - 2 * maf[causal]) @ beta
    g = g / g.std() * np.sqrt(heritability)
    y = g + rng.normal(0.0, np.sqrt(1 - heritability), n_samples)
    onehot = np.zeros((n_samples, 4, n_snps), dtype=np.int8)
    channel = np.where(missing, 3, dosage)
    onehot[np.arange(n_samples)[:, None], channel, np.arange(n_snps)[None, :]] = 1
    ids = np.asarray([f"sample{i:05d}" for i in range(n_samples)])
    split = _train_val_test(rng, n_samples)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"arrays": outdir / "genotypes.npz", "labels": outdir / "genotypes_labels.tsv", "snps": outdir / "genotypes_snps.txt", "causal": outdir / "genotypes_causal.txt"}
    np.savez_compressed(paths["arrays"], ids=ids, genotypes=onehot)
    median = float(np.median(y))
    with open(paths["labels"], "w", encoding="utf-8") as fh:
        fh.write("id\tsplit\tphenotype\tcase\n")
        for i in range(n_samples):
            fh.write(f"{ids[i]}\t{split[i]}\t{y[i]:.5f}\t{'case' if y[i] > median else 'control'}\n")
    paths["snps"].write_text("".join(f"rs{100000 + 37 * j}\n" for j in range(n_snps)))
    paths["causal"].write_text("".join(f"{j}\t{b:.4f}\n" for j, b in zip(causal, beta)))
    return paths


def write_signal_example(outdir: Path, n_samples: int = 400, length: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write a small array example for ``pca``: one ``.npy`` of two-channel signals, ids, labels.

    Class ``early`` / ``middle`` / ``late`` places a bump (Gaussian, random height 0.5-1.5) at a
    quarter, half or three quarters of the window in channel 0, under noise (sd 0.5); channel 1
    is a noisy ramp whose slope is the regression target ``slope``. Files: ``signals.npy`` (N, 2, length) float32,
    ``signals_ids.txt`` (one id per line, row order) and ``signals_labels.tsv`` (``id, split,
    class, slope``, header line; ``split`` ``train``/``val``/``test`` 70/15/15).
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, length, endpoint=False)
    names = ("early", "middle", "late")
    cls = rng.integers(0, 3, n_samples)
    height = rng.uniform(0.5, 1.5, n_samples)
    slope = rng.uniform(-1.0, 1.0, n_samples)
    x = np.zeros((n_samples, 2, length), dtype=np.float32)
    centre = (cls[:, None] + 1) / 4
    x[:, 0] = height[:, None] * np.exp(-0.5 * ((t[None, :] - centre) / 0.06) ** 2) + rng.normal(0, 0.5, (n_samples, length))
    x[:, 1] = slope[:, None] * (t[None, :] - 0.5) * 4 + rng.normal(0, 0.5, (n_samples, length))
    split = _train_val_test(rng, n_samples)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"arrays": outdir / "signals.npy", "ids": outdir / "signals_ids.txt", "labels": outdir / "signals_labels.tsv"}
    np.save(paths["arrays"], x)
    ids = [f"sig{i:04d}" for i in range(n_samples)]
    paths["ids"].write_text("".join(f"{i}\n" for i in ids))
    with open(paths["labels"], "w", encoding="utf-8") as fh:
        fh.write("id\tsplit\tclass\tslope\n")
        for i in range(n_samples):
            fh.write(f"{ids[i]}\t{split[i]}\t{names[cls[i]]}\t{slope[i]:.5f}\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-predict", type=int, default=60)
    ap.add_argument("--seed", type=int, default=None, help="default: 7 (sequences), 0 (--expression), 11 (--binding)")
    ap.add_argument("--min-len", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=900)
    ap.add_argument("--expression", action="store_true", help="write the single-cell examples OUTDIR/cells.h5ad (geneformer) and OUTDIR/pbmc_like.h5ad (pca) instead")
    ap.add_argument("--arrays", action="store_true", help="write the array examples OUTDIR/genotypes.* (lcl) and OUTDIR/signals.* (pca) instead")
    ap.add_argument("--binding", action="store_true", help="write the DNA binding example OUTDIR/dna_binding_*.txt instead (psam)")
    a = ap.parse_args(argv)
    if a.binding:
        from .synthetic_binding import write_example

        for name, p in write_example(a.outdir, **({} if a.seed is None else {"seed": a.seed})).items():
            print(f"{name}: {p}")
        return
    if a.expression:
        # the bundled example: 1,600 cells, markers x3 with a programme strength that varies per
        # cell, so a held-out split is not trivially separable (a model has something to learn)
        print(f"cells: {write_expression_example(a.outdir / 'cells.h5ad', n_cells=1600, seed=0 if a.seed is None else a.seed, marker_fold=3.0, program_sd=0.5)}")
        print(f"pbmc-like: {write_pbmc_example(a.outdir / 'pbmc_like.h5ad', seed=0 if a.seed is None else a.seed)}")
        return
    if a.arrays:
        for name, p in {**write_genotype_example(a.outdir, seed=0 if a.seed is None else a.seed), **{f"signal {k}": v for k, v in write_signal_example(a.outdir, seed=0 if a.seed is None else a.seed).items()}}.items():
            print(f"{name}: {p}")
        return
    seed = 7 if a.seed is None else a.seed
    for name, p in write_examples(a.outdir, a.n_train, a.n_predict, seed, a.min_len, a.max_len).items():
        print(f"{name}: {p}")


if __name__ == "__main__":
    main()
