"""Runs that go wrong halfway, are resumed, run twice at once or leave things behind (issue 9):
checkpoints belong to the run that made them, results are published all-or-nothing, a full disk
is one line naming the file, a second run into a folder is refused, leftovers are cleaned.

Commands run in-process through Typer's test runner on small lcl (and one psam) models.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from biolm.core.exampledata import write_dataset

from conftest import cli, write_config

pytestmark = pytest.mark.usefixtures("one_thread")
FT = ("--quiet", "lcl", "fine-tune", "--task", "regression")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "rna.txt", 40, seed=5, min_len=30, max_len=90)


@pytest.fixture
def cfg(tmp_path, data):
    return write_config(tmp_path / "c.yaml", data, tmp_path / "out", inference_model={"pretrainedmodel": str(tmp_path / "out/fine-tune/0")})


def fine_tune(cfg, *args):
    r = cli(*FT, "-c", cfg, *args)
    assert r.code == 0, (r.err, r.exception)
    return r


def log_of(folder) -> str:
    return sorted(folder.glob("logs/*.log"))[-1].read_text()


def checkpoints(fold) -> list[str]:
    return sorted(p.name for p in fold.glob("checkpoint-*"))


def disk_full_for(monkeypatch, suffix: str) -> None:
    """Every atomic write of a file ending in ``suffix`` fails as on a full disk."""
    from biolm.core import outputs

    real = outputs.write_atomic

    def write_atomic(path, writer, mode="w"):
        def full(fh):
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, full if str(path).endswith(suffix) else writer, mode)

    monkeypatch.setattr(outputs, "write_atomic", write_atomic)


def leftovers(root) -> list[str]:
    """Temporaries, staging folders and publication journals anywhere below ``root``."""
    return [str(p) for p in root.rglob("*") if ".tmp-" in p.name or p.name.startswith(".staging-") or p.name == ".publish.json"]


# --------------------------------------------------------------------------- resume


def test_resume_only_continues_a_checkpoint_of_the_same_run(tmp_path, cfg, data):
    fine_tune(cfg)
    fold = tmp_path / "out/fine-tune/0"
    changed = tmp_path / "changed.txt"  # one label changed: another training set
    lines = data.read_text().splitlines()
    cols = lines[0].split("\t")
    cols[2] = "7.5"
    changed.write_text("\n".join(["\t".join(cols), *lines[1:]]) + "\n")
    fine_tune(cfg, "--resume", "--filepath", changed)
    text = log_of(tmp_path / "out/fine-tune")
    assert "not resuming from checkpoint-1: it was made with other input data, labels/scaling/weights; starting fresh" in text
    assert json.loads((fold / "trainer_state.json").read_text())["epochs_run"] == 2  # trained, not 0 epochs
    fine_tune(cfg, "--resume", "--filepath", changed, "--head-hidden", "8")  # another model: fresh again
    assert "it was made with other model; starting fresh" in log_of(tmp_path / "out/fine-tune")
    fine_tune(cfg, "--resume", "--filepath", changed, "--head-hidden", "8", "--nepochs", "3")  # same run, trained longer
    assert "resumed from checkpoint-1 (epoch 2 done)" in log_of(tmp_path / "out/fine-tune")
    assert json.loads((fold / "trainer_state.json").read_text())["epochs_run"] == 3


def test_a_fresh_run_removes_an_earlier_runs_checkpoints(tmp_path, cfg):
    fine_tune(cfg, "--nepochs", "6", "--patience", "10")
    fold = tmp_path / "out/fine-tune/0"
    assert checkpoints(fold) == ["checkpoint-4", "checkpoint-5"]
    fine_tune(cfg, "--no-resume", "--nepochs", "3", "--patience", "10")
    assert checkpoints(fold) == ["checkpoint-1", "checkpoint-2"]  # pruning kept the new run's own
    fine_tune(cfg, "--resume", "--nepochs", "3", "--patience", "10")
    assert "resumed from checkpoint-2 (epoch 3 done)" in log_of(tmp_path / "out/fine-tune")
    assert json.loads((fold / "trainer_state.json").read_text())["epochs_run"] == 3


def test_resume_skips_a_truncated_checkpoint(tmp_path, cfg):
    fine_tune(cfg, "--nepochs", "3", "--patience", "10")
    fold = tmp_path / "out/fine-tune/0"
    model = fold / "checkpoint-2/model.pt"
    model.write_bytes(model.read_bytes()[:100])
    fine_tune(cfg, "--resume", "--nepochs", "3", "--patience", "10")
    text = log_of(tmp_path / "out/fine-tune")
    assert "checkpoint-2 is unusable" in text and "trying the one before" in text
    assert "resumed from checkpoint-1 (epoch 2 done)" in text
    assert json.loads((fold / "trainer_state.json").read_text())["epochs_run"] == 3


# --------------------------------------------------------------------------- all-or-nothing publication


def test_a_failed_interpret_keeps_the_previous_results(tmp_path, cfg, monkeypatch):
    fine_tune(cfg)
    assert cli("--quiet", "lcl", "interpret", "--task", "regression", "-c", cfg).code == 0
    out = tmp_path / "out/interpret"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name.startswith("loo_")}
    assert "loo_scores_remove.csv" in before and any(n.endswith(".png") for n in before)
    disk_full_for(monkeypatch, ".png")  # the PNG step fails after the CSV is written
    cli("--quiet", "lcl", "interpret", "--task", "regression", "-c", cfg, "--plotsequences", "2").one_error("no space left writing", ".png")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name.startswith("loo_")} == before
    assert not leftovers(tmp_path / "out")


def test_a_new_predict_replaces_the_whole_previous_set(tmp_path, cfg):
    fine_tune(cfg)
    assert cli("--quiet", "lcl", "predict", "--task", "regression", "-c", cfg).code == 0
    out = tmp_path / "out/predict"
    assert (out / "rank_deltas.csv").exists() and (out / "test_results.json").exists()
    assert cli("--quiet", "lcl", "predict", "--task", "regression", "-c", cfg, "--labelpos", "False").code == 0
    # without labels there are no metrics: the labelled run's must not stay beside the new predictions
    assert (out / "test_predictions.csv").exists() and not (out / "rank_deltas.csv").exists() and not (out / "test_results.json").exists()


def test_fine_tune_with_fewer_folds_leaves_no_old_fold(tmp_path, cfg):
    fine_tune(cfg, "--crossvalidation", "2", "--splitratio", "70,30", "--nepochs", "1")
    ft = tmp_path / "out/fine-tune"
    assert (ft / "1/pytorch_model.bin").exists()
    fine_tune(cfg, "--nepochs", "1")
    assert (ft / "0/pytorch_model.bin").exists() and not (ft / "1/pytorch_model.bin").exists()
    assert json.loads((ft / "cv_results.json").read_text())["folds"] == ["0"]
    r = cli("--quiet", "lcl", "predict", "--task", "regression", "-c", cfg, "--pretrainedmodel", ft)
    assert r.code == 0 and "fold_1" not in (tmp_path / "out/predict/test_predictions.csv").read_text()


def test_an_interrupted_publication_is_completed_by_the_next_run(tmp_path):
    from biolm.core.publish import JOURNAL, finish_publication, publication

    target = tmp_path / "t"
    target.mkdir()
    (target / "old.csv").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with publication(target, replaces=["*.csv"]) as staging:
            (staging / "new.csv").write_text("new")
            raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["old.csv"]  # nothing published, nothing left
    staging = target / ".staging-12345"  # a run killed after committing its journal
    staging.mkdir()
    (staging / "new.csv").write_text("new")
    (target / JOURNAL).write_text(json.dumps({"staging": staging.name, "move": ["new.csv"], "remove": ["old.csv"]}))
    assert finish_publication(target)
    assert sorted(p.name for p in target.iterdir()) == ["new.csv"]


# --------------------------------------------------------------------------- the dataset store


def test_a_damaged_store_is_rebuilt(tmp_path, cfg):
    fine_tune(cfg)
    assert cli("--quiet", "lcl", "predict", "--task", "regression", "-c", cfg).code == 0
    import h5py

    store = tmp_path / "out/predict/dataset.h5"
    predictions = (tmp_path / "out/predict/test_predictions.csv").read_text()
    with h5py.File(store, "r") as f:
        chunk = f["tokens"].id.get_chunk_info(0)
    with open(store, "r+b") as fh:  # a damaged chunk of token ids; the stored hash still matches
        fh.seek(chunk.byte_offset + 16)
        fh.write(b"\xff" * 64)
    r = cli("lcl", "predict", "--task", "regression", "-c", cfg)
    assert r.code == 0, r.err
    assert "the existing store is damaged" in r.err
    assert (tmp_path / "out/predict/test_predictions.csv").read_text() == predictions


def test_disk_full_while_building_the_store(tmp_path, cfg, monkeypatch):
    from biolm.core import store

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store._Writer, "flush", full)
    cli(*FT, "-c", cfg).one_error(f"no space left writing {tmp_path / 'out/fine-tune/dataset.h5'}")
    assert not leftovers(tmp_path / "out") and not (tmp_path / "out/fine-tune/dataset.h5").exists()


def test_disk_full_while_writing_a_checkpoint(tmp_path, cfg, monkeypatch):
    import torch

    real = torch.save

    def save(obj, f, *a, **kw):
        if "checkpoint-1" in getattr(f, "name", ""):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    cli(*FT, "-c", cfg).one_error(f"no space left writing {tmp_path / 'out/fine-tune/0/checkpoint-1/model.pt'}")
    assert not leftovers(tmp_path / "out") and not (tmp_path / "out/fine-tune/0/pytorch_model.bin").exists()


def test_a_full_disk_reported_without_errno(tmp_path, cfg, monkeypatch):
    import torch

    def save(obj, f, *a, **kw):  # what torch raises when the disk fills up under it
        f.write(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 521792 vs 521744")

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    cli(*FT, "-c", cfg).one_error(f"no space left writing {tmp_path / 'out/fine-tune/0/checkpoint-0/model.pt'}")
    assert not leftovers(tmp_path / "out") and not (tmp_path / "out/fine-tune/0/checkpoint-0").exists()


def test_an_interrupted_run_releases_its_folder(tmp_path, cfg, monkeypatch):
    from biolm.core import plots

    fine_tune(cfg, "--nepochs", "1")
    before = (tmp_path / "out/fine-tune/0/pytorch_model.bin").read_bytes()

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "scatter", interrupt)  # Ctrl-C while the results are written
    r = cli(*FT, "-c", cfg, "--nepochs", "1", "--seed", "9")
    assert r.code == 130 and r.lines == ["interrupted"]
    folder = tmp_path / "out/fine-tune"
    assert "interrupted" in log_of(folder) and not (folder / ".biolm.lock").exists() and not leftovers(folder)
    assert (folder / "0/pytorch_model.bin").read_bytes() == before


def test_a_full_disk_under_the_log_does_not_stop_the_run(tmp_path, cfg, monkeypatch):
    import logging

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logging.FileHandler, "flush", full)
    r = fine_tune(cfg, "--nepochs", "1")
    assert r.err == "" and (tmp_path / "out/fine-tune/0/pytorch_model.bin").exists()


# --------------------------------------------------------------------------- concurrent runs and leftovers


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, cfg):
    from biolm.core.folderlock import FolderLock

    folder = tmp_path / "out/fine-tune"
    folder.mkdir(parents=True)
    with FolderLock(folder, command="biolm lcl fine-tune (the first run)"):
        cli(*FT, "-c", cfg).one_error(f"{folder} is in use by another biolm run", "the first run", f"pid {os.getpid()}")
    fine_tune(cfg, "--nepochs", "1")  # released: the next run goes ahead


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, cfg):
    folder = tmp_path / "out/fine-tune"
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"from biolm.core.folderlock import FolderLock; FolderLock({str(folder)!r}, 'biolm killed run').acquire(); print('locked', flush=True); import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cli(*FT, "-c", cfg).one_error("is in use by another biolm run", f"pid {holder.pid}")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
    fine_tune(cfg, "--nepochs", "1")
    assert f"a previous run (biolm killed run, pid {holder.pid}" in log_of(folder)
    assert not (folder / ".biolm.lock").exists()


def test_temporaries_of_killed_runs_are_removed(tmp_path, cfg):
    fine_tune(cfg, "--nepochs", "1")
    folder = tmp_path / "out/fine-tune"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [folder / f".dataset.h5.tmp-{dead.pid}-abc123", folder / f"dataset.h5.tmp-{dead.pid}", folder / f"0/.pytorch_model.bin.tmp-{dead.pid}-x1"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    staging = folder / f".staging-{dead.pid}"
    (staging / "0").mkdir(parents=True)
    fine_tune(cfg, "--nepochs", "1")
    assert not any(p.exists() for p in stale) and not staging.exists()
    assert f"left by an interrupted run (pid {dead.pid})" in log_of(folder)


def test_psam_motif_exports_are_published_with_the_fold(tmp_path, data, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "out", model={"n_modes": 1, "kernel_size": 4})
    args = ("--quiet", "psam", "fine-tune", "--task", "regression", "-c", cfg, "--nepochs", "1")
    assert cli(*args).code == 0
    fold = tmp_path / "out/fine-tune/0"
    meme = (fold / "psams/psam.meme").read_bytes()
    disk_full_for(monkeypatch, ".meme")
    cli(*args, "--seed", "3").one_error("no space left writing", "psam.meme")
    assert (fold / "psams/psam.meme").read_bytes() == meme and not leftovers(tmp_path / "out")
