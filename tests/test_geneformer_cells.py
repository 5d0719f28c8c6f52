"""geneformer reads ``.h5ad`` files through core's shared cells reader: the data-source keys
``layer``, ``genecolumn`` and ``weightcolumn`` work for both of its vocabularies.

Oracle: a file whose raw counts sit in ``layers/counts`` (``X`` holds unrelated values) and whose
gene ids sit in a ``var`` column (the index holds other names) tokenizes exactly like the plain
file it was written from, and its per-cell weights reach the fine-tuning store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import yaml

from biolm.core.errors import DataError
from biolm.core.exampledata import write_expression_example
from biolm.core.h5ad import H5adReader, write_h5ad
from biolm.core.runner import run
from biolm.core.schema import FineTuningSource
from biolm.core.store import Store
from biolm.plugins.geneformer.dictionary_tokenizer import DictionaryTokenizer
from biolm.plugins.geneformer.gene_dictionaries import load_dictionaries
from biolm.plugins.geneformer.tokenizer_hooks import encode, load

DICTIONARIES = Path(__file__).resolve().parents[1] / "exampleconfigs" / "data" / "geneformer"
LOG = logging.getLogger("test")
L = 16

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``plain``: the example file; ``moved``: the same cells with counts in a layer, gene names
    and Ensembl ids in var columns, and an obs column of weights."""
    tmp = tmp_path_factory.mktemp("cells")
    plain = write_expression_example(tmp / "plain.h5ad", n_cells=90, n_genes=60, seed=1)
    r = H5adReader(plain)
    counts = r.read_all()
    weights = np.round(np.random.default_rng(0).uniform(0.5, 2.0, r.n_obs), 3)
    obs = {c: r.obs_column(c) for c in ("cell_type", "split", "marker_score", "n_counts")}
    var = {"symbol": r.var_names, "ens": r.var_column("ensembl_id")}
    moved = tmp / "moved.h5ad"
    noise = np.random.default_rng(1).random(counts.shape).astype(np.float32)  # not counts: X must not be read
    write_h5ad(moved, noise, [f"other{j}" for j in range(r.n_vars)], r.obs_names, obs={**obs, "w": weights}, categorical={"cell_type", "split"}, var=var)
    with h5py.File(moved, "r+") as f:
        f["layers"].create_dataset("counts", data=counts).attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    return SimpleNamespace(tmp=tmp, plain=plain, moved=moved, weights=weights, names=list(r.obs_names))


def _moved_source(files, genecolumn):
    return FineTuningSource(filepath=str(files.moved), layer="counts", genecolumn=genecolumn, labelcolumn="marker_score", splitcolumn="split", weightcolumn="w")


def test_fine_tune_reads_layer_genecolumn_and_weightcolumn(files):
    """Fitted medians: tokenizer learned on the plain file, fine-tuned (regression) on the moved one."""
    cfg = {
        "outputpath": str(files.tmp / "out"),
        "tokenizing and pre-training data source": {"filepath": str(files.plain)},
        "fine-tuning data source": {"filepath": str(files.moved), "layer": "counts", "genecolumn": "symbol", "weightcolumn": "w", "labelcolumn": "marker_score", "splitcolumn": "split", "devsplits": [4], "testsplits": [5]},
        "tokenization": {"encoding": "generank"},
        "settings": {"environment": {"device": "cpu"}, "training": {"batchsize": 16, "blocksize": L, "nepochs": 1}},
        "model": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
    }
    path = files.tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run("geneformer", "tokenize", configfile=path, quiet=True)
    ft = run("geneformer", "fine-tune", task="regression", configfile=path, quiet=True)
    store = Store(ft.modedir / "dataset.h5")
    assert list(store.ids) == files.names
    assert [float(w) for w in store.weights] == files.weights.tolist()
    tok = load(files.tmp / "out" / "tokenizer.json")
    plain, _ = encode(tok, FineTuningSource(filepath=str(files.plain), labelcolumn="marker_score"), SimpleNamespace(blocksize=L), LOG, "float")
    plain = list(plain)
    assert len(plain) == len(store) and all(r.weight is None for r in plain)
    assert all(np.array_equal(store.get(i)[0], r.ids) for i, r in enumerate(plain))
    assert (ft.modedir / "0" / "test_results.json").exists()


def test_dictionary_tokenizer_reads_layer_and_genecolumn(files):
    """Geneformer's dictionaries: an unset genecolumn means the tokenizer's ensemblcolumn
    (``ensembl_id``); the data source's genecolumn overrides it, ``layer`` picks the counts."""
    tok = DictionaryTokenizer.from_dictionaries(load_dictionaries(DICTIONARIES))
    want = [c.gene_ids for c in tok.cells(str(files.plain), tok.genes_read(L))]
    records, options = encode(tok, _moved_source(files, "ens"), SimpleNamespace(blocksize=L), LOG, "float")
    records = list(records)
    assert [r.id for r in records] == files.names and options["layer"] == "counts" and options["genecolumn"] == "ens"
    assert all(np.array_equal(r.ids, w) for r, w in zip(records, want, strict=True))
    assert [float(r.weight) for r in records] == files.weights.tolist()
    with pytest.raises(DataError, match=r"no var column 'ensembl_id' .*model.ensemblcolumn.*genecolumn"):
        encode(tok, _moved_source(files, None), SimpleNamespace(blocksize=L), LOG, "float")
