"""``interpret`` mode: leave-one-out (LOO) scores for every token of every sequence, saturation
mutagenesis, or the effects of a table of variants.

``loo = prediction(perturbed) - prediction(original)`` in label units (regression, after
inverse scaling) or as the change of the probability of the originally predicted class
(classification; the change for the true class is stored as well when labels are given).

Perturbations are made on the stored token ids on the device, batched across positions and
sequences, in chunks that bound memory; no text is re-tokenized. ``handletokens``:

- ``remove``: the token is deleted, the rest shifts left (the end is padded);
- ``mask``: the token's input is zeroed (one-hot and modifier channels; token models see their
  MASK token — id -2 in a batch means "masked");
- ``replace``: each replacement of ``replacementdict`` (modifiers kept); with
  ``replacespecifier`` a modified token is also replaced by its unmodified form (modifier
  channels zeroed). Replacements equal to the token itself are skipped;
- ``activate``: the token moves to the first position (rank-ordered inputs such as Geneformer's);
- ``saturate``: every alternative of the same kind (:mod:`biolm.core.saturate`), also written
  as L x A matrices to ``ism.h5``;
- ``variants``: the variants table of the inference data source (:mod:`biolm.core.variants`),
  written to ``variant_effects.csv``.

A plugin can offer a faster exact routine through ``ModelSpec.fast_loo``; the batched full
forward pass (:mod:`biolm.core.perturb`) is the reference the fast routines are tested against.
Through ``ModelSpec.perturbation_scores`` a plugin adds its own per-perturbation scores as the
last columns of the CSV (geneformer: Geneformer's embedding cosine similarity of a deletion).
With several processes (``ngpus`` > 1) each scores a contiguous share of the input and rank 0
merges their parts (:mod:`biolm.core.sharding`).
"""

from __future__ import annotations

import time
from typing import Any

from ..ensemble import load_ensemble, open_store, selected_indices, tokenizer_spec
from ..errors import ConfigError
from ..perturb import unknown_replacements
from ..publish import publication


def execute(run: Any) -> dict:
    from ..engine import resolve_device
    from ..sharding import Shards

    device = resolve_device(run.cfg.settings.environment)
    with Shards(run.modedir, device.type) as shards:
        ens = load_ensemble(run, device)
        check(run, ens)
        if run.cfg.looscores.handletokens == "variants":
            return variant_effects(run, ens, shards, device)
        return loo_scores(run, ens, shards, device)


def check(run: Any, ens: Any) -> None:
    """What the chosen ``handletokens`` needs, before anything is computed."""
    lc, how = run.cfg.looscores, run.cfg.looscores.handletokens
    atomic = ens.meta.get("encoding") == "atomic"
    if how == "replace" and not lc.replacementdict:
        raise ConfigError("looscores.replacementdict", "handletokens: replace needs a replacementdict (token -> list of replacements)")
    if how == "activate" and atomic:
        raise ConfigError("looscores.handletokens", "activate moves a token to the first rank; it is meant for rank-ordered inputs (geneformer)")
    if how in ("saturate", "variants") and not atomic:
        raise ConfigError("looscores.handletokens", f"{how} needs a sequence vocabulary (the atomic tokenizer); this model uses {ens.meta.get('encoding')!r}")
    variants_file = run.source.variants.filepath
    if how == "variants" and not variants_file:
        raise ConfigError("inference data source.variants.filepath", "handletokens: variants needs the variants table (--variants FILE)")
    if variants_file and how != "variants":
        run.log.warning("inference data source: variants is set but handletokens is %s: the variants are not scored (handletokens: variants scores them)", how)
    if how in ("replace", "saturate") and lc.replacementdict:
        unknown = unknown_replacements(lc.replacementdict, ens.tokenizer.vocab)
        if unknown:
            run.log.warning("replacementdict: %d token(s) not in the vocabulary are ignored: %s", len(unknown), ", ".join(unknown[:10]))


def loo_scores(run: Any, ens: Any, shards: Any, device: Any) -> dict:
    """Every sequence of the data source perturbed at every position (this process's share)."""
    import torch

    from ..engine import autocast
    from ..loo_outputs import LooOutputs
    from ..perturb import LooScorer
    from ..progress import Progress
    from ..saturate import SaturationTable
    from ..scaling import LabelEncoder

    how = run.cfg.looscores.handletokens
    with shards.main_first():
        store = open_store(run, ens)
    idx = selected_indices(run, store)
    true_idx = None
    if ens.task == "classification" and (run.source.labelpos or run.source.labelcolumn):
        true_idx = LabelEncoder(ens.classes).transform([store.labels[i] for i in idx], str(run.source.filepath))
    saturation = SaturationTable.build(ens.tokenizer.vocab, run.cfg.looscores.replacementdict) if how == "saturate" else None
    if store.feature_shape is not None:  # expression / array input: genes knocked out, positions masked
        from ..feature_loo import FeatureScorer

        scorer = FeatureScorer(run, ens, store, device)
    else:
        scorer = LooScorer(run, ens, store, device, saturation)
    units = "label units" if ens.task == "regression" else "probability of the predicted class"
    out = LooOutputs(run, shards, ens.task == "classification", saturation, units, ens.tokenizer.positional)
    mine = shards.block(len(idx), store.lengths[idx] if store.feature_shape is None else None)
    noun = tokenizer_spec(run, ens).records
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), autocast(device, run.cfg.settings.environment.precision), Progress(run.log, run.quiet, unit=noun) as progress:
            progress.start("LOO", mine.stop - mine.start)
            for k in range(mine.start, mine.stop):
                out.add(k, int(idx[k]), scorer(idx[k], None if true_idx is None else int(true_idx[k])))
                progress.advance(1, f"LOO {out.n_scores / max(time.perf_counter() - t0, 1e-9):.0f} positions/s")
            progress.finish()
    finally:
        out.close()
    elapsed = time.perf_counter() - t0
    shares = shards.gather((out.n_sequences, out.n_scores, out.extra_names))
    n_seq, n_pos = sum(x[0] for x in shares), sum(x[1] for x in shares)
    shards.wait()
    lines = []
    if shards.main:
        named = {"csv": "scores", "pkl": "shap explanations", "ism": "saturation matrices"}
        with publication(run.modedir, replaces=out.replaces()) as staging:
            extra_names = next((x[2] for x in shares if x[2] is not None), None)
            lines = [f"{named[kind]}: {path}" for kind, path in out.publish(staging, extra_names).items()]
        shards.cleanup()
    rate = n_pos / max(elapsed, 1e-9)
    run.log.info("%d %s, %d perturbations in %.1f s (%.0f positions/s%s)", n_seq, noun, n_pos, elapsed, rate, f", {shards.size} processes" if shards.size > 1 else "")
    return {"metrics": {noun: n_seq, "perturbations": n_pos, "positions_per_s": rate}, "lines": lines}


def variant_effects(run: Any, ens: Any, shards: Any, device: Any) -> dict:
    """The variants table scored (this process's share of its rows)."""
    import torch

    from ..delimited import ReadStats, log_skipped
    from ..engine import autocast
    from ..ensemble import model_encoding
    from ..hookspecs import Encoding
    from ..variant_scoring import NAME, VariantScorer, VariantTable
    from ..variants import Sequences, count_rows, read_variants

    vs = run.source.variants
    enc = model_encoding(run, ens)
    with shards.main_first():  # the whole sequences: a variant may move the model's window
        store = open_store(run, ens, encoding=Encoding(None, enc.lefttailing, enc.centertoken))
    sequences = Sequences(store, selected_indices(run, store), ens.tokenizer.vocab, enc)
    scorer = VariantScorer(run, ens, sequences, device)
    table = VariantTable(shards, ens)
    rows = shards.block(count_rows(vs)) if shards.size > 1 else None
    stats = ReadStats()
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), autocast(device, run.cfg.settings.environment.precision):
            chunk: list = []
            for v in read_variants(vs, run.source, sequences, rows, stats):
                chunk.append(v)
                if len(chunk) == 1024:
                    _score_chunk(scorer, table, chunk)
            _score_chunk(scorer, table, chunk)
    finally:
        table.close()
    log_skipped(stats, run.log, vs.filepath)
    n, skipped = (sum(x) for x in zip(*shards.gather((table.n, stats.n_skipped))))
    shards.wait()
    lines = []
    if shards.main:
        with publication(run.modedir, replaces=(NAME,)) as staging:
            table.publish(staging)
        lines = [f"variant effects: {run.modedir / NAME} ({n} variants{f', {skipped} skipped' if skipped else ''})"]
        shards.cleanup()
    c = scorer.counts
    run.log.info("%d variants in %.1f s: %d unchanged input, %d single-token (%s), %d full forward", table.n, time.perf_counter() - t0, c["same"], c["single"], "fast path" if scorer.fast else "full forward", c["full"])
    return {"metrics": {"variants": n, "skipped": skipped}, "lines": lines}


def _score_chunk(scorer: Any, table: Any, chunk: list) -> None:
    for v, (ref, alt) in zip(chunk, scorer.score(chunk)):
        table.add(v, ref, alt)
    chunk.clear()

