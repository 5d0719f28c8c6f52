"""``pre-train`` mode: self-supervised training of a plugin's model on the tokenizing data source.

A plugin opts in by listing ``pre-train`` in ``PluginConfig.modes`` and giving
``ModelSpec.pretrain_loss(model, batch, generator) -> loss`` (or ``(loss, n_scored)``). Its
``build`` is called with ``ModelInfo(task="pre-train", n_outputs=0, ...)``; ``info.extra`` carries
``vocab_size`` and ``mlmprobability`` (``settings.training.mlmprobability``).

What happens:

- the tokenizer is loaded (``OUTPUTPATH/tokenizer.json``) or learned first; the tokenizing source
  is encoded into ``OUTPUTPATH/pre-train/dataset.h5`` (reused by hash);
- a seeded random 95/5 split into training and validation records (at least one of each);
- training with the shared engine (early stopping on the validation loss, ``patience``, best
  weights restored, a checkpoint per epoch and ``resume`` exactly as fine-tune; DDP when several
  processes). The random draws of the objective (e.g. which tokens are masked) come from a
  ``torch.Generator`` seeded from (seed, rank, epoch) at the start of every epoch, so a resumed
  run masks exactly as an uninterrupted one; validation uses the same fixed draws every epoch,
  so validation losses are comparable across epochs;
- outputs in ``OUTPUTPATH/pre-train/``: ``pytorch_model.bin`` (the state dict of the pre-training
  model, e.g. encoder + masked-LM head), ``config.json``, ``tokenizer.json``,
  ``trainer_state.json`` (per-epoch history incl. ``val_perplexity = exp(val_loss)``),
  ``train_results.json``, ``eval_results.json`` (``eval_loss``: the mean loss over every scored
  token of the validation records, with fixed draws; ``eval_perplexity = exp(eval_loss)``) and
  ``learning_curves.png``.

``fine-tune`` then starts from ``OUTPUTPATH/pre-train`` (through the model's ``load_pretrained``)
unless ``fromscratch`` is set or ``inference model: pretrainedmodel`` names other weights.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

import numpy as np

from .errors import BiolmError, DataError
from .hookspecs import hookimpl
from .outputs import write_json

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
        training = getattr(model, "module", model).training
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
                ppl = _perplexity(loss)
                state.metrics[f"{key}_perplexity"] = ppl
                if state.history:
                    state.history[-1][f"{key}_perplexity"] = ppl


def _perplexity(loss: float) -> float:
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


def execute(run: Any) -> dict:
    import torch

    from . import plots
    from .dataset import load_or_fit_tokenizer, open_source_store
    from .distributed import init, is_main, main_first, unwrap, world
    from .engine import Batches, Task, make_optimizer, resolve_device, train
    from .finetune import _model_dict, _nullctx, _progress, check_blocksize, make_loader_fn, wrap_distributed
    from .spec import ModelInfo

    cfg, tr, env = run.cfg, run.cfg.settings.training, run.cfg.settings.environment
    spec = run.registry.model(run.plugin.name)
    if spec.pretrain_loss is None:
        raise BiolmError(f"plugin {run.plugin.name!r} has no pre-training objective (ModelSpec.pretrain_loss)")
    check_blocksize(run)
    device = resolve_device(env)
    init(device.type)
    with main_first():  # rank 0 learns the tokenizer / builds the store, the others reuse them
        tokenizer = load_or_fit_tokenizer(run)
        store = open_source_store(run, tokenizer, cfg.tokenizing_source, None)
    n = len(store)
    try:
        train_idx, val_idx = split_records(n, cfg.seed)
    except DataError:
        raise DataError(str(cfg.tokenizing_source.filepath), f"pre-training needs at least 2 records (one for validation), got {n}") from None
    run.log.info("%d records: %d for training, %d for validation (seeded random 95/5); device %s", n, len(train_idx), len(val_idx), device)
    vocab = getattr(tokenizer, "vocab", None) or []
    info = ModelInfo(task="pre-train", n_outputs=0, in_channels=tokenizer.n_channels, blocksize=tr.blocksize, tokenizer=tokenizer, extra={"vocab_size": len(vocab), "mlmprobability": tr.mlmprobability})
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    model = spec.build(cfg.model, info).to(device)
    trained = wrap_distributed(model, device)
    tok_spec = run.tokenizer_spec
    pad_to = tr.blocksize if run.plugin.fixed_length else None
    batches = Batches(make_loader_fn(run, store, pad_to), lambda b: tok_spec.make_input(tokenizer, b, cfg), device, None, None)
    optimizer = make_optimizer(trained, tr)
    objective = Objective(spec.pretrain_loss, cfg.seed, world()[0], device)
    folddir = run.modedir
    pm = run.registry.pm
    pm.register(objective)
    t0 = time.perf_counter()
    try:
        progress = _progress(run)
        with progress if progress is not None else _nullctx():
            state = train(
                pm=pm, plugin=run.plugin.name, fold="pre-train", folddir=folddir, model=trained, optimizer=optimizer,
                task=Task("pre-train", 0), batches=batches, train_idx=train_idx, val_idx=val_idx, nepochs=tr.nepochs,
                patience=tr.patience, gradacc=tr.gradacc, clipnorm=tr.clipnorm, seed=cfg.seed, device=device,
                precision=env.precision, resume=tr.resume, log=run.log, progress=progress, loss_fn=objective,
            )
    finally:
        pm.unregister(objective)
    runtime = time.perf_counter() - t0
    history = state.history
    if not is_main():
        return {}
    eval_loss, n_tokens = evaluate_tokens(model, batches, val_idx, objective, device, env.precision)
    model_obj = unwrap(model)
    save_state = {k: v.detach().cpu() for k, v in model_obj.state_dict().items()}
    from .outputs import save_torch

    save_torch(folddir / "pytorch_model.bin", save_state)
    arch = getattr(model_obj, "config", None)
    meta = {
        "plugin": run.plugin.name,
        "task": "pre-train",
        "encoding": cfg.tokenization.encoding,
        "in_channels": tokenizer.n_channels,
        "blocksize": tr.blocksize,
        "fixed_length": run.plugin.fixed_length,
        "model": _model_dict(cfg.model),
        "architecture": arch.to_dict() if hasattr(arch, "to_dict") else None,
        "extra": info.extra,
        "best_val_loss": state.best_val_loss,
        "seed": cfg.seed,
        "versions": run.versions(),
    }
    write_json(folddir / "config.json", meta)
    shutil.copyfile(run.outdir / "tokenizer.json", folddir / "tokenizer.json")
    best_epoch = int(np.argmin([h["val_loss"] for h in history])) if history else None
    write_json(folddir / "trainer_state.json", {"history": history, "best_epoch": best_epoch, "best_val_loss": state.best_val_loss, "best_val_perplexity": _perplexity(state.best_val_loss), "epochs_run": len(history), "nepochs": tr.nepochs, "stopped_early": bool(history) and len(history) < tr.nepochs})
    last = history[-1] if history else {}
    train_results = {
        "train_loss": last.get("train_loss"),
        "train_perplexity": last.get("train_perplexity"),
        "train_runtime": runtime,
        "train_samples": len(train_idx),
        "train_samples_per_second": len(train_idx) * max(len(history), 1) / max(runtime, 1e-9),
        "epochs": len(history),
    }
    eval_results = {"eval_loss": eval_loss, "eval_perplexity": _perplexity(eval_loss), "eval_samples": len(val_idx), "eval_scored_tokens": n_tokens}
    write_json(folddir / "train_results.json", train_results)
    write_json(folddir / "eval_results.json", eval_results)
    write_json(folddir / "all_results.json", {**train_results, **eval_results})
    if history:
        plots.learning_curves(history, folddir / "learning_curves.png")
    run.log.info("pre-train: eval loss %.5g, perplexity %.5g (%d scored tokens of %d validation records)", eval_loss, eval_results["eval_perplexity"], n_tokens, len(val_idx))
    metrics = {"eval_loss": eval_loss, "eval_perplexity": eval_results["eval_perplexity"], "train_loss": float(last.get("train_loss", float("nan"))), "epochs": len(history)}
    return {"metrics": metrics, "lines": [f"pre-trained weights: {folddir / 'pytorch_model.bin'} (fine-tune starts from them)"]}
