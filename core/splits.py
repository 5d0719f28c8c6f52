"""Train/validation/test folds: a pure function from split ids and options to index sets.

The four scenarios of the reference docs:

===========  ============  ===================================================================
CV           splitpos      folds
===========  ============  ===================================================================
False        unset         one fold, random ``splitratio`` (train, val[, test]) percentages
False        set           one fold: ``devsplits`` validate, ``testsplits`` test, others train
k (int)      unset         k folds of random splits; ``cvscheme: shuffle`` reshuffles per fold
                           (the reference's repeated random sub-sampling), ``kfold`` makes
                           disjoint partitions (each sample validated, and tested, exactly once)
True         set           one fold per entry of ``devsplits`` / ``testsplits`` (lists of lists)
===========  ============  ===================================================================

Every fold is seeded by ``seed`` (same seed, same folds) and validated: no empty split, no
overlap between train, validation and test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _ratio_sizes(n: int, ratio: Sequence[int]) -> tuple[int, int, int]:
    n_val = int(round(n * ratio[1] / 100))
    n_test = int(round(n * ratio[2] / 100)) if len(ratio) == 3 else 0
    return n - n_val - n_test, n_val, n_test


def _idx(a) -> np.ndarray:
    return np.sort(np.asarray(a, dtype=np.int64))


def make_folds(
    n: int,
    split_ids: Sequence[str] | None = None,
    *,
    crossvalidation: bool | int = False,
    splitratio: Sequence[int] | None = (85, 15),
    devsplits: list | None = None,
    testsplits: list | None = None,
    cvscheme: str = "shuffle",
    seed: int = 42,
) -> list[Fold]:
    """Fold index sets over ``n`` records.

    Parameters
    ----------
    n : number of records.
    split_ids : per-record split identifier (strings) when ``splitpos`` is set, else None.
    crossvalidation : False, True (custom split sets) or the number of random folds.
    splitratio : (train, val[, test]) percentages for random splits.
    devsplits, testsplits : split ids (list) or per-fold lists of split ids (list of lists).
    cvscheme : ``shuffle`` or ``kfold`` for random cross-validation.
    seed : random seed.

    Returns
    -------
    list of :class:`Fold`, named "0", "1", ...
    """
    key = "fine-tuning data source"
    if n <= 0:
        raise ConfigError(f"{key}.filepath", "the data file holds no records")
    if split_ids is not None:
        if devsplits is None:
            raise ConfigError(f"{key}.devsplits", "splitpos is set, so devsplits must name the validation split(s)")
        ids = np.asarray([str(s) for s in split_ids])
        if len(ids) != n:
            raise ValueError("split_ids must have one entry per record")
        present = set(ids.tolist())
        nested = isinstance(devsplits[0], list)
        if crossvalidation is True:
            if not nested:
                raise ConfigError(f"{key}.devsplits", f"crossvalidation: True needs a list of lists (one per fold), got {devsplits!r}")
            tests = testsplits if testsplits is not None else [[] for _ in devsplits]
            if testsplits is not None and (not isinstance(testsplits[0], list) or len(testsplits) != len(devsplits)):
                raise ConfigError(f"{key}.testsplits", f"must be a list of lists as long as devsplits ({len(devsplits)}), got {testsplits!r}")
            pairs = list(zip(devsplits, tests))
        elif crossvalidation is False:
            if nested:
                raise ConfigError(f"{key}.devsplits", f"without cross-validation devsplits is a list of split ids, got {devsplits!r}")
            if testsplits is not None and isinstance(testsplits[0], list):
                raise ConfigError(f"{key}.testsplits", f"without cross-validation testsplits is a list of split ids, got {testsplits!r}")
            pairs = [(devsplits, testsplits or [])]
        else:
            raise ConfigError(f"{key}.crossvalidation", f"with splitpos set use crossvalidation: True and lists of lists in devsplits/testsplits (got {crossvalidation!r})")
        folds = []
        for i, (dev, test) in enumerate(pairs):
            missing = sorted(set(dev) - present) + sorted(set(test) - present)
            if missing:
                raise ConfigError(f"{key}.{'devsplits' if set(missing) & set(dev) else 'testsplits'}", f"split id(s) {', '.join(missing)} do not occur in the data (found: {', '.join(sorted(present)[:20])})")
            both = set(dev) & set(test)
            if both:
                raise ConfigError(f"{key}.testsplits", f"fold {i}: split(s) {', '.join(sorted(both))} are both validation and test")
            is_val = np.isin(ids, list(dev))
            is_test = np.isin(ids, list(test))
            train = np.nonzero(~is_val & ~is_test)[0]
            folds.append(Fold(str(i), _idx(train), _idx(np.nonzero(is_val)[0]), _idx(np.nonzero(is_test)[0])))
    else:
        if devsplits is not None or testsplits is not None:
            raise ConfigError(f"{key}.devsplits", "devsplits/testsplits need splitpos (the column of split ids)")
        if crossvalidation is True:
            raise ConfigError(f"{key}.crossvalidation", "True means folds from devsplits/testsplits, which needs splitpos; use a number of folds for random cross-validation")
        if splitratio is None:
            raise ConfigError(f"{key}.splitratio", "set splitratio (e.g. 85,15) or splitpos with devsplits")
        k = int(crossvalidation) if crossvalidation else 0
        if k and k > n:
            raise ConfigError(f"{key}.crossvalidation", f"{k} folds need at least {k} records, the data has {n}")
        if not k:
            perm = np.random.default_rng(seed).permutation(n)
            n_tr, n_val, _ = _ratio_sizes(n, splitratio)
            folds = [Fold("0", _idx(perm[:n_tr]), _idx(perm[n_tr : n_tr + n_val]), _idx(perm[n_tr + n_val :]))]
        elif cvscheme == "shuffle":
            folds = []
            for i in range(k):
                perm = np.random.default_rng([seed, i]).permutation(n)
                n_tr, n_val, _ = _ratio_sizes(n, splitratio)
                folds.append(Fold(str(i), _idx(perm[:n_tr]), _idx(perm[n_tr : n_tr + n_val]), _idx(perm[n_tr + n_val :])))
        else:  # kfold: disjoint partitions; the ratio only says whether a test fold exists
            perm = np.random.default_rng(seed).permutation(n)
            parts = np.array_split(perm, k)
            with_test = len(splitratio) == 3
            if with_test and k < 3:
                raise ConfigError(f"{key}.crossvalidation", "kfold with a test split needs at least 3 folds")
            folds = []
            for i in range(k):
                val = parts[i]
                test = parts[(i + 1) % k] if with_test else np.array([], dtype=np.int64)
                used = {i, (i + 1) % k} if with_test else {i}
                train = np.concatenate([parts[j] for j in range(k) if j not in used])
                folds.append(Fold(str(i), _idx(train), _idx(val), _idx(test)))
    for f in folds:
        for part in ("train", "val"):
            if len(getattr(f, part)) == 0:
                raise ConfigError(f"{key}.splitratio" if split_ids is None else f"{key}.devsplits", f"fold {f.name}: the {'validation' if part == 'val' else 'training'} split is empty ({n} records)")
        if split_ids is None and splitratio is not None and len(splitratio) == 3 and len(f.test) == 0:
            raise ConfigError(f"{key}.splitratio", f"fold {f.name}: the test split is empty ({n} records, ratio {'/'.join(map(str, splitratio))})")
    return folds
