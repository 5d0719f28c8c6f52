"""Bad inputs through the command line: each is exit code 2 with one ``error:`` line naming the
file or key, never a traceback, never a silently wrong result (issue 9, first part).

The commands run in-process through Typer's test runner; one small lcl model is fine-tuned once
for the module and copied wherever a test damages a file of it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

from biolm.core.exampledata import write_dataset

from conftest import cli, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """A fine-tuned lcl model (fold 0) and its config; sequences of 30-90 tokens, blocksize 64."""
    d = tmp_path_factory.mktemp("exp")
    data = write_dataset(d / "rna.txt", 40, seed=5, min_len=30, max_len=90)
    cfg = write_config(d / "c.yaml", data, d / "out", inference_model={"pretrainedmodel": str(d / "out/fine-tune/0")})
    cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", cfg).code == 0 or pytest.fail("fine-tune failed")
    return {"dir": d, "data": data, "cfg": cfg, "fold": d / "out/fine-tune/0"}


def infer(exp, mode, out, *args):
    return cli("--quiet", "lcl", mode, "--task", "regression", "-c", exp["cfg"], "--outputpath", out, *args)


def fold_copy(exp, tmp_path):
    dst = tmp_path / "fold"
    shutil.copytree(exp["fold"], dst, ignore=shutil.ignore_patterns("checkpoint-*"))
    return dst


# --------------------------------------------------------------------------- separators


def test_space_tokensep_on_the_command_line(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("s1|a c gej t|1.0\ns2|c c t|2.0\n")
    src = {"filepath": str(data), "columnsep": "|", "idpos": 1, "seqpos": 2}
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out", tokenizing_and_pre_training_data_source=src)
    r = cli("--quiet", "lcl", "tokenize", "-c", cfg, "--tokensep", " ")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "out/tokenizer.json").read_text())["vocab"] == ["a", "c", "gej", "t"]


def test_tab_tokensep_end_to_end(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("s1|a\tc\tgej\tt|1.0\ns2|aej\tc\tt|2.0\n")
    src = {"filepath": str(data), "columnsep": "|", "tokensep": "\t", "idpos": 1, "seqpos": 2}
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out", tokenizing_and_pre_training_data_source=src)
    assert "tokensep: \"\\t\"" in cfg.read_text()  # the YAML holds a real tab escape
    r = cli("--quiet", "lcl", "tokenize", "-c", cfg)
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "out/tokenizer.json").read_text())["vocab"] == ["a", "aej", "c", "gej", "t"]


# --------------------------------------------------------------------------- the config and the output folder


def test_binary_config_file_is_exit_2_with_a_log(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(bytes(range(256)))
    cli("--quiet", "lcl", "tokenize", "-c", cfg).one_error(str(cfg), "not a text YAML file")
    (log,) = (tmp_path / "tmp/biolm-logs").glob("*.log")  # no OUTPUTPATH known: the documented fallback
    assert "not a text YAML file" in log.read_text()


def test_a_key_given_twice(tmp_path, exp):
    text = exp["cfg"].read_text()
    twice = tmp_path / "twice.yaml"
    twice.write_text(text + "seed: 5\n")
    cli("--quiet", "lcl", "tokenize", "-c", twice).one_error(str(twice), "key 'seed' appears twice")
    aliases = tmp_path / "aliases.yaml"  # lr under two of its names: which one wins must not be a guess
    aliases.write_text(text.replace("lr: 0.003", "lr: 0.003\n    learning_rate: 0.1"))
    cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", aliases).one_error("settings.training.lr", "given twice")


def test_outputdir_is_a_folder_name(tmp_path, exp):
    infer(exp, "predict", tmp_path / "o", "--outputdir", tmp_path / "elsewhere").one_error("inference model.outputdir", "a folder name")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_outputpath_that_is_a_file(tmp_path, exp, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f/sub"
    cli("--quiet", "lcl", "tokenize", "-c", exp["cfg"], "--outputpath", out).one_error("outputpath", "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_outputpath_not_writable(tmp_path, exp):
    (tmp_path / "ro").mkdir(mode=0o500)
    cli("--quiet", "lcl", "tokenize", "-c", exp["cfg"], "--outputpath", tmp_path / "ro/out").one_error("outputpath")


@pytest.mark.parametrize("seed", ["-3", str(2**70)])
def test_seed_out_of_range_before_anything_is_built(tmp_path, exp, seed):
    r = cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", exp["cfg"], "--outputpath", tmp_path / "o", "--seed", seed)
    r.one_error("seed")
    assert not list((tmp_path / "o").rglob("dataset.h5"))


def test_blocksize_beyond_the_plugin_bound(tmp_path, exp):
    r = cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", exp["cfg"], "--outputpath", tmp_path / "o", "--blocksize", "1000000000")
    r.one_error("settings.training.blocksize", "at most 131072")
    assert not list((tmp_path / "o").rglob("dataset.h5"))


def test_batch_that_cannot_fit_in_memory(tmp_path, exp, monkeypatch):
    from biolm.core import batching

    monkeypatch.setattr(batching, "available_memory", lambda device: 1 << 20)  # 1 MiB free
    r = cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", exp["cfg"], "--outputpath", tmp_path / "o", "--batchsize", "4096")
    r.one_error("settings.training.batchsize", "4096 x 64 tokens", "lower batchsize or blocksize")


def test_config_error_writes_the_log_where_the_readme_says(tmp_path, exp):
    r = cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", exp["cfg"], "--outputpath", tmp_path / "o", "--splitratio", "70,70")
    r.one_error("splitratio")
    (log,) = (tmp_path / "o/fine-tune/logs").glob("*.log")
    assert "splitratio" in log.read_text()


def test_unexpected_error_has_its_traceback_in_the_log(tmp_path, exp, monkeypatch):
    from biolm.core.modes import tokenize

    def boom(run):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(tokenize, "execute", boom)
    r = cli("--quiet", "lcl", "tokenize", "-c", exp["cfg"], "--outputpath", tmp_path / "o")
    assert r.code == 1 and len(r.lines) == 1 and "boom" in r.lines[0] and "second line" not in r.lines[0]
    (log,) = (tmp_path / "o/tokenize/logs").glob("*.log")
    assert str(log) in r.lines[0]
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text


def test_fine_tune_reads_only_its_own_keys(tmp_path, exp):
    # one combined YAML: predict's model names a fine-tuned fold; fine-tune must not take it as
    # pre-trained weights (it has its own key, pretrainedweights)
    r = cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", exp["cfg"], "--outputpath", tmp_path / "o", "--nepochs", "1")
    assert r.code == 0, r.err
    assert "pre-trained" not in next((tmp_path / "o/fine-tune/logs").glob("*.log")).read_text()
    r = cli("--quiet", "lcl", "fine-tune", "--task", "regression", "-c", exp["cfg"], "--outputpath", tmp_path / "o", "--pretrainedweights", exp["fold"])
    r.one_error("settings.training.pretrainedweights", "cannot start from pre-trained weights")


# --------------------------------------------------------------------------- the model folder


def test_pretrainedmodel_that_is_a_file(tmp_path, exp):
    infer(exp, "predict", tmp_path / "o", "--pretrainedmodel", exp["fold"] / "config.json").one_error("inference model.pretrainedmodel", "is a file")


def _truncate(p):
    p.write_bytes(p.read_bytes()[:1000])


def _garbage(p):
    p.write_bytes(np.random.default_rng(0).bytes(5000))


def _pickled_object(p):
    torch.save({"layer": torch.nn.Linear(2, 2)}, p)


def _foreign(p):
    torch.save({"x.weight": torch.zeros(3)}, p)


def _reshaped(p):
    state = torch.load(p, weights_only=True)
    k = next(iter(state))
    state[k] = torch.zeros(*(s + 1 for s in state[k].shape))
    torch.save(state, p)


@pytest.mark.parametrize("damage,reason", [(_truncate, "truncated or damaged"), (lambda p: p.write_bytes(b""), "empty file"), (_garbage, "not a torch state dict"), (_pickled_object, "not a torch state dict"), (_foreign, "do not fit the lcl model"), (_reshaped, "has shape")])
def test_damaged_weights_are_not_a_biolm_model_file(tmp_path, exp, damage, reason):
    fold = fold_copy(exp, tmp_path)
    damage(fold / "pytorch_model.bin")
    infer(exp, "predict", tmp_path / "o", "--pretrainedmodel", fold).one_error(f"not a biolm model file: {fold / 'pytorch_model.bin'} (", reason)
    assert not (tmp_path / "o/predict/test_predictions.csv").exists()


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "name,edit,expected",
    [
        ("config.json", lambda p: p.write_text('{"plugin": "lcl", '), "config.json:1:"),
        ("config.json", lambda p: _edit_json(p, lambda d: d.update(blocksize="big")), "key 'blocksize': expected int"),
        ("config.json", lambda p: _edit_json(p, lambda d: d.update(n_outputs=True)), "key 'n_outputs': expected int"),
        ("config.json", lambda p: _edit_json(p, lambda d: d.pop("in_channels")), "key 'in_channels' missing"),
        ("config.json", lambda p: _edit_json(p, lambda d: d["model"].update(bogus=1)), "model.bogus: unknown key"),
        ("config.json", lambda p: _edit_json(p, lambda d: d["model"].update(kernel_width="wide")), "model.kernel_width"),
        ("scaler.json", lambda p: _edit_json(p, lambda d: d["scaling"].update(kind="bogus")), "key 'scaling.kind': 'bogus'"),
        ("scaler.json", lambda p: p.unlink(), "scaler.json: missing"),
        ("scaler.json", lambda p: p.write_text(json.dumps({"task": "regression", "scaling": {"kind": "minmax", "params": {"min": 1}}})), "scaling.params.max"),
        ("scaler.json", lambda p: p.write_text(json.dumps({"task": "regression", "scaling": {"kind": "standard", "params": {"mean": 0, "std": 0}}})), "scaling.params.std"),
        ("scaler.json", lambda p: p.write_text(json.dumps({"task": "classification", "classes": ["a"]})), "config.json says 'regression'"),
        ("tokenizer.json", lambda p: p.write_text("{"), "tokenizer.json: not valid JSON"),
        ("tokenizer.json", lambda p: _edit_json(p, lambda d: d.update(vocab="acgt")), "key 'vocab': expected a list"),
    ],
)
def test_bad_fold_files_name_the_file_and_key(tmp_path, exp, name, edit, expected):
    fold = fold_copy(exp, tmp_path)
    edit(fold / name)
    infer(exp, "predict", tmp_path / "o", "--pretrainedmodel", fold).one_error(expected)


@pytest.mark.parametrize("mode", ["predict", "interpret"])
def test_empty_inference_file(tmp_path, exp, mode):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    infer(exp, mode, tmp_path / "o", "--filepath", empty).one_error(str(empty), "no records")
    assert {p.name for p in (tmp_path / "o" / mode).iterdir() if p.is_file()} <= {"config.yaml", "dataset.h5"}  # no results


# --------------------------------------------------------------------------- names of outputs; centre tokens


def test_plot_names_are_unique_and_bounded(tmp_path, exp):
    lines = exp["data"].read_text().splitlines()[:4]
    ids = ["a/b", "a_b", "x" * 240, "ümlaut id"]
    data = tmp_path / "ids.txt"
    data.write_text("".join(i + "\t" + ln.split("\t", 1)[1] + "\n" for i, ln in zip(ids, lines)))
    r = infer(exp, "interpret", tmp_path / "o", "--filepath", data, "--plotsequences", "4")
    assert r.code == 0, r.err
    pngs = sorted(p.name for p in (tmp_path / "o/interpret").glob("*.png"))
    assert len(pngs) == 4 and all(len(n) <= 80 for n in pngs), pngs
    assert pngs[0].startswith("loo_remove_000000_a_b_") and pngs[1].startswith("loo_remove_000001_a_b_")


def test_centertoken_that_occurs_nowhere_is_a_warning_with_counts(tmp_path, exp):
    r = cli("lcl", "predict", "--task", "regression", "-c", exp["cfg"], "--outputpath", tmp_path / "o", "--centertoken", "Q")
    assert r.code == 0, r.err
    n_long = sum(len(ln.split("\t")[5].split(",")) > 64 for ln in exp["data"].read_text().splitlines())
    assert n_long > 0
    assert f"centertoken 'Q' occurs in 0 of the {n_long} records longer than blocksize 64" in r.err
