"""Leave-one-out perturbations: which copies of a sequence to make, making them, scoring them.

Planning (:func:`plan`) is apart from applying (:func:`perturb`): perturbations are made on the
stored token ids on the device, batched across positions, in chunks that bound memory; no text
is re-tokenized. :func:`full_forward_scores` runs the model on every perturbed copy — the
reference that a plugin's exact fast routine (``ModelSpec.fast_loo``, through
:func:`fast_scores`) is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def fast_fold_outputs(fast, ens, tok_spec, tok, encoding, base_inp, ids_t, mods_t, n, positions, how, rids, zmods) -> list:
    """Single-position changes through the plugin's fast routine, per fold: the new input rows
    are built by the tokenizer spec from one-token batches, so the plugin only sees (row
    position, new row). Returns one (P,) or (P, C) tensor per fold."""
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
    return [ens.convert(i, fast(f.model, base_inp, n, pos, rows)) for i, f in enumerate(ens.folds)]


def chunk_size(ens, tok, length: int, n_mods: int, maxpositions: int, batchsize: int) -> int:
    """How many copies of a ``length``-token input one batched forward pass takes."""
    # one-hot inputs cost L x channels floats per copy: chunks of at most ~16 MB of input (larger
    # ones only thrash the caches: 2-3x slower per copy at 4,096 copies of 1,024 tokens, every
    # plugin); token-id inputs (geneformer) are small, their cost is the model's activations,
    # bounded by the batch size
    C = len(tok.vocab) + n_mods if ens.meta.get("encoding") == "atomic" else None
    bound = 16_000_000 // (4 * length * C) if C else batchsize * 4
    return int(max(1, min(maxpositions, bound)))


def full_forward_scores(ens, tok_spec, tok, encoding, ids_t, mods_t, n, positions, how, rids, zmods, maxpositions, batchsize, scores_fn=None, base_inp=None):
    """Predictions of every perturbed copy by batched full forward passes, chunked, and the
    plugin's extra per-perturbation scores (``ModelSpec.perturbation_scores`` as ``scores_fn``,
    with the unperturbed input ``base_inp``): ``(predictions, {name: (P,) float64})``."""
    import torch

    chunk = chunk_size(ens, tok, ids_t.shape[0], mods_t.shape[-1], maxpositions, batchsize)
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


def loo_values(ens, base, preds, true_class: int | None) -> tuple[np.ndarray, np.ndarray | None, float, str]:
    """LOO scores of one record's perturbed copies.

    Parameters
    ----------
    ens : the ensemble (its ``task`` and ``classes``).
    base : (O,) the ensemble's output for the record: label units, or class probabilities.
    preds : (P, O) its outputs for the P perturbed copies.
    true_class : index of the record's true class (classification with labels), else ``None``.

    Returns
    -------
    loo : (P,) float64, ``prediction(perturbed) - prediction(original)`` in label units, or the
        change of the probability of the originally predicted class.
    loo_true : (P,) the change of the true class's probability (classification with a true
        class), else ``None``.
    base_value : the original prediction (of that class).
    pred_text : the original prediction as the CSV shows it (a number, or the class).
    """
    loo_true = None
    if ens.task == "regression":
        base_v = float(base)
        return (preds.double() - base_v).cpu().numpy(), None, base_v, f"{base_v:.6g}"
    cls = int(base.argmax())
    base_v = float(base[cls])
    loo = (preds[:, cls].double() - base_v).cpu().numpy()
    if true_class is not None:
        loo_true = (preds[:, true_class].double() - float(base[true_class])).cpu().numpy()
    return loo, loo_true, base_v, ens.classes[cls]


@dataclass
class SequenceScores:
    """The leave-one-out scores of one sequence.

    Attributes
    ----------
    sid, label : the record's id and raw label ("" without labels).
    start : offset of the scored window in the original sequence.
    pred_text : the original prediction as the CSV shows it (a number, or the predicted class).
    base : the original prediction (regression) or the predicted class's probability.
    texts : (n,) the tokens the model sees, as the input showed them.
    positions : (P,) perturbed positions; ``replacements`` their replacement tokens ("" for
        remove/mask/activate).
    loo : (P,) prediction(perturbed) - prediction(original); ``loo_true`` the change of the
        true class's probability (classification with labels), else None.
    columns, refs : saturate only: the alphabet column of each perturbation (P,) and of each
        position's own token (n,).
    extra : the plugin's own per-perturbation scores (``ModelSpec.perturbation_scores``), name ->
        (P,); the CSV's last columns.
    """

    sid: str
    label: str
    start: int
    pred_text: str
    base: float
    texts: list
    positions: np.ndarray
    replacements: list
    loo: np.ndarray
    loo_true: np.ndarray | None = None
    columns: np.ndarray | None = None
    refs: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def per_position(self) -> np.ndarray:
        """(n,) mean score per position (several replacements of one position are averaged)."""
        n = len(self.texts)
        total, counts = np.zeros(n), np.zeros(n)
        np.add.at(total, self.positions, self.loo)
        np.add.at(counts, self.positions, 1)
        return np.divide(total, counts, out=np.zeros(n), where=counts > 0)


class LooScorer:
    """Scores the sequences of a store one by one (``handletokens`` of the run's ``looscores``).

    A plugin's ``fast_loo`` handles single-position changes (mask, replace, saturate); the
    batched full forward passes everything else.
    """

    def __init__(self, run: Any, ens: Any, store: Any, device: Any, saturation: Any = None):
        from .ensemble import model_encoding, tokenizer_spec

        self.run, self.ens, self.store, self.device = run, ens, store, device
        self.lc = run.cfg.looscores
        self.how = self.lc.handletokens
        self.tok = ens.tokenizer
        self.tok_spec = tokenizer_spec(run, ens)
        self.encoding = model_encoding(run, ens)
        self.pad_to = self.encoding.blocksize if ens.meta.get("fixed_length") else None
        self.fast = run.model_spec.fast_loo if self.how in ("mask", "replace", "saturate") else None
        self.scores_fn = run.model_spec.perturbation_scores
        self.saturation = saturation
        self.labelled = bool(run.source.labelpos or run.source.labelcolumn)

    def inputs(self, i: int):
        """Store record ``i`` as device tensors: ids (L,), mods (L, M), length n, the model input."""
        import torch

        ids_np, mods_np = self.store.get(int(i))
        n = len(ids_np)
        L = self.pad_to or n
        ids_t = torch.full((L,), -1, dtype=torch.long, device=self.device)
        ids_t[:n] = torch.as_tensor(ids_np, dtype=torch.long, device=self.device)
        mods_t = torch.zeros((L, mods_np.shape[-1]), dtype=torch.float32, device=self.device)
        mods_t[:n] = torch.as_tensor(mods_np, dtype=torch.float32, device=self.device)
        inp = self.tok_spec.make_input(self.tok, {"ids": ids_t[None], "mods": mods_t[None], "lengths": torch.tensor([n], device=self.device)}, self.encoding)
        return ids_np, mods_np, ids_t, mods_t, n, inp

    def __call__(self, i: int, true_class: int | None = None) -> SequenceScores:
        ids_np, mods_np, ids_t, mods_t, n, base_inp = self.inputs(i)
        ens, how = self.ens, self.how
        base = ens(base_inp)[0]
        # the store may hold more tokens than the model reads (geneformer keeps the next-ranked
        # gene so a deletion lets it move in): score only the positions the model sees
        n_seen = min(n, self.encoding.blocksize)
        columns = refs = None
        if how == "saturate":
            positions, rids, columns = self.saturation.plan(ids_np, n_seen)
            refs = self.saturation.refs(ids_np[:n_seen])
            repl, zmods, kind = [self.tok.vocab[r] for r in rids], None, "replace"
        else:
            positions, repl, rids, zmods = plan(ids_np, mods_np, n_seen, how, self.tok.vocab, self.lc.replacementdict, self.lc.replacespecifier)
            kind = how
        extra: dict = {}
        if len(positions) == 0:
            preds = base[None][:0]
        elif self.fast is not None:
            preds = ens.combine(fast_fold_outputs(self.fast, ens, self.tok_spec, self.tok, self.encoding, base_inp, ids_t, mods_t, n, positions, kind, rids, zmods))
        else:
            preds, extra = full_forward_scores(ens, self.tok_spec, self.tok, self.encoding, ids_t, mods_t, n, positions, kind, rids, zmods, self.lc.maxpositions, self.run.cfg.settings.training.batchsize, self.scores_fn, base_inp)
        loo, loo_true, base_v, pred_text = loo_values(ens, base, preds, true_class)
        texts = [token_text(self.tok, int(ids_np[p]), mods_np[p], self.run.source.specifiersep) for p in range(n_seen)]
        label = self.store.labels[i] if self.labelled else ""
        return SequenceScores(self.store.ids[i], label if label is not None else "", int(self.store.starts[i]), pred_text, base_v, texts, positions, repl, loo, loo_true, columns, refs, extra)
