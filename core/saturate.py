"""Saturation mutagenesis: which alternatives each token of a sequence vocabulary is scanned with.

``handletokens: saturate`` scores, at every position, every *alternative of the same kind* as
the token there. :func:`alternatives` is the one definition of "the same kind" for one-hot
sequence vocabularies; ``looscores: replacementdict`` overrides it for the tokens it names.

The scores of one sequence form an L x A matrix (``ism.h5``): :class:`SaturationTable` maps each
(token, alternative) pair to a column of a shared alphabet and plans the perturbations of a
sequence in row-major order (position, then column), the order of the CSV rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUCLEOTIDES = frozenset("ACGTUN")


def kind(token: str) -> tuple[bool, str] | None:
    """The kind of a token: (its first character is upper case, the rest of the token);
    ``None`` for a token that does not start with a letter (``<cls>``, ``*``): it has no kind."""
    if not token or not token[0].isalpha():
        return None
    return token[0].isupper(), token[1:]


def alternatives(vocab: list[str], overrides: dict | None = None) -> dict[str, list[str]]:
    """Token -> the tokens it is exchanged for in a saturation scan (vocabulary order).

    The alternatives of a token are the other vocabulary tokens of the same :func:`kind`: the
    same case of the first letter and the same suffix (``a`` -> ``c, g, t``; ``Aej`` -> ``Cej,
    Gej, Tej``; ``A`` -> ``C, G, T``; for a protein vocabulary each amino acid -> the other 19).
    In a nucleotide group (every first letter one of A, C, G, T, U, N) ``N``, the unknown base,
    is neither scanned nor an alternative. ``overrides`` (``replacementdict``) replaces the list
    of every token it names (an empty list: the token is not scanned); names outside the
    vocabulary are dropped, as is a token listed as its own alternative.
    """
    groups: dict[tuple[bool, str], list[str]] = {}
    for t in vocab:
        k = kind(t)
        if k is not None:
            groups.setdefault(k, []).append(t)
    table: dict[str, list[str]] = {}
    for members in groups.values():
        if {m[0].upper() for m in members} <= NUCLEOTIDES:
            members = [m for m in members if m[0].upper() != "N"]
        for t in members:
            others = [m for m in members if m != t]
            if others:
                table[t] = others
    known = set(vocab)
    for t, alts in (overrides or {}).items():
        if t not in known:
            continue
        keep = [a for a in alts if a in known and a != t]
        if keep:
            table[t] = list(dict.fromkeys(keep))
        else:
            table.pop(t, None)
    return table


@dataclass
class SaturationTable:
    """The alternatives of every vocabulary id and the column of each in the L x A matrix.

    Attributes
    ----------
    alphabet : the A column names. When every pair keeps the kind (the default grouping) the
        columns are the first letters (``A, C, G, T``): ``delta[p, j]`` is the change when the
        token at ``p`` becomes letter ``j`` in its own case and suffix, and the reference's own
        column is 0 (the ISM convention). Otherwise (a ``replacementdict`` crossing kinds) the
        columns are the alternative tokens themselves.
    alt_ids : (V + 1, W) per vocabulary id the ids of its alternatives, -1-padded; the last row
        (unknown tokens) is empty.
    alt_cols : (V + 1, W) the columns of those alternatives.
    ref_col : (V,) the column of each vocabulary id's own token, -1 where it has none.
    """

    alphabet: list[str]
    alt_ids: np.ndarray
    alt_cols: np.ndarray
    ref_col: np.ndarray

    @classmethod
    def build(cls, vocab: list[str], overrides: dict | None = None) -> SaturationTable:
        table = alternatives(vocab, overrides)
        index = {t: i for i, t in enumerate(vocab)}
        by_letter = all(kind(a) == kind(t) for t, alts in table.items() for a in alts)
        if by_letter:
            alphabet = sorted({t[0].upper() for t, alts in table.items() for t in (t, *alts)})
            names = {t: t[0].upper() for t in vocab}
        else:
            named = {t for t, alts in table.items() for t in (t, *alts)}
            alphabet = [t for t in vocab if t in named]
            names = {t: t for t in vocab}
        col = {a: j for j, a in enumerate(alphabet)}
        width = max((len(a) for a in table.values()), default=0)
        alt_ids = np.full((len(vocab) + 1, width), -1, dtype=np.int64)
        alt_cols = np.zeros_like(alt_ids)
        for t, alts in table.items():
            alt_ids[index[t], : len(alts)] = [index[a] for a in alts]
            alt_cols[index[t], : len(alts)] = [col[names[a]] for a in alts]
        ref_col = np.asarray([col.get(names[t], -1) for t in vocab], dtype=np.int64)
        return cls(alphabet, alt_ids, alt_cols, ref_col)

    def plan(self, ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Perturbations of one sequence: positions (P,), new token ids (P,) and their columns
        (P,), position by position; unknown tokens (id -1) are not scanned."""
        rows = np.asarray(ids[:length], dtype=np.int64)
        rows = np.where(rows >= 0, rows, len(self.alt_ids) - 1)
        new, cols = self.alt_ids[rows], self.alt_cols[rows]
        keep = new >= 0
        positions = np.broadcast_to(np.arange(length)[:, None], new.shape)
        return positions[keep], new[keep], cols[keep]

    def refs(self, ids: np.ndarray) -> np.ndarray:
        """(L,) the column of each position's own token (-1: unknown or not in the alphabet)."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.where(ids >= 0, self.ref_col[np.clip(ids, 0, None)], -1)

    def matrix(self, length: int, positions: np.ndarray, cols: np.ndarray, scores: np.ndarray, refs: np.ndarray) -> np.ndarray:
        """The (L, A) delta matrix: scores at (position, column), 0 in a scanned position's own
        column, NaN where nothing was scored."""
        out = np.full((length, len(self.alphabet)), np.nan, dtype=np.float32)
        scanned = np.zeros(length, dtype=bool)
        scanned[positions] = True
        own = scanned & (refs >= 0)
        out[np.flatnonzero(own), refs[own]] = 0.0
        out[positions, cols] = scores
        return out
