"""pca on single-cell expression (.h5ad): the shared cells reader, preprocessing fitted on the
training split, genes matched by id, knockout LOO, embeddings, and scikit-learn's PCA +
LogisticRegression as the yardstick."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from biolm.core.cells import match_genes, open_cells
from biolm.core.errors import BiolmError, ConfigError, DataError
from biolm.core.h5ad import H5adReader, write_h5ad
from biolm.core.runner import run

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / "exampleconfigs/data/pbmc_like.h5ad"
CELLS = REPO / "tests/data/cells_400.h5ad"  # the 400-cell version of the geneformer example data


def write_cfg(path: Path, data: Path, out: Path, model: dict | None = None, **sections) -> Path:
    cfg = {
        "outputpath": str(out),
        "seed": 3,
        "tokenizing and pre-training data source": {"filepath": str(data)},
        "fine-tuning data source": {"filepath": str(data), "labelcolumn": "cell_type", "splitcolumn": "split", "devsplits": ["4"], "testsplits": ["5"]},
        "inference data source": {"filepath": str(data), "labelcolumn": "cell_type"},
        "inference model": {"pretrainedmodel": str(out / "fine-tune/0")},
        "settings": {"training": {"batchsize": 64}},
        "model": {"n_components": 6, **(model or {})},
    }
    for k, v in sections.items():
        key = {"fine_tuning_data_source": "fine-tuning data source"}.get(k, k.replace("_", " "))
        cfg[key] = {**cfg.get(key, {}), **v} if isinstance(v, dict) else v
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def pca(mode: str, cfg: Path, task: str | None = "classification", **cli):
    return run("pca", mode, task=None if mode == "tokenize" else task, configfile=cfg, cli_values=cli, quiet=True)


def _predictions(folder: Path) -> dict:
    with open(folder / "test_predictions.csv") as fh:
        return {r["sequence"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """pca fine-tuned on cells.h5ad (400 cells x 200 genes, 3 types; split 4 = validation, 5 = test)."""
    d = tmp_path_factory.mktemp("expr")
    cfg = write_cfg(d / "c.yaml", CELLS, d / "out", model={"n_top_genes": 60, "zscore": True})
    pca("tokenize", cfg)
    r = pca("fine-tune", cfg)
    return d, cfg, r


# ------------------------------------------------------------------------------------ reader


def test_open_cells_reads_labels_splits_weights_and_genes(tmp_path):
    class Src:
        filepath = str(CELLS)
        labelcolumn, splitcolumn, weightcolumn, layer, genecolumn = "cell_type", "split", "marker_score", None, None

    cells = open_cells(Src(), "str")
    reader = H5adReader(CELLS)
    assert cells.genes.tolist() == reader.var_names.tolist() and cells.n_cells == 400
    dense = [c for c in cells.chunks(128)]
    sparse = [c for c in cells.chunks(128, sparse=True)]
    assert [len(c) for c in dense] == [128, 128, 128, 16]
    for a, b in zip(dense, sparse):
        indptr, cols, vals = b.csr
        rebuilt = np.zeros_like(a.x)
        rebuilt[np.repeat(np.arange(len(b)), np.diff(indptr)), cols] = vals
        assert np.array_equal(rebuilt, a.x) and a.labels == b.labels
    assert dense[0].labels[0] == str(reader.obs_column("cell_type")[0])
    assert set(cells.splits) == {"1", "2", "3", "4", "5"}
    assert float(cells.weights[0]) == pytest.approx(reader.obs_column("marker_score")[0])
    Src.labelcolumn = None
    with pytest.raises(ConfigError, match="labelcolumn"):
        open_cells(Src(), "str")


def test_gene_column_and_bad_counts(tmp_path):
    class Src:
        filepath, genecolumn = str(PBMC), "gene_ids"
        labelcolumn = splitcolumn = weightcolumn = layer = None

    cells = open_cells(Src(), "none", unique_genes=True)
    assert cells.genes[0].startswith("ENSG") and len(set(cells.genes)) == 300
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    write_h5ad(tmp_path / "nan.h5ad", x, ["a", "b", "c"], ["c1", "c2", "c3", "c4"])
    Src.filepath, Src.genecolumn = str(tmp_path / "nan.h5ad"), None
    from biolm.core import expression_tokenizer

    tok = expression_tokenizer.fit(Src(), None, logging.getLogger("t"))
    records, _ = expression_tokenizer.encode(tok, Src(), None, logging.getLogger("t"), None)
    with pytest.raises(DataError, match=r"nan.h5ad: cell #3 \(c3\) has NaN or infinite values"):
        list(records)


def test_match_genes_by_id():
    m = match_genes(["b", "x", "a"], ["a", "b", "c"], "f.h5ad")
    assert m.missing == ["c"] and m.n_extra == 1 and not m.identity
    idx, val = m.sparse_row(np.array([0, 1, 2]), np.array([5.0, 6.0, 7.0]))
    assert idx.tolist() == [1, 0] and val.tolist() == [5.0, 7.0]
    assert m.dense(np.array([[5.0, 6.0, 7.0]])).tolist() == [[7.0, 5.0, 0.0]]
    assert match_genes(["a", "b"], ["a", "b"]).identity
    with pytest.raises(DataError, match="none of its"):
        match_genes(["x"], ["a"], "f.h5ad")
    with pytest.raises(DataError, match="more than once"):
        match_genes(["a", "a"], ["a"], "f.h5ad")


def test_seurat_hvg_matches_a_pandas_reimplementation_of_scanpy():
    import pandas as pd

    from biolm.plugins.pca.preprocessing import seurat_hvg

    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(1.0, np.exp(rng.normal(0, 1.5, 400)), size=(300, 400))).astype(float)
    x[:, :3] = 0  # never expressed genes
    norm = x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4
    mean, var = norm.mean(0), norm.var(0, ddof=1)
    # scanpy 1.9 _highly_variable_genes_single_batch, flavor="seurat", as written with pandas
    m = mean.copy()
    m[m == 0] = 1e-12
    disp = var / m
    disp[disp == 0] = np.nan
    df = pd.DataFrame({"means": np.log1p(m), "dispersions": np.log(disp)})
    df["mean_bin"] = pd.cut(df["means"], bins=20)
    grouped = df.groupby("mean_bin", observed=False)["dispersions"]
    bin_mean, bin_std = grouped.mean(), grouped.std(ddof=1)
    one = bin_std.isnull().to_numpy()
    bin_std[one] = bin_mean[one].to_numpy()
    bin_mean[one] = 0
    norm_disp = (df["dispersions"].to_numpy() - bin_mean[df["mean_bin"]].to_numpy()) / bin_std[df["mean_bin"]].to_numpy()
    want = set(np.argsort(-np.nan_to_num(norm_disp, nan=-np.inf), kind="stable")[:50].tolist())
    assert set(seurat_hvg(mean, var, 50).tolist()) == want


# ------------------------------------------------------------------------------------ pca vs scikit-learn


@pytest.mark.parametrize("zscore", [False, True])
def test_pca_logistic_matches_sklearn_on_pbmc_like(tmp_path, one_thread, zscore):
    """Same split (the file's stratified column), same preprocessing: accuracy within 0.02."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    k, alpha = 16, 1.0
    cfg = write_cfg(tmp_path / "c.yaml", PBMC, tmp_path / "out", model={"n_components": k, "ridge_alpha": alpha, "zscore": zscore}, fine_tuning_data_source={"devsplits": ["val"], "testsplits": ["test"]})
    pca("tokenize", cfg)
    pca("fine-tune", cfg)
    ours = json.loads((tmp_path / "out/fine-tune/0/test_results.json").read_text())["test_accuracy"]

    reader = H5adReader(PBMC)
    x = reader.read_all().astype(np.float64)
    cell_type, split = reader.obs_column("cell_type"), reader.obs_column("split")
    train, test = split == "train", split == "test"
    z = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    if zscore:
        z = StandardScaler().fit(z[train]).transform(z)
    scores = PCA(k, svd_solver="full").fit(z[train]).transform(z)
    scaler = StandardScaler().fit(scores[train])
    clf = LogisticRegression(C=1 / alpha, max_iter=5000).fit(scaler.transform(scores[train]), cell_type[train])
    theirs = float(np.mean(clf.predict(scaler.transform(scores[test])) == cell_type[test]))
    print(f"zscore={zscore}: biolm pca accuracy {ours:.4f}, scikit-learn {theirs:.4f}")
    assert theirs > 0.85  # the example has signal to find
    assert abs(ours - theirs) <= 0.02


# ------------------------------------------------------------------------------------ predict / interpret


def _rewrite(src: Path, dst: Path, genes_order=None, drop=(), extra=0, zero=()):
    r = H5adReader(src)
    x = r.read_all()
    genes = list(r.var_names)
    x[:, [genes.index(g) for g in zero]] = 0
    keep = [g for g in (genes_order or genes) if g not in drop]
    cols = [genes.index(g) for g in keep]
    x = x[:, cols]
    if extra:
        x = np.hstack([x, np.random.default_rng(0).poisson(3.0, size=(x.shape[0], extra)).astype(np.float32)])
        keep = keep + [f"extra{i}" for i in range(extra)]
    obs = {"cell_type": r.obs_column("cell_type"), "split": r.obs_column("split")}
    write_h5ad(dst, sp.csr_matrix(x), keep, r.obs_names, obs=obs, categorical={"cell_type", "split"})
    return dst


def test_predict_matches_genes_by_id_reordered_and_missing(trained, tmp_path, caplog):
    d, cfg, _ = trained
    base = pca("predict", cfg, **{"inference_model.outputdir": "p0"})
    want = _predictions(base.modedir)
    genes = list(H5adReader(CELLS).var_names)
    shuffled = list(np.random.default_rng(1).permutation(genes))
    f1 = _rewrite(CELLS, tmp_path / "shuffled.h5ad", shuffled, extra=4)
    got = pca("predict", cfg, **{"inference_source.filepath": str(f1), "inference_model.outputdir": "p1"})
    got_p = _predictions(got.modedir)
    assert {k: v["prediction"] for k, v in got_p.items()} == {k: v["prediction"] for k, v in want.items()}
    for c in ("prob_B cell", "prob_T cell"):
        assert np.allclose([float(got_p[k][c]) for k in want], [float(want[k][c]) for k in want], atol=1e-5)
    log = got.logfile.read_text()
    assert "4 gene(s) unknown to the model ignored" in log

    dropped = genes[20:25]
    f2 = _rewrite(CELLS, tmp_path / "missing.h5ad", drop=dropped)
    f3 = _rewrite(CELLS, tmp_path / "zeroed.h5ad", zero=dropped)
    r2 = pca("predict", cfg, **{"inference_source.filepath": str(f2), "inference_model.outputdir": "p2"})
    missing = _predictions(r2.modedir)
    zeroed = _predictions(pca("predict", cfg, **{"inference_source.filepath": str(f3), "inference_model.outputdir": "p3"}).modedir)
    assert all(abs(float(missing[k]["prob_B cell"]) - float(zeroed[k]["prob_B cell"])) < 1e-5 for k in zeroed)
    log = r2.logfile.read_text()
    assert "5 of the model's 200 genes are missing and read as zeros" in log


def test_preprocessing_is_fitted_on_train_and_saved(trained):
    d, cfg, _ = trained
    fold = d / "out/fine-tune/0"
    prep = json.loads((fold / "preprocessing.json").read_text())
    assert prep["n_top_genes"] == 60 and len(prep["genes_used"]) == 60 and prep["zscore"]
    w = torch.load(fold / "pytorch_model.bin", weights_only=True)
    r = H5adReader(CELLS)
    x = r.read_all().astype(np.float64)
    train = ~np.isin(r.obs_column("split"), ["4", "5"])
    z = np.log1p(x / x.sum(1, keepdims=True) * 1e4)[train][:, w["net.preprocess.genes"].numpy()]
    assert np.allclose(w["net.preprocess.zmean"].numpy(), z.mean(0), atol=1e-4)
    sd = z.std(0)
    assert np.allclose(w["net.preprocess.zstd"].numpy(), np.where(sd > 0, sd, 1), atol=1e-4)
    # fitted on the training split only: the statistics of all cells differ
    zall = np.log1p(x / x.sum(1, keepdims=True) * 1e4)[:, w["net.preprocess.genes"].numpy()]
    assert not np.allclose(w["net.preprocess.zmean"].numpy(), zall.mean(0), atol=1e-4)


def test_interpret_knockout_and_embeddings(trained, tmp_path):
    from biolm.core.modelio import load_fold
    from biolm.core.plugins import get_registry

    d, cfg, _ = trained
    r = pca("interpret", cfg, **{"inference_source.splitcolumn": "split", "inference_source.inferenceonsplits": ["5"], "looscores.plotsequences": 1})
    rows = list(csv.DictReader(open(r.modedir / "loo_scores_remove.csv")))
    reader = H5adReader(CELLS)
    x = reader.read_all()
    genes = list(reader.var_names)
    first = rows[0]["sequence"]
    cell = list(reader.obs_names).index(first)
    mine = [row for row in rows if row["sequence"] == first]
    assert [row["token"] for row in mine] == [genes[j] for j in np.flatnonzero(x[cell])]  # expressed genes only
    fold = load_fold(d / "out/fine-tune/0", get_registry())
    with torch.no_grad():
        inp = torch.tensor(x[cell : cell + 1])[:, :, None]
        base = torch.softmax(fold.model({"x": inp}), -1)[0]
        cls = int(base.argmax())
        for row in mine[:5]:
            ko = inp.clone()
            ko[0, genes.index(row["token"]), 0] = 0
            want = float(torch.softmax(fold.model({"x": ko}), -1)[0, cls] - base[cls])
            assert float(row["loo"]) == pytest.approx(want, abs=1e-5)
    assert int(rows[0]["start_offset"]) == genes.index(rows[0]["token"])
    # embeddings: cell ids and (cells x components), as the model computes them
    p = pca("predict", cfg, **{"inference_model.saveembeddings": True, "inference_model.outputdir": "emb"})
    with h5py.File(p.modedir / "embeddings.h5") as f:
        assert [i.decode() for i in f["ids"][:3]] == list(reader.obs_names[:3])
        emb = f["fold_0"][:]
    assert emb.shape == (400, 6)
    with torch.no_grad():
        assert np.allclose(emb[:4], fold.model.net.embed(torch.tensor(x[:4])[:, :, None]).numpy(), atol=1e-4)


def test_a_model_reads_only_its_kind_of_input(trained, tmp_path):
    _, cfg, _ = trained
    np.save(tmp_path / "x.npy", np.zeros((3, 200), dtype=np.float32))
    with pytest.raises(DataError, match=r"x.npy: a NumPy .npy file, but the model was trained on .h5ad expression \(cells x genes\) \(expression tokenizer\)"):
        pca("predict", cfg, **{"inference_source.filepath": str(tmp_path / "x.npy"), "inference_model.outputdir": "bad"})


@pytest.mark.parametrize(
    "src, n_folds",
    [
        ({"splitcolumn": None, "devsplits": None, "testsplits": None, "splitratio": "70,15,15"}, 1),
        ({"splitcolumn": "split", "devsplits": ["2"], "testsplits": ["3"]}, 1),
        ({"splitcolumn": None, "devsplits": None, "testsplits": None, "crossvalidation": 3, "cvscheme": "kfold", "splitratio": "80,20"}, 3),
        ({"splitcolumn": "split", "crossvalidation": True, "devsplits": [["1"], ["2"]], "testsplits": [["3"], ["4"]]}, 2),
    ],
)
def test_split_scenarios_and_cv_on_h5ad(tmp_path, one_thread, src, n_folds):
    cfg = write_cfg(tmp_path / "c.yaml", CELLS, tmp_path / "out", fine_tuning_data_source=src)
    r = pca("fine-tune", cfg)
    cv = json.loads((r.modedir / "cv_results.json").read_text())
    assert len(cv["folds"]) == n_folds
    assert cv["metrics"]["accuracy"]["mean"] > 0.65  # the majority class is half of the cells
    if "devsplits" in src and src["devsplits"] == ["2"]:
        preds = _predictions(r.modedir / "0")
        splits = dict(zip(H5adReader(CELLS).obs_names, H5adReader(CELLS).obs_column("split")))
        assert {splits[k] for k in preds} == {"3"}  # the reported test rows are split 3, held out


def test_regression_with_weight_column(tmp_path, one_thread):
    cfg = write_cfg(tmp_path / "c.yaml", CELLS, tmp_path / "out", fine_tuning_data_source={"labelcolumn": "marker_score", "weightcolumn": "marker_score"})
    r = pca("fine-tune", cfg, task="regression")
    assert r.summary["metrics"]["r2"] > 0.5


def test_unsupported_inputs_are_clear_errors(tmp_path):
    cfg = write_cfg(tmp_path / "c.yaml", CELLS, tmp_path / "out")
    lcl_cfg = write_cfg(tmp_path / "l.yaml", CELLS, tmp_path / "lcl", model={})
    lcl_cfg.write_text(lcl_cfg.read_text().replace("  n_components: 6\n", "  cutoff: 64\n"))
    with pytest.raises(BiolmError, match=r"cells_400.h5ad: an HDF5 \(.h5ad\) file, which lcl cannot read; it reads: delimited text sequences \(atomic\); .npy/.npz arrays \(array\)"):
        run("lcl", "tokenize", configfile=lcl_cfg, quiet=True)
    with pytest.raises(DataError, match="tokenization: encoding: atomic reads delimited text sequences; set tokenization: encoding: expression"):
        pca("tokenize", cfg, **{"tokenization.encoding": "atomic"})
    with pytest.raises(ConfigError, match="'atomic', 'expression', 'array' or 'auto'"):
        pca("tokenize", cfg, **{"tokenization.encoding": "generank"})
