"""The geneformer example configs run as their header comments say (from the repository root, in
a temporary output folder), and give what they promise: a held-out test split that is really held
out, something to learn, Geneformer's embeddings and deletion shift from the bundled V2
checkpoint. Slow (a few minutes on two cores): CI runs them with the other slow tests.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "exampleconfigs" / "geneformer"

pytestmark = pytest.mark.slow


def _commands(config: Path) -> list[list[str]]:
    """The ``biolm ...`` lines of an example config's header comment (without ``biolm``)."""
    lines = [ln.lstrip("#").strip() for ln in config.read_text().splitlines() if ln.startswith("#")]
    return [ln.split()[1:] for ln in lines if re.match(r"biolm geneformer \S+ ", ln)]


def _run(args: list[str], out: Path) -> None:
    """``python -m biolm ARGS --outputpath OUT`` from the repository root, as a user runs it;
    predict/interpret read the model trained into ``OUT``."""
    extra = ["--outputpath", str(out)] + (["--pretrainedmodel", str(out / "fine-tune")] if args[1] in ("predict", "interpret") else [])
    p = subprocess.run([sys.executable, "-m", "biolm", "--quiet", *args, *extra], capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_own_cells_example(tmp_path):
    """tokenize -> pre-train -> fine-tune -> predict -> interpret on the bundled cells: split 5 is
    the test set (never trained on), the model beats the majority class there clearly, and the
    deletion scores single out the planted marker genes (gene011-gene040) more than the rest."""
    commands = _commands(EXAMPLES / "tokenize_fine-tune.yaml") + _commands(EXAMPLES / "predict_interpret.yaml")
    assert [c[1] for c in commands] == ["tokenize", "pre-train", "fine-tune", "predict", "interpret"]
    for c in commands:
        _run(c, tmp_path)
    test = _rows(tmp_path / "fine-tune" / "0" / "test_predictions.csv")
    assert len(test) == 80 and {r["sequence"] for r in test} == {r["sequence"] for r in _rows(tmp_path / "predict" / "test_predictions.csv")}
    labels = Counter(r["label"] for r in test)
    accuracy = json.loads((tmp_path / "fine-tune" / "0" / "test_results.json").read_text())["test_accuracy"]
    print(f"\nown-cells example: test accuracy {accuracy:.3f}, majority {max(labels.values()) / len(test):.3f}")
    assert accuracy >= max(labels.values()) / len(test) + 0.15
    scores: dict[bool, list[float]] = {True: [], False: []}
    for r in _rows(tmp_path / "interpret" / "loo_scores_remove.csv"):
        scores[11 <= int(r["token"][4:]) <= 40].append(abs(float(r["loo"])))
    marker, other = (sum(v) / len(v) for v in (scores[True], scores[False]))
    print(f"mean |loo|: marker genes {marker:.4f}, other genes {other:.4f}")
    assert marker > 1.2 * other


def test_pretrained_example(tmp_path):
    """The exact commands at the top of pretrained_fine-tune.yaml: fine-tune from the bundled tiny
    V2 checkpoint, predict with Geneformer's embeddings, interpret with its deletion shift."""
    commands = _commands(EXAMPLES / "pretrained_fine-tune.yaml")
    assert [c[1] for c in commands] == ["fine-tune", "predict", "interpret"]
    for c in commands:
        _run(c, tmp_path)
    log = next((tmp_path / "fine-tune" / "logs").glob("*.log")).read_text()
    assert "Geneformer V2 dictionaries from exampleconfigs/data/geneformer" in log and "pre-trained weights: loaded 37" in log
    with h5py.File(tmp_path / "predict" / "embeddings.h5") as f:
        assert f["fold_0"].shape == (80, 64)
    rows = _rows(tmp_path / "interpret" / "loo_scores_remove.csv")
    assert list(rows[0])[-3:] == ["loo", "loo_true_class", "geneformer_cos_sim"] and len({r["sequence"] for r in rows}) == 80
