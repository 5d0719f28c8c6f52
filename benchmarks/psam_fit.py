"""psam from scratch, side by side on one synthetic data set: biolm's staged fit (through
``biolm psam fine-tune``), PyProBound's own fit, and a 6-mer ridge regression.

Data (:mod:`biolm.core.synthetic_binding`): 5,000 random 100-nt sequences, one planted 10-bp
motif, label = log summed affinity + noise; rows 1-3,600 train, 3,601-4,000 validate (biolm's
early stopping only), 4,001-5,000 test. Every method trains on the same 3,600 sequences from a
random start (no seed motif), with one torch thread; test Pearson r against the noisy and the
noiseless label, similarity of the learned PSAM to the planted one, energy range sum (sum over
positions of max - min beta; the planted one's in the header), wall time.

Three steps (PyProBound is not a biolm dependency; its step runs in an environment that has it,
e.g. ``python -m venv ppb && ppb/bin/pip install pyprobound==1.5.0 torch==2.13.0 pandas``)::

    python benchmarks/psam_fit.py --data /tmp/psam_bench              # writes the data set
    ppb/bin/python benchmarks/psam_fit.py --pyprobound /tmp/psam_bench  # optional: PyProBound fits
    python benchmarks/psam_fit.py /tmp/psam_bench [--inits 0,1,2]      # biolm + ridge, the table

PyProBound's fit: its PBM recipe (docs "Modifying the Loss Function"): ``CountTable`` with
``exp(label)`` as the one count column -> ``PSAM(kernel_size=10)`` (random start) ->
``Mode.from_psam`` -> ``BoundUnsaturatedRound.from_binding([mode], reference_round=None)`` (its
prediction is log depth + log activity + log-affinity, a head of weight 1) ->
``MultiRoundMSLELoss`` (MSE of the log count) -> ``Optimizer(...).train_sequential()`` (L-BFGS,
its defaults), once with PSAM defaults and once with ``shift_footprint=True,
shift_footprint_heuristic=True`` (its greedy footprint shifts, off by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

N, LENGTH, N_TRAIN, N_VAL, DATA_SEED = 5000, 100, 3600, 400, 7


def write_data(folder: Path) -> None:
    from biolm.core.synthetic_binding import make_binding_data

    d = make_binding_data(n=N, length=LENGTH, n_motifs=1, widths=10, seed=DATA_SEED)
    split = np.where(np.arange(N) < N_TRAIN, 1, np.where(np.arange(N) < N_TRAIN + N_VAL, 2, 3))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "binding.txt").write_text("".join(f"seq{i:05d}\t{y:.6f}\t{s}\t{seq}\n" for i, (y, s, seq) in enumerate(zip(d.labels, split, d.sequences))))
    (folder / "truth.json").write_text(json.dumps({"energies": [e.tolist() for e in d.energies], "noiseless": d.noiseless.tolist()}))
    print(f"wrote {folder / 'binding.txt'} ({N} sequences) and truth.json")


def read_data(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    rows = [line.split("\t") for line in (folder / "binding.txt").read_text().splitlines()]
    return [r[3] for r in rows], np.array([float(r[1]) for r in rows]), np.array([int(r[2]) for r in rows]), json.loads((folder / "truth.json").read_text())


def fit_pyprobound(folder: Path, inits: list[int]) -> None:
    """PyProBound 1.5's own fit from random starts (run with an interpreter that has it)."""
    import pandas as pd
    import pyprobound
    import torch

    torch.set_num_threads(1)
    seqs, labels, split, _ = read_data(folder)
    train = [i for i in range(len(seqs)) if split[i] == 1]
    test = [i for i in range(len(seqs)) if split[i] == 3]
    alphabet = pyprobound.alphabets.DNA()
    table = pyprobound.CountTable(pd.DataFrame({"r": np.exp(labels[train])}, index=[seqs[i] for i in train]), alphabet)
    test_table = pyprobound.CountTable(pd.DataFrame({"r": np.exp(labels[test])}, index=[seqs[i] for i in test]), alphabet)
    out = []
    for shift in (False, True):
        for init in inits:
            torch.manual_seed(init)
            psam = pyprobound.layers.PSAM(kernel_size=10, alphabet=alphabet, shift_footprint=shift, shift_footprint_heuristic=shift)
            mode = pyprobound.Mode.from_psam(psam, table)
            rnd = pyprobound.rounds.BoundUnsaturatedRound.from_binding([mode], reference_round=None)
            loss = pyprobound.MultiRoundMSLELoss([rnd])
            checkpoint, log = folder / f"ppb_{init}_{int(shift)}.pt", folder / f"ppb_{init}_{int(shift)}.log"
            optimizer = pyprobound.Optimizer(loss, [table], device="cpu", checkpoint=str(checkpoint), output=str(log))
            t0 = time.perf_counter()
            optimizer.train_sequential()
            seconds = time.perf_counter() - t0
            optimizer.reload(str(checkpoint))
            with torch.inference_mode():
                rnd.eval()
                pred = rnd(test_table.seqs).double().numpy()
                betas = psam.get_filter(0)[0].T.double().numpy()
            name = "PyProBound 1.5 train_sequential" + (" + shift_footprint" if shift else "")
            out.append({"method": f"{name} (init {init})", "pred": pred.tolist(), "betas": betas.tolist(), "seconds": seconds})
            print(out[-1]["method"], f"{seconds:.1f} s", flush=True)
    (folder / "pyprobound.json").write_text(json.dumps(out))


def fit_biolm(folder: Path, init: int) -> dict:
    """biolm psam fine-tune with its defaults (staged fit, no seed motif) through the runner."""
    import torch
    import yaml

    from biolm.core.hookspecs import hookimpl
    from biolm.core.plugins import get_registry
    from biolm.core.runner import run

    class Clock:
        """Times the training itself (engine events), apart from the rest of fine-tune."""

        @hookimpl
        def on_train_begin(self, state):
            self.start = time.perf_counter()

        @hookimpl
        def on_train_end(self, state):
            self.seconds = time.perf_counter() - self.start

    src = {"filepath": str(folder / "binding.txt"), "columnsep": "\t", "tokensep": False, "idpos": 1, "seqpos": 4}
    cfg = {
        "outputpath": str(folder / f"biolm_{init}"),
        "seed": init,
        "tokenizing and pre-training data source": src,
        "fine-tuning data source": dict(src, labelpos=2, splitpos=3, devsplits=[2], testsplits=[3]),
        "settings": {"training": {"blocksize": LENGTH}, "environment": {"device": "cpu"}},
        "model": {"kernel_size": 10},
    }
    (folder / f"biolm_{init}.yaml").write_text(yaml.safe_dump(cfg))
    clock = Clock()
    get_registry().pm.register(clock)
    try:
        t0 = time.perf_counter()
        r = run("psam", "fine-tune", task="regression", configfile=folder / f"biolm_{init}.yaml", quiet=True)
        seconds = time.perf_counter() - t0
    finally:
        get_registry().pm.unregister(clock)
    fold = r.modedir / "0"
    rows = [line.split(",") for line in (fold / "test_predictions.csv").read_text().splitlines()[1:]]
    weights = torch.load(fold / "pytorch_model.bin", weights_only=True)
    return {"method": f"biolm psam fine-tune (seed {init})", "pred": [float(x[2]) for x in rows], "ids": [int(x[0][3:]) for x in rows], "betas": weights["net.modes.0.layers.0.layer_spec.monomer"][:, 0, :].numpy().tolist(), "seconds": seconds, "fit_seconds": clock.seconds}


def ridge(seqs: list[str], labels: np.ndarray, train: np.ndarray, test: np.ndarray, k: int = 6) -> dict:
    """RidgeCV on canonical k-mer counts (a k-mer and its reverse complement share a column)."""
    from scipy import sparse
    from sklearn.linear_model import RidgeCV

    t0 = time.perf_counter()
    codes = np.array([["ACGT".index(c) for c in s] for s in seqs])
    win = np.lib.stride_tricks.sliding_window_view(codes, k, axis=1)
    powers = 4 ** np.arange(k - 1, -1, -1)
    index = np.minimum((win * powers).sum(-1), ((3 - win[..., ::-1]) * powers).sum(-1))
    counts = sparse.csr_matrix((np.ones(index.size), (np.repeat(np.arange(len(seqs)), index.shape[1]), index.ravel())), shape=(len(seqs), 4**k))
    model = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(counts[train], labels[train])
    return {"method": f"6-mer ridge (RidgeCV, alpha {model.alpha_:g})", "pred": model.predict(counts[test]).tolist(), "betas": None, "seconds": time.perf_counter() - t0}


def table(folder: Path, inits: list[int]) -> None:
    import torch

    from biolm.core.synthetic_binding import motif_similarity

    torch.set_num_threads(1)
    seqs, labels, split, truth = read_data(folder)
    noiseless, energy = np.array(truth["noiseless"]), np.array(truth["energies"][0])
    train, test = np.nonzero(split == 1)[0], np.nonzero(split == 3)[0]
    results = json.loads((folder / "pyprobound.json").read_text()) if (folder / "pyprobound.json").exists() else []
    results += [fit_biolm(folder, init) for init in inits]
    results.append(ridge(seqs, labels, train, test))
    ceiling = np.corrcoef(labels[test], noiseless[test])[0, 1]
    print(f"{N} x {LENGTH} nt, one planted 10-bp motif; train {len(train)} / validation {N_VAL} (biolm only) / test {len(test)}; "
          f"noise ceiling (test) {ceiling:.3f}; planted energy range sum {float((energy.max(1) - energy.min(1)).sum()):.2f}\n")
    print("| method | test r | test r (noiseless) | r / ceiling | motif similarity | energy range sum | wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        pred = np.array(res["pred"])
        order = np.array(res["ids"]) if "ids" in res else test
        r, r0 = np.corrcoef(pred, labels[order])[0, 1], np.corrcoef(pred, noiseless[order])[0, 1]
        if res["betas"] is not None:
            betas = np.array(res["betas"])
            sim, spread = f"{motif_similarity(betas, energy)[0]:.3f}", f"{float((betas.max(1) - betas.min(1)).sum()):.2f}"
        else:
            sim = spread = "-"
        wall = f"{res['seconds']:.1f}" + (f" (fit {res['fit_seconds']:.1f})" if "fit_seconds" in res else "")
        print(f"| {res['method']} | {r:.3f} | {r0:.3f} | {r / ceiling:.3f} | {sim} | {spread} | {wall} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, nargs="?")
    ap.add_argument("--data", type=Path, help="write the data set into this folder")
    ap.add_argument("--pyprobound", type=Path, help="fit PyProBound on the data set in this folder")
    ap.add_argument("--inits", default="0,1,2", help="initial seeds (biolm's seed, PyProBound's torch seed)")
    a = ap.parse_args(argv)
    inits = [int(s) for s in a.inits.split(",")]
    if a.data:
        write_data(a.data)
    elif a.pyprobound:
        fit_pyprobound(a.pyprobound, inits)
    elif a.folder:
        table(a.folder, inits)
    else:
        ap.print_help()
        sys.exit(2)


if __name__ == "__main__":
    main()
