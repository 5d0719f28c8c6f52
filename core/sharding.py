"""Inference sharded across the processes torch's launcher starts (``predict``, ``interpret``).

With ``ngpus`` > 1 (or under ``torchrun``) every rank scores one contiguous block of the input
(:meth:`Shards.block`: blocks of about equal work, in input order) and streams its results to
per-rank part files in ``<modedir>/.parts/``. When every rank is done (a barrier), rank 0 merges
the parts in rank order, which is input order, into the mode's publication folder
(:mod:`biolm.core.publish`: the results appear together or not at all): no rank ever holds
another's results in memory.

The merges append parts 1.. to part 0 (:func:`concat_files` for byte streams such as CSV rows and
pickled items) or copy every part's rows into a new file (:func:`concat_h5` for row-wise HDF5
datasets), so a one-process run only renames its parts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .distributed import all_gather_objects, barrier, init, is_main, main_first, world

PARTS = ".parts"
_COPY_ROWS = 1 << 16  # rows per copy step of an HDF5 merge (bounds memory)


class Shards:
    """This process's share of an inference run and the part files it writes.

    Parameters
    ----------
    modedir : the mode's output folder (the parts go to ``modedir/.parts``).
    device_type : ``cpu`` or ``cuda`` (gloo or nccl process group when launched with several).
    """

    def __init__(self, modedir: Path, device_type: str):
        init(device_type)
        self.rank, self.size = world()
        self.dir = Path(modedir) / PARTS
        if is_main():  # what a killed run left (under the folder's lock, before any rank writes)
            shutil.rmtree(self.dir, ignore_errors=True)
        barrier()
        self.dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Shards:
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is not None:  # a failed run leaves no part files of this rank behind
            if self.size == 1:
                shutil.rmtree(self.dir, ignore_errors=True)
            for p in self.dir.glob(f"*.part{self.rank}"):
                p.unlink(missing_ok=True)
        return False

    @property
    def main(self) -> bool:
        return is_main()

    def main_first(self):
        """Rank 0 runs the block first (builds the dataset store), the others then reuse it."""
        return main_first()

    def block(self, n: int, weights: np.ndarray | None = None) -> slice:
        """This rank's contiguous share of ``n`` items: cut where the cumulative ``weights``
        (work per item, e.g. sequence lengths; default 1 each) crosses each rank's fraction."""
        if self.size == 1:
            return slice(0, n)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        cum = np.concatenate([[0.0], np.cumsum(w)])
        cuts = [0]
        for r in range(1, self.size):
            target = cum[-1] * r / self.size
            i = int(np.searchsorted(cum, target))
            if i > 0 and (i > n or target - cum[i - 1] <= cum[i] - target):
                i -= 1  # the nearer boundary
            cuts.append(min(max(i, cuts[-1]), n))
        cuts.append(n)
        return slice(int(cuts[self.rank]), int(cuts[self.rank + 1]))

    def part(self, name: str) -> Path:
        """This rank's part file of output ``name``."""
        return self.dir / f"{name}.part{self.rank}"

    def parts(self, name: str) -> list[Path]:
        """Every rank's part file of output ``name``, in rank order."""
        return [self.dir / f"{name}.part{r}" for r in range(self.size)]

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj`` (small things only: counts, timings)."""
        return all_gather_objects(obj)

    def wait(self) -> None:
        """Until every rank has closed its parts."""
        barrier()

    def cleanup(self) -> None:
        """Rank 0, after merging: remove the parts folder."""
        if self.main:
            shutil.rmtree(self.dir, ignore_errors=True)


def concat_files(parts: list[Path], dest: Path, suffix: bytes = b"") -> Path:
    """Append ``parts[1:]`` (and ``suffix``) to ``parts[0]``, then rename it to ``dest``."""
    with open(parts[0], "ab") as out:
        for p in parts[1:]:
            with open(p, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
        out.write(suffix)
    os.replace(parts[0], dest)
    return Path(dest)


def create_rows(f: Any, name: str, shape: tuple, dtype: Any, **kw: Any) -> Any:
    """A dataset of ``shape[1:]`` rows, growable along axis 0 (for :func:`append_rows`)."""
    row = int(np.prod(shape[1:], dtype=np.int64)) * 8  # bytes per row, about (chunks of ~1 MB)
    chunk = max(1, min(4096, (1 << 20) // max(1, row)))
    return f.create_dataset(name, shape=(0, *shape[1:]), maxshape=(None, *shape[1:]), dtype=dtype, chunks=(chunk, *shape[1:]), **kw)


def append_rows(ds: Any, values: Any) -> None:
    n = len(values)
    if n:
        ds.resize(ds.shape[0] + n, axis=0)
        ds[-n:] = values


@contextlib.contextmanager
def part_h5(path: Path) -> Iterator[Any]:
    """A rank's HDF5 part file, written through core's guarded file (a full disk is an error
    naming the file, never a crashed interpreter)."""
    import h5py

    from .outputs import GuardedFile

    with GuardedFile(path) as fh:
        f = h5py.File(fh, "w")
        try:
            yield f
        finally:
            f.close()


def concat_h5(parts: list[Path], dest: Path, finalize: Callable[[Any], None] | None = None) -> Path:
    """The parts as one HDF5 file at ``dest``: the rows of every growable dataset, in rank
    order (copied chunk by chunk), part 0's attributes and other datasets, then
    ``finalize(file)``. A single part (one process) is complete already: it is renamed."""
    import h5py

    from .outputs import atomic_hdf5

    if len(parts) == 1:
        os.replace(parts[0], dest)
        return Path(dest)

    def growable(f: Any) -> list[str]:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,) else None)
        return names

    with atomic_hdf5(dest) as (out, _):
        with h5py.File(parts[0], "r") as first:
            out.attrs.update(dict(first.attrs))
            for name in first:
                if isinstance(first[name], h5py.Dataset) and name not in growable(first):
                    out.create_dataset(name, data=first[name][()], dtype=first[name].dtype)
        for p in parts:
            with h5py.File(p, "r") as src:
                for name in growable(src):  # a part with no rows may lack a dataset: made on first sight
                    part = src[name]
                    ds = out[name] if name in out else create_rows(out, name, part.shape, part.dtype)
                    for s in range(0, part.shape[0], _COPY_ROWS):
                        append_rows(ds, part[s : s + _COPY_ROWS])
        if finalize is not None:
            finalize(out)
    return Path(dest)
