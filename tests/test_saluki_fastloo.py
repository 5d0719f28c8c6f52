"""Saluki's fast leave-one-out routine equals batched full forward passes of the perturbed inputs.

``fast_loo`` reuses the unperturbed activations and recomputes only the window each single-row
change touches (fastISM); it must agree with ``full_forward_loo`` (the model's own eval-mode
forward, padding shortcut included) for mask and replace changes anywhere in the sequence, with
real lengths below and equal to the block size, several outputs, other kernel sizes, depths,
activations and GRU directions, and through ``biolm saluki interpret``.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from biolm.plugins.saluki import SalukiSchema, _build
from biolm.plugins.saluki import fastloo as fl
from biolm.plugins.saluki.fastloo import fast_loo
from biolm.plugins.saluki.model import Saluki, min_seq_length

from conftest import write_config
from loo_oracle import full_forward_loo

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter and give the BatchNorms non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _plugin_model(blocksize: int, channels: int, outputs: int, seed: int = 0, **cfg):
    from biolm.core.hookspecs import ModelInfo

    torch.manual_seed(seed)
    task = "classification" if outputs > 1 else "regression"
    model = _build(SalukiSchema(filters=16, **cfg), ModelInfo(task, outputs, channels, blocksize)).eval()
    _randomise(model.net, seed)
    return model


def _sequence(blocksize: int, n: int, channels: int, bases: int, seed: int, modifier: bool = False):
    """One-hot over the first ``bases`` channels for n rows, zero padding after; optionally a
    modifier value in the last channel on some rows."""
    rng = np.random.default_rng(seed)
    x = torch.zeros(1, blocksize, channels)
    x[0, torch.arange(n), torch.as_tensor(rng.integers(0, bases, n))] = 1
    if modifier:
        rows = torch.as_tensor(rng.choice(n, size=max(1, n // 5), replace=False))
        x[0, rows, channels - 1] = torch.as_tensor(rng.uniform(0.2, 1.0, len(rows)), dtype=torch.float32)
    return {"x": x, "lengths": torch.tensor([n])}


def _mask_rows(inp, positions):
    return torch.zeros(len(positions), inp["x"].shape[2])


def _replace_rows(inp, positions, bases: int, seed: int, keep_modifier: bool):
    """Another base at every position; the modifier channel kept (or zeroed) as the core does."""
    rng = np.random.default_rng(seed)
    old = inp["x"][0, positions]
    rows = torch.zeros_like(old)
    cur = old[:, :bases].argmax(1)
    new = (cur + torch.as_tensor(rng.integers(1, bases, len(positions)))) % bases
    rows[torch.arange(len(positions)), new] = 1
    if keep_modifier:
        rows[:, bases:] = old[:, bases:]
    return rows


def _check(model, inp, n, positions, rows):
    fast = fast_loo(model, inp, n, positions, rows)
    full = full_forward_loo(model, inp, positions, rows, batch=64)
    assert fast.shape == full.shape == (len(positions), model.net.num_outputs)
    diff = float((fast - full).abs().max())
    assert diff <= TOL, diff
    # the changes do move the outputs (the comparison is not between constants)
    assert float(full.std(0).max()) > 1e-3
    return fast


def _boundary_positions(n: int, extra: int = 40, seed: int = 0) -> torch.Tensor:
    """0, n-1, the positions around every power-of-two (pooling phase) boundary, and a few more."""
    special = {0, 1, 2, 3, 4, 5, n - 5, n - 4, n - 3, n - 2, n - 1}
    for b in (8, 16, 32, 64, 128, 256):
        special |= {b - 5, b - 4, b - 1, b, b + 1}
    rng = np.random.default_rng(seed)
    special |= set(rng.choice(n, size=min(extra, n), replace=False).tolist())
    return torch.as_tensor(sorted(p for p in special if 0 <= p < n))


@pytest.mark.parametrize("blocksize,n", [(320, 320), (320, 251), (512, 512), (512, 300), (512, 37)])
def test_mask_every_position_matches_full_forwards(blocksize, n):
    model = _plugin_model(blocksize, 6, 1, seed=blocksize + n)
    inp = _sequence(blocksize, n, 6, 4, seed=n)
    positions = torch.arange(n) if n <= 320 else _boundary_positions(n)
    _check(model, inp, n, positions, _mask_rows(inp, positions))


@pytest.mark.parametrize("keep_modifier", [True, False])
def test_replace_with_modifier_channel_and_three_outputs(keep_modifier):
    blocksize, n, channels, bases = 512, 450, 9, 8
    model = _plugin_model(blocksize, channels, 3, seed=3)
    inp = _sequence(blocksize, n, channels, bases, seed=4, modifier=True)
    positions = _boundary_positions(n, extra=60, seed=1)
    # two replacements per position, as replacementdict lists do
    positions = torch.cat([positions, positions])
    rows = _replace_rows(inp, positions, bases, seed=5, keep_modifier=keep_modifier)
    _check(model, inp, n, positions, rows)


def test_gru_read_forwards_and_short_block():
    # go_backwards=False reads the padding steps last; 5 blocks allow a 256 block
    model = _plugin_model(256, 6, 2, seed=7, go_backwards=False, num_layers=5)
    for n in (256, 200, 30):
        inp = _sequence(256, n, 6, 4, seed=n)
        positions = torch.arange(n)
        _check(model, inp, n, positions, _mask_rows(inp, positions))


@pytest.mark.parametrize("kernel_size,num_layers,activation", [(3, 4, "gelu"), (4, 3, "relu"), (2, 2, "softplus"), (5, 0, "tanh")])
def test_other_architectures(kernel_size, num_layers, activation):
    length = min_seq_length(kernel_size, num_layers) + 9
    net = Saluki(5, seq_length=length, filters=8, kernel_size=kernel_size, num_layers=num_layers,
                 activation=activation, num_outputs=2).eval()
    _randomise(net, kernel_size * 10 + num_layers)
    for n in (length, length - 6, length // 2):
        inp = _sequence(length, n, 5, 4, seed=n)
        positions = torch.arange(n)
        rows = _replace_rows(inp, positions, 4, seed=n, keep_modifier=False)
        fast = fast_loo(net, inp, n, positions, rows)
        xb = inp["x"].repeat(n, 1, 1)
        xb[positions, positions] = rows
        with torch.no_grad():
            full = net(xb, inp["lengths"].repeat(n), shortcut=False)  # the plain full-length path
        assert float((fast - full).abs().max()) <= TOL


def test_chunks_unsorted_positions_and_repeats(monkeypatch):
    monkeypatch.setattr(fl, "_CHUNK", 7)
    model = _plugin_model(320, 6, 1, seed=11)
    inp = _sequence(320, 200, 6, 4, seed=2)
    positions = torch.as_tensor([199, 0, 57, 57, 128, 3, 64, 127, 198, 1, 100, 63, 65, 0, 150, 31, 32, 33])
    rows = _replace_rows(inp, positions, 4, seed=3, keep_modifier=False)
    _check(model, inp, 200, positions, rows)


def test_chunks_on_a_thread_pool(monkeypatch):
    # on CPU the chunks go to one worker thread per intra-op thread of the caller
    monkeypatch.setattr(fl, "_MIN_CHUNK", 8)
    model = _plugin_model(320, 6, 1, seed=13)
    inp = _sequence(320, 150, 6, 4, seed=6)
    positions = torch.arange(150)
    rows = _mask_rows(inp, positions)
    full = full_forward_loo(model, inp, positions, rows)
    torch.set_num_threads(2)
    try:
        fast = fast_loo(model, inp, 150, positions, rows)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(1)
    assert float((fast - full).abs().max()) <= TOL


def test_unchanged_rows_give_the_unperturbed_prediction():
    model = _plugin_model(384, 6, 1, seed=12)
    inp = _sequence(384, 300, 6, 4, seed=5)
    positions = torch.arange(0, 300, 7)
    out = fast_loo(model, inp, 300, positions, inp["x"][0, positions])
    with torch.no_grad():
        base = model(inp)
    assert float((out - base).abs().max()) <= TOL


def test_no_positions_and_bad_positions():
    model = _plugin_model(320, 6, 1)
    inp = _sequence(320, 100, 6, 4, seed=0)
    assert fast_loo(model, inp, 100, torch.zeros(0, dtype=torch.long), torch.zeros(0, 6)).shape == (0, 1)
    with pytest.raises(ValueError):
        fast_loo(model, inp, 100, torch.tensor([320]), torch.zeros(1, 6))


# ----------------------------------------------------------------------------------------------
# Through `biolm saluki interpret`
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saluki_trained(tmp_path_factory, rna_file):
    from biolm.core.runner import run

    tmp = tmp_path_factory.mktemp("saluki_loo")
    cfg = write_config(tmp / "c.yaml", rna_file, tmp / "out",
                       inference_model={"pretrainedmodel": str(tmp / "out/fine-tune/0")},
                       settings={"training": {"batchsize": 16, "blocksize": 320, "nepochs": 1}},
                       model={"filters": 16})
    run("saluki", "fine-tune", task="regression", configfile=cfg, quiet=True)
    lines = rna_file.read_text().splitlines()[:3]
    small = tmp / "small.txt"
    small.write_text("".join(line + "\n" for line in lines))
    return tmp, cfg, small


@pytest.mark.parametrize("how", ["mask", "replace"])
def test_interpret_scores_same_with_and_without_fast_routine(saluki_trained, monkeypatch, how):
    from biolm.core.plugins import get_registry
    from biolm.core.runner import run

    tmp, cfg, small = saluki_trained
    reg = get_registry()
    spec = reg.model("saluki")
    repl = '{"a": ["c", "g"], "c": ["a"], "g": ["t"], "t": ["a"], "A": ["C"], "gej": ["aej"]}'
    calls = []

    def counted(*args):
        calls.append(len(args[3]))
        return fast_loo(*args)

    scores = {}
    for name, routine in (("fast", counted), ("full", None)):
        monkeypatch.setitem(reg.models, "saluki", dataclasses.replace(spec, fast_loo=routine))
        r = run("saluki", "interpret", task="regression", configfile=cfg, quiet=True, cli_values={
            "outputpath": str(tmp / f"{how}_{name}"), "inference_source.filepath": str(small),
            "looscores.handletokens": how, "looscores.replacementdict": repl, "looscores.plotsequences": 0})
        with open(r.modedir / f"loo_scores_{how}.csv") as fh:
            scores[name] = list(csv.DictReader(fh))
    fast, full = scores["fast"], scores["full"]
    assert len(fast) == len(full) == sum(calls) > 0  # every score came from the fast routine
    for a, b in zip(fast, full):
        assert {k: v for k, v in a.items() if k != "loo"} == {k: v for k, v in b.items() if k != "loo"}
        assert abs(float(a["loo"]) - float(b["loo"])) <= 1e-4 * max(1.0, abs(float(b["loo"])))
    assert any(abs(float(b["loo"])) > 1e-6 for b in full)
