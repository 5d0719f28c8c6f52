"""Recovery (issue 14): ``psam`` fits a binding model from a random start, with no seed motif and
its default settings, through ``fine-tune`` and ``interpret`` as a user runs them.

Data: :mod:`biolm.core.synthetic_binding` (random DNA, planted 10-bp energy matrices on either
strand, label = log summed affinity + noise, noise ceiling ~0.945). For every initial seed (the
config ``seed``: weights, splits; the data set is drawn with it too) the learned PSAM must match
the planted one (similarity >= 0.9), the test predictions must reach 0.9 x the noise ceiling, and
masking the position inside a planted site must lower the prediction most (mask leave-one-out on
held-out sequences whose planted site dominates their affinity). One of the seeds runs through
the command line; the bundled example (exampleconfigs/psam) runs in tests/test_examples.py.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from biolm.core.runner import run
from biolm.core.synthetic_binding import make_binding_data, match_motifs, strong_sites

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
PROBES = 400  # held-out sequences drawn with each data set; up to 20 with a dominant site are probed


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def biolm(*args: str, cwd: Path = ROOT) -> None:
    """``biolm ARGS`` in a subprocess, as a user types it."""
    env = {k: v for k, v in os.environ.items() if k not in ("BIOLM_DEBUG", "BIOLM_LOAD_PLUGINS")}
    p = subprocess.run([sys.executable, "-m", "biolm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]


def recover(tmp_path: Path, seed: int, length: int, n: int, n_motifs: int = 1, task: str = "regression", probe: bool = True, cli: bool = False, **model) -> dict:
    """Fine-tune psam on a fresh synthetic data set (and interpret held-out probes), in this
    process or (``cli``) through the command line; the figures."""
    data = make_binding_data(n=n + PROBES, length=length, n_motifs=n_motifs, seed=seed)
    fit, held_out = data.subset(slice(0, n)), data.subset(slice(n, None))
    path = fit.write(tmp_path / "train.txt")
    if task == "classification":  # above / below the median label
        median = float(np.median(fit.labels))
        path.write_text("".join(f"seq{i:05d}\t{'high' if y > median else 'low'}\t{s}\n" for i, (y, s) in enumerate(zip(fit.labels, fit.sequences))))
    probes = strong_sites(held_out)[:20]
    held_out.subset(np.array(probes, dtype=int)).write(tmp_path / "probe.txt", first=n)
    src = {"filepath": str(path), "columnsep": "\t", "tokensep": False, "idpos": 1, "seqpos": 3}
    cfg = {
        "outputpath": str(tmp_path / "out"),
        "seed": seed,
        "tokenizing and pre-training data source": src,
        "fine-tuning data source": dict(src, labelpos=2, splitratio="70,10,20"),
        "inference data source": dict(src, labelpos=2, filepath=str(tmp_path / "probe.txt")),
        "inference model": {"pretrainedmodel": str(tmp_path / "out/fine-tune")},
        "settings": {"training": {"blocksize": length}},
        "model": {"kernel_size": 10, "n_modes": n_motifs, **model},
        "looscores": {"handletokens": "mask", "plotsequences": 0},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))

    def biolm_psam(mode: str) -> None:
        if cli:
            biolm("psam", mode, "--task", task, "--configfile", str(tmp_path / "c.yaml"))
        else:
            run("psam", mode, task=task, configfile=tmp_path / "c.yaml", quiet=True)

    biolm_psam("fine-tune")
    fold = tmp_path / "out/fine-tune/0"
    weights = torch.load(fold / "pytorch_model.bin", weights_only=True)
    learned = [weights[f"net.modes.{m}.layers.0.layer_spec.monomer"][:, 0, :].numpy() for m in range(n_motifs)]
    rows = _rows(fold / "test_predictions.csv")
    ids = np.array([int(r["sequence"][3:]) for r in rows])
    out = {"similarity": match_motifs(learned, data.energies), "ceiling": float(np.corrcoef(fit.labels[ids], fit.noiseless[ids])[0, 1])}
    if task == "regression":
        out["r"] = float(np.corrcoef([float(r["prediction"]) for r in rows], fit.labels[ids])[0, 1])
    else:
        from sklearn.metrics import roc_auc_score

        out["auc"] = float(roc_auc_score(fit.labels[ids] > median, [float(r["prob_high"]) for r in rows]))
    if probe:
        biolm_psam("interpret")
        out["loo_hits"], out["probes"] = loo_peaks_in_sites(_rows(tmp_path / "out/interpret/loo_scores_mask.csv"), held_out, probes, n)
    print(seed, length, {k: np.round(v, 3) for k, v in out.items()})
    return out


def loo_peaks_in_sites(scores: list[dict], held_out, probes: list[int], first: int, ids: list[str] | None = None) -> tuple[int, int]:
    """How many probed sequences (``ids``, default ``seq<first + j>`` for ``probes[j]``) have
    their largest mask-LOO drop inside a planted site."""
    hits = 0
    for j, i in enumerate(probes):
        mine = [s for s in scores if s["sequence"] == (ids[j] if ids else f"seq{first + j:05d}")]
        peak = int(mine[int(np.argmin([float(s["loo"]) for s in mine]))]["start_offset"])
        hits += any(start <= peak < start + len(held_out.energies[m]) for m, start, _ in held_out.sites[i])
    return hits, len(probes)


def _check(res: dict) -> None:
    assert min(res["similarity"]) >= 0.9
    assert res["r"] >= 0.9 * res["ceiling"]
    assert res["probes"] >= 8 and res["loo_hits"] >= 0.9 * res["probes"]


@pytest.mark.parametrize("seed", range(5))
def test_one_motif_found_from_scratch_100nt(tmp_path, seed):
    _check(recover(tmp_path, seed, 100, 800, cli=seed == 0))  # the first one through the command line


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_one_motif_found_from_scratch_200nt(tmp_path, seed):
    _check(recover(tmp_path, seed, 200, 800))


@pytest.mark.slow
@pytest.mark.parametrize("length", [100, 200])
@pytest.mark.parametrize("seed", range(2))
def test_two_motifs_two_modes(tmp_path, seed, length):
    res = recover(tmp_path, seed, length, 2000, n_motifs=2, probe=False)
    assert min(res["similarity"]) >= 0.85
    assert res["r"] >= 0.9 * res["ceiling"]


def test_classification_head(tmp_path):
    res = recover(tmp_path, 1, 100, 1000, task="classification", probe=False)
    assert min(res["similarity"]) >= 0.9 and res["auc"] >= 0.85


def test_a_killed_fit_resumes_to_the_same_model(tmp_path):
    """Killed in the middle of its PSAM stage, the staged fit resumes where it stopped and ends
    with the same weights as an uninterrupted one."""
    from biolm.core.hookspecs import hookimpl
    from biolm.core.plugins import get_registry

    def fit(folder: Path, **cli):
        data = make_binding_data(n=600, length=100, seed=5)
        data.write(folder / "train.txt")
        src = {"filepath": str(folder / "train.txt"), "columnsep": "\t", "tokensep": False, "idpos": 1, "seqpos": 3}
        cfg = {"outputpath": str(folder / "out"), "seed": 5, "tokenizing and pre-training data source": src, "fine-tuning data source": dict(src, labelpos=2), "settings": {"training": {"blocksize": 100}}, "model": {"kernel_size": 10}}
        (folder / "c.yaml").write_text(yaml.safe_dump(cfg))
        run("psam", "fine-tune", task="regression", configfile=folder / "c.yaml", quiet=True, cli_values=cli)
        return torch.load(folder / "out/fine-tune/0/pytorch_model.bin", weights_only=True)

    class Killer:
        @hookimpl
        def on_epoch_begin(self, state):
            if state.plugin == "psam" and state.stage == "psam-0" and state.epoch == 1:
                raise KeyboardInterrupt

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = fit(tmp_path / "a")
    pm, killer = get_registry().pm, Killer()
    pm.register(killer)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path / "b")
    finally:
        pm.unregister(killer)
    resumed = fit(tmp_path / "b", **{"settings.training.resume": True})
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
