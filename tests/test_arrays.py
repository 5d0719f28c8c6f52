"""Array input (EIR's): .npy folders / files / .npz with a label file keyed by id, EIR's
normalization fitted per fold, position masking LOO; lcl on planted genotypes, pca on signals."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from biolm.core.errors import BiolmError, ConfigError, DataError
from biolm.core.exampledata import write_genotype_example
from biolm.core.runner import run

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "exampleconfigs/data"
LCL_MODEL = {"kernel_width": 8, "first_kernel_expansion": 1, "cutoff": 64, "head_hidden": 16, "rb_do": 0.0, "head_dropout": 0.0}


def write_cfg(path: Path, arrays: Path, labels: Path, out: Path, model: dict, src: dict | None = None, **sections) -> Path:
    common = {"filepath": str(arrays), "labelfile": str(labels), "stripheader": True, "columnsep": "\t", "idpos": 1, "splitpos": 2, "labelpos": 3, **(src or {})}
    cfg = {
        "outputpath": str(out),
        "seed": 5,
        "tokenizing and pre-training data source": {"filepath": str(arrays), **({"idfile": common["idfile"]} if "idfile" in common else {})},
        "fine-tuning data source": {**common, "devsplits": ["val"], "testsplits": ["test"]},
        "inference data source": dict(common),
        "inference model": {"pretrainedmodel": str(out / "fine-tune/0")},
        "settings": {"training": {"batchsize": 32, "nepochs": 3, "lr": 0.003}},
        "model": model,
        **sections,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _folder(tmp: Path, n=60, snps=40, seed=0) -> tuple[Path, Path, np.ndarray]:
    """A folder of one-hot genotype .npy files (id = stem) and a label file (header line)."""
    paths = write_genotype_example(tmp / "gen", n_samples=n, n_snps=snps, n_causal=4, seed=seed)
    z = np.load(paths["arrays"])
    folder = tmp / "npy"
    folder.mkdir()
    for sid, a in zip(z["ids"], z["genotypes"]):
        np.save(folder / f"{sid}.npy", a)
    return folder, paths["labels"], z["genotypes"]


def _labels(path: Path) -> list[list[str]]:
    return [r for r in csv.reader(open(path), delimiter="\t")][1:]


def test_lcl_on_a_folder_of_npy_every_mode(tmp_path, one_thread):
    folder, labels, x = _folder(tmp_path)
    cfg = write_cfg(tmp_path / "c.yaml", folder, labels, tmp_path / "out", LCL_MODEL, looscores={"handletokens": "mask", "plotsequences": 1})
    run("lcl", "tokenize", configfile=cfg, quiet=True)
    tok = json.loads((tmp_path / "out/tokenizer.json").read_text())
    assert tok["encoding"] == "array" and tok["shape"] == [4, 40]
    r = run("lcl", "fine-tune", task="regression", configfile=cfg, quiet=True)
    fold = r.modedir / "0"
    meta = json.loads((fold / "config.json").read_text())
    assert meta["encoding"] == "array" and meta["blocksize"] == 40 and meta["in_channels"] == 4
    # EIR's channel normalization, fitted on the training split only, saved in the weights
    rows = _labels(labels)
    train = [i for i, r in enumerate(rows) if r[1] == "train"]
    w = torch.load(fold / "pytorch_model.bin", weights_only=True)
    xt = x[train].astype(np.float64)
    assert np.allclose(w["net.input_norm.mean"].numpy(), xt.mean(axis=(0, 2)), atol=1e-6)
    assert np.allclose(w["net.input_norm.std"].numpy(), xt.transpose(1, 0, 2).reshape(4, -1).std(1), atol=1e-6)
    assert not np.allclose(w["net.input_norm.mean"].numpy(), x.astype(np.float64).mean(axis=(0, 2)), atol=1e-6)
    p = run("lcl", "predict", task="regression", configfile=cfg, quiet=True)
    assert len(list(csv.DictReader(open(p.modedir / "test_predictions.csv")))) == 60
    # the saved normalization is applied: predictions equal the model on normalised arrays
    from biolm.core.modelio import load_fold
    from biolm.core.plugins import get_registry

    f = load_fold(fold, get_registry())
    preds = {row["sequence"]: float(row["prediction"]) for row in csv.DictReader(open(p.modedir / "test_predictions.csv"))}
    with torch.no_grad():
        inp = torch.tensor(x[:3], dtype=torch.float32).transpose(1, 2)
        z = (inp - w["net.input_norm.mean"]) / w["net.input_norm.std"]
        raw = f.model.net.head(f.model.net.body(z))[:, 0]
        want = f.scaler.inverse(raw).numpy() if f.scaler is not None else raw.numpy()
    assert np.allclose([preds[rows[i][0]] for i in range(3)], want, atol=1e-4)
    it = run("lcl", "interpret", task="regression", configfile=cfg, quiet=True, cli_values={"inference_source.inferenceonsplits": ["test"]})
    loo = list(csv.DictReader(open(it.modedir / "loo_scores_mask.csv")))
    assert len(loo) == 9 * 40 and loo[0]["token"] == "0" and loo[1]["start_offset"] == "1"


def test_npy_with_idfile_npz_and_element_normalization(tmp_path, one_thread):
    folder, labels, x = _folder(tmp_path, n=50, snps=30, seed=1)
    ids = [r[0] for r in _labels(labels)]
    np.save(tmp_path / "all.npy", x.astype(np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    cfg = write_cfg(tmp_path / "c.yaml", tmp_path / "all.npy", labels, tmp_path / "o1", {**LCL_MODEL, "normalization": "element"}, src={"idfile": str(tmp_path / "ids.txt")})
    r = run("lcl", "fine-tune", task="regression", configfile=cfg, quiet=True)
    w = torch.load(r.modedir / "0/pytorch_model.bin", weights_only=True)
    train = [i for i, row in enumerate(_labels(labels)) if row[1] == "train"]
    xt = x[train].astype(np.float64).transpose(0, 2, 1)  # (N, L, C)
    sd = xt.std(0, ddof=1)
    assert w["net.input_norm.mean"].shape == (30, 4)
    assert np.allclose(w["net.input_norm.mean"].numpy(), xt.mean(0), atol=1e-6)
    assert np.allclose(w["net.input_norm.std"].numpy(), np.where(sd > 0, sd, 1), atol=1e-6)
    # one .npz with its ids reads the same samples into an equal store
    np.savez(tmp_path / "all.npz", ids=np.asarray(ids), data=x)
    cfg2 = write_cfg(tmp_path / "c2.yaml", tmp_path / "all.npz", labels, tmp_path / "o2", {**LCL_MODEL, "normalization": "element"})
    r2 = run("lcl", "fine-tune", task="regression", configfile=cfg2, quiet=True)
    w2 = torch.load(r2.modedir / "0/pytorch_model.bin", weights_only=True)
    assert all(torch.equal(w[k], w2[k]) for k in w)


@pytest.mark.parametrize("kind", ["channel", "element", "none"])
def test_array_normalization_fits_a_seeded_subset_of_the_training_split(kind):
    from biolm.core.input_statistics import ArrayNormalization

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(2.0, 3.0, size=(50, 6, 2)), dtype=torch.float32)  # (N, L, C)

    def batches(indices, shuffle):
        for lo in range(0, len(indices), 7):
            idx = indices[lo : lo + 7]
            yield idx, {"x": x[idx]}, None, None

    train = np.arange(40)
    norm = ArrayNormalization(6, 2, kind).fit(batches, train, max_samples=15, seed=3)
    used = np.sort(np.random.default_rng(3).choice(train, size=15, replace=False))
    xs = x[used].double().numpy()
    if kind == "channel":
        assert np.allclose(norm.mean.numpy(), xs.mean((0, 1)), atol=1e-5) and np.allclose(norm.std.numpy(), xs.reshape(-1, 2).std(0), atol=1e-5)
    elif kind == "element":
        assert np.allclose(norm.mean.numpy(), xs.mean(0), atol=1e-5) and np.allclose(norm.std.numpy(), xs.std(0, ddof=1), atol=1e-5)
    out = norm(x[:3])
    assert torch.allclose(out, x[:3] if kind == "none" else (x[:3] - norm.mean) / norm.std)


def test_array_input_errors_name_the_file(tmp_path, caplog):
    folder, labels, x = _folder(tmp_path, n=30, snps=10, seed=2)
    cfg = write_cfg(tmp_path / "c.yaml", folder, labels, tmp_path / "out", LCL_MODEL)

    def finetune(path=cfg, **cli):
        return run("lcl", "fine-tune", task="regression", configfile=path, quiet=True, cli_values=cli)

    run("lcl", "tokenize", configfile=cfg, quiet=True)
    bad = folder / "sample00003.npy"
    good = np.load(bad)
    np.save(bad, np.zeros((4, 11), dtype=np.int8))
    with pytest.raises(DataError, match=r"sample00003.npy: shape \(4, 11\), expected \(4, 10\)"):
        finetune()
    arr = good.astype(np.float32)
    arr[0, 2] = np.nan
    np.save(bad, arr)
    with pytest.raises(DataError, match=r"sample00003.npy: 1 NaN or infinite value"):
        finetune()
    np.save(bad, good)
    rows = (labels.read_text().splitlines())
    (tmp_path / "fewer.tsv").write_text("\n".join(rows[:-2]) + "\n")
    with pytest.raises(DataError, match=r"fewer.tsv: 2 of the 30 samples of .* have no row here \(e.g. sample00028, sample00029\)"):
        finetune(**{"finetuning_source.labelfile": str(tmp_path / "fewer.tsv")})
    r = finetune(**{"finetuning_source.labelfile": str(tmp_path / "fewer.tsv"), "finetuning_source.on_bad_row": "skip"})
    log = r.logfile.read_text()
    assert "2 sample(s) without a row" in log and "skipped" in log
    (tmp_path / "more.tsv").write_text("\n".join(rows + ["ghost\ttrain\t1.0\tcase"]) + "\n")
    with pytest.raises(DataError, match=r"more.tsv: 1 labelled id\(s\) have no array"):
        finetune(**{"finetuning_source.labelfile": str(tmp_path / "more.tsv")})
    with pytest.raises(ConfigError, match="labelfile: required for array input"):
        finetune(**{"finetuning_source.labelfile": None})
    np.save(tmp_path / "all.npy", x)
    with pytest.raises(ConfigError, match="idfile"):
        finetune(**{"finetuning_source.filepath": str(tmp_path / "all.npy")})
    (tmp_path / "ids.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"ids.txt: 2 ids for the 30 rows"):
        finetune(**{"finetuning_source.filepath": str(tmp_path / "all.npy"), "finetuning_source.idfile": str(tmp_path / "ids.txt")})
    with pytest.raises(BiolmError, match=r"a NumPy .npy file, which saluki cannot read"):
        run("saluki", "tokenize", configfile=write_cfg(tmp_path / "s.yaml", tmp_path / "all.npy", labels, tmp_path / "s", {}), quiet=True)


def test_pca_on_the_bundled_signal_npy_every_mode(tmp_path, one_thread):
    cfg = yaml.safe_load((REPO / "exampleconfigs/pca/signals_npy.yaml").read_text())
    for section in ("tokenizing and pre-training data source", "fine-tuning data source", "inference data source"):
        for key in ("filepath", "idfile", "labelfile"):
            if key in cfg[section]:
                cfg[section][key] = str(REPO / cfg[section][key])
    cfg["outputpath"] = str(tmp_path / "out")
    cfg["inference model"]["pretrainedmodel"] = str(tmp_path / "out/fine-tune/0")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run("pca", "tokenize", configfile=path, quiet=True)
    ft = run("pca", "fine-tune", task="classification", configfile=path, quiet=True)
    assert ft.summary["metrics"]["accuracy"] >= 0.9
    p = run("pca", "predict", task="classification", configfile=path, quiet=True)
    assert p.summary["metrics"]["accuracy"] >= 0.9 and (p.modedir / "embeddings.h5").exists()
    it = run("pca", "interpret", task="classification", configfile=path, quiet=True)
    assert it.summary["metrics"]["samples"] == 60 and p.summary["lines"][0].endswith("(60 samples)")
    score = np.zeros(64)
    for row in csv.DictReader(open(it.modedir / "loo_scores_mask.csv")):
        score[int(row["start_offset"])] += abs(float(row["loo"]))
    assert set(np.argsort(-score)[:6]) & {15, 16, 17} and set(np.argsort(-score)[:6]) & {47, 48, 49}  # the bumps


@pytest.mark.slow
def test_lcl_finds_the_planted_causal_snps_of_the_bundled_genotypes(tmp_path, one_thread):
    """Bundled example: lcl beats the mean clearly, approaches a ridge on dosages, and masking LOO
    ranks the causal SNPs first (AUROC >= 0.9)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import roc_auc_score

    rows = _labels(DATA / "genotypes_labels.tsv")
    # interpret 40 held-out test samples (split "probe" = the first 40 of "test")
    probe = [r[0] for r in rows if r[1] == "test"][:40]
    (tmp_path / "labels.tsv").write_text("id\tsplit\tphenotype\tcase\n" + "".join(f"{r[0]}\t{'probe' if r[0] in probe else r[1]}\t{r[2]}\t{r[3]}\n" for r in rows))
    cfg = yaml.safe_load((REPO / "exampleconfigs/lcl/genotypes_npz.yaml").read_text())
    for section in ("tokenizing and pre-training data source", "fine-tuning data source", "inference data source"):
        cfg[section]["filepath"] = str(DATA / "genotypes.npz")
    cfg["fine-tuning data source"]["labelfile"] = str(DATA / "genotypes_labels.tsv")
    cfg["inference data source"].update(labelfile=str(tmp_path / "labels.tsv"), inferenceonsplits=["probe"])
    cfg["looscores"]["positionnames"] = str(DATA / "genotypes_snps.txt")
    cfg["outputpath"] = str(tmp_path / "out")
    cfg["inference model"]["pretrainedmodel"] = str(tmp_path / "out/fine-tune/0")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ft = run("lcl", "fine-tune", task="regression", configfile=path, quiet=True)
    ours = ft.summary["metrics"]["r2"]

    z = np.load(DATA / "genotypes.npz")
    dosage = z["genotypes"][:, 1, :] + 2.0 * z["genotypes"][:, 2, :]
    split = np.array([r[1] for r in rows])
    y = np.array([float(r[2]) for r in rows])
    train, test = split == "train", split == "test"
    ridge = RidgeCV(alphas=np.logspace(-1, 4, 20)).fit(dosage[train], y[train])
    ridge_r2 = 1 - np.mean((ridge.predict(dosage[test]) - y[test]) ** 2) / np.mean((y[test] - y[test].mean()) ** 2)
    mean_r2 = 1 - np.mean((y[train].mean() - y[test]) ** 2) / np.mean((y[test] - y[test].mean()) ** 2)
    print(f"test r2: lcl {ours:.3f}, ridge on dosages {ridge_r2:.3f}, mean predictor {mean_r2:.3f}")
    assert ours > mean_r2 + 0.3 and ours > ridge_r2 - 0.1

    it = run("lcl", "interpret", task="regression", configfile=path, quiet=True)
    snps = (DATA / "genotypes_snps.txt").read_text().split()
    index = {s: j for j, s in enumerate(snps)}
    total, count = np.zeros(len(snps)), np.zeros(len(snps))
    for row in csv.DictReader(open(it.modedir / "loo_scores_mask.csv")):
        j = index[row["token"]]
        total[j] += abs(float(row["loo"]))
        count[j] += 1
    causal = [int(line.split()[0]) for line in (DATA / "genotypes_causal.txt").read_text().splitlines()]
    truth = np.zeros(len(snps))
    truth[causal] = 1
    auroc = roc_auc_score(truth, total / np.maximum(count, 1))
    print(f"AUROC of mean |loo| for the {len(causal)} causal SNPs: {auroc:.3f}")
    assert auroc >= 0.9


@pytest.mark.slow
def test_normalization_is_merged_across_two_processes(tmp_path):
    folder, labels, _ = _folder(tmp_path, n=41, snps=12, seed=3)
    outs = {}
    for n in (1, 2):
        cfg = write_cfg(tmp_path / f"c{n}.yaml", folder, labels, tmp_path / f"o{n}", LCL_MODEL, settings={"training": {"batchsize": 8, "nepochs": 1}, "environment": {"ngpus": n, "device": "cpu"}})
        p = subprocess.run([sys.executable, "-m", "biolm", "lcl", "fine-tune", "--task", "regression", "--configfile", str(cfg)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        outs[n] = torch.load(tmp_path / f"o{n}/fine-tune/0/pytorch_model.bin", weights_only=True)
    for k in ("net.input_norm.mean", "net.input_norm.std"):
        assert torch.allclose(outs[1][k], outs[2][k], atol=1e-6)
