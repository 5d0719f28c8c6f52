"""DistributedDataParallel through torch's launcher, gloo backend, 2 CPU processes."""

import json
import subprocess
import sys

import torch

from conftest import write_config


def test_two_process_training_writes_once_and_agrees(tmp_path, rna_file):
    cfg = write_config(tmp_path / "c.yaml", rna_file, tmp_path / "out", settings={"training": {"batchsize": 16, "blocksize": 64, "nepochs": 2}, "environment": {"ngpus": 2, "device": "cpu"}})
    p = subprocess.run([sys.executable, "-m", "biolm", "lcl", "fine-tune", "--task", "regression", "--configfile", str(cfg)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    fold = tmp_path / "out/fine-tune/0"
    assert (fold / "pytorch_model.bin").exists()
    logs = sorted(p.name for p in (tmp_path / "out/fine-tune/logs").iterdir())
    assert any("rank1" in n for n in logs) and any("rank1" not in n for n in logs)
    state = json.loads((fold / "trainer_state.json").read_text())
    assert len(state["history"]) == 2
    w = torch.load(fold / "pytorch_model.bin", weights_only=True)
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
    # the summary table is printed once (rank 0 only)
    assert p.stdout.count("outputs:") == 1
