"""Every example config runs as its header comment says and still shows what it claims.

Each example below is a list of config files; the ``biolm ...`` (and ``python ...``) lines of
their header comments are run exactly as written, in subprocesses, from a temporary folder that
links the repository's ``exampleconfigs/`` (so ``experiments/...`` lands in the temporary
folder). Then the example's headline figures are read from its outputs and compared with floors.

The floors: each figure was measured with the config's own seed and with ``--seed`` 1, 2 and 3
(``BIOLM_EXAMPLE_SEED=N pytest -m slow tests/test_examples.py -s`` prints them; the seed changes
the random splits and initialisation, not the data), and the floor sits below the lowest of the
four by a margin of about half their spread or more. ``MEASURED`` keeps those numbers next to
the floors, so a drift is visible in review.

Slow (about 8 minutes on two cores): CI runs these with the other slow tests.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from biolm.core import metrics

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "exampleconfigs" / "data"

pytestmark = pytest.mark.slow


def header_commands(config: Path) -> list[list[str]]:
    """The command lines of a config's header comment (the comment block before the first key)."""
    commands = []
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        text = line.lstrip("#").strip()
        if re.match(r"(biolm|python) \S", text):
            commands.append(shlex.split(text))
    return commands


def run_commands(configs: list[str], cwd: Path) -> None:
    """Runs the header commands of ``configs`` in order (each command once, in the order first
    seen: predict_interpret.yaml repeats the commands of its fine-tune config's header)."""
    seen: list[list[str]] = []
    for name in configs:
        for command in header_commands(ROOT / name):
            if command in seen:
                continue
            seen.append(command)
            argv = [sys.executable, "-m", "biolm", *command[1:]] if command[0] == "biolm" else [sys.executable, *command[1:]]
            if command[0] == "biolm" and os.environ.get("BIOLM_EXAMPLE_SEED") and command[2] in ("tokenize", "pre-train", "fine-tune"):
                argv += ["--seed", os.environ["BIOLM_EXAMPLE_SEED"]]
            p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1800)
            assert p.returncode == 0, f"{' '.join(command)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"


def rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def results(path: Path) -> dict:
    return json.loads(path.read_text())


def agreement(predicted: list[dict]) -> dict[str, float]:
    """Pearson r and Spearman rho of a predictions CSV's ``prediction`` against its ``label``."""
    return metrics.regression(np.array([float(r["label"]) for r in predicted]), np.array([float(r["prediction"]) for r in predicted]))


# ------------------------------------------------------------------------------- the headline figures


def saluki_rna(out: Path) -> dict[str, float]:
    """Held-out Spearman (fine-tune's test split, and the separate predict file); the AU-rich
    elements of the 3' UTR dominate the leave-one-out and saturation scores; the variant effects
    have the planted sign (an ARE taken away lengthens the half-life, one put in shortens it)
    and are larger than those of the substitutions elsewhere."""
    run = out / "experiments/rna_saluki"
    figures = {"test_spearman": results(run / "fine-tune/0/test_results.json")["test_spearman"]}
    predicted = rows(run / "predict/test_predictions.csv")
    figures["predict_spearman"] = agreement(predicted)["spearman"]

    are = are_positions(DATA / "rna_predict.txt")
    loo: dict[bool, list[float]] = {True: [], False: []}
    for r in rows(run / "interpret/loo_scores_remove.csv"):
        loo[int(r["start_offset"]) in are[r["sequence"]]].append(abs(float(r["loo"])))
    figures["loo_are_ratio"] = float(np.mean(loo[True]) / np.mean(loo[False]))

    with h5py.File(run / "saturate/ism.h5") as f:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["ids"][:]]
        offsets, starts, delta = f["offsets"][:], f["starts"][:], f["delta"][:]
    in_are, other = [], []
    for i, name in enumerate(ids):
        effect = np.nanmax(np.abs(delta[offsets[i] : offsets[i + 1]]), axis=1)
        for j, e in enumerate(effect):
            (in_are if starts[i] + j in are[name] else other).append(e)
    figures["saturate_are_ratio"] = float(np.mean(in_are) / np.mean(other))

    effects = {r["variant"]: float(r["delta"]) for r in rows(run / "variants/variant_effects.csv")}
    signs = [(v > 0) if k.endswith(("_broken", "_deleted")) else (v < 0) for k, v in effects.items() if "_are_" in k]
    figures["variant_sign_agreement"] = float(np.mean(signs))
    are_sizes = [abs(v) for k, v in effects.items() if "_are_" in k]
    other_sizes = [abs(v) for k, v in effects.items() if "_are_" not in k]
    figures["variant_are_over_other"] = float(np.mean(are_sizes) / np.mean(other_sizes))
    return figures


def are_positions(path: Path) -> dict[str, set[int]]:
    """0-based token positions inside an ``attta`` of each transcript's 3' UTR (after its last
    upper-case codon-start token)."""
    found = {}
    for line in path.read_text().splitlines():
        f = line.split("\t")
        tokens = f[5].split(",")
        letters = "".join(t[0].lower() for t in tokens)
        utr3 = max(i for i, t in enumerate(tokens) if t[0].isupper()) + 3
        found[f[0]] = {j for m in re.finditer("(?=attta)", letters) if m.start() >= utr3 for j in range(m.start(), m.start() + 5)}
    return found


def psam_binding(out: Path) -> dict[str, float]:
    """The planted motif found from scratch (similarity of the learned PSAM to the planted
    energies), the held-out Pearson r of predict, and the masking LOO peaks inside planted sites."""
    from biolm.core.synthetic_binding import BindingData, motif_similarity, strong_sites

    run = out / "experiments/dna_psam"
    truth = results(DATA / "dna_binding_truth.json")
    learned = results(run / "fine-tune/0/psams/psam_0.json")["monomer"][0]
    figures = {"motif_similarity": float(motif_similarity(np.array(learned), np.array(truth["energies"][0]))[0])}
    figures["test_pearson"] = results(run / "fine-tune/0/test_results.json")["test_pearson"]
    predicted = rows(run / "predict/test_predictions.csv")
    figures["predict_pearson"] = agreement(predicted)["pearson"]
    # sequences whose planted site dominates their affinity: there the largest masking drop
    # (the most negative loo) must fall inside the site
    lines = [line.split("\t") for line in (DATA / "dna_binding_predict.txt").read_text().splitlines()]
    codes = np.array([["ACGT".index(c) for c in f[2]] for f in lines])
    example = BindingData(codes, np.zeros(len(lines)), np.zeros(len(lines)), [np.array(e) for e in truth["energies"]], [[tuple(s) for s in truth["predict_sites"][f[0]]] for f in lines], 1.0)
    probes = strong_sites(example)
    drops: dict[str, tuple[float, int]] = {}
    for r in rows(run / "interpret/loo_scores_mask.csv"):
        if float(r["loo"]) < drops.get(r["sequence"], (np.inf, 0))[0]:
            drops[r["sequence"]] = (float(r["loo"]), int(r["start_offset"]))
    width = len(truth["energies"][0])
    hits = [any(start <= drops[lines[i][0]][1] < start + width for _m, start, _strand in example.sites[i]) for i in probes]
    assert len(probes) >= 30
    figures["loo_peak_in_site"] = float(np.mean(hits))
    assert (run / "fine-tune/0/psams/psam.meme").exists() and (out / "psam_logos.png").exists()
    return figures


def lcl_genotypes(out: Path) -> dict[str, float]:
    """Held-out r2 of the phenotype, and how well the mean |loo| of each SNP ranks the 20 planted
    causal SNPs first (AUROC)."""
    run = out / "experiments/genotypes_lcl"
    figures = {"test_r2": results(run / "fine-tune/0/test_results.json")["test_r2"]}
    snps = (DATA / "genotypes_snps.txt").read_text().split()
    index = {s: j for j, s in enumerate(snps)}
    total, count = np.zeros(len(snps)), np.zeros(len(snps))
    for r in rows(run / "interpret/loo_scores_mask.csv"):
        total[index[r["token"]]] += abs(float(r["loo"]))
        count[index[r["token"]]] += 1
    causal = np.zeros(len(snps), bool)
    causal[[int(line.split()[0]) for line in (DATA / "genotypes_causal.txt").read_text().splitlines()]] = True
    figures["causal_snp_auroc"] = metrics.auroc(causal, total / np.maximum(count, 1))
    return figures


def pca_pbmc(out: Path) -> dict[str, float]:
    """Held-out accuracy over chance, on fine-tune's test split and in predict (the same cells:
    split "test" only); the knock-out scores put the planted marker and lineage genes first
    (the share of them among as many top-scoring genes)."""
    from biolm.core.exampledata import LINEAGES, PBMC_TYPES

    run = out / "experiments/pbmc_pca"
    predicted = rows(run / "predict/test_predictions.csv")
    majority = max(Counter(r["label"] for r in predicted).values()) / len(predicted)
    figures = {"test_accuracy": results(run / "fine-tune/0/test_results.json")["test_accuracy"], "majority": majority}
    figures["predict_accuracy"] = float(np.mean([r["label"] == r["prediction"] for r in predicted]))
    named = {g for _, _, _, own in PBMC_TYPES for g in own} | {g for genes in LINEAGES.values() for g in genes}
    knocked = Counter()
    for r in rows(run / "interpret/loo_scores_remove.csv"):
        knocked[r["token"]] += abs(float(r["loo"]))
    top = [g for g, _ in knocked.most_common(len(named))]
    figures["markers_among_top"] = len(named & set(top)) / len(named)
    return figures


def pca_signals(out: Path) -> dict[str, float]:
    """Held-out accuracy; the masking LOO scores peak at the three bump positions."""
    run = out / "experiments/signals_pca"
    predicted = rows(run / "predict/test_predictions.csv")
    figures = {"test_accuracy": results(run / "fine-tune/0/test_results.json")["test_accuracy"]}
    figures["predict_accuracy"] = float(np.mean([r["label"] == r["prediction"] for r in predicted]))
    score = np.zeros(64)
    for r in rows(run / "interpret/loo_scores_mask.csv"):
        score[int(r["start_offset"])] += abs(float(r["loo"]))
    top = set(np.argsort(-score)[:6].tolist())
    figures["bumps_in_top6"] = sum(bool(top & {p - 1, p, p + 1}) for p in (16, 32, 48)) / 3
    return figures


def geneformer_cells(out: Path) -> dict[str, float]:
    """Held-out accuracy (split 5, never trained on) over the majority class; the deletion scores
    single out the planted marker genes (gene011-gene040)."""
    run = out / "experiments/cells_geneformer"
    test = rows(run / "fine-tune/0/test_predictions.csv")
    assert {r["sequence"] for r in test} == {r["sequence"] for r in rows(run / "predict/test_predictions.csv")}
    figures = {"test_accuracy": results(run / "fine-tune/0/test_results.json")["test_accuracy"]}
    figures["majority"] = max(Counter(r["label"] for r in test).values()) / len(test)
    scores: dict[bool, list[float]] = {True: [], False: []}
    for r in rows(run / "interpret/loo_scores_remove.csv"):
        scores[11 <= int(r["token"][4:]) <= 40].append(abs(float(r["loo"])))
    figures["marker_loo_ratio"] = float(np.mean(scores[True]) / np.mean(scores[False]))
    return figures


def geneformer_pretrained(out: Path) -> dict[str, float]:
    """The bundled V2 checkpoint is read as Geneformer's (dictionaries, 37 weight tensors), its
    embeddings and deletion cosine written; fine-tuned from it, the model beats the majority class
    on the held-out split."""
    run = out / "experiments/cells_geneformer_v2"
    log = next((run / "fine-tune/logs").glob("*.log")).read_text()
    assert "Geneformer V2 dictionaries from exampleconfigs/data/geneformer" in log and "pre-trained weights: loaded 37" in log
    test = rows(run / "fine-tune/0/test_predictions.csv")
    with h5py.File(run / "predict/embeddings.h5") as f:
        assert f["fold_0"].shape == (len(test), 64)
    scored = rows(run / "interpret/loo_scores_remove.csv")
    assert list(scored[0])[-3:] == ["loo", "loo_true_class", "geneformer_cos_sim"] and {r["sequence"] for r in scored} == {r["sequence"] for r in test}
    return {"test_accuracy": results(run / "fine-tune/0/test_results.json")["test_accuracy"], "majority": max(Counter(r["label"] for r in test).values()) / len(test)}


@dataclass(frozen=True)
class Example:
    configs: tuple[str, ...]
    figures: Callable[[Path], dict[str, float]]
    floors: dict[str, float]  # figure -> lowest value accepted ("majority+X": X above the majority class)


# The figures of the config's seed (42) and of --seed 1, 2, 3, in that order (see the module docstring).
MEASURED = {
    "saluki": {"test_spearman": (0.934, 0.880, 0.857, 0.868), "predict_spearman": (0.937, 0.868, 0.883, 0.890), "loo_are_ratio": (13.1, 11.7, 10.7, 12.7), "saturate_are_ratio": (74.8, 71.3, 75.9, 62.7), "variant_sign_agreement": (1.0, 1.0, 1.0, 1.0), "variant_are_over_other": (43.8, 26.8, 82.9, 15.5)},
    "psam": {"motif_similarity": (0.998, 0.997, 0.997, 0.998), "test_pearson": (0.951, 0.950, 0.953, 0.953), "predict_pearson": (0.952, 0.951, 0.951, 0.951), "loo_peak_in_site": (1.0, 1.0, 1.0, 1.0)},
    "lcl-genotypes": {"test_r2": (0.766, 0.788, 0.779, 0.800), "causal_snp_auroc": (1.0, 1.0, 1.0, 1.0)},
    "pca-pbmc": {"test_accuracy": (0.967, 0.967, 0.972, 0.961), "predict_accuracy": (0.967, 0.967, 0.972, 0.961), "markers_among_top": (0.788, 0.788, 0.788, 0.808), "majority": (0.317,) * 4},
    "pca-signals": {"test_accuracy": (1.0, 1.0, 1.0, 1.0), "predict_accuracy": (1.0, 1.0, 1.0, 1.0), "bumps_in_top6": (1.0, 1.0, 1.0, 1.0)},
    "geneformer-cells": {"test_accuracy": (0.869, 0.878, 0.866, 0.881), "majority": (0.472,) * 4, "marker_loo_ratio": (1.50, 1.74, 1.60, 1.70)},
    "geneformer-pretrained": {"test_accuracy": (0.797, 0.791, 0.759, 0.834), "majority": (0.472,) * 4},
}

EXAMPLES = {
    "saluki": Example(
        ("exampleconfigs/saluki/tokenize_fine-tune.yaml", "exampleconfigs/saluki/predict_interpret.yaml", "exampleconfigs/saluki/saturate.yaml", "exampleconfigs/saluki/variants.yaml"),
        saluki_rna,
        {"test_spearman": 0.8, "predict_spearman": 0.8, "loo_are_ratio": 7.0, "saturate_are_ratio": 40.0, "variant_sign_agreement": 1.0, "variant_are_over_other": 8.0},
    ),
    "psam": Example(
        ("exampleconfigs/psam/tokenize_fine-tune.yaml", "exampleconfigs/psam/predict_interpret.yaml"),
        psam_binding,
        {"motif_similarity": 0.98, "test_pearson": 0.93, "predict_pearson": 0.93, "loo_peak_in_site": 0.95},
    ),
    "lcl-genotypes": Example(("exampleconfigs/lcl/genotypes_npz.yaml",), lcl_genotypes, {"test_r2": 0.72, "causal_snp_auroc": 0.95}),
    "pca-pbmc": Example(("exampleconfigs/pca/pbmc_h5ad.yaml",), pca_pbmc, {"test_accuracy": 0.92, "predict_accuracy": 0.92, "markers_among_top": 0.7}),
    "pca-signals": Example(("exampleconfigs/pca/signals_npy.yaml",), pca_signals, {"test_accuracy": 0.95, "predict_accuracy": 0.95, "bumps_in_top6": 1.0}),
    "geneformer-cells": Example(
        ("exampleconfigs/geneformer/tokenize_fine-tune.yaml", "exampleconfigs/geneformer/predict_interpret.yaml"),
        geneformer_cells,
        {"test_accuracy": "majority+0.3", "marker_loo_ratio": 1.3},
    ),
    "geneformer-pretrained": Example(("exampleconfigs/geneformer/pretrained_fine-tune.yaml", "exampleconfigs/geneformer/pretrained_predict_interpret.yaml"), geneformer_pretrained, {"test_accuracy": "majority+0.2"}),
}


def test_every_example_config_is_covered():
    """A new example config joins EXAMPLES (or this fails); every one starts with its commands."""
    configs = {str(p.relative_to(ROOT)) for p in (ROOT / "exampleconfigs").glob("*/*.yaml")}
    assert configs == {c for e in EXAMPLES.values() for c in e.configs}
    for c in configs:
        assert header_commands(ROOT / c), f"{c} does not start with the commands that run it"
    for name, example in EXAMPLES.items():  # every floor lies below all four measured values
        measured = MEASURED[name]
        for key, floor in example.floors.items():
            if isinstance(floor, str):
                margins = [a - b for a, b in zip(measured[key], measured["majority"])]
                assert min(margins) > float(floor.split("+")[1]), (name, key)
            else:
                assert len(measured[key]) == 4 and floor <= min(measured[key]), (name, key)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example(name, tmp_path):
    example = EXAMPLES[name]
    (tmp_path / "exampleconfigs").symlink_to(ROOT / "exampleconfigs")
    started = time.perf_counter()
    run_commands(list(example.configs), tmp_path)
    figures = example.figures(tmp_path)
    print(f"\n{name} (seed {os.environ.get('BIOLM_EXAMPLE_SEED') or 'of the config'}, {time.perf_counter() - started:.0f} s): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    for key, floor in example.floors.items():
        if isinstance(floor, str):  # "majority+X"
            floor = figures["majority"] + float(floor.split("+")[1])
        assert figures[key] >= floor, f"{name}: {key} {figures[key]:.3f} < {floor:.3f}"
