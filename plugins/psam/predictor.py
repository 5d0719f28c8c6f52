"""The predictor: one or more binding modes whose log-affinities feed a regression /
classification head, and the plugin's model around it (vocabulary channels + lengths in).

Modes are combined in affinity space by default, as PyProBound's ``Aggregate`` does::

    log Z(S) = logsumexp_a log_affinity_a(S)        (each mode's PSAM bias = its log activity)
    output   = head(max(log Z, min_log_affinity)),  head = Linear(1, num_outputs)

or (``combine="linear"``) with a linear head on the floored per-mode log-affinities
(Linear(n_modes, num_outputs)). With one mode both are the same model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .alphabet import Alphabet, alphabet_projection, get_alphabet
from .convolution import Mode, PSAMConv1d
from .psam import PSAM

__all__ = ["PSAMPredictor", "PSAMInput"]


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
    combine : {"affinity", "linear"}, default "affinity"
        How the modes meet the head (see the module docstring).

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
        combine: Literal["affinity", "linear"] = "affinity",
    ) -> None:
        super().__init__()
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be regression or classification, not {task!r}")
        if n_modes < 1 or num_outputs < 1:
            raise ValueError("n_modes and num_outputs must be positive")
        if combine not in ("affinity", "linear"):
            raise ValueError(f"combine must be affinity or linear, not {combine!r}")
        self.task = task
        self.combine = combine
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
        self.head = nn.Linear(n_modes if combine == "linear" else 1, num_outputs)
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
        return self.head(self.head_input(self.log_affinities(x, lengths)).to(self.head.weight.dtype))

    def head_input(self, la: Tensor) -> Tensor:
        """What the head reads: (B, n_modes) log-affinities -> (B, 1) floored ``log Z`` (affinity
        combine) or (B, n_modes) floored log-affinities (linear combine)."""
        if self.combine == "affinity":
            la = la.logsumexp(-1, keepdim=True)
        return la.clamp_min(self.min_log_affinity)

    def psams(self) -> list[PSAM]:
        return [mode.psam for mode in self.modes]


class PSAMInput(nn.Module):
    """The plugin's model: the engine's input dict -> the predictor on the vocabulary channels
    (modifier channels are not part of a PSAM) with the real lengths.

    Parameters
    ----------
    net : PSAMPredictor
    n_vocab : int
        Vocabulary channels at the front of ``batch["x"]`` (B, L, n_vocab + modifiers).
    """

    def __init__(self, net: PSAMPredictor, n_vocab: int) -> None:
        super().__init__()
        self.net = net
        self.n_vocab = n_vocab

    def forward(self, batch: dict) -> Tensor:
        """(B, num_outputs) predictions."""
        return self.net(batch["x"][..., : self.n_vocab], batch["lengths"])

    def log_affinities(self, batch: dict) -> Tensor:
        """(B, n_modes) per-mode log-affinities."""
        return self.net.log_affinities(batch["x"][..., : self.n_vocab], batch["lengths"])

    def letters(self, batch: dict) -> Tensor:
        """(B, L) int64 alphabet index of every position; -1 for padding and for rows that are
        not exactly one letter (N, tokens outside the alphabet)."""
        x = batch["x"][..., : self.n_vocab]
        net = self.net
        if net.projection is not None and x.shape[-1] == net.projection.shape[0]:
            x = x.to(net.projection.dtype) @ net.projection
        one = (x == 1).sum(-1) == 1
        beyond = torch.arange(x.shape[1], device=x.device)[None, :] >= batch["lengths"][:, None]
        return torch.where(one & (x.sum(-1) == 1) & ~beyond, x.argmax(-1), torch.full_like(x[..., 0], -1, dtype=torch.int64))
