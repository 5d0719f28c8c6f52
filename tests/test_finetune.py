"""The engine end to end through ``biolm.core.runner.run`` with a small real model (lcl)."""

import csv
import json

import numpy as np
import pytest
import torch

from biolm.core.errors import BiolmError, ConfigError, DataError
from biolm.core.runner import run

from conftest import write_config


def _run(mode, cfg, task="regression", **cli):
    return run("lcl", mode, task=task if mode != "tokenize" else None, configfile=cfg, cli_values=cli, quiet=True)


def _read_csv(p):
    with open(p) as fh:
        return list(csv.DictReader(fh))


def test_regression_random_split_outputs(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out")
    r = _run("fine-tune", cfg)
    fold = r.modedir / "0"
    for name in ("config.json", "pytorch_model.bin", "tokenizer.json", "scaler.json", "trainer_state.json", "train_results.json", "eval_results.json", "test_results.json", "all_results.json", "test_predictions.csv", "rank_deltas.csv", "learning_curves.png", "test_scatter.png"):
        assert (fold / name).exists(), name
    assert (r.modedir / "cv_results.json").exists() and (r.modedir / "dataset.h5").exists()
    preds = _read_csv(fold / "test_predictions.csv")
    assert len(preds) == 14  # 15% of 90 (rounded), every test sample evaluated
    rd = _read_csv(fold / "rank_deltas.csv")
    by_id = {p["sequence"]: p for p in preds}
    labels = np.array([float(x["label"]) for x in rd])
    for row in rd:  # each row is one sequence: its own label and prediction
        assert float(row["label"]) == pytest.approx(float(by_id[row["sequence"]]["label"]), rel=1e-5)
        assert float(row["prediction"]) == pytest.approx(float(by_id[row["sequence"]]["prediction"]), rel=1e-5)
        assert float(row["label_rank"]) == pytest.approx(1 + np.sum(labels < float(row["label"])) + (np.sum(labels == float(row["label"])) - 1) / 2)
    state = json.loads((fold / "trainer_state.json").read_text())
    assert len(state["history"]) == 2
    # no tokenize before: the tokenizer is learned first, and the log says so with its path, at INFO
    tok = tmp_path / "out" / "tokenizer.json"
    assert tok.exists() and f"INFO no tokenizer at {tok}: learning it on {rna_file} first" in r.logfile.read_text()


def test_same_seed_same_results(tmp_path, rna_file):
    a = write_config(tmp_path / "a.yaml", rna_file, tmp_path / "a")
    b = write_config(tmp_path / "b.yaml", rna_file, tmp_path / "b")
    _run("fine-tune", a)
    _run("fine-tune", b)
    wa = torch.load(tmp_path / "a/fine-tune/0/pytorch_model.bin", weights_only=True)
    wb = torch.load(tmp_path / "b/fine-tune/0/pytorch_model.bin", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_scaler_fitted_on_training_split_only(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", settings={"training": {"batchsize": 16, "blocksize": 64, "nepochs": 1, "scaling": "minmax"}})
    r = _run("fine-tune", cfg)
    sj = json.loads((r.modedir / "0/scaler.json").read_text())
    from biolm.core.splits import make_folds

    labels = np.array([float(line.split("\t")[2]) for line in rna_file.read_text().splitlines()])
    (fold,) = make_folds(len(labels), splitratio=(70, 15, 15), seed=1)
    assert sj["scaling"]["params"]["min"] == pytest.approx(labels[fold.train].min())
    assert sj["scaling"]["params"]["max"] == pytest.approx(labels[fold.train].max())
    assert labels.max() != labels[fold.train].max() or labels.min() != labels[fold.train].min()


@pytest.mark.parametrize(
    "src, n_folds",
    [
        ({"splitpos": 2, "devsplits": [2], "testsplits": [3]}, 1),
        ({"crossvalidation": 3, "splitratio": "70,15,15"}, 3),
        ({"crossvalidation": 3, "cvscheme": "kfold", "splitratio": "80,20"}, 3),
        ({"crossvalidation": True, "splitpos": 2, "devsplits": [[1], [2]], "testsplits": [[3], [4]]}, 2),
    ],
)
def test_split_scenarios_and_cv_results(tmp_path, rna_file, src, n_folds):
    fsrc = {"filepath": str(rna_file), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6, "labelpos": 3, "splitratio": "70,15,15", **src}
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", fine_tuning_data_source=fsrc, settings={"training": {"batchsize": 32, "blocksize": 64, "nepochs": 1}})
    r = _run("fine-tune", cfg)
    cv = json.loads((r.modedir / "cv_results.json").read_text())
    assert len(cv["folds"]) == n_folds
    assert set(cv["metrics"]["spearman"]) >= {"mean", "sd", "folds"} and len(cv["metrics"]["spearman"]["folds"]) == n_folds
    for f in cv["folds"]:
        assert (r.modedir / f / "pytorch_model.bin").exists()
    if src.get("splitpos"):
        ids_by_split = {}
        for line in rna_file.read_text().splitlines():
            c = line.split("\t")
            ids_by_split.setdefault(c[1], set()).add(c[0])
        preds = {p["sequence"] for p in _read_csv(r.modedir / "0/test_predictions.csv")}
        assert preds == ids_by_split["3"]


def test_classification_and_predict_on_cv_parent(tmp_path, rna_file):
    fsrc = {"filepath": str(rna_file), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6, "labelpos": 4, "crossvalidation": 2, "splitratio": "70,30"}
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", fine_tuning_data_source=fsrc, inference_data_source={"labelpos": 4}, inference_model={"pretrainedmodel": str(tmp_path / "out/fine-tune"), "ensembleweighting": "loss"})
    r = _run("fine-tune", cfg, task="classification")
    assert (r.modedir / "0/eval_confusion_matrix.png").exists()
    res = json.loads((r.modedir / "0/eval_results.json").read_text())
    assert {"eval_accuracy", "eval_balanced_accuracy", "eval_f1_macro", "eval_auroc", "eval_confusion_matrix"} <= set(res)
    p = _run("predict", cfg, task="classification")
    rows = _read_csv(p.modedir / "test_predictions.csv")
    assert len(rows) == 90
    assert {"prob_stable", "prob_unstable", "fold_0_prob_stable", "fold_1_prob_stable"} <= set(rows[0])
    val_loss = [json.loads((r.modedir / f / "config.json").read_text())["best_val_loss"] for f in ("0", "1")]
    w = np.array([1 / v for v in val_loss])
    w /= w.sum()
    for row in rows[:5]:
        expect = w[0] * float(row["fold_0_prob_stable"]) + w[1] * float(row["fold_1_prob_stable"])
        assert float(row["prob_stable"]) == pytest.approx(expect, abs=2e-6)
    assert (p.modedir / "test_results.json").exists()


def test_predict_without_labels_and_fold_folder(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", inference_data_source={"labelpos": None}, inference_model={"pretrainedmodel": str(tmp_path / "out/fine-tune/0")})
    _run("fine-tune", cfg)
    p = _run("predict", cfg)
    rows = _read_csv(p.modedir / "test_predictions.csv")
    assert len(rows) == 90 and rows[0]["label"] == "" and not (p.modedir / "rank_deltas.csv").exists()


def test_weighted_regression_uses_quality_labels(tmp_path, rna_file):
    fsrc = {"filepath": str(rna_file), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6, "labelpos": 3, "weightpos": 5, "splitratio": "70,30"}
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", fine_tuning_data_source=fsrc, settings={"training": {"batchsize": 32, "blocksize": 64, "nepochs": 1, "qualityweights": {"STRONG": 1, "GOOD": 1, "WEAK": 1, "POOR": 0}}})
    _run("fine-tune", cfg)
    bad = write_config(tmp_path / "d.yaml", rna_file, tmp_path / "out2", fine_tuning_data_source=dict(fsrc), settings={"training": {"batchsize": 32, "blocksize": 64, "nepochs": 1, "qualityweights": {"STRONG": 1}}})
    with pytest.raises(DataError, match="GOOD|WEAK|POOR"):
        _run("fine-tune", bad)


def test_log_scaling_rejects_non_positive_labels(tmp_path):
    data = tmp_path / "neg.txt"
    data.write_text("".join(f"s{i}\t1\t{(i % 5) - 1.0}\tx\tGOOD\t{','.join('acgt' * 5)}\n" for i in range(30)))
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out", settings={"training": {"batchsize": 8, "blocksize": 32, "nepochs": 1, "scaling": "log"}})
    with pytest.raises(DataError, match="log needs positive labels"):
        _run("fine-tune", cfg)


def test_resume_after_kill_matches_uninterrupted(tmp_path, rna_file):
    """Kill mid-epoch (a training-event hook raises), resume: same final weights as a straight run."""
    from biolm.core.hookspecs import hookimpl
    from biolm.core.plugins import get_registry

    settings = {"training": {"batchsize": 16, "blocksize": 64, "nepochs": 3, "patience": 10}}
    a = write_config(tmp_path / "a.yaml", rna_file, tmp_path / "a", settings=settings)
    _run("fine-tune", a)

    class Killer:
        @hookimpl
        def on_batch_begin(self, state):
            if state.epoch == 1 and state.step >= 5:
                raise KeyboardInterrupt

    pm = get_registry().pm
    killer = Killer()
    pm.register(killer)
    b = write_config(tmp_path / "b.yaml", rna_file, tmp_path / "b", settings=settings)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run("fine-tune", b)
    finally:
        pm.unregister(killer)
    assert not (tmp_path / "b/fine-tune/0/pytorch_model.bin").exists()
    _run("fine-tune", b, **{"settings.training.resume": True})
    wa = torch.load(tmp_path / "a/fine-tune/0/pytorch_model.bin", weights_only=True)
    wb = torch.load(tmp_path / "b/fine-tune/0/pytorch_model.bin", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the training figures cover every run that trained the fold, and the resume is marked
    tr = json.loads((tmp_path / "b/fine-tune/0/train_results.json").read_text())
    hist = json.loads((tmp_path / "b/fine-tune/0/trainer_state.json").read_text())["history"]
    assert tr["resumed_after_epoch"] == 1 and tr["epochs"] == 3
    assert tr["train_runtime"] == pytest.approx(tr["train_runtime_this_run"] + hist[0]["seconds"])
    assert tr["train_runtime_this_run"] > sum(h["seconds"] for h in hist[1:])
    assert "resumed_after_epoch" not in json.loads((tmp_path / "a/fine-tune/0/train_results.json").read_text())


def test_unseen_class_at_predict_is_an_error(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", fine_tuning_data_source={"labelpos": 4, "splitratio": "70,30"}, inference_data_source={"labelpos": 5}, inference_model={"pretrainedmodel": str(tmp_path / "out/fine-tune")})
    _run("fine-tune", cfg, task="classification")
    with pytest.raises(DataError, match="not seen in training"):
        _run("predict", cfg, task="classification")


def test_task_mismatch_and_missing_model(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", inference_model={"pretrainedmodel": str(tmp_path / "nowhere")})
    with pytest.raises(BiolmError, match="does not exist"):
        _run("predict", cfg)
    with pytest.raises(ConfigError, match="labelpos"):
        _run("fine-tune", write_config(tmp_path / "d.yaml", rna_file, tmp_path / "o2", fine_tuning_data_source={"labelpos": None}))


def test_predict_rejects_non_numeric_labels_before_writing(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", inference_data_source={"labelpos": 4}, inference_model={"pretrainedmodel": str(tmp_path / "out/fine-tune")})
    _run("fine-tune", cfg)
    with pytest.raises(DataError, match="not a number"):
        _run("predict", cfg)
    assert not (tmp_path / "out/predict/test_predictions.csv").exists()


def test_a_pretrain_folder_is_not_a_fine_tuned_model(tmp_path, rna_file):
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt/config.json").write_text(json.dumps({"plugin": "lcl", "task": "pre-train"}))
    (tmp_path / "pt/pytorch_model.bin").write_bytes(b"")
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", inference_model={"pretrainedmodel": str(tmp_path / "pt")})
    with pytest.raises(BiolmError, match="not a fine-tuned one"):
        _run("predict", cfg)


def test_saluki_classification_with_cross_validation_and_cv_parent_predict(tmp_path, rna_file):
    """The saluki plugin through every engine path that matters: CV folds, classification, ensemble."""
    fsrc = {"filepath": str(rna_file), "columnsep": "\t", "tokensep": ",", "idpos": 1, "seqpos": 6, "labelpos": 4, "crossvalidation": 2, "splitratio": "70,30"}
    cfg = write_config(
        tmp_path / "c.yaml", rna_file, tmp_path / "out", fine_tuning_data_source=fsrc, inference_data_source={"labelpos": 4},
        inference_model={"pretrainedmodel": str(tmp_path / "out/fine-tune")},
        settings={"training": {"batchsize": 16, "blocksize": 320, "nepochs": 2}}, model={"filters": 16},
    )
    r = run("saluki", "fine-tune", task="classification", configfile=cfg, quiet=True)
    cv = json.loads((r.modedir / "cv_results.json").read_text())
    assert cv["folds"] == ["0", "1"] and "accuracy" in cv["metrics"]
    p = run("saluki", "predict", task="classification", configfile=cfg, quiet=True)
    rows = _read_csv(p.modedir / "test_predictions.csv")
    assert len(rows) == 90 and {"fold_0_prob_stable", "fold_1_prob_unstable"} <= set(rows[0])
    i = run("saluki", "interpret", task="classification", configfile=cfg, quiet=True, cli_values={"looscores.handletokens": "mask", "inference_source.filepath": str(rna_file)})
    assert len(_read_csv(i.modedir / "loo_scores_mask.csv")) > 0


def test_a_last_training_batch_of_one_does_not_break_batchnorm(tmp_path, rna_file):
    # 90 records, 70% train = 63 = 2 x 31 + 1: the last training batch holds a single sample
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", fine_tuning_data_source={"splitratio": "70,30"}, settings={"training": {"batchsize": 31, "blocksize": 320, "nepochs": 1}}, model={"filters": 8})
    r = run("saluki", "fine-tune", task="regression", configfile=cfg, quiet=True)
    assert (r.modedir / "0/pytorch_model.bin").exists()


def test_epochs_are_counted_from_one_and_the_kept_epoch_is_named(tmp_path, rna_file):
    """trainer_state.json, the log and the plot agree on 1-based epochs; the early-stop line comes
    after the line of the epoch it refers to, and the log says which epoch's weights were kept."""
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", settings={"training": {"batchsize": 16, "blocksize": 64, "nepochs": 12, "patience": 1, "lr": 0.05}})
    r = _run("fine-tune", cfg)
    state = json.loads((r.modedir / "0/trainer_state.json").read_text())
    hist = state["history"]
    assert [h["epoch"] for h in hist] == list(range(1, len(hist) + 1))
    losses = [h["val_loss"] for h in hist]
    assert state["best_epoch"] == hist[int(np.argmin(losses))]["epoch"]
    log = next((r.modedir / "logs").glob("*.log")).read_text().splitlines()
    epoch_lines = [i for i, ln in enumerate(log) if " epoch " in ln and "/12:" in ln]
    assert len(epoch_lines) == len(hist)
    assert f"fold 0: keeping the weights of epoch {state['best_epoch']} " in "\n".join(log)
    if state["stopped_early"]:
        stop = next(i for i, ln in enumerate(log) if "early stop after epoch" in ln)
        assert stop > epoch_lines[-1] and f"early stop after epoch {len(hist)} " in log[stop]


def test_summary_shows_label_unit_and_scaled_metrics_titled_with_the_split(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", settings={"training": {"batchsize": 16, "blocksize": 64, "nepochs": 1, "scaling": "log"}})
    r = _run("fine-tune", cfg)
    m = r.summary["metrics"]
    test = json.loads((r.modedir / "0/test_results.json").read_text())
    assert m["pearson"] == pytest.approx(test["test_pearson"]) and m["pearson (log-scaled)"] == pytest.approx(test["test_scaled_pearson"])
    assert r.summary["title"] == "lcl fine-tune: test split"
