"""Atomic tokenizer, one-hot layout (the README table), windowing and centring."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biolm.core.delimited import DelimitedOptions, Record, read_records
from biolm.core.errors import BiolmError
from biolm.core.atomic_tokenizer import AtomicTokenizer, encode_records, find_center, onehot, window


def rec(tokens, modifiers=None, i="r", line=1):
    return Record(i, tokens, modifiers, None, None, None, line)


# -- fitting -----------------------------------------------------------------------------------


def test_fit_sorted_distinct_tokens_multichar_whole():
    t = AtomicTokenizer.fit([rec(["t", "gej", "a"]), rec("ACa"), rec(["AEJ", "a"])])
    assert t.vocab == sorted({"t", "gej", "a", "A", "C", "AEJ"})
    assert t.n_modifiers == 0 and t.n_channels == len(t.vocab)
    assert t.channels == t.vocab


def test_fit_is_deterministic_regardless_of_order():
    recs = [rec(list("acgt")), rec(["gej", "T"])]
    assert AtomicTokenizer.fit(recs).vocab == AtomicTokenizer.fit(recs[::-1]).vocab


def test_fit_counts_modifier_channels():
    t = AtomicTokenizer.fit([rec(["a", "c"], [[2.5, 0.2], []]), rec(["g"], [[5.7]])])
    assert t.n_modifiers == 2 and t.channels[-2:] == ["mod0", "mod1"] and t.n_channels == 5


def test_fit_samplesize_is_a_seeded_uniform_subsample():
    recs = [rec([f"tok{i}"]) for i in range(200)]
    a = AtomicTokenizer.fit(recs, samplesize=20, seed=1)
    assert len(a.vocab) == 20
    assert a.vocab == AtomicTokenizer.fit(iter(recs), samplesize=20, seed=1).vocab
    assert a.vocab != AtomicTokenizer.fit(recs, samplesize=20, seed=2).vocab
    assert AtomicTokenizer.fit(recs, samplesize=1000).vocab == AtomicTokenizer.fit(recs).vocab
    # uniform: over many seeds, late records are picked as often as early ones
    hits = np.zeros(200)
    for seed in range(300):
        for tok in AtomicTokenizer.fit(recs, samplesize=20, seed=seed).vocab:
            hits[int(tok[3:])] += 1
    assert abs(hits[:100].sum() - hits[100:].sum()) < 0.1 * hits.sum()


@pytest.mark.parametrize("bad", [0, -3, True, 2.5])
def test_fit_bad_samplesize(bad):
    with pytest.raises(BiolmError, match="samplesize"):
        AtomicTokenizer.fit([rec("a")], samplesize=bad)


def test_fit_on_nothing_is_an_error():
    with pytest.raises(BiolmError, match="no records"):
        AtomicTokenizer.fit([])


# -- encoding ----------------------------------------------------------------------------------


def test_encode_str_and_list_paths_agree():
    t = AtomicTokenizer(["A", "C", "a", "c", "gej"])
    ids_s, mods = t.encode(rec("AcCa"))
    ids_l, _ = t.encode(rec(["A", "c", "C", "a"]))
    assert ids_s.dtype == np.int32 and mods.dtype == np.float32 and mods.shape == (4, 0)
    assert ids_s.tolist() == ids_l.tolist() == [0, 3, 1, 2]
    assert t.encode(rec(["gej", "a", "gej"]))[0].tolist() == [4, 2, 4]


def test_unknown_tokens_are_minus_one_and_counted():
    t = AtomicTokenizer(["a", "c", "gej"])
    ids, _ = t.encode(rec(["a", "x", "gej", "x", "tej", "é"]))
    assert ids.tolist() == [0, -1, 2, -1, -1, -1]
    assert t.unknown_counts == {"x": 2, "tej": 1, "é": 1}
    ids, _ = t.encode(rec("axxé"))
    assert ids.tolist() == [0, -1, -1, -1]
    assert t.unknown_counts == {"x": 4, "tej": 1, "é": 2}


def test_non_ascii_vocabulary():
    t = AtomicTokenizer(["α", "β", "a", "βγ"])
    assert t.encode(rec("αaβ"))[0].tolist() == [0, 2, 1]
    assert t.encode(rec(["βγ", "α", "ω"]))[0].tolist() == [3, 0, -1]


def test_tokens_containing_nul_or_empty_fall_back_correctly():
    t = AtomicTokenizer(["a", "b\x00c", "bc"])
    assert t.encode_ids(["a", "b\x00c", "bc"]).tolist() == [0, 1, 2]
    assert t.encode_ids(["bc", "", "a"]).tolist() == [2, -1, 0]


_tok = st.sampled_from(["a", "c", "G", "gej", "AEJ", "é", "ωω", "x", "\x00", "zz"])


@settings(max_examples=100, deadline=None)
@given(st.lists(_tok, max_size=60))
def test_vectorised_encoding_matches_dict_lookup(tokens):
    vocab = ["AEJ", "G", "a", "c", "gej", "é", "ωω", "\x00"]
    t = AtomicTokenizer(vocab)
    index = {v: i for i, v in enumerate(vocab)}
    ids = t.encode_ids(tokens)
    assert ids.dtype == np.int32 and ids.tolist() == [index.get(x, -1) for x in tokens]
    unknown = [x for x in tokens if x not in index]
    assert sum(t.unknown_counts.values()) == len(unknown)


def test_encode_modifiers_zero_filled():
    t = AtomicTokenizer(["a", "c", "g"], n_modifiers=2)
    ids, mods = t.encode(rec(["a", "c", "g"], [[2.5, 0.2], (), [5.7]]))
    np.testing.assert_allclose(mods, [[2.5, 0.2], [0, 0], [5.7, 0]], rtol=1e-6)
    _, mods = t.encode(rec(["a", "c"]))
    assert mods.shape == (2, 2) and not mods.any()


def test_more_modifiers_than_fitted_is_a_clear_error():
    t = AtomicTokenizer(["a"], n_modifiers=1)
    with pytest.raises(BiolmError, match=r"record 'r' \(line 1\): token at position 1 has 2 modifiers"):
        t.encode(rec(["a"], [[1.0, 2.0]]))


# -- persistence -------------------------------------------------------------------------------


def test_json_roundtrip_and_sha(tmp_path):
    t = AtomicTokenizer(["a", "c", "gej"], 2, tokensep=",", specifiersep="#")
    d = t.to_json()
    assert d["channels"] == ["a", "c", "gej", "mod0", "mod1"] and d["encoding"] == "atomic"
    assert d["options"] == {"tokensep": ",", "specifiersep": "#"}
    p = tmp_path / "tokenizer.json"
    t.save(p)
    assert os.listdir(tmp_path) == ["tokenizer.json"]  # no temporary file left
    u = AtomicTokenizer.load(p)
    assert u == t and u.sha() == t.sha() and len(t.sha()) == 64
    assert AtomicTokenizer(["a", "c", "t"], 2, tokensep=",", specifiersep="#").sha() != t.sha()
    assert AtomicTokenizer(["a", "c", "gej"], 1, tokensep=",", specifiersep="#").sha() != t.sha()


def test_load_errors(tmp_path):
    with pytest.raises(BiolmError, match="no such tokenizer"):
        AtomicTokenizer.load(tmp_path / "none.json")
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"encoding": "generank", "vocab": ["a"]}))
    with pytest.raises(BiolmError, match="not an atomic tokenizer"):
        AtomicTokenizer.load(p)
    p.write_text(json.dumps({"encoding": "atomic", "vocab": ["a"], "n_modifiers": 0, "channels": ["b"]}))
    with pytest.raises(BiolmError, match="channel layout"):
        AtomicTokenizer.load(p)
    p.write_text("{")
    with pytest.raises(BiolmError, match="not valid JSON"):
        AtomicTokenizer.load(p)


def test_vocabulary_validation():
    with pytest.raises(BiolmError, match="duplicate"):
        AtomicTokenizer(["a", "a"])
    with pytest.raises(BiolmError, match="empty vocabulary"):
        AtomicTokenizer([])


# -- one-hot -----------------------------------------------------------------------------------


def test_onehot_reproduces_the_readme_table(tmp_path):
    # reference/002_*.txt: vocabulary [a, c, g, t, A, C, G, T] (the README's order, given
    # explicitly: a fitted vocabulary is sorted) and the sample "a#2.5#0.2, c, A, g#5.7".
    p = tmp_path / "d.tsv"
    p.write_text("s1\ta#2.5#0.2, c, A, g#5.7\n")
    (r,) = read_records(DelimitedOptions(str(p), tokensep=",", specifiersep="#", idpos=1, seqpos=2))
    assert AtomicTokenizer.fit([r]).n_modifiers == 2
    t = AtomicTokenizer(["a", "c", "g", "t", "A", "C", "G", "T"], n_modifiers=2)
    ids, mods = t.encode(r)
    x = onehot(torch.from_numpy(ids)[None], torch.from_numpy(mods)[None], len(t.vocab))
    assert x.shape == (1, 4, 10) and x.dtype == torch.float32
    table = [  # rows = channels, columns = the four tokens
        [1, 0, 0, 0],  # a
        [0, 1, 0, 0],  # c
        [0, 0, 0, 1],  # g
        [0, 0, 0, 0],  # t
        [0, 0, 1, 0],  # A
        [0, 0, 0, 0],  # C
        [0, 0, 0, 0],  # G
        [0, 0, 0, 0],  # T
        [2.5, 0, 0, 5.7],  # mod0
        # The README prints 5.7 here too; g#5.7 has a single modifier, and DESIGN §6 says
        # missing modifiers are 0, so the README's second 5.7 is its defect, not the contract.
        [0.2, 0, 0, 0],  # mod1
    ]
    np.testing.assert_allclose(x[0].T.numpy(), np.array(table, dtype=np.float32), rtol=1e-6)


def test_onehot_unknown_and_padding_rows_are_zero():
    ids = torch.tensor([[0, -1, 2], [1, -1, -1]])
    mods = torch.zeros(2, 3, 1)
    mods[0, 1, 0] = 3.0  # an unknown token keeps its modifier
    x = onehot(ids, mods, 3)
    assert x.shape == (2, 3, 4)
    assert x[0, 1].tolist() == [0, 0, 0, 3.0]
    assert x[1, 1:].abs().sum() == 0
    assert x[..., :3].sum(-1).tolist() == [[1, 0, 1], [1, 0, 0]]


def test_onehot_numpy_input_no_modifiers_and_checks():
    x = onehot(np.array([[0, 1]]), None, 2)
    assert x.tolist() == [[[1, 0], [0, 1]]]
    with pytest.raises(ValueError, match=r"must lie in \[-1, 2\)"):
        onehot(torch.tensor([[2]]), None, 2)
    with pytest.raises(ValueError, match="does not match"):
        onehot(torch.tensor([[0, 1]]), torch.zeros(1, 3, 1), 2)


def test_onehot_stays_on_the_ids_device():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ids = torch.tensor([[0, -1]], device=dev)
    x = onehot(ids, np.zeros((1, 2, 1), np.float32), 2)
    assert x.device == ids.device and x.shape == (1, 2, 3)


# -- windows -----------------------------------------------------------------------------------


def test_window_lefttailing_both_ways():
    assert window(10, 4, lefttailing=True) == (6, 10)  # keeps the right end
    assert window(10, 4, lefttailing=False) == (0, 4)  # keeps the left end
    assert window(3, 4, True) == (0, 3) == window(3, 4, False)
    assert window(10, None, True) == (0, 10)
    with pytest.raises(ValueError, match="blocksize"):
        window(3, 0)


def test_window_centre_equal_room_and_leftover():
    # README: blocksize 511 -> 255 left, centre, 255 right
    assert window(2000, 511, center=1000) == (745, 1256)
    # even blocksize: the left side gets the floor, (512 - 1) // 2 = 255
    assert window(2000, 512, center=1000) == (745, 1257)
    # centre near the right end: the leftover room goes to the left
    assert window(20, 5, center=19) == (15, 20)
    assert window(20, 5, center=18) == (15, 20)
    # centre near the left end: the leftover room goes to the right
    assert window(20, 5, center=0) == (0, 5)
    assert window(20, 5, center=1) == (0, 5)
    assert window(20, 5, center=10) == (8, 13)
    # sequences that fit are kept whole, centre or not
    assert window(5, 5, center=4) == (0, 5)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(0, 300), st.integers(1, 100), st.booleans())
def test_window_properties(data, n, blocksize, lefttailing):
    center = data.draw(st.one_of(st.none(), st.integers(0, n - 1))) if n else None
    start, end = window(n, blocksize, lefttailing, center)
    assert 0 <= start <= end <= n
    assert end - start == min(n, blocksize)
    if center is not None:
        assert start <= center < end
        if n > blocksize:
            left, right = center - start, end - 1 - center
            want_left = (blocksize - 1) // 2
            # equal room unless a sequence end forced the leftover to one side
            if start > 0 and end < n:
                assert (left, right) == (want_left, blocksize - 1 - want_left)
            assert left >= min(want_left, center)
    elif n > blocksize:
        assert (end == n) if lefttailing else (start == 0)


def test_find_center():
    assert find_center("aacAgA", "A") == 3
    assert find_center(["a", "gej", "A", "A"], "A") == 2
    assert find_center(["a", "gej", "A"], "g") == 1  # base letter of a multi-char token
    assert find_center(["a", "gej", "g"], "gej") == 1  # whole-token match
    assert find_center(["a#1", "A#2.5", "A"], "A", specifiersep="#") == 1
    assert find_center("acgt", "N") is None
    assert find_center(["a", "c"], "A") is None  # case-sensitive


def _seq_records(n, with_centre_at=None):
    toks = [("a", "c", "g", "t")[i % 4] for i in range(n)]
    if with_centre_at is not None:
        toks[with_centre_at] = "N"
    mods = [[float(i)] for i in range(n)]  # modifier = original position, to check alignment
    return Record("r", toks, mods, "1.0", None, None, 1)


@pytest.mark.parametrize("lefttailing", [True, False])
def test_encode_records_windows_tokens_and_modifiers_alike(lefttailing):
    t = AtomicTokenizer(["N", "a", "c", "g", "t"], n_modifiers=1)
    (e,) = encode_records([_seq_records(10)], t, blocksize=4, lefttailing=lefttailing)
    exp_start = 6 if lefttailing else 0
    assert (e.start, e.orig_len, len(e.ids)) == (exp_start, 10, 4)
    assert e.mods[:, 0].tolist() == list(range(exp_start, exp_start + 4))
    full_ids, _ = t.encode(_seq_records(10))
    assert e.ids.tolist() == full_ids[exp_start : exp_start + 4].tolist()


@pytest.mark.parametrize("lefttailing", [True, False])
def test_encode_records_centertoken(lefttailing):
    t = AtomicTokenizer(["N", "a", "c", "g", "t"], n_modifiers=1)
    (e,) = encode_records([_seq_records(30, with_centre_at=12)], t, blocksize=5, lefttailing=lefttailing, centertoken="N")
    assert e.start == 10 and e.ids.tolist()[2] == 0 and e.mods[:, 0].tolist() == [10, 11, 12, 13, 14]
    # absent centre token: falls back to lefttailing
    (e,) = encode_records([_seq_records(30)], t, blocksize=5, lefttailing=lefttailing, centertoken="N")
    assert e.start == (25 if lefttailing else 0)
    # short sequences are untouched
    (e,) = encode_records([_seq_records(4, with_centre_at=0)], t, blocksize=5, centertoken="N")
    assert (e.start, len(e.ids)) == (0, 4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-1e3, 1e3, width=32), max_size=3), min_size=1, max_size=30))
def test_encode_modifiers_matches_row_by_row(mods):
    t = AtomicTokenizer(["a"], n_modifiers=3)
    out = t.encode_modifiers(mods, len(mods))
    ref = np.zeros((len(mods), 3), np.float32)
    for i, m in enumerate(mods):
        ref[i, : len(m)] = m
    assert np.array_equal(out, ref)
