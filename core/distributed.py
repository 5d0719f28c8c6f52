"""Data-parallel training across processes (torch DistributedDataParallel via ``torchrun``).

``settings.environment.ngpus`` > 1 relaunches the command under torch's elastic launcher
(``python -m torch.distributed.run``); multi-node runs call ``torchrun --nnodes ... -m biolm ...``
themselves. The same code path runs with the gloo backend on CPU. Only rank 0 writes files;
every rank sees identical validation metrics (all-reduced), so early stopping agrees.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any, Iterator

import numpy as np


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (0, 1 when not distributed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return world()[1] > 1


def is_main() -> bool:
    return world()[0] == 0


def wanted_processes(env: Any) -> int:
    """``ngpus`` if set, else the number of visible GPUs (at least 1)."""
    if env.ngpus:
        return int(env.ngpus)
    if env.device == "cpu":
        return 1
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # pragma: no cover
        return 1


def relaunch(n: int, argv: list[str]) -> int:
    """Run ``biolm argv`` in ``n`` processes on this node with torch's launcher; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "biolm", *argv]
    return subprocess.call(cmd)


def init(device_type: str) -> None:
    import torch.distributed as dist

    if is_distributed() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a shared file); the others wait, then run it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(indices: np.ndarray, shuffle: bool, seed: int) -> np.ndarray:
    """This rank's share of ``indices``: the same global permutation on every rank, padded by
    wrapping so every rank gets as many samples (and so as many optimizer steps)."""
    rank, size = world()
    idx = np.asarray(indices)
    if shuffle:
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    if size == 1:
        return idx
    per = -(-len(idx) // size)
    padded = np.concatenate([idx, idx[: per * size - len(idx)]]) if len(idx) else idx
    return padded[rank::size]


def all_gather_objects(obj: Any) -> list:
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)
