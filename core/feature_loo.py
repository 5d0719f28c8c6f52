"""Leave-one-out for feature inputs: a gene knocked out, an array position masked.

For a record of an ``expression`` store a position is a gene: its raw count is set to zero
before the model's normalisation (an in-silico knockout); for an ``array`` store a position is
one place along the sequence axis: every channel of it is set to zero (one SNP's column of a
one-hot genotype array), before the model's normalisation too. ``loo`` is, as for tokens,
``prediction(perturbed) - prediction(original)`` in label units (regression) or as the change of
the probability of the originally predicted class (classification, with the true class's change
alongside when labels are given). Positions that are already zero are skipped: zeroing them
changes nothing.

``looscores: handletokens``: ``mask`` (both kinds) or ``remove`` (expression: deleting a gene
is the same knockout); ``replace`` and ``activate`` are for tokens. The CSV's ``token`` column
names the gene, or the array position (its index, or its name from ``looscores:
positionnames``); ``start_offset`` is the position's index in the model input.

The perturbed copies are made on the device from the stored record and evaluated in chunks
that bound memory, through the same ensemble as ``predict``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .errors import ConfigError

def _check_how(how: str, kind: str) -> None:
    allowed = ("mask", "remove") if kind == "expression" else ("mask",)
    if how not in allowed:
        what = "a gene's count is set to zero (knockout)" if kind == "expression" else "a position's values are set to zero"
        raise ConfigError("looscores.handletokens", f"{kind} input supports {' or '.join(allowed)} ({what}), got {how!r}")


def feature_scores(run: Any, ens: Any, store: Any, idx: np.ndarray, publish_scores: Callable[..., Any]) -> dict:
    """Run interpret on a feature store and write its results with ``write_scores``.

    Parameters
    ----------
    run : the interpret :class:`~biolm.core.runner.Run`.
    ens : the loaded :class:`~biolm.core.ensemble.Ensemble`.
    store : the inference data as a feature store.
    idx : (N,) the records to score.
    publish_scores : ``publish_scores(run, how, rows, explanations, plot_data, n_positions, seconds,
        classification, positional) -> summary``: the interpret mode's writer (CSV, shap
        explanations, plots, published all or nothing).

    Returns
    -------
    dict : the mode's summary (``metrics``, ``lines``).
    """
    import torch

    from .array_tokenizer import position_names
    from .engine import autocast, resolve_device
    from .ensemble import model_encoding, tokenizer_spec
    from .perturb import score_rows
    from .progress import Progress
    from .scaling import LabelEncoder

    lc, env = run.cfg.looscores, run.cfg.settings.environment
    kind = ens.meta.get("encoding")
    _check_how(lc.handletokens, kind)
    device = resolve_device(env)
    tok, spec, encoding = ens.tokenizer, tokenizer_spec(run, ens), model_encoding(run, ens)
    shape = store.feature_shape
    C = shape[0] if len(shape) > 1 else 1
    L = int(np.prod(shape)) // C
    names = (position_names(lc.positionnames, L) if kind == "array" else None) or tok.vocab
    labelled = bool(run.source.labelpos or run.source.labelcolumn)
    raw_labels = list(store.labels)
    true_idx = LabelEncoder(ens.classes).transform([raw_labels[i] for i in idx], str(run.source.filepath)) if ens.task == "classification" and labelled else None
    chunk = int(max(1, min(lc.maxpositions, 32_000_000 // (4 * L * C))))  # small chunks: big ones cost more in page faults than they save
    rows: list[list] = []
    explanations, plot_data = [], []
    n_pos, t0 = 0, time.perf_counter()
    with torch.no_grad(), autocast(device, env.precision), Progress(run.log, run.quiet, unit="records") as progress:
        progress.start("LOO", len(idx))
        for k, i in enumerate(idx):
            rec = torch.as_tensor(store.read_features([int(i)]), device=device).reshape(1, C, L)
            base = ens(spec.make_input(tok, {"features": rec.reshape((1,) + tuple(shape))}, encoding))[0]
            positions = torch.nonzero(rec[0].abs().sum(0) > 0).flatten()
            preds = []
            for s in range(0, len(positions), chunk):
                pos = positions[s : s + chunk]
                copies = rec.repeat(len(pos), 1, 1)
                copies[torch.arange(len(pos), device=device), :, pos] = 0
                preds.append(ens(spec.make_input(tok, {"features": copies.reshape((len(pos),) + tuple(shape))}, encoding)))
            if not preds:
                progress.advance(1)
                continue
            pos_np = positions.cpu().numpy()
            true_class = int(true_idx[k]) if true_idx is not None else None
            new_rows, loo, base_v = score_rows(ens, base, torch.cat(preds), true_class, store.ids[i], raw_labels[i] if labelled else "", [names[p] for p in pos_np], [""] * len(pos_np), pos_np)
            rows.extend(new_rows)
            per_pos = np.zeros(L)
            per_pos[pos_np] = loo
            explanations.append((store.ids[i], per_pos, base_v, names, 0))
            if len(plot_data) < lc.plotsequences:
                plot_data.append((int(i), store.ids[i], names, per_pos))
            n_pos += len(pos_np)
            progress.advance(1, f"LOO {n_pos / max(time.perf_counter() - t0, 1e-9):.0f} positions/s")
        progress.finish()
    return publish_scores(run, lc.handletokens, rows, explanations, plot_data, n_pos, time.perf_counter() - t0, ens.task == "classification", tok.positional)
