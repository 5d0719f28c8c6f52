"""Saturation mutagenesis and variant effects checked against an oracle: predict runs on the
edited text. Per plugin (tiny models); Saluki's scores go through its fast path."""

import csv
import pickle

import h5py
import numpy as np
import pytest

from biolm.core.atomic_tokenizer import AtomicTokenizer
from biolm.core.errors import DataError
from biolm.core.runner import run
from biolm.core.saturate import alternatives

from conftest import write_config

BLOCK = 48
MODELS = {
    "lcl": {"kernel_width": 8, "cutoff": 128, "head_hidden": 16, "rb_do": 0.0},
    "saluki": {"filters": 8, "num_layers": 2},
    "psam": {"kernel_size": 5},
    "pca": {"n_components": 4},
}


def _rows(p):
    with open(p) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def models(tmp_path_factory, rna_file, one_thread):
    """plugin -> (folder, config), each fine-tuned once (1 epoch) on first use."""
    cache = {}

    def get(plugin):
        if plugin not in cache:
            tmp = tmp_path_factory.mktemp(plugin)
            cfg = write_config(tmp / "c.yaml", rna_file, tmp / "out", inference_model={"pretrainedmodel": str(tmp / "out/fine-tune/0")}, settings={"training": {"batchsize": 16, "blocksize": BLOCK, "nepochs": 1}}, model=MODELS[plugin])
            run(plugin, "fine-tune", task="regression", configfile=cfg, quiet=True)
            cache[plugin] = (tmp, cfg)
        return cache[plugin]

    return get


def _small(tmp, rna_file):
    """Three sequences, one longer than the block (its scored window starts after 0)."""
    chosen = [line.split("\t") for line in rna_file.read_text().splitlines()[:3]]
    for c, n in zip(chosen, (30, 26, BLOCK + 20)):
        c[5] = ",".join(c[5].split(",")[:n])
    path = tmp / "small.txt"
    path.write_text("".join("\t".join(c) + "\n" for c in chosen))
    return path, chosen


def _predict(plugin, cfg, path, outdir, **extra):
    r = run(plugin, "predict", task="regression", configfile=cfg, quiet=True, cli_values={"inference_source.filepath": str(path), "inference_model.outputdir": outdir, **extra})
    return [(p["sequence"], float(p["prediction"])) for p in _rows(r.modedir / "test_predictions.csv")]


def _edited(tmp, rows, edits, name):
    """``edits``: (key, row index, new token list) -> a data file of the edited sequences."""
    lines = ["\t".join([f"e{k}"] + rows[i][1:5] + [",".join(toks)]) + "\n" for k, (_, i, toks) in enumerate(edits)]
    path = tmp / name
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("plugin", list(MODELS))
def test_saturate_equals_difference_of_predict_runs(models, rna_file, plugin):
    tmp, cfg = models(plugin)
    small, rows = _small(tmp, rna_file)
    vocab = AtomicTokenizer.load(tmp / "out/fine-tune/0/tokenizer.json").vocab
    alts = alternatives(vocab)
    r = run(plugin, "interpret", task="regression", configfile=cfg, quiet=True, cli_values={"inference_source.filepath": str(small), "looscores.handletokens": "saturate", "inference_model.outputdir": "sat"})
    edits = []
    for i, c in enumerate(rows):
        toks = c[5].split(",")
        start = max(0, len(toks) - BLOCK)  # lefttailing: the right end is scored
        for p in range(start, len(toks)):
            for a in alts.get(toks[p], []):
                edits.append(((c[0], p, a), i, toks[:p] + [a] + toks[p + 1 :]))
    base = dict(_predict(plugin, cfg, small, "base"))
    pred = _predict(plugin, cfg, _edited(tmp, rows, edits, "edited_sat.txt"), "edited")
    expect = {key: v - base[key[0]] for (key, _, _), (_, v) in zip(edits, pred)}
    scores = _rows(r.modedir / "loo_scores_saturate.csv")
    got = {(s["sequence"], int(s["start_offset"]), s["replacement"]): float(s["loo"]) for s in scores}
    assert set(got) == set(expect)
    scale = max(1.0, max(abs(v) for v in expect.values()))
    assert max(abs(got[k] - expect[k]) for k in expect) < 1e-4 * scale
    assert any(abs(v) > 1e-6 for v in got.values())
    # ism.h5: the same scores as (L, A) matrices, 0 in the reference's own column
    with h5py.File(r.modedir / "ism.h5", "r") as f:
        alphabet = list(f["alphabet"].asstr()[:])
        assert alphabet == ["A", "C", "G", "T"]
        offsets, starts, ids = f["offsets"][:], f["starts"][:], list(f["ids"].asstr()[:])
        assert ids == [c[0] for c in rows] and starts[2] > 0
        for i, sid in enumerate(ids):
            delta, ref = f["delta"][offsets[i] : offsets[i + 1]], f["ref"][offsets[i] : offsets[i + 1]]
            toks = rows[i][5].split(",")[starts[i] :]
            assert delta.shape == (len(toks), 4)
            for p, t in enumerate(toks):
                if t in alts:
                    assert ref[p] == alphabet.index(t[0].upper()) and delta[p, ref[p]] == 0
                for a in alts.get(t, []):
                    assert abs(delta[p, alphabet.index(a[0].upper())] - expect[(sid, starts[i] + p, a)]) < 1e-4 * scale
    with open(r.modedir / "loo_scores_saturate.pkl", "rb") as fh:
        expl = pickle.load(fh)
    assert len(expl) == 3
    p0 = [np.mean([got[(rows[0][0], p, a)] for a in alts[t]]) for p, t in enumerate(rows[0][5].split(","))]
    assert np.allclose(expl[0].values, p0, atol=1e-6)
    assert len(list(r.modedir.glob("loo_saturate_*.png"))) == 3


def _variants(rows):
    """Substitutions (in and outside the window), several tokens, deletions and insertions."""
    s0, s1, lg = (c[5].split(",") for c in rows)
    n_lg = len(lg)
    other = {"a": "c", "c": "g", "g": "t", "t": "a"}

    def alt(t):
        return other.get(t, "a")

    table = [
        ("sub", 0, 5, [s0[4]], [alt(s0[4])]),
        ("sub_last", 1, len(s1), [s1[-1]], [alt(s1[-1])]),
        ("sub_outside_window", 2, 1, [lg[0]], [alt(lg[0])]),
        ("sub_in_window", 2, n_lg - 3, [lg[-4]], [alt(lg[-4])]),
        ("mnv", 0, 10, s0[9:11], [alt(s0[9]), alt(s0[10])]),
        ("del_anchored", 0, 12, s0[11:14], [s0[11]]),
        ("del_dash", 1, 3, [s1[2]], []),
        ("del_shifts_window", 2, 2, lg[1:3], []),
        ("ins_anchored", 1, 7, [s1[6]], [s1[6], "g", "g", "a"]),
        ("ins_at_end", 0, len(s0) + 1, [], ["c", "c"]),
        ("ins_in_window", 2, n_lg - 10, [], ["t"]),
    ]
    return [(vid, i, pos, ref, alt_) for vid, i, pos, ref, alt_ in table]


def _write_variants(path, rows, table, extra=""):
    lines = ["id\tseq\tpos\tref\talt\n"]
    for vid, i, pos, ref, alt in table:
        lines.append(f"{vid}\t{rows[i][0]}\t{pos}\t{','.join(ref) or '-'}\t{','.join(alt) or '-'}\n")
    path.write_text("".join(lines) + extra)
    return path


def _variant_cli(small, vfile, outdir, **extra):
    return {"inference_source.filepath": str(small), "looscores.handletokens": "variants", "inference_source.variants.filepath": str(vfile), "inference_source.variants.stripheader": True, "inference_source.variants.idpos": 1, "inference_source.variants.sequencepos": 2, "inference_source.variants.positionpos": 3, "inference_source.variants.refpos": 4, "inference_source.variants.altpos": 5, "inference_model.outputdir": outdir, **extra}


@pytest.mark.parametrize("plugin", list(MODELS))
def test_variant_effects_equal_difference_of_predict_runs(models, rna_file, plugin):
    tmp, cfg = models(plugin)
    small, rows = _small(tmp, rna_file)
    table = _variants(rows)
    vfile = _write_variants(tmp / "variants.tsv", rows, table)
    r = run(plugin, "interpret", task="regression", configfile=cfg, quiet=True, cli_values=_variant_cli(small, vfile, "var"))
    with open(r.modedir / "variant_effects.csv") as fh:
        assert fh.readline().strip() == "variant,sequence,position,ref,alt,pred_ref,pred_alt,delta"
    got = {row["variant"]: row for row in _rows(r.modedir / "variant_effects.csv")}
    assert list(got) == [t[0] for t in table]
    edits = []
    for vid, i, pos, ref, alt in table:
        toks = rows[i][5].split(",")
        edits.append((vid, i, toks[: pos - 1] + alt + toks[pos - 1 + len(ref) :]))
    base = dict(_predict(plugin, cfg, small, "vbase"))
    pred = _predict(plugin, cfg, _edited(tmp, rows, edits, "edited_var.txt"), "vedited")
    scale = max(1.0, max(abs(v) for _, v in pred))
    for (vid, i, *_), (_, p_alt) in zip(table, pred):
        g = got[vid]
        assert g["sequence"] == rows[i][0]
        assert abs(float(g["pred_ref"]) - base[rows[i][0]]) < 1e-4 * scale
        assert abs(float(g["pred_alt"]) - p_alt) < 1e-4 * scale, vid
        assert abs(float(g["delta"]) - (p_alt - base[rows[i][0]])) < 1e-4 * scale, vid
    assert float(got["sub_outside_window"]["delta"]) == 0.0
    log = r.logfile.read_text()
    fast = r.model_spec.fast_loo is not None
    assert f"1 unchanged input, 3 single-token ({'fast path' if fast else 'full forward'})" in log
    assert any(abs(float(g["delta"])) > 1e-6 for g in got.values())


def test_ref_mismatch_is_an_error_naming_the_variant_or_skipped_and_counted(models, rna_file):
    tmp, cfg = models("lcl")
    small, rows = _small(tmp, rna_file)
    s0 = rows[0][5].split(",")
    wrong = {"a": "c", "c": "g", "g": "t", "t": "a"}.get(s0[2], "a")
    table = [("ok", 0, 2, [s0[1]], ["a" if s0[1] != "a" else "c"]), ("bad", 0, 3, [wrong], ["g"])]
    vfile = _write_variants(tmp / "mismatch.tsv", rows, table, extra=f"gone\tnot_there\t1\ta\tc\npast\t{rows[0][0]}\t{len(s0) + 5}\ta\tc\n")
    with pytest.raises(DataError, match=r"mismatch.tsv:3: variant bad: ref .* does not match sequence"):
        run("lcl", "interpret", task="regression", configfile=cfg, quiet=True, cli_values=_variant_cli(small, vfile, "mm"))
    r = run("lcl", "interpret", task="regression", configfile=cfg, quiet=True, cli_values=_variant_cli(small, vfile, "mm", **{"inference_source.variants.on_bad_row": "skip"}))
    assert r.summary["metrics"] == {"variants": 1, "skipped": 3}
    assert [g["variant"] for g in _rows(r.modedir / "variant_effects.csv")] == ["ok"]
    log = r.logfile.read_text()
    assert "skipped 3 malformed row(s)" in log and "no sequence 'not_there'" in log and "outside sequence" in log


def test_classification_ensemble_variants_have_probabilities_and_fold_columns(tmp_path, rna_file, one_thread):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", fine_tuning_data_source={"labelpos": 4, "crossvalidation": 2}, inference_model={"pretrainedmodel": str(tmp_path / "out/fine-tune")}, settings={"training": {"batchsize": 16, "blocksize": BLOCK, "nepochs": 1}}, model=MODELS["lcl"])
    run("lcl", "fine-tune", task="classification", configfile=cfg, quiet=True)
    small, rows = _small(tmp_path, rna_file)
    table = _variants(rows)[:6]
    vfile = _write_variants(tmp_path / "v.tsv", rows, table)
    r = run("lcl", "interpret", task="classification", configfile=cfg, quiet=True, cli_values=_variant_cli(small, vfile, "var"))
    got = _rows(r.modedir / "variant_effects.csv")
    classes = sorted({c[3] for c in rows} | {"stable", "unstable"})
    head = list(got[0])
    assert head[:8] == ["variant", "sequence", "position", "ref", "alt", "pred_ref", "pred_alt", "delta"]
    assert {f"prob_ref_{c}" for c in classes} <= set(head) and "fold_0_delta_stable" in head and "fold_1_prob_alt_unstable" in head
    edits = []
    for vid, i, pos, ref, alt in table:
        toks = rows[i][5].split(",")
        edits.append((vid, i, toks[: pos - 1] + alt + toks[pos - 1 + len(ref) :]))
    pe = run("lcl", "predict", task="classification", configfile=cfg, quiet=True, cli_values={"inference_source.filepath": str(_edited(tmp_path, rows, edits, "e.txt")), "inference_source.labelpos": 4, "inference_model.outputdir": "pe"})
    for g, p in zip(got, _rows(pe.modedir / "test_predictions.csv")):
        for c in ("stable", "unstable"):
            assert abs(float(g[f"prob_alt_{c}"]) - float(p[f"prob_{c}"])) < 1e-5
            assert abs(float(g[f"fold_1_prob_alt_{c}"]) - float(p[f"fold_1_prob_{c}"])) < 1e-5
            assert abs(float(g[f"delta_{c}"]) - (float(g[f"prob_alt_{c}"]) - float(g[f"prob_ref_{c}"]))) < 2e-6
        assert abs(float(g["prob_ref_stable"]) + float(g["prob_ref_unstable"]) - 1) < 1e-5
        assert g["pred_alt"] == p["prediction"]


def test_alternatives_of_the_same_kind():
    vocab = ["A", "Aej", "C", "Cej", "G", "Gej", "N", "T", "Tej", "a", "c", "g", "n", "t", "<cls>"]
    alts = alternatives(vocab)
    assert alts["a"] == ["c", "g", "t"] and alts["Aej"] == ["Cej", "Gej", "Tej"] and alts["T"] == ["A", "C", "G"]
    assert "n" not in alts and "N" not in alts and "<cls>" not in alts
    assert all("n" not in a and "N" not in a for a in alts.values())
    over = alternatives(vocab, {"a": ["g", "a", "X"], "c": []})
    assert over["a"] == ["g"] and "c" not in over and over["g"] == ["a", "c", "t"]
    protein = alternatives(list("ACDEFGHIKLMNPQRSTVWY"))
    assert len(protein["N"]) == 19  # asparagine: N is an unknown base only among nucleotides


def test_saturation_table_columns_and_matrix():
    from biolm.core.saturate import SaturationTable

    vocab = ["A", "C", "G", "T", "a", "c", "g", "n", "t"]
    t = SaturationTable.build(vocab)
    assert t.alphabet == ["A", "C", "G", "T"]
    ids = np.array([4, 7, 1, -1])  # a, n, C, unknown
    pos, new, cols = t.plan(ids, 4)
    assert pos.tolist() == [0, 0, 0, 2, 2, 2] and [vocab[i] for i in new] == ["c", "g", "t", "A", "G", "T"]
    m = t.matrix(4, pos, cols, np.arange(6.0), t.refs(ids))
    assert m[0].tolist() == [0, 0, 1, 2] and m[2].tolist() == [3, 0, 4, 5] and np.isnan(m[1]).all() and np.isnan(m[3]).all()
    crossed = SaturationTable.build(vocab, {"a": ["A"]})
    assert crossed.alphabet == ["A", "C", "G", "T", "a", "c", "g", "t"]  # columns are tokens then


def test_streamed_pickle_and_ism_parts_merge(tmp_path):
    from biolm.core.ism_store import IsmWriter, merge, read_sequence
    from biolm.core.loo_outputs import _LIST_START, _STOP, pickled_item
    from biolm.core.sharding import concat_files

    parts = [tmp_path / "p0", tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(_LIST_START + pickled_item({"k": [1, 2]}) + pickled_item(np.arange(3)))
    parts[1].write_bytes(b"")  # a process with no sequence
    parts[2].write_bytes(pickled_item(("x", {"k": [1, 2]})))
    with open(concat_files(parts, tmp_path / "all.pkl", suffix=_STOP), "rb") as fh:
        items = pickle.load(fh)
    assert items[0] == {"k": [1, 2]} and items[1].tolist() == [0, 1, 2] and items[2] == ("x", {"k": [1, 2]})
    rng = np.random.default_rng(0)
    written = []
    hparts = [tmp_path / f"ism{r}" for r in range(3)]
    for r, p in enumerate(hparts):
        w = IsmWriter(p, ["A", "C"], "regression", "label units")
        for k in range((2, 0, 1)[r]):  # the middle process scored nothing
            d = rng.normal(size=(5 + k, 2)).astype(np.float32)
            w.add(f"s{r}{k}", k, float(k), d, np.zeros(5 + k, dtype=np.int64))
            written.append(d)
        w.close()
    merge(hparts, tmp_path / "ism.h5")
    for i, d in enumerate(written):
        got = read_sequence(tmp_path / "ism.h5", i)
        assert np.array_equal(got["delta"], d) and got["alphabet"] == ["A", "C"]
    assert len(written) == 3 and read_sequence(tmp_path / "ism.h5", 2)["id"] == "s20"


def test_shard_blocks_are_contiguous_balanced_and_cover(monkeypatch, tmp_path):
    from biolm.core import sharding

    monkeypatch.setattr(sharding, "init", lambda device_type: None)
    weights = np.asarray([5, 1, 1, 1, 1, 1, 10, 1, 1, 1])
    for size in (1, 2, 3, 4, 12):
        blocks = []
        for rank in range(size):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(size))
            blocks.append(sharding.Shards(tmp_path, "cpu").block(len(weights), weights))
        assert [b.start for b in blocks[1:]] == [b.stop for b in blocks[:-1]]
        assert blocks[0].start == 0 and blocks[-1].stop == len(weights)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sharding.Shards(tmp_path, "cpu").block(10, weights) == slice(0, 6)  # the cut nearest half the work: 10 of 23 units vs 13


def test_edited_sequences_are_cut_as_the_store_cuts_records():
    """Sequences.window (on token ids) agrees with the store's rule (on the tokens) for every
    lefttailing/centertoken combination, unknown tokens included."""
    from biolm.core.atomic_tokenizer import find_center, window
    from biolm.core.hookspecs import Encoding
    from biolm.core.variants import Sequences

    class Store:
        ids = np.asarray(["s"], dtype=object)

    vocab = ["A", "C", "a", "c", "gej"]
    rng = np.random.default_rng(1)
    for centertoken in (None, "A", "gej"):
        for left in (True, False):
            seqs = Sequences(Store(), np.arange(1), vocab, Encoding(7, left, centertoken))
            for n in (3, 7, 12, 20):
                ids = rng.integers(-1, len(vocab), n)
                tokens = [vocab[i] if i >= 0 else "x" for i in ids]
                center = find_center(tokens, centertoken) if centertoken and n > 7 else None
                assert seqs.window(ids) == window(n, 7, left, center)
