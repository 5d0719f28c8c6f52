"""PyProBound's PSAM, ``Conv1d`` and ``Mode`` (log-affinity) in plain torch.

Reimplements the scoring model of **PyProBound 1.5** (BussemakerLab/PyProBound,
``pyprobound.layers.PSAM``, ``pyprobound.layers.Conv1d``, ``pyprobound.Mode``) and adds a
regression / classification head on the log-affinities of one or more binding modes.
Parity with PyProBound's own outputs is tested in ``tests/test_psam_model.py`` against the
golden fixture ``tests/fixtures/psam`` (float64 to 1e-10, float32 to 1e-5).

Model (one binding mode ``a``, sequence ``S_i``, window start ``x``, strand channel ``s``)::

    windows[i, s, x] = omega_s(x) + bias + sum_phi beta_phi * 1_phi(S_i, x, s)      (PSAMConv1d)
    log_affinity[i]  = logsumexp_{s, x} ( exp(log_hill) * windows[i, s, x] )        (Mode)

* ``beta_phi``: monomer features (letter ``c`` at window position ``k``) and pairwise features
  (letters ``a`` at ``k`` and ``b`` at ``k + d`` for ``d = 1 .. pairwise_distance``).
* Reverse strand (``score_reverse``, default for complementable alphabets such as DNA): the
  reverse-strand channel scores the reverse complement of the same window, implemented as
  PyProBound does by appending the flipped filter (channel, letter and position axes flipped; the
  complement of letter ``c`` is ``A - 1 - c``, i.e. the alphabet read backwards).
* ``omega(x)``: position bias (``train_posbias``), indexed by the *forward-strand* window start
  for every channel in ``bias_mode="channel"``.
* Symmetry: positions with equal symmetry values share parameters, opposite signs are
  complementary (``[1, 2, -2, -1]`` is a reverse-complement palindrome).

Parameter storage differs from PyProBound (which keeps one 0-d parameter per feature under keys
such as ``betas.3-2`` or ``betas.1-2-7``): here the betas live in two tensors, ``monomer`` of shape
(n_monomer_keys, O, A) and ``pairwise`` of shape (n_pairwise_keys, O, A, A), with ``O`` the number
of unique (forward) channels. :func:`load_pyprobound_weights` and :func:`pyprobound_state_dict`
translate from and to PyProBound's names; all other names (``layers.0.layer_spec.bias``,
``layers.0.log_posbias``, ``log_hill``, the length buffers) are PyProBound's.

Inputs and padding
------------------
Every layer accepts either

* a float tensor ``x`` of shape (B, L, A), one-hot over the alphabet (channels last, as the biolm
  engine provides it) with optional ``lengths`` (B,), or
* PyProBound's integer codes (B, L): letters ``0 .. A-1``, ``A`` = ``' '`` (padding, scores
  ``-inf``), ``A+1`` = ``'*'`` (uninformative, ``1/A`` per letter), ``A+2`` = ``'-'`` (all zero),
  then degenerate IUPAC codes (see :class:`Alphabet`).

Sequences are right-padded (PyProBound's ``CountTable`` convention). Position ``p`` of sequence
``b`` is padding if ``p >= lengths[b]`` or if its one-hot row is not finite (PyProBound pads one-hot
tensors with ``-inf``). Every window that touches a padding position scores ``-inf`` on all
channels and so adds ``exp(-inf) = 0`` to the mode's sum. Without ``lengths``, a float input's
length is the position after its last finite, non-zero row (trailing all-zero rows are padding);
a code input's length is the number of non-``' '`` codes (PyProBound's ``Layer.lengths``).
All-zero rows *inside* a sequence (``N`` or tokens outside the alphabet) are scored per
``unknown``: ``"mean"`` (default; PyProBound's ``'N'``/``'*'``: uniform ``1/A``, i.e. the
position-mean beta), ``"zero"`` (PyProBound's ``'-'``: contributes nothing) or ``"pad"`` (like
padding: windows over it score ``-inf``).

Differences from PyProBound 1.5, all outside what the fixture exercises:

* ``dilation`` is applied to the scoring (PyProBound 1.5 only uses it for output lengths).
* ``bias_mode="same"`` stores one bias row shared by every channel; ``"reverse"`` stores one row
  per forward channel and gives each reverse channel the forward row read backwards over the
  ``input_shape`` windows (the same physical offset from the opposite end of the block).
* Greedy footprint / flank updates, ``out_channel_indexing`` and ``unfold`` are not implemented.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Alphabet",
    "get_alphabet",
    "PSAM",
    "PSAMConv1d",
    "Mode",
    "PSAMPredictor",
    "load_pyprobound_weights",
    "pyprobound_state_dict",
    "alphabet_projection",
    "psam_matrix",
    "to_json",
    "to_meme",
    "plot_logo",
    "export_psams",
]

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


# --------------------------------------------------------------------------- alphabet
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


# --------------------------------------------------------------------------- PSAM
def _parse_key(key: str) -> tuple[tuple[int, ...], int]:
    parts = [int(p) for p in key.split("-")]
    return tuple(parts[:-1]), parts[-1]


class PSAM(nn.Module):
    """Position-specific affinity matrix with symmetry and pairwise features (PyProBound ``PSAM``).

    Parameters
    ----------
    kernel_size : int
        Number of window positions ``K``.
    alphabet : str, sequence of str or Alphabet, default "DNA"
        See :func:`get_alphabet`.
    out_channels : int, optional
        Output channels including strands; defaults to ``n_strands`` (one motif). Must be a
        multiple of ``n_strands``; ``O = out_channels // n_strands`` unique motifs.
    pairwise_distance : int, default 0
        Largest distance ``D`` (< K) between two positions with pairwise letter features.
    dilation : int, default 1
        Spacing between kernel positions (not combinable with pairwise features).
    symmetry : sequence of int, optional
        Non-zero integer per position; equal values share parameters, opposite signs are
        complementary. Default ``[1, 2, ..., K]``.
    seed : str or sequence of str, optional
        One IUPAC string of length K per unique motif (``"TGASTCA"``); seeded letters get a
        positive beta, the others a negative one, with the variance of the random init
        (PyProBound's ``_seed``). ``N`` zeroes a position, ``-`` leaves it random.
    seed_scale : float, default 1
        Multiplies the seeded values.
    score_reverse : bool, optional
        Score the reverse complement too; defaults to ``alphabet.complement``.
    frozen_parameters : iterable of str, default ()
        PyProBound beta keys (``"3-2"``, ``"1-2-7"``) that never receive gradients.
    normalize : bool, default False
        Mean-centre every position's betas (over motifs and letters) in :meth:`get_filter`.
    train_bias : bool, default False
        Whether ``bias`` (O, 1) is trainable (PyProBound's default is False).
    train_betas : bool, default True
        Whether the betas are trainable.
    dtype : torch.dtype, optional
        Parameter dtype; default ``torch.get_default_dtype()`` (as PyProBound).

    Attributes
    ----------
    monomer : nn.Parameter
        (n_monomer_keys, O, A); row ``r`` holds the betas of symmetry value ``monomer_keys[r]``.
    pairwise : nn.Parameter
        (n_pairwise_keys, O, A, A); row ``r`` holds key ``pairwise_keys[r] = (p, q)``, ``p <= q``,
        indexed ``[o, letter at |p|, letter at |q|]``.
    bias : nn.Parameter
        (O, 1), shared by both strands.
    symmetry : Tensor
        int64 buffer (K,).
    """

    def __init__(
        self,
        kernel_size: int,
        alphabet: str | Sequence[str] | Alphabet | None = "DNA",
        out_channels: int | None = None,
        pairwise_distance: int = 0,
        dilation: int = 1,
        symmetry: Sequence[int] | None = None,
        seed: str | Sequence[str | None] | None = None,
        seed_scale: float = 1.0,
        score_reverse: bool | None = None,
        frozen_parameters: Iterable[str] = (),
        normalize: bool = False,
        train_bias: bool = False,
        train_betas: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.alphabet = get_alphabet(alphabet)
        if score_reverse is None:
            score_reverse = self.alphabet.complement
        if score_reverse and not self.alphabet.complement:
            raise ValueError(f"score_reverse needs a complementable alphabet, not {self.alphabet}")
        self.score_reverse = bool(score_reverse)
        self.n_strands = 2 if self.score_reverse else 1
        out_channels = self.n_strands if out_channels is None else int(out_channels)
        if symmetry is None:
            symmetry = list(range(1, kernel_size + 1))
        symmetry = [int(s) for s in symmetry]
        if out_channels <= 0 or out_channels % self.n_strands:
            raise ValueError(f"out_channels ({out_channels}) must be a positive multiple of {self.n_strands}")
        if kernel_size < 1 or len(symmetry) != kernel_size:
            raise ValueError("symmetry must have kernel_size (>= 1) entries")
        if any(s == 0 for s in symmetry):
            raise ValueError("symmetry cannot include zeros")
        if not 0 <= pairwise_distance < kernel_size:
            raise ValueError("pairwise_distance must be in [0, kernel_size)")
        if dilation < 1:
            raise ValueError("dilation must be positive")
        if dilation > 1 and pairwise_distance > 0:
            raise ValueError("cannot model pairwise interactions with dilation")
        dtype = dtype or torch.get_default_dtype()

        self.kernel_size = kernel_size
        self.out_channels = out_channels
        self.in_channels = len(self.alphabet)
        self.pairwise_distance = pairwise_distance
        self.dilation = dilation
        self.normalize = normalize
        self.train_bias = train_bias
        self.train_betas = train_betas
        self.register_buffer("symmetry", torch.tensor(symmetry, dtype=torch.int64))
        n_motifs, n_letters = out_channels // self.n_strands, self.in_channels

        # Parameter sharing is fixed by the symmetry, so the key -> row maps and the per-position
        # gather/flip plans are computed once here instead of on every forward.
        self.monomer_keys: list[int] = sorted({abs(s) for s in symmetry})
        mono_row = {k: r for r, k in enumerate(self.monomer_keys)}
        self.register_buffer(
            "_mono_index", torch.tensor([mono_row[abs(s)] for s in symmetry]), persistent=False
        )
        self.register_buffer("_mono_flip", torch.tensor([s < 0 for s in symmetry]), persistent=False)

        self.pairwise_keys: list[tuple[int, int]] = []
        plans: list[dict[str, Tensor]] = []
        for d in range(1, pairwise_distance + 1):
            idx, auto, trans, flip_b, flip_a = [], [], [], [], []
            for i in range(kernel_size - d):
                s1, s2 = symmetry[i], symmetry[i + d]
                key = tuple(sorted((abs(s1), abs(s2))))
                if key not in self.pairwise_keys:
                    self.pairwise_keys.append(key)  # type: ignore[arg-type]
                idx.append(self.pairwise_keys.index(key))  # type: ignore[arg-type]
                auto.append(s1 == s2)
                trans.append(abs(s1) > abs(s2))
                # PyProBound flips the *last* letter axis for a negative first position and the
                # second-to-last for a negative second position; kept as-is for parity.
                flip_b.append(s1 < 0)
                flip_a.append(s2 < 0)
            plans.append(
                {
                    "index": torch.tensor(idx),
                    "auto": torch.tensor(auto).view(-1, 1, 1, 1),
                    "trans": torch.tensor(trans).view(-1, 1, 1, 1),
                    "flip_b": torch.tensor(flip_b).view(-1, 1, 1, 1),
                    "flip_a": torch.tensor(flip_a).view(-1, 1, 1, 1),
                }
            )
        for d, plan in enumerate(plans, start=1):
            for name, value in plan.items():
                self.register_buffer(f"_pair{d}_{name}", value, persistent=False)

        self.monomer = nn.Parameter(torch.empty(len(self.monomer_keys), n_motifs, n_letters, dtype=dtype))
        self.pairwise = nn.Parameter(
            torch.zeros(len(self.pairwise_keys), n_motifs, n_letters, n_letters, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.zeros(n_motifs, 1, dtype=dtype), requires_grad=train_bias)
        bound = math.sqrt(1.0 / (n_letters * kernel_size))
        with torch.no_grad():
            self.monomer.uniform_(-bound, bound)
        self.monomer.requires_grad_(train_betas)
        self.pairwise.requires_grad_(train_betas)

        self.frozen_parameters = frozenset(frozen_parameters)
        mono_frozen = torch.zeros(self.monomer.shape, dtype=torch.bool)
        pair_frozen = torch.zeros(self.pairwise.shape, dtype=torch.bool)
        pair_row = {k: r for r, k in enumerate(self.pairwise_keys)}
        # Keys absent from this PSAM are ignored, as PyProBound does (its frozen_positions helper
        # generates keys for every possible position pair).
        for key in self.frozen_parameters:
            positions, j = _parse_key(key)
            if len(positions) == 1 and positions[0] in mono_row and j < n_motifs * n_letters:
                mono_frozen.view(len(self.monomer_keys), -1)[mono_row[positions[0]], j] = True
            elif len(positions) == 2 and tuple(sorted(positions)) in pair_row and j < n_motifs * n_letters**2:
                pair_frozen.view(len(self.pairwise_keys), -1)[pair_row[tuple(sorted(positions))], j] = True
        self._any_frozen = (bool(mono_frozen.any()), bool(pair_frozen.any()))
        self.register_buffer("_mono_frozen", mono_frozen, persistent=False)
        self.register_buffer("_pair_frozen", pair_frozen, persistent=False)

        if seed is not None:
            self.seed_(seed, seed_scale)

    def extra_repr(self) -> str:
        args = [f"kernel_size={self.kernel_size}", f"alphabet={self.alphabet.name}"]
        if self.pairwise_distance:
            args.append(f"pairwise_distance={self.pairwise_distance}")
        if self.out_channels != self.n_strands:
            args.append(f"out_channels={self.out_channels}")
        args.append(f"score_reverse={self.score_reverse}")
        if self.dilation != 1:
            args.append(f"dilation={self.dilation}")
        if self.symmetry.tolist() != list(range(1, self.kernel_size + 1)):
            args.append(f"symmetry={self.symmetry.tolist()}")
        return ", ".join(args)

    @property
    def span(self) -> int:
        """Number of input positions one window covers, ``dilation * (K - 1) + 1``."""
        return self.dilation * (self.kernel_size - 1) + 1

    def out_len(self, length: int) -> int:
        """Number of windows in an input of ``length`` positions."""
        return length - self.span + 1

    @torch.no_grad()
    def seed_(self, seed: str | Sequence[str | None], seed_scale: float = 1.0) -> None:
        """Overwrite the monomer betas from IUPAC seed strings (one per unique motif).

        Parameters
        ----------
        seed : str or sequence of str
            ``O`` strings of length ``K``; ``None`` leaves that motif random.
        seed_scale : float
            Scales the seeded values.
        """
        seeds = [seed] if isinstance(seed, str) else list(seed)
        n_motifs, n_letters = self.monomer.shape[1], self.in_channels
        if len(seeds) != n_motifs:
            raise ValueError(f"need {n_motifs} seed(s), one per unique output channel; got {len(seeds)}")
        # Spread matches the random init, Var = 1 / (3 A K), whatever the seed.
        stdev = math.sqrt(1.0 / (3 * n_letters * self.kernel_size))
        mono_row = {k: r for r, k in enumerate(self.monomer_keys)}
        for o, motif in enumerate(seeds):
            if motif is None:
                continue
            if len(motif) != self.kernel_size:
                raise ValueError(f"seed {motif!r} must have kernel_size={self.kernel_size} letters")
            for s, char in zip(self.symmetry.tolist(), motif.upper()):
                if char not in self.alphabet.groups or char == " ":
                    raise ValueError(f"seed character {char!r} is not in alphabet {self.alphabet.name}")
                group = self.alphabet.groups[char]
                if not group:
                    continue
                if s < 0:
                    # A negative position stores the complement strand's betas.
                    group = tuple(self.alphabet.complement_index(c) for c in group)
                if len(group) == n_letters:
                    hit, miss = 0.0, 0.0
                else:
                    mult = math.sqrt((n_letters - len(group)) / len(group))
                    hit, miss = seed_scale * stdev * mult, -seed_scale * stdev / mult
                row = self.monomer[mono_row[abs(s)], o]
                row.fill_(miss)
                row[list(group)] = hit

    @staticmethod
    def _values(param: Tensor, frozen: Tensor, any_frozen: bool) -> Tensor:
        # Frozen entries are read through detach(): their gradient is exactly zero.
        return torch.where(frozen, param.detach(), param) if any_frozen else param

    def get_filter(self, dist: int) -> Tensor:
        """The scoring filter for monomers (``dist = 0``) or pairs at distance ``dist``.

        Returns
        -------
        Tensor
            ``dist = 0``: (out_channels, A, K), ``[s, c, k]`` = beta of letter ``c`` at window
            position ``k``. ``dist > 0``: (out_channels, A, A, K - dist), ``[s, a, b, k]`` = beta of
            ``a`` at ``k`` and ``b`` at ``k + dist``. Channels ``0 .. O-1`` are the forward
            strand; with ``score_reverse`` channels ``O .. 2O-1`` are their reverse complements
            in reverse order (PyProBound's ``Afor Bfor Brev Arev``).
        """
        if not 0 <= dist <= self.pairwise_distance:
            raise ValueError(f"dist must be in [0, {self.pairwise_distance}]")
        if dist == 0:
            values = self._values(self.monomer, self._mono_frozen, self._any_frozen[0])[
                self._mono_index
            ]  # (K, O, A)
            values = torch.where(self._mono_flip.view(-1, 1, 1), values.flip(-1), values)
            if self.normalize:
                values = values - values.mean(dim=(1, 2), keepdim=True)
            matrix = values.permute(1, 2, 0)
            if self.score_reverse:
                matrix = torch.cat((matrix, matrix.flip(0, 1, 2)))
            return matrix
        values = self._values(self.pairwise, self._pair_frozen, self._any_frozen[1])[
            getattr(self, f"_pair{dist}_index")
        ]
        values = torch.where(
            getattr(self, f"_pair{dist}_auto"), values.triu() + values.triu(1).transpose(-1, -2), values
        )
        values = torch.where(getattr(self, f"_pair{dist}_trans"), values.transpose(-1, -2), values)
        values = torch.where(getattr(self, f"_pair{dist}_flip_b"), values.flip(-1), values)
        values = torch.where(getattr(self, f"_pair{dist}_flip_a"), values.flip(-2), values)
        if self.normalize:
            values = values - values.mean(dim=(1, 2, 3), keepdim=True)
        matrix = values.permute(1, 2, 3, 0)  # (O, A, A, K - dist)
        if self.score_reverse:
            # Reverse complement of the pair (a at k, b at k+d) is (comp b, comp a) mirrored.
            matrix = torch.cat((matrix, matrix.flip(0, 1, 2, 3).transpose(1, 2)))
        return matrix

    def get_bias(self) -> Tensor:
        """Per-channel bias (out_channels, 1); reverse channels mirror the forward ones."""
        if self.score_reverse:
            return torch.cat((self.bias, self.bias.flip(0)))
        return self.bias


# --------------------------------------------------------------------------- Conv1d
class PSAMConv1d(nn.Module):
    """Sliding-window PSAM scores with position bias (PyProBound ``layers.Conv1d``).

    Parameters
    ----------
    psam : PSAM
        The filter; available as ``layer_spec`` (PyProBound's attribute name).
    input_shape : int
        Padded input length ``L`` the position bias is built for (the engine's block size).
    min_input_length, max_input_length : int, optional
        Shortest / longest unpadded length; default ``psam.span`` and ``input_shape``. Only
        ``length_specific_bias`` uses them.
    train_posbias : bool, default False
        Train a bias ``omega(x)`` per window (and channel).
    bias_mode : {"channel", "same", "reverse"}, default "channel"
        One bias row per output channel, one row shared by all channels, or one row per forward
        channel that the reverse channel reads backwards (needs ``score_reverse``).
    bias_bin : int, default 1
        ``bias_bin`` consecutive windows share one bias value.
    length_specific_bias : bool, default True
        Separate bias rows for every input length in ``[min_input_length, max_input_length]``.
    one_hot : bool, default False
        Score by convolving the one-hot input (True) or by gathering betas with integer codes
        (False, PyProBound's dense path; float inputs that are not exactly one-hot fall back to
        convolution).
    normalize : bool, default False
        Mean-centre ``log_posbias`` over windows.
    unknown : {"mean", "zero", "pad"}, default "mean"
        Scoring of all-zero float rows inside a sequence (see the module docstring).

    Attributes
    ----------
    log_posbias : nn.Parameter
        (n_lengths, bias_channels, ceil(n_windows / bias_bin)), ``n_lengths`` = 1 unless
        ``length_specific_bias``; ``bias_channels`` = out_channels ("channel"), 1 ("same") or
        out_channels // 2 ("reverse").
    """

    def __init__(
        self,
        psam: PSAM,
        input_shape: int,
        min_input_length: int | None = None,
        max_input_length: int | None = None,
        train_posbias: bool = False,
        bias_mode: Literal["channel", "same", "reverse"] = "channel",
        bias_bin: int = 1,
        length_specific_bias: bool = True,
        one_hot: bool = False,
        normalize: bool = False,
        unknown: Literal["mean", "zero", "pad"] = "mean",
    ) -> None:
        super().__init__()
        self.layer_spec = psam
        min_input_length = psam.span if min_input_length is None else int(min_input_length)
        max_input_length = int(input_shape) if max_input_length is None else int(max_input_length)
        if min_input_length < psam.span:
            raise ValueError(f"min_input_length must be at least the kernel span ({psam.span})")
        if not min_input_length <= max_input_length <= input_shape:
            raise ValueError("need min_input_length <= max_input_length <= input_shape")
        if bias_mode not in ("channel", "same", "reverse"):
            raise ValueError(f"bias_mode must be channel, same or reverse, not {bias_mode!r}")
        if bias_mode == "reverse" and not psam.score_reverse:
            raise ValueError("bias_mode='reverse' needs a PSAM with score_reverse")
        if bias_bin < 1:
            raise ValueError("bias_bin must be positive")
        if unknown not in ("mean", "zero", "pad"):
            raise ValueError(f"unknown must be mean, zero or pad, not {unknown!r}")
        self.register_buffer("_input_shape", torch.tensor(int(input_shape)))
        self.register_buffer("_min_input_length", torch.tensor(min_input_length))
        self.register_buffer("_max_input_length", torch.tensor(max_input_length))
        self.train_posbias = train_posbias
        self.bias_mode = bias_mode
        self.bias_bin = bias_bin
        self.length_specific_bias = length_specific_bias
        self.one_hot = one_hot
        self.normalize = normalize
        self.unknown = unknown

        n_lengths = max_input_length - min_input_length + 1 if length_specific_bias else 1
        n_windows = -(-psam.out_len(int(input_shape)) // bias_bin)
        bias_channels = {"channel": psam.out_channels, "same": 1, "reverse": psam.out_channels // 2}[
            bias_mode
        ]
        self.log_posbias = nn.Parameter(
            torch.zeros(n_lengths, bias_channels, n_windows, dtype=psam.monomer.dtype),
            requires_grad=train_posbias,
        )

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, train_posbias={self.train_posbias}, "
            f"bias_mode={self.bias_mode!r}, bias_bin={self.bias_bin}, "
            f"length_specific_bias={self.length_specific_bias}, one_hot={self.one_hot}"
        )

    @property
    def input_shape(self) -> int:
        return int(self._input_shape)

    @property
    def min_input_length(self) -> int:
        return int(self._min_input_length)

    @property
    def max_input_length(self) -> int:
        return int(self._max_input_length)

    @property
    def out_channels(self) -> int:
        return self.layer_spec.out_channels

    def out_len(self, length: int) -> int:
        return self.layer_spec.out_len(length)

    def get_log_posbias(self) -> Tensor:
        """Position bias per length row, channel and window.

        Returns
        -------
        Tensor
            (n_lengths, out_channels, out_len(input_shape)); row ``r`` is for unpadded length
            ``min_input_length + r`` when ``length_specific_bias``.
        """
        bias = self.log_posbias
        if self.normalize:
            bias = bias - bias.mean(dim=-1, keepdim=True)
        bias = bias.repeat_interleave(self.bias_bin, -1)[..., : self.out_len(self.input_shape)]
        if self.bias_mode == "same":
            bias = bias.expand(-1, self.out_channels, -1)
        elif self.bias_mode == "reverse":
            bias = torch.cat((bias, bias.flip(-2, -1)), dim=-2)
        return bias

    def _posbias_in_use(self) -> bool:
        return self.log_posbias.requires_grad or bool(torch.any(self.log_posbias != 0))

    # ---------------------------------------------------------------- input normalisation
    def _prepare(self, x: Tensor, lengths: Tensor | None) -> tuple[str, Tensor, Tensor]:
        """Return ("codes", codes, lengths) or ("onehot", x (B, L, A) with pads as -inf, lengths)."""
        alphabet = self.layer_spec.alphabet
        n = len(alphabet)
        if x.dim() == 2:
            if x.is_floating_point():
                raise ValueError("2-D input must be integer codes (B, L)")
            codes = x.long()
            if lengths is None:
                lengths = (codes != alphabet.pad_code).sum(1)
            else:
                lengths = lengths.to(codes.device).long()
                beyond = torch.arange(codes.shape[1], device=codes.device) >= lengths[:, None]
                codes = codes.masked_fill(beyond, alphabet.pad_code)
            if self.one_hot or bool((codes > alphabet.zero_code).any()) or bool((codes < 0).any()):
                if bool((codes < 0).any()) or bool((codes >= len(alphabet.embedding_table)).any()):
                    raise ValueError("integer codes out of range for the alphabet")
                return "onehot", alphabet.embed(codes, self.layer_spec.monomer.dtype), lengths
            return "codes", codes, lengths
        if x.dim() != 3 or x.shape[-1] != n:
            raise ValueError(f"expected one-hot input (B, L, {n}) or codes (B, L), got {tuple(x.shape)}")
        x = x.to(self.layer_spec.monomer.dtype)
        finite = torch.isfinite(x).all(-1)
        nonzero = (x != 0).any(-1) & finite
        positions = torch.arange(x.shape[1], device=x.device)
        if lengths is None:
            # Right padding: everything after the last finite, non-zero row.
            lengths = torch.where(nonzero, positions + 1, 0).amax(1) if x.shape[1] else nonzero.sum(1)
        else:
            lengths = lengths.to(x.device).long()
        pad = ~finite | (positions >= lengths[:, None])
        empty = ~nonzero & ~pad
        if self.unknown == "pad":
            pad = pad | empty
        if not self.one_hot:
            x0 = x.masked_fill(pad[..., None], 0.0)
            if bool(((x0 == 0) | (x0 == 1)).all()) and bool((x0.sum(-1) <= 1).all()):
                codes = x0.argmax(-1)
                codes = codes.masked_fill(
                    empty, alphabet.any_code if self.unknown == "mean" else alphabet.zero_code
                )
                return "codes", codes.masked_fill(pad, alphabet.pad_code), lengths
        x = x.masked_fill(pad[..., None], float("-inf"))
        if self.unknown == "mean":
            x = torch.where(empty[..., None], torch.full_like(x, 1.0 / n), x)
        return "onehot", x, lengths

    # ---------------------------------------------------------------- scoring
    def _windows(self, seq: Tensor) -> Tensor:
        """(B, L) -> (B, W, K) window taps (dilation aware)."""
        psam = self.layer_spec
        return seq.unfold(1, psam.span, 1)[..., :: psam.dilation]

    def score_dense(self, codes: Tensor) -> Tensor:
        """Window scores by gathering betas with integer codes (no bias terms).

        Parameters
        ----------
        codes : Tensor
            int64 (B, L); letters, ``' '``, ``'*'`` and ``'-'`` only.

        Returns
        -------
        Tensor
            (B, out_channels, L - span + 1); ``-inf`` for windows touching padding.
        """
        psam = self.layer_spec
        matrix = psam.get_filter(0)  # (C, A, K)
        channels, _, k = matrix.shape
        # Extra rows for the reserved codes: ' ' -> -inf, '*' -> position mean, '-' -> 0.
        table = torch.cat(
            (
                matrix,
                torch.full_like(matrix[:, :1], float("-inf")),
                matrix.mean(1, keepdim=True),
                torch.zeros_like(matrix[:, :1]),
            ),
            dim=1,
        )
        taps = self._windows(codes)  # (B, W, K)
        out = table.permute(2, 1, 0)[torch.arange(k, device=codes.device), taps].sum(2)  # (B, W, C)
        n_codes = table.shape[1]
        for dist in range(1, psam.pairwise_distance + 1):
            pair = psam.get_filter(dist)  # (C, A, A, K-d)
            if not pair.requires_grad and not bool(torch.any(pair != 0)):
                continue
            pair = F.pad(pair, (0, 0, 0, 1, 0, 1), value=float("-inf"))
            pair = torch.cat((pair, pair[:, :-1].mean(1, keepdim=True)), dim=1)
            pair = torch.cat((pair, pair[:, :, :-1].mean(2, keepdim=True)), dim=2)
            pair = F.pad(pair, (0, 0, 0, 1, 0, 1))  # (C, A+3, A+3, K-d)
            flat = pair.flatten(1, 2).permute(2, 1, 0)  # (K-d, (A+3)^2, C)
            idx = taps[..., :-dist] * n_codes + taps[..., dist:]
            out = out + flat[torch.arange(k - dist, device=codes.device), idx].sum(2)
        return out.transpose(1, 2)

    def score_onehot(self, x: Tensor) -> Tensor:
        """Window scores by convolving a one-hot input (no bias terms).

        Parameters
        ----------
        x : Tensor
            (B, L, A) float; non-finite rows are padding.

        Returns
        -------
        Tensor
            (B, out_channels, L - span + 1); ``-inf`` for windows touching padding.
        """
        psam = self.layer_spec
        pad = ~torch.isfinite(x).all(-1)  # (B, L)
        x0 = x.masked_fill(pad[..., None], 0.0)
        out = F.conv1d(x0.transpose(1, 2), psam.get_filter(0), dilation=psam.dilation)
        for dist in range(1, psam.pairwise_distance + 1):
            pair = psam.get_filter(dist)
            if not pair.requires_grad and not bool(torch.any(pair != 0)):
                continue
            pairs = (x0[:, :-dist, :, None] * x0[:, dist:, None, :]).flatten(2)  # (B, L-d, A*A)
            out = out + F.conv1d(pairs.transpose(1, 2), pair.flatten(1, 2))
        invalid = self._windows(pad).any(-1)  # (B, W)
        return out.masked_fill(invalid[:, None, :], float("-inf"))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log score of every window, ``omega(x) + bias + sum_phi beta_phi 1_phi``.

        Parameters
        ----------
        x : Tensor
            One-hot (B, L, A) float or codes (B, L) int64; see the module docstring.
        lengths : Tensor, optional
            (B,) unpadded lengths.

        Returns
        -------
        Tensor
            (B, out_channels, L - span + 1).
        """
        kind, data, lengths = self._prepare(x, lengths)
        if data.shape[1] < self.layer_spec.span:
            raise ValueError(
                f"input length {data.shape[1]} is shorter than the kernel span {self.layer_spec.span}"
            )
        out = self.score_dense(data) if kind == "codes" else self.score_onehot(data)
        if self._posbias_in_use():
            n_windows = out.shape[-1]
            if data.shape[1] > self.input_shape:
                raise ValueError(f"input length {data.shape[1]} exceeds input_shape={self.input_shape}")
            posbias = self.get_log_posbias()[..., :n_windows]
            if self.length_specific_bias:
                row = lengths - self.min_input_length
                if bool((row < 0).any()) or bool((row >= posbias.shape[0]).any()):
                    raise ValueError(
                        f"sequence lengths must lie in [{self.min_input_length}, {self.max_input_length}]"
                        " for a length-specific position bias"
                    )
                posbias = posbias[row]
            out = out + posbias
        return out + self.layer_spec.get_bias()


# --------------------------------------------------------------------------- Mode
class Mode(nn.Module):
    """Binding mode: log-sum-exp of window scores over strands and windows (PyProBound ``Mode``).

    Parameters
    ----------
    layers : PSAMConv1d or sequence of one PSAMConv1d
        The scoring layer, stored as ``layers[0]`` (PyProBound's naming).
    train_hill : bool, default False
        Train the Hill coefficient ``exp(log_hill)`` scaling the window scores.
    """

    def __init__(self, layers: PSAMConv1d | Sequence[PSAMConv1d], train_hill: bool = False) -> None:
        super().__init__()
        layers = [layers] if isinstance(layers, PSAMConv1d) else list(layers)
        if len(layers) != 1:
            raise ValueError("Mode takes exactly one PSAMConv1d layer")
        self.layers = nn.ModuleList(layers)
        self.train_hill = train_hill
        dtype = layers[0].layer_spec.monomer.dtype
        self.log_hill = nn.Parameter(torch.tensor(0.0, dtype=dtype), requires_grad=train_hill)

    @classmethod
    def from_psam(cls, psam: PSAM, input_shape: int, train_hill: bool = False, **conv_kwargs: Any) -> Mode:
        """Build ``Mode([PSAMConv1d(psam, input_shape, **conv_kwargs)])``."""
        return cls([PSAMConv1d(psam, input_shape, **conv_kwargs)], train_hill=train_hill)

    @property
    def psam(self) -> PSAM:
        return self.layers[0].layer_spec

    def score_windows(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Window log scores (B, out_channels, n_windows), see :meth:`PSAMConv1d.forward`."""
        return self.layers[0](x, lengths)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log affinity of each sequence.

        Parameters
        ----------
        x : Tensor
            One-hot (B, L, A) or codes (B, L).
        lengths : Tensor, optional
            (B,) unpadded lengths.

        Returns
        -------
        Tensor
            (B,) ``logsumexp`` over channels and windows of ``exp(log_hill) * windows``;
            ``-inf`` for a sequence without any complete window.
        """
        windows = self.score_windows(x, lengths)
        finite = torch.isfinite(windows)
        # -inf windows are kept out of every differentiable op: exp(h) * -inf and an all -inf
        # logsumexp would both give NaN gradients.
        windows = torch.exp(self.log_hill) * torch.where(finite, windows, torch.zeros_like(windows))
        windows = windows.masked_fill(~finite, float("-inf"))
        has_window = finite.flatten(1).any(1)
        safe = torch.where(has_window[:, None, None], windows, torch.zeros_like(windows))
        out = safe.logsumexp((1, 2))
        return torch.where(has_window, out, torch.full_like(out, float("-inf")))


# --------------------------------------------------------------------------- predictor
class PSAMPredictor(nn.Module):
    """One or more binding modes whose log-affinities feed a linear head.

    Parameters
    ----------
    input_length : int
        Padded input length (block size); sets the position-bias shape.
    num_outputs : int, default 1
        Regression targets, or classes for classification.
    task : {"regression", "classification"}, default "regression"
        Regression returns the linear head's values, classification its logits.
    n_modes : int, default 1
        Number of PSAMs (binding modes), one motif each.
    kernel_size : int or sequence of int, default 8
        Per mode (a single int applies to all).
    alphabet : str, sequence of str or Alphabet, default "DNA"
        See :func:`get_alphabet`.
    pairwise_distance, dilation, score_reverse, normalize, train_bias, seed_scale, frozen_parameters
        Passed to every :class:`PSAM`.
    seeds : str or sequence of (str or None), optional
        IUPAC seed per mode (``None`` = random init).
    symmetry : sequence of int or sequence of those, optional
        One symmetry for all modes, or one per mode.
    train_posbias, bias_mode, bias_bin, length_specific_bias, min_input_length, one_hot, unknown
        Passed to every :class:`PSAMConv1d`; ``normalize_posbias`` is its ``normalize``.
    train_hill : bool, default False
        Hill coefficient per mode.
    vocab : sequence of str, optional
        Tokenizer vocabulary; when given, inputs of width ``len(vocab)`` are projected onto the
        alphabet with :func:`alphabet_projection` first.
    min_log_affinity : float, default -100
        Floor for log-affinities before the head, so a sequence shorter than a kernel (log
        affinity ``-inf``) still gives a finite prediction.

    Notes
    -----
    ``forward(x, lengths)``: ``x`` (B, L, A) one-hot float (or (B, L, V) with ``vocab``, or codes
    (B, L)), ``lengths`` (B,) -> (B, num_outputs).
    """

    def __init__(
        self,
        input_length: int,
        num_outputs: int = 1,
        task: Literal["regression", "classification"] = "regression",
        n_modes: int = 1,
        kernel_size: int | Sequence[int] = 8,
        alphabet: str | Sequence[str] | Alphabet | None = "DNA",
        pairwise_distance: int = 0,
        dilation: int = 1,
        score_reverse: bool | None = None,
        seeds: str | Sequence[str | None] | None = None,
        seed_scale: float = 1.0,
        symmetry: Sequence[int] | Sequence[Sequence[int] | None] | None = None,
        frozen_parameters: Iterable[str] = (),
        normalize: bool = False,
        train_bias: bool = False,
        train_posbias: bool = False,
        bias_mode: Literal["channel", "same", "reverse"] = "channel",
        bias_bin: int = 1,
        length_specific_bias: bool = False,
        min_input_length: int | None = None,
        one_hot: bool = True,
        normalize_posbias: bool = False,
        unknown: Literal["mean", "zero", "pad"] = "mean",
        train_hill: bool = False,
        vocab: Sequence[str] | None = None,
        min_log_affinity: float = -100.0,
    ) -> None:
        super().__init__()
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be regression or classification, not {task!r}")
        if n_modes < 1 or num_outputs < 1:
            raise ValueError("n_modes and num_outputs must be positive")
        self.task = task
        self.num_outputs = num_outputs
        self.n_modes = n_modes
        self.min_log_affinity = min_log_affinity
        self.alphabet = get_alphabet(alphabet)
        kernels = [kernel_size] * n_modes if isinstance(kernel_size, int) else list(kernel_size)
        seed_list = [seeds] * n_modes if seeds is None or isinstance(seeds, str) else list(seeds)
        if symmetry is None or all(isinstance(s, int) for s in symmetry):
            sym_list: list[Any] = [symmetry] * n_modes
        else:
            sym_list = list(symmetry)
        if not len(kernels) == len(seed_list) == len(sym_list) == n_modes:
            raise ValueError("kernel_size, seeds and symmetry need one entry per mode")
        modes = []
        for k, seed, sym in zip(kernels, seed_list, sym_list):
            psam = PSAM(
                k,
                alphabet=self.alphabet,
                pairwise_distance=pairwise_distance,
                dilation=dilation,
                symmetry=sym,
                seed=seed,
                seed_scale=seed_scale,
                score_reverse=score_reverse,
                frozen_parameters=frozen_parameters,
                normalize=normalize,
                train_bias=train_bias,
            )
            conv = PSAMConv1d(
                psam,
                input_length,
                min_input_length=min_input_length,
                train_posbias=train_posbias,
                bias_mode=bias_mode,
                bias_bin=bias_bin,
                length_specific_bias=length_specific_bias,
                one_hot=one_hot,
                normalize=normalize_posbias,
                unknown=unknown,
            )
            modes.append(Mode([conv], train_hill=train_hill))
        self.modes = nn.ModuleList(modes)
        self.head = nn.Linear(n_modes, num_outputs)
        if vocab is not None:
            self.register_buffer("projection", alphabet_projection(vocab, self.alphabet), persistent=False)
        else:
            self.projection = None

    def log_affinities(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Per-mode log-affinities (B, n_modes), unfloored (``-inf`` without a complete window)."""
        if self.projection is not None and x.dim() == 3 and x.shape[-1] == self.projection.shape[0]:
            x = x.to(self.projection.dtype) @ self.projection
        return torch.stack([mode(x, lengths) for mode in self.modes], dim=-1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Predictions (B, num_outputs): head values (regression) or logits (classification).

        Parameters
        ----------
        x : Tensor
            (B, L, A) one-hot float, (B, L, V) with ``vocab``, or (B, L) codes.
        lengths : Tensor, optional
            (B,) unpadded lengths.
        """
        la = self.log_affinities(x, lengths).clamp_min(self.min_log_affinity)
        return self.head(la.to(self.head.weight.dtype))

    def psams(self) -> list[PSAM]:
        return [mode.psam for mode in self.modes]


# --------------------------------------------------------------------------- weights
def _as_tensor(value: Any) -> Tensor:
    return value.detach().clone() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))


@torch.no_grad()
def load_pyprobound_weights(
    mode: Mode, weights: Mapping[str, Any], prefix: str = "", strict: bool = True
) -> None:
    """Load PyProBound ``Mode.state_dict()`` values (names as PyProBound writes them).

    Parameters
    ----------
    mode : Mode
        Built with the same kernel, alphabet, symmetry, pairwise distance and input shape.
    weights : mapping of str to array or Tensor
        For example ``np.load("weights.npz")``; helper keys (``derived/...``,
        ``materialised/...``) and keys outside ``prefix`` are ignored.
    prefix : str, default ""
        Prefix of the mode's keys in ``weights`` (``"binding.0."``).
    strict : bool, default True
        Raise on missing or unexpected keys and on buffer mismatches.
    """
    conv = mode.layers[0]
    psam = conv.layer_spec
    n_letters = psam.in_channels
    mono_row = {k: r for r, k in enumerate(psam.monomer_keys)}
    pair_row = {k: r for r, k in enumerate(psam.pairwise_keys)}
    beta_prefix = "layers.0.layer_spec.betas."
    expected = set(pyprobound_state_dict(mode))
    seen: set[str] = set()
    unexpected = []
    for full_key, value in weights.items():
        if not full_key.startswith(prefix) or "/" in full_key:
            continue
        key = full_key[len(prefix) :]
        tensor = _as_tensor(value)
        if key.startswith(beta_prefix):
            positions, j = _parse_key(key[len(beta_prefix) :])
            if len(positions) == 1 and positions[0] in mono_row:
                psam.monomer.view(len(psam.monomer_keys), -1)[mono_row[positions[0]], j] = tensor
            elif len(positions) == 2 and tuple(sorted(positions)) in pair_row:
                o, rest = divmod(j, n_letters * n_letters)
                a, b = divmod(rest, n_letters)
                psam.pairwise[pair_row[tuple(sorted(positions))], o, a, b] = tensor
            else:
                unexpected.append(key)
                continue
        elif key == "layers.0.layer_spec.bias":
            psam.bias.copy_(tensor.view_as(psam.bias))
        elif key == "layers.0.log_posbias":
            if tensor.shape != conv.log_posbias.shape:
                raise ValueError(
                    f"log_posbias shape {tuple(tensor.shape)} != {tuple(conv.log_posbias.shape)}"
                )
            conv.log_posbias.copy_(tensor)
        elif key == "log_hill":
            mode.log_hill.copy_(tensor.view_as(mode.log_hill))
        elif key in ("layers.0.layer_spec.symmetry", "layers.0._input_shape"):
            # Buffers that fix the parameter layout must agree; length bounds are informative.
            own = psam.symmetry if key.endswith("symmetry") else conv._input_shape
            if strict and not torch.equal(own.cpu(), tensor.to(own.dtype).view_as(own)):
                raise ValueError(f"{key}: model has {own.tolist()}, weights have {tensor.tolist()}")
        elif key in ("layers.0._min_input_length", "layers.0._max_input_length"):
            if conv.length_specific_bias:
                own = getattr(conv, key.split(".")[-1])
                if strict and int(own) != int(tensor):
                    raise ValueError(f"{key}: model has {int(own)}, weights have {int(tensor)}")
        else:
            unexpected.append(key)
            continue
        seen.add(key)
    missing = sorted(expected - seen - {"layers.0._min_input_length", "layers.0._max_input_length"})
    if strict and (missing or unexpected):
        raise KeyError(
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}; unexpected {unexpected[:8]}"
        )


@torch.no_grad()
def pyprobound_state_dict(mode: Mode) -> dict[str, Tensor]:
    """The mode's parameters under PyProBound's ``Mode.state_dict()`` names (0-d beta tensors)."""
    conv = mode.layers[0]
    psam = conv.layer_spec
    out: dict[str, Tensor] = {"log_hill": mode.log_hill.detach().clone()}
    out["layers.0.log_posbias"] = conv.log_posbias.detach().clone()
    out["layers.0._input_shape"] = conv._input_shape.clone()
    out["layers.0._min_input_length"] = conv._min_input_length.clone()
    out["layers.0._max_input_length"] = conv._max_input_length.clone()
    out["layers.0.layer_spec.bias"] = psam.bias.detach().clone()
    out["layers.0.layer_spec.symmetry"] = psam.symmetry.clone()
    for r, v in enumerate(psam.monomer_keys):
        for j, value in enumerate(psam.monomer[r].detach().flatten()):
            out[f"layers.0.layer_spec.betas.{v}-{j}"] = value.clone()
    for r, (p, q) in enumerate(psam.pairwise_keys):
        for j, value in enumerate(psam.pairwise[r].detach().flatten()):
            out[f"layers.0.layer_spec.betas.{p}-{q}-{j}"] = value.clone()
    return out


# --------------------------------------------------------------------------- vocab projection
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


# --------------------------------------------------------------------------- export
def psam_matrix(psam: PSAM | Mode, channel: int = 0) -> np.ndarray:
    """Monomer betas of one forward motif as (kernel_size, A), symmetry applied.

    Parameters
    ----------
    psam : PSAM or Mode
    channel : int, default 0
        Unique motif index (forward-strand channel).
    """
    if isinstance(psam, Mode):
        psam = psam.psam
    with torch.no_grad():
        return psam.get_filter(0)[channel].T.detach().cpu().double().numpy().copy()


def _letters(alphabet: str | Sequence[str] | Alphabet | None) -> tuple[str, ...]:
    return get_alphabet(alphabet).letters


def to_json(
    psam: PSAM | Mode | np.ndarray,
    path: str | os.PathLike[str] | None = None,
    alphabet: str | Sequence[str] | Alphabet | None = None,
    name: str = "psam",
) -> dict[str, Any]:
    """Describe a PSAM (or a (K, A) beta matrix) as JSON.

    Returns the dict (and writes it to ``path`` when given): ``name``, ``alphabet``,
    ``kernel_size``, ``monomer`` (K x A betas per motif, forward strand), plus for a PSAM
    ``symmetry``, ``score_reverse``, ``dilation``, ``bias`` and ``pairwise``
    (``{"d": [motif][a][b][k]}``, ``a`` at ``k``, ``b`` at ``k + d``).
    """
    if isinstance(psam, Mode):
        psam = psam.psam
    if isinstance(psam, PSAM):
        n_motifs = psam.out_channels // psam.n_strands
        with torch.no_grad():
            doc: dict[str, Any] = {
                "name": name,
                "alphabet": list(psam.alphabet.letters),
                "kernel_size": psam.kernel_size,
                "symmetry": psam.symmetry.tolist(),
                "score_reverse": psam.score_reverse,
                "dilation": psam.dilation,
                "bias": psam.bias.detach().double().flatten().tolist(),
                "monomer": [psam_matrix(psam, o).tolist() for o in range(n_motifs)],
                "pairwise": {
                    str(d): psam.get_filter(d)[:n_motifs].detach().double().tolist()
                    for d in range(1, psam.pairwise_distance + 1)
                },
            }
    else:
        matrix = np.asarray(psam, dtype=float)
        letters = _letters(alphabet)
        if matrix.ndim != 2 or matrix.shape[1] != len(letters):
            raise ValueError(f"matrix must be (kernel_size, {len(letters)}), got {matrix.shape}")
        doc = {
            "name": name,
            "alphabet": list(letters),
            "kernel_size": matrix.shape[0],
            "monomer": [matrix.tolist()],
        }
    if path is not None:
        from biolm.core.hookspecs import write_text

        write_text(path, json.dumps(doc, indent=1))
    return doc


def _probabilities(matrix: np.ndarray) -> np.ndarray:
    shifted = matrix - matrix.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=1, keepdims=True)


def to_meme(
    matrices: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray],
    path: str | os.PathLike[str] | None = None,
    alphabet: str | Sequence[str] | Alphabet | None = "ACGT",
    names: Sequence[str] | None = None,
    nsites: int = 20,
) -> str:
    """Write beta matrices in the MEME minimal motif format.

    The betas are ``-ddG / RT`` so the relative affinity of letter ``c`` at position ``k`` is
    ``exp(beta[k, c])``; the letter-probability row is ``exp(beta[k]) / sum_c exp(beta[k, c])``
    (the Boltzmann distribution of a single position, uniform background).

    Parameters
    ----------
    matrices : (K, A) array, sequence of them, or mapping name -> array
    path : path, optional
        Where to write; the text is returned either way.
    alphabet : str, sequence of str or Alphabet, default "ACGT"
    names : sequence of str, optional
        Motif names (default ``psam_0``, ``psam_1``, ...).
    nsites : int, default 20
        Nominal site count (MEME requires one; it does not change the probabilities).
    """
    if isinstance(matrices, Mapping):
        names = list(matrices)
        mats = [np.asarray(m, dtype=float) for m in matrices.values()]
    elif isinstance(matrices, np.ndarray) and matrices.ndim == 2:
        mats = [matrices.astype(float)]
    else:
        mats = [np.asarray(m, dtype=float) for m in matrices]
    names = list(names) if names is not None else [f"psam_{i}" for i in range(len(mats))]
    alpha = get_alphabet(alphabet)
    letters = alpha.letters
    lines = ["MEME version 4", "", f"ALPHABET= {''.join(letters)}", ""]
    if alpha.complement:
        lines += ["strands: + -", ""]
    background = " ".join(f"{c} {1 / len(letters):.6f}" for c in letters)
    lines += ["Background letter frequencies", background, ""]
    for name, mat in zip(names, mats):
        if mat.ndim != 2 or mat.shape[1] != len(letters):
            raise ValueError(f"matrix {name} must be (kernel_size, {len(letters)}), got {mat.shape}")
        probs = _probabilities(mat)
        lines.append(f"MOTIF {name}")
        lines.append(
            f"letter-probability matrix: alength= {len(letters)} w= {mat.shape[0]} nsites= {nsites} E= 0"
        )
        lines += [" " + " ".join(f"{p:.6f}" for p in row) for row in probs]
        lines.append("")
    text = "\n".join(lines)
    if path is not None:
        from biolm.core.hookspecs import write_text

        write_text(path, text)
    return text


_LOGO_COLOURS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839", "U": "#D62839"}


def plot_logo(
    matrix: np.ndarray | Tensor,
    alphabet: str | Sequence[str] | Alphabet | None,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> str:
    """Energy logo of a (K, A) beta matrix.

    Letter heights are ``beta - mean_c(beta)`` per position: letters above the axis raise the
    affinity, those below lower it, stacked from the axis outwards by size.

    Parameters
    ----------
    matrix : (K, A) array
    alphabet : str, sequence of str or Alphabet
    path : path
        Output image (format from the suffix, e.g. ``.png``, ``.pdf``).
    title : str, optional

    Returns
    -------
    str
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    mat = (
        matrix.detach().cpu().double().numpy()
        if isinstance(matrix, Tensor)
        else np.asarray(matrix, dtype=float)
    )
    letters = _letters(alphabet)
    if mat.ndim != 2 or mat.shape[1] != len(letters):
        raise ValueError(f"matrix must be (kernel_size, {len(letters)}), got {mat.shape}")
    heights = mat - mat.mean(axis=1, keepdims=True)
    fig = Figure(figsize=(max(3.0, 0.5 * mat.shape[0] + 1), 2.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    font = FontProperties(family="DejaVu Sans", weight="bold")
    palette = dict(_LOGO_COLOURS)
    cycle = ["#6A4C93", "#1982C4", "#8AC926", "#FF595E", "#FFCA3A", "#5C5C5C"]
    for i, letter in enumerate(letters):
        palette.setdefault(letter, cycle[i % len(cycle)])
    for k, row in enumerate(heights):
        up, down = 0.0, 0.0
        for c in np.argsort(np.abs(row)):
            h = float(row[c])
            if h == 0.0:
                continue
            glyph = TextPath((0, 0), letters[c], size=1, prop=font)
            box = glyph.get_extents()
            base = up if h > 0 else down - abs(h)
            transform = (
                Affine2D()
                .translate(-box.x0, -box.y0)
                .scale(0.9 / box.width, abs(h) / box.height)
                .translate(k + 0.05, base)
            )
            ax.add_patch(PathPatch(transform.transform_path(glyph), color=palette[letters[c]], lw=0))
            if h > 0:
                up += h
            else:
                down -= abs(h)
    ax.set_xlim(0, mat.shape[0])
    lows = np.where(heights < 0, heights, 0).sum(axis=1)
    highs = np.where(heights > 0, heights, 0).sum(axis=1)
    ax.set_ylim(min(float(lows.min()), -1e-3) * 1.05, max(float(highs.max()), 1e-3) * 1.05)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(mat.shape[0]) + 0.5)
    ax.set_xticklabels([str(i + 1) for i in range(mat.shape[0])])
    ax.set_ylabel("beta - position mean")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    from biolm.core.hookspecs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.path.splitext(os.fspath(path))[1][1:] or "png")
    return os.fspath(path)


def export_psams(
    model: PSAMPredictor | Mode | PSAM, out_dir: str | os.PathLike[str], prefix: str = "psam"
) -> list[str]:
    """Write every motif of a model as ``<prefix>_<i>.json``, ``<prefix>_<i>_logo.png`` and one
    ``<prefix>.meme``; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(model, PSAMPredictor):
        psams = model.psams()
    elif isinstance(model, Mode):
        psams = [model.psam]
    else:
        psams = [model]
    written: list[str] = []
    matrices: dict[str, np.ndarray] = {}
    alphabet = psams[0].alphabet
    for i, psam in enumerate(psams):
        name = f"{prefix}_{i}"
        json_path = os.path.join(out_dir, f"{name}.json")
        to_json(psam, json_path, name=name)
        written.append(json_path)
        for o in range(psam.out_channels // psam.n_strands):
            label = name if psam.out_channels == psam.n_strands else f"{name}_{o}"
            matrices[label] = psam_matrix(psam, o)
            written.append(
                plot_logo(matrices[label], psam.alphabet, os.path.join(out_dir, f"{label}_logo.png"), label)
            )
    meme_path = os.path.join(out_dir, f"{prefix}.meme")
    to_meme(matrices, meme_path, alphabet=alphabet)
    written.append(meme_path)
    return written
