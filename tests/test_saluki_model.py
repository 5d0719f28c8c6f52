"""Saluki model: Keras parity, gradients against a straightforward torch formulation, the exact
eval-mode padding shortcut, training-time augmentation and BatchNorm semantics.

The golden fixture (``tests/fixtures/saluki``) comes from calico/basenji's Keras ``RnaNN`` with
random weights at seq_length 2048; ``outputs_subset.npz`` keeps sequences 1 (full length) and
3 (250 nt, zero-padded) of the original four, plus ``pred_all`` for all four.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biolm.plugins.saluki.keras_weights import load_keras_weights
from biolm.plugins.saluki.kernels import DropMaxPool, GRURecurrence, pair_keep_mask
from biolm.plugins.saluki.model import Saluki, gru_steps, min_seq_length, trunk_lengths

FIX = Path(__file__).parent / "fixtures" / "saluki"
INTERMEDIATES = ["conv0_out"] + [f"block{i}_out" for i in range(6)] + [
    "gru_in", "gru_state", "bn1_relu_out", "dense1_out", "penultimate", "pred"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def keras():
    w = dict(np.load(FIX / "weights.npz"))
    inp = np.load(FIX / "inputs.npz")
    out = dict(np.load(FIX / "outputs_subset.npz"))
    model = Saluki(6, seq_length=2048)
    load_keras_weights(model, w)
    model.eval()
    return model, w, torch.from_numpy(inp["x"]), inp["lengths"], out


def _randomise(model: Saluki, seed: int = 0, scale: float = 0.1) -> Saluki:
    """Perturb every parameter and BN statistic so that none of them is trivially 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        for bn in (model.bn1, model.bn2):
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.3)
    return model


def _one_hot_batch(lengths, length, cin=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), length, cin, dtype=dtype)
    for b, n in enumerate(lengths):
        idx = torch.randint(0, 4, (n,), generator=g)
        x[b, :n, :4] = F.one_hot(idx, 4).to(dtype)
        if cin > 4:
            x[b, :n:3, 4] = 1.0
    return x


def _reference(model: Saluki, x: torch.Tensor) -> torch.Tensor:
    """The straightforward formulation (channels-first convs, permutes, nn.GRU on a flip)."""
    f, eps = model.filters, model.ln_epsilon
    h = F.conv1d(x.transpose(1, 2), model.conv0.weight)
    for blk in model.blocks:
        h = F.relu(F.layer_norm(h.transpose(1, 2), (f,), blk.ln.weight, blk.ln.bias, eps)).transpose(1, 2)
        h = F.max_pool1d(F.dropout(F.conv1d(h, blk.conv.weight, blk.conv.bias), model.dropout, model.training), 2)
    h = F.relu(F.layer_norm(h.transpose(1, 2), (f,), model.final_ln.weight, model.final_ln.bias, eps))
    if model.go_backwards:
        h = torch.flip(h, [1])
    _, state = model.gru(h)

    def bn(m, v):
        if model.training:
            return F.batch_norm(v, None, None, m.weight, m.bias, True, 0.0, m.eps)
        return F.batch_norm(v, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = model.dense1(F.relu(bn(model.bn1, state[0])))
    return model.head(F.relu(bn(model.bn2, h)))


# ---------------------------------------------------------------------------------- lengths


def test_min_seq_length_and_validation():
    assert min_seq_length(5, 6) == Saluki.min_seq_length(5, 6) == 320
    assert gru_steps(12288) == 188 and gru_steps(2048) == 28
    assert trunk_lengths(2048) == [2044, 1020, 508, 252, 124, 60, 28]
    for k, n in [(5, 6), (3, 2), (5, 0), (7, 3), (1, 4)]:
        m = min_seq_length(k, n)
        assert gru_steps(m, k, n) == 1 and gru_steps(m - 1, k, n) == 0
    with pytest.raises(ValueError, match="319.*320"):
        Saluki(6, seq_length=319)
    model = Saluki(6, seq_length=320).eval()
    with pytest.raises(ValueError, match="at least 320"):
        model(torch.zeros(1, 319, 6))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(1, 320, 5))
    assert model(torch.zeros(2, 320, 6)).shape == (2, 1)


# ---------------------------------------------------------------------------------- Keras parity


def test_keras_parity_intermediates(keras):
    model, _, x, _, out = keras
    idx = out["_index"]
    with torch.no_grad():
        got = model.forward_intermediates(x[idx])
    diffs = {}
    for name in INTERMEDIATES:
        assert got[name].shape == out[name].shape, name
        diffs[name] = float(np.abs(got[name].numpy() - out[name]).max())
        np.testing.assert_allclose(got[name].numpy(), out[name], atol=1e-5, rtol=1e-5, err_msg=name)
    print("max |torch - keras|:", {k: f"{v:.1e}" for k, v in diffs.items()})


def test_keras_parity_predictions_with_and_without_shortcut(keras):
    model, _, x, lengths, out = keras
    with torch.no_grad():
        full = model(x, shortcut=False)
        short = model(x, torch.from_numpy(lengths))
        padded = x[2:]  # 600 and 250 nt: the shortcut really runs
        assert model._forward_shortcut(padded, None) is not None
        assert model._forward_shortcut(x[:2], None) is None  # full length: nothing to save
        short_padded = model(padded)
    np.testing.assert_allclose(full.numpy(), out["pred_all"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(short.numpy(), out["pred_all"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(short_padded.numpy(), out["pred_all"][2:], atol=1e-5, rtol=1e-5)


def test_load_keras_weights_rejects_bad_input(keras):
    _, w, _, _, _ = keras
    model = Saluki(6, seq_length=2048)
    with pytest.raises(KeyError):
        load_keras_weights(model, {k: v for k, v in w.items() if k != "bn2.beta"})
    with pytest.raises(KeyError, match="block6"):
        load_keras_weights(model, {**w, "block6.ln.gamma": w["block0.ln.gamma"]})
    with pytest.raises(ValueError, match="head.kernel"):
        load_keras_weights(model, {**w, "head.kernel": np.zeros((64, 2), np.float32)})
    # a failed load leaves the model untouched
    fresh = Saluki(6, seq_length=2048)
    fresh.load_state_dict(model.state_dict())
    with pytest.raises(ValueError):
        load_keras_weights(fresh, {**w, "gru.bias": np.zeros((192,), np.float32)})
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- training path


@pytest.mark.parametrize("go_backwards", [True, False])
def test_training_forward_and_gradients_match_reference(go_backwards):
    torch.manual_seed(0)
    model = Saluki(5, seq_length=96, filters=8, kernel_size=3, num_layers=3, dropout=0.0,
                   augment_shift=0, go_backwards=go_backwards, num_outputs=2).double()
    _randomise(model)
    model.train()
    x = torch.randn(3, 96, 5, dtype=torch.float64)
    padded = x.clone()
    padded[1, 50:] = 0.0  # a padded sample: constant regions
    cot = torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), _reference(model, padded), atol=1e-10, rtol=1e-10)
    # Gradients on generic input: in a constant region the max-pool pairs are equal in exact
    # arithmetic, but the flat convolution's matmul blocking may round one of them 1 ulp higher
    # on some CPUs, which moves the gradient to the other element. The tie rule itself is
    # checked exactly in test_max_pool_ties_route_the_gradient_to_the_first_element.
    x.requires_grad_(True)
    ours = model(x)
    (ours * cot).sum().backward()
    g_ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    gx_ours = x.grad.clone()
    model.zero_grad()
    x.grad = None
    ref = _reference(model, x)
    (ref * cot).sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(x.grad, gx_ours, atol=1e-10, rtol=1e-10)
    for n, p in model.named_parameters():
        torch.testing.assert_close(g_ours[n], p.grad, atol=1e-10, rtol=1e-10, msg=n)


def test_max_pool_ties_route_the_gradient_to_the_first_element():
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 2.0], [0.7, 2.0], [3.0, 3.0], [1.0, 3.0]], dtype=torch.float64)
    ours = y.clone().requires_grad_(True)
    DropMaxPool.apply(ours.clone(), 0.0, True).sum().backward()
    ref = y.clone().requires_grad_(True)
    torch.nn.functional.max_pool1d(ref.T[None], 2).sum().backward()
    torch.testing.assert_close(ours.grad, ref.grad)
    assert ours.grad[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_eval_mode_input_gradients_match_reference():
    torch.manual_seed(1)
    model = _randomise(Saluki(6, seq_length=320)).double().eval()
    # full-length sequences: zero padding makes exact max-pool ties whose rounding is CPU-dependent
    # (see test_training_forward_and_gradients_match_reference)
    x = _one_hot_batch([320, 320], 320, dtype=torch.float64).requires_grad_(True)
    (model(x, shortcut=False).sum()).backward()
    g_ours = x.grad.clone()
    x.grad = None
    _reference(model, x).sum().backward()
    torch.testing.assert_close(g_ours, x.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backwards", [True, False])
def test_gru_recurrence_matches_nn_gru(backwards):
    torch.manual_seed(2)
    gru = torch.nn.GRU(8, 8, batch_first=True).double()
    x = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    xp = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
    ours = GRURecurrence.apply(xp, gru.weight_hh_l0, gru.bias_hh_l0, h0[0], backwards)
    _, ref = gru(torch.flip(x, [1]) if backwards else x, h0)
    torch.testing.assert_close(ours, ref[0])
    inputs = (x, h0, *gru.parameters())
    g1 = torch.autograd.grad(ours.sum(), inputs)
    g2 = torch.autograd.grad(ref.sum(), inputs)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_dropout_maxpool_matches_reference():
    y = torch.randn(2001, 16, requires_grad=True)  # odd: the last row is not pooled
    g = torch.randn(1000, 16)
    torch.manual_seed(7)
    out = DropMaxPool.apply(y, 0.3)
    (gy,) = torch.autograd.grad(out, y, g)
    torch.manual_seed(7)
    keep = pair_keep_mask(1000, 16, 0.3, y)
    ref = (y[:2000].view(1000, 2, 16) * keep / 0.7).amax(1)
    (gref,) = torch.autograd.grad(ref, y, g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gy, gref)
    assert torch.all(gy[2000] == 0)
    # ties go to the first element of the pair, as in TensorFlow's MaxPool gradient
    t = torch.ones(4, 3, requires_grad=True)
    (gt,) = torch.autograd.grad(DropMaxPool.apply(t, 0.0), t, torch.ones(2, 3))
    assert torch.equal(gt, torch.tensor([[1.0] * 3, [0.0] * 3] * 2))


def test_dropout_mask_rate_and_reproducibility():
    like = torch.empty(0)
    torch.manual_seed(3)
    a = pair_keep_mask(500_000, 2, 0.3, like)
    torch.manual_seed(3)
    b = pair_keep_mask(500_000, 2, 0.3, like)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    # both elements of a pair are kept independently with probability 0.7
    e, o = a[:, 0], a[:, 1]
    for got, want in [(e.mean(), 0.7), (o.mean(), 0.7), ((e * o).mean(), 0.49), (((1 - e) * (1 - o)).mean(), 0.09)]:
        assert abs(got.item() - want) < 2e-3
    # and independently of the neighbouring channel and pair
    assert abs((a[:, :, 0] * a[:, :, 1]).mean().item() - 0.49) < 2e-3
    assert abs((a[1:, 0] * a[:-1, 1]).mean().item() - 0.49) < 2e-3


def test_training_is_reproducible_and_uses_dropout():
    model = Saluki(6, seq_length=400, filters=16)
    x = _one_hot_batch([400, 380, 300], 400)
    model.train()
    torch.manual_seed(11)
    a = model(x)
    torch.manual_seed(11)
    b = model(x)
    torch.manual_seed(12)
    c = model(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_stochastic_shift_semantics():
    model = Saluki(3, seq_length=320, filters=8, augment_shift=3, dropout=0.0)
    x = torch.arange(1, 2 * 320 * 3 + 1, dtype=torch.float32).view(2, 320, 3)
    flat = model._flat_input(x, 320, 2).view(2, 320, 3)
    assert torch.equal(flat[:, :2], torch.zeros(2, 2, 3))
    assert torch.equal(flat[:, 2:], x[:, :-2])
    model.train()
    torch.manual_seed(0)
    assert {model._draw_shift() for _ in range(200)} == {0, 1, 2, 3}
    seen = []
    orig = model._flat_input
    model._flat_input = lambda x_, slot, shift: (seen.append(shift), orig(x_, slot, shift))[1]
    model._draw_shift = lambda: 3
    with torch.no_grad():
        model(x)
        model.eval()
        del model._draw_shift
        assert model._draw_shift() == 0
        model(x, shortcut=False)
    assert seen == [3, 0]


def test_batchnorm_follows_keras_moving_statistics():
    model = Saluki(6, seq_length=320, filters=8, dropout=0.0, augment_shift=0)
    model.train()
    x = _one_hot_batch([320] * 4, 320)
    old_mean = model.bn1.running_mean.clone()
    old_var = model.bn1.running_var.clone()
    with torch.no_grad():
        state = model.forward_intermediates(x)["gru_state"]
    var, mean = torch.var_mean(state, 0, correction=0)  # Keras: biased batch variance
    torch.testing.assert_close(model.bn1.running_mean, 0.9 * old_mean + 0.1 * mean)
    torch.testing.assert_close(model.bn1.running_var, 0.9 * old_var + 0.1 * var)
    assert model.bn1.momentum == pytest.approx(0.1)


# ---------------------------------------------------------------------------------- eval shortcut


@pytest.mark.parametrize("kw,length,lengths", [
    ({}, 768, [768, 700, 333, 50, 0]),
    ({"go_backwards": False}, 768, [640, 81, 1, 400]),
    ({"kernel_size": 3, "num_layers": 3, "filters": 16}, 203, [203, 150, 40, 17]),  # L not a multiple of 8
    ({"activation": "gelu", "filters": 16, "num_layers": 5}, 400, [399, 3, 200]),
])
def test_eval_shortcut_equals_full_computation(kw, length, lengths):
    torch.manual_seed(4)
    model = _randomise(Saluki(6, seq_length=length, **kw), scale=0.2).eval()
    x = _one_hot_batch(lengths, length, seed=5)
    rows = []
    orig = model._trunk_flat
    model._trunk_flat = lambda h, record=None: (rows.append(h.shape[0]), orig(h, record))[1]
    with torch.no_grad():
        full = model(x, shortcut=False)
        short = model(x)
        hinted = model(x, torch.tensor(lengths))
        too_short = model(x, torch.zeros(len(lengths), dtype=torch.int64))
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hinted, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(too_short, full, atol=1e-5, rtol=1e-5)
    # the shortcut's trunk (second call; the third is the padding column) saw fewer rows
    assert rows[1] < len(lengths) * length
    # a batch of one gives the same answer
    with torch.no_grad():
        torch.testing.assert_close(model(x[2:3]), full[2:3], atol=1e-5, rtol=1e-5)


def test_eval_shortcut_gradients():
    torch.manual_seed(6)
    model = _randomise(Saluki(6, seq_length=400, filters=16)).eval()
    x = _one_hot_batch([400, 150, 60], 400, seed=1)
    # parameter gradients through the shortcut (padding constants included) are exact
    g_short = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    g_full = torch.autograd.grad(model(x, shortcut=False).sum(), list(model.parameters()))
    for a, b in zip(g_short, g_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # an input that requires grad takes the full path (padding rows have gradients too)
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(model(xg).sum(), xg)
    assert gx[2, 300:].abs().sum() > 0


def test_effective_lengths():
    model = Saluki(6, seq_length=320)
    x = _one_hot_batch([320, 100, 0], 320)
    x[1, 50] = 0.0  # an all-zero row inside the sequence does not end it
    assert model.effective_lengths(x).tolist() == [320, 100, 0]
    assert model.effective_lengths(x, torch.tensor([10, 200, 5])).tolist() == [320, 200, 5]
    x[2, 10, 5] = float("nan")  # non-finite input counts as data: never skipped
    x[1, 300, 0] = -float("inf")
    assert model.effective_lengths(x).tolist() == [320, 301, 11]


# ---------------------------------------------------------------------------------- misc


def test_l2_penalty_and_init():
    model = Saluki(6, seq_length=320, l2_scale=1e-3)
    ws = [model.conv0.weight, model.gru.weight_ih_l0, model.dense1.weight] + [b.conv.weight for b in model.blocks]
    expected = 1e-3 * sum((w**2).sum() for w in ws)
    torch.testing.assert_close(model.l2_penalty(), expected)
    # Keras initialisers: he_normal kernels, zero biases, orthogonal recurrent kernel
    w = model.blocks[0].conv.weight
    assert abs(w.std().item() - (2 / (5 * 64)) ** 0.5) < 0.01
    assert torch.all(model.blocks[0].conv.bias == 0)
    u = model.gru.weight_hh_l0
    torch.testing.assert_close(u.t() @ u, torch.eye(64), atol=1e-5, rtol=0)


def test_state_dict_round_trip():
    a = _randomise(Saluki(6, seq_length=320)).eval()
    b = Saluki(6, seq_length=320).eval()
    b.load_state_dict(a.state_dict())
    x = _one_hot_batch([320, 120], 320)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
