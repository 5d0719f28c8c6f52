"""The files of a leave-one-out ``interpret`` run, written as the sequences are scored.

Each process streams its share to part files (:mod:`biolm.core.sharding`); rank 0 merges them
into the published outputs:

- ``loo_scores_<how>.csv``: one row per perturbation
  (``sequence,token,replacement,label,pred,start_offset,end_offset,loo`` [+ ``loo_true_class``]);
  for ``saturate`` optional (``looscores: writecsv``);
- ``loo_scores_<how>.pkl``: a pickled list of ``shap.Explanation`` objects, one per sequence
  (per-position mean score). Every item is pickled on its own (protocol 3, whose memo indices
  are explicit) between the opcodes of one list: the file is one ``pickle.load``-able list, yet
  it is written, and merged, as a byte stream without ever holding the list;
- ``ism.h5`` (``saturate``; :mod:`biolm.core.ism_store`);
- a plot per sequence for the first ``plotsequences`` (a logo for ``saturate``).
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .perturb import SequenceScores
from .sharding import Shards, concat_files

HEADER = ["sequence", "token", "replacement", "label", "pred", "start_offset", "end_offset", "loo"]
_PROTOCOL = 3
_LIST_START = b"\x80\x03]"  # PROTO 3, EMPTY_LIST
_APPEND, _STOP = b"a", b"."


def pickled_item(obj: Any) -> bytes:
    """``obj`` as the opcodes that push it, followed by APPEND (see the module docstring)."""
    return pickle.dumps(obj, protocol=_PROTOCOL)[2:-1] + _APPEND


def explanation(s: SequenceScores, values: np.ndarray) -> Any:
    """A ``shap.Explanation``: values (L,), base value = the original prediction."""
    import shap

    return shap.Explanation(
        values=np.asarray(values, dtype=np.float64),
        base_values=float(s.base),
        data=np.asarray(s.texts, dtype=object),
        feature_names=[f"{s.start + p}:{t}" for p, t in enumerate(s.texts)],
    )


class LooOutputs:
    """This process's part of the outputs; :meth:`publish` (rank 0) merges every rank's.

    Parameters
    ----------
    run : the Run (``modedir``, ``looscores``).
    shards : this process's :class:`~biolm.core.sharding.Shards`.
    classification : adds the ``loo_true_class`` column.
    saturation : the :class:`~biolm.core.saturate.SaturationTable` (``saturate`` only).
    units : what the scores are in (for ``ism.h5``).
    positional : the tokens form a sequence (plots along it), else named features (top-k bars).
    """

    def __init__(self, run: Any, shards: Shards, classification: bool, saturation: Any = None, units: str = "", positional: bool = True):
        lc = run.cfg.looscores
        self.run, self.shards, self.how = run, shards, lc.handletokens
        self.positional = positional
        self.classification = classification
        self.saturation = saturation
        self.plots = lc.plotsequences
        self.names = {"csv": f"loo_scores_{self.how}.csv", "pkl": f"loo_scores_{self.how}.pkl"}
        if saturation is not None:
            self.names["ism"] = "ism.h5"
            if not lc.writecsv:
                del self.names["csv"]
        self.csv_fh = self.writer = self.ism = None
        if "csv" in self.names:
            self.csv_fh = open(shards.part(self.names["csv"]), "w", encoding="utf-8", newline="")
            self.writer = csv.writer(self.csv_fh, lineterminator="\n")
        # the header (rank 0's part) waits for the first scored sequence: it names the plugin's
        # extra columns (ModelSpec.perturbation_scores); a rank 0 without one writes it at the end
        self.header_due = shards.main
        self.extra_names: list[str] | None = None
        self.pkl_fh = open(shards.part(self.names["pkl"]), "wb")
        if shards.main:
            self.pkl_fh.write(_LIST_START)
        if saturation is not None:
            from .ism_store import IsmWriter

            self.ism = IsmWriter(shards.part("ism.h5"), saturation.alphabet, run.task, units)
        self.plot_dir = shards.dir / "plots"  # every rank's plots, published by rank 0
        self.plot_dir.mkdir(exist_ok=True)
        self.n_sequences = self.n_scores = 0

    def add(self, k: int, record: int, s: SequenceScores) -> None:
        """Sequence number ``k`` of the input (its place decides whether it is plotted), store
        record ``record`` (its plot's name)."""
        per_pos = s.per_position()
        if len(s.positions) and self.extra_names is None:
            self.extra_names = list(s.extra)
        if self.writer is not None and len(s.positions):
            if self.header_due:
                self._header(self.extra_names)
            self._rows(s)
        self.pkl_fh.write(pickled_item(explanation(s, per_pos)))
        delta = None
        if self.ism is not None:
            delta = self.saturation.matrix(len(s.texts), s.positions, s.columns, s.loo, s.refs)
            self.ism.add(s.sid, s.start, s.base, delta, s.refs)
        if k < self.plots:
            self._plot(record, s, per_pos, delta)
        self.n_sequences += 1
        self.n_scores += len(s.positions)

    def _header(self, extra_names: list[str] | None) -> None:
        self.writer.writerow(HEADER + (["loo_true_class"] if self.classification else []) + list(extra_names or []))
        self.header_due = False

    def _rows(self, s: SequenceScores) -> None:
        start = s.start
        extra = [s.extra.get(k) for k in self.extra_names or []]
        for j, p in enumerate(s.positions):
            row = [s.sid, s.texts[p], s.replacements[j], s.label, s.pred_text, start + int(p), start + int(p) + 1, f"{s.loo[j]:.6g}"]
            if self.classification:
                row.append(f"{s.loo_true[j]:.6g}" if s.loo_true is not None else "")
            row += ["" if v is None else f"{v[j]:.6g}" for v in extra]
            self.writer.writerow(row)

    def _plot(self, record: int, s: SequenceScores, per_pos: np.ndarray, delta: np.ndarray | None) -> None:
        from .plots import plot_name

        path = self.plot_dir / plot_name(self.how, record, s.sid)
        if delta is not None:
            from .logo import ism_logo

            ism_logo(s.texts, delta, self.saturation.alphabet, path, title=f"{s.sid} (saturate)", start=s.start)
        else:
            from . import plots

            draw = plots.importance if self.positional else plots.top_features
            draw(s.texts, per_pos, path, title=f"{s.sid}: leave-one-out ({self.how})")

    def close(self) -> None:
        for fh in (self.csv_fh, self.pkl_fh, self.ism):
            if fh is not None:
                fh.close()

    def replaces(self) -> tuple[str, ...]:
        """The previous run's results these outputs replace (for the publication)."""
        return (f"loo_scores_{self.how}.csv", f"loo_scores_{self.how}.pkl", f"loo_{self.how}_*.png") + (("ism.h5",) if self.ism is not None else ())

    def publish(self, staging: Path, extra_names: list[str] | None) -> dict[str, Path]:
        """Rank 0, once every rank has closed its parts: the merged outputs written to
        ``staging`` (the publication folder); returns their final paths, by kind.
        ``extra_names``: the plugin's extra columns as any rank saw them (for a header rank 0
        could not write: it scored nothing)."""
        import os

        from .ism_store import merge

        if self.header_due and "csv" in self.names:  # rank 0's part is empty: the header alone
            with open(self.shards.part(self.names["csv"]), "w", encoding="utf-8", newline="") as self.csv_fh:
                self.writer = csv.writer(self.csv_fh, lineterminator="\n")
                self._header(extra_names)
        out = {}
        for kind, name in self.names.items():
            parts, dest = self.shards.parts(name), staging / name
            if kind == "ism":
                merge(parts, dest)
            else:
                concat_files(parts, dest, suffix=_STOP if kind == "pkl" else b"")
            out[kind] = self.run.modedir / name
        for p in sorted(self.plot_dir.iterdir()):
            os.replace(p, staging / p.name)
        return out
