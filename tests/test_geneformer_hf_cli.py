"""A published Geneformer checkpoint through the ``biolm`` command: fine-tune from the tiny V2
fixture checkpoint, predict with Geneformer's embeddings and interpret with Geneformer's deletion,
after the checkpoint folder is gone (a fine-tuned model brings everything it needs). The example
configs are run in tests/test_geneformer_examples.py.

Fine-tuning runs one epoch at learning rate 0, so the encoder stays the checkpoint's and predict's
embeddings must equal the ``transformers`` reference of the fixtures.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from biolm.core.hookspecs import Encoding
from biolm.core.modelio import load_fold
from biolm.core.plugins import get_registry
from biolm.plugins.geneformer.deletion import cosine_shifts
from biolm.plugins.geneformer.tokenizer_hooks import make_input

FIX = Path(__file__).parent / "fixtures" / "geneformer_hf"
ATOL = 1e-5


def _biolm(*args: str) -> None:
    """``biolm ARGS`` through the command-line layer, in this process (no interpreter start-up)."""
    from typer.testing import CliRunner

    from biolm.cli.app import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def v2(tmp_path_factory, one_thread):
    """fine-tune (lr 0) -> the checkpoint folder removed -> predict (embeddings) -> interpret."""
    tmp = tmp_path_factory.mktemp("gf_v2")
    ckpt = tmp / "release" / "Geneformer-V2-tiny"
    shutil.copytree(FIX / "checkpoints" / "v2_like_safetensors", ckpt)
    (tmp / "release" / "geneformer").mkdir()
    for p in (FIX / "geneformer_dicts").glob("*_gc104M.pkl"):
        shutil.copy(p, tmp / "release" / "geneformer")
    data = str(FIX / "data" / "cells.h5ad")
    cfg = {
        "outputpath": str(tmp / "out"),
        "fine-tuning data source": {"filepath": data, "labelcolumn": "cell_type", "splitcolumn": "split", "devsplits": ["valid"], "testsplits": ["test"]},
        "inference data source": {"filepath": data, "labelcolumn": "cell_type"},
        "inference model": {"pretrainedmodel": str(tmp / "out" / "fine-tune"), "saveembeddings": True},
        "settings": {"environment": {"device": "cpu"}, "training": {"batchsize": 8, "blocksize": 64, "nepochs": 1, "lr": 0.0}},
        "looscores": {"handletokens": "remove", "plotsequences": 1},
        "model": {"pretrained": str(ckpt)},
    }
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    _biolm("--quiet", "geneformer", "fine-tune", "--task", "classification", "--configfile", str(path))
    shutil.rmtree(tmp / "release")  # predict and interpret must not need the checkpoint any more
    _biolm("--quiet", "geneformer", "predict", "--task", "classification", "--configfile", str(path))
    _biolm("--quiet", "geneformer", "interpret", "--task", "classification", "--configfile", str(path), "--inferenceonsplits", "[test]", "--splitcolumn", "split")
    return {"out": tmp / "out", "ckpt": ckpt}


def test_fine_tune_starts_from_the_checkpoint(v2):
    out = v2["out"]
    log = next((out / "fine-tune" / "logs").glob("*.log")).read_text()
    assert "Geneformer V2 dictionaries" in log and "cells framed by <cls> ... <eos>" in log
    assert f"starting from pre-trained weights in {v2['ckpt']}" in log and "pre-trained weights: loaded 37" in log
    assert "40 of 40 cells tokenized" in log and "120 of 150 columns in the Geneformer vocabulary, 30 dropped" in log
    meta = json.loads((out / "fine-tune" / "0" / "config.json").read_text())
    arch = meta["architecture"]
    assert meta["blocksize"] == 64 and arch["max_position_embeddings"] == 64 and arch["vocab_size"] == 124
    assert (arch["cls_token_id"], arch["eos_token_id"], arch["hidden_dropout_prob"]) == (2, 3, 0.1)
    assert json.loads((out / "tokenizer.json").read_text())["version"] == "V2"


def test_predict_embeddings_equal_geneformers(v2):
    """Geneformer's default V2 embedding (<cls>, emb_layer -1) of every cell, as transformers gives it."""
    ref = np.load(FIX / "reference" / "v2_like.npz")
    with h5py.File(v2["out"] / "predict" / "embeddings.h5") as f:
        ids = [s.decode() for s in f["ids"][:]]
        emb = f["fold_0"][:]
    assert ids == [f"cell_{i:03d}" for i in ref["cell_index"]]
    assert np.abs(emb - ref["cell_emb_cls_layer_m1"]).max() <= ATOL
    preds = _rows(v2["out"] / "predict" / "test_predictions.csv")
    assert len(preds) == 40 and {p["label"] for p in preds} == {"B cell", "T cell", "monocyte"}


def test_interpret_reports_loo_and_geneformer_shift(v2):
    """Each row: biolm's loo (change of the predicted class's probability) and Geneformer's cosine
    similarity for deleting that gene from the truncated cell; both recomputed here from the model."""
    out = v2["out"]
    with open(out / "interpret" / "loo_scores_remove.csv") as fh:
        header = fh.readline().strip().split(",")
    assert header[-3:] == ["loo", "loo_true_class", "geneformer_cos_sim"]
    rows = _rows(out / "interpret" / "loo_scores_remove.csv")
    fold = load_fold(out / "fine-tune" / "0", get_registry())
    tok, model = fold.tokenizer, fold.model.eval()
    cell = rows[0]["sequence"]
    mine = [r for r in rows if r["sequence"] == cell]
    genes = np.array([tok.token_dict[r["token"]] for r in mine])
    assert len(mine) == 62 and [int(r["start_offset"]) for r in mine] == list(range(62))  # the cell is truncated: <cls> + 62 + <eos>

    def inp(g):
        t = torch.as_tensor(g)[None]
        return make_input(tok, {"ids": t, "mods": torch.zeros(1, len(g), 0), "lengths": torch.tensor([len(g)])}, Encoding(64))

    with torch.no_grad():
        base_out, h_base = model.outputs_and_hidden(inp(genes))
        p_base = torch.softmax(base_out, -1)[0]
        cls = int(p_base.argmax())
        for j in (0, 7, 61):
            deleted = np.delete(genes, j)
            out_j, h_j = model.outputs_and_hidden(inp(deleted))
            cos, _ = cosine_shifts(h_base[0], 64, h_j, torch.tensor([[j + 1]]), "cls")
            assert float(mine[j]["geneformer_cos_sim"]) == pytest.approx(float(cos[0]), abs=1e-5)
            loo = float(torch.softmax(out_j, -1)[0, cls] - p_base[cls])
            assert float(mine[j]["loo"]) == pytest.approx(loo, abs=1e-5)
    sims = np.array([float(r["geneformer_cos_sim"]) for r in rows])
    assert np.all(sims <= 1 + 1e-6) and (1 - sims).max() > 1e-3 and len(set(sims)) > len(sims) // 2


def test_two_starting_points_are_refused(tmp_path):
    """model: pretrained and settings: training: pretrainedweights both name starting weights."""
    from typer.testing import CliRunner

    from biolm.cli.app import app

    cfg = {
        "outputpath": str(tmp_path / "out"),
        "fine-tuning data source": {"filepath": str(FIX / "data" / "cells.h5ad"), "labelcolumn": "cell_type", "splitcolumn": "split", "devsplits": ["valid"], "testsplits": ["test"]},
        "settings": {"environment": {"device": "cpu"}, "training": {"blocksize": 64, "nepochs": 1, "pretrainedweights": str(FIX / "checkpoints" / "v2_like_bin" / "pytorch_model.bin")}},
        "model": {"pretrained": str(FIX / "checkpoints" / "v2_like_safetensors"), "dictionaries": str(FIX / "geneformer_dicts")},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["geneformer", "fine-tune", "--task", "classification", "--configfile", str(path)])
    assert result.exit_code == 2
    assert "settings.training.pretrainedweights: the model section already names the weights to start from" in result.output
