"""The fast leave-one-out routines of psam, lcl, pca (and saluki's on saturation) equal full forward passes.

Every routine is compared with the batched full forward passes of the perturbed one-hot inputs
(what ``biolm.core.perturb.full_forward_scores`` computes: copies of the input with one row replaced,
through the plugin model) for ``mask`` (all-zero row), ``replace`` (another token's one-hot row,
modifier channels kept) and saturation (every other token at every position: positions repeated),
on random inputs with real lengths below the block size (padding rows), within 1e-5. Each check
also asserts that the perturbations move the outputs by far more than the tolerance.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from biolm.core.hookspecs import ModelInfo
from biolm.plugins.lcl import fastloo as lcl_fastloo
from biolm.plugins.pca import fastloo as pca_fastloo
from biolm.plugins.psam import fastloo as psam_fastloo
from biolm.plugins.saluki import fastloo as saluki_fastloo

from loo_oracle import full_forward_loo

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# inputs, perturbations, reference
# ------------------------------------------------------------------------------------------------


def sequence(L: int, n: int, V: int, M: int, seed: int, zero_rows: int = 0) -> dict:
    """(1, L, V + M): one-hot tokens on the first ``n`` rows, a modifier value in the last ``M``
    channels on some rows, ``zero_rows`` all-zero rows inside the sequence, zero padding after ``n``."""
    rng = np.random.default_rng(seed)
    x = torch.zeros(1, L, V + M)
    x[0, torch.arange(n), torch.as_tensor(rng.integers(0, V, n))] = 1
    if M:
        r = torch.as_tensor(rng.choice(n, size=max(1, n // 4), replace=False))
        x[0, r, V:] = torch.as_tensor(rng.uniform(0.2, 1.0, (len(r), M)), dtype=torch.float32)
    if zero_rows:
        x[0, torch.as_tensor(rng.choice(n, size=zero_rows, replace=False)), :V] = 0
    return {"x": x, "lengths": torch.tensor([n])}


def mask(inp: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n), torch.zeros(n, inp["x"].shape[2])


def replace(inp: dict, n: int, V: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Another token at every position (modifier channels kept, as the core does)."""
    rng = np.random.default_rng(seed)
    pos = torch.arange(n)
    old = inp["x"][0, pos]
    cur = old[:, :V].argmax(1)
    new = (cur + torch.as_tensor(rng.integers(1, V, n))) % V
    rows = torch.zeros_like(old)
    rows[pos, new] = 1
    rows[:, V:] = old[:, V:]
    return pos, rows


def saturate(inp: dict, n: int, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every other token at every position: positions [0]*(V-1) + [1]*(V-1) + ..., modifiers kept."""
    old = inp["x"][0, :n]
    cur = old[:, :V].argmax(1)
    pos = torch.arange(n).repeat_interleave(V - 1)
    shift = torch.arange(1, V).repeat(n)
    rows = torch.zeros(len(pos), old.shape[1])
    rows[torch.arange(len(pos)), (cur[pos] + shift) % V] = 1
    rows[:, V:] = old[pos, V:]
    return pos, rows


reference = full_forward_loo  # the core's fallback: full forward passes of the perturbed copies


def check(fast_loo, model, inp, n, positions, rows, effect: float = 1e-3) -> float:
    fast = fast_loo(model, inp, n, positions, rows)
    full = reference(model, inp, positions, rows)
    assert fast.shape == full.shape
    diff = float((fast - full).abs().max())
    assert diff <= TOL, diff
    assert float(full.std(0).max()) > effect  # the changes do move the outputs
    return diff


def all_kinds(inp, n, V, seed=0):
    yield "mask", *mask(inp, n)
    yield "replace", *replace(inp, n, V, seed)
    yield "saturate", *saturate(inp, n, V)


# ------------------------------------------------------------------------------------------------
# psam
# ------------------------------------------------------------------------------------------------


class _Tok:
    # letters in both cases, a modified-letter token, and tokens outside the alphabet (N, <mask>)
    vocab = ["A", "C", "G", "T", "a", "c", "g", "t", "gej", "N", "<mask>"]


def _psam(L: int, outputs: int = 2, seed: int = 0, **cfg):
    from biolm.plugins.psam import PSAMSchema, _build

    torch.manual_seed(seed)
    task = "classification" if outputs > 2 else "regression"
    model = _build(PSAMSchema(**cfg), ModelInfo(task, outputs, len(_Tok.vocab) + 1, L, tokenizer=_Tok())).eval()
    _randomise_psam(model.net, seed)
    return model


def _randomise_psam(net, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mode in net.modes:
            conv = mode.layers[0]
            psam = conv.layer_spec
            psam.monomer.copy_(torch.randn(psam.monomer.shape, generator=g))
            psam.pairwise.copy_(0.5 * torch.randn(psam.pairwise.shape, generator=g))
            psam.bias.copy_(torch.randn(psam.bias.shape, generator=g))
            if conv.train_posbias:
                conv.log_posbias.copy_(torch.randn(conv.log_posbias.shape, generator=g))
            mode.log_hill.fill_(float(torch.randn((), generator=g)) * 0.3)
        net.head.weight.copy_(torch.randn(net.head.weight.shape, generator=g))


PSAM_OPTIONS = [
    dict(),
    dict(n_modes=3, pairwise_distance=2),
    dict(score_reverse=False, pairwise_distance=3, train_posbias=True),
    dict(n_modes=2, pairwise_distance=1, train_posbias=True, bias_mode="reverse", bias_bin=3),
    dict(train_posbias=True, bias_mode="same", normalize=True, one_hot=False),
    dict(n_modes=2, train_posbias=True, length_specific_bias=True, pairwise_distance=2),
    dict(alphabet="RNA", score_reverse=False, train_posbias=True, pairwise_distance=2, train_hill=True),
]


@pytest.mark.parametrize("unknown", ["mean", "zero", "pad"])
@pytest.mark.parametrize("opts", PSAM_OPTIONS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "default")
def test_psam_matches_full_forwards(opts, unknown):
    L, n, V = 40, 33, len(_Tok.vocab)
    model = _psam(L, kernel_size=5, unknown=unknown, **opts)
    # tokens 9, 10 (N, <mask>) project onto no letter: "unknown" rows inside the sequence
    inp = sequence(L, n, V, 1, seed=len(opts), zero_rows=2)
    for kind, pos, rows in all_kinds(inp, n, V):
        check(psam_fastloo.fast_loo, model, inp, n, pos, rows)


def test_psam_dilation_kernels_per_mode_and_full_length():
    from biolm.plugins.psam.predictor import PSAMPredictor

    L, V = 36, len(_Tok.vocab)
    net = PSAMPredictor(L, num_outputs=2, n_modes=2, kernel_size=[4, 3], dilation=2, train_posbias=True,
                        vocab=_Tok.vocab).eval()
    _randomise_psam(net, 5)

    def model(batch):  # the plugin wrapper: vocabulary channels only
        return net(batch["x"][..., :V], batch["lengths"])

    for n in (L, 20):
        inp = sequence(L, n, V, 1, seed=n, zero_rows=1)
        for kind, pos, rows in all_kinds(inp, n, V):
            fast = psam_fastloo.fast_loo(net, {"x": inp["x"][..., :V], "lengths": inp["lengths"]}, n, pos, rows[:, :V])
            assert float((fast - reference(model, inp, pos, rows)).abs().max()) <= TOL


def test_psam_symmetry():
    from biolm.plugins.psam.predictor import PSAMPredictor

    L, V = 30, len(_Tok.vocab)
    # a reverse-complement palindrome with shared pairwise terms
    net = PSAMPredictor(L, num_outputs=1, kernel_size=5, symmetry=[1, 2, 3, -2, -1], pairwise_distance=2,
                        vocab=_Tok.vocab).eval()
    _randomise_psam(net, 6)
    inp = sequence(L, 26, V, 0, seed=6, zero_rows=1)
    for kind, pos, rows in all_kinds(inp, 26, V):
        fast = psam_fastloo.fast_loo(net, inp, 26, pos, rows)
        assert float((fast - reference(_LengthsAdapter(net), inp, pos, rows)).abs().max()) <= TOL


class _LengthsAdapter(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, batch):
        return self.net(batch["x"], batch["lengths"])


def test_psam_sequence_shorter_than_kernel_and_padding_positions():
    L, V = 24, len(_Tok.vocab)
    model = _psam(L, kernel_size=6, pairwise_distance=2)
    inp = sequence(L, 4, V, 1, seed=1)  # no complete window: log-affinity -inf -> floor
    pos, rows = saturate(inp, 4, V)
    fast = psam_fastloo.fast_loo(model, inp, 4, pos, rows)
    assert torch.allclose(fast, reference(model, inp, pos, rows), atol=TOL)
    inp = sequence(L, 15, V, 1, seed=2)
    pos = torch.tensor([14, 15, 20, 23])  # rows at / beyond the real length stay padding
    rows = torch.zeros(4, V + 1)
    rows[:, 2] = 1
    assert torch.allclose(psam_fastloo.fast_loo(model, inp, 15, pos, rows), reference(model, inp, pos, rows), atol=TOL)


# ------------------------------------------------------------------------------------------------
# lcl
# ------------------------------------------------------------------------------------------------


def _randomise_lcl(model, seed: int) -> None:
    """Weights large enough that one position moves the prediction (EIR's init barely does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 3 and "pos_emb" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            elif "norm" in name and "weight" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif "bias" in name or "pos_emb" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


LCL_OPTIONS = [
    dict(kernel_width=8, cutoff=32),
    dict(kernel_width=12, cutoff=64),  # fc_0 kernel 6 < C: positions straddle two chunks
    dict(kernel_width=8, cutoff=16, attention_inclusion_cutoff=16),
    dict(kernel_width=8, layers=[2, 1]),
    dict(kernel_width=8, cutoff=64, first_kernel_expansion=1, first_channel_expansion=2, channel_exp_base=1),
    dict(kernel_width=None, num_lcl_chunks=30, cutoff=32),
    dict(kernel_width=4, cutoff=200),  # block 0 keeps the width: identity shortcut (normed input)
    dict(kernel_width=4, cutoff=900, direction="up"),
]


@pytest.mark.parametrize("opts", LCL_OPTIONS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_lcl_matches_full_forwards(opts):
    from biolm.plugins.lcl import LCLSchema, _build

    L, V, M = 64, 5, 1
    torch.manual_seed(0)
    model = _build(LCLSchema(head_hidden=16, rb_do=0.0, **opts), ModelInfo("regression", 2, V + M, L)).eval()
    _randomise_lcl(model, 1)
    for n in (L, 45):
        inp = sequence(L, n, V, M, seed=n)
        for kind, pos, rows in all_kinds(inp, n, V):
            check(lcl_fastloo.fast_loo, model, inp, n, pos, rows)


class _Adapter(torch.nn.Module):
    """The plugin's InputAdapter (``forward({"x"}) -> net(x)``) for a directly built predictor."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, batch):
        return self.net(batch["x"])


def test_lcl_channel_major_flattening_and_fallback(monkeypatch):
    from biolm.plugins.lcl.network import LCLPredictor

    L, V = 48, 4
    net = LCLPredictor(L, V, 3, head_hidden=8, kernel_width=8, cutoff=32, flatten_order="channel_major").eval()
    _randomise_lcl(net, 2)
    model = _Adapter(net)
    inp = sequence(L, 40, V, 0, seed=3)
    for kind, pos, rows in all_kinds(inp, 40, V):
        check(lcl_fastloo.fast_loo, model, inp, 40, pos, rows)
    monkeypatch.setattr(lcl_fastloo, "_supported", lambda body: False)  # other architectures
    check(lcl_fastloo.fast_loo, model, inp, 40, *mask(inp, 40))


def test_lcl_chunks_on_a_thread_pool(monkeypatch):
    # with several intra-op threads the chunks go to a pool of Python threads (ops single-threaded)
    from biolm.plugins.lcl import LCLSchema, _build

    monkeypatch.setattr(lcl_fastloo, "_CHUNK", 16)
    L, V = 64, 5
    model = _build(LCLSchema(kernel_width=8, cutoff=32, head_hidden=8), ModelInfo("regression", 1, V + 1, L)).eval()
    _randomise_lcl(model, 4)
    inp = sequence(L, 50, V, 1, seed=5)
    pos, rows = saturate(inp, 50, V)
    ref = reference(model, inp, pos, rows)
    torch.set_num_threads(2)
    try:
        fast = lcl_fastloo.fast_loo(model, inp, 50, pos, rows)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert float((fast - ref).abs().max()) <= TOL


# ------------------------------------------------------------------------------------------------
# pca
# ------------------------------------------------------------------------------------------------


def _pca(L: int, C: int, outputs: int, task: str, seed: int, **cfg):
    from biolm.plugins.pca import PCASchema, _build

    torch.manual_seed(seed)
    model = _build(PCASchema(n_components=6, **{k: v for k, v in cfg.items() if k != "standardize"}),
                   ModelInfo(task, outputs, C, L)).eval()
    net = model.net
    g = torch.Generator().manual_seed(seed)
    X = torch.zeros(200, L, C)
    X[torch.arange(200)[:, None], torch.arange(L), torch.randint(0, C - 1, (200, L), generator=g)] = 1
    X[:, ::3, C - 1] = torch.rand(200, (L + 2) // 3, generator=g)
    net.partial_fit(X[:100])
    net.partial_fit(X[100:])
    z = net.embed(X)
    if task == "regression":
        y = z[:, :outputs] @ torch.randn(outputs, outputs, generator=g) + 0.1 * torch.randn(200, outputs, generator=g)
    else:
        y = (z[:, :outputs] + 0.3 * torch.randn(200, outputs, generator=g)).argmax(1)
    net.fit_head(z, y, task=task, standardize=cfg.get("standardize", True))
    return model


@pytest.mark.parametrize("task,outputs,cfg", [("regression", 2, {}), ("classification", 3, {}),
                                              ("regression", 1, {"standardize": False, "perform_mean_correction": False})])
def test_pca_matches_full_forwards(task, outputs, cfg):
    L, V, M = 50, 4, 1
    model = _pca(L, V + M, outputs, task, seed=outputs, **cfg)
    for n in (L, 31):
        inp = sequence(L, n, V, M, seed=n)
        for kind, pos, rows in all_kinds(inp, n, V):
            check(pca_fastloo.fast_loo, model, inp, n, pos, rows, effect=1e-4)


def test_pca_saturation_table():
    L, V = 30, 4
    model = _pca(L, V + 1, 2, "regression", seed=7)
    inp = sequence(L, 25, V, 1, seed=1)
    cand = torch.cat([torch.eye(V), torch.zeros(V, 1)], 1)  # every letter, no modifier
    table = pca_fastloo.saturation(model, inp, cand)  # (L, V, O)
    pos = torch.arange(L).repeat_interleave(V)
    rows = cand.repeat(L, 1)
    assert table.shape == (L, V, 2)
    assert float((table.reshape(-1, 2) - reference(model, inp, pos, rows)).abs().max()) <= TOL


# ------------------------------------------------------------------------------------------------
# saluki: several alternatives per position
# ------------------------------------------------------------------------------------------------


def _saluki(L: int, outputs: int, seed: int, **cfg):
    from biolm.plugins.saluki import SalukiSchema, _build

    torch.manual_seed(seed)
    model = _build(SalukiSchema(filters=16, **cfg), ModelInfo("regression", outputs, 6, L)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("cfg", [dict(num_layers=3), dict(num_layers=3, go_backwards=False), dict(num_layers=2, kernel_size=3)])
def test_saluki_saturation_matches_full_forwards(cfg):
    L, V = 96, 5
    model = _saluki(L, 2, seed=len(cfg), **cfg)
    for n in (L, 70):
        inp = sequence(L, n, V, 1, seed=n)
        for kind, pos, rows in all_kinds(inp, n, V):
            check(saluki_fastloo.fast_loo, model, inp, n, pos, rows)


def test_saluki_mixed_alternative_counts_small_chunks_and_threads(monkeypatch):
    L, V = 96, 5
    model = _saluki(L, 1, seed=3, num_layers=3)
    inp = sequence(L, 80, V, 1, seed=4)
    pos, rows = saturate(inp, 80, V)
    keep = torch.as_tensor(np.random.default_rng(0).random(len(pos)) < 0.6)  # 1-4 alternatives each
    perm = torch.randperm(int(keep.sum()), generator=torch.Generator().manual_seed(1))  # unsorted
    pos, rows = pos[keep][perm], rows[keep][perm]
    ref = reference(model, inp, pos, rows)
    monkeypatch.setattr(saluki_fastloo, "_CHUNK", 16)
    monkeypatch.setattr(saluki_fastloo, "_MIN_CHUNK", 8)
    assert float((saluki_fastloo.fast_loo(model, inp, 80, pos, rows) - ref).abs().max()) <= TOL
    torch.set_num_threads(2)
    try:
        assert float((saluki_fastloo.fast_loo(model, inp, 80, pos, rows) - ref).abs().max()) <= TOL
    finally:
        torch.set_num_threads(1)


def test_no_positions():
    L, V = 40, 4
    inp = sequence(L, 30, V, 1, seed=0)
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, V + 1))
    from biolm.plugins.lcl import LCLSchema, _build

    lcl = _build(LCLSchema(kernel_width=8, cutoff=32, head_hidden=8), ModelInfo("regression", 1, V + 1, L)).eval()
    assert lcl_fastloo.fast_loo(lcl, inp, 30, *empty).shape == (0, 1)
    assert pca_fastloo.fast_loo(_pca(L, V + 1, 2, "regression", 0), inp, 30, *empty).shape == (0, 2)
    psam_inp = sequence(L, 30, len(_Tok.vocab), 1, seed=0)
    assert psam_fastloo.fast_loo(_psam(L), psam_inp, 30, torch.zeros(0, dtype=torch.long),
                                 torch.zeros(0, len(_Tok.vocab) + 1)).shape == (0, 2)
    with pytest.raises(ValueError):
        lcl_fastloo.fast_loo(lcl, inp, 30, torch.tensor([L]), torch.zeros(1, V + 1))


def test_option_grid_is_covered():
    # every psam option appears in some combination above (documentation of what is tested)
    keys = set(itertools.chain.from_iterable(PSAM_OPTIONS))
    assert {"n_modes", "pairwise_distance", "score_reverse", "train_posbias", "bias_mode", "bias_bin",
            "length_specific_bias", "one_hot", "normalize", "alphabet"} <= keys
