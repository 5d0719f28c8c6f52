"""The geneformer plugin end to end through ``biolm.core.runner.run``: tokenize -> pre-train ->
fine-tune -> predict -> interpret on a small synthetic single-cell data set, with oracles:

- in-silico deletion (LOO ``remove``) equals predicting the cell with the gene's count set to 0,
  and activation equals predicting it with the gene's count made overwhelmingly high;
- the plain-text form (rows of gene tokens in rank order) gives the same predictions as the
  ``.h5ad`` it was written from.

Tiny models (hidden 32, 2 layers, 2 heads, 32 positions) on CPU keep it fast.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from biolm.core.errors import BiolmError, ConfigError, DataError
from biolm.core.exampledata import write_expression_example
from biolm.core.h5ad import H5adReader, write_h5ad
from biolm.core.runner import run

L = 32
HEADER = "sequence,token,replacement,label,pred,start_offset,end_offset,loo"
MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(p):
    with open(p) as fh:
        return list(csv.DictReader(fh))


def write_config(path, data, out, **sections):
    cfg = {
        "outputpath": str(out),
        "seed": 3,
        "tokenizing and pre-training data source": {"filepath": str(data)},
        "fine-tuning data source": {"filepath": str(data), "labelcolumn": "cell_type", "splitcolumn": "split", "devsplits": [4], "testsplits": [5]},
        "inference data source": {"filepath": str(data), "labelcolumn": "cell_type"},
        "tokenization": {"encoding": "generank"},
        "settings": {"environment": {"device": "cpu"}, "training": {"batchsize": 16, "blocksize": L, "nepochs": 3, "patience": 5, "lr": 0.003}},
        "model": dict(MODEL),
    }
    names = {"tokenizing_source": "tokenizing and pre-training data source", "finetuning_source": "fine-tuning data source", "inference_source": "inference data source"}
    for key, value in sections.items():
        cfg[names.get(key, key.replace("_", " "))] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def subset_h5ad(src, dst, cells, edits=None, extra_gene=None, reverse_genes=False):
    """Write ``cells`` (row indices) of ``src`` to ``dst``; ``edits`` adds one edited copy per
    ``(row, gene, new_count, new_id)``. ``extra_gene``: append a gene unknown to the vocabulary."""
    r = H5adReader(src)
    X = r.read_all()
    genes = list(r.var_names)
    obs = {c: r.obs_column(c) for c in ("cell_type", "split", "marker_score")}
    rows, ids = [X[i] for i in cells], [r.obs_names[i] for i in cells]
    index = list(cells)
    for row, gene, value, new_id in edits or []:
        x = X[row].copy()
        x[genes.index(gene)] = value
        rows.append(x)
        ids.append(new_id)
        index.append(row)
    M = np.stack(rows)
    if extra_gene:
        M = np.concatenate([M, np.full((len(M), 1), 7.0, dtype=np.float32)], axis=1)
        genes = genes + [extra_gene]
    if reverse_genes:
        M, genes = M[:, ::-1], genes[::-1]
    write_h5ad(dst, np.ascontiguousarray(M), genes, ids, obs={c: v[index] for c, v in obs.items()}, categorical={"cell_type", "split"})
    return dst


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """tokenize -> pre-train -> fine-tune (classification, from the pre-trained weights)."""
    tmp = tmp_path_factory.mktemp("geneformer")
    data = write_expression_example(tmp / "cells.h5ad", n_cells=300, n_genes=200, n_types=3, seed=0)
    cfg = write_config(tmp / "c.yaml", data, tmp / "out")
    out = {"tmp": tmp, "data": data, "cfg": cfg, "outdir": tmp / "out"}
    out["tokenize"] = run("geneformer", "tokenize", configfile=cfg, quiet=True)
    out["pretrain"] = run("geneformer", "pre-train", configfile=cfg, quiet=True)
    out["finetune"] = run("geneformer", "fine-tune", task="classification", configfile=cfg, quiet=True, cli_values={"settings.training.nepochs": 4})
    return out


@pytest.fixture(scope="module")
def regression(pipe):
    """A regression model (marker_score) fine-tuned from explicitly named pre-trained weights."""
    tmp = pipe["tmp"]
    cli = {
        "outputpath": str(tmp / "reg"),
        "finetuning_source.labelcolumn": "marker_score",
        "settings.training.pretrainedweights": str(pipe["pretrain"].modedir),
        "settings.training.nepochs": 5,
        "settings.training.scaling": "standard",
    }
    r = run("geneformer", "fine-tune", task="regression", configfile=pipe["cfg"], quiet=True, cli_values=cli)
    print("\nregression (marker_score) test metrics:", {k: round(v, 3) for k, v in json.loads((r.modedir / "0/test_results.json").read_text()).items() if k in ("test_pearson", "test_r2")})
    small = subset_h5ad(pipe["data"], tmp / "small.h5ad", [0, 1, 2])
    return {"run": r, "fold": r.modedir / "0", "small": small, "out": tmp / "reg"}


def _infer(mode, model_dir, data, out, cfg, task="regression", **cli):
    values = {"outputpath": str(out), "inference_model.pretrainedmodel": str(model_dir), "inference_source.filepath": str(data)}
    if task == "regression":
        values["inference_source.labelcolumn"] = "marker_score"
    values.update(cli)
    return run("geneformer", mode, task=task, configfile=cfg, quiet=True, cli_values=values)


# ------------------------------------------------------------------------------------ tokenize


def test_tokenizer_vocabulary_and_medians(pipe):
    tj = json.loads((pipe["outdir"] / "tokenizer.json").read_text())
    r = H5adReader(pipe["data"])
    assert tj["kind"] == "generank" and tj["has_medians"] is True
    assert tj["var_names"] == list(r.var_names)
    # scale = the non-zero median of NormalizeTotal(1e4) per gene
    X = r.read_all()
    y = 1e4 * X / (X.sum(1, keepdims=True) + 1e-6)
    for g in (0, 17, 150):
        nz = y[:, g][y[:, g] > 0]
        assert tj["scale_g"][g] == pytest.approx(float(np.median(nz)), rel=1e-5)


def test_samplesize_fits_medians_on_a_seeded_subsample(pipe, tmp_path):
    cli = {"outputpath": str(tmp_path), "tokenization.samplesize": 100}
    run("geneformer", "tokenize", configfile=pipe["cfg"], quiet=True, cli_values=cli)
    a = json.loads((tmp_path / "tokenizer.json").read_text())
    run("geneformer", "tokenize", configfile=pipe["cfg"], quiet=True, cli_values=cli)
    b = json.loads((tmp_path / "tokenizer.json").read_text())
    full = json.loads((pipe["outdir"] / "tokenizer.json").read_text())
    assert a["n_cells_fit"] == 100 and full["n_cells_fit"] == 300
    assert a == b and a["var_names"] == full["var_names"] and a["scale_g"] != full["scale_g"]


def test_store_holds_ranked_gene_indices_plus_one(pipe):
    """Stored ids are gene indices 0..G-1 in rank order, blocksize + 1 of them (the next-ranked
    gene is kept for deletions); orig_lengths = expressed genes."""
    from biolm.core.store import Store
    from geneformer_oracles import GenerankTokenizer

    tok = GenerankTokenizer.load(pipe["outdir"] / "tokenizer.json")
    X = H5adReader(pipe["data"]).read_all()
    expected, _ = tok.core.encode(X[:5], max_len=L + 1)
    with Store(pipe["pretrain"].modedir / "dataset.h5") as st:
        for i in range(5):
            ids, mods = st.get(i)
            assert mods.shape == (L + 1, 0)
            assert np.array_equal(ids, expected[i] - 2)
            assert st.orig_lengths[i] == int((X[i] > 0).sum())


# ------------------------------------------------------------------------------------ pre-train


def test_pretrain_outputs_loss_decreases_and_perplexity(pipe):
    d = pipe["pretrain"].modedir
    for name in ("pytorch_model.bin", "config.json", "tokenizer.json", "trainer_state.json", "train_results.json", "eval_results.json", "learning_curves.png", "dataset.h5"):
        assert (d / name).exists(), name
    assert list(d.glob("checkpoint-*"))
    state = json.loads((d / "trainer_state.json").read_text())
    hist = state["history"]
    assert len(hist) == 3
    print("pre-train val loss per epoch:", [round(h["val_loss"], 4) for h in hist])
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[0]["val_loss"] < math.log(202) + 0.3  # about uniform over the vocabulary at the start
    for h in hist:
        assert h["val_perplexity"] == pytest.approx(math.exp(h["val_loss"]))
    ev = json.loads((d / "eval_results.json").read_text())
    assert ev["eval_perplexity"] == pytest.approx(math.exp(ev["eval_loss"]))
    assert ev["eval_samples"] == 15 and ev["eval_scored_tokens"] > 0  # 5 % of 300
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    assert "bert.embeddings.word_embeddings.weight" in sd and "cls.predictions.transform.dense.weight" in sd
    assert sd["bert.embeddings.word_embeddings.weight"].shape == (202, 32)
    meta = json.loads((d / "config.json").read_text())
    assert meta["task"] == "pre-train" and meta["architecture"]["max_position_embeddings"] == L


def test_pretrain_is_reproducible_and_resumes(pipe, tmp_path):
    """Same seed, same weights; a run resumed after its first epoch ends where an uninterrupted one does."""
    cli = {"outputpath": str(tmp_path / "a"), "settings.training.nepochs": 2}
    run("geneformer", "pre-train", configfile=pipe["cfg"], quiet=True, cli_values=cli)
    run("geneformer", "pre-train", configfile=pipe["cfg"], quiet=True, cli_values={**cli, "outputpath": str(tmp_path / "b"), "settings.training.nepochs": 1})
    run("geneformer", "pre-train", configfile=pipe["cfg"], quiet=True, cli_values={**cli, "outputpath": str(tmp_path / "b"), "settings.training.resume": True})
    wa = torch.load(tmp_path / "a/pre-train/pytorch_model.bin", weights_only=True)
    wb = torch.load(tmp_path / "b/pre-train/pytorch_model.bin", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ha = json.loads((tmp_path / "a/pre-train/trainer_state.json").read_text())["history"]
    hb = json.loads((tmp_path / "b/pre-train/trainer_state.json").read_text())["history"]
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]


# ------------------------------------------------------------------------------------ fine-tune


def test_finetune_starts_from_pretrained_weights(pipe):
    log = pipe["finetune"].logfile.read_text()
    assert "starting from pre-trained weights" in log
    assert "pre-trained weights: loaded 37" in log  # embeddings (4) + 2 layers x 16 + ... all of bert.*
    sd = torch.load(pipe["finetune"].modedir / "0/pytorch_model.bin", weights_only=True)
    assert set(k.split(".")[0] for k in sd) == {"bert", "head"}


def test_finetune_with_zero_lr_keeps_the_pretrained_encoder(pipe, tmp_path):
    cli = {"outputpath": str(tmp_path), "settings.training.pretrainedweights": str(pipe["pretrain"].modedir), "settings.training.nepochs": 1, "settings.training.lr": 0.0}
    r = run("geneformer", "fine-tune", task="classification", configfile=pipe["cfg"], quiet=True, cli_values=cli)
    pre = torch.load(pipe["pretrain"].modedir / "pytorch_model.bin", weights_only=True)
    fine = torch.load(r.modedir / "0/pytorch_model.bin", weights_only=True)
    enc = [k for k in fine if k.startswith("bert.")]
    assert len(enc) == 37
    assert all(torch.equal(fine[k], pre[k]) for k in enc)
    # and --fromscratch ignores them
    r2 = run("geneformer", "fine-tune", task="classification", configfile=pipe["cfg"], quiet=True, cli_values={**cli, "outputpath": str(tmp_path / "s"), "settings.training.fromscratch": True})
    scratch = torch.load(r2.modedir / "0/pytorch_model.bin", weights_only=True)
    assert not torch.equal(scratch["bert.embeddings.word_embeddings.weight"], pre["bert.embeddings.word_embeddings.weight"])


def test_fine_tune_reads_only_its_own_keys_from_a_combined_yaml(pipe, tmp_path):
    """One YAML for every mode: predict's ``inference model: pretrainedmodel`` (here a CV parent
    of fine-tuned models) is not fine-tune's starting point; its own key is pretrainedweights."""
    from conftest import cli

    combined = yaml.safe_load(pipe["cfg"].read_text())
    combined["inference model"] = {"pretrainedmodel": str(pipe["finetune"].modedir)}
    combined["outputpath"] = str(tmp_path / "out")
    cfg = tmp_path / "combined.yaml"
    cfg.write_text(yaml.safe_dump(combined))
    r = cli("--quiet", "geneformer", "fine-tune", "--task", "classification", "-c", cfg, "--nepochs", "1")
    assert r.code == 0, r.err
    assert "pre-trained weights" not in next((tmp_path / "out/fine-tune/logs").glob("*.log")).read_text()
    r = cli("--quiet", "geneformer", "fine-tune", "--task", "classification", "-c", cfg, "--nepochs", "1", "--pretrainedweights", pipe["finetune"].modedir / "0")
    r.one_error("settings.training.pretrainedweights", "holds a classification model, not pre-trained weights")


def test_cell_types_are_classified_well_above_baselines(pipe):
    fold = pipe["finetune"].modedir / "0"
    res = json.loads((fold / "test_results.json").read_text())
    preds = _rows(fold / "test_predictions.csv")
    r = H5adReader(pipe["data"])
    split, ct = r.obs_column("split"), r.obs_column("cell_type")
    train_major = Counter(ct[np.isin(split, ["1", "2", "3"])]).most_common(1)[0][0]
    test_labels = [p["label"] for p in preds]
    majority = max(np.mean([lab == train_major for lab in test_labels]), Counter(test_labels).most_common(1)[0][1] / len(test_labels))
    chance = 1.0 / len(set(ct))
    acc = res["test_accuracy"]
    print(f"\ngeneformer cell-type accuracy on the test split ({len(preds)} cells): model {acc:.3f}, majority baseline {majority:.3f}, chance {chance:.3f}; balanced accuracy {res['test_balanced_accuracy']:.3f}")
    assert len(preds) == 60
    assert acc >= majority + 0.2 and acc >= chance + 0.3
    assert res["test_balanced_accuracy"] >= 0.7


# ------------------------------------------------------------------------------------ predict


def test_predict_writes_embeddings(pipe):
    r = _infer("predict", pipe["finetune"].modedir, pipe["data"], pipe["outdir"], pipe["cfg"], task="classification", **{"inference_model.saveembeddings": True, "inference_source.splitcolumn": "split", "inference_source.inferenceonsplits": "[5]"})
    preds = _rows(r.modedir / "test_predictions.csv")
    assert len(preds) == 60 and list(preds[0])[:3] == ["sequence", "label", "prediction"]
    assert r.summary["lines"][0].endswith("test_predictions.csv (60 cells)")  # cells are not called sequences
    import h5py

    with h5py.File(r.modedir / "embeddings.h5") as f:
        assert f["fold_0"].shape == (60, 32)
        assert [s.decode() for s in f["ids"][:3]] == [p["sequence"] for p in preds[:3]]
        assert np.isfinite(f["fold_0"][:]).all()
    # the same cells through fine-tune's test split: same predictions
    ft = {p["sequence"]: p for p in _rows(pipe["finetune"].modedir / "0/test_predictions.csv")}
    for p in preds:
        assert p["prediction"] == ft[p["sequence"]]["prediction"]


def test_unknown_and_reordered_genes_are_matched_by_name(pipe, regression, tmp_path):
    """Input genes in another order plus one gene the vocabulary does not know: same predictions
    (the unknown gene only adds to the library size, which scales every gene alike)."""
    odd = subset_h5ad(pipe["data"], tmp_path / "odd.h5ad", [0, 1, 2], extra_gene="NOT_A_GENE", reverse_genes=True)
    base = _infer("predict", regression["fold"], regression["small"], tmp_path / "b", pipe["cfg"])
    other = _infer("predict", regression["fold"], odd, tmp_path / "o", pipe["cfg"])
    pb = [float(p["prediction"]) for p in _rows(base.modedir / "test_predictions.csv")]
    po = [float(p["prediction"]) for p in _rows(other.modedir / "test_predictions.csv")]
    assert po == pytest.approx(pb, rel=1e-5, abs=1e-6)
    log = other.logfile.read_text()
    assert "1 input gene(s) not in the vocabulary (ignored), e.g. NOT_A_GENE" in log


# ------------------------------------------------------------------------------------ interpret


@pytest.fixture(scope="module")
def loo(pipe, regression):
    out = {}
    for how in ("remove", "mask", "activate"):
        r = _infer("interpret", regression["fold"], regression["small"], regression["out"], pipe["cfg"], **{"looscores.handletokens": how, "inference_model.outputdir": f"interpret_{how}"})
        path = r.modedir / f"loo_scores_{how}.csv"
        with open(path) as fh:
            header = fh.readline().strip()
        out[how] = (header, _rows(path), r)
    return out


@pytest.mark.parametrize("how", ["remove", "mask", "activate"])
def test_interpret_rows_are_genes_the_model_reads(pipe, regression, loo, how):
    from geneformer_oracles import GenerankTokenizer

    header, rows, r = loo[how]
    assert header == HEADER
    assert r.summary["metrics"]["cells"] == 3 and "sequences" not in r.summary["metrics"]
    assert len(rows) == 3 * L  # each cell expresses more than L genes: only the L the model reads
    tok = GenerankTokenizer.load(pipe["outdir"] / "tokenizer.json")
    X = H5adReader(regression["small"]).read_all()
    ids, _ = tok.core.encode(X, max_len=L)
    cells = [f"cell{i:04d}" for i in (1, 2, 3)]
    for c, cell in enumerate(cells):
        mine = [r for r in rows if r["sequence"] == cell]
        assert [int(r["start_offset"]) for r in mine] == list(range(L))
        assert [r["token"] for r in mine] == list(tok.core.decode(ids[c]))  # gene names in rank order
        assert all(int(r["end_offset"]) == int(r["start_offset"]) + 1 for r in mine)
    values = np.array([float(r["loo"]) for r in rows])
    assert np.isfinite(values).all() and np.abs(values).max() > 1e-4
    if how == "activate":  # the top gene is already at rank 1
        assert all(abs(float(r["loo"])) < 1e-6 for r in rows if r["start_offset"] == "0")


def test_deletion_and_activation_equal_predictions_of_edited_counts(pipe, regression, loo, tmp_path):
    """LOO(remove gene g of cell c) = predict(c with g's count 0) - predict(c); LOO(activate) =
    predict(c with g's count overwhelming) - predict(c). Positions include the last one the
    model reads, where deletion lets the next-ranked gene in."""
    r = H5adReader(regression["small"])
    names = list(r.obs_names)
    edits, expect_keys = [], []
    for how, value in (("remove", 0.0), ("activate", 1e9)):
        rows = loo[how][1]
        for c in (0, 2):
            for p in (0, 5, L - 1):
                row = next(x for x in rows if x["sequence"] == names[c] and int(x["start_offset"]) == p)
                new_id = f"{names[c]}__{how}__{p}"
                edits.append((c, row["token"], value, new_id))
                expect_keys.append((new_id, names[c], float(row["loo"])))
    edited = subset_h5ad(regression["small"], tmp_path / "edited.h5ad", [], edits=edits)
    pe = _infer("predict", regression["fold"], edited, tmp_path / "e", pipe["cfg"])
    pb = _infer("predict", regression["fold"], regression["small"], tmp_path / "b", pipe["cfg"])
    pred_e = {p["sequence"]: float(p["prediction"]) for p in _rows(pe.modedir / "test_predictions.csv")}
    pred_b = {p["sequence"]: float(p["prediction"]) for p in _rows(pb.modedir / "test_predictions.csv")}
    diffs = []
    for new_id, cell, got in expect_keys:
        want = pred_e[new_id] - pred_b[cell]
        diffs.append(abs(got - want))
    scale = max(1.0, max(abs(v) for v in pred_b.values()))
    assert max(diffs) < 1e-4 * scale, diffs
    assert any(abs(k[2]) > 1e-4 for k in expect_keys)


# ------------------------------------------------------------------------------------ plain text


def _ranked_text(pipe, path, cells, extra_token=None):
    from geneformer_oracles import GenerankTokenizer

    tok = GenerankTokenizer.load(pipe["outdir"] / "tokenizer.json")
    r = H5adReader(pipe["data"])
    X = r.read_all()[cells]
    ids, mask = tok.core.encode(X, max_len=200)
    ct, split = r.obs_column("cell_type")[cells], r.obs_column("split")[cells]
    lines = []
    for k, i in enumerate(cells):
        genes = list(tok.core.decode(ids[k][mask[k]]))
        if extra_token:
            genes.insert(3, extra_token)
        lines.append(f"{r.obs_names[i]}\t{ct[k]}\t{split[k]}\t{','.join(genes)}\n")
    path.write_text("".join(lines))
    return path


def test_plain_text_rank_ordered_form(pipe, tmp_path):
    txt = _ranked_text(pipe, tmp_path / "ranked.txt", list(range(0, 300, 5)))
    # (1) the h5ad-trained model reads the same cells as rank-ordered text: same predictions
    src = {"filepath": str(txt), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 4, "labelpos": 2}
    cfg = write_config(tmp_path / "t.yaml", txt, tmp_path / "out", inference_source=src)
    pt = _infer("predict", pipe["finetune"].modedir, txt, tmp_path / "p", cfg, task="classification")
    ph = _infer("predict", pipe["finetune"].modedir, pipe["data"], tmp_path / "h", pipe["cfg"], task="classification")
    by_h = {p["sequence"]: p for p in _rows(ph.modedir / "test_predictions.csv")}
    text_rows = _rows(pt.modedir / "test_predictions.csv")
    assert len(text_rows) == 60
    for p in text_rows:
        q = by_h[p["sequence"]]
        assert p["prediction"] == q["prediction"] and p["label"] == q["label"]
        probs = [k for k in p if k.startswith("prob_")]
        assert [float(p[k]) for k in probs] == pytest.approx([float(q[k]) for k in probs], abs=1e-5)
    # (2) tokenize -> fine-tune -> interpret on text alone; an unknown token is reported and skipped
    txt2 = _ranked_text(pipe, tmp_path / "ranked2.txt", list(range(0, 300, 3)), extra_token="UNSEEN")
    tsrc = {"filepath": str(txt), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 4}
    fsrc = dict(tsrc, filepath=str(txt2), labelpos=2, splitratio="80,20")
    cfg2 = write_config(tmp_path / "t2.yaml", txt, tmp_path / "text", tokenizing_source=tsrc, inference_source=dict(src, filepath=str(txt2)), finetuning_source=fsrc)
    run("geneformer", "tokenize", configfile=cfg2, quiet=True)
    tj = json.loads((tmp_path / "text/tokenizer.json").read_text())
    assert tj["has_medians"] is False and tj["var_names"] == sorted(tj["var_names"])
    assert "UNSEEN" not in tj["var_names"]
    ft = run("geneformer", "fine-tune", task="classification", configfile=cfg2, quiet=True, cli_values={"settings.training.nepochs": 1})
    assert "'UNSEEN' x100" in ft.logfile.read_text()
    ip = run("geneformer", "interpret", task="classification", configfile=cfg2, quiet=True, cli_values={"inference_model.pretrainedmodel": str(ft.modedir / "0"), "looscores.handletokens": "mask", "inference_source.filepath": str(txt)})
    rows = _rows(ip.modedir / "loo_scores_mask.csv")
    first = txt.read_text().splitlines()[0].split("\t")
    assert [r["token"] for r in rows if r["sequence"] == first[0]] == first[3].split(",")[:L]
    # (3) a tokenizer without medians cannot rank counts
    with pytest.raises(ConfigError, match="no per-gene medians"):
        run("geneformer", "predict", task="classification", configfile=cfg2, quiet=True, cli_values={"inference_model.pretrainedmodel": str(ft.modedir / "0"), "inference_source.filepath": str(pipe["data"]), "inference_model.outputdir": "p_h5ad"})


# ------------------------------------------------------------------------------------ errors


def test_positions_follow_blocksize(pipe, tmp_path):
    """One owner of the input length: the model's position count is the blocksize the core
    gives it (recorded in the model's config.json); the plugin has no key of its own for it."""
    cli = {"outputpath": str(tmp_path), "settings.training.blocksize": 16, "settings.training.nepochs": 1}
    r = run("geneformer", "pre-train", configfile=pipe["cfg"], quiet=True, cli_values=cli)
    meta = json.loads((r.modedir / "config.json").read_text())
    assert meta["blocksize"] == 16 and meta["architecture"]["max_position_embeddings"] == 16
    old = write_config(tmp_path / "old.yaml", pipe["data"], tmp_path / "o", model=dict(MODEL, max_position_embeddings=16))
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        run("geneformer", "pre-train", configfile=old, quiet=True)


def test_h5ad_label_errors(pipe, tmp_path):
    cli = {"outputpath": str(tmp_path), "settings.training.nepochs": 1}
    with pytest.raises(ConfigError, match="labelcolumn"):
        run("geneformer", "fine-tune", task="classification", configfile=pipe["cfg"], quiet=True, cli_values={**cli, "finetuning_source.labelcolumn": None})
    with pytest.raises(DataError, match="no column 'celltype'.*cell_type"):
        run("geneformer", "fine-tune", task="classification", configfile=pipe["cfg"], quiet=True, cli_values={**cli, "finetuning_source.labelcolumn": "celltype"})


def test_bad_files_are_one_line_errors(pipe, tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_text("this is not HDF5\n")
    cfg = write_config(tmp_path / "c.yaml", bad, tmp_path / "out")
    with pytest.raises(BiolmError, match="broken.h5ad"):
        run("geneformer", "tokenize", configfile=cfg, quiet=True)
    p = subprocess.run([sys.executable, "-m", "biolm", "--quiet", "geneformer", "tokenize", "--configfile", str(cfg)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "broken.h5ad" in lines[0] and "Traceback" not in p.stderr
    missing = write_config(tmp_path / "m.yaml", tmp_path / "nope.h5ad", tmp_path / "out2")
    with pytest.raises(DataError, match="no such file"):
        run("geneformer", "tokenize", configfile=missing, quiet=True)


def test_pretrain_runs_distributed_on_two_processes(pipe, tmp_path):
    """The engine's DDP path (torch launcher, gloo on CPU) for masked-LM pre-training."""
    import subprocess
    import sys

    cfg = write_config(tmp_path / "c.yaml", pipe["data"], tmp_path / "out")
    data = yaml.safe_load(cfg.read_text())
    data["settings"]["environment"]["ngpus"] = 2
    data["settings"]["training"]["nepochs"] = 2
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    p = subprocess.run([sys.executable, "-m", "biolm", "geneformer", "pre-train", "--configfile", str(cfg)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "out/pre-train"
    state = json.loads((out / "trainer_state.json").read_text())
    assert len(state["history"]) == 2 and all(np.isfinite(h["val_loss"]) for h in state["history"])
    assert (out / "pytorch_model.bin").exists()
    assert any("rank1" in f.name for f in (out / "logs").iterdir())
