"""Staged training (``ModelSpec.fit_schedule``) through the engine, with a toy plugin that uses
only the plugin API (``tests/staged_toy.py``): frozen parameters per stage, actions and greedy
proposals, a stage undone by its validation guard, the stage summary, event hooks, resume
mid-schedule, cross-validation, DDP refused."""

from __future__ import annotations

import json

import pytest
import torch

from biolm.core.errors import ConfigError
from biolm.core.hookspecs import Stage, hookimpl
from biolm.core.runner import run

from conftest import write_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def registry():
    """The installed plugins plus ``toystaged``, registered through an entry point as any package."""
    from importlib.metadata import EntryPoint

    import biolm.core.plugins as plugins

    mp = pytest.MonkeyPatch()
    real = plugins.entry_points
    mp.setattr(plugins, "entry_points", lambda group: [*real(group=group), EntryPoint("toystaged", "staged_toy", "biolm")])
    mp.setattr(plugins, "_registry", None)
    try:
        yield plugins.get_registry()
    finally:
        mp.undo()
        plugins._registry = None


def _config(tmp_path, rna_file, name, **sections):
    return write_config(tmp_path / f"{name}.yaml", rna_file, tmp_path / name, model={"staged": True}, **sections)


def _fine_tune(cfg, **cli):
    return run("toystaged", "fine-tune", task="regression", configfile=cfg, cli_values=cli, quiet=True)


def _weights(path):
    return torch.load(path / "fine-tune/0/pytorch_model.bin", weights_only=True)


class Recorder:
    """Per epoch: the stage and which parameters train; at the end, the flags."""

    def __init__(self):
        self.epochs, self.end_flags = [], None

    @hookimpl
    def on_epoch_end(self, state):
        if state.plugin == "toystaged":
            self.epochs.append((state.stage, {n: p.requires_grad for n, p in state.model.named_parameters()}, state.metrics["objective"]))

    @hookimpl
    def on_train_end(self, state):
        if state.plugin == "toystaged":
            self.end_flags = {n: p.requires_grad for n, p in state.model.named_parameters()}


def test_stages_train_their_parameters_and_are_recorded(tmp_path, rna_file, registry):
    recorder = Recorder()
    registry.pm.register(recorder)
    try:
        r = _fine_tune(_config(tmp_path, rna_file, "a"))
    finally:
        registry.pm.unregister(recorder)
    state = json.loads((r.modedir / "0/trainer_state.json").read_text())
    assert [s["stage"] for s in state["stages"]] == ["features", "flip", "wild", "all"]
    assert state["stages"][1]["outcome"].endswith("nothing more to propose") or "rejected" in state["stages"][1]["outcome"]
    assert state["stages"][2]["epochs"] == 1 and state["stages"][2]["outcome"].startswith("undone (epoch limit, but validation loss")
    assert state["stages"][2]["objective"] == pytest.approx(state["stages"][1]["objective"])  # the weights before it
    assert state["stages"][3]["epochs"] == 3 and state["stages"][3]["outcome"] == "epoch limit"
    stages = [h["stage"] for h in state["history"]]
    assert stages[0] == "features" and stages[-1] == "all" and len(stages) == len(recorder.epochs)
    flags = {stage: f for stage, f, _ in recorder.epochs}
    assert flags["features"] == {"w": True, "head.weight": False, "head.bias": False}
    assert flags["all"] == {"w": True, "head.weight": True, "head.bias": True}
    assert recorder.end_flags == {"w": True, "head.weight": True, "head.bias": True}
    features = [obj for stage, _, obj in recorder.epochs if stage == "features"]
    assert all(b <= a + 1e-9 for a, b in zip(features, features[1:]))  # L-BFGS never goes uphill
    newest = max((r.modedir / "0").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    memory = json.loads((newest / "state.json").read_text())["schedule"]["memory"]
    assert memory == {"normalised": 1, "flips": memory["flips"]} and memory["flips"] in (1, 2)
    assert (r.modedir / "0/learning_curves.png").exists()


class Killer:
    def __init__(self, stage, nth):
        self.stage, self.nth, self.seen = stage, nth, 0

    @hookimpl
    def on_epoch_begin(self, state):
        if state.plugin == "toystaged" and state.stage == self.stage:
            self.seen += 1
            if self.seen == self.nth:
                raise KeyboardInterrupt


@pytest.mark.parametrize("stage, nth", [("flip", 1), ("flip", 3), ("all", 1), ("all", 2)], ids=["stage-boundary", "greedy-refit", "after-undone-stage", "minibatch"])
def test_resume_mid_schedule_matches_uninterrupted(tmp_path, rna_file, registry, stage, nth):
    _fine_tune(_config(tmp_path, rna_file, "a"))
    cfg = _config(tmp_path, rna_file, "b")
    killer = Killer(stage, nth)
    registry.pm.register(killer)
    try:
        with pytest.raises(KeyboardInterrupt):
            _fine_tune(cfg)
    finally:
        registry.pm.unregister(killer)
    assert killer.seen == nth
    _fine_tune(cfg, **{"settings.training.resume": True})
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = json.loads((tmp_path / "a/fine-tune/0/trainer_state.json").read_text())["stages"]
    sb = json.loads((tmp_path / "b/fine-tune/0/trainer_state.json").read_text())["stages"]
    assert sa == sb


def test_cross_validation_and_the_single_loop(tmp_path, rna_file, registry):
    cfg = _config(tmp_path, rna_file, "cv", fine_tuning_data_source={"labelpos": 3, "crossvalidation": 2, "splitratio": "70,15,15"})
    r = _fine_tune(cfg)
    for fold in ("0", "1"):
        assert [s["stage"] for s in json.loads((r.modedir / fold / "trainer_state.json").read_text())["stages"]] == ["features", "flip", "wild", "all"]
    single = _fine_tune(_config(tmp_path, rna_file, "single"), **{"model.staged": False})
    state = json.loads((single.modedir / "0/trainer_state.json").read_text())
    assert "stages" not in state and len(state["history"]) == 2 and "stage" not in state["history"][0]


def test_staged_fit_is_refused_under_ddp_and_checks_its_stages(monkeypatch):
    from biolm.core.engine import Loop, Task, TrainState
    from biolm.core.staged_training import StagedFit

    model = torch.nn.Linear(2, 1)
    loop = Loop(None, Task("regression", 1), None, None, None, 1, 1, 1, None, 0, torch.device("cpu"), "fp32", None)
    state = TrainState("toy", "0", None, model, None, 1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        StagedFit(loop, state, [Stage("x", ("weight",), optimizer="sgd")], None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ngpus"):
        StagedFit(loop, state, [Stage("x", ("weight",))], None)
