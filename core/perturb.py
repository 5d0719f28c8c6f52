"""Leave-one-out perturbations: which copies of a sequence to make, making them, scoring them.

Planning (:func:`plan`) is apart from applying (:func:`perturb`): perturbations are made on the
stored token ids on the device, batched across positions, in chunks that bound memory; no text
is re-tokenized. :func:`full_forward_scores` runs the model on every perturbed copy — the
reference that a plugin's exact fast routine (``ModelSpec.fast_loo``, through
:func:`fast_scores`) is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MASK_ID = -2


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


def unknown_replacements(replacementdict: dict, vocab: list[str]) -> list[str]:
    """Tokens of a ``replacementdict`` (keys or replacements) that the vocabulary lacks (sorted)."""
    named = set(replacementdict) | {r for rs in replacementdict.values() for r in rs}
    return sorted(named - set(vocab))


def token_text(tok: Any, i: int, mods_row: np.ndarray, specifiersep: str | None) -> str:
    """The token as the input showed it: its name (``<unk>`` for unknown) and its modifiers."""
    vocab = tok.vocab
    base = vocab[i] if 0 <= i < len(vocab) else ("<unk>" if i == -1 else str(i))
    if specifiersep and len(mods_row) and np.any(mods_row != 0):
        last = int(np.nonzero(mods_row)[0].max()) + 1
        base += "".join(f"{specifiersep}{v:g}" for v in mods_row[:last])
    return base


def fast_scores(fast, ens, tok_spec, tok, encoding, base_inp, ids_t, mods_t, n, positions, how, rids, zmods):
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
    rows = tok_spec.make_input(tok, {"ids": row_ids[:, None], "mods": row_mods[:, None, :], "lengths": torch.ones(len(pos), dtype=torch.long, device=ids_t.device)}, encoding)["x"][:, 0, :]
    outs = [ens.convert(i, fast(f.model, base_inp, n, pos, rows)) for i, f in enumerate(ens.folds)]
    return ens.combine(outs)


def full_forward_scores(ens, tok_spec, tok, encoding, ids_t, mods_t, n, positions, how, rids, zmods, maxpositions, batchsize, scores_fn=None, base_inp=None):
    """Predictions of every perturbed copy by batched full forward passes, chunked, and the
    plugin's extra per-perturbation scores (``ModelSpec.perturbation_scores`` as ``scores_fn``,
    with the unperturbed input ``base_inp``): ``(predictions, {name: (P,) float64})``."""
    import torch

    L = ids_t.shape[0]
    # one-hot inputs cost L x channels floats per copy; token-id inputs (geneformer) are small,
    # their cost is the model's activations, bounded by the batch size
    C = len(tok.vocab) + mods_t.shape[-1] if ens.meta.get("encoding") == "atomic" else None
    bound = 256_000_000 // (4 * L * C) if C else batchsize * 4
    chunk = int(max(1, min(maxpositions, bound)))
    outs, extras = [], []
    for s in range(0, len(positions), chunk):
        sl = slice(s, s + chunk)
        p_ids, p_mods, p_len = perturb(ids_t, mods_t, n, positions[sl], how, None if rids is None else rids[sl], None if zmods is None else zmods[sl])
        inp = tok_spec.make_input(tok, {"ids": p_ids, "mods": p_mods, "lengths": p_len}, encoding)
        if scores_fn is None:
            outs.append(ens(inp))
        else:
            out, extra = _with_scores(ens, scores_fn, base_inp, inp, positions[sl], how)
            outs.append(out)
            extras.append(extra)
    names = list(extras[0]) if extras else []
    return torch.cat(outs), {k: np.concatenate([e[k] for e in extras]) for k in names}


def _with_scores(ens, scores_fn, base_inp, inp, positions, how):
    """Combined predictions of the fold models and their extra scores, averaged with the
    ensemble weights."""
    outs, scores = [], {}
    for i, f in enumerate(ens.folds):
        raw, extra = scores_fn(f.model, base_inp, inp, positions, how)
        outs.append(ens.convert(i, raw))
        for k, v in extra.items():
            scores[k] = scores.get(k, 0.0) + v.double().cpu().numpy() * float(ens.weights[i])
    return ens.combine(outs), scores


def score_rows(ens, base, preds, true_class: int | None, sid: str, label: str, tokens: list, replacements: list, offsets: np.ndarray) -> tuple[list[list], np.ndarray, float]:
    """LOO scores of one record's perturbed copies, as CSV rows.

    Parameters
    ----------
    ens : the ensemble (its ``task`` and ``classes``).
    base : (O,) the ensemble's output for the record: label units, or class probabilities.
    preds : (P, O) its outputs for the P perturbed copies.
    true_class : index of the record's true class (classification with labels), else ``None``.
    sid, label : the record's id and label text (``""`` without labels).
    tokens, replacements : (P,) the token text and replacement of each copy.
    offsets : (P,) int, the position of each copy's change in the original record.

    Returns
    -------
    rows : the CSV rows (``sequence, token, replacement, label, pred, start_offset, end_offset,
        loo`` and, for classification, ``loo_true_class``).
    loo : (P,) float64, ``prediction(perturbed) - prediction(original)`` in label units, or the
        change of the probability of the originally predicted class.
    base_value : the original prediction (of that class).
    """
    loo_true = None
    if ens.task == "regression":
        base_v = float(base)
        loo = (preds.double() - base_v).cpu().numpy()
        pred_text = f"{base_v:.6g}"
    else:
        cls = int(base.argmax())
        base_v = float(base[cls])
        loo = (preds[:, cls].double() - base_v).cpu().numpy()
        pred_text = ens.classes[cls]
        if true_class is not None:
            loo_true = (preds[:, true_class].double() - float(base[true_class])).cpu().numpy()
    rows = []
    for j, p in enumerate(offsets):
        row = [sid, tokens[j], replacements[j], label, pred_text, int(p), int(p) + 1, f"{loo[j]:.6g}"]
        if ens.task == "classification":
            row.append(f"{loo_true[j]:.6g}" if loo_true is not None else "")
        rows.append(row)
    return rows, loo, base_v
