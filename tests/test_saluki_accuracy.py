"""Planted-signal recovery: Saluki fine-tuned through the CLI path beats a k-mer ridge baseline.

The example generator plants AU-rich elements that shorten the half-life only in the 3' UTR
(copies elsewhere are decoys), a CDS-length effect and an in-frame codon (GC3) effect. A bag of
k-mers sees a diluted signal. Settings: block 1,024, 2,000 transcripts of 200-900 nt, up to 24
epochs on CPU (measured: Saluki 0.90 vs ridge 0.58 test Spearman).
"""

import csv
import itertools
import json

import numpy as np
import pytest

from biolm.core.exampledata import write_dataset
from biolm.core.runner import run
from biolm.core.splits import make_folds

from conftest import write_config

K = (1, 2, 3, 4, 5)


def kmer_features(seqs: list[str]) -> np.ndarray:
    index = {}
    for k in K:
        for km in itertools.product("acgt", repeat=k):
            index["".join(km)] = len(index)
    X = np.zeros((len(seqs), len(index) + 1))
    for i, s in enumerate(seqs):
        for k in K:
            for j in range(len(s) - k + 1):
                c = index.get(s[j : j + k])
                if c is not None:
                    X[i, c] += 1
        X[i, -1] = np.log(len(s))
    return X


def ridge_spearman(X: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray, te: np.ndarray) -> float:
    from scipy.stats import spearmanr

    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-9
    Z = (X - mu) / sd
    best, best_alpha = -np.inf, None
    for alpha in (0.1, 1, 10, 100, 1000, 10000):
        A = Z[tr].T @ Z[tr] + alpha * np.eye(Z.shape[1])
        w = np.linalg.solve(A, Z[tr].T @ (y[tr] - y[tr].mean()))
        r = spearmanr(Z[va] @ w, y[va]).statistic
        if r > best:
            best, best_alpha, best_w = r, alpha, w
    return float(spearmanr(Z[te] @ best_w, y[te]).statistic)


@pytest.mark.slow
def test_saluki_beats_kmer_ridge_on_planted_signal(tmp_path):
    data = write_dataset(tmp_path / "rna.txt", 2000, seed=11, min_len=200, max_len=900)
    rows = [line.split("\t") for line in data.read_text().splitlines()]
    seqs = ["".join(t[0] for t in r[5].split(",")).lower() for r in rows]
    y = np.log(np.array([float(r[2]) for r in rows]))
    (fold,) = make_folds(len(rows), splitratio=(80, 10, 10), seed=5)
    baseline = ridge_spearman(kmer_features(seqs), y, fold.train, fold.val, fold.test)
    cfg = write_config(
        tmp_path / "c.yaml", data, tmp_path / "out",
        fine_tuning_data_source={"splitratio": "80,10,10"},
        settings={"training": {"batchsize": 32, "blocksize": 1024, "nepochs": 24, "patience": 8, "lr": 0.001, "scaling": "log"}},
        model={"dropout": 0.1, "l2_scale": 1e-4},
        seed=5,
    )
    r = run("saluki", "fine-tune", task="regression", configfile=cfg, quiet=True)
    res = json.loads((r.modedir / "0/test_results.json").read_text())
    saluki = res["test_spearman"]
    print(f"test spearman: saluki {saluki:.3f}, k-mer ridge {baseline:.3f}")
    with open(r.modedir / "0/test_predictions.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(fold.test)
    assert saluki > baseline + 0.1
