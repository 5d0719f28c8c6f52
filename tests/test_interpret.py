"""Leave-one-out scores checked against an oracle: separate predict runs on edited text."""

import csv
import pickle

import numpy as np
import pytest

from biolm.core.runner import run

from conftest import write_config

REPL = {"a": ["c", "g"], "c": ["a"], "g": ["t", "g"], "t": ["a"], "A": ["C"], "gej": ["aej"]}


def _rows(p):
    with open(p) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rna_file):
    tmp = tmp_path_factory.mktemp("interp")
    cfg = write_config(tmp / "c.yaml", rna_file, tmp / "out", inference_model={"pretrainedmodel": str(tmp / "out/fine-tune/0")}, settings={"training": {"batchsize": 16, "blocksize": 128, "nepochs": 2}})
    run("lcl", "fine-tune", task="regression", configfile=cfg, quiet=True)
    run("lcl", "fine-tune", task="classification", configfile=cfg, quiet=True, cli_values={"outputpath": str(tmp / "cls"), "finetuning_source.labelpos": 4})
    return tmp, cfg


def _small_file(tmp, rna_file, n=3, maxlen=40):
    rows = []
    for line in rna_file.read_text().splitlines()[:n]:
        c = line.split("\t")
        toks = c[5].split(",")[:maxlen]
        c[5] = ",".join(toks)
        rows.append(c)
    p = tmp / "small.txt"
    p.write_text("".join("\t".join(c) + "\n" for c in rows))
    return p, rows


def _edited_file(tmp, rows, how):
    """Every single-token edit of every sequence, as text, with its expected (id, position, repl)."""
    out, keys = [], []
    for c in rows:
        toks = c[5].split(",")
        for p, t in enumerate(toks):
            if how == "remove":
                edits = [("", toks[:p] + toks[p + 1 :])]
            elif how == "mask":
                edits = [("", toks[:p] + ["n"] + toks[p + 1 :])]  # an unknown token encodes as all-zero
            else:
                edits = [(r, toks[:p] + [r] + toks[p + 1 :]) for r in REPL.get(t, []) if r != t]
            for r, new in edits:
                rid = f"{c[0]}__{p}__{r}"
                out.append("\t".join([rid] + c[1:5] + [",".join(new)]) + "\n")
                keys.append((c[0], p, r))
    path = tmp / f"edited_{how}.txt"
    path.write_text("".join(out))
    return path, keys


@pytest.mark.parametrize("how", ["remove", "mask", "replace"])
def test_loo_equals_difference_of_predict_runs(trained, rna_file, how):
    tmp, cfg = trained
    small, rows = _small_file(tmp, rna_file)
    out = tmp / f"o_{how}"
    common = {"outputpath": str(out), "inference_source.filepath": str(small), "looscores.handletokens": how, "looscores.replacementdict": str(REPL).replace("'", '"')}
    r = run("lcl", "interpret", task="regression", configfile=cfg, cli_values=common, quiet=True)
    scores = _rows(r.modedir / f"loo_scores_{how}.csv")
    with open(r.modedir / f"loo_scores_{how}.csv") as fh:
        assert fh.readline().strip() == "sequence,token,replacement,label,pred,start_offset,end_offset,loo"
    base = {p["sequence"]: float(p["prediction"]) for p in _rows(run("lcl", "predict", task="regression", configfile=cfg, cli_values={**common, "inference_model.outputdir": "base"}, quiet=True).modedir / "test_predictions.csv")}
    edited, keys = _edited_file(tmp, rows, how)
    pe = run("lcl", "predict", task="regression", configfile=cfg, cli_values={**common, "inference_source.filepath": str(edited), "inference_model.outputdir": "edited"}, quiet=True)
    pred_edit = [float(p["prediction"]) for p in _rows(pe.modedir / "test_predictions.csv")]
    expect = {k: pe_v - base[k[0]] for k, pe_v in zip(keys, pred_edit)}
    got = {(s["sequence"], int(s["start_offset"]), s["replacement"]): float(s["loo"]) for s in scores}
    assert set(got) == set(expect)
    diffs = [abs(got[k] - expect[k]) for k in expect]
    assert max(diffs) < 1e-4 * max(1.0, max(abs(v) for v in expect.values()))
    assert any(abs(v) > 1e-6 for v in got.values())  # the model does react to edits
    for s in scores:
        assert int(s["end_offset"]) == int(s["start_offset"]) + 1


def test_pickles_are_shap_explanations_that_plot(trained, rna_file, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import shap

    tmp, cfg = trained
    small, rows = _small_file(tmp, rna_file)
    r = run("lcl", "interpret", task="regression", configfile=cfg, cli_values={"outputpath": str(tmp_path), "inference_source.filepath": str(small), "looscores.handletokens": "mask"}, quiet=True)
    with open(r.modedir / "loo_scores_mask.pkl", "rb") as fh:
        expl = pickle.load(fh)
    assert len(expl) == 3 and all(isinstance(e, shap.Explanation) for e in expl)
    assert expl[0].values.shape == (len(rows[0][5].split(",")),)
    shap.plots.bar(expl[0], show=False)
    shap.plots.waterfall(expl[0], show=False)
    assert list(r.modedir.glob("loo_mask_*.png"))


def test_classification_scores_and_true_class_column(trained, rna_file, tmp_path):
    tmp, cfg = trained
    small, _ = _small_file(tmp, rna_file, n=2, maxlen=20)
    r = run("lcl", "interpret", task="classification", configfile=cfg, cli_values={"outputpath": str(tmp / "cls"), "inference_model.pretrainedmodel": str(tmp / "cls/fine-tune"), "inference_source.filepath": str(small), "inference_source.labelpos": 4, "looscores.handletokens": "mask", "inference_model.outputdir": "interp_cls"}, quiet=True)
    rows = _rows(r.modedir / "loo_scores_mask.csv")
    assert list(rows[0])[-2:] == ["loo", "loo_true_class"]
    assert len(rows) == 40
    for row in rows:
        if row["pred"] == row["label"]:
            assert float(row["loo"]) == pytest.approx(float(row["loo_true_class"]))


def test_replace_needs_a_dict(trained, rna_file):
    from biolm.core.errors import ConfigError

    tmp, cfg = trained
    with pytest.raises(ConfigError, match="replacementdict"):
        run("lcl", "interpret", task="regression", configfile=cfg, cli_values={"looscores.handletokens": "replace"}, quiet=True)


def test_perturb_tensor_semantics():
    import torch

    from biolm.core.perturb import MASK_ID, perturb

    ids = torch.tensor([0, 1, 2, 3, -1])
    mods = torch.arange(5.0).reshape(5, 1)
    r_ids, r_mods, r_len = perturb(ids, mods, 4, np.array([1, 3]), "remove")
    assert r_ids.tolist() == [[0, 2, 3, -1, -1], [0, 1, 2, -1, -1]] and r_len.tolist() == [3, 3]
    assert r_mods[0, :, 0].tolist() == [0, 2, 3, 0, 0]
    m_ids, m_mods, _ = perturb(ids, mods, 4, np.array([2]), "mask")
    assert m_ids.tolist() == [[0, 1, MASK_ID, 3, -1]] and m_mods[0, 2, 0] == 0
    a_ids, _, _ = perturb(ids, mods, 4, np.array([2]), "activate")
    assert a_ids.tolist() == [[2, 0, 1, 3, -1]]
    p_ids, p_mods, _ = perturb(ids, mods, 4, np.array([0, 0]), "replace", np.array([3, 0]), np.array([False, True]))
    assert p_ids[:, 0].tolist() == [3, 0] and p_mods[0, 0, 0] == 0 and p_mods[1, 0, 0] == 0 and p_mods[0, 1, 0] == 1


def test_replacementdict_warning_names_only_tokens_outside_the_vocabulary():
    from biolm.core.perturb import unknown_replacements

    vocab = ["A", "Aej", "C", "a", "c", "g", "t"]
    assert unknown_replacements({"A": ["C", "Aej"], "a": ["c", "g", "t"]}, vocab) == []
    assert unknown_replacements({"A": ["C", "N"], "x": ["a"]}, vocab) == ["N", "x"]
