"""Recovery: a model fine-tuned from random weights on a planted motif, then leave-one-out
scores that point at the motif (DESIGN §11)."""

import csv

import numpy as np
import yaml

from biolm.core.runner import run

MOTIF = "tgactca"
LENGTH = 24  # psam finds a motif from a random start in short sequences (see the psam notes)


def test_loo_scores_highlight_the_planted_motif(tmp_path):
    rng = np.random.default_rng(0)
    rows, sites = [], {}
    for i in range(400):
        s = list(rng.choice(list("acgt"), LENGTH))
        has = i % 2 == 0
        if has:
            q = int(rng.integers(0, LENGTH - len(MOTIF)))
            s[q : q + len(MOTIF)] = list(MOTIF)
            sites[f"s{i}"] = q
        rows.append(f"s{i}\t{(2.0 if has else 0.0) + rng.normal(0, 0.1):.4f}\t{','.join(s)}\n")
    data = tmp_path / "d.txt"
    data.write_text("".join(rows))
    probe = tmp_path / "probe.txt"
    probe.write_text("".join(r for r in rows[:60] if r.split("\t")[0] in sites))
    src = {"filepath": str(data), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 3, "labelpos": 2}
    cfg = {
        "outputpath": str(tmp_path / "out"),
        "seed": 1,
        "fine-tuning data source": dict(src, splitratio="80,20"),
        "inference data source": dict(src, filepath=str(probe)),
        "inference model": {"pretrainedmodel": str(tmp_path / "out/fine-tune")},
        "settings": {"training": {"batchsize": 32, "blocksize": 32, "nepochs": 30, "patience": 30, "lr": 0.1}},
        "model": {"kernel_size": 7, "score_reverse": False},  # no seed motif: learned from data
        "looscores": {"handletokens": "mask"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ft = run("psam", "fine-tune", task="regression", configfile=path, quiet=True)
    r = run("psam", "interpret", task="regression", configfile=path, quiet=True)
    with open(r.modedir / "loo_scores_mask.csv") as fh:
        scores = list(csv.DictReader(fh))
    hits, ratios = 0, []
    for sid, q in sites.items():
        rows_s = [s for s in scores if s["sequence"] == sid]
        if not rows_s:
            continue
        loo = np.array([abs(float(s["loo"])) for s in rows_s])
        pos = np.array([int(s["start_offset"]) for s in rows_s])
        inside = (pos >= q) & (pos < q + len(MOTIF))
        hits += int(inside[np.argmax(loo)])
        ratios.append(loo[inside].mean() / max(loo[~inside].mean(), 1e-12))
    print(f"validation pearson {ft.summary['metrics']['pearson']:.3f}; strongest LOO inside the motif {hits}/{len(ratios)}; median |loo| inside/outside {np.median(ratios):.1f}")
    assert ft.summary["metrics"]["pearson"] > 0.7
    assert len(ratios) >= 25
    assert hits >= 0.9 * len(ratios)
    assert np.median(ratios) > 2
