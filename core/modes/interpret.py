"""``interpret`` mode: leave-one-out (LOO) scores for every token of every sequence.

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
- ``activate``: the token moves to the first position (rank-ordered inputs such as Geneformer's).

A plugin can offer a faster exact routine through ``ModelSpec.fast_loo``; the batched full
forward pass (:mod:`biolm.core.perturb`) is the reference the fast routines are tested against.
Through ``ModelSpec.perturbation_scores`` a plugin adds its own per-perturbation scores as the
last columns of the CSV (geneformer: Geneformer's embedding cosine similarity of a deletion).
"""

from __future__ import annotations

import csv
import hashlib
import io
import pickle
import time
from typing import Any

import numpy as np

from ..ensemble import load_ensemble, model_encoding, open_store, selected_indices, tokenizer_spec
from ..errors import ConfigError
from ..outputs import write_atomic, write_text
from ..perturb import fast_scores, full_forward_scores, plan, score_rows, token_text, unknown_replacements
from ..publish import publication

HEADER = ["sequence", "token", "replacement", "label", "pred", "start_offset", "end_offset", "loo"]


def execute(run: Any) -> dict:
    import torch

    from ..engine import autocast, resolve_device
    from ..progress import Progress
    from ..scaling import LabelEncoder

    cfg, lc = run.cfg, run.cfg.looscores
    how = lc.handletokens
    if how == "replace" and not lc.replacementdict:
        raise ConfigError("looscores.replacementdict", "handletokens: replace needs a replacementdict (token -> list of replacements)")
    env = cfg.settings.environment
    device = resolve_device(env)
    ens = load_ensemble(run, device)
    if how == "activate" and ens.meta.get("encoding") == "atomic":
        raise ConfigError("looscores.handletokens", "activate moves a token to the first rank; it is meant for rank-ordered inputs (geneformer)")
    tok = ens.tokenizer
    if how == "replace":
        unknown = unknown_replacements(lc.replacementdict, tok.vocab)
        if unknown:
            run.log.warning("replacementdict: %d token(s) not in the vocabulary are ignored: %s", len(unknown), ", ".join(unknown[:10]))
    store = open_store(run, ens)
    idx = selected_indices(run, store)
    if store.feature_shape is not None:  # expression / array input: genes knocked out, positions masked
        from ..feature_loo import feature_scores

        return feature_scores(run, ens, store, idx, publish_scores)
    tok_spec = tokenizer_spec(run, ens)
    encoding = model_encoding(run, ens)
    pad_to = encoding.blocksize if ens.meta.get("fixed_length") else None
    labelled = bool(run.source.labelpos or run.source.labelcolumn)
    raw_labels = list(store.labels)
    true_idx = LabelEncoder(ens.classes).transform([raw_labels[i] for i in idx], str(run.source.filepath)) if ens.task == "classification" and labelled else None
    fast, scores_fn = run.model_spec.fast_loo, run.model_spec.perturbation_scores
    rows: list[list] = []
    extra_rows: list[dict] = []
    explanations, plot_data = [], []
    t0 = time.perf_counter()
    n_pos = 0
    starts = store.starts
    with torch.no_grad(), autocast(device, env.precision), Progress(run.log, run.quiet, unit="sequences") as progress:
        progress.start("LOO", len(idx))
        for k, i in enumerate(idx):
            ids_np, mods_np = store.get(int(i))
            n = len(ids_np)
            L = pad_to or n
            ids_t = torch.full((L,), -1, dtype=torch.long, device=device)
            ids_t[:n] = torch.as_tensor(ids_np, dtype=torch.long, device=device)
            mods_t = torch.zeros((L, mods_np.shape[-1]), dtype=torch.float32, device=device)
            mods_t[:n] = torch.as_tensor(mods_np, dtype=torch.float32, device=device)
            base_inp = tok_spec.make_input(tok, {"ids": ids_t[None], "mods": mods_t[None], "lengths": torch.tensor([n], device=device)}, encoding)
            base = ens(base_inp)[0]
            # the store may hold more tokens than the model reads (geneformer keeps the next-ranked
            # gene so a deletion lets it move in): score only the positions the model sees
            n_seen = min(n, encoding.blocksize)
            positions, repl, rids, zmods = plan(ids_np, mods_np, n_seen, how, tok.vocab, lc.replacementdict, lc.replacespecifier)
            if len(positions) == 0:
                continue
            extra: dict = {}
            if fast is not None and how in ("mask", "replace"):
                preds = fast_scores(fast, ens, tok_spec, tok, encoding, base_inp, ids_t, mods_t, n, positions, how, rids, zmods)
            else:
                preds, extra = full_forward_scores(ens, tok_spec, tok, encoding, ids_t, mods_t, n, positions, how, rids, zmods, lc.maxpositions, cfg.settings.training.batchsize, scores_fn, base_inp)
            start = int(starts[i])
            sid = store.ids[i]
            texts = [token_text(tok, int(ids_np[p]), mods_np[p], run.source.specifiersep) for p in range(n_seen)]
            true_class = int(true_idx[k]) if true_idx is not None else None
            new_rows, loo, base_v = score_rows(ens, base, preds, true_class, sid, raw_labels[i] if labelled else "", [texts[p] for p in positions], repl, start + positions)
            rows.extend(new_rows)
            extra_rows.extend({key: f"{v[j]:.6g}" for key, v in extra.items()} for j in range(len(positions)))
            per_pos = _per_position(positions, loo, n_seen)
            explanations.append((sid, per_pos, base_v, texts, start))
            if len(plot_data) < lc.plotsequences:
                plot_data.append((int(i), sid, texts, per_pos))
            n_pos += len(positions)
            progress.advance(1, f"LOO {n_pos / max(time.perf_counter() - t0, 1e-9):.0f} positions/s")
        progress.finish()
    return publish_scores(run, how, rows, explanations, plot_data, n_pos, time.perf_counter() - t0, ens.task == "classification", tok.positional, extra_rows)


def publish_scores(run: Any, how: str, rows: list, explanations: list, plot_data: list, n_pos: int, elapsed: float, classification: bool, positional: bool, extra_rows: list | None = None) -> dict:
    """Write the scores (all or nothing, replacing an earlier run's) and return the mode's summary;
    ``extra_rows`` as for :func:`write_scores`."""
    with publication(run.modedir, replaces=(f"loo_scores_{how}.csv", f"loo_scores_{how}.pkl", f"loo_{how}_*.png")) as staging:
        csv_path, pkl_path = write_scores(staging, how, rows, explanations, plot_data, classification=classification, positional=positional, extra_rows=extra_rows)
    csv_path, pkl_path = run.modedir / csv_path.name, run.modedir / pkl_path.name
    rate = n_pos / max(elapsed, 1e-9)
    run.log.info("%d sequences, %d perturbations in %.1f s (%.0f positions/s)", len(explanations), n_pos, elapsed, rate)
    return {"metrics": {"sequences": len(explanations), "perturbations": n_pos, "positions_per_s": rate}, "lines": [f"scores: {csv_path}", f"shap explanations: {pkl_path}"]}


def _per_position(positions: np.ndarray, loo: np.ndarray, n: int) -> np.ndarray:
    """Mean score per position (several replacements of one position are averaged)."""
    total = np.zeros(n)
    counts = np.zeros(n)
    np.add.at(total, positions, loo)
    np.add.at(counts, positions, 1)
    return np.divide(total, counts, out=np.zeros(n), where=counts > 0)


def write_scores(folder: Any, how: str, rows: list, explanations: list, plot_data: list, classification: bool, positional: bool, extra_rows: list | None = None):
    """``loo_scores_<how>.csv``, the ``.pkl`` of shap explanations and the per-sequence plots.
    ``extra_rows``: per row, the plugin's extra scores (``ModelSpec.perturbation_scores``),
    written as the last columns."""
    from .. import plots

    extra_rows = extra_rows or [{}] * len(rows)
    names = list(dict.fromkeys(k for e in extra_rows for k in e))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER + (["loo_true_class"] if classification else []) + names)
    w.writerows(row + [e.get(k, "") for k in names] for row, e in zip(rows, extra_rows))
    csv_path = folder / f"loo_scores_{how}.csv"
    write_text(csv_path, buf.getvalue())
    pkl_path = folder / f"loo_scores_{how}.pkl"
    write_atomic(pkl_path, lambda fh: pickle.dump(shap_explanations(explanations), fh), mode="wb")
    for index, sid, texts, per_pos in plot_data:
        draw = plots.importance if positional else plots.top_features
        draw(texts, per_pos, folder / plot_name(how, index, sid), title=f"{sid}: leave-one-out ({how})")
    return csv_path, pkl_path


def plot_name(how: str, index: int, sid: str) -> str:
    """``loo_<how>_<record index>_<id, sanitised, at most 40 characters>_<8 hex of the id's hash>.png``:
    unique (the index), recognisable (the id) and short enough for any file system, whatever
    the ids are (``a/b`` and ``a_b``, 230 characters, non-ASCII)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in str(sid))[:40].strip(".")
    digest = hashlib.sha256(str(sid).encode("utf-8")).hexdigest()[:8]
    return f"loo_{how}_{index:06d}_{safe}_{digest}.png"


def shap_explanations(items: list) -> list:
    """One ``shap.Explanation`` per sequence: values (L,), base value = the original prediction."""
    import shap

    return [
        shap.Explanation(
            values=np.asarray(values, dtype=np.float64),
            base_values=float(base),
            data=np.asarray(texts, dtype=object),
            feature_names=[f"{start + p}:{t}" for p, t in enumerate(texts)],
        )
        for sid, values, base, texts, start in items
    ]
