"""Several processes through torch's launcher, gloo backend, 2 CPU processes: DistributedDataParallel
training, and predict/interpret sharded over the processes (outputs equal to one process)."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import write_config


def test_two_process_training_writes_once_and_agrees(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", settings={"training": {"batchsize": 16, "blocksize": 64, "nepochs": 2}, "environment": {"ngpus": 2, "device": "cpu"}})
    p = subprocess.run([sys.executable, "-m", "biolm", "lcl", "fine-tune", "--task", "regression", "--configfile", str(cfg)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    fold = tmp_path / "out/fine-tune/0"
    assert (fold / "pytorch_model.bin").exists()
    logs = sorted(p.name for p in (tmp_path / "out/fine-tune/logs").iterdir())
    assert any("rank1" in n for n in logs) and any("rank1" not in n for n in logs)
    state = json.loads((fold / "trainer_state.json").read_text())
    assert len(state["history"]) == 2
    w = torch.load(fold / "pytorch_model.bin", weights_only=True)
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
    # the summary table is printed once (rank 0 only)
    assert p.stdout.count("outputs:") == 1


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".yaml")


@pytest.fixture(scope="module")
def pca_model(tmp_path_factory, rna_file):
    """A tiny pca model, 7 short sequences and a variants table (substitutions and indels)."""
    from biolm.core.runner import run

    tmp = tmp_path_factory.mktemp("shard")
    rows = [line.split("\t") for line in rna_file.read_text().splitlines()[:7]]
    for c in rows:
        c[5] = ",".join(c[5].split(",")[:30])
    small = tmp / "small.txt"
    small.write_text("".join("\t".join(c) + "\n" for c in rows))
    variants = tmp / "v.tsv"
    variants.write_text("".join(f"{c[0]}\t{3 + k}\t{c[5].split(',')[2 + k]}\t{'g,g' if k % 2 else '-'}\n" for k, c in enumerate(rows)))
    cfg = write_config(tmp / "c.yaml", rna_file, tmp / "out", inference_model={"pretrainedmodel": str(tmp / "out/fine-tune/0")}, settings={"training": {"batchsize": 4, "blocksize": 32, "nepochs": 1}}, model={"n_components": 4})
    run("pca", "fine-tune", task="regression", configfile=cfg, quiet=True)
    return tmp, cfg, small, variants


FLAGS = {"inference_model.saveembeddings": "--saveembeddings", "looscores.handletokens": "--handletokens", "looscores.plotsequences": "--plotsequences", "inference_source.variants.filepath": "--variants"}


def _same_as_one_process(tmp, cfg, small, name, mode, values):
    """Run ``mode`` in one process (in-process) and in 2 gloo processes (the CLI relaunching
    itself); every output file must be the same."""
    import pickle

    import h5py
    import numpy as np

    from biolm.core.runner import run

    one = run("pca", mode, task="regression", configfile=cfg, quiet=True, cli_values={"inference_source.filepath": str(small), "inference_model.outputdir": f"one_{name}", **values}).modedir
    argv = [sys.executable, "-m", "biolm", "pca", mode, "--task", "regression", "--configfile", str(cfg), "--filepath", str(small), "--outputdir", f"two_{name}", "--ngpus", "2", "--device", "cpu"]
    for key, value in values.items():
        argv += [FLAGS[key]] if value is True else [FLAGS[key], str(value)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("outputs:") == 1
    two = tmp / "out" / f"two_{name}"
    assert any("rank1" in q.name for q in (two / "logs").iterdir())
    assert _files(one) == _files(two) and not (two / ".parts").exists()
    # the same rows in the same order; numbers equal up to float rounding (torchrun's workers run
    # one thread each, the in-process run two: a reduction may round differently)
    for f in _files(one):
        if f.endswith(".csv"):
            a, b = ((one / f).read_text().splitlines(), (two / f).read_text().splitlines())
            assert len(a) == len(b) and a[0] == b[0], f
            for ra, rb in zip(a[1:], b[1:]):
                for x, y in zip(ra.split(","), rb.split(",")):
                    assert x == y or abs(float(x) - float(y)) <= 1e-5 * max(1.0, abs(float(x))), (f, ra, rb)
        elif f.endswith(".h5") and f != "dataset.h5":
            with h5py.File(one / f) as a, h5py.File(two / f) as b:
                assert sorted(a) == sorted(b)
                for k in a:
                    x, y = a[k][:], b[k][:]
                    assert x.dtype == y.dtype and x.shape == y.shape, (f, k)
                    assert np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y), (f, k)
        elif f.endswith(".pkl"):
            with open(one / f, "rb") as fa, open(two / f, "rb") as fb:
                ea, eb = pickle.load(fa), pickle.load(fb)
            assert len(ea) == len(eb) == 7 and all(np.allclose(u.values, v.values, rtol=1e-5, atol=1e-6) and list(u.data) == list(v.data) for u, v in zip(ea, eb))
    return one


def test_two_process_saturation_scan_equals_one_process(pca_model):
    tmp, cfg, small, _ = pca_model
    one = _same_as_one_process(tmp, cfg, small, "saturate", "interpret", {"looscores.handletokens": "saturate", "looscores.plotsequences": 5})
    assert {"loo_scores_saturate.csv", "loo_scores_saturate.pkl", "ism.h5"} <= set(_files(one))


@pytest.mark.slow
def test_two_process_predict_and_variants_equal_one_process(pca_model):
    tmp, cfg, small, variants = pca_model
    assert "embeddings.h5" in _files(_same_as_one_process(tmp, cfg, small, "predict", "predict", {"inference_model.saveembeddings": True}))
    _same_as_one_process(tmp, cfg, small, "variants", "interpret", {"looscores.handletokens": "variants", "inference_source.variants.filepath": str(variants)})
