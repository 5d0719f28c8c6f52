"""``ism.h5``: the saturation mutagenesis matrices of an ``interpret`` run, streamed to disk.

Layout (one row per scored position, the sequences one after another, in input order)::

    alphabet  (A,)      str    column names of ``delta`` (see biolm.core.saturate)
    ids       (N,)      str    sequence ids
    lengths   (N,)      int64  scored positions L_i of each sequence
    offsets   (N + 1,)  int64  sequence i is rows offsets[i]:offsets[i + 1]
    starts    (N,)      int64  offset of the scored window in the original sequence
    pred      (N,)      float64  the original prediction (regression, label units) or the
                                 probability of the predicted class (classification)
    delta     (sum L_i, A) float32  prediction(alternative) - prediction(original): NaN where
                                 nothing was scored, 0 in a scanned position's own column
    ref       (sum L_i,) int16  column of each position's own token (-1: none)

Attributes: ``format`` (1), ``task``, ``units``. A sequence is written as soon as it is scored
(:class:`IsmWriter`), so memory stays bounded whatever the number of sequences; parts written by
several processes are merged by :func:`merge`. :func:`read_sequence` reads one sequence back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .sharding import append_rows, concat_h5, create_rows, part_h5

FORMAT = 1


class IsmWriter:
    """Appends one sequence at a time to an ``ism.h5`` (part) file.

    Parameters
    ----------
    path : the file to write (a rank's part file).
    alphabet : the A column names.
    task, units : written as attributes.
    """

    def __init__(self, path: Path, alphabet: list[str], task: str, units: str):
        import h5py

        self._file = part_h5(path)
        self.f = self._file.__enter__()
        s = h5py.string_dtype()
        A = len(alphabet)
        self.f.attrs.update({"format": FORMAT, "task": task, "units": units})
        self.f.create_dataset("alphabet", data=np.asarray(alphabet, dtype=object), dtype=s)
        self.ids = create_rows(self.f, "ids", (0,), s)
        self.lengths = create_rows(self.f, "lengths", (0,), np.int64)
        self.starts = create_rows(self.f, "starts", (0,), np.int64)
        self.pred = create_rows(self.f, "pred", (0,), np.float64)
        self.delta = create_rows(self.f, "delta", (0, A), np.float32, compression="gzip", compression_opts=1)
        self.ref = create_rows(self.f, "ref", (0,), np.int16)

    def add(self, sid: str, start: int, pred: float, delta: np.ndarray, ref: np.ndarray) -> None:
        """One sequence: ``delta`` (L, A), ``ref`` (L,)."""
        append_rows(self.ids, np.asarray([sid], dtype=object))
        append_rows(self.lengths, np.asarray([len(delta)]))
        append_rows(self.starts, np.asarray([start]))
        append_rows(self.pred, np.asarray([pred]))
        append_rows(self.delta, delta)
        append_rows(self.ref, ref.astype(np.int16))

    def close(self) -> None:
        """The part complete (with its own ``offsets``: one process's part is the result)."""
        offsets(self.f)
        self._file.__exit__(None, None, None)


def offsets(f: Any) -> None:
    """``offsets`` (N + 1,) from ``lengths``: sequence i is rows offsets[i]:offsets[i + 1]."""
    lengths = f["lengths"][:]
    if "offsets" in f:
        del f["offsets"]
    f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def merge(parts: list[Path], dest: Path) -> Path:
    """The parts (in rank order) as one ``ism.h5`` at ``dest``, with its ``offsets``."""
    return concat_h5(parts, dest, finalize=offsets)


def read_sequence(path: Path, i: int) -> dict:
    """Sequence ``i`` of an ``ism.h5``: ``id``, ``start``, ``pred``, ``delta`` (L, A), ``ref``
    (L,) and the ``alphabet``."""
    import h5py

    with h5py.File(path, "r") as f:
        a, b = (int(x) for x in f["offsets"][i : i + 2])
        return {
            "id": f["ids"].asstr()[i],
            "start": int(f["starts"][i]),
            "pred": float(f["pred"][i]),
            "delta": f["delta"][a:b],
            "ref": f["ref"][a:b],
            "alphabet": list(f["alphabet"].asstr()[:]),
        }
