"""``pre-train`` mode: self-supervised training of a plugin's model on the tokenizing data source.

A plugin opts in by listing ``pre-train`` in ``PluginConfig.modes`` and giving
``ModelSpec.pretrain_loss(model, batch, generator) -> loss`` (or ``(loss, n_scored)``); the
objective's seeded draws are :mod:`biolm.core.pretrain_objective`. Its
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

``fine-tune`` then starts from ``OUTPUTPATH/pre-train`` (through the plugin's ``ModelSpec.load_pretrained``)
unless ``fromscratch`` is set or ``settings: training: pretrainedweights`` names other weights.
The results are published together (:mod:`biolm.core.publish`); the checkpoints stay in the
mode folder for ``resume``.
"""

from __future__ import annotations

from typing import Any

from ..errors import BiolmError, DataError
from ..fold_training import best_epoch, build_model, check_blocksize, fingerprint, make_batches, model_meta, train_model, write_trainer_state
from ..hookspecs import ModelInfo
from ..outputs import copy_file, write_json
from ..pretrain_objective import Objective, evaluate_tokens, perplexity, split_records
from ..publish import publication

# the results a pre-training publishes together (an earlier set is replaced as a whole)
RESULTS = ("pytorch_model.bin", "config.json", "tokenizer.json", "trainer_state.json", "train_results.json", "eval_results.json", "all_results.json", "learning_curves.png")


def execute(run: Any) -> dict:
    from ..batching import check_batch_memory
    from ..distributed import init, is_main, main_first, world
    from ..engine import Task, resolve_device

    cfg, tr, env = run.cfg, run.cfg.settings.training, run.cfg.settings.environment
    if run.model_spec.pretrain_loss is None:
        raise BiolmError(f"plugin {run.plugin.name!r} has no pre-training objective (ModelSpec.pretrain_loss)")
    check_blocksize(run)
    device = resolve_device(env)
    init(device.type)
    with main_first():  # rank 0 learns the tokenizer / builds the store, the others reuse them
        tokenizer = run.tokenizer()
        store = run.store(tokenizer, None)
    try:
        train_idx, val_idx = split_records(len(store), cfg.seed)
    except DataError:
        raise DataError(str(cfg.tokenizing_source.filepath), f"pre-training needs at least 2 {run.tokenizer_spec.records} (one for validation), got {len(store)}") from None
    run.log.info("%d %s: %d for training, %d for validation (seeded random 95/5); device %s", len(store), run.tokenizer_spec.records, len(train_idx), len(val_idx), device)
    encoding = run.encoding()
    info = ModelInfo(task="pre-train", n_outputs=0, in_channels=tokenizer.n_channels, blocksize=encoding.blocksize, tokenizer=tokenizer, extra={"vocab_size": len(tokenizer.vocab), "mlmprobability": tr.mlmprobability})
    check_batch_memory(lambda b: run.tokenizer_spec.make_input(tokenizer, b, encoding), tokenizer.n_modifiers, tr.batchsize, encoding.blocksize, device)
    model = build_model(run, info, device)
    batches = make_batches(run, store, tokenizer, device, encoding)
    objective = Objective(run.model_spec.pretrain_loss, cfg.seed, world()[0], device)
    run.registry.pm.register(objective)
    try:
        fp = fingerprint(run, store, info, train_idx, val_idx)
        trained = train_model(run, model, batches, fold="pre-train", folddir=run.modedir, task=Task("pre-train", 0), train_idx=train_idx, val_idx=val_idx, device=device, loss_fn=objective, fingerprint=fp)
    finally:
        run.registry.pm.unregister(objective)
    if not is_main():
        return {}
    eval_loss, n_tokens = evaluate_tokens(model, batches, val_idx, objective, device, env.precision)
    with publication(run.modedir, replaces=RESULTS) as folddir:
        summary = write_results(run, model, info, trained, eval_loss, n_tokens, len(train_idx), len(val_idx), folddir)
    run.log.info("pre-train: eval loss %.5g, perplexity %.5g (%d scored tokens of %d validation %s)", eval_loss, perplexity(eval_loss), n_tokens, len(val_idx), run.tokenizer_spec.records)
    return {**summary, "lines": [f"pre-trained weights: {run.modedir / 'pytorch_model.bin'} (fine-tune starts from them)"]}


def write_results(run: Any, model: Any, info: ModelInfo, trained: Any, eval_loss: float, n_tokens: int, n_train: int, n_val: int, folddir: Any) -> dict:
    """The pre-trained model and its reports, written to ``folddir``; returns the summary metrics."""
    from .. import plots
    from ..distributed import unwrap
    from ..outputs import save_torch

    tr = run.cfg.settings.training
    history = trained.history
    save_torch(folddir / "pytorch_model.bin", {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()})
    write_json(folddir / "config.json", model_meta(run, model, info, best_val_loss=trained.best_val_loss))
    copy_file(run.outdir / "tokenizer.json", folddir / "tokenizer.json")
    write_trainer_state(folddir, history, trained.best_val_loss, tr.nepochs, best_val_perplexity=perplexity(trained.best_val_loss))
    last = history[-1] if history else {}
    train_results = {
        "train_loss": last.get("train_loss"),
        "train_perplexity": last.get("train_perplexity"),
        "train_runtime": trained.runtime,
        "train_samples": n_train,
        "train_samples_per_second": n_train * max(len(history), 1) / max(trained.runtime, 1e-9),
        "epochs": len(history),
    }
    eval_results = {"eval_loss": eval_loss, "eval_perplexity": perplexity(eval_loss), "eval_samples": n_val, "eval_scored_tokens": n_tokens}
    write_json(folddir / "train_results.json", train_results)
    write_json(folddir / "eval_results.json", eval_results)
    write_json(folddir / "all_results.json", {**train_results, **eval_results})
    if history:
        plots.learning_curves(history, folddir / "learning_curves.png", title=f"{run.plugin.name} pre-training: learning curves", loss="masked-LM cross-entropy per scored token", best_epoch=best_epoch(history))
    return {"metrics": {"eval_loss": eval_loss, "eval_perplexity": eval_results["eval_perplexity"], "train_loss": float(last.get("train_loss", float("nan"))), "epochs": len(history)}}
