"""Parity and behaviour tests for the geneformer plugin's fitted tokenizer and BERT (cellarium-ml).

Golden numbers: tests/fixtures/geneformer/ (the real cellarium-ml 0.0.15 Geneformer; README.md
there gives the formulas and the tolerances used below).
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch

from biolm.plugins.geneformer.bert import (
    MASK_TOKEN_ID,
    PAD_TOKEN_ID,
    GeneformerClassifier,
    GeneformerConfig,
    GeneformerEncoder,
    GeneformerMLM,
    mean_pool,
)
from biolm.plugins.geneformer.fitted_tokenizer import NonzeroMedianAccumulator, normalize_total
from biolm.plugins.geneformer.pretraining import mlm_mask
from biolm.plugins.geneformer.weights_import import load_hf_bert_weights
from geneformer_oracles import GeneRankTokenizer, activate_tokens, trim_padding

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "geneformer")


def _load(name):
    with np.load(os.path.join(FIX, name)) as f:
        return {k: f[k] for k in f.files}


COUNTS = _load("counts.npz")
NORM = _load("normalized.npz")
TOK = _load("tokens.npz")
OUT = _load("outputs.npz")
WEIGHTS = _load("weights.npz")
GENES = COUNTS["var_names_g"]
L = 32

# README §8
HIDDEN_TOL = dict(atol=1e-5, rtol=1e-5)
LOGIT_TOL = dict(atol=1e-4, rtol=1e-5)


def _config(**kw):
    base = dict(
        vocab_size=52,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="relu",
        max_position_embeddings=L,
    )
    base.update(kw)
    return GeneformerConfig(**base)


def _fixture_tokenizer():
    # README §9: load the stored scale rather than recompute it when checking downstream arrays
    return GeneRankTokenizer(GENES, NORM["scale_g"], max_len=L)


@pytest.fixture(scope="module")
def mlm():
    torch.manual_seed(0)
    m = GeneformerMLM(_config())
    load_hf_bert_weights(m, WEIGHTS)
    return m.eval()


def _run(model, ids, mask, **kw):
    with torch.no_grad():
        return model(torch.as_tensor(ids), torch.as_tensor(mask), **kw)


def _close(actual, expected, what, atol, rtol):
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    diff = float(np.abs(actual.astype(np.float64) - expected).max())
    assert np.allclose(actual, expected, atol=atol, rtol=rtol), f"{what}: max abs diff {diff:.3g}"
    return diff


# ============================================================================ normalisation & medians
def test_nonzero_medians_match_cellarium_bit_for_bit():
    tok = GeneRankTokenizer.fit(COUNTS["reference_counts_ng"], GENES, max_len=L)
    assert np.array_equal(tok.scale_g, NORM["scale_g"])
    assert tok.n_cells_fit == 64
    assert np.array_equal(tok.n_nonzero_g, (COUNTS["reference_counts_ng"] > 0).sum(0))
    # streamed in uneven chunks, also as (start, chunk) pairs like H5adReader.iter_chunks yields
    ref = COUNTS["reference_counts_ng"]
    chunks = [(i, ref[i : i + 7]) for i in range(0, len(ref), 7)]
    tok2 = GeneRankTokenizer.fit(iter(chunks), GENES, max_len=L)
    assert np.array_equal(tok2.scale_g, NORM["scale_g"])

    acc = NonzeroMedianAccumulator(len(GENES))
    for i in range(0, 64, 5):
        acc.update(normalize_total(torch.tensor(ref[i : i + 5], dtype=torch.float32)).numpy())
    assert acc.nbytes > 0
    median, n_nonzero = acc.finalize()
    assert np.array_equal(median, NORM["median_g"])
    assert np.array_equal(median, NORM["median_exact_g"])
    assert acc.nbytes == 0  # values are released by finalize


def test_median_definition_odd_even_and_missing_gene():
    acc = NonzeroMedianAccumulator(3)
    y = np.array([[1, 9, 0], [3, 0.3, 0], [2, 0.01, 0], [0, 0.1, 0]], dtype=np.float32)
    acc.update(y[:2])
    acc.update(y[2:])
    median, n = acc.finalize()
    assert median[0] == 2.0  # odd count: middle value
    # even count: the mean of the two middle float32 values, taken in float64
    assert median[1] == (np.float64(np.float32(0.1)) + np.float64(np.float32(0.3))) / 2
    assert median[1] != np.float64((np.float32(0.1) + np.float32(0.3)) / np.float32(2))
    assert np.isnan(median[2]) and list(n) == [3, 4, 0]
    tok = GeneRankTokenizer.fit(np.array([[1, 2, 0], [3, 1, 0]], dtype=np.float32), ["a", "b", "c"])
    assert tok.scale_g[2] == np.float32(1e6)  # README §3: NaN median -> 1/eps


def test_normalisation_matches_fixture():
    x = torch.tensor(COUNTS["counts_ng"], dtype=torch.float32)
    y = normalize_total(x)
    _close(y, NORM["x_normalize_total_ng"], "NormalizeTotal", 0, 1e-6)
    assert np.array_equal(y.numpy(), NORM["x_normalize_total_ng"])  # bit-exact with cellarium's op order
    z = _fixture_tokenizer().normalize(COUNTS["counts_ng"])
    assert z.dtype == torch.float32
    assert np.array_equal(z.numpy(), NORM["x_normalized_ng"])
    assert np.array_equal(COUNTS["counts_ng"].sum(1), NORM["total_counts_n"])


# ============================================================================ tokenisation
def test_tokens_exact():
    tok = _fixture_tokenizer()
    ids, mask = tok.encode(COUNTS["counts_ng"])
    assert ids.dtype == np.int64 and mask.dtype == np.bool_ and ids.shape == (8, L)
    assert np.array_equal(ids, TOK["input_ids"])
    assert np.array_equal(mask, TOK["attention_mask"])
    assert np.array_equal(mask.sum(1), np.minimum(TOK["n_nonzero_n"], L))
    # the refitted tokenizer gives the same tokens
    fitted = GeneRankTokenizer.fit(COUNTS["reference_counts_ng"], GENES, max_len=L)
    assert np.array_equal(fitted.encode(COUNTS["counts_ng"])[0], TOK["input_ids"])
    # README §4 example: cell 7
    assert ids[7, :8].tolist() == [27, 46, 2, 25, 35, 20, 9, 0]
    # torch in -> torch out
    tids, tmask = tok.encode(torch.tensor(COUNTS["counts_ng"], dtype=torch.float32))
    assert isinstance(tids, torch.Tensor) and torch.equal(tids, torch.from_numpy(TOK["input_ids"]))
    assert tmask.dtype == torch.bool


def test_ranking_is_robust_to_float64():
    ids, mask = _fixture_tokenizer().rank(torch.from_numpy(NORM["x_normalized_f64_ng"]), L)
    assert np.array_equal(ids.numpy(), TOK["input_ids"]) and np.array_equal(mask.numpy(), TOK["attention_mask"])


def test_sequence_length_is_min_of_genes_and_max_len():
    tok = _fixture_tokenizer()
    assert tok.encode(COUNTS["counts_ng"], max_len=100)[0].shape == (8, 50)
    assert tok.encode(COUNTS["counts_ng"], max_len=5)[0].shape == (8, 5)
    ids, mask = tok.encode(COUNTS["counts_ng"], max_len=100)
    # PADs form a suffix
    assert np.all(np.diff(mask.astype(int), axis=1) <= 0)
    assert np.all((ids == PAD_TOKEN_ID) == ~mask)


def test_ties_are_broken_by_gene_index():
    tok = GeneRankTokenizer(["a", "b", "c", "d", "e"], np.ones(5, np.float32), max_len=5)
    ids, mask = tok.encode(np.array([[1, 3, 3, 0, 3]], np.float32))
    assert ids.tolist() == [[3, 4, 6, 2, 0]]
    assert mask.tolist() == [[True, True, True, True, False]]


def test_cellarium_unit_test_deletion_example():
    # cellarium tests/test_geneformer.py: x = [[4, 3, 2, 1]], genes a b c d, delete "c"
    tok = GeneRankTokenizer(["a", "b", "c", "d"], np.ones(4, np.float32), max_len=4)
    ids, mask = tok.encode(np.array([[4, 3, 2, 1]], np.float32), feature_deletion=["c"])
    assert ids.tolist() == [[2, 3, 5, 0]]
    assert mask.tolist() == [[True, True, True, False]]


def test_deletion_tokens_exact():
    tok = _fixture_tokenizer()
    x = COUNTS["counts_ng"].copy()
    ids, mask = tok.encode(x, feature_deletion=[str(OUT["del_gene"])])
    assert np.array_equal(ids, OUT["del_input_ids"]) and np.array_equal(mask, OUT["del_attention_mask"])
    assert np.array_equal(x, COUNTS["counts_ng"])  # unlike cellarium, the input is not modified
    for n, gene in enumerate(OUT["delcell_genes"]):
        ids, mask = tok.encode(COUNTS["counts_ng"][n : n + 1], feature_deletion=[str(gene)])
        assert np.array_equal(ids[0], OUT["delcell_input_ids"][n])
        assert np.array_equal(mask[0], OUT["delcell_attention_mask"][n])
    # cell 6 (42 genes): GENE0016 (token 18) enters at the end
    assert OUT["del_input_ids"][6, -1] == 18


def _core_variants(ids_tok: np.ndarray, cell: int, positions, how: str) -> np.ndarray:
    """Variants of one cell through interpret's own tensor perturbation (``biolm.core.interpret.perturb``)
    on the stored form (gene index, -1 = padding), turned back into model tokens of length L."""
    from biolm.core.perturb import perturb

    row = ids_tok[cell]
    stored = torch.as_tensor(np.where(row > 0, row - 2, -1))
    n = int((row > 0).sum())
    out, _, _ = perturb(stored, torch.zeros(len(stored), 0), n, np.asarray(positions), how)
    out = out[:, :L]
    return torch.where(out >= 0, out + 2, torch.zeros_like(out)).numpy()


def test_deletion_variants_equal_retokenising():
    tok = _fixture_tokenizer()
    ids_ext, _ = tok.encode(COUNTS["counts_ng"], max_len=L + 1)
    # the fixture's per-cell deletions sit at position 2 of each cell
    for cell in range(8):
        assert np.array_equal(_core_variants(ids_ext, cell, [2], "remove")[0], OUT["delcell_input_ids"][cell])
    # every position of the truncated cell 6 and the padded cell 1, against the tokenizer
    for cell in (1, 6):
        n_valid = int((ids_ext[cell, :L] != 0).sum())
        variants = _core_variants(ids_ext, cell, range(n_valid), "remove")
        for p in range(n_valid):
            gene = tok.decode(ids_ext[cell, p : p + 1])[0]
            ref, _ = tok.encode(COUNTS["counts_ng"][cell : cell + 1], feature_deletion=[gene])
            assert np.array_equal(variants[p], ref[0]), (cell, p)
    # with exactly L columns a PAD enters instead of the next gene
    short = _core_variants(TOK["input_ids"], 6, [0], "remove")
    assert short[0, -1] == PAD_TOKEN_ID
    # a slice of positions gives the same variants
    full = _core_variants(ids_ext, 6, range(L), "remove")
    assert np.array_equal(_core_variants(ids_ext, 6, [2, 5], "remove"), full[[2, 5]])


def test_activation_variants_equal_retokenising():
    tok = _fixture_tokenizer()
    ids, _ = tok.encode(COUNTS["counts_ng"])
    for cell in (3, 6, 7):
        variants = _core_variants(ids, cell, range(4), "activate")
        assert variants.shape == (4, L)
        for p in range(4):
            gene = tok.decode(ids[cell, p : p + 1])[0]
            ref, _ = tok.encode(COUNTS["counts_ng"][cell : cell + 1], feature_activation=[gene])
            assert np.array_equal(variants[p], ref[0]), (cell, p)


def test_activation_semantics():
    tok = _fixture_tokenizer()
    x = COUNTS["counts_ng"]
    base, _ = tok.encode(x)
    unexpressed = str(GENES[np.flatnonzero(x[7] == 0)[0]])
    expressed = tok.decode(base[7, 3:4])[0]
    ids, mask = tok.encode(x, feature_activation=[unexpressed, expressed])
    assert tok.decode(ids[:, :2]).tolist() == [[unexpressed, expressed]] * 8
    # cell 7 (7 genes): the unexpressed gene enters, so one more token is valid
    assert mask[7].sum() == 8
    # the helper moves single tokens without re-tokenising
    tokens = torch.full((8,), int(tok.token_ids([expressed])[0]))
    moved = activate_tokens(torch.from_numpy(base), tokens)
    ref, _ = tok.encode(x, feature_activation=[expressed])
    assert np.array_equal(moved.numpy(), ref)
    tokens = torch.full((8,), int(tok.token_ids([unexpressed])[0]))
    ref, _ = tok.encode(x, feature_activation=[unexpressed])
    assert np.array_equal(activate_tokens(torch.from_numpy(base), tokens).numpy(), ref)


def test_feature_map_masks_in_place():
    tok = _fixture_tokenizer()
    base, bmask = tok.encode(COUNTS["counts_ng"])
    gene = str(GENES[25])  # token 27, rank 1 of cell 7
    ids, mask = tok.encode(COUNTS["counts_ng"], feature_map={gene: MASK_TOKEN_ID})
    assert ids[7, 0] == MASK_TOKEN_ID and np.array_equal(mask, bmask)
    assert np.array_equal(ids == MASK_TOKEN_ID, base == 27)


def test_unknown_perturbation_gene_is_an_error():
    with pytest.raises(KeyError, match="NOPE"):
        _fixture_tokenizer().encode(COUNTS["counts_ng"], feature_deletion=["NOPE"])


def test_gene_order_mapping():
    tok = _fixture_tokenizer()
    x = COUNTS["counts_ng"].astype(np.float32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(50)
    # reordered columns plus two unknown genes with zero counts: identical tokens
    names = np.concatenate([GENES[perm], ["UNK1", "UNK2"]])
    xin = np.concatenate([x[:, perm], np.zeros((8, 2), np.float32)], axis=1)
    order = tok.gene_order(names)
    assert order.n_unknown == 2 and order.unknown_examples == ["UNK1", "UNK2"] and order.n_missing == 0
    assert "2 input gene(s)" in order.describe()
    ids, mask = tok.encode(xin, gene_order=names)
    assert np.array_equal(ids, TOK["input_ids"])
    ids2, _ = tok.encode(xin, gene_order=order)
    assert np.array_equal(ids2, TOK["input_ids"])
    # unknown genes still count towards the library size; missing vocabulary genes are zeros
    xin[:, -1] = 100
    sub = names[5:]  # drop 5 vocabulary genes
    order = tok.gene_order(sub)
    assert order.n_missing == 5
    z = tok.normalize(xin[:, 5:], order).numpy()
    totals = xin[:, 5:].sum(1, keepdims=True)
    y = 10000 * xin[:, 5:] / (totals + 1e-6)
    expected = np.zeros((8, 50), np.float32)
    expected[:, perm[5:]] = y[:, :-2] / (NORM["scale_g"][perm[5:]] + 1e-6)
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    assert tok.gene_order(GENES).identity
    with pytest.raises(ValueError, match="gene_order"):
        tok.encode(xin)
    with pytest.raises(ValueError, match="unique"):
        tok.gene_order(np.concatenate([GENES, GENES[:1]]))


def test_encode_ranked_plain_text_rows():
    tok = _fixture_tokenizer()
    ids, mask, n_unknown = tok.encode_ranked([["GENE0003", "XX", "GENE0000"], []], max_len=4)
    assert ids.tolist() == [[5, 2, 0, 0], [0, 0, 0, 0]] and n_unknown == 1
    assert mask.tolist() == [[True, True, False, False], [False] * 4]


def test_bad_counts_are_rejected():
    tok = _fixture_tokenizer()
    bad = COUNTS["counts_ng"].astype(np.float32)
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="non-negative"):
        tok.encode(bad)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        GeneRankTokenizer.fit(bad, GENES)


def test_tokenizer_json_round_trip():
    tok = GeneRankTokenizer.fit(COUNTS["reference_counts_ng"], GENES, max_len=L)
    text = tok.to_json()
    back = GeneRankTokenizer.from_json(text)
    assert np.array_equal(back.scale_g, tok.scale_g) and np.array_equal(back.var_names, GENES)
    assert back.max_len == L and back.vocab_size == 52 and back.n_cells_fit == 64
    assert back.fingerprint() == tok.fingerprint()
    assert np.array_equal(back.encode(COUNTS["counts_ng"])[0], TOK["input_ids"])
    with pytest.raises(ValueError, match="format"):
        GeneRankTokenizer.from_json('{"format": "other"}')


# ============================================================================ model parity
def test_weights_load_with_hf_names(mlm):
    own = mlm.state_dict()
    assert set(own) == set(WEIGHTS)
    for k, v in WEIGHTS.items():
        assert np.array_equal(own[k].numpy(), v), k
    # tied as in HF
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert mlm.cls.predictions.decoder.bias is mlm.cls.predictions.bias


def test_forward_parity_hidden_states_and_logits(mlm):
    out = _run(mlm, TOK["input_ids"], TOK["attention_mask"], output_hidden_states=True)
    assert len(out.hidden_states) == 3
    for i, h in enumerate(out.hidden_states):
        _close(h, OUT["hidden_states"][i], f"hidden_states[{i}]", **HIDDEN_TOL)
    _close(out.last_hidden_state, OUT["hidden_states"][-1], "last_hidden_state", **HIDDEN_TOL)
    _close(out.last_hidden_state[:, 0], OUT["hidden_states"][-1][:, 0], "first_token_hidden", **HIDDEN_TOL)
    _close(out.logits, OUT["logits"], "logits", **LOGIT_TOL)
    pooled = mean_pool(out.last_hidden_state, torch.from_numpy(TOK["attention_mask"]))
    _close(pooled, OUT["mean_pooled_last_hidden"], "mean pooled", **HIDDEN_TOL)


def test_attention_probabilities_match_eager(mlm):
    out = _run(mlm, TOK["input_ids"], TOK["attention_mask"], output_attentions=True)
    for i, a in enumerate(out.attentions):
        _close(a, OUT["attentions_eager"][i], f"attentions[{i}]", 1e-5, 0)
    # masked keys get exactly zero probability
    pad_keys = torch.from_numpy(~TOK["attention_mask"])[:, None, None, :].expand_as(out.attentions[0])
    assert torch.all(out.attentions[0][pad_keys] == 0)
    _close(out.logits, OUT["logits"], "eager logits", **LOGIT_TOL)


@pytest.mark.parametrize("prefix", ["del", "delcell"])
def test_deletion_outputs_parity(mlm, prefix):
    out = _run(mlm, OUT[f"{prefix}_input_ids"], OUT[f"{prefix}_attention_mask"])
    _close(out.logits, OUT[f"{prefix}_logits"], f"{prefix}_logits", **LOGIT_TOL)
    _close(out.last_hidden_state, OUT[f"{prefix}_last_hidden_state"], f"{prefix}_last_hidden_state", **HIDDEN_TOL)


def test_mlm_loss_on_stored_tensors(mlm):
    args = (OUT["mlm_input_ids"], OUT["mlm_attention_mask"])
    labels = torch.from_numpy(OUT["mlm_labels"])
    with torch.no_grad():
        full = mlm(*map(torch.from_numpy, args), labels)
        sparse = mlm(*map(torch.from_numpy, args), labels, return_logits=False)
    assert sparse.logits is None
    assert abs(full.loss.item() - float(OUT["mlm_loss"])) <= 1e-5
    assert abs(sparse.loss.item() - float(OUT["mlm_loss"])) <= 1e-5


def test_pad_positions_do_not_affect_real_tokens(mlm):
    ids = torch.from_numpy(TOK["input_ids"]).clone()
    mask = torch.from_numpy(TOK["attention_mask"])
    base = _run(mlm, ids, mask).last_hidden_state
    ids[~mask] = 7  # garbage behind the mask
    other = _run(mlm, ids, mask).last_hidden_state
    assert torch.equal(base[mask], other[mask])
    # trimming all-PAD columns is exact for pooled outputs
    t_ids, t_mask = trim_padding(torch.from_numpy(TOK["input_ids"][[0, 4, 7]]), mask[[0, 4, 7]])
    assert t_ids.shape[1] == 14
    full = mean_pool(_run(mlm, TOK["input_ids"][[0, 4, 7]], mask[[0, 4, 7]]).last_hidden_state, mask[[0, 4, 7]])
    short = mean_pool(_run(mlm, t_ids, t_mask).last_hidden_state, t_mask)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_empty_cell_gives_finite_outputs(mlm):
    ids = torch.zeros(2, L, dtype=torch.long)
    ids[1, :3] = torch.tensor([5, 6, 7])
    out = _run(mlm, ids, ids != 0)
    assert torch.isfinite(out.logits).all()


def test_sequence_longer_than_positions_is_rejected(mlm):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        _run(mlm, torch.ones(1, L + 1, dtype=torch.long), torch.ones(1, L + 1, dtype=torch.bool))


# ============================================================================ checkpoints
def test_weight_loading_variants():
    ref = {k: torch.from_numpy(v) for k, v in WEIGHTS.items()}
    # cellarium module state dict (Geneformer.bert = BertForMaskedLM) inside a lightning checkpoint
    cellarium = {"model.bert." + k: v for k, v in ref.items()}
    cellarium["model.bert.feature_ids"] = torch.arange(2, 52)
    cellarium["model.bert.bert.embeddings.position_ids"] = torch.arange(L)[None]
    buf = io.BytesIO()
    torch.save({"state_dict": cellarium}, buf)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gf_ckpt_{os.getpid()}.pt")
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
    try:
        m = GeneformerMLM(_config())
        report = load_hf_bert_weights(m, path)
        assert "model.bert.feature_ids" in report["skipped"] and not report["missing"]
        assert torch.equal(m.state_dict()["cls.predictions.bias"], ref["cls.predictions.bias"])
    finally:
        os.remove(path)
    # HF 4.x-style checkpoint without the tied decoder keys
    untied = {k: v for k, v in ref.items() if not k.startswith("cls.predictions.decoder")}
    m = GeneformerMLM(_config())
    load_hf_bert_weights(m, untied)
    assert torch.equal(m.cls.predictions.decoder.bias, ref["cls.predictions.bias"])
    # BertModel-only keys into the bare encoder; the head of an MLM checkpoint is skipped there
    enc = GeneformerEncoder(_config()).eval()
    report = load_hf_bert_weights(enc, {k[5:]: v for k, v in ref.items() if k.startswith("bert.")})
    assert not report["missing"]
    report = load_hf_bert_weights(enc, ref)
    assert any(k.startswith("cls.") for k in report["skipped"])
    out = _run(enc, TOK["input_ids"], TOK["attention_mask"])
    _close(out.last_hidden_state, OUT["hidden_states"][-1], "encoder-only", **HIDDEN_TOL)
    # our own state dict round-trips through torch.save(weights_only)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = GeneformerMLM(_config())
    m2.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(m2.cls.predictions.decoder.weight, ref["bert.embeddings.word_embeddings.weight"])


def test_weight_loading_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        load_hf_bert_weights(GeneformerMLM(_config(vocab_size=60)), WEIGHTS)
    partial = {k: v for k, v in WEIGHTS.items() if "layer.1." not in k}
    with pytest.raises(ValueError, match="missing"):
        load_hf_bert_weights(GeneformerMLM(_config()), partial)
    with pytest.raises(ValueError, match="not a BERT checkpoint"):
        load_hf_bert_weights(GeneformerMLM(_config()), {"x": np.zeros(1)})


def test_classifier_loads_encoder_from_mlm_checkpoint(mlm):
    clf = GeneformerClassifier(_config(), num_outputs=3).eval()
    report = clf.load_encoder_weights(mlm.state_dict())
    assert any(k.startswith("cls.") for k in report["skipped"])
    ids, mask = torch.from_numpy(TOK["input_ids"]), torch.from_numpy(TOK["attention_mask"])
    with torch.no_grad():
        emb = clf.embed(ids, mask)
        y = clf(ids, mask)
    _close(emb, OUT["mean_pooled_last_hidden"], "classifier pooled", **HIDDEN_TOL)
    assert y.shape == (8, 3)
    first = GeneformerClassifier(_config(), num_outputs=1, pooling="first").eval()
    first.load_encoder_weights(WEIGHTS)
    with torch.no_grad():
        _close(first.embed(ids, mask), OUT["hidden_states"][-1][:, 0], "first-token pooled", **HIDDEN_TOL)
        assert first(ids).shape == (8, 1)  # mask defaults to ids != PAD


def test_config_defaults_are_cellariums():
    c = GeneformerConfig(vocab_size=100)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (256, 6, 4, 512)
    assert (c.hidden_act, c.hidden_dropout_prob, c.attention_probs_dropout_prob) == ("relu", 0.02, 0.02)
    assert (c.max_position_embeddings, c.type_vocab_size) == (2048, 2)
    assert (c.layer_norm_eps, c.initializer_range) == (1e-12, 0.02)
    assert GeneformerConfig.from_dict({**c.to_dict(), "architectures": ["BertForMaskedLM"]}) == c
    for bad in (dict(hidden_size=30), dict(hidden_act="tanh"), dict(position_embedding_type="relative_key")):
        with pytest.raises(ValueError):
            GeneformerConfig(vocab_size=100, **bad)
    m = GeneformerMLM(_config())
    assert torch.all(m.bert.embeddings.word_embeddings.weight[0] == 0)  # HF init: PAD row zero


# ============================================================================ MLM masking & training
def test_mlm_mask_statistics():
    g = torch.Generator().manual_seed(1)
    v = 60
    ids = torch.randint(2, v, (400, 50), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 40:] = False
    ids[~mask] = PAD_TOKEN_ID
    masked, labels = mlm_mask(ids, mask, v, 0.15, generator=torch.Generator().manual_seed(2))
    scored = labels != -100
    assert not scored[~mask].any() and torch.equal(masked[~mask], ids[~mask])
    assert torch.equal(labels[scored], ids[scored])
    assert torch.equal(masked[~scored], ids[~scored])
    frac = scored.sum().item() / mask.sum().item()
    assert 0.14 < frac < 0.16
    n = scored.sum().item()
    n_mask = (masked[scored] == MASK_TOKEN_ID).sum().item()
    changed = (masked[scored] != ids[scored]) & (masked[scored] != MASK_TOKEN_ID)
    assert 0.77 < n_mask / n < 0.83
    assert 0.07 < changed.sum().item() / n < 0.11  # random tokens (a few coincide with the original)
    assert masked[scored].min() >= 1 and masked.max() < v
    assert (masked[scored][changed] >= 2).all()  # random replacements are genes, never PAD/MASK
    again = mlm_mask(ids, mask, v, 0.15, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)


def test_mlm_mask_ensures_one_scored_position():
    ids = torch.tensor([[5, 6, 0, 0]])
    mask = ids != 0
    masked, labels = mlm_mask(ids, mask, 10, mlm_probability=0.0, generator=torch.Generator().manual_seed(0))
    assert (labels != -100).sum() == 1 and (labels[~mask] == -100).all()
    _, labels = mlm_mask(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), 10, 0.0)
    assert (labels == -100).all()


@pytest.fixture
def one_thread():
    # a model this small runs fastest on one thread, and a shared machine's load then cannot
    # turn OpenMP spinning into seconds
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pretraining_smoke_loss_decreases(one_thread):
    start = time.process_time()
    torch.manual_seed(0)
    n_genes = 20
    vocab = n_genes + 2
    # cells follow one of three programmes (fixed gene orders), so masked genes are predictable
    g = torch.Generator().manual_seed(0)
    programmes = torch.stack([torch.randperm(n_genes, generator=g)[:12] + 2 for _ in range(3)])
    ids = programmes[torch.randint(0, 3, (48,), generator=g)]
    mask = torch.ones_like(ids, dtype=torch.bool)
    cfg = GeneformerConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = GeneformerMLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    eval_in, eval_labels = mlm_mask(ids, mask, vocab, 0.3, generator=torch.Generator().manual_seed(99))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return model(eval_in, mask, eval_labels, return_logits=False).loss.item()

    before = eval_loss()
    model.train()
    mg = torch.Generator().manual_seed(1)
    for _ in range(60):
        inp, labels = mlm_mask(ids, mask, vocab, 0.3, generator=mg)
        loss = model(inp, mask, labels, return_logits=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)
    assert time.process_time() - start < 5.0  # CPU seconds: stable under a shared machine's load
    # the PAD embedding gets no gradient from lookups (padding_idx), as in HF
    assert model.bert.embeddings.word_embeddings.padding_idx == PAD_TOKEN_ID


def test_fit_from_h5ad_chunks(tmp_path):
    from biolm.core.h5ad import H5adReader, write_h5ad

    sp = pytest.importorskip("scipy.sparse")
    path = tmp_path / "ref.h5ad"
    ref = COUNTS["reference_counts_ng"]
    write_h5ad(path, sp.csr_matrix(ref.astype(np.float32)), GENES, [f"c{i}" for i in range(64)])
    reader = H5adReader(path)
    tok = GeneRankTokenizer.fit(reader.iter_chunks(10), reader.var_names, max_len=L)
    assert np.array_equal(tok.scale_g, NORM["scale_g"])
