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
that bound memory, through the same ensemble as ``predict``; the scores go through the interpret
mode's outputs as those of token sequences do (streamed, sharded over processes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError


def _check_how(how: str, kind: str) -> None:
    allowed = ("mask", "remove") if kind == "expression" else ("mask",)
    if how not in allowed:
        what = "a gene's count is set to zero (knockout)" if kind == "expression" else "a position's values are set to zero"
        raise ConfigError("looscores.handletokens", f"{kind} input supports {' or '.join(allowed)} ({what}), got {how!r}")


class FeatureScorer:
    """Scores the records of a feature store one by one, as :class:`~biolm.core.perturb.LooScorer`
    scores token sequences (the interpret mode streams both through the same outputs).

    Parameters
    ----------
    run : the interpret :class:`~biolm.core.runner.Run`.
    ens : the loaded :class:`~biolm.core.ensemble.Ensemble`.
    store : the inference data as a feature store.
    device : the torch device.
    """

    def __init__(self, run: Any, ens: Any, store: Any, device: Any):
        from .array_tokenizer import position_names
        from .ensemble import model_encoding, tokenizer_spec

        lc = run.cfg.looscores
        kind = ens.meta.get("encoding")
        _check_how(lc.handletokens, kind)
        self.ens, self.store, self.device = ens, store, device
        self.tok, self.spec, self.encoding = ens.tokenizer, tokenizer_spec(run, ens), model_encoding(run, ens)
        self.shape = store.feature_shape
        self.C = self.shape[0] if len(self.shape) > 1 else 1
        self.L = int(np.prod(self.shape)) // self.C
        self.names = (position_names(lc.positionnames, self.L) if kind == "array" else None) or self.tok.vocab
        self.labelled = bool(run.source.labelpos or run.source.labelcolumn)
        self.chunk = int(max(1, min(lc.maxpositions, 32_000_000 // (4 * self.L * self.C))))  # small chunks: big ones cost more in page faults than they save

    def _outputs(self, x: Any) -> Any:
        return self.ens(self.spec.make_input(self.tok, {"features": x.reshape((len(x),) + tuple(self.shape))}, self.encoding))

    def __call__(self, i: int, true_class: int | None = None) -> Any:
        """Record ``i`` with every non-zero position zeroed in turn: a
        :class:`~biolm.core.perturb.SequenceScores` over all positions (the names as tokens)."""
        import torch

        from .perturb import SequenceScores, loo_values

        rec = torch.as_tensor(self.store.read_features([int(i)]), device=self.device).reshape(1, self.C, self.L)
        base = self._outputs(rec)[0]
        positions = torch.nonzero(rec[0].abs().sum(0) > 0).flatten()
        preds = [base[None][:0]]
        for s in range(0, len(positions), self.chunk):
            pos = positions[s : s + self.chunk]
            copies = rec.repeat(len(pos), 1, 1)
            copies[torch.arange(len(pos), device=self.device), :, pos] = 0
            preds.append(self._outputs(copies))
        loo, loo_true, base_v, pred_text = loo_values(self.ens, base, torch.cat(preds), true_class)
        label = self.store.labels[i] if self.labelled else ""
        pos_np = positions.cpu().numpy()
        return SequenceScores(self.store.ids[i], label or "", 0, pred_text, base_v, self.names, pos_np, [""] * len(pos_np), loo, loo_true)
