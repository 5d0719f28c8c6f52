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
forward pass here is the reference the fast routines are tested against.
"""

from __future__ import annotations

import csv
import io
import pickle
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .outputs import write_atomic, write_text

MASK_ID = -2
HEADER = ["sequence", "token", "replacement", "label", "pred", "start_offset", "end_offset", "loo"]


@dataclass
class Perturbations:
    """P perturbed copies of one sequence: ids (P, L), mods (P, L, M), lengths (P,), and for each
    its position and replacement label."""

    ids: Any
    mods: Any
    lengths: Any
    positions: np.ndarray
    replacements: list[str]


def perturb(ids, mods, length: int, positions: np.ndarray, how: str, replace_ids: np.ndarray | None = None, zero_mods: np.ndarray | None = None):
    """Perturbed copies of one sequence as tensors on its device.

    Parameters
    ----------
    ids : (L,) int64 tensor, -1 = padding.
    mods : (L, M) float tensor.
    length : real length n (positions >= n are padding).
    positions : (P,) positions to perturb.
    how : ``remove``, ``mask``, ``replace`` or ``activate``.
    replace_ids : (P,) new ids for ``replace``.
    zero_mods : (P,) bool, ``replace``: zero the modifier channels at the position.

    Returns
    -------
    ids (P, L), mods (P, L, M), lengths (P,)
    """
    import torch

    dev = ids.device
    P, L = len(positions), ids.shape[0]
    pos = torch.as_tensor(positions, device=dev, dtype=torch.long)
    rows = torch.arange(P, device=dev)
    cols = torch.arange(L, device=dev)
    lengths = torch.full((P,), length, device=dev, dtype=torch.long)
    if how in ("mask", "replace"):
        new_ids = ids.unsqueeze(0).repeat(P, 1)
        new_mods = mods.unsqueeze(0).repeat(P, 1, 1)
        if how == "mask":
            new_ids[rows, pos] = MASK_ID
            new_mods[rows, pos] = 0
        else:
            new_ids[rows, pos] = torch.as_tensor(replace_ids, device=dev, dtype=torch.long)
            if zero_mods is not None and zero_mods.any():
                z = torch.as_tensor(zero_mods, device=dev)
                new_mods[rows[z], pos[z]] = 0
        return new_ids, new_mods, lengths
    if how == "remove":
        src = cols.unsqueeze(0) + (cols.unsqueeze(0) >= pos.unsqueeze(1)).long()
        valid = src < length
        src = src.clamp(max=L - 1)
        new_ids = torch.where(valid, ids[src], torch.full_like(src, -1))
        new_mods = mods[src] * valid.unsqueeze(-1)
        return new_ids, new_mods, lengths - 1
    if how == "activate":
        # position j of the result: 0 -> the moved token; 1..p -> old 0..p-1; > p -> unchanged
        src = torch.where(cols.unsqueeze(0) == 0, pos.unsqueeze(1), torch.where(cols.unsqueeze(0) <= pos.unsqueeze(1), cols.unsqueeze(0) - 1, cols.unsqueeze(0)))
        return ids[src], mods[src], lengths
    raise ValueError(f"unknown handletokens {how!r}")


def plan(ids: np.ndarray, mods: np.ndarray, length: int, how: str, vocab: list[str] | None, replacementdict: dict | None, replacespecifier: bool) -> tuple[np.ndarray, list[str], np.ndarray | None, np.ndarray | None]:
    """Which perturbations to make for one sequence: positions, replacement labels, replacement
    ids and whether modifiers are zeroed. No-op replacements are skipped."""
    positions = np.arange(length)
    if how != "replace":
        return positions, [""] * length, None, None
    index = {t: i for i, t in enumerate(vocab or [])}
    pos_out, labels, rid, zmods = [], [], [], []
    has_mods = mods.shape[-1] > 0
    for p in positions:
        i = int(ids[p])
        tok = vocab[i] if 0 <= i < len(vocab) else None
        for r in (replacementdict or {}).get(tok, []) if tok is not None else []:
            if r == tok or r not in index:
                continue
            pos_out.append(p)
            labels.append(r)
            rid.append(index[r])
            zmods.append(False)
        if replacespecifier and has_mods and tok is not None and np.any(mods[p] != 0):
            pos_out.append(p)
            labels.append(tok)
            rid.append(i)
            zmods.append(True)
    return np.asarray(pos_out, dtype=np.int64), labels, np.asarray(rid, dtype=np.int64), np.asarray(zmods, dtype=bool)


def token_text(tok: Any, i: int, mods_row: np.ndarray, specifiersep: str | None) -> str:
    vocab = getattr(tok, "vocab", None)
    base = vocab[i] if vocab is not None and 0 <= i < len(vocab) else ("<unk>" if i == -1 else str(i))
    names = getattr(tok, "token_names", None)
    if names is not None:
        base = names(i)
    if specifiersep and len(mods_row) and np.any(mods_row != 0):
        last = int(np.nonzero(mods_row)[0].max()) + 1
        base += "".join(f"{specifiersep}{v:g}" for v in mods_row[:last])
    return base


def execute(run: Any) -> dict:
    import torch

    from .dataset import open_source_store
    from .engine import autocast, resolve_device
    from .predict import load_ensemble, selected_indices
    from .scaling import LabelEncoder

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
    vocab = getattr(tok, "vocab", None)
    if how == "replace":
        unknown = sorted({r for rs in lc.replacementdict.values() for r in rs} | set(lc.replacementdict) - set(vocab or []))
        if unknown:
            run.log.warning("replacementdict: %d token(s) not in the vocabulary are ignored: %s", len(unknown), ", ".join(unknown[:10]))
    store = open_source_store(run, tok, run.source, None)
    idx = selected_indices(run, store)
    tok_spec = run.registry.tokenizer(ens.meta.get("encoding", run.plugin.tokenizer))
    pad_to = ens.meta["blocksize"] if ens.meta.get("fixed_length") else None
    labelled = bool(run.source.labelpos or run.source.labelcolumn)
    raw_labels = list(store.labels)
    classes = getattr(ens, "classes", None)
    true_idx = None
    if ens.task == "classification" and labelled:
        true_idx = LabelEncoder(classes).transform([raw_labels[i] for i in idx], str(run.source.filepath))
    fast = run.registry.model(run.plugin.name).fast_loo
    specsep = getattr(run.source, "specifiersep", None)
    rows: list[list] = []
    explanations = []
    plot_data = []
    t0 = time.perf_counter()
    n_pos = 0
    progress = _progress(run, len(idx))
    starts = store.starts
    with torch.no_grad(), autocast(device, env.precision):
        for k, i in enumerate(idx):
            ids_np, mods_np = store.get(int(i))
            n = len(ids_np)
            L = pad_to or n
            ids_t = torch.full((L,), -1, dtype=torch.long, device=device)
            ids_t[:n] = torch.as_tensor(ids_np, dtype=torch.long, device=device)
            mods_t = torch.zeros((L, mods_np.shape[-1]), dtype=torch.float32, device=device)
            mods_t[:n] = torch.as_tensor(mods_np, dtype=torch.float32, device=device)
            base_inp = tok_spec.make_input(tok, {"ids": ids_t[None], "mods": mods_t[None], "lengths": torch.tensor([n], device=device)}, cfg)
            base = ens(base_inp)[0]
            # the store may hold more tokens than the model reads (geneformer keeps the next-ranked
            # gene so a deletion lets it move in): score only the positions the model sees
            n_seen = min(n, int(ens.meta.get("blocksize") or n))
            positions, repl, rids, zmods = plan(ids_np, mods_np, n_seen, how, vocab, lc.replacementdict, lc.replacespecifier)
            if len(positions) == 0:
                continue
            if fast is not None and how in ("mask", "replace"):
                preds = _fast(fast, ens, tok_spec, tok, cfg, base_inp, ids_t, mods_t, n, positions, how, rids, zmods)
            else:
                preds = _full_forwards(ens, tok_spec, tok, cfg, ids_t, mods_t, n, positions, how, rids, zmods, lc.maxpositions)
            if ens.task == "regression":
                base_v = float(base)
                loo = (preds.double() - base_v).cpu().numpy()
                pred_text = f"{base_v:.6g}"
                loo_true = None
            else:
                cls = int(base.argmax())
                base_v = float(base[cls])
                loo = (preds[:, cls].double() - base_v).cpu().numpy()
                pred_text = classes[cls]
                loo_true = (preds[:, int(true_idx[k])].double() - float(base[int(true_idx[k])])).cpu().numpy() if true_idx is not None else None
            start = int(starts[i])
            sid = store.ids[i]
            label = raw_labels[i] if labelled else ""
            texts = [token_text(tok, int(ids_np[p]), mods_np[p], specsep) for p in range(n_seen)]
            for j, p in enumerate(positions):
                row = [sid, texts[p], repl[j], label, pred_text, start + int(p), start + int(p) + 1, f"{loo[j]:.6g}"]
                if ens.task == "classification":
                    row.append(f"{loo_true[j]:.6g}" if loo_true is not None else "")
                rows.append(row)
            per_pos = np.zeros(n_seen)
            counts = np.zeros(n_seen)
            np.add.at(per_pos, positions, loo)
            np.add.at(counts, positions, 1)
            per_pos = np.divide(per_pos, counts, out=np.zeros(n_seen), where=counts > 0)
            explanations.append((sid, per_pos, base_v, texts, start))
            if len(plot_data) < lc.plotsequences:
                plot_data.append((sid, texts, per_pos))
            n_pos += len(positions)
            if progress is not None:
                progress.update(progress.task_ids[0], advance=1, description=f"LOO {n_pos / max(time.perf_counter() - t0, 1e-9):.0f} positions/s")
    if progress is not None:
        progress.stop()
    elapsed = time.perf_counter() - t0
    header = HEADER + (["loo_true_class"] if ens.task == "classification" else [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    csv_path = run.modedir / f"loo_scores_{how}.csv"
    write_text(csv_path, buf.getvalue())
    pkl_path = run.modedir / f"loo_scores_{how}.pkl"
    write_atomic(pkl_path, lambda fh: pickle.dump(_shap_explanations(explanations), fh), mode="wb")
    from . import plots

    for sid, texts, per_pos in plot_data:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(sid))
        plots.importance(texts, per_pos, run.modedir / f"loo_{how}_{safe}.png", title=f"{sid} ({how})")
    rate = n_pos / max(elapsed, 1e-9)
    run.log.info("%d sequences, %d perturbations in %.1f s (%.0f positions/s)", len(explanations), n_pos, elapsed, rate)
    return {"metrics": {"sequences": len(explanations), "perturbations": n_pos, "positions_per_s": rate}, "lines": [f"scores: {csv_path}", f"shap explanations: {pkl_path}"]}


def _shap_explanations(items: list) -> list:
    """One ``shap.Explanation`` per sequence: values (L,), base value = the original prediction."""
    import shap

    out = []
    for sid, values, base, texts, start in items:
        e = shap.Explanation(
            values=np.asarray(values, dtype=np.float64),
            base_values=float(base),
            data=np.asarray(texts, dtype=object),
            feature_names=[f"{start + p}:{t}" for p, t in enumerate(texts)],
        )
        out.append(e)
    return out


def _fast(fast, ens, tok_spec, tok, cfg, base_inp, ids_t, mods_t, n, positions, how, rids, zmods):
    """Single-position changes through the plugin's fast routine: the new input rows are built by
    the tokenizer spec from one-token batches, so the plugin only sees (row position, new row)."""
    import torch

    pos = torch.as_tensor(positions, device=ids_t.device, dtype=torch.long)
    row_ids = ids_t[pos].clone()
    row_mods = mods_t[pos].clone()
    if how == "mask":
        row_ids[:] = MASK_ID
        row_mods[:] = 0
    else:
        row_ids[:] = torch.as_tensor(rids, device=ids_t.device, dtype=torch.long)
        if zmods is not None and zmods.any():
            row_mods[torch.as_tensor(zmods, device=ids_t.device)] = 0
    rows = tok_spec.make_input(tok, {"ids": row_ids[:, None], "mods": row_mods[:, None, :], "lengths": torch.ones(len(pos), dtype=torch.long, device=ids_t.device)}, cfg)["x"][:, 0, :]
    outs = [ens.convert(i, fast(f.model, base_inp, n, pos, rows)) for i, f in enumerate(ens.folds)]
    return ens.combine(outs)


def _full_forwards(ens, tok_spec, tok, cfg, ids_t, mods_t, n, positions, how, rids, zmods, maxpositions):
    """Predictions of every perturbed copy by batched full forward passes, chunked."""
    import torch

    L = ids_t.shape[0]
    # one-hot inputs cost L x channels floats per copy; token-id inputs (geneformer) are small,
    # their cost is the model's activations, bounded by the batch size
    C = len(tok.vocab) + mods_t.shape[-1] if ens.meta.get("encoding") == "atomic" else None
    bound = 256_000_000 // (4 * L * C) if C else cfg.settings.training.batchsize * 4
    chunk = int(max(1, min(maxpositions, bound)))
    outs = []
    for s in range(0, len(positions), chunk):
        sl = slice(s, s + chunk)
        p_ids, p_mods, p_len = perturb(ids_t, mods_t, n, positions[sl], how, None if rids is None else rids[sl], None if zmods is None else zmods[sl])
        inp = tok_spec.make_input(tok, {"ids": p_ids, "mods": p_mods, "lengths": p_len}, cfg)
        outs.append(ens(inp))
    return torch.cat(outs)


def _progress(run: Any, total: int):
    if run.quiet or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    p.add_task("LOO", total=total)
    p.start()
    return p

