"""Sequence alphabets of the PSAM (PyProBound's ``Alphabet``: integer codes, IUPAC degenerate
codes, embedding) and the projection of a tokenizer vocabulary onto an alphabet."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["Alphabet", "get_alphabet", "alphabet_projection"]

_IUPAC_DNA: dict[str, str] = {
    "M": "AC",
    "R": "AG",
    "W": "AT",
    "S": "CG",
    "Y": "CT",
    "K": "GT",
    "V": "ACG",
    "H": "ACT",
    "D": "AGT",
    "B": "CGT",
    "N": "ACGT",
}

_PROTEIN = "ACDEFGHIKLMNPQRSTVWY"


class Alphabet:
    """Sequence alphabet with PyProBound's integer codes and embedding.

    Parameters
    ----------
    letters : iterable of str
        The monomers, in channel order (``"ACGT"``).
    complement : bool
        Whether the alphabet read backwards is the complement (DNA: A<->T, C<->G). Decides
        whether reverse-strand scoring is on by default.
    encoding : mapping of str to iterable of str, optional
        Degenerate codes (IUPAC), each mapped to the letters it stands for.
    name : str, optional
        Used in ``repr`` and exports.

    Notes
    -----
    Codes follow PyProBound's ``Alphabet``: letters ``0 .. A-1``, then ``' '`` (padding,
    embeds as ``-inf``), ``'*'`` (``1/A`` each), ``'-'`` (zeros), then the degenerate codes; a
    degenerate code whose letter set equals an earlier code's reuses that code (``N`` -> ``*``).
    """

    def __init__(
        self,
        letters: Iterable[str],
        complement: bool = False,
        encoding: Mapping[str, Iterable[str]] | None = None,
        name: str | None = None,
    ) -> None:
        self.letters: tuple[str, ...] = tuple(letters)
        if len(set(self.letters)) != len(self.letters) or not self.letters:
            raise ValueError(f"alphabet letters must be unique and non-empty: {self.letters}")
        self.complement = bool(complement)
        self.name = name or "".join(self.letters)
        n = len(self.letters)
        self.pad_code = n
        self.any_code = n + 1
        self.zero_code = n + 2

        self.index: dict[str, int] = {c: i for i, c in enumerate(self.letters)}
        self.index[" "] = self.pad_code
        self.groups: dict[str, tuple[int, ...]] = {c: (i,) for i, c in enumerate(self.letters)}
        self.groups[" "] = (self.pad_code,)
        rows: list[tuple[int, ...] | None] = [(i,) for i in range(n)] + [None]
        seen: dict[tuple[int, ...], int] = {(i,): i for i in range(n)}
        extended: dict[str, Iterable[str]] = {"*": self.letters, "-": ()}
        if encoding:
            extended.update(encoding)
        for code, members in extended.items():
            group = tuple(self.index[m] for m in members)
            self.groups[code] = group
            # Same index bookkeeping as PyProBound, so codes are interchangeable with its tables.
            if group in seen:
                self.index[code] = seen[group]
            else:
                self.index[code] = len(self.index)
                seen[group] = self.index[code]
            rows.append(group)

        table = torch.zeros(len(rows), n, dtype=torch.float64)
        for r, group in enumerate(rows):
            if group is None:
                table[r] = float("-inf")
            elif group:
                table[r, list(group)] = 1.0 / len(group)
        self.embedding_table = table

    def __repr__(self) -> str:
        return f"Alphabet({self.name!r}, complement={self.complement})"

    def __len__(self) -> int:
        return len(self.letters)

    @classmethod
    def dna(cls) -> Alphabet:
        """DNA ``ACGT`` with IUPAC codes, complementable (PyProBound ``alphabets.DNA``)."""
        return cls("ACGT", complement=True, encoding=_IUPAC_DNA, name="DNA")

    @classmethod
    def rna(cls) -> Alphabet:
        """RNA ``ACGU`` with IUPAC codes, not complementable (PyProBound ``alphabets.RNA``)."""
        enc = {k: v.replace("T", "U") for k, v in _IUPAC_DNA.items()}
        return cls("ACGU", complement=False, encoding=enc, name="RNA")

    @classmethod
    def protein(cls) -> Alphabet:
        """The 20 amino acids with ``B``, ``Z``, ``J``, ``X`` (PyProBound ``alphabets.Protein``)."""
        enc = {"B": "DN", "Z": "EQ", "J": "IL", "X": _PROTEIN}
        return cls(_PROTEIN, complement=False, encoding=enc, name="protein")

    def translate(self, sequence: str) -> Tensor:
        """Encode one string as codes.

        Parameters
        ----------
        sequence : str
            Letters, degenerate codes or the reserved ``' '``, ``'*'``, ``'-'``; case-insensitive.

        Returns
        -------
        Tensor
            int64 codes of shape (len(sequence),).
        """
        try:
            return torch.tensor([self.index[c] for c in sequence.upper()], dtype=torch.int64)
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in alphabet {self.name}") from None

    def encode(self, sequences: Sequence[str], length: int | None = None) -> tuple[Tensor, Tensor]:
        """Encode strings, right-padded with ``' '`` to a common length.

        Returns
        -------
        codes : Tensor
            int64 of shape (B, L), ``L = length`` or the longest sequence.
        lengths : Tensor
            int64 of shape (B,), the unpadded lengths.
        """
        longest = max((len(s) for s in sequences), default=0)
        length = longest if length is None else length
        if longest > length:
            raise ValueError(f"sequence of length {longest} exceeds length={length}")
        codes = torch.full((len(sequences), length), self.pad_code, dtype=torch.int64)
        for i, s in enumerate(sequences):
            codes[i, : len(s)] = self.translate(s)
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
        return codes, lengths

    def embed(self, codes: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Codes (B, L) -> one-hot (B, L, A), ``-inf`` rows at padding (channels last)."""
        table = self.embedding_table.to(device=codes.device, dtype=dtype or torch.get_default_dtype())
        return table[codes]

    def complement_index(self, index: int) -> int:
        """Channel of the complement letter (the alphabet read backwards)."""
        return len(self.letters) - 1 - index


def get_alphabet(alphabet: str | Sequence[str] | Alphabet | None) -> Alphabet:
    """Resolve ``"DNA"``, ``"RNA"``, ``"protein"``, a letter string/list or an :class:`Alphabet`.

    A letter string equal to ``"ACGT"`` gives the DNA alphabet (complementable, IUPAC), ``"ACGU"``
    the RNA one; any other letter set is not complementable and has no degenerate codes.
    """
    if alphabet is None:
        return Alphabet.dna()
    if isinstance(alphabet, Alphabet):
        return alphabet
    if isinstance(alphabet, str):
        key = alphabet.strip()
        named = {"dna": Alphabet.dna, "rna": Alphabet.rna, "protein": Alphabet.protein}
        if key.lower() in named:
            return named[key.lower()]()
        letters: tuple[str, ...] = tuple(key.upper())
    else:
        letters = tuple(str(c).upper() for c in alphabet)
    if letters == tuple("ACGT"):
        return Alphabet.dna()
    if letters == tuple("ACGU"):
        return Alphabet.rna()
    if letters == tuple(_PROTEIN):
        return Alphabet.protein()
    return Alphabet(letters)


_SPECIAL_TOKENS = frozenset({"pad", "unk", "mask", "cls", "sep", "bos", "eos"})


def alphabet_projection(
    vocab: Sequence[str],
    alphabet: str | Sequence[str] | Alphabet | None = "ACGT",
    special_tokens: Iterable[str] = _SPECIAL_TOKENS,
) -> Tensor:
    """Map a tokenizer vocabulary onto alphabet channels.

    Each token's first character, case-insensitively, selects its letter (``'gej'`` -> ``G``,
    ``'a'`` -> ``A``); ``U`` and ``T`` stand for each other when only one of them is in the
    alphabet (RNA tokens on DNA and back). Empty tokens, tokens whose first character is not a
    letter of the alphabet, and the names in ``special_tokens`` (compared lower-case, with any
    ``[]``/``<>`` stripped) get a zero row.

    Parameters
    ----------
    vocab : sequence of str
        ``V`` tokens in the tokenizer's index order.
    alphabet : str, sequence of str or Alphabet, default "ACGT"
    special_tokens : iterable of str
        Token names never mapped to a letter.

    Returns
    -------
    Tensor
        float (V, A), one 1 per mapped row; ``onehot (B, L, V) @ projection -> (B, L, A)``.
    """
    letters = get_alphabet(alphabet).letters
    position = {c: i for i, c in enumerate(letters)}
    if "T" in position and "U" not in position:
        position["U"] = position["T"]
    if "U" in position and "T" not in position:
        position["T"] = position["U"]
    special = {s.lower() for s in special_tokens}
    proj = torch.zeros(len(vocab), len(letters))
    for v, token in enumerate(vocab):
        token = str(token)
        if not token or token.strip("[]<>").lower() in special:
            continue
        column = position.get(token[0].upper())
        if column is not None:
            proj[v, column] = 1.0
    return proj
