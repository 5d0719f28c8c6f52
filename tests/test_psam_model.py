"""PSAM / Conv1d / Mode: parity with PyProBound 1.5 goldens and behaviour of the biolm additions.

Fixture: ``tests/fixtures/psam`` (copy of ``shared/fixtures/psam``, see its README): DNA, kernel 8,
pairwise distance 2, reverse-strand scoring, channel position bias, six sequences of length 40,
one padded from length 30.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biolm.plugins.psam.alphabet import Alphabet, alphabet_projection
from biolm.plugins.psam.convolution import Mode, PSAMConv1d
from biolm.plugins.psam.export import export_psams, plot_logo, psam_matrix, to_json, to_meme
from biolm.plugins.psam.predictor import PSAMPredictor
from biolm.plugins.psam.psam import PSAM
from biolm.plugins.psam.pyprobound_weights import load_pyprobound_weights, pyprobound_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "psam"
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
GOLDEN_PREFIX = {torch.float64: "", torch.float32: "float32/"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture_data():
    inputs = dict(np.load(FIXTURE / "inputs.npz"))
    outputs = dict(np.load(FIXTURE / "outputs.npz"))
    weights = dict(np.load(FIXTURE / "weights.npz"))
    return inputs, outputs, weights


def build_fixture_mode(weights, dtype=torch.float64, one_hot=False) -> Mode:
    psam = PSAM(8, "DNA", pairwise_distance=2, score_reverse=True, train_bias=True, dtype=dtype)
    mode = Mode.from_psam(
        psam,
        40,
        min_input_length=30,
        max_input_length=40,
        train_posbias=True,
        bias_mode="channel",
        length_specific_bias=False,
        one_hot=one_hot,
    )
    load_pyprobound_weights(mode, weights)
    return mode


def assert_close(actual, expected, tol=1e-12):
    # numpy instead of torch.testing: the latter lazily imports torch.distributed (~1.5 s).
    to_np = lambda t: (
        t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)
    )
    np.testing.assert_allclose(to_np(actual), to_np(expected), rtol=tol, atol=tol)


def fixture_inputs(inputs, form):
    codes = torch.from_numpy(inputs["codes"])
    lengths = torch.from_numpy(inputs["lengths"])
    onehot = torch.from_numpy(inputs["onehot"]).transpose(1, 2)  # PyProBound (B, A, L) -> (B, L, A)
    if form == "codes":
        return codes, None
    if form == "onehot_neginf":
        return onehot, None
    if form == "engine":  # biolm engine: zero rows at padding plus lengths
        return torch.nan_to_num(onehot, neginf=0.0), lengths
    if form == "engine_no_lengths":
        return torch.nan_to_num(onehot, neginf=0.0), None
    raise ValueError(form)


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("one_hot", [False, True], ids=["dense", "onehot"])
@pytest.mark.parametrize("form", ["codes", "onehot_neginf", "engine", "engine_no_lengths"])
def test_fixture_parity(fixture_data, dtype, one_hot, form):
    inputs, outputs, weights = fixture_data
    mode = build_fixture_mode(weights, dtype, one_hot)
    x, lengths = fixture_inputs(inputs, form)
    with torch.no_grad():
        windows = mode.score_windows(x, lengths).double().numpy()
        log_affinity = mode(x, lengths).double().numpy()
    ref_windows = outputs[GOLDEN_PREFIX[dtype] + "windows"].astype(np.float64)
    ref_la = outputs[GOLDEN_PREFIX[dtype] + "log_affinity"].astype(np.float64)
    tol = TOLERANCE[dtype]
    assert windows.shape == (6, 2, 33)
    np.testing.assert_array_equal(np.isneginf(windows), np.isneginf(ref_windows))
    assert np.isneginf(windows[3, :, 23:]).all() and np.isfinite(windows[3, :, :23]).all()
    finite = np.isfinite(ref_windows)
    diff_w = np.abs(windows[finite] - ref_windows[finite]).max()
    diff_la = np.abs(log_affinity - ref_la).max()
    print(
        f"[{dtype}, {'onehot' if one_hot else 'dense'}, {form}] windows {diff_w:.3g} log_affinity {diff_la:.3g}"
    )
    np.testing.assert_allclose(windows, ref_windows, rtol=tol, atol=tol)
    np.testing.assert_allclose(log_affinity, ref_la, rtol=tol, atol=tol)


def test_fixture_materialised_filters(fixture_data):
    _, _, weights = fixture_data
    mode = build_fixture_mode(weights)
    psam, conv = mode.psam, mode.layers[0]
    for dist in range(3):
        np.testing.assert_array_equal(
            psam.get_filter(dist).detach().numpy(), weights[f"materialised/get_filter_{dist}"]
        )
    np.testing.assert_array_equal(psam.get_bias().detach().numpy(), weights["materialised/get_bias"])
    np.testing.assert_array_equal(
        conv.get_log_posbias().detach().numpy(), weights["materialised/get_log_posbias"]
    )
    np.testing.assert_array_equal(psam_matrix(mode), weights["derived/monomer_forward_(1,C,K)"][0].T)


def test_pyprobound_state_dict_roundtrip(fixture_data):
    _, _, weights = fixture_data
    mode = build_fixture_mode(weights)
    exported = pyprobound_state_dict(mode)
    original = {k: v for k, v in weights.items() if "/" not in k}
    assert set(exported) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key].numpy(), value, err_msg=key)
    # And back into a fresh, differently initialised mode.
    fresh = build_fixture_mode({k: v.numpy() for k, v in exported.items()})
    for (name, a), (_, b) in zip(mode.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_rejects_mismatches(fixture_data):
    _, _, weights = fixture_data
    bad = dict(weights)
    bad["layers.0.layer_spec.betas.9-0"] = np.float32(1.0)
    with pytest.raises(KeyError):
        build_fixture_mode(bad)
    missing = {k: v for k, v in weights.items() if k != "layers.0.layer_spec.betas.1-2-3"}
    with pytest.raises(KeyError):
        build_fixture_mode(missing)
    psam = PSAM(8, "DNA", pairwise_distance=2, symmetry=[1, 2, 3, 4, 4, 3, 2, 1])
    mode = Mode.from_psam(psam, 40, train_posbias=True, length_specific_bias=False)
    with pytest.raises((ValueError, KeyError)):
        load_pyprobound_weights(mode, weights)


# --------------------------------------------------------------------------- scoring semantics
def random_psam(seed=0, **kwargs) -> PSAM:
    torch.manual_seed(seed)
    psam = PSAM(dtype=torch.float64, **kwargs)
    with torch.no_grad():
        psam.monomer.normal_(0, 0.8)
        psam.pairwise.normal_(0, 0.5)
        psam.bias.fill_(-0.7)
    return psam


def reverse_complement(codes: torch.Tensor, n_letters=4) -> torch.Tensor:
    return (n_letters - 1 - codes).flip(-1)


def test_reverse_complement_invariance():
    psam = random_psam(kernel_size=6, pairwise_distance=3)
    mode = Mode.from_psam(psam, 25, length_specific_bias=False)
    codes = torch.randint(0, 4, (5, 25))
    with torch.no_grad():
        fwd = mode.score_windows(codes)
        rev = mode.score_windows(reverse_complement(codes))
        assert_close(mode(codes), mode(reverse_complement(codes)))
    # The reverse channel of a window is the forward score of its reverse complement.
    assert_close(fwd[:, 1], rev[:, 0].flip(-1))


DENSE_ONEHOT_CASES = {
    "palindrome-normalize": dict(
        kernel_size=5, pairwise_distance=2, symmetry=[1, 2, 3, -2, -1], normalize=True
    ),
    "shared-2motifs": dict(kernel_size=6, pairwise_distance=2, symmetry=[1, 2, 1, 2, 3, 3], out_channels=4),
    "dilation": dict(kernel_size=4, dilation=2),
    "rna": dict(kernel_size=4, alphabet="RNA", pairwise_distance=1),
}


@pytest.mark.parametrize(
    "case, bias_mode",
    [
        (c, m)
        for c in DENSE_ONEHOT_CASES
        for m in ("channel", "same", "reverse")
        if not (c == "rna" and m == "reverse")
    ],
)
def test_dense_equals_onehot(case, bias_mode):
    psam = random_psam(**DENSE_ONEHOT_CASES[case])
    conv = PSAMConv1d(psam, 20, min_input_length=12, train_posbias=True, bias_mode=bias_mode, bias_bin=3)
    with torch.no_grad():
        conv.log_posbias.normal_()
    codes = torch.randint(0, 4, (6, 20))
    codes[0, 5] = psam.alphabet.any_code  # '*'
    codes[1, 7] = psam.alphabet.zero_code  # '-'
    codes[2, 14:] = psam.alphabet.pad_code
    with torch.no_grad():
        conv.one_hot = False
        dense = conv(codes)
        conv.one_hot = True
        onehot = conv(codes)
    assert_close(dense, onehot)
    assert torch.isneginf(dense[2, :, 14 - psam.span + 1 :]).all()
    assert torch.isfinite(dense[2, :, : 14 - psam.span + 1]).all()


def test_posbias_modes_and_bins():
    psam = random_psam(kernel_size=4)
    same = PSAMConv1d(psam, 20, train_posbias=True, bias_mode="same", bias_bin=4, length_specific_bias=False)
    assert same.log_posbias.shape == (1, 1, 5)
    rev = PSAMConv1d(psam, 20, train_posbias=True, bias_mode="reverse", length_specific_bias=False)
    assert rev.log_posbias.shape == (1, 1, 17)
    with torch.no_grad():
        same.log_posbias.copy_(torch.arange(5.0).view(1, 1, 5))
        rev.log_posbias.normal_()
    full = same.get_log_posbias()
    assert full.shape == (1, 2, 17)
    assert full[0, 0].tolist() == [float(i // 4) for i in range(17)] and torch.equal(full[0, 0], full[0, 1])
    r = rev.get_log_posbias()
    assert_close(r[0, 1], r[0, 0].flip(-1))
    norm = PSAMConv1d(psam, 20, train_posbias=True, normalize=True, length_specific_bias=False)
    with torch.no_grad():
        norm.log_posbias.normal_()
    assert norm.get_log_posbias().mean(-1).abs().max() < 1e-12
    with pytest.raises(ValueError):
        PSAMConv1d(random_psam(kernel_size=4, alphabet="RNA"), 20, bias_mode="reverse")


def test_length_specific_bias():
    psam = random_psam(kernel_size=4)
    conv = PSAMConv1d(psam, 12, min_input_length=8, train_posbias=True, length_specific_bias=True)
    assert conv.log_posbias.shape == (5, 2, 9)
    with torch.no_grad():
        conv.log_posbias.copy_(torch.arange(5.0).view(5, 1, 1).expand(5, 2, 9))
    x = torch.randint(0, 4, (2, 12))
    lengths = torch.tensor([12, 9])
    plain = PSAMConv1d(psam, 12, length_specific_bias=False)
    with torch.no_grad():
        diff = conv(x, lengths) - plain(x, lengths)
    assert_close(diff[0], torch.full_like(diff[0], 4.0))
    assert_close(diff[1, :, :6], torch.full_like(diff[1, :, :6], 1.0))
    assert torch.isneginf(conv(x, lengths)[1, :, 6:]).all()
    with pytest.raises(ValueError):
        conv(x, torch.tensor([12, 7]))


def test_padding_and_unknown_rows():
    psam = random_psam(kernel_size=5, pairwise_distance=2)
    alphabet = psam.alphabet
    codes = torch.randint(0, 4, (1, 16))
    x = torch.nn.functional.one_hot(codes, 4).double()
    x[0, 6] = 0.0  # an 'N'-like token inside the sequence
    lengths = torch.tensor([13])
    expect_codes = codes.clone()
    expect_codes[0, 13:] = alphabet.pad_code
    results = {}
    for unknown, code in [
        ("mean", alphabet.any_code),
        ("zero", alphabet.zero_code),
        ("pad", alphabet.pad_code),
    ]:
        expect_codes[0, 6] = code
        for one_hot in (False, True):
            conv = PSAMConv1d(psam, 16, length_specific_bias=False, one_hot=one_hot, unknown=unknown)
            with torch.no_grad():
                got = conv(x, lengths)
                ref = PSAMConv1d(psam, 16, length_specific_bias=False)(expect_codes)
            assert_close(got, ref)
            results[unknown] = got
    assert torch.isneginf(results["pad"][0, :, 2:7]).all()
    assert torch.isfinite(results["mean"][0, :, :9]).all() and torch.isneginf(results["mean"][0, :, 9:]).all()
    # The N row is scored as the position mean of the betas.
    matrix = psam.get_filter(0)
    zero_vs_mean = results["mean"][0, :, 6] - results["zero"][0, :, 6]
    assert torch.all(zero_vs_mean != 0) and torch.allclose(
        zero_vs_mean[0],
        matrix[0, :, 0].mean()
        + psam.get_filter(1)[0, :, int(codes[0, 7]), 0].mean()
        + psam.get_filter(2)[0, :, int(codes[0, 8]), 0].mean(),
    )


def test_iupac_codes_and_alphabet():
    alphabet = Alphabet.dna()
    assert alphabet.index["N"] == alphabet.any_code == 5 and alphabet.index["W"] == 9
    codes, lengths = alphabet.encode(["ACGTW", "ACN"])
    assert codes.tolist() == [[0, 1, 2, 3, 9], [0, 1, 5, 4, 4]] and lengths.tolist() == [5, 3]
    assert_close(alphabet.embed(codes)[0, 4], torch.tensor([0.5, 0, 0, 0.5]))
    psam = random_psam(kernel_size=3)
    conv = PSAMConv1d(psam, 5, length_specific_bias=False)
    with torch.no_grad():
        w = conv(codes[:1])  # a degenerate code switches to the one-hot path
        a = conv(torch.tensor([[0, 1, 2, 3, 0]]))
        t = conv(torch.tensor([[0, 1, 2, 3, 3]]))
    assert_close(w[0, 0, 2], (a[0, 0, 2] + t[0, 0, 2]) / 2)


def test_seed_symmetry_and_frozen():
    psam = PSAM(7, "DNA", seed="TGASTCN", seed_scale=2.0)
    matrix = psam_matrix(psam)
    letters = "ACGT"
    for k, char in enumerate("TGA"):
        assert letters[int(matrix[k].argmax())] == char
    assert matrix[3, 1] == matrix[3, 2] > 0 > matrix[3, 0] == matrix[3, 3]
    assert np.all(matrix[6] == 0)
    # Reverse-complement palindrome: forward and reverse filters coincide.
    pal = PSAM(6, "DNA", symmetry=[1, 2, 3, -3, -2, -1], seed="TGATCA")
    f = pal.get_filter(0)
    assert_close(f[0], f[1])
    assert pal.monomer.shape == (3, 1, 4)
    # Frozen betas get no gradient and stay put under Adam.
    frozen = PSAM(5, "DNA", pairwise_distance=1, frozen_parameters={"2-1", "1-2-5"})
    mode = Mode.from_psam(frozen, 12, length_specific_bias=False)
    before = frozen.monomer.detach().clone(), frozen.pairwise.detach().clone()
    opt = torch.optim.Adam(mode.parameters(), lr=0.1)
    x = torch.randint(0, 4, (4, 12))
    for _ in range(3):
        opt.zero_grad()
        mode(x).sum().backward()
        opt.step()
    assert frozen.monomer.grad[1, 0, 1] == 0 and frozen.pairwise.grad[0, 0, 1, 1] == 0
    assert frozen.monomer[1, 0, 1] == before[0][1, 0, 1] and frozen.monomer[1, 0, 2] != before[0][1, 0, 2]
    assert frozen.pairwise[0, 0, 1, 1] == before[1][0, 0, 1, 1]


def test_hill_and_gradients_with_padding():
    psam = random_psam(kernel_size=4, pairwise_distance=1)
    mode = Mode.from_psam(psam, 10, train_hill=True, length_specific_bias=False, train_posbias=True)
    with torch.no_grad():
        mode.log_hill.fill_(0.3)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 10)), 4).double()
    lengths = torch.tensor([10, 6, 2])  # the last one has no complete window
    la = mode(x, lengths)
    windows = mode.score_windows(x, lengths)
    assert_close(la[:2], (np.exp(0.3) * windows[:2]).logsumexp((1, 2)))
    assert torch.isneginf(la[2])
    la.clamp_min(-50).sum().backward()
    grads = {name: p.grad for name, p in mode.named_parameters() if p.requires_grad}
    assert set(grads) == {
        "log_hill",
        "layers.0.layer_spec.monomer",
        "layers.0.layer_spec.pairwise",
        "layers.0.log_posbias",
    }
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), name


# --------------------------------------------------------------------------- predictor
def test_alphabet_projection():
    vocab = ["[PAD]", "A", "C", "G", "T", "a", "c", "g", "t", "gej", "N", "u", "<mask>", ""]
    proj = alphabet_projection(vocab, "ACGT")
    assert proj.shape == (len(vocab), 4)
    mapped = {tok: int(proj[i].argmax()) for i, tok in enumerate(vocab) if proj[i].sum() == 1}
    assert mapped == {"A": 0, "C": 1, "G": 2, "T": 3, "a": 0, "c": 1, "g": 2, "t": 3, "gej": 2, "u": 3}
    assert proj.sum() == 10
    rna = alphabet_projection(["A", "t", "U"], "RNA")
    assert rna.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_predictor_shapes(task):
    vocab = ["[PAD]", "A", "C", "G", "T", "a", "c", "g", "t"]
    model = PSAMPredictor(
        30,
        num_outputs=3,
        task=task,
        n_modes=2,
        kernel_size=[6, 4],
        seeds=["TGACTC", None],
        pairwise_distance=1,
        train_posbias=True,
        vocab=vocab,
    )
    tokens = torch.randint(1, 9, (5, 30))
    tokens[1, 20:] = 0
    x = torch.nn.functional.one_hot(tokens, len(vocab)).float()
    lengths = torch.tensor([30, 20, 30, 3, 30])  # sequence 3 is shorter than the kernels
    out = model(x, lengths)
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    assert model.log_affinities(x, lengths).shape == (5, 2)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_smoke_planted_motif():
    # torch imports its optimizer machinery lazily on the first step (~1 s); not ours to time.
    warm = torch.zeros(1, requires_grad=True)
    warm.sum().backward()
    torch.optim.Adam([warm]).step()
    start = time.perf_counter()
    torch.manual_seed(5)
    n, length, motif = 128, 24, torch.tensor([3, 2, 0, 1, 3, 1, 0])  # TGACTCA in half the sequences
    codes = torch.randint(0, 4, (n, length))
    label = torch.rand(n) < 0.5
    pos = torch.randint(0, length - 7, (n,))
    for i in torch.nonzero(label).flatten():
        codes[i, pos[i] : pos[i] + 7] = motif
    x = torch.nn.functional.one_hot(codes, 4).float()
    lengths = torch.full((n,), length)
    model = PSAMPredictor(length, num_outputs=2, task="classification", kernel_size=7)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x, lengths), label.long())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    learned = "".join("ACGT"[int(i)] for i in psam_matrix(model.modes[0]).argmax(1))
    accuracy = (model(x, lengths).argmax(1) == label).float().mean().item()
    print(
        f"loss {losses[0]:.3f} -> {losses[-1]:.4f}, accuracy {accuracy:.2f}, learned {learned}, {elapsed:.2f}s"
    )
    assert losses[-1] < 0.25 * losses[0]
    assert accuracy >= 0.95
    # Either strand of the planted site, allowing one mismatch.
    assert min(sum(a != b for a, b in zip(learned, site)) for site in ("TGACTCA", "TGAGTCA")) <= 1
    assert elapsed < 3.0


# --------------------------------------------------------------------------- export
def test_exports(tmp_path, fixture_data):
    _, _, weights = fixture_data
    mode = build_fixture_mode(weights)
    matrix = psam_matrix(mode)
    assert matrix.shape == (8, 4)
    doc = to_json(mode, tmp_path / "psam.json", name="fixture")
    loaded = json.loads((tmp_path / "psam.json").read_text())
    assert loaded == doc and loaded["alphabet"] == list("ACGT")
    np.testing.assert_allclose(np.array(loaded["monomer"][0]), matrix)
    np.testing.assert_allclose(
        np.array(loaded["pairwise"]["1"][0]), weights["derived/pairwise_forward_dist1_(1,C,C,K-1)"][0]
    )
    assert to_json(matrix, alphabet="DNA")["kernel_size"] == 8

    text = to_meme({"fixture": matrix}, tmp_path / "psam.meme", alphabet="DNA")
    lines = text.splitlines()
    assert lines[0] == "MEME version 4" and "ALPHABET= ACGT" in lines and "strands: + -" in lines
    start = lines.index("MOTIF fixture") + 2
    probs = np.array([[float(v) for v in line.split()] for line in lines[start : start + 8]])
    expected = np.exp(matrix) / np.exp(matrix).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert "w= 8" in lines[start - 1]

    png = plot_logo(matrix, "ACGT", tmp_path / "logo.png", title="fixture")
    assert Path(png).stat().st_size > 1000
    predictor = PSAMPredictor(20, n_modes=2, kernel_size=5)
    written = export_psams(predictor, tmp_path / "export")
    assert sorted(Path(p).name for p in written) == sorted(
        ["psam_0.json", "psam_1.json", "psam_0_logo.png", "psam_1_logo.png", "psam.meme"]
    )
