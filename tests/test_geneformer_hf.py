"""Published Geneformer checkpoints in biolm: parity with ``transformers`` + Geneformer (golden
fixtures), through the plugin's own loaders.

Fixtures (``fixtures/geneformer_hf/``, see README.md there): tiny V1-like and V2-like checkpoints
in both weight formats, Geneformer's dictionaries, ``data/cells.h5ad`` and the reference outputs
computed with ``transformers`` 5.24 / Geneformer's code paths. Tolerances are the fixtures':
tokens exact, hidden states and embeddings 1e-5, logits 5e-5, cosine similarities 1e-5.

The path under test is the one ``biolm geneformer fine-tune/predict/interpret`` takes: the
``generank`` tokenizer hooks (fit with ``model: pretrained``, encode, make_input), the model built
by ``ModelSpec.build`` and started by ``load_pretrained``, its ``embed``, core's ``remove``
perturbation and the plugin's deletion cosine. Also: a malicious dictionary is refused, damaged
weight files and unsupported configs fail with one clean line (every kind of file damage:
tests/test_weight_files.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from biolm.core.errors import BiolmError, DataError, FileFormatError
from biolm.core.h5ad import write_h5ad
from biolm.core.hookspecs import Encoding, ModelInfo
from biolm.core.perturb import perturb
from biolm.core.safe_pickle import UnsafePickleError
from biolm.core.schema import InferenceSource
from biolm.core.weight_files import read_safetensors, write_safetensors
from biolm.plugins.geneformer import GeneformerSchema
from biolm.plugins.geneformer.bert import GeneformerEncoder, GeneformerMLM
from biolm.plugins.geneformer.checkpoint_config import read_checkpoint_config
from biolm.plugins.geneformer.deletion import cosine_shifts
from biolm.plugins.geneformer.dictionary_tokenizer import DictionaryTokenizer
from biolm.plugins.geneformer.gene_dictionaries import GeneformerDictionaries, dictionary_paths, load_dictionaries
from biolm.plugins.geneformer.task_models import build, load_pretrained
from biolm.plugins.geneformer.tokenizer_hooks import encode, fit, load, make_input
from biolm.plugins.geneformer.weights_import import load_checkpoint
from test_weight_files import Evil, damaged_bin, damaged_safetensors

FIX = Path(__file__).parent / "fixtures" / "geneformer_hf"
DATA = FIX / "data" / "cells.h5ad"
VERSIONS = ("v1", "v2")
FORMATS = ("safetensors", "bin")
SIZE = 64  # the fixtures' model input size (= their max_position_embeddings)
ATOL_HIDDEN, ATOL_LOGITS, ATOL_COS = 1e-5, 5e-5, 1e-5
LOG = logging.getLogger("test_geneformer_hf")

pytestmark = pytest.mark.usefixtures("one_thread")


def _ckpt(v: str, fmt: str = "safetensors") -> Path:
    return FIX / "checkpoints" / f"{v}_like_{fmt}"


def _cfg(v: str, fmt: str = "safetensors", **model) -> Any:
    """The parts of a run's config the tokenizer and model read."""
    from types import SimpleNamespace

    schema = GeneformerSchema(pretrained=str(_ckpt(v, fmt)), dictionaries=str(FIX / "geneformer_dicts"), **model)
    return SimpleNamespace(model=schema, seed=0, tokenization=SimpleNamespace(samplesize=None), settings=SimpleNamespace(training=SimpleNamespace(blocksize=SIZE)))


def _tokenize(v: str, size: int = SIZE):
    """``(tokenizer, records)`` of the fixture cells through the tokenizer hooks."""
    tok = fit(InferenceSource(filepath=str(DATA)), _cfg(v), LOG)
    records, _ = encode(tok, InferenceSource(filepath=str(DATA)), Encoding(size), LOG, "none")
    return tok, list(records)


def _batch(tok, genes: list[np.ndarray], size: int = SIZE) -> dict:
    """Stored gene ids of cells -> the model input, as the core's batches make it."""
    n = max(len(g) for g in genes)
    ids = torch.full((len(genes), n), -1, dtype=torch.long)
    for i, g in enumerate(genes):
        ids[i, : len(g)] = torch.as_tensor(np.asarray(g, dtype=np.int64))
    lengths = torch.tensor([len(g) for g in genes])
    return make_input(tok, {"ids": ids, "mods": torch.zeros(len(genes), n, 0), "lengths": lengths}, Encoding(size))


def _model(v: str, fmt: str = "safetensors", **model):
    """The fine-tune model as fine-tune builds and starts it from the checkpoint (eval mode)."""
    cfg = _cfg(v, fmt, **model)
    tok = fit(InferenceSource(filepath=str(DATA)), cfg, LOG)
    m = build(cfg.model, ModelInfo(task="classification", n_outputs=3, in_channels=len(tok.vocab), blocksize=SIZE, tokenizer=tok))
    report = load_pretrained(m, _ckpt(v, fmt))
    return m.eval(), report


@pytest.fixture(scope="module")
def ref():
    return {v: dict(np.load(FIX / "reference" / f"{v}_like.npz")) for v in VERSIONS}


@pytest.fixture(scope="module")
def tokenized():
    return {v: _tokenize(v) for v in VERSIONS}


@pytest.fixture(scope="module")
def checkpoints():
    return {(v, fmt): load_checkpoint(_ckpt(v, fmt)) for v in VERSIONS for fmt in FORMATS}


def _one_line_error(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    assert isinstance(exc, BiolmError)
    return msg


def _max_diff(a, b, mask=None) -> float:
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float((d[mask] if mask is not None else d).max())


# ============================================================================ dictionaries
def test_malicious_dictionary_is_refused_by_the_tokenizer(tmp_path):
    """A tampered median dictionary in a release folder: tokenize stops with one line, nothing runs."""
    shutil.copytree(FIX / "geneformer_dicts", tmp_path / "d")
    sentinel = tmp_path / "pwned"
    target = tmp_path / "d" / "gene_median_dictionary_gc104M.pkl"
    target.write_bytes(pickle.dumps({"ENSG1": Evil(str(sentinel))}))
    cfg = _cfg("v2")
    cfg.model.dictionaries = str(tmp_path / "d")
    with pytest.raises(UnsafePickleError) as ei:
        fit(InferenceSource(filepath=str(DATA)), cfg, LOG)
    assert str(target) in _one_line_error(ei.value)
    assert not sentinel.exists()



def test_dictionary_discovery_and_version_choice(tmp_path):
    d1, d2 = (load_dictionaries(FIX / "geneformer_dicts", V) for V in ("V1", "V2"))
    assert d1.version == "V1" and not d1.special_tokens
    assert d2.version == "V2" and d2.special_tokens and (d2.cls_token_id, d2.eos_token_id) == (2, 3)
    assert d1.vocab_size == 122 and d2.vocab_size == 124
    # both generations in one folder: chosen by the checkpoint's vocab_size
    assert load_dictionaries(FIX / "geneformer_dicts", vocab_size=122).version == "V1"
    assert load_dictionaries(FIX / "geneformer_dicts", vocab_size=124).version == "V2"
    with pytest.raises(DataError, match="both V1 and V2"):
        load_dictionaries(FIX / "geneformer_dicts")
    with pytest.raises(DataError, match="no Geneformer V1 dictionaries"):
        dictionary_paths(FIX / "data", "V1")
    # through the tokenizer: the checkpoint decides, and a mismatch is refused
    assert [fit(InferenceSource(filepath=str(DATA)), _cfg(v), LOG).version for v in VERSIONS] == ["V1", "V2"]
    folder = tmp_path / "model"
    shutil.copytree(_ckpt("v2"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, vocab_size=130)))
    bad = _cfg("v2")
    bad.model.pretrained = str(folder)
    with pytest.raises(DataError, match="cannot tell V1 from V2"):
        fit(InferenceSource(filepath=str(DATA)), bad, LOG)
    bad.model.dictionaries = str(FIX / "geneformer_dicts" / "gene_dictionaries_30m")
    with pytest.raises(DataError, match="another Geneformer version"):
        fit(InferenceSource(filepath=str(DATA)), bad, LOG)
    # without model.dictionaries they are looked for beside the checkpoint (not there here)
    from biolm.core.errors import ConfigError

    alone = _cfg("v2")
    alone.model.dictionaries = None
    with pytest.raises(ConfigError, match="model.dictionaries: no Geneformer dictionaries .* set it to the folder"):
        fit(InferenceSource(filepath=str(DATA)), alone, LOG)
    (tmp_path / "geneformer").mkdir()
    for p in (FIX / "geneformer_dicts").glob("*_gc104M.pkl"):
        shutil.copy(p, tmp_path / "geneformer")
    alone.model.pretrained = str(folder)  # tmp_path/model, beside tmp_path/geneformer
    (folder / "config.json").write_text(json.dumps(cfg))
    assert fit(InferenceSource(filepath=str(DATA)), alone, LOG).version == "V2"


# ============================================================================ tokenizer
@pytest.mark.parametrize("v", VERSIONS)
def test_token_ids_match_geneformer(ref, tokenized, v, tmp_path):
    """Tokens through fit -> encode -> (store) -> make_input equal Geneformer's input_ids."""
    z = ref[v]
    tok, records = tokenized[v]
    assert [r.id for r in records] == [f"cell_{i:03d}" for i in z["cell_index"]]
    inp = _batch(tok, [r.ids for r in records])
    ids, mask = inp["input_ids"].numpy(), inp["attention_mask"].numpy()
    assert mask.sum(1).tolist() == z["lengths"].tolist()
    np.testing.assert_array_equal(np.where(mask, ids, 0), z["input_ids"][:, : ids.shape[1]])
    assert (z["input_ids"][:, ids.shape[1] :] == 0).all()
    np.testing.assert_array_equal(mask, z["attention_mask"][:, : ids.shape[1]].astype(bool))
    if v == "v2":
        assert all(row[0] == 2 and row[n - 1] == 3 for row, n in zip(ids, z["lengths"]))
    # the stored genes are the model input without <cls>/<eos>, and nothing more (no next gene)
    assert max(len(r.ids) for r in records) == tok.genes_read(SIZE) == (62 if v == "v2" else 64)
    # tokenizer.json holds the whole tokenizer: loaded back, it is the same
    tok.save(tmp_path / "tokenizer.json")
    tok2 = load(tmp_path / "tokenizer.json")
    assert isinstance(tok2, DictionaryTokenizer) and tok2.sha() == tok.sha() and tok2.vocab == tok.vocab
    assert _batch(tok2, [r.ids for r in records])["input_ids"].equal(inp["input_ids"])


@pytest.mark.parametrize("v", VERSIONS)
def test_full_ranking_and_scores_are_geneformers(ref, v):
    z = ref[v]
    tok = fit(InferenceSource(filepath=str(DATA)), _cfg(v), LOG)
    cells = tok.cells(str(DATA), tok.genes_read(SIZE), keep_ranked=None)
    got = list(cells)
    for j, c in enumerate(got):
        a, b = z["ranked_offsets"][j], z["ranked_offsets"][j + 1]
        np.testing.assert_array_equal(c.ranked_tokens, z["ranked_tokens_flat"][a:b])
        np.testing.assert_array_equal(c.ranked_scores, z["ranked_values_flat"][a:b])  # bit-exact
        assert c.n_expressed == b - a
    np.testing.assert_array_equal(cells.plan.slot_first_col, z["kept_gene_var_index"])
    rep = cells.report
    assert (rep.n_tokenized, rep.n_genes_kept, rep.n_genes_dropped) == (40, 120, 30)
    assert rep.n_truncated == 36 and rep.n_skipped_empty == 0
    assert rep.library_size_source == "obs column 'n_counts'"
    # chunking does not change anything
    small = list(tok.cells(str(DATA), tok.genes_read(SIZE), chunk_size=3))
    assert all(np.array_equal(a.gene_ids, b.gene_ids) for a, b in zip(small, got, strict=True))


def _toy_dicts(special: bool) -> GeneformerDictionaries:
    tokens = {"<pad>": 0, "<mask>": 1}
    if special:
        tokens.update({"<cls>": 2, "<eos>": 3})
    base = len(tokens)
    genes = ["ENSG_A", "ENSG_B", "ENSG_C", "ENSG_D"]
    tokens.update({g: base + i for i, g in enumerate(genes)})
    medians = {"ENSG_A": 1.0, "ENSG_B": 2.0, "ENSG_C": 0.5, "ENSG_D": 4.0, "ENSG_X": 1.0}
    mapping = {g: g for g in genes}
    mapping["ENSG_B_OLD"] = "ENSG_B"  # a retired id collapsed onto B
    mapping["ENSG_Y"] = "ENSG_Y"  # target outside the vocabulary: ignored
    return GeneformerDictionaries(token_dict=tokens, median_dict=medians, mapping_dict=mapping)


def test_tokenizer_collapses_filters_and_skips(tmp_path):
    # columns: A, b (lower case), C, B_OLD (collapses onto B), X (not in vocab), D
    var = ["ENSG_A", "ensg_b", "ENSG_C", "ENSG_B_OLD", "ENSG_X", "ENSG_D"]
    x = np.array(
        [
            [1, 2, 0, 3, 5, 0],  # B = 2 + 3 summed
            [0, 0, 0, 0, 7, 0],  # only a non-vocabulary gene: skipped
            [4, 0, 1, 0, 0, 8],
            [1, 1, 1, 1, 1, 1],  # filter_pass 0
        ],
        dtype=np.float32,
    )
    path = tmp_path / "toy.h5ad"
    write_h5ad(path, x, var, [f"c{i}" for i in range(4)], obs={"filter_pass": np.array([1, 1, 1, 0])})
    tok = DictionaryTokenizer.from_dictionaries(_toy_dicts(special=True), ensembl_column="index")
    cells = tok.cells(str(path), tok.genes_read(4), keep_ranked=None)
    got = list(cells)
    rep = cells.report
    assert [c.name for c in got] == ["c0", "c2"]
    assert (rep.n_skipped_empty, rep.skipped_empty, rep.n_filtered) == (1, ["c1"], 1)
    assert (rep.n_genes_dropped, rep.dropped_examples, rep.n_genes_collapsed) == (1, ["ENSG_X"], 1)
    assert rep.library_size_source.startswith("computed")
    t = tok.token_dict
    # cell 0: library 11 (all genes, X included): A 1/1, B 5/2 -> B, A
    np.testing.assert_array_equal(got[0].ranked_tokens, [t["ENSG_B"], t["ENSG_A"]])
    np.testing.assert_allclose(got[0].ranked_scores, [5 / 11 * 1e4 / 2, 1 / 11 * 1e4])
    # cell 2: library 13: A 4/1, C 1/0.5, D 8/4 -> A first, then the C/D tie (numpy's order)
    assert got[1].ranked_tokens[0] == t["ENSG_A"] and set(got[1].ranked_tokens[1:]) == {t["ENSG_C"], t["ENSG_D"]}
    # V2 input of 4 tokens: <cls> + 2 genes + <eos>
    inp = _batch(tok, [got[1].gene_ids], size=4)
    assert inp["input_ids"][0, [0, -1]].tolist() == [2, 3] and inp["input_ids"].shape == (1, 4)
    assert got[1].n_expressed == 3 and rep.n_truncated == 1
    with pytest.raises(DataError, match="no var column 'ensembl_id'"):
        DictionaryTokenizer.from_dictionaries(_toy_dicts(special=True)).cells(str(path), 2)


def test_dense_and_csr_files_give_the_same_tokens(tmp_path):
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, size=(20, 6)).astype(np.float32)
    x[3] = 0
    var = ["ENSG_A", "ENSG_B", "ENSG_C", "ENSG_D", "ENSG_X", "ENSG_B_OLD"]
    n_counts = x.sum(axis=1) + 1.0
    tok = DictionaryTokenizer.from_dictionaries(_toy_dicts(special=False), ensembl_column="index")
    got = []
    for name, mat in (("dense", x), ("csr", sp.csr_matrix(x))):
        p = tmp_path / f"{name}.h5ad"
        write_h5ad(p, mat, var, [f"c{i}" for i in range(20)], obs={"n_counts": n_counts})
        cells = tok.cells(str(p), 3, keep_ranked=None)
        got.append(list(cells))
        assert cells.report.skipped_empty == ["c3"]
    for a, b in zip(*got, strict=True):
        np.testing.assert_array_equal(a.gene_ids, b.gene_ids)
        np.testing.assert_allclose(a.ranked_scores, b.ranked_scores, rtol=1e-15)


# ============================================================================ checkpoint import
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("v", VERSIONS)
def test_hidden_states_and_logits_match_transformers(ref, tokenized, checkpoints, v, fmt):
    z, ck = ref[v], checkpoints[(v, fmt)]
    assert isinstance(ck.model, GeneformerMLM) and not ck.model.training
    rows = z["ref_cell_index"]
    tok, records = tokenized[v]
    inp = _batch(tok, [records[i].ids for i in rows])
    with torch.no_grad():
        out = ck.model(inp["input_ids"], inp["attention_mask"], output_hidden_states=True)
    m = inp["attention_mask"].numpy()
    t = m.shape[1]
    hs = torch.stack(out.hidden_states).numpy()
    assert _max_diff(hs[:, m], z["ref_hidden_states"][:, :, :t][:, m]) <= ATOL_HIDDEN
    assert _max_diff(out.logits.numpy()[m], z["ref_logits"][:, :t][m]) <= ATOL_LOGITS
    assert bool(ck.report["tied"]) == (fmt == "safetensors")  # safetensors omit the tied decoder
    assert len(ck.report["loaded"]) == 44 and not ck.report["skipped"]
    # the fine-tune model started from the same folder has the same encoder
    model, report = _model(v, fmt)
    assert len(report["loaded"]) == 37 and all(k.startswith("cls.") for k in report["skipped"])
    with torch.no_grad():
        enc = model.bert(inp["input_ids"], inp["attention_mask"]).last_hidden_state.numpy()
    assert _max_diff(enc[m], z["ref_hidden_states"][-1][:, :t][m]) <= ATOL_HIDDEN


def test_config_mapping(checkpoints):
    cfg = checkpoints[("v2", "safetensors")].config
    g = cfg.bert
    assert (g.vocab_size, g.hidden_size, g.num_hidden_layers, g.num_attention_heads) == (124, 64, 2, 4)
    assert (g.intermediate_size, g.max_position_embeddings, g.hidden_act, g.pad_token_id) == (128, 64, "relu", 0)
    assert (g.hidden_dropout_prob, g.attention_probs_dropout_prob) == (0.1, 0.1)  # the checkpoint's, not biolm's defaults
    assert cfg.architecture == "BertForMaskedLM" and cfg.head_expected is True
    model, _ = _model("v2")
    assert (model.config.cls_token_id, model.config.eos_token_id) == (2, 3)  # from the token dictionary
    assert dataclasses.replace(model.config, cls_token_id=None, eos_token_id=None) == g


def test_encoder_only_load(ref, tokenized):
    ck = load_checkpoint(_ckpt("v1"), with_head=False)
    assert isinstance(ck.model, GeneformerEncoder)
    assert any(k.startswith("cls.") for k in ck.report["skipped"])
    z = ref["v1"]
    tok, records = tokenized["v1"]
    inp = _batch(tok, [records[i].ids for i in z["ref_cell_index"]])
    with torch.no_grad():
        out = ck.model(inp["input_ids"], inp["attention_mask"])
    m = inp["attention_mask"].numpy()
    assert _max_diff(out.last_hidden_state.numpy()[m], z["ref_hidden_states"][-1][m]) <= ATOL_HIDDEN


def _model_folder(tmp_path: Path, src: str = "v2_like_safetensors") -> Path:
    dst = tmp_path / "model"
    shutil.copytree(FIX / "checkpoints" / src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_legacy_names_pooler_and_buffers_are_mapped(tmp_path):
    folder = _model_folder(tmp_path)
    sd = read_safetensors(folder / "model.safetensors")
    legacy = {}
    for k, t in sd.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[k[len("bert.") :] if k.startswith("bert.") else k] = t  # BertModel-style keys
    legacy["embeddings.position_ids"] = torch.arange(64)[None]
    legacy["pooler.dense.weight"] = torch.zeros(64, 64)
    (folder / "model.safetensors").unlink()
    torch.save(legacy, folder / "pytorch_model.bin")
    ck = load_checkpoint(folder)
    assert "bert.embeddings.position_ids" not in ck.report["loaded"]
    assert {"embeddings.position_ids", "pooler.dense.weight"} <= set(ck.report["skipped"])
    base = load_checkpoint(_ckpt("v2"))
    for (k, a), b in zip(ck.model.state_dict().items(), base.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_half_precision_weights_are_converted(tmp_path):
    folder = _model_folder(tmp_path)
    sd = read_safetensors(folder / "model.safetensors")
    write_safetensors(folder / "model.safetensors", {k: v.to(torch.bfloat16) for k, v in sd.items()}, {"format": "pt"})
    ck = load_checkpoint(folder)
    assert len(ck.report["converted"]) == 42 and ck.report["converted"][0].endswith("bfloat16")
    assert next(ck.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    "edit, key",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
        ({"model_type": "roberta"}, "model_type"),
        ({"hidden_act": "gelu_fast"}, "hidden_act"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"is_decoder": True}, "is_decoder"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"hidden_size": None}, "hidden_size"),
        ({"num_hidden_layers": "2"}, "num_hidden_layers"),
    ],
)
def test_unsupported_config_is_refused_in_one_line(tmp_path, edit, key):
    folder = _model_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    for k, val in edit.items():
        if val is None:
            del cfg[k]
        else:
            cfg[k] = val
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError) as ei:
        load_checkpoint(folder)
    msg = _one_line_error(ei.value)
    assert msg.startswith(str(folder / "config.json")) and f"key '{key}'" in msg


def test_config_not_json(tmp_path):
    folder = _model_folder(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(FileFormatError) as ei:
        read_checkpoint_config(folder)
    assert _one_line_error(ei.value).startswith(f"not a JSON config file: {folder / 'config.json'} (")


def test_missing_unexpected_and_untied_weights(tmp_path):
    folder = _model_folder(tmp_path)
    sd = read_safetensors(folder / "model.safetensors")
    cases = {
        "missing": ({k: v for k, v in sd.items() if "layer.1.output.dense.bias" not in k}, "missing bert.encoder.layer.1.output.dense.bias"),
        "unexpected": (dict(sd, **{"bert.encoder.layer.2.output.dense.bias": torch.zeros(64)}), "unexpected bert.encoder.layer.2"),
        "untied": (dict(sd, **{"cls.predictions.decoder.weight": torch.zeros(124, 64)}), "untied decoder"),
        "shape": (dict(sd, **{"bert.embeddings.word_embeddings.weight": torch.zeros(100, 64)}), "has shape (100, 64)"),
    }
    for name, (tensors, text) in cases.items():
        write_safetensors(folder / "model.safetensors", tensors)
        with pytest.raises(DataError) as ei:
            load_checkpoint(folder)
        msg = _one_line_error(ei.value)
        assert msg.startswith(str(folder / "model.safetensors")) and text in msg, name


def test_no_weight_file(tmp_path):
    folder = _model_folder(tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(DataError, match="sharded checkpoints"):
        load_checkpoint(folder)


def test_damaged_weight_files_stop_the_import_in_one_line(tmp_path):
    """The core readers' one-line errors reach the user unchanged through the checkpoint import
    (every kind of damage: tests/test_weight_files.py)."""
    for src, name, damage, what in (("v2_like_safetensors", "model.safetensors", damaged_safetensors, "safetensors"), ("v1_like_bin", "pytorch_model.bin", damaged_bin, "PyTorch state-dict")):
        folder = tmp_path / src
        shutil.copytree(FIX / "checkpoints" / src, folder)
        path = folder / name
        path.write_bytes(damage(path.read_bytes(), tmp_path))
        with pytest.raises(FileFormatError) as ei:
            load_checkpoint(folder)
        assert _one_line_error(ei.value).startswith(f"not a {what} file: {path} (")
    assert not (tmp_path / "pwned").exists()


# ============================================================================ embeddings
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("v", VERSIONS)
def test_cell_embeddings_match_geneformer(ref, tokenized, v, fmt):
    """predict's embeddings (the fine-tune model's ``embed`` on make_input batches) for every
    emb_layer / emb_mode Geneformer offers; padded batches of 7 cells."""
    z = ref[v]
    tok, records = tokenized[v]
    modes = {"mean": "cell", "cls": "cls"} if v == "v2" else {"mean": "cell"}
    for layer, suffix in ((-1, "m1"), (0, "0")):
        assert int(z[f"emb_layer_index_{suffix}"]) == 2 + layer
        for tag, mode in modes.items():
            model, _ = _model(v, fmt, emb_layer=layer, emb_mode=mode)
            with torch.no_grad():
                emb = torch.cat([model.embed(_batch(tok, [r.ids for r in records[i : i + 7]])) for i in range(0, len(records), 7)])
            assert _max_diff(emb.numpy(), z[f"cell_emb_{tag}_layer_{suffix}"]) <= ATOL_HIDDEN, (tag, layer)
    default, _ = _model(v, fmt)  # Geneformer's defaults: emb_layer -1; cls for V2, cell for V1
    with torch.no_grad():
        emb = default.embed(_batch(tok, [r.ids for r in records]))
    assert _max_diff(emb.numpy(), z["cell_emb_cls_layer_m1" if v == "v2" else "cell_emb_mean_layer_m1"]) <= ATOL_HIDDEN


def test_the_checkpoint_bounds_the_input_length_and_its_uses():
    """blocksize may not exceed the checkpoint's positions; pre-train does not start from a
    checkpoint; a tokenizer fitted on the data cannot feed it."""
    from biolm.core.errors import ConfigError
    from biolm.plugins.geneformer.fitted_tokenizer import GeneRankTokenizer
    from biolm.plugins.geneformer.tokenizer_hooks import GenerankTokenizer

    cfg = _cfg("v2")
    tok = fit(InferenceSource(filepath=str(DATA)), cfg, LOG)

    def info(task="classification", blocksize=SIZE, tokenizer=tok):
        return ModelInfo(task=task, n_outputs=3, in_channels=len(tokenizer.vocab), blocksize=blocksize, tokenizer=tokenizer)

    assert build(cfg.model, info(blocksize=32)).config.max_position_embeddings == 64  # the checkpoint's
    with pytest.raises(ConfigError, match="settings.training.blocksize: 65 exceeds the 64 positions"):
        build(cfg.model, info(blocksize=65))
    with pytest.raises(ConfigError, match="model.pretrained: pre-train starts from random weights"):
        build(cfg.model, info(task="pre-train"))
    fitted = GenerankTokenizer(GeneRankTokenizer(["a", "b", "c"], np.ones(3, np.float32)))
    with pytest.raises(ConfigError, match="fitted on your data: re-run tokenize"):
        build(cfg.model, info(tokenizer=fitted))
    scratch = build(GeneformerSchema(dictionaries=cfg.model.dictionaries, hidden_size=32, num_attention_heads=2), info(blocksize=16))
    assert (scratch.config.max_position_embeddings, scratch.config.vocab_size, scratch.config.cls_token_id) == (16, 124, 2)


def test_embedding_options_are_checked():
    from biolm.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.emb_mode.*<cls>"):
        _model("v1", emb_mode="cls")
    with pytest.raises(ConfigError, match="model.emb_layer.*-2, 0"):
        _model("v1", emb_layer=-3)


# ============================================================================ in-silico deletion
@pytest.mark.parametrize("v", VERSIONS)
def test_in_silico_deletion_matches_geneformer(ref, tokenized, v):
    """Geneformer deletes a gene set from the truncated cell: core's ``remove`` perturbation on the
    stored ids (once per gene) and make_input give its perturbed inputs exactly, and the plugin's
    cosine its recorded shift (V1: mean per-position cosine; V2: <cls> cosine)."""
    z = ref[v]
    tok, records = tokenized[v]
    model, _ = _model(v)
    genes = ["ENSG00000000023", "ENSG00000000086", "ENSG00000000141"]
    tokens = [tok.token_dict[g] for g in genes]
    np.testing.assert_array_equal(tokens, z["isp_gene_tokens"])
    offset = 1 if v == "v2" else 0
    for j, cell in enumerate(z["isp_cell_index"]):
        stored = torch.as_tensor(records[cell].ids, dtype=torch.long)
        positions = [int(np.flatnonzero(records[cell].ids == t)[0]) for t in tokens]
        np.testing.assert_array_equal(np.asarray(positions) + offset, z["isp_perturb_index"][j])
        ids, n = stored, len(stored)
        for p in sorted(positions, reverse=True):
            ids, _, lengths = perturb(ids, torch.zeros(len(ids), 0), n, np.array([p]), "remove")
            ids, n = ids[0], int(lengths[0])
        pert = _batch(tok, [ids[:n].numpy()])
        n_p = z["isp_lengths"][j]
        np.testing.assert_array_equal(pert["input_ids"][0].numpy()[:n_p], z["isp_input_ids"][j, :n_p])
        base = _batch(tok, [records[cell].ids])
        with torch.no_grad():
            _, h_pert = model.outputs_and_hidden(pert)
            _, h_base = model.outputs_and_hidden(base)
        assert _max_diff(h_pert[0, :n_p].numpy(), z["isp_perturbed_hidden_state_layer_m1"][j, :n_p]) <= ATOL_HIDDEN
        removed = torch.as_tensor(z["isp_perturb_index"][j])[None]
        cos, per_position = cosine_shifts(h_base[0], int(base["attention_mask"].sum()), h_pert, removed, model.emb_mode)
        assert abs(float(cos[0]) - float(z["isp_cos_sim"][j])) <= ATOL_COS
        assert _max_diff(per_position[0].numpy(), z["isp_gene_cos_sims"][j, :n_p]) <= ATOL_COS


def test_pretraining_masks_genes_only_with_v2_tokens(tokenized):
    """Masked-gene pre-training on Geneformer's V2 tokens: <cls>/<eos>/<pad> are never selected and
    random replacements are genes (ids >= 4), never special tokens."""
    from biolm.plugins.geneformer.bert import gene_positions
    from biolm.plugins.geneformer.pretraining import mlm_mask, pretrain_loss
    from biolm.plugins.geneformer.task_models import GeneformerPretrainModel

    tok, records = tokenized["v2"]
    inp = _batch(tok, [r.ids for r in records])
    model = GeneformerPretrainModel(_model("v2")[0].config, mlm_probability=0.5)
    cfg = model.config
    assert cfg.first_gene_id == 4
    ids, mask = inp["input_ids"], inp["attention_mask"]
    masked, labels = mlm_mask(ids, gene_positions(cfg, ids, mask), cfg.vocab_size, 0.5, generator=torch.Generator().manual_seed(0), first_gene_id=cfg.first_gene_id, mask_token_id=cfg.mask_token_id)
    scored = labels != -100
    assert scored.sum() > 100 and not scored[:, 0].any() and not scored[ids == 3].any() and not scored[~mask].any()
    changed = scored & (masked != ids) & (masked != cfg.mask_token_id)
    assert changed.any() and (masked[changed] >= 4).all()
    loss, n = pretrain_loss(model, inp, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and 0 < int(n) <= int(gene_positions(cfg, ids, mask).sum())

