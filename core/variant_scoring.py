"""Variant effects scored and written: ``variant_effects.csv``.

For every variant: the prediction of its sequence (ref) and of the edited sequence (alt), per
fold and for the ensemble, in label units (regression) or as class probabilities
(classification). A variant that leaves the model's input unchanged costs nothing; a single-token
change inside an unchanged window goes through the plugin's ``fast_loo`` when it has one; every
other (indels, several tokens, a moved window) through batched full forward passes.

Columns: ``variant,sequence,position,ref,alt,pred_ref,pred_alt,delta``; regression:
predictions in label units, ``delta = pred_alt - pred_ref``; classification: ``pred_ref`` and
``pred_alt`` are the predicted classes, ``delta`` the change of the probability of the class
predicted for ref, then ``prob_ref_<c>,prob_alt_<c>,delta_<c>`` for every class. A CV parent adds
the same numbers per fold (``fold_<k>_pred_ref,fold_<k>_pred_alt,fold_<k>_delta``; classification
``fold_<k>_prob_ref_<c>,fold_<k>_prob_alt_<c>,fold_<k>_delta_<c>``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from .perturb import chunk_size, fast_fold_outputs
from .sharding import Shards, concat_files
from .variants import Sequences, Variant

NAME = "variant_effects.csv"


class VariantScorer:
    """Per-fold predictions of ref and alt for chunks of variants.

    Parameters
    ----------
    run, ens, device : the Run, the :class:`~biolm.core.ensemble.Ensemble`, the torch device.
    sequences : the whole sequences (:class:`~biolm.core.variants.Sequences`).
    """

    def __init__(self, run: Any, ens: Any, sequences: Sequences, device: Any):
        from .ensemble import model_encoding, tokenizer_spec

        self.ens, self.sequences, self.device = ens, sequences, device
        self.tok, self.tok_spec = ens.tokenizer, tokenizer_spec(run, ens)
        self.encoding = model_encoding(run, ens)
        self.pad_to = self.encoding.blocksize if ens.meta.get("fixed_length") else None
        self.fast = run.model_spec.fast_loo
        self.batchsize = run.cfg.settings.training.batchsize
        self.maxpositions = run.cfg.looscores.maxpositions
        self.refs: dict[int, np.ndarray] = {}
        self.counts = {"same": 0, "single": 0, "full": 0}

    def _tensors(self, seqs: list[tuple[np.ndarray, np.ndarray]]):
        """Windowed sequences as one padded batch: ids (B, L), mods (B, L, M), lengths (B,)."""
        import torch

        L = self.pad_to or max(len(i) for i, _ in seqs)
        M = seqs[0][1].shape[1]
        ids = torch.full((len(seqs), L), -1, dtype=torch.long)
        mods = torch.zeros((len(seqs), L, M), dtype=torch.float32)
        for b, (i, m) in enumerate(seqs):
            ids[b, : len(i)] = torch.as_tensor(i)
            mods[b, : len(i)] = torch.as_tensor(m)
        lengths = torch.as_tensor([len(i) for i, _ in seqs], dtype=torch.long)
        return ids.to(self.device), mods.to(self.device), lengths.to(self.device)

    def forward(self, seqs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """(F, B) or (F, B, C) per-fold outputs of windowed sequences, in batches."""
        L = self.pad_to or max(len(i) for i, _ in seqs)
        chunk = chunk_size(self.ens, self.tok, L, seqs[0][1].shape[1], self.maxpositions, self.batchsize)
        outs = []
        for s in range(0, len(seqs), chunk):
            ids, mods, lengths = self._tensors(seqs[s : s + chunk])
            inp = self.tok_spec.make_input(self.tok, {"ids": ids, "mods": mods, "lengths": lengths}, self.encoding)
            outs.append(np.stack([o.double().cpu().numpy() for o in self.ens.fold_outputs(inp)]))
        return np.concatenate(outs, axis=1)

    def _windowed(self, ids: np.ndarray, mods: np.ndarray, win: tuple[int, int]):
        return ids[win[0] : win[1]], mods[win[0] : win[1]]

    def ref_outputs(self, records: list[int]) -> None:
        """Predict (once) the sequences of ``records`` as they are."""
        todo = sorted({r for r in records if r not in self.refs})
        if not todo:
            return
        seqs = []
        for r in todo:
            ids, mods = self.sequences.get(r)
            seqs.append(self._windowed(ids, mods, self.sequences.window(ids)))
        out = self.forward(seqs)
        for j, r in enumerate(todo):
            self.refs[r] = out[:, j]

    def score(self, chunk: list[Variant]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ref, alt) per-fold outputs, (F,) or (F, C) each, for every variant of ``chunk``."""
        self.ref_outputs([v.record for v in chunk])
        alts: list[np.ndarray | None] = [None] * len(chunk)
        full = [j for j, v in enumerate(chunk) if v.kind == "full" or (v.kind == "single" and self.fast is None)]
        if full:
            out = self.forward([self._windowed(chunk[j].ids, chunk[j].mods, chunk[j].window) for j in full])
            for k, j in enumerate(full):
                alts[j] = out[:, k]
        by_record: dict[int, list[int]] = {}
        for j, v in enumerate(chunk):
            if v.kind == "same":
                alts[j] = self.refs[v.record]
            elif v.kind == "single" and self.fast is not None:
                by_record.setdefault(v.record, []).append(j)
        for record, js in by_record.items():
            out = self._fast(record, [chunk[j] for j in js])
            for k, j in enumerate(js):
                alts[j] = out[:, k]
        for v in chunk:
            self.counts["full" if v.kind == "single" and self.fast is None else v.kind] += 1
        return [(self.refs[v.record], a) for v, a in zip(chunk, alts)]

    def _fast(self, record: int, variants: list[Variant]) -> np.ndarray:
        """Single-token changes of one sequence through the plugin's fast routine: (F, P[, C])."""
        import torch

        ids, mods = self.sequences.get(record)
        w_ids, w_mods = self._windowed(ids, mods, self.sequences.window(ids))
        ids_t, mods_t, lengths = self._tensors([(w_ids, w_mods)])
        base_inp = self.tok_spec.make_input(self.tok, {"ids": ids_t, "mods": mods_t, "lengths": lengths}, self.encoding)
        positions = np.asarray([v.offset for v in variants], dtype=np.int64)
        new_ids = np.asarray([v.new_id for v in variants], dtype=np.int64)
        outs = fast_fold_outputs(self.fast, self.ens, self.tok_spec, self.tok, self.encoding, base_inp, ids_t[0], mods_t[0], len(w_ids), positions, "replace", new_ids, None)
        return torch.stack(outs).double().cpu().numpy()


def header(task: str, classes: list[str] | None, folds: list[str]) -> list[str]:
    """The columns of ``variant_effects.csv``."""
    cols = ["variant", "sequence", "position", "ref", "alt", "pred_ref", "pred_alt", "delta"]
    if task == "regression":
        return cols + [f"fold_{f}_{c}" for f in folds for c in ("pred_ref", "pred_alt", "delta")]
    per_class = [f"{what}_{c}" for c in classes for what in ("prob_ref", "prob_alt", "delta")]
    return cols + per_class + [f"fold_{f}_{c}" for f in folds for c in per_class]


def row(v: Variant, ref: np.ndarray, alt: np.ndarray, weights: np.ndarray, classes: list[str] | None) -> list:
    """One CSV row from per-fold outputs ``ref``/``alt`` (F,) or (F, C); fold columns when F > 1."""
    r, a = np.tensordot(weights, ref, axes=1), np.tensordot(weights, alt, axes=1)
    head = [v.vid, v.seq, v.position, v.ref, v.alt]
    folds = len(ref) > 1
    if classes is None:
        out = head + [f"{r:.6g}", f"{a:.6g}", f"{a - r:.6g}"]
        if folds:
            out += [f"{x:.6g}" for fr, fa in zip(ref, alt) for x in (fr, fa, fa - fr)]
        return out
    c = int(np.argmax(r))
    out = head + [classes[c], classes[int(np.argmax(a))], f"{a[c] - r[c]:.6g}"]
    out += [f"{x:.6g}" for j in range(len(classes)) for x in (r[j], a[j], a[j] - r[j])]
    if folds:
        out += [f"{x:.6g}" for fr, fa in zip(ref, alt) for j in range(len(classes)) for x in (fr[j], fa[j], fa[j] - fr[j])]
    return out


class VariantTable:
    """This process's rows of ``variant_effects.csv``; :meth:`publish` (rank 0) merges them."""

    def __init__(self, shards: Shards, ens: Any):
        self.shards = shards
        self.weights, self.classes = np.asarray(ens.weights, dtype=np.float64), ens.classes
        self.fh = open(shards.part(NAME), "w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.fh, lineterminator="\n")
        if shards.main:
            self.writer.writerow(header(ens.task, ens.classes, ens.names if len(ens.folds) > 1 else []))
        self.n = 0

    def add(self, v: Variant, ref: np.ndarray, alt: np.ndarray) -> None:
        self.writer.writerow(row(v, ref, alt, self.weights, self.classes))
        self.n += 1

    def close(self) -> None:
        self.fh.close()

    def publish(self, staging: Path) -> Path:
        """Rank 0, once every rank has closed its part: the merged table written to ``staging``."""
        return concat_files(self.shards.parts(NAME), staging / NAME)
