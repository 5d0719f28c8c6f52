"""The PSAM's parameters: PyProBound's ``PSAM`` (position-specific affinity matrix) in plain torch.

The betas of one PSAM live in two tensors, ``monomer`` of shape (n_monomer_keys, O, A) and
``pairwise`` of shape (n_pairwise_keys, O, A, A), with ``O`` the number of unique (forward)
channels; PyProBound keeps one 0-d parameter per feature under keys such as ``betas.3-2`` or
``betas.1-2-7`` (:mod:`.pyprobound_weights` translates). Symmetry: positions with equal
symmetry values share parameters, opposite signs are complementary (``[1, 2, -2, -1]`` is a
reverse-complement palindrome).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .alphabet import Alphabet, get_alphabet

__all__ = ["PSAM", "parse_key"]


def parse_key(key: str) -> tuple[tuple[int, ...], int]:
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
            positions, j = parse_key(key)
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
