"""Label scaling (regression) and label encoding (classification), fitted on the training split only."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import DataError


@dataclass
class LabelScaler:
    """``log | minmax | standard | none``; saved with the model and reused unchanged at predict time."""

    kind: str = "none"
    params: dict = field(default_factory=dict)

    def fit(self, y: np.ndarray, source: str = "labels") -> "LabelScaler":
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "log":
            bad = np.nonzero(~(y > 0))[0]
            if len(bad):
                raise DataError(source, f"scaling: log needs positive labels; {len(bad)} training label(s) are <= 0 (first: {y[bad[0]]!r}); use minmax, standard or none")
        elif self.kind == "minmax":
            lo, hi = float(y.min()), float(y.max())
            self.params = {"min": lo, "max": hi if hi > lo else lo + 1.0}
        elif self.kind == "standard":
            sd = float(y.std())
            self.params = {"mean": float(y.mean()), "std": sd if sd > 0 else 1.0}
        return self

    def transform(self, y: np.ndarray, source: str = "labels") -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "log":
            if np.any(~(y > 0)):
                raise DataError(source, "scaling: log needs positive labels; found a label <= 0")
            return np.log(y)
        if self.kind == "minmax":
            return (y - self.params["min"]) / (self.params["max"] - self.params["min"])
        if self.kind == "standard":
            return (y - self.params["mean"]) / self.params["std"]
        return y

    def inverse(self, z):
        """Scaled values -> label units; works on numpy arrays (float64) and torch tensors alike."""
        is_tensor = hasattr(z, "exp")
        if not is_tensor:
            z = np.asarray(z, dtype=np.float64)
        if self.kind == "log":
            return z.exp() if is_tensor else np.exp(z)
        if self.kind == "minmax":
            return z * (self.params["max"] - self.params["min"]) + self.params["min"]
        if self.kind == "standard":
            return z * self.params["std"] + self.params["mean"]
        return z

    def to_json(self) -> dict:
        return {"kind": self.kind, "params": self.params}

    @classmethod
    def from_json(cls, d: dict, source: str = "scaler.json") -> "LabelScaler":
        """Inverse of :meth:`to_json`; an unknown kind or a missing, non-numeric parameter is a
        :class:`DataError` naming ``source`` and the key (never an identity scaling)."""
        if not isinstance(d, dict):
            raise DataError(source, f"key 'scaling': expected an object with 'kind' and 'params', got {d!r}")
        kind = d.get("kind", "none")
        if kind not in SCALING_PARAMS:
            raise DataError(source, f"key 'scaling.kind': {kind!r} is not one of {', '.join(SCALING_PARAMS)}")
        params = d.get("params", {})
        if not isinstance(params, dict):
            raise DataError(source, f"key 'scaling.params': expected an object, got {params!r}")
        for name in SCALING_PARAMS[kind]:
            v = params.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise DataError(source, f"key 'scaling.params.{name}': {kind} scaling needs a finite number, got {v!r}")
        if kind == "minmax" and not params["max"] > params["min"]:
            raise DataError(source, f"key 'scaling.params': minmax needs max > min, got {params['min']!r}, {params['max']!r}")
        if kind == "standard" and not params["std"] > 0:
            raise DataError(source, f"key 'scaling.params.std': must be > 0, got {params['std']!r}")
        return cls(kind, {k: float(params[k]) for k in SCALING_PARAMS[kind]})


# the parameters each scaling kind is saved with
SCALING_PARAMS: dict[str, tuple[str, ...]] = {"log": (), "minmax": ("min", "max"), "standard": ("mean", "std"), "none": ()}


@dataclass
class LabelEncoder:
    """Class names <-> indices; classes are the sorted distinct training labels."""

    classes: list[str] = field(default_factory=list)

    def fit(self, labels) -> "LabelEncoder":
        self.classes = sorted({str(x) for x in labels}, key=_natural)
        return self

    def transform(self, labels, source: str = "labels") -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        unseen = sorted({str(x) for x in labels} - set(index))
        if unseen:
            raise DataError(source, f"label(s) not seen in training: {', '.join(unseen[:10])}; known classes: {', '.join(self.classes)}")
        return np.asarray([index[str(x)] for x in labels], dtype=np.int64)


def _natural(s: str):
    """Numeric class names sort as numbers ("2" before "10")."""
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def parse_float_labels(labels, source: str) -> np.ndarray:
    out = np.empty(len(labels), dtype=np.float64)
    for i, v in enumerate(labels):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(source, f"record {i + 1}: label {v!r} is not a number (regression needs numeric labels)") from None
    return out


def parse_weights(weights, table: dict[str, float], source: str) -> np.ndarray:
    """Numeric weights are used as they are; quality labels go through ``table`` (case-insensitive)."""
    upper = {k.upper(): float(v) for k, v in table.items()}
    out = np.empty(len(weights), dtype=np.float64)
    unknown: set[str] = set()
    for i, w in enumerate(weights):
        try:
            out[i] = float(w)
            continue
        except (TypeError, ValueError):
            pass
        key = str(w).strip().upper()
        if key in upper:
            out[i] = upper[key]
        else:
            unknown.add(str(w))
    if unknown:
        raise DataError(source, f"weight label(s) {', '.join(sorted(unknown)[:10])} are neither numbers nor in qualityweights ({', '.join(table)})")
    if np.any(out < 0):
        raise DataError(source, "negative sample weights")
    return out
