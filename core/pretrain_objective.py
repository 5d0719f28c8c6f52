"""The pre-training objective: a plugin's ``pretrain_loss`` with seeded, resumable random draws.

Training draws (e.g. which tokens are masked) come from a ``torch.Generator`` seeded from
(seed, rank, epoch) at the start of every epoch, so a resumed run draws exactly as an
uninterrupted one; validation restarts from fixed draws every pass, so validation losses are
comparable across epochs and are reported per scored token.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import DataError
from .hookspecs import hookimpl

VAL_FRACTION = 0.05


def split_records(n: int, seed: int, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``n`` records into (train, validation) index arrays (sorted);
    validation gets ``round(val_fraction * n)`` records, at least 1, and training at least 1."""
    if n < 2:
        raise DataError("pre-training data", f"needs at least 2 records (one for validation), got {n}")
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (2**32) for p in parts]).generate_state(1)[0])


class Objective:
    """Wraps ``pretrain_loss`` as the engine's ``loss_fn`` and owns its random generators.

    Training draws are reseeded at every epoch from (seed, rank, epoch) through the
    ``on_epoch_begin`` hook; validation draws restart from (seed, rank, "validation") at the start
    of every validation pass (detected by the switch from training to evaluation mode).
    """

    def __init__(self, pretrain_loss: Any, seed: int, rank: int, device: Any):
        import torch

        self.pretrain_loss = pretrain_loss
        self.seed = int(seed)
        self.rank = int(rank)
        self.train_gen = torch.Generator(device=device)
        self.val_gen = torch.Generator(device=device)
        self.train_gen.manual_seed(_seed(self.seed, self.rank, 0))
        self.reset_validation()
        self._was_training = True

    def reset_validation(self) -> None:
        self.val_gen.manual_seed(_seed(self.seed, self.rank, 1_000_003))

    def __call__(self, model: Any, inp: dict, y: Any = None, w: Any = None):
        return self.loss_and_count(model, inp)[0]

    def loss_and_count(self, model: Any, inp: dict):
        from .distributed import unwrap

        training = unwrap(model).training
        if training:
            gen = self.train_gen
        else:
            if self._was_training:
                self.reset_validation()
            gen = self.val_gen
        self._was_training = training
        out = self.pretrain_loss(model, inp, gen)
        if isinstance(out, tuple):
            return out[0], out[1]
        return out, None

    @hookimpl
    def on_epoch_begin(self, state: Any) -> None:
        self.train_gen.manual_seed(_seed(self.seed, self.rank, 0, state.epoch))
        self._was_training = True

    @hookimpl(tryfirst=True)
    def on_epoch_end(self, state: Any) -> None:
        # before the log line and the checkpoint (trylast), so both carry the perplexities
        for key in ("train", "val"):
            loss = state.metrics.get(f"{key}_loss")
            if loss is not None:
                ppl = perplexity(loss)
                state.metrics[f"{key}_perplexity"] = ppl
                if state.history:
                    state.history[-1][f"{key}_perplexity"] = ppl


def perplexity(loss: float) -> float:
    try:
        return float(math.exp(loss)) if math.isfinite(loss) else float("nan")
    except OverflowError:
        return float("inf")


def evaluate_tokens(model: Any, batches: Any, indices: np.ndarray, objective: Objective, device: Any, precision: str) -> tuple[float, int]:
    """Mean loss per scored token over ``indices`` (fixed validation draws) and the token count.

    Falls back to the per-batch mean weighted by records when ``pretrain_loss`` returns no count."""
    import torch

    from .distributed import unwrap
    from .engine import autocast

    net = unwrap(model)
    net.eval()
    objective._was_training = True  # restart the validation draws
    total, count = 0.0, 0
    with torch.no_grad(), autocast(device, precision):
        for idx, inp, _, _ in batches(indices, shuffle=False):
            loss, n = objective.loss_and_count(net, inp)
            n = len(idx) if n is None else int(n)
            total += float(loss) * n
            count += n
    return (total / count if count else float("nan")), count
