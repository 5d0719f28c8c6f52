"""The pieces of psam's staged fit, each on its own: the closed-form head, the gauge, the data
seed, the footprint moves, the schedule for the model's options, and a given seed motif."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from biolm.core.synthetic_binding import make_binding_data, motif_similarity
from biolm.plugins.psam import PSAMSchema
from biolm.plugins.psam.fit_schedule import _Seed, penalty, schedule
from biolm.plugins.psam.footprint import fix_gauge, information, recenter, shift_edge
from biolm.plugins.psam.head_fit import solve_head
from biolm.plugins.psam.predictor import PSAMInput, PSAMPredictor
from biolm.plugins.psam.seeding import kmer_correlations, seed_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_force(f, y, w, task, n_out, cw=None, steps=3000):
    """The same objective minimised from zero by L-BFGS on (weight, bias) (the oracle)."""
    params = [torch.nn.Parameter(torch.zeros(n_out, f.shape[1], dtype=torch.float64)), torch.nn.Parameter(torch.zeros(n_out, dtype=torch.float64))]
    opt = torch.optim.LBFGS(params, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def loss():
        out = f.double() @ params[0].T + params[1]
        if task == "regression":
            return (w * (out[:, 0] - y) ** 2).sum() / w.sum()
        per = torch.nn.functional.cross_entropy(out, y, weight=cw, reduction="none")
        return (per * w).sum() / ((cw[y] if cw is not None else 1.0) * w).sum()

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)
    return float(loss())


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_solve_head_reaches_the_weighted_optimum(task):
    g = torch.Generator().manual_seed(0)
    n = 400
    f = torch.randn(n, 2, generator=g, dtype=torch.float64)
    f[:, 1] = 3.0  # a column that does not vary keeps weight 0
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    if task == "regression":
        y, cw, head = 2.0 * f[:, 0] - 1.0 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64), None, torch.nn.Linear(2, 1).double()
    else:
        logits = torch.stack([torch.zeros(n, dtype=torch.float64), 1.5 * f[:, 0], -f[:, 0]], 1)
        y = torch.multinomial(torch.softmax(logits, 1), 1, generator=g)[:, 0]
        cw, head = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.nn.Linear(2, 3).double()
    solve_head(head, f, y, w, task, cw)
    assert float(head.weight[:, 1].abs().max()) == 0.0
    with torch.no_grad():
        out = f @ head.weight.T + head.bias
    if task == "regression":
        ours = float((w * (out[:, 0] - y) ** 2).sum() / w.sum())
    else:
        ours = float((torch.nn.functional.cross_entropy(out, y, weight=cw, reduction="none") * w).sum() / (cw[y] * w).sum())
    assert ours <= _brute_force(f[:, :1], y, w, task, head.out_features, cw) + 1e-6


def test_gauge_fix_keeps_predictions_and_centres_every_position():
    torch.manual_seed(0)
    net = PSAMPredictor(30, n_modes=2, kernel_size=6, pairwise_distance=2, train_posbias=True).double()
    with torch.no_grad():
        for mode in net.modes:
            mode.psam.monomer.normal_()
            mode.psam.pairwise.normal_()
            mode.layers[0].log_posbias.normal_()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (7, 30)), 4).double()
    before = net(x)
    fix_gauge(net)
    np.testing.assert_allclose(net(x).detach().numpy(), before.detach().numpy(), atol=1e-10)
    for mode in net.modes:
        assert float(mode.psam.monomer.mean(-1).abs().max()) < 1e-12
        assert float(mode.psam.pairwise.mean(-1).abs().max()) < 1e-12 and float(mode.psam.pairwise.mean(-2).abs().max()) < 1e-12
        assert abs(float(mode.layers[0].log_posbias.mean())) < 1e-12


def test_seed_matrix_finds_the_planted_core():
    d = make_binding_data(n=800, length=100, seed=3)
    r = kmer_correlations(d.codes, d.labels[:, None], 6)
    assert r.shape == (4**6, 1) and np.nanmax(r) > 0.15
    betas, info = seed_matrix(d.codes, d.labels[:, None], 10)
    assert betas.shape == (10, 4) and np.allclose(betas.mean(1), 0.0)
    assert motif_similarity(betas, d.energies[0])[0] > 0.6
    # a negative association is found as well (the head's weight carries the sign)
    flipped, info_flipped = seed_matrix(d.codes, -d.labels[:, None], 10)
    assert info_flipped["kmer"] == info["kmer"] and info_flipped["r"] == pytest.approx(-info["r"])


def test_footprint_moves():
    psam = PSAMPredictor(20, kernel_size=8).modes[0].psam
    with torch.no_grad():
        psam.monomer.zero_()
        psam.monomer[5:8, 0, 0] = 3.0  # information at positions 5-7 only
    bits = information(psam.monomer[:, 0, :].detach().numpy())
    assert bits[:5].max() < 1e-9 and bits[5:].min() > 0.5
    tried = []
    assert recenter(psam, tried) == -2 and tried == [-2]  # centre of information 6 -> 4 (mid-kernel 3.5)
    assert float(psam.monomer[3:6, 0, 0].min()) == 3.0 and float(psam.monomer[6:, 0, 0].abs().max()) == 0.0
    assert recenter(psam, tried) == 0  # centred now
    offsets = [0]
    step = shift_edge(psam, 0, offsets)
    assert step in (-1, 1) and offsets == [0, step]


def _ctx(net, task="regression", n=300, seed=0):
    d = make_binding_data(n=n, length=40, widths=8, seed=seed)
    model = PSAMInput(net, 4)
    x = torch.nn.functional.one_hot(torch.as_tensor(d.codes), 4).float()
    batch = ({"x": x, "lengths": torch.full((n,), 40)},)
    y = torch.as_tensor(d.labels, dtype=torch.float32)
    return types.SimpleNamespace(model=model, memory={}, task=task, n_outputs=1, class_weights=None, log=types.SimpleNamespace(info=lambda *a: None), batches=lambda: [(torch.arange(n), batch[0], y, torch.ones(n))]), d


def test_a_given_seed_motif_skips_seeding_from_the_data():
    net = PSAMPredictor(40, kernel_size=8, seeds=["TGACTCAG"])
    ctx, _ = _ctx(net)
    before = net.modes[0].psam.monomer.detach().clone()
    _Seed(0, given=True)(ctx)
    assert torch.equal(net.modes[0].psam.monomer, before) and ctx.memory == {"active": [0]}
    _Seed(0, given=False)(ctx)
    assert not torch.equal(net.modes[0].psam.monomer, before) and "seeds" in ctx.memory


def test_schedule_follows_the_options():
    def stages(**cfg):
        net = PSAMPredictor(40, **{k: v for k, v in cfg.items() if k not in ("fitting",)})
        return [s.name for s in schedule(PSAMInput(net, 4), PSAMSchema(**cfg), None) or []]

    assert stages() == ["seed-0", "psam-0", "recenter-0", "shift-0", "all"]
    assert stages(fitting="gradient") == []
    two = stages(n_modes=2, pairwise_distance=1, train_posbias=True)
    assert two[:6] == ["seed-0", "psam-0", "recenter-0", "shift-0", "pairwise-0", "extra-0"]
    assert two[-4:] == ["psam-1-again", "recenter-1-again", "shift-1-again", "all"]


def test_second_mode_starts_with_a_share_of_the_affinity():
    torch.manual_seed(0)
    net = PSAMPredictor(40, n_modes=2, kernel_size=8)
    ctx, _ = _ctx(net)
    _Seed(0, given=False)(ctx)
    assert float(net.modes[1].psam.bias) == -1e3  # switched off until its turn
    _Seed(1, given=False)(ctx)
    la = torch.cat([ctx.model.log_affinities(b[1]) for b in ctx.batches()]).double()
    share = torch.exp(la[:, 1].logsumexp(0) - torch.logsumexp(la.logsumexp(1), 0))
    assert 0.1 < float(share) < 0.3 and ctx.memory["active"] == [0, 1]


def test_penalty_covers_trained_psam_parameters_only():
    net = PSAMPredictor(20, kernel_size=4)
    model = PSAMInput(net, 4)
    with torch.no_grad():
        net.modes[0].psam.monomer.fill_(2.0)
        net.head.weight.fill_(100.0)
    expected = 1e-6 * 16 * 4.0 + 16 * (np.exp(2.0 - 40) + np.exp(-2.0 - 40))
    assert float(penalty(model)) == pytest.approx(expected, rel=1e-5)
    net.modes[0].psam.monomer.requires_grad_(False)
    assert float(penalty(model)) == 0.0


def test_export_plots_a_trained_position_bias(tmp_path):
    from biolm.plugins.psam.export import export_psams

    net = PSAMPredictor(30, n_modes=2, kernel_size=5, train_posbias=True)
    with torch.no_grad():
        net.modes[0].layers[0].log_posbias.normal_()
    written = sorted(p.split("/")[-1] for p in export_psams(net, tmp_path))
    # mode 1's bias is trainable but still all zero: it is plotted too (it is in use)
    assert written == ["psam.meme", "psam_0.json", "psam_0_logo.png", "psam_0_position_bias.png", "psam_1.json", "psam_1_logo.png", "psam_1_position_bias.png"]
    assert (tmp_path / "psam_0_position_bias.png").stat().st_size > 5000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
