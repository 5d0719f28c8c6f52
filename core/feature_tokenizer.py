"""Tokenizers of fixed-shape feature records (core's ``expression`` and ``array`` kinds).

A feature record is a float array of one shape per data source: an expression profile over a
gene list (``expression``, shape (G,)) or an EIR-style array (``array``, shape (C, L, ...),
channels first). The tokenizer is what a trained model needs to read new data the same way:
the record shape and the names of the positions (the gene ids, in the model's order), saved as
``tokenizer.json`` and copied into every fold.

The model input (:func:`make_input`) is ``x`` of shape (B, L, C) — channels last, as for one-hot
sequences — so sequence models such as ``lcl`` read arrays unchanged; C is the first axis (1 for
a 1-D record), L the product of the others (see :func:`biolm.core.input_kinds.input_shape`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .errors import BiolmError
from .input_kinds import input_shape
from .outputs import write_text

FORMAT = 1


class FeatureTokenizer:
    """Shape and position names of a feature input.

    Parameters
    ----------
    kind : ``"expression"`` or ``"array"`` (the tokenizer kind).
    shape : the shape of one record.
    names : one name per position L (gene ids); ``None`` = the position indices ``"0"``...
    options : reading options recorded for reference (layer, gene column, ...).

    Attributes
    ----------
    vocab : list[str], the position names (``vocab[i]`` names input position ``i``).
    n_channels : C, channels of the model input.
    n_modifiers : 0.
    positional : an array's positions form a sequence (plots follow it); genes do not (plots
        show the top-scoring ones).
    """

    def __init__(self, kind: str, shape: tuple, names: list | None = None, options: dict | None = None):
        self.kind = kind
        self.shape = tuple(int(d) for d in shape)
        if not self.shape or min(self.shape) < 1:
            raise BiolmError(f"{kind} tokenizer: a record shape needs positive sizes, got {self.shape}")
        self.n_positions, self.n_channels = input_shape(self.shape)
        self.names = None if names is None else [str(n) for n in names]
        if self.names is not None and len(self.names) != self.n_positions:
            raise BiolmError(f"{kind} tokenizer: {len(self.names)} position names for {self.n_positions} positions")
        self.options = dict(options or {})
        self.n_modifiers = 0
        self.positional = kind != "expression"
        self._vocab: list[str] | None = None

    @property
    def vocab(self) -> list[str]:
        if self._vocab is None:
            self._vocab = self.names if self.names is not None else [str(i) for i in range(self.n_positions)]
        return self._vocab

    def to_json(self) -> dict:
        return {"format": "biolm-tokenizer", "version": FORMAT, "encoding": self.kind, "shape": list(self.shape), "names": self.names, "options": self.options}

    def sha(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_json(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str) -> FeatureTokenizer:
        from .atomic_tokenizer import read_tokenizer_json

        d = read_tokenizer_json(path)
        if not isinstance(d, dict) or d.get("encoding") != kind:
            got = d.get("encoding") if isinstance(d, dict) else type(d).__name__
            raise BiolmError(f"{path}: a {got!r} tokenizer, not {kind!r} (learned on other input? re-run tokenize)")
        return cls(kind, d["shape"], d.get("names"), d.get("options"))

    def __repr__(self) -> str:
        return f"FeatureTokenizer({self.kind!r}, shape={self.shape})"


def feature_shape(tok: FeatureTokenizer) -> tuple:
    return tok.shape


def make_input(tok: FeatureTokenizer, batch: dict, encoding: Any) -> dict:
    """``features`` (B, *shape) -> ``x`` (B, L, C): channels first in the record, last in ``x``."""
    f = batch["features"]
    B = f.shape[0]
    x = f.reshape(B, -1, 1) if f.dim() == 2 else f.reshape(B, tok.n_channels, -1).transpose(1, 2)
    return {"x": x}
